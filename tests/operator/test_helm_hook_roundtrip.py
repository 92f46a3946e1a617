"""The `helm test` round-trip script, run for real against a local 3-node cluster.

The hook pod's shell script (rendered by helm) runs with the client Secret's layout
(tls.crt, tls.key, ca.crt) against two nodes (one is a follower), as the client Service may
pick any ready node: status must name a leader, a write must read back and delete. A certificate
from a foreign CA must make the same script fail.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from continuum.federation.distributed import local, pki

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "helm" / "continuum-federation"
HELM = ROOT / "bin" / "helm"
FIRST_IP = "127.0.77.1"

pytestmark = [
    pytest.mark.skipif(not HELM.exists(), reason=f"{HELM} missing: run scripts/install-helm.sh"),
    pytest.mark.timeout(240),
    pytest.mark.slow,  # three real node processes, about 30 s on a loaded machine
]


def round_trip_script() -> str:
    out = subprocess.run(
        [str(HELM), "template", "cf", str(CHART), "--set", "tests.clusterName=demo",
         "--show-only", "templates/tests/test-cluster.yaml"],
        capture_output=True, text=True, timeout=120, check=True)
    pod: dict[str, Any] = yaml.safe_load(out.stdout)
    (container,) = pod["spec"]["containers"]
    assert container["command"] == ["/bin/sh", "-ec"]
    script: str = container["args"][0]
    return script


def free_port(ip: str) -> int:
    with socket.socket() as s:
        s.bind((ip, 0))
        port: int = s.getsockname()[1]
        return port


def ready(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as resp:
            return bool(resp.status == 200)
    except OSError:
        return False


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[local.LocalCluster]:
    data = tmp_path_factory.mktemp("roundtrip")
    nodes = local.plan(3, FIRST_IP, free_port(FIRST_IP), free_port(FIRST_IP))
    lc = local.LocalCluster(data, nodes)
    lc.start()
    try:
        deadline = time.monotonic() + 90
        while not all(ready(f"{n.health_url}/readyz") for n in nodes):
            for node_id, proc in lc.procs.items():
                assert proc.poll() is None, (
                    f"{node_id} exited: {(lc.log_dir / f'{node_id}.log').read_text()[-2000:]}")
            assert time.monotonic() < deadline, "the local cluster never became ready"
            time.sleep(0.2)
        yield lc
    finally:
        lc.stop()


def run_hook(script: str, api: str, tls_dir: Path,
             scratch: Path) -> subprocess.CompletedProcess[str]:
    # The pod mounts the Secret at /etc/continuum/client and an emptyDir at /tmp.
    script = script.replace("/tmp/", f"{scratch}/")  # first: tls_dir may be under /tmp too
    script = script.replace("/etc/continuum/client", str(tls_dir))
    env = {"PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
           "API": api, "CONCEPT": "helm-test.cf", "HOME": str(scratch)}
    return subprocess.run(["/bin/sh", "-ec", script], env=env, capture_output=True, text=True,
                          timeout=120, check=False)


def test_round_trip_succeeds_through_any_node(cluster: local.LocalCluster,
                                              tmp_path: Path) -> None:
    script = round_trip_script()
    admin = cluster.data_dir / "pki" / "admin"  # tls.crt, tls.key, ca.crt: a Secret's layout
    for node in (cluster.nodes[0], cluster.nodes[-1]):  # at least one of them is a follower
        run = run_hook(script, node.api_url, admin, tmp_path)
        assert run.returncode == 0, run.stdout + run.stderr
        assert "leader: node-" in run.stdout and "round trip ok" in run.stdout


def test_round_trip_fails_with_a_foreign_certificate(cluster: local.LocalCluster,
                                                     tmp_path: Path) -> None:
    foreign_ca = pki.init_ca(tmp_path / "foreign-ca")
    mallory = pki.issue_client(foreign_ca, "mallory", role="admin")
    tls_dir = pki.write_secret_dir(tmp_path / "foreign", mallory, foreign_ca.cert_pem)
    run = run_hook(round_trip_script(), cluster.nodes[0].api_url, tls_dir, tmp_path)
    assert run.returncode != 0
    assert "round trip ok" not in run.stdout
