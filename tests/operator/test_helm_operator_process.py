"""The chart's operator command line, run for real: a separate `kopf run` process started with
exactly the command and environment the Deployment renders, against kmock's Kubernetes
emulator. It must serve the liveness probe's endpoint and /metrics on the ports the chart
declares, reconcile a FederationCluster, and exit cleanly on SIGTERM (what the kubelet sends).
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
from harness import Emulator, declare_resources, free_port

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "helm" / "continuum-federation"
HELM = ROOT / "bin" / "helm"
VENV_BIN = Path(sys.executable).parent

pytestmark = [
    pytest.mark.skipif(not HELM.exists(), reason=f"{HELM} missing: run scripts/install-helm.sh"),
    pytest.mark.timeout(180),
    pytest.mark.kmock(cls=Emulator),
]


def rendered_container(health: int, metrics: int) -> dict[str, Any]:
    out = subprocess.run(
        [str(HELM), "template", "cf", str(CHART), "--show-only", "templates/deployment.yaml",
         "--set", f"operator.healthPort={health}", "--set", f"operator.metricsPort={metrics}",
         "--set", "operator.settings.interval=0.5"],
        capture_output=True, text=True, timeout=120, check=True)
    container: dict[str, Any] = yaml.safe_load(out.stdout)["spec"]["template"]["spec"][
        "containers"][0]
    return container


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
    container = rendered_container(health, metrics)
    command: list[str] = container["command"]
    # The pod listens on 0.0.0.0; the test keeps to loopback.
    command = [re.sub(r"^--liveness=http://0\.0\.0\.0:", "--liveness=http://127.0.0.1:", a)
               for a in command]
    env = {e["name"]: e["value"] for e in container["env"] if "value" in e}
    env |= {"PATH": f"{VENV_BIN}{os.pathsep}{os.environ['PATH']}",
            "PYTHONPATH": os.pathsep.join(str(ROOT / p) for p in ("node_image", "operator")),
            "CONTINUUM_OPERATOR_API_SERVER": str(kmock.url), "HOME": str(tmp_path)}
    log = (tmp_path / "operator.log").open("wb")
    proc = await asyncio.create_subprocess_exec(*command, env=env, stdout=log,
                                                stderr=subprocess.STDOUT)
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
        assert rc == 0, (tmp_path / "operator.log").read_text()[-3000:]
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
        log.close()
