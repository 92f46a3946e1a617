"""The only module that calls the Kubernetes API (kopf's own watching and Events aside).

Writes are JSON merge patches or creates, and only when the live object
differs from the desired one: ``is_subset`` treats fields the API server adds
(defaults, status, metadata) as equal, and quantities as equal when they are the
same amount (``quantities.py``), so a reconcile of an unchanged cluster sends no
write at all. Credentials come from kopf's login (``configure``), which loads the
in-cluster service account or a kubeconfig (exec plugins included) through the
``kubernetes`` library.

Why the requests themselves are written here rather than made with the ``kubernetes``
library's client: that client is synchronous, so each call would block kopf's event loop
(or take a thread) for the length of an API round trip, and the operator needs a dozen
verbs on plain dicts, not generated models. kubernetes_asyncio would be a second copy of
the whole generated client for those dozen verbs. We keep the library for what it does
well: configuration loading and quantity parsing.
"""

from __future__ import annotations

import json
import os
import ssl
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import aiohttp

from . import metrics, quantities

MERGE = "application/merge-patch+json"

_PLURALS = {
    ("v1", "Service"): "services", ("v1", "ConfigMap"): "configmaps",
    ("v1", "Secret"): "secrets", ("v1", "Pod"): "pods",
    ("v1", "PersistentVolumeClaim"): "persistentvolumeclaims",
    ("apps/v1", "StatefulSet"): "statefulsets",
    ("policy/v1", "PodDisruptionBudget"): "poddisruptionbudgets",
    ("cert-manager.io/v1", "Certificate"): "certificates",
    ("continuum.dev/v1alpha1", "FederationCluster"): "federationclusters",
    ("continuum.dev/v1alpha1", "FederationBackup"): "federationbackups",
    ("batch/v1", "Job"): "jobs",
}
# StatefulSet fields the API server refuses to change; drift there is reported, not patched.
STS_MUTABLE = ("replicas", "template", "updateStrategy", "persistentVolumeClaimRetentionPolicy",
               "minReadySeconds", "ordinals", "revisionHistoryLimit")


class ApiError(RuntimeError):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(f"{status}: {message}")
        self.status = status


def path(api_version: str, plural: str, namespace: str, name: str | None = None,
         sub: str | None = None) -> str:
    base = "/api/v1" if api_version == "v1" else f"/apis/{api_version}"
    out = f"{base}/namespaces/{namespace}/{plural}"
    if name:
        out += f"/{name}"
    if sub:
        out += f"/{sub}"
    return out


def cluster_path(api_version: str, plural: str, name: str) -> str:
    """A cluster-scoped object (e.g. a StorageClass)."""
    base = "/api/v1" if api_version == "v1" else f"/apis/{api_version}"
    return f"{base}/{plural}/{name}"


def object_path(obj: Mapping[str, Any], sub: str | None = None) -> str:
    plural = _PLURALS[(obj["apiVersion"], obj["kind"])]
    meta = obj["metadata"]
    return path(obj["apiVersion"], plural, meta["namespace"], meta["name"], sub)


def is_subset(desired: Any, live: Any) -> bool:
    """Whether ``live`` already has every value of ``desired`` (extra live fields allowed)."""
    if isinstance(desired, quantities.Quantity):
        return quantities.same(desired, live)
    if isinstance(desired, Mapping):
        return isinstance(live, Mapping) and all(
            is_subset(v, live.get(k)) for k, v in desired.items())
    if isinstance(desired, Sequence) and not isinstance(desired, str):
        return (isinstance(live, Sequence) and not isinstance(live, str)
                and len(desired) == len(live)
                and all(is_subset(d, x) for d, x in zip(desired, live, strict=True)))
    return bool(desired == live)


def merge_patch(desired: Mapping[str, Any], live: Mapping[str, Any]) -> dict[str, Any]:
    """The smallest merge patch that makes ``live`` contain ``desired`` (lists are replaced)."""
    patch: dict[str, Any] = {}
    for key, value in desired.items():
        current = live.get(key)
        if isinstance(value, Mapping) and isinstance(current, Mapping):
            sub = merge_patch(value, current)
            if sub:
                patch[key] = sub
        elif not is_subset(value, current):
            patch[key] = value
    return patch


def _owned_fields(obj: Mapping[str, Any]) -> dict[str, Any]:
    """The parts of a desired object that the operator keeps in shape."""
    meta = obj["metadata"]
    out: dict[str, Any] = {"metadata": {k: meta[k] for k in ("labels", "annotations",
                                                              "ownerReferences") if k in meta}}
    if obj["kind"] == "StatefulSet":
        out["spec"] = {k: v for k, v in obj["spec"].items() if k in STS_MUTABLE}
    else:
        for key in ("spec", "data", "type"):
            if key in obj:
                out[key] = obj[key]
    return out


class Kube:
    """A small async Kubernetes client; configured (and re-configured) by kopf's login."""

    def __init__(self) -> None:
        self.server: str | None = None
        self._headers: dict[str, str] = {}
        self._ssl: ssl.SSLContext | bool = False
        self._session: aiohttp.ClientSession | None = None
        self._stale = False
        self.writes = 0  # every create/patch/delete, for the no-op measurement

    def configure(self, info: Any) -> None:
        """Take credentials from a ``kopf.ConnectionInfo``."""
        self.server = str(info.server).rstrip("/")
        headers = {"Accept": "application/json"}
        if info.token:
            headers["Authorization"] = f"{info.scheme or 'Bearer'} {info.token}"
        elif info.username and info.password:
            headers["Authorization"] = "Basic " + aiohttp.BasicAuth(
                info.username, info.password).encode().split(" ", 1)[1]
        self._headers = headers
        self._ssl = self._context(info) if self.server.startswith("https") else False
        self._stale = True  # the next request opens a session with the new credentials

    @staticmethod
    def _context(info: Any) -> ssl.SSLContext:
        ctx = ssl.create_default_context()
        if info.insecure:
            ctx.check_hostname = False
            ctx.verify_mode = ssl.CERT_NONE
        if info.ca_path:
            ctx.load_verify_locations(cafile=os.fsdecode(info.ca_path))
        elif info.ca_data:
            data = info.ca_data.decode() if isinstance(info.ca_data, bytes) else info.ca_data
            ctx.load_verify_locations(cadata=data)
        cert, key = info.certificate_path, info.private_key_path
        if cert and key:
            ctx.load_cert_chain(os.fsdecode(cert), os.fsdecode(key))
        elif info.certificate_data and info.private_key_data:
            with tempfile.TemporaryDirectory() as d:
                for name, data in (("c", info.certificate_data), ("k", info.private_key_data)):
                    fd = os.open(Path(d) / name, os.O_WRONLY | os.O_CREAT, 0o600)
                    with os.fdopen(fd, "wb") as f:
                        f.write(data.encode() if isinstance(data, str) else data)
                ctx.load_cert_chain(str(Path(d) / "c"), str(Path(d) / "k"))
        return ctx

    async def _sess(self) -> aiohttp.ClientSession:
        if self._stale and self._session is not None:
            await self._session.close()
            self._session = None
        self._stale = False
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(ssl=self._ssl),
                timeout=aiohttp.ClientTimeout(total=30, sock_connect=10))
        return self._session

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def request(self, method: str, url_path: str, body: Any = None, *,
                      content_type: str = "application/json",
                      params: Mapping[str, str] | None = None) -> Any:
        if self.server is None:
            raise ApiError(0, "not logged in yet")
        headers = dict(self._headers)
        data = None
        if body is not None:
            data = json.dumps(body)
            headers["Content-Type"] = content_type
        if method != "GET":
            self.writes += 1
            metrics.API_WRITES.labels(method.lower()).inc()
        session = await self._sess()
        async with session.request(method, self.server + url_path, data=data,
                                        headers=headers, params=params) as resp:
            raw = await resp.read()
            if resp.status >= 400:
                try:
                    message = json.loads(raw).get("message", "")
                except (ValueError, AttributeError):
                    message = raw[:200].decode("utf-8", "replace")
                raise ApiError(resp.status, f"{method} {url_path}: {message}")
            return json.loads(raw) if raw else None

    # ---- reads ---------------------------------------------------------------------------------

    async def get(self, url_path: str) -> dict[str, Any] | None:
        try:
            result: dict[str, Any] = await self.request("GET", url_path)
        except ApiError as exc:
            if exc.status == 404:
                return None
            raise
        return result

    async def list(self, api_version: str, plural: str, namespace: str,
                   labels: Mapping[str, str]) -> list[dict[str, Any]]:
        """Objects with all ``labels`` (filtered here too: not every server filters)."""
        selector = ",".join(f"{k}={v}" for k, v in sorted(labels.items()))
        result = await self.request("GET", path(api_version, plural, namespace),
                                    params={"labelSelector": selector})
        items: list[dict[str, Any]] = list((result or {}).get("items") or [])
        return [o for o in items
                if all((o.get("metadata", {}).get("labels") or {}).get(k) == v
                       for k, v in labels.items())]

    # ---- writes --------------------------------------------------------------------------------

    async def create(self, obj: Mapping[str, Any]) -> dict[str, Any]:
        plural = _PLURALS[(obj["apiVersion"], obj["kind"])]
        url = path(obj["apiVersion"], plural, obj["metadata"]["namespace"])
        result: dict[str, Any] = await self.request("POST", url, obj)
        return result

    async def patch(self, url_path: str, patch: Mapping[str, Any]) -> dict[str, Any]:
        result: dict[str, Any] = await self.request("PATCH", url_path, patch, content_type=MERGE)
        return result

    async def delete(self, url_path: str, *, propagation: str = "Background") -> bool:
        """True if something was deleted; False if it was already gone."""
        try:
            await self.request("DELETE", url_path, {"propagationPolicy": propagation})
        except ApiError as exc:
            if exc.status == 404:
                return False
            raise
        return True

    async def create_once(self, obj: Mapping[str, Any]) -> tuple[bool, dict[str, Any]]:
        """Create ``obj`` unless an object of its name exists: (created, the object). For
        objects that are never patched (a Job's template is immutable)."""
        live = await self.get(object_path(obj))
        if live is not None:
            return False, live
        try:
            return True, await self.create(obj)
        except ApiError as exc:
            if exc.status != 409:
                raise
        live = await self.get(object_path(obj))
        if live is None:
            raise ApiError(409, f"{object_path(obj)} exists but cannot be read")
        return False, live

    async def ensure(self, obj: Mapping[str, Any], *, create_extra: Mapping[str, Any] | None = None,
                     live: dict[str, Any] | None = None) -> tuple[str | None, dict[str, Any]]:
        """Create ``obj`` or patch the live one into shape: ("created"|"patched"|None, live).

        ``live``: the object as just read, to spare a second GET.
        """
        url = object_path(obj)
        if live is None:
            live = await self.get(url)
        if live is None:
            body = dict(obj)
            if create_extra:
                body["spec"] = {**body.get("spec", {}), **create_extra}
            return "created", await self.create(body)
        patch = merge_patch(_owned_fields(obj), live)
        if not patch:
            return None, live
        return "patched", await self.patch(url, patch)
