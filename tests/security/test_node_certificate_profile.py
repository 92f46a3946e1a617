"""A node started with a certificate peers would refuse exits at once, in one line."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from continuum.federation.distributed import pki
from continuum.federation.distributed.transport import tls


def _run_node(tmp_path: Path, pair: pki.KeyPair, ca: pki.KeyPair
              ) -> subprocess.CompletedProcess[str]:
    tls_dir = pki.write_secret_dir(tmp_path / "tls", pair, ca.cert_pem)
    env = {k: v for k, v in os.environ.items() if not k.startswith("CONTINUUM_")}
    env.update({"CONTINUUM_NODE_ID": "node-1", "CONTINUUM_BIND_ADDRESS": "127.0.33.1:7000",
                "CONTINUUM_HEALTH_ADDRESS": "127.0.33.1:8080",
                "CONTINUUM_DATA_DIR": str(tmp_path / "data"), "CONTINUUM_TLS_DIR": str(tls_dir),
                "CONTINUUM_INITIAL_MEMBERS": '{"node-1": "127.0.33.1:7000"}'})
    return subprocess.run([sys.executable, "-m", "continuum.federation.distributed.cli", "node",
                           "run"], env=env, capture_output=True, text=True, timeout=60)


@pytest.mark.parametrize(("make", "says"), [
    (lambda ca: pki.issue_client(ca, "node-1", role="admin"), "lacks the node role"),
    (lambda ca: pki.issue(ca, "node-1", dns_names=["node-1"]), "lacks the node role"),
    (lambda ca: pki.issue_node(ca, "node-2"), "does not name this node"),
    (lambda ca: pki.issue(ca, "x", dns_names=["*.local"], uris=[tls.NODE_ROLE_URI]),
     "wildcard_certificates: true"),
], ids=["client-certificate", "no-role-uri", "another-nodes", "wildcard-not-opted-in"])
def test_a_node_whose_certificate_peers_would_refuse_exits_with_one_line(
        tmp_path: Path, make: object, says: str) -> None:
    ca = pki.create_ca()
    pair = make(ca)  # type: ignore[operator]
    done = _run_node(tmp_path, pair, ca)
    assert done.returncode == 1
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), done.stderr
    assert says in lines[0] and "certs node" in lines[0]
    assert not (tmp_path / "data").exists()  # nothing was started, nothing written
