"""Test harness for the real operator under kopf against kmock's Kubernetes emulator.

- ``FakeFederation``: the node API of the node contract over real mutual TLS, one aiohttp
  server per pod on 127.0.5.<ordinal+1>, with a small model of Raft membership (bootstrap,
  learner -> voter, removal that can be held appended-but-uncommitted, leadership transfer,
  elections needing a majority). Every membership call is logged so tests can check the
  order of steps.
- ``MockStatefulSetController``: what kube-controller-manager and the kubelet would do: creates
  and deletes pods (and PVCs) for each StatefulSet, labels them with the template's revision,
  starts the fake node when its pod starts, and flips the pod's Ready condition from the
  node's /readyz rule (a member of a cluster with a leader). A running pod's TLS files change
  only when the test calls ``sync_mounts`` (the kubelet's sync lag, under the test's control).
- ``MockJobController``: what the Job controller and the kubelet would do with a Job: a pod
  per attempt (labelled ``job-name``), its container's exit code and termination message
  from a function the test gives (the command as the Job states it), up to
  ``backoffLimit`` retries, then the Job's ``Complete`` or ``Failed`` condition.
- ``run_operator``: ``kopf.operator`` in-process with our handlers and test settings.
- ``Emulator``: kmock's emulator plus two API server habits the operator must live with:
  ``generateName``, and quantities stored in their canonical spelling (``canonical_quantity``).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import decimal
import hashlib
import itertools
import json
import random
import re
import socket
import ssl
import time
import warnings
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import kmock
import kopf
from aiohttp import web

import continuum_operator  # noqa: F401  (registers the handlers)
from continuum.federation.distributed import pki
from continuum.federation.distributed.transport import tls
from continuum_operator import backup_spec, jobs, manifests
from continuum_operator import spec as api
from continuum_operator.settings import OperatorSettings

NS = "prod"
POD: web.AppKey[str] = web.AppKey("pod", str)
IP_PREFIX = "127.0.5."


def free_port() -> int:
    """A port free on 127.0.0.1 and on this harness's addresses, below the kernel's
    ephemeral range (32768-60999): a port the kernel hands out may be given to an
    outgoing connection before the process under test binds it (seen once under load:
    the operator's health server failed with "address already in use")."""
    rng = random.Random()
    while True:
        port = rng.randrange(20000, 32768)
        try:
            for ip in ("127.0.0.1", IP_PREFIX + "1"):
                with socket.socket() as s:
                    s.bind((ip, port))
        except OSError:
            continue
        return port


async def wait_until(predicate: Callable[[], Any], timeout: float = 60.0,
                     what: str = "condition") -> Any:
    """Poll ``predicate`` (sync or async) until it is truthy; fail after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        result = predicate()
        if isinstance(result, Awaitable):
            result = await result
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.02)


# ---- Kubernetes client for the tests and the mock controller ---------------------------------

class Api:
    def __init__(self, base: str) -> None:
        self.base = base.rstrip("/")
        # No pooled connections: kmock can leave a kept-alive one hanging once a watcher quits.
        self.session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(force_close=True),
            timeout=aiohttp.ClientTimeout(total=20))

    async def close(self) -> None:
        await self.session.close()

    async def call(self, method: str, path: str, body: Any = None) -> Any:
        headers = {"Content-Type": "application/merge-patch+json" if method == "PATCH"
                   else "application/json"}
        async with self.session.request(method, self.base + path, headers=headers,
                                        data=None if body is None else json.dumps(body)) as r:
            raw = await r.read()
            if r.status == 404:
                return None
            if r.status >= 400:
                raise AssertionError(f"{method} {path}: {r.status} {raw[:300]!r}")
            return json.loads(raw) if raw else None

    async def items(self, path: str) -> list[dict[str, Any]]:
        result = await self.call("GET", path)
        return list((result or {}).get("items") or [])

    async def get(self, path: str) -> dict[str, Any] | None:
        result: dict[str, Any] | None = await self.call("GET", path)
        return result

    # FederationCluster helpers
    def cr_path(self, name: str, sub: str = "") -> str:
        return f"/apis/{api.API_VERSION}/namespaces/{NS}/{api.PLURAL}/{name}" + (
            f"/{sub}" if sub else "")

    async def create_cluster(self, name: str, spec: dict[str, Any],
                             annotations: dict[str, str] | None = None) -> None:
        body = {"apiVersion": api.API_VERSION, "kind": api.KIND,
                # kmock assigns no resourceVersion, but kopf's JSON patches test for one.
                "metadata": {"name": name, "namespace": NS, "uid": f"uid-{name}",
                             "resourceVersion": "1", "generation": 1,
                             "annotations": annotations or {}},
                "spec": spec}
        await self.call("POST", f"/apis/{api.API_VERSION}/namespaces/{NS}/{api.PLURAL}", body)

    async def cr(self, name: str) -> dict[str, Any]:
        obj = await self.get(self.cr_path(name))
        assert obj is not None
        return obj

    async def cr_status(self, name: str) -> dict[str, Any]:
        return dict((await self.cr(name)).get("status") or {})

    async def condition(self, name: str, type_: str) -> dict[str, Any]:
        st = await self.cr_status(name)
        return next((c for c in st.get("conditions") or [] if c["type"] == type_), {})

    async def events(self, reason: str | None = None) -> list[dict[str, Any]]:
        items = await self.items(f"/api/v1/namespaces/{NS}/events")
        return [e for e in items if reason is None or e.get("reason") == reason]


# ---- the fake federation (node API over mTLS) -------------------------------------------------

class FakeFederation:
    """The node API of one cluster's pods, over real mutual TLS."""

    def __init__(self, name: str, port: int, root: Path) -> None:
        self.name = name
        self.port = port
        self.root = root
        self.members: dict[str, dict[str, Any]] = {}
        self.leader: str | None = None
        self.term = 0
        self.commit = 0
        self.runners: dict[str, web.AppRunner] = {}
        # pod -> its live server context and (trusted CA fingerprints, served certificate's)
        self.contexts: dict[str, ssl.SSLContext] = {}
        self.loaded: dict[str, tuple[list[str], str]] = {}
        self.log: list[tuple[str, str]] = []
        self.after_remove: Callable[[str], None] | None = None
        # When set, a removal commits but its reply waits for this event (a cut-off call).
        self.hold_reply: asyncio.Event | None = None
        # When set, a removal is appended (members no longer list it) but commits only once
        # this event is set; until then status says membership_committed: false.
        self.hold_commit: asyncio.Event | None = None
        self.membership_committed = True
        self.peer_domain = f"{name}-peers.{NS}.svc.cluster.local"
        # member -> entries its match index trails the commit index by (a slow follower)
        self.behind: dict[str, int] = {}
        self.on_start: Callable[[str], None] | None = None  # called as each node starts
        # A removed node that joins again on its own just before its pod goes (as a real
        # node that finds itself removed does, when the pod outlives the removal long enough).
        self.rejoin_before_stop = False

    def ip(self, pod: str) -> str:
        ordinal = manifests.ordinal(self.name, pod)
        assert ordinal is not None
        return f"{IP_PREFIX}{ordinal + 1}"

    def alive(self, pod: str) -> bool:
        return pod in self.runners

    def voters(self) -> list[str]:
        return [m for m, v in self.members.items() if v["voter"]]

    def ready(self, pod: str) -> bool:
        self._elect()
        return self.alive(pod) and pod in self.members and self.leader is not None

    def _elect(self) -> None:
        """A leader needs a live majority of voters (it steps down otherwise, check-quorum)."""
        voters = self.voters()
        up = sorted((v for v in voters if self.alive(v)),
                    key=lambda p: manifests.ordinal(self.name, p) or 0)
        majority = bool(voters) and len(up) >= manifests.quorum(len(voters))
        if majority and self.leader in up:
            return
        if majority:
            self.leader = up[0]
            self.term += 1
        else:
            self.leader = None

    async def start_node(self, pod: str, secret: dict[str, bytes]) -> None:
        if pod in self.runners:
            return
        d = self.root / pod
        d.mkdir(parents=True, exist_ok=True)
        for key in ("tls.crt", "tls.key", "ca.crt"):
            (d / key).write_bytes(secret[key])
        ctx = tls.server_context(tls.TLSFiles.from_dir(d))
        self.contexts[pod] = ctx
        self._remember_files(pod)
        app = web.Application()
        app[POD] = pod
        app.router.add_get("/v1/status", self._status)
        app.router.add_post("/v1/members", self._add)
        app.router.add_delete("/v1/members/{id}", self._remove)
        app.router.add_post("/v1/leader/transfer", self._transfer)
        app.router.add_post("/v1/cluster/force-new-cluster", self._force_new_cluster)
        runner = web.AppRunner(app)
        await runner.setup()
        await web.TCPSite(runner, self.ip(pod), self.port, ssl_context=ctx).start()
        self.runners[pod] = runner
        if not self.members:  # ordinal 0 of a fresh cluster bootstraps
            self.members[pod] = {"voter": True, "address": self._address(pod)}
            self.log.append(("bootstrap", pod))
        if self.on_start is not None:
            self.on_start(pod)
        self._elect()

    def _remember_files(self, pod: str) -> None:
        files = tls.TLSFiles.from_dir(self.root / pod)
        self.loaded[pod] = (tls.file_fingerprints(files.ca),
                            tls.file_fingerprints(files.cert)[0])

    def sync_files(self, pod: str, secret: dict[str, bytes]) -> bool:
        """The kubelet refreshed the pod's Secret volume; the node reloads (as its certificate
        watcher does). True when something changed."""
        d = self.root / pod
        if pod not in self.contexts or all(
                (d / k).read_bytes() == secret[k] for k in ("tls.crt", "tls.key", "ca.crt")):
            return False
        for key in ("tls.crt", "tls.key", "ca.crt"):
            (d / key).write_bytes(secret[key])
        tls.reload_contexts(tls.TLSFiles.from_dir(d), [self.contexts[pod]])
        self._remember_files(pod)
        return True

    async def stop_node(self, pod: str) -> None:
        if self.rejoin_before_stop and pod in self.runners and pod not in self.members:
            self.members[pod] = {"voter": True, "address": self._address(pod)}
            self.log.append(("rejoin", pod))
        self.contexts.pop(pod, None)
        runner = self.runners.pop(pod, None)
        if runner is not None:
            await runner.cleanup()
        self._elect()

    async def stop(self) -> None:
        for gate in (self.hold_reply, self.hold_commit):
            if gate is not None:
                gate.set()
        for pod in list(self.runners):
            await self.stop_node(pod)

    def _address(self, pod: str) -> str:
        return f"{pod}.{self.peer_domain}:7000"

    @staticmethod
    def _caller_is_operator(request: web.Request) -> bool:
        transport = request.transport
        identity = tls.identity_of(transport.get_extra_info("ssl_object") if transport else None)
        return identity is not None and identity.api_role == "admin"

    def _guard(self, request: web.Request, leader_only: bool) -> web.Response | None:
        if not self._caller_is_operator(request):
            return web.json_response({"error": "forbidden", "message": "not a client"},
                                     status=403)
        self._elect()
        if leader_only and request.app[POD] != self.leader:
            return web.json_response({"error": "not_leader", "leader_id": self.leader,
                                      "leader_address": self.leader and self._address(
                                          self.leader)}, status=421)
        return None

    async def _status(self, request: web.Request) -> web.Response:
        if (denied := self._guard(request, leader_only=False)) is not None:
            return denied
        pod = request.app[POD]
        role = ("leader" if pod == self.leader else
                "follower" if self.members.get(pod, {}).get("voter") else "learner")
        return web.json_response({
            "node_id": pod, "cluster": self.name, "role": role, "term": self.term,
            "leader_id": self.leader,
            "leader_address": self.leader and self._address(self.leader),
            "commit_index": self.commit, "last_applied": self.commit,
            "ready": self.ready(pod), "version": "0.1.0",
            "members": [{"id": m, "address": v["address"], "voter": v["voter"],
                         "healthy": self.alive(m),
                         "match_index": self.commit - self.behind.get(m, 0)}
                        for m, v in self.members.items()],
            "membership_committed": self.membership_committed,
            "raft": {"last_log_term": self.term, "last_log_index": self.commit},
            "certificate_not_after": "2027-01-01T00:00:00Z",
            "trusted_ca_sha256": self.loaded[pod][0],
            "certificate_sha256": self.loaded[pod][1],
        })

    async def _add(self, request: web.Request) -> web.Response:
        if (denied := self._guard(request, leader_only=True)) is not None:
            return denied
        body = await request.json()
        member = body["id"]
        if self.members.get(member, {}).get("voter"):
            return web.json_response({"id": member, "voter": True})
        if member not in self.members:
            self.members[member] = {"voter": False, "address": body["address"]}
            self.log.append(("add_learner", member))
            self.commit += 1
        if not self.alive(member):
            return web.json_response({"error": "not_caught_up",
                                      "message": "the learner is not reachable"}, status=409)
        self.members[member]["voter"] = True
        self.log.append(("promote", member))
        self.commit += 1
        return web.json_response({"id": member, "voter": True})

    async def _remove(self, request: web.Request) -> web.Response:
        if (denied := self._guard(request, leader_only=True)) is not None:
            return denied
        member = request.match_info["id"]
        if member not in self.members:
            return web.json_response({"error": "not_a_member", "message": "not a member"},
                                     status=404)
        del self.members[member]
        self.log.append(("remove", member))
        if self.hold_commit is not None:  # the node replies only once the removal commits
            self.membership_committed = False
            await self.hold_commit.wait()
            self.membership_committed = True
            self.log.append(("commit_remove", member))
        self.commit += 1
        if self.after_remove is not None:
            self.after_remove(member)
        if self.hold_reply is not None:
            await self.hold_reply.wait()
        return web.json_response({"id": member, "removed": True})

    async def _force_new_cluster(self, request: web.Request) -> web.Response:
        if (denied := self._guard(request, leader_only=False)) is not None:
            return denied
        pod = request.app[POD]
        if (await request.json()).get("confirm") != pod:
            return web.json_response({"error": "invalid", "message": "confirm"}, status=400)
        if self.leader is not None:
            return web.json_response({"error": "has_leader", "message": "quorum is not lost"},
                                     status=409)
        former = sorted(m for m in self.members if m != pod)
        self.members = {pod: {"voter": True, "address": self._address(pod)}}
        self.log.append(("force_new_cluster", pod))
        self.commit += 1
        self._elect()
        return web.json_response({"id": pod, "leader_id": pod, "former_members": former,
                                  "kept_through_index": self.commit - 1,
                                  "discarded_entries": 0})

    async def _transfer(self, request: web.Request) -> web.Response:
        if (denied := self._guard(request, leader_only=True)) is not None:
            return denied
        body = await request.json()
        to = body.get("to") or next(
            (v for v in self.voters() if v != self.leader and self.alive(v)), None)
        if to is None or not self.alive(to) or not self.members.get(to, {}).get("voter"):
            return web.json_response({"error": "no_target", "message": str(to)}, status=409)
        self.log.append(("transfer", f"{self.leader}->{to}"))
        self.leader = to
        self.term += 1
        return web.json_response({"leader_id": to})


# ---- the mock StatefulSet -> Pod controller ---------------------------------------------------

def revision(template: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(template, sort_keys=True).encode()).hexdigest()[:10]


class MockStatefulSetController:
    """``hosts``: Kubernetes nodes the scheduler places pods on, round robin by ordinal."""

    def __init__(self, api_: Api, fed: FakeFederation, hosts: int = 3) -> None:
        self.api = api_
        self.fed = fed
        self.hosts = hosts
        self._task: asyncio.Task[None] | None = None
        # The issuer behind cert-manager's CSI driver: a pod whose TLS volume is a CSI one
        # gets a certificate of its own from this CA, as the driver would issue it.
        self.csi_ca: pki.KeyPair | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._loop())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _loop(self) -> None:
        while True:
            await self.step()
            await asyncio.sleep(0.1)

    async def step(self) -> None:
        stss = {s["metadata"]["name"]: s
                for s in await self.api.items(f"/apis/apps/v1/namespaces/{NS}/statefulsets")}
        pods = {p["metadata"]["name"]: p
                for p in await self.api.items(f"/api/v1/namespaces/{NS}/pods")}
        sts = stss.get(self.fed.name)
        # Nodes whose pod is gone stop (the kubelet killed the container).
        for pod in list(self.fed.runners):
            if pod not in pods:
                await self.fed.stop_node(pod)
        if sts is None:
            for pod in pods:
                if manifests.ordinal(self.fed.name, pod) is not None:
                    await self.api.call("DELETE", f"/api/v1/namespaces/{NS}/pods/{pod}")
            return
        await self._sync(sts, pods)

    async def _sync(self, sts: dict[str, Any], pods: dict[str, dict[str, Any]]) -> None:
        name = self.fed.name
        replicas = int(sts["spec"].get("replicas") or 0)
        template = sts["spec"]["template"]
        rev = revision(template)
        for pod in pods:
            ordinal = manifests.ordinal(name, pod)
            if ordinal is not None and ordinal >= replicas:
                await self.api.call("DELETE", f"/api/v1/namespaces/{NS}/pods/{pod}")
                await self.fed.stop_node(pod)
        volume = next(v for v in template["spec"]["volumes"] if v["name"] == "tls")
        secret = None
        if "secret" in volume:
            secret = await self.api.get(
                f"/api/v1/namespaces/{NS}/secrets/{volume['secret']['secretName']}")
        for ordinal in range(replicas):
            pod = f"{name}-{ordinal}"
            if pod in pods:
                continue
            if "csi" in volume:
                if self.csi_ca is None:
                    continue
                data = _csi_issue(self.csi_ca, pod, volume["csi"]["volumeAttributes"])
            elif secret and secret.get("data"):
                data = {k: base64.b64decode(v) for k, v in secret["data"].items()}
            else:
                continue
            await self._create_pod(sts, pod, rev)
            await self.fed.start_node(pod, data)
        ready = 0
        for pod in (await self.api.items(f"/api/v1/namespaces/{NS}/pods")):
            pname = pod["metadata"]["name"]
            ordinal = manifests.ordinal(name, pname)
            if ordinal is None or ordinal >= replicas:
                continue
            is_ready = self.fed.ready(pname)
            ready += is_ready
            want = "True" if is_ready else "False"
            have = next((c["status"] for c in pod.get("status", {}).get("conditions", [])
                         if c["type"] == "Ready"), None)
            if have != want:
                await self.api.call("PATCH", f"/api/v1/namespaces/{NS}/pods/{pname}/status",
                                    {"status": {"conditions": [{"type": "Ready",
                                                                "status": want}]}})
        status = {"replicas": replicas, "readyReplicas": ready, "updateRevision": rev,
                  "currentRevision": rev}
        if any(sts.get("status", {}).get(k) != v for k, v in status.items()):
            await self.api.call("PATCH", f"/apis/apps/v1/namespaces/{NS}/statefulsets/"
                                f"{name}/status", {"status": status})

    async def sync_mounts(self) -> int:
        """What the kubelet does on its next sync: every running pod gets the TLS Secret as
        it is now. Tests call it to choose when pods see a changed Secret; the number of
        pods whose files changed."""
        sts = await self.api.get(f"/apis/apps/v1/namespaces/{NS}/statefulsets/{self.fed.name}")
        assert sts is not None
        name = next(v["secret"]["secretName"] for v in sts["spec"]["template"]["spec"]["volumes"]
                    if v["name"] == "tls")
        secret = await self.api.get(f"/api/v1/namespaces/{NS}/secrets/{name}")
        assert secret is not None
        data = {k: base64.b64decode(v) for k, v in secret["data"].items()}
        return sum(self.fed.sync_files(pod, data) for pod in list(self.fed.runners))

    async def _create_pod(self, sts: dict[str, Any], pod: str, rev: str) -> None:
        template = sts["spec"]["template"]
        labels = {**template["metadata"]["labels"], "controller-revision-hash": rev,
                  "statefulset.kubernetes.io/pod-name": pod}
        claim = sts["spec"]["volumeClaimTemplates"][0]
        pvc = f"{claim['metadata']['name']}-{pod}"
        if await self.api.get(f"/api/v1/namespaces/{NS}/persistentvolumeclaims/{pvc}") is None:
            # Provisioned and bound at once, with the size asked for.
            await self.api.call("POST", f"/api/v1/namespaces/{NS}/persistentvolumeclaims", {
                "apiVersion": "v1", "kind": "PersistentVolumeClaim",
                "metadata": {"name": pvc, "namespace": NS,
                             "labels": claim["metadata"].get("labels", {})},
                "spec": claim["spec"],
                "status": {"phase": "Bound",
                           "capacity": dict(claim["spec"]["resources"]["requests"])}})
        host = f"node-{(manifests.ordinal(self.fed.name, pod) or 0) % self.hosts}"
        await self.api.call("POST", f"/api/v1/namespaces/{NS}/pods", {
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": pod, "namespace": NS, "labels": labels},
            "spec": {**template["spec"], "nodeName": host},
            "status": {"phase": "Running", "podIP": self.fed.ip(pod),
                       "conditions": [{"type": "Ready", "status": "False"}]},
        })


# ---- the mock Job controller -----------------------------------------------------------------

# What a Job's container did: (exit code, termination message).
JobRun = Callable[[dict[str, Any]], Awaitable[tuple[int, str]]]


def job_args(job: dict[str, Any]) -> list[str]:
    """The CLI arguments a Job runs ``continuum-federation`` with."""
    (container,) = job["spec"]["template"]["spec"]["containers"]
    return list(container.get("args") or [])


def arg(job: dict[str, Any], flag: str) -> str | None:
    args = job_args(job)
    return args[args.index(flag) + 1] if flag in args else None


def now_iso() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


class MockJobController:
    """Runs every Job in the namespace through ``run`` (the test's stand-in for the
    container), one attempt after another, as the Job controller would."""

    def __init__(self, api_: Api, run: JobRun) -> None:
        self.api = api_
        self.run = run
        self.attempts: dict[str, int] = {}
        self._pods = itertools.count(1)
        self._busy: set[str] = set()
        self._task: asyncio.Task[None] | None = None
        self._runs: set[asyncio.Task[None]] = set()

    def start(self) -> None:
        self._task = asyncio.create_task(self._loop())

    async def stop(self) -> None:
        for task in [self._task, *self._runs]:
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task

    async def _loop(self) -> None:
        while True:
            for job in await self.api.items(f"/apis/batch/v1/namespaces/{NS}/jobs"):
                name = job["metadata"]["name"]
                done = any(c.get("type") in ("Complete", "Failed") and c.get("status") == "True"
                           for c in (job.get("status") or {}).get("conditions") or [])
                if not done and name not in self._busy:
                    self._busy.add(name)
                    task = asyncio.create_task(self._attempts(job))
                    self._runs.add(task)
                    task.add_done_callback(self._runs.discard)
            await asyncio.sleep(0.1)

    async def _attempts(self, job: dict[str, Any]) -> None:
        name = job["metadata"]["name"]
        path = f"/apis/batch/v1/namespaces/{NS}/jobs/{name}"
        started = now_iso()
        await self.api.call("PATCH", f"{path}/status", {"status": {"startTime": started,
                                                                   "active": 1}})
        limit = int(job["spec"].get("backoffLimit", 6))
        try:
            for attempt in range(limit + 1):
                self.attempts[name] = attempt + 1
                pod = f"{name}-{next(self._pods):05d}"
                labels = {**job["spec"]["template"]["metadata"].get("labels", {}),
                          "job-name": name, "batch.kubernetes.io/job-name": name}
                owner = {"apiVersion": "batch/v1", "kind": "Job", "name": name,
                         "uid": job["metadata"].get("uid", ""), "controller": True}
                await self.api.call("POST", f"/api/v1/namespaces/{NS}/pods", {
                    "apiVersion": "v1", "kind": "Pod",
                    "metadata": {"name": pod, "namespace": NS, "labels": labels,
                                 "ownerReferences": [owner]},
                    "spec": job["spec"]["template"]["spec"],
                    "status": {"phase": "Running"}})
                code, message = await self.run(job)
                await self.api.call("PATCH", f"/api/v1/namespaces/{NS}/pods/{pod}/status", {
                    "status": {"phase": "Succeeded" if code == 0 else "Failed",
                               "containerStatuses": [{
                                   "name": jobs.CONTAINER, "ready": False, "restartCount": 0,
                                   "state": {"terminated": {
                                       "exitCode": code, "message": message,
                                       "finishedAt": now_iso()}}}]}})
                if code == 0:
                    await self._finish(path, "Complete", succeeded=1)
                    return
            await self._finish(path, "Failed", failed=limit + 1,
                               reason="BackoffLimitExceeded",
                               message="Job has reached the specified backoff limit")
        finally:
            self._busy.discard(name)

    async def _finish(self, path: str, type_: str, reason: str = "", message: str = "",
                      **counts: int) -> None:
        now = now_iso()
        status: dict[str, Any] = {"active": 0, **counts, "conditions": [{
            "type": type_, "status": "True", "reason": reason, "message": message,
            "lastTransitionTime": now}]}
        if type_ == "Complete":
            status["completionTime"] = now
        if await self.api.get(path) is not None:
            await self.api.call("PATCH", f"{path}/status", {"status": status})


# ---- kmock setup and the operator -------------------------------------------------------------

_BINARY = {"Ki": 1, "Mi": 2, "Gi": 3, "Ti": 4, "Pi": 5, "Ei": 6}
_DECIMAL = {"n": -9, "u": -6, "m": -3, "": 0, "k": 3, "M": 6, "G": 9, "T": 12, "P": 15, "E": 18}
_SUFFIX = {v: k for k, v in _DECIMAL.items()}


def canonical_quantity(value: int | str) -> str:
    """The spelling the API server stores a quantity in (apimachinery's Quantity.String():
    the format of the suffix written, binary only for whole multiples of 1024, the mantissa
    an integer and the exponent a multiple of three): 0.5 -> 500m, 0.5Gi -> 512Mi,
    1000m -> 1, 1e3 -> 1e3, 1000 -> 1k, 0.1Gi -> 107374182400m."""
    text = str(value)
    m = re.fullmatch(r"([+-]?[0-9.]+)(Ki|Mi|Gi|Ti|Pi|Ei|[numkMGTPE]|[eE][+-]?[0-9]+)?", text)
    if m is None:
        raise ValueError(f"not a quantity: {value!r}")
    number, suffix = decimal.Decimal(m.group(1)), m.group(2) or ""
    if suffix in _BINARY:
        amount, fmt = number * 1024 ** _BINARY[suffix], "binary"
    elif suffix[:1] in ("e", "E"):
        amount, fmt = number.scaleb(int(suffix[1:])), "exponent"
    else:
        amount, fmt = number.scaleb(_DECIMAL[suffix]), "decimal"
    # Precision below 1n is rounded up.
    amount = amount.quantize(decimal.Decimal("1e-9"), rounding=decimal.ROUND_CEILING)
    if fmt == "binary":
        if -1024 < amount < 1024 or amount != amount.to_integral_value():
            fmt = "decimal"
        else:
            whole, exp = int(amount), 0
            while whole % 1024 == 0 and exp < 6:
                whole, exp = whole // 1024, exp + 1
            return f"{whole}{next((k for k, v in _BINARY.items() if v == exp), '')}"
    if amount == 0:
        return "0"
    sign, digits, exp = amount.normalize().as_tuple()
    mantissa, exponent = int("".join(map(str, digits))), int(exp)
    shift = exponent % 3  # lower the exponent to a multiple of three
    mantissa, exponent = mantissa * 10 ** shift, exponent - shift
    text = f"{'-' if sign else ''}{mantissa}"
    if fmt == "exponent":
        return text + (f"e{exponent}" if exponent else "")
    return text + _SUFFIX[exponent]


def canonicalize(obj: Any) -> None:
    """Rewrite, in place, every quantity the API server would store canonically."""
    if isinstance(obj, list):
        for item in obj:
            canonicalize(item)
    if not isinstance(obj, dict):
        return
    for key, value in obj.items():
        if key == "resources" and isinstance(value, dict):
            for kind in ("requests", "limits"):
                amounts = value.get(kind)
                if isinstance(amounts, dict):
                    for name, amount in amounts.items():
                        if amount is not None:
                            amounts[name] = canonical_quantity(amount)
        elif key in ("sizeLimit", "divisor") and isinstance(value, int | str):
            obj[key] = canonical_quantity(value)
        elif key == "capacity" and isinstance(value, dict):
            obj[key] = {k: canonical_quantity(v) for k, v in value.items()}
        canonicalize(value)


# Kinds whose quantities are typed fields (a custom resource keeps what it was sent).
_TYPED = re.compile(r"^/(api/v1|apis/apps/v1)/namespaces/[^/]+/"
                    r"(pods|persistentvolumeclaims|statefulsets)(/|$)")


class Emulator(kmock.KubernetesEmulator):
    """kmock's emulator plus ``metadata.generateName`` (kopf posts Events with it), and
    quantities stored canonically in the built-in kinds, as the API server does."""

    _generated = itertools.count(1)

    async def _handle(self, request: Any) -> Any:
        if request.action == kmock.action.CREATE and isinstance(request.data, dict):
            meta = request.data.setdefault("metadata", {})
            if not meta.get("name") and meta.get("generateName"):
                meta["name"] = f"{meta['generateName']}{next(self._generated):06d}"
            # The API server gives every object a uid and a resourceVersion (kopf tells
            # objects, and their watch events, apart by them).
            meta.setdefault("uid", f"uid-{next(self._generated):06d}")
            meta.setdefault("resourceVersion", "1")
            meta.setdefault("creationTimestamp", time.strftime("%Y-%m-%dT%H:%M:%SZ",
                                                               time.gmtime()))
        if (request.action in (kmock.action.CREATE, kmock.action.UPDATE)
                and isinstance(request.data, dict) and _TYPED.match(request.url.path)):
            canonicalize(request.data)
        return await super()._handle(request)


def declare_resources(kmock: Any) -> None:
    with warnings.catch_warnings():  # kmock reads its bundle with a deprecated importlib API
        warnings.simplefilter("ignore", DeprecationWarning)
        kmock.resources.load_bundled()
    kmock.resources[f"{api.GROUP}/{api.VERSION}/{api.PLURAL}"] = {
        "kind": api.KIND, "singular": api.SINGULAR, "namespaced": True,
        "shortnames": list(api.SHORT_NAMES), "subresources": {"status", "scale"},
        "verbs": ["get", "list", "watch", "create", "update", "patch", "delete"]}
    kmock.resources[f"{backup_spec.GROUP}/{backup_spec.VERSION}/{backup_spec.PLURAL}"] = {
        "kind": backup_spec.KIND, "singular": backup_spec.SINGULAR, "namespaced": True,
        "shortnames": list(backup_spec.SHORT_NAMES), "subresources": {"status"},
        "verbs": ["get", "list", "watch", "create", "update", "patch", "delete"]}
    kmock.resources["cert-manager.io/v1/certificates"] = {
        "kind": "Certificate", "singular": "certificate", "namespaced": True,
        "subresources": {"status"},
        "verbs": ["get", "list", "watch", "create", "update", "patch", "delete"]}
    # kopf's peering between operator replicas (the chart's crds/kopf-peerings.yaml).
    kmock.resources["kopf.dev/v1/clusterkopfpeerings"] = {
        "kind": "ClusterKopfPeering", "singular": "clusterkopfpeering", "namespaced": False,
        "verbs": ["get", "list", "watch", "create", "update", "patch", "delete"]}
    kmock.resources["kopf.dev/v1/kopfpeerings"] = {
        "kind": "KopfPeering", "singular": "kopfpeering", "namespaced": True,
        "verbs": ["get", "list", "watch", "create", "update", "patch", "delete"]}
    kmock.resources["cert-manager.io/v1/issuers"] = {
        "kind": "Issuer", "singular": "issuer", "namespaced": True,
        "verbs": ["get", "list", "watch", "create", "update", "patch", "delete"]}


def operator_settings(server: str, node_port: int, **kw: Any) -> OperatorSettings:
    values: dict[str, Any] = {"api_server": server, "interval": 0.3, "busy_interval": 0.05,
                              "node_port": node_port, "node_timeout": 2.0,
                              "membership_timeout": 5.0, "metrics_port": 0, **kw}
    return OperatorSettings(**values)


@contextlib.asynccontextmanager
async def run_operator(settings: OperatorSettings, memo: kopf.Memo | None = None
                       ) -> AsyncIterator[asyncio.Task[None]]:
    """Run the real operator (our handlers, kopf's engine) until the block exits."""
    memo = memo if memo is not None else kopf.Memo()
    memo["settings"] = settings
    stop = asyncio.Event()
    ready = asyncio.Event()
    task = asyncio.create_task(kopf.operator(
        registry=kopf.get_default_registry(), clusterwide=True, standalone=True,
        stop_flag=stop, ready_flag=ready, memo=memo))
    try:
        await asyncio.wait_for(ready.wait(), timeout=30)
        yield task
    finally:
        stop.set()
        if not task.done():
            try:
                await asyncio.wait_for(task, timeout=30)
            except (TimeoutError, asyncio.CancelledError):
                task.cancel()
                with contextlib.suppress(BaseException):
                    await task



def _csi_issue(ca: pki.KeyPair, pod: str, attrs: dict[str, str]) -> dict[str, bytes]:
    """What cert-manager's CSI driver mounts for ``pod``: a certificate of its own."""
    names = [n.replace("${POD_NAME}", pod)
             for n in attrs["csi.cert-manager.io/dns-names"].split(",")]
    pair = pki.issue(ca, pod, dns_names=names, uris=[attrs["csi.cert-manager.io/uri-sans"]],
                     server="server auth" in attrs["csi.cert-manager.io/key-usages"])
    return {"tls.crt": pair.cert_pem, "tls.key": pair.key_pem, "ca.crt": ca.cert_pem}
