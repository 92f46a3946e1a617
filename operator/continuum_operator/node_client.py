"""The operator's mTLS client for the node API (GET /v1/status, members, leadership,
disaster recovery).

It presents the operator's client certificate (the admin role, ``urn:continuum:role:admin``)
and checks that the server's certificate speaks for the pod it meant to reach: it dials
the pod IP but verifies the certificate as ``<pod>.<peer domain>`` (standard hostname
verification, which the pod's own certificate, or the shared wildcard, satisfies), so a
pod IP reused by
another pod, or a client certificate, can never pass for a member. Key material arrives as bytes
from a Secret; it touches disk only for the instant ``ssl`` needs a file, in a
private temporary directory that is removed at once.
"""

from __future__ import annotations

import json
import os
import ssl
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp

from continuum.federation.distributed import errors
from continuum.federation.distributed.transport import tls


@dataclass(frozen=True, slots=True)
class Material:
    cert: bytes
    key: bytes
    ca: bytes

    @classmethod
    def from_secret_data(cls, data: dict[str, bytes] | None) -> Material | None:
        if not data or not all(k in data for k in ("tls.crt", "tls.key", "ca.crt")):
            return None
        return cls(data["tls.crt"], data["tls.key"], data["ca.crt"])

    def __repr__(self) -> str:  # never print key material
        return "Material(<redacted>)"


class NodeError(RuntimeError):
    """A node refused a call (``status`` and ``code`` as the node's API answered them;
    ``error`` is the node library's error they stand for, e.g. ``errors.NotLeader``
    with the leader's address), or could not be reached (``status`` 0)."""

    def __init__(self, node: str, status: int, code: str, message: str = "",
                 error: errors.FederationError | None = None) -> None:
        super().__init__(f"{node}: {status} {code} {message}".strip())
        self.node = node
        self.status = status
        self.code = code
        self.error = error


def _context(material: Material) -> ssl.SSLContext:
    with tempfile.TemporaryDirectory(prefix="continuum-op-") as d:
        os.chmod(d, 0o700)
        for name, data in (("tls.crt", material.cert), ("tls.key", material.key),
                           ("ca.crt", material.ca)):
            path = Path(d) / name
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "wb") as f:
                f.write(data)
        ctx = tls.client_context(tls.TLSFiles.from_dir(d))
    ctx.check_hostname = True  # against server_hostname=<pod>.<peer domain>, per request
    return ctx


class NodeClient:
    """One session for every node of one cluster; ``address`` is host:port of the node's API."""

    def __init__(self, material: Material, peer_domain: str | None, *,
                 timeout: float = 5.0) -> None:
        self._ctx = _context(material)
        self.material = material
        self.peer_domain = peer_domain
        self.timeout = timeout
        self._session: aiohttp.ClientSession | None = None

    def _sess(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(ssl=self._ctx, limit_per_host=4))
        return self._session

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def call(self, address: str, node: str, method: str, path: str, body: Any = None,
                   *, timeout: float | None = None) -> dict[str, Any]:
        data = None if body is None else json.dumps(body)
        headers = {"Content-Type": "application/json"} if data is not None else {}
        limit = aiohttp.ClientTimeout(total=timeout or self.timeout,
                                      sock_connect=min(timeout or self.timeout, 3.0))
        try:
            async with self._sess().request(method, f"https://{address}{path}", data=data,
                                            headers=headers, timeout=limit,
                                            server_hostname=self._hostname(node)) as resp:
                raw = await resp.read()
                status = resp.status
        except aiohttp.ClientConnectorCertificateError as exc:
            raise NodeError(node, 0, "wrong_identity", f"certificate rejected: {exc}") from None
        except (TimeoutError, aiohttp.ClientError, ssl.SSLError, OSError) as exc:
            raise NodeError(node, 0, "unreachable", f"{type(exc).__name__}: {exc}") from None
        try:
            payload = json.loads(raw) if raw else {}
        except json.JSONDecodeError:
            payload = {"error": "bad_response"}
        if not isinstance(payload, dict):
            payload = {"error": "bad_response"}
        if status >= 400:
            raise NodeError(node, status, str(payload.get("error", status)),
                            str(payload.get("message", "")), errors.from_answer(status, payload))
        return payload

    def _hostname(self, node: str) -> str:
        return f"{node}.{self.peer_domain}" if self.peer_domain else node

    async def status(self, address: str, node: str) -> dict[str, Any]:
        return await self.call(address, node, "GET", "/v1/status")

    async def add_member(self, address: str, node: str, member: str, member_address: str,
                         *, timeout: float) -> dict[str, Any]:
        # The node gives up a little before we do, so a learner that has not caught up yet
        # comes back as "not_caught_up" (it stays a learner; the next call resumes), not as
        # a timeout that looks like an unreachable node.
        deadline = min(600.0, max(timeout * 0.5, timeout - 5.0))
        return await self.call(address, node, "POST", "/v1/members",
                               {"id": member, "address": member_address, "timeout": deadline},
                               timeout=timeout)

    async def remove_member(self, address: str, node: str, member: str, *,
                            timeout: float) -> bool:
        """True once the removal committed; False when it was not a member (already removed)."""
        try:
            await self.call(address, node, "DELETE", f"/v1/members/{member}", timeout=timeout)
        except NodeError as exc:
            if exc.status == 404:
                return False
            raise
        return True

    async def transfer_leadership(self, address: str, node: str, to: str | None, *,
                                  timeout: float) -> dict[str, Any]:
        return await self.call(address, node, "POST", "/v1/leader/transfer", {"to": to},
                               timeout=timeout)

    async def force_new_cluster(self, address: str, node: str, *,
                                timeout: float) -> dict[str, Any]:
        """Quorum lost for good: ``node`` becomes the sole voter of a new cluster."""
        return await self.call(address, node, "POST", "/v1/cluster/force-new-cluster",
                               {"confirm": node}, timeout=timeout)
