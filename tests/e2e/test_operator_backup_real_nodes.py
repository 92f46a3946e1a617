"""Backup and restore through the operator, end to end with real nodes: a cluster whose pods
run the node image takes strong and default writes; a FederationBackup's Job, run from the
node image exactly as the operator wrote it (command, environment, volumes: the operator's
client certificate Secret, a PVC target, the termination message file), backs it up; the
cluster is lost; a new cluster created with ``spec.bootstrap.fromBackup`` restores its first
member's volume with the restore Job's real command, the other members join it empty, and
every write acknowledged before the backup is there.

Pods and Jobs run as containers of the node image under the harness's mock StatefulSet and
Job controllers (``operator_world.RealFederation``, ``JobContainers`` below); the operator
runs in-process against kmock's emulator. Long mode: two clusters of real containers take
minutes on a shared 2-core machine; the emulator tests (tests/operator/
test_operator_backups.py) are its short siblings.
"""

from __future__ import annotations

import asyncio
import base64
import itertools
import json
import shutil
from pathlib import Path
from typing import Any

import pytest

from e2e.operator_world import DNS_IP, RealFederation, harness
from image.containers import Container, Images, Mount, cluster_dns, owned_dir, pod_volume

NS = harness.NS
FB = "/apis/continuum.dev/v1alpha1/namespaces/prod/federationbackups"
UID = 10001

pytestmark = [pytest.mark.long, pytest.mark.timeout(1200),
              pytest.mark.kmock(cls=harness.Emulator)]


class JobContainers:
    """Runs a Job's pod as the kubelet would: a container of the node image with the Job's
    command, arguments, plain environment and volumes (Secrets from the API, emptyDirs,
    PVCs as folders under ``claims``), the cluster DNS, and the termination-message file where
    the Job says (``terminationMessagePath``)."""

    def __init__(self, api: harness.Api, image: str, root: Path, claims: Path) -> None:
        self.api = api
        self.image = image
        self.root = root
        self.claims = claims
        self._n = itertools.count(1)
        self.logs: list[tuple[str, str]] = []  # (Job, log) of every attempt

    async def run(self, job: dict[str, Any]) -> tuple[int, str]:
        name = job["metadata"]["name"]
        spec = job["spec"]["template"]["spec"]
        (ctr,) = spec["containers"]
        root = self.root / f"{name}-{next(self._n)}"
        volumes = {v["name"]: v for v in spec.get("volumes") or []}
        mounts = []
        for vm in ctr.get("volumeMounts") or []:
            volume = volumes[vm["name"]]
            where = root / "volumes" / vm["name"]
            if "secret" in volume:
                secret = await self.api.get(f"/api/v1/namespaces/{NS}/secrets/"
                                            f"{volume['secret']['secretName']}")
                assert secret is not None, volume
                data = {k: base64.b64decode(v) for k, v in secret["data"].items()}
                pod_volume(where, data, mode=int(volume["secret"].get("defaultMode", 0o644)),
                           gid=UID)
                source = where
            elif "emptyDir" in volume:
                source = owned_dir(where, UID, UID)
            else:
                claim = volume["persistentVolumeClaim"]["claimName"]
                source = self.claims / claim
                if not source.exists():
                    owned_dir(source, UID, UID)
            mounts.append(Mount(source, vm["mountPath"], bool(vm.get("readOnly"))))
        # The kubelet bind-mounts one file there; buildah's chroot isolation loses the other
        # bind mounts' writes when a single file is mounted, so its folder is mounted here.
        where = Path(ctr.get("terminationMessagePath", "/dev/termination-log"))
        assert where.parent != Path("/dev"), "buildah keeps /dev read-only"
        messages = owned_dir(root / "termination", UID, UID)
        message = messages / where.name
        mounts.append(Mount(messages, str(where.parent)))
        env = {e["name"]: e["value"] for e in ctr.get("env") or [] if "value" in e}
        container = Container(self.image, name, env=env, mounts=mounts, user=f"{UID}:{UID}",
                              dns=cluster_dns(DNS_IP, NS), log=root / "log")
        try:
            await asyncio.to_thread(container.create)
            proc = await asyncio.to_thread(container.exec, list(ctr["args"]),
                                           entrypoint=list(ctr["command"]), timeout=600)
        finally:
            await asyncio.to_thread(container.remove)
        self.logs.append((name, proc.stdout + proc.stderr))
        text = message.read_text() if message.exists() else ""
        if not text and proc.returncode != 0:  # FallbackToLogsOnError
            text = "\n".join((proc.stdout + proc.stderr).splitlines()[-80:])[-2048:]
        return proc.returncode, text


async def _world(api: harness.Api, name: str, root: Path, images: Images
                 ) -> tuple[RealFederation, harness.MockStatefulSetController]:
    fed = RealFederation(api, name, root, images.node)
    controller = harness.MockStatefulSetController(api, fed)  # type: ignore[arg-type]
    fed.start()
    controller.start()
    return fed, controller


async def _ready(api: harness.Api, name: str, n: int, timeout: float) -> None:
    async def check() -> bool:
        st = await api.cr_status(name)
        voters = [m for m in st.get("members") or [] if m.get("voter")]
        return (st.get("phase") == "Running" and len(voters) == n
                and st.get("readyReplicas") == n and not st.get("operation"))

    try:
        await harness.wait_until(check, timeout, f"{name}: {n} ready voters")
    except AssertionError:
        print("status:", json.dumps(await api.cr_status(name), indent=1)[:3000])
        raise


async def test_a_cluster_backed_up_by_the_job_is_restored_into_a_new_cluster(
        kmock: Any, images: Images, tmp_path: Path) -> None:
    harness.declare_resources(kmock)
    api = harness.Api(str(kmock.url))
    # Every PersistentVolumeClaim is a folder here: the pods' and the Jobs' alike.
    claims = tmp_path / "pods" / "claims"
    runner = JobContainers(api, images.node, tmp_path / "jobs", claims)
    jobs_controller = harness.MockJobController(api, runner.run)
    jobs_controller.start()
    fed, controller = await _world(api, "demo", tmp_path / "pods", images)
    settings = harness.operator_settings(str(kmock.url), fed.port, node_timeout=3.0,
                                         membership_timeout=60.0)
    try:
        async with harness.run_operator(settings):
            await api.create_cluster("demo", {"replicas": 3})
            await _ready(api, "demo", 3, 240)
            leader = fed.leader()
            assert leader is not None and fed.admin is not None
            c = await fed.client(leader)
            strong = {f"s-{i}": {"i": i} for i in range(40)}
            default = {f"d-{i}": {"i": i} for i in range(40)}
            for key, value in strong.items():
                await c.put(key, value, strong=True, idempotency_key=key)
            for key, value in default.items():
                await c.put(key, value)

            await api.call("POST", FB, {
                "apiVersion": "continuum.dev/v1alpha1", "kind": "FederationBackup",
                "metadata": {"name": "before-loss", "namespace": NS},
                "spec": {"cluster": "demo", "target": {"pvc": {"claimName": "backups",
                                                               "path": "prod"}}}})

            async def stored() -> dict[str, Any] | None:
                fb = await api.get(f"{FB}/before-loss")
                st = (fb or {}).get("status") or {}
                if st.get("phase") == "Failed":
                    print("the Jobs' logs:", *runner.logs, sep="\n")
                    raise AssertionError(f"the backup failed: {st.get('error')}")
                return st if st.get("phase") == "Succeeded" else None

            st = await harness.wait_until(stored, 240, "the backup")
            assert st["node"] != leader and st["node"].startswith("demo-")  # a follower
            assert st["raftIndex"] > 0 and st["sizeBytes"] > 0
            assert st["location"] == "pvc://backups/prod/before-loss"
            manifest = json.loads((claims / "backups" / "prod" / "before-loss" /
                                   "manifest.json").read_text())
            assert manifest["raft"]["index"] == st["raftIndex"]
            assert manifest["archive"]["size"] == st["sizeBytes"]

            # The whole cluster is lost: its pods stop and its volumes are gone.
            await controller.stop()
            await fed.stop()
            for pvc in claims.glob("data-demo-*"):
                shutil.rmtree(pvc)

            fed, controller = await _world(api, "again", tmp_path / "pods", images)
            await api.create_cluster("again", {"replicas": 3, "bootstrap": {
                "fromBackup": {"federationBackup": "before-loss"}}})
            await _ready(api, "again", 3, 300)
            boot = (await api.cr_status("again"))["bootstrap"]
            assert (boot["phase"], boot["source"], boot["raftIndex"]) == (
                "Restored", "pvc://backups/prod/before-loss", st["raftIndex"])
            assert boot["clusterId"] == manifest["cluster"]["id"]
            # Only the first member was restored into; the others joined it empty.
            marker = json.loads((claims / "data-again-0" / "restored-from.json").read_text())
            assert marker["node_id"] == "again-0"
            for pod in ("again-1", "again-2"):
                assert not (claims / f"data-{pod}" / "restored-from.json").exists()
            leader = fed.leader()
            assert leader is not None
            c = await fed.client(leader)
            for key, value in strong.items():
                assert (await c.get(key, strong=True))["value"] == value, key
            for pod in ("again-0", "again-1", "again-2"):
                node = await fed.client(pod)
                for key, value in default.items():
                    got = await harness.wait_until(
                        lambda n=node, k=key: _value(n, k), 60, f"{key} on {pod}")
                    assert got == value, (pod, key)
    finally:
        await jobs_controller.stop()
        await controller.stop()
        await fed.stop()
        await api.close()


async def _value(node: Any, key: str) -> Any:
    try:
        return (await node.get(key)).get("value")
    except Exception:
        return None
