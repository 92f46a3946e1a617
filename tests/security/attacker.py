"""The attacker's kit: certificates signed by the cluster's own CA, and raw peer frames.

The cluster under attack is a local cluster of real node processes on loopback
(``e2e.cluster.Cluster``), with real mutual TLS. The attacker holds a certificate
of that CA (``certificates``: a node that is no member, a client certificate, a
wildcard, a removed member's, ...) and speaks the peer protocol as a real
attacker would: any message kind, any body, any claimed sender, over the
one-way stream (``send``) or as a call (``call``). ``Observer`` reads every
node's view with the admin certificate, to show that an attack changed nothing.
"""

from __future__ import annotations

import ssl
from collections.abc import Awaitable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp

from continuum.federation.distributed import client, pki
from continuum.federation.distributed.transport import peer, tls, wire
from e2e.cluster import Cluster


def cluster_ca(c: Cluster) -> pki.KeyPair:
    """The CA a local cluster made for itself (what a stolen CA-signed certificate chains to)."""
    return pki.load_ca(c.data_dir / "pki" / "ca-key")


def write(c: Cluster, name: str, pair: pki.KeyPair) -> tls.TLSFiles:
    ca = cluster_ca(c)
    return tls.TLSFiles.from_dir(pki.write_secret_dir(c.data_dir / "attacker" / name, pair,
                                                      ca.cert_pem))


def member_files(c: Cluster, node_id: str) -> tls.TLSFiles:
    """A member's own certificate and key, as its pod or data directory holds them."""
    return tls.TLSFiles.from_dir(c.data_dir / node_id / "tls")


def _context(files: tls.TLSFiles) -> ssl.SSLContext:
    ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=files.ca)
    ctx.check_hostname = False
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    ctx.load_cert_chain(files.cert, files.key)
    return ctx


def frame(sender: str, kind: str, body: dict[str, Any]) -> bytes:
    return wire.encode(wire.Frame(sender, (wire.Message(kind, body),)))


class Attacker:
    """Speaks the peer protocol with ``files`` (any certificate of the cluster's CA)."""

    def __init__(self, files: tls.TLSFiles) -> None:
        self.files = files
        self._ctx = _context(files)

    async def send(self, address: str, sender: str, kind: str, body: dict[str, Any],
                   times: int = 1) -> None:
        """One-way messages over the stream, as members send them. Raises when the node
        refuses the stream itself (``aiohttp.WSServerHandshakeError`` with the status)."""
        async with aiohttp.ClientSession() as session, session.ws_connect(
                f"https://{address}{peer.STREAM_PATH}", ssl=self._ctx,
                timeout=aiohttp.ClientWSTimeout(ws_close=2.0)) as ws:
            for _ in range(times):
                await ws.send_bytes(frame(sender, kind, body))
            # A node that accepted the stream hears the frames before our close.
            await ws.close()

    async def call(self, address: str, sender: str, kind: str, body: dict[str, Any]
                   ) -> tuple[int, bytes]:
        async with aiohttp.ClientSession() as session, session.post(
                f"https://{address}{peer.CALL_PATH}", data=frame(sender, kind, body),
                ssl=self._ctx, headers={"Content-Type": peer.FRAME_CONTENT_TYPE},
                timeout=aiohttp.ClientTimeout(total=10)) as resp:
            return resp.status, await resp.read()

    async def api(self, url: str, method: str, path: str, body: Any = None
                  ) -> tuple[int, dict[str, Any]]:
        """An API call with this certificate: (status, JSON body)."""
        async with client.ApiClient(url, self.files, timeout=15) as c:
            try:
                return 200, await c.call(method, path, body, follow_leader=False)
            except client.ApiError as exc:
                return exc.status, exc.body


@dataclass(frozen=True)
class View:
    """What an attack must not change: every node's term and leader, and the data."""

    terms: dict[str, int]
    leaders: dict[str, str | None]
    data: dict[str, Any]


class Observer:
    def __init__(self, c: Cluster, nodes: list[str] | None = None) -> None:
        self.c = c
        self.nodes = nodes or [n.node_id for n in c.nodes]

    async def statuses(self) -> dict[str, dict[str, Any]]:
        return await self.c.statuses(self.nodes)

    async def view(self, concepts: list[str]) -> View:
        st = await self.statuses()
        data = {}
        for cid in concepts:
            data[cid] = {n: (await self.c.call(n, lambda cl, cid=cid: cl.get(cid)))["value"]
                         for n in self.nodes}
        return View({n: s["term"] for n, s in st.items()},
                    {n: s["leader_id"] for n, s in st.items()}, data)

    async def counter(self, node_id: str, *path: str) -> int:
        value: Any = (await self.c.statuses([node_id]))[node_id]
        for key in path:
            value = value.get(key, 0) if isinstance(value, dict) else 0
        return int(value or 0)

    async def until_counted(self, node_id: str, path: tuple[str, ...], above: int,
                            timeout: float = 15.0) -> int:
        """Wait until a node has counted the refusal (so the attack did arrive)."""
        return await self.c.wait_for(
            lambda: _above(self.counter(node_id, *path), above), timeout,
            f"{node_id} to count {'.'.join(path)} above {above}")


async def _above(value: Awaitable[int], above: int) -> int | None:
    v = await value
    return v if v > above else None


def data_dir_of(c: Cluster, node_id: str) -> Path:
    return c.data_dir / node_id / "data"
