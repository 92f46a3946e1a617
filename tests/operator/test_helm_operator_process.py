"""The chart's operator command line, run for real: separate `kopf run` processes started with
exactly the command and environment the Deployment renders, against kmock's Kubernetes
emulator. One must serve the liveness probe's endpoint and /metrics on the ports the chart
declares, reconcile a FederationCluster, and exit cleanly on SIGTERM (what the kubelet sends).
Two replicas (the chart's default) must peer so that exactly one works, and the other must
take over when the working one is killed.
"""

from __future__ import annotations

import asyncio
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml
from harness import (
    Api,
    Emulator,
    FakeFederation,
    MockStatefulSetController,
    declare_resources,
    free_port,
    wait_until,
)

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "helm" / "continuum-federation"
HELM = ROOT / "bin" / "helm"
VENV_BIN = Path(sys.executable).parent

pytestmark = [
    pytest.mark.skipif(not HELM.exists(), reason=f"{HELM} missing: run scripts/install-helm.sh"),
    pytest.mark.timeout(180),
    pytest.mark.kmock(cls=Emulator),
]


def rendered(template: str, *values: str) -> dict[str, Any]:
    args = [a for v in values for a in ("--set", v)]
    out = subprocess.run(
        [str(HELM), "template", "cf", str(CHART), "--show-only", f"templates/{template}",
         *args], capture_output=True, text=True, timeout=120, check=True)
    obj: dict[str, Any] = yaml.safe_load(out.stdout)
    return obj


def rendered_container(health: int, metrics: int, *values: str) -> dict[str, Any]:
    dep = rendered("deployment.yaml", f"operator.healthPort={health}",
                   f"operator.metricsPort={metrics}", "operator.settings.interval=0.5", *values)
    container: dict[str, Any] = dep["spec"]["template"]["spec"]["containers"][0]
    return container


async def start(container: dict[str, Any], home: Path, name: str,
                **env_extra: str) -> tuple[asyncio.subprocess.Process, Path]:
    """The container's command and plain environment as a process on loopback."""
    command = [re.sub(r"^--liveness=http://0\.0\.0\.0:", "--liveness=http://127.0.0.1:", a)
               for a in container["command"]]
    env = {e["name"]: e["value"] for e in container["env"] if "value" in e}
    env |= {"PATH": f"{VENV_BIN}{os.pathsep}{os.environ['PATH']}",
            "PYTHONPATH": os.pathsep.join(str(ROOT / p) for p in ("node_image", "operator")),
            "HOME": str(home), **env_extra}
    path = home / f"{name}.log"
    with path.open("wb") as log:
        proc = await asyncio.create_subprocess_exec(*command, env=env, stdout=log,
                                                    stderr=subprocess.STDOUT)
    return proc, path


async def poll(session: aiohttp.ClientSession, url: str, proc: asyncio.subprocess.Process,
               timeout: float = 60.0) -> str:
    deadline = time.monotonic() + timeout
    while True:
        assert proc.returncode is None, "the operator exited early"
        try:
            async with session.get(url) as resp:
                if resp.status == 200:
                    return await resp.text()
        except aiohttp.ClientError:
            pass
        assert time.monotonic() < deadline, f"timed out waiting for {url}"
        await asyncio.sleep(0.1)


async def test_the_deployment_command_runs_the_operator(kmock: Any, tmp_path: Path) -> None:
    declare_resources(kmock)
    health, metrics = free_port(), free_port()
    container = rendered_container(health, metrics, "operator.replicas=1")
    assert "--standalone" in container["command"]
    proc, log_path = await start(container, tmp_path, "operator",
                                 CONTINUUM_OPERATOR_API_SERVER=str(kmock.url))
    try:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5)) as http:
            await poll(http, f"http://127.0.0.1:{health}/healthz", proc)
            # The operator's startup handler serves its own metrics on the chart's port.
            text = await poll(http, f"http://127.0.0.1:{metrics}/metrics", proc)
            assert "continuum_operator" in text
            cr = {"apiVersion": "continuum.dev/v1alpha1", "kind": "FederationCluster",
                  "metadata": {"name": "demo", "namespace": "team-a", "uid": "uid-demo"},
                  "spec": {"replicas": 3}}
            base = str(kmock.url).rstrip("/")
            async with http.post(
                    f"{base}/apis/continuum.dev/v1alpha1/namespaces/team-a/federationclusters",
                    json=cr) as resp:
                assert resp.status < 300, await resp.text()
            await poll(http, f"{base}/apis/apps/v1/namespaces/team-a/statefulsets/demo", proc)
        proc.send_signal(signal.SIGTERM)
        rc = await asyncio.wait_for(proc.wait(), timeout=60)
        assert rc == 0, log_path.read_text()[-3000:]
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


def reconciles(text: str) -> float:
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
               if line.startswith("continuum_operator_reconciles_total{"))


@pytest.mark.slow  # two operator processes and a takeover: ~40 s on a loaded machine
async def test_two_replicas_peer_one_works_and_the_other_takes_over(kmock: Any,
                                                                   tmp_path: Path) -> None:
    declare_resources(kmock)
    api = Api(str(kmock.url))
    fed = FakeFederation("demo", free_port(), tmp_path / "nodes")
    controller = MockStatefulSetController(api, fed)
    lifetime = 4
    peering = rendered("peering.yaml")
    assert peering["kind"] == "ClusterKopfPeering"
    await api.call("POST", "/apis/kopf.dev/v1/clusterkopfpeerings", peering)
    peering_path = f"/apis/kopf.dev/v1/clusterkopfpeerings/{peering['metadata']['name']}"
    ports = {r: (free_port(), free_port()) for r in ("a", "b")}
    procs: dict[str, asyncio.subprocess.Process] = {}
    settings = {"CONTINUUM_OPERATOR_API_SERVER": str(kmock.url),
                "CONTINUUM_OPERATOR_NODE_PORT": str(fed.port),
                "CONTINUUM_OPERATOR_BUSY_INTERVAL": "0.05",
                "CONTINUUM_OPERATOR_NODE_TIMEOUT": "2",
                "CONTINUUM_OPERATOR_MEMBERSHIP_TIMEOUT": "5"}
    controller.start()
    try:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5)) as http:
            async def metric(replica: str) -> float:
                url = f"http://127.0.0.1:{ports[replica][1]}/metrics"
                return reconciles(await poll(http, url, procs[replica]))

            for replica in ("a", "b"):  # a starts first, so it ranks higher
                health, metrics = ports[replica]
                container = rendered_container(health, metrics,
                                               f"operator.peeringLifetime={lifetime}")
                assert any(a.startswith("--peering=") for a in container["command"])
                procs[replica], _ = await start(container, tmp_path, f"operator-{replica}",
                                                POD_ID=f"operator-{replica}", **settings)
                await poll(http, f"http://127.0.0.1:{health}/healthz", procs[replica])

            async def peers() -> set[str]:
                obj = await api.get(peering_path) or {}
                return set(obj.get("status") or {})

            await wait_until(lambda: _equals(peers(), {"operator-a", "operator-b"}), 30,
                             "both replicas in the peering object")
            await api.create_cluster("demo", {"replicas": 1})
            await wait_until(lambda: _converged(api, 1), 60, "1 voter")
            # Exactly one works: a, the earlier; b stands by and has not reconciled once.
            assert await metric("a") > 0 and await metric("b") == 0

            procs["a"].kill()  # no clean exit: its record stays until it is too old
            await procs["a"].wait()
            killed = time.monotonic()
            await api.call("PATCH", api.cr_path("demo"), {"spec": {"replicas": 2}})

            async def b_works() -> bool:
                return await metric("b") > 0

            await wait_until(b_works, lifetime + 30, "b reconciling")
            took_over = time.monotonic() - killed
            await wait_until(lambda: _converged(api, 2), 60, "b scaled the cluster")
            scaled = time.monotonic() - killed
            print(f"\nFIGURES standby's first reconcile {took_over:.1f} s after the kill, "
                  f"scaled 1 -> 2 after {scaled:.1f} s (peering lifetime {lifetime} s)")
            procs["b"].send_signal(signal.SIGTERM)
            assert await asyncio.wait_for(procs["b"].wait(), timeout=60) == 0
    finally:
        await controller.stop()
        await fed.stop()
        await api.close()
        for proc in procs.values():
            if proc.returncode is None:
                proc.kill()
                await proc.wait()


async def _equals(value: Any, expected: Any) -> bool:
    return bool(await value == expected)


async def _converged(api: Api, n: int) -> bool:
    st = await api.cr_status("demo")
    voters = [m for m in st.get("members") or [] if m.get("voter")]
    return (st.get("phase") == "Running" and len(voters) == n
            and st.get("readyReplicas") == n and not st.get("operation"))
