"""A real node process takes in a CA rotation through its mounted files, without a restart.

The files change the way the operator's two phases change them: first ``ca.crt`` gains the
new CA (the node must then accept clients of either CA), then the node's own certificate
is replaced by one of the new CA. ``/v1/status`` reports what is loaded at each step
(``trusted_ca_sha256``, ``certificate_sha256``), which is what the operator waits on.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from continuum.federation.distributed import client, pki
from continuum.federation.distributed.transport import tls
from e2e.cluster import Cluster, NodeProcess

IP = "127.0.13.1"
NAME = "demo.prod continuum CA"  # both CAs: told apart by key, as in a real rotation


def _atomic(path: Path, data: bytes) -> None:
    """Replace a mounted file in one step (the kubelet swaps a symlink)."""
    tmp = path.with_name(path.name + ".new")
    tmp.write_bytes(data)
    os.replace(tmp, path)


@pytest.fixture
def world(tmp_path: Path) -> Iterator[dict[str, Any]]:
    old, new = pki.create_ca(NAME), pki.create_ca(NAME)
    node_dir = pki.write_secret_dir(
        tmp_path / "tls", pki.issue_node(old, "n0", ip_addresses=[IP]), old.cert_pem)
    env = {"CONTINUUM_INITIAL_MEMBERS": json.dumps({"n0": f"{IP}:7000"}),
           "CONTINUUM_CLUSTER_NAME": "demo"}
    node = NodeProcess("n0", IP, tmp_path / "n0", node_dir, env)
    node.start()
    try:
        yield {"old": old, "new": new, "node": node, "dir": node_dir, "root": tmp_path}
    finally:
        node.stop()


def _client(root: Path, name: str, signer: pki.KeyPair, trusted: bytes) -> tls.TLSFiles:
    d = pki.write_secret_dir(root / name, pki.issue_client(signer, name, role="admin"), trusted)
    return tls.TLSFiles.from_dir(d)


async def _status(node: NodeProcess, files: tls.TLSFiles) -> dict[str, Any]:
    async with client.ApiClient(node.api_url, files, timeout=5) as c:
        return await c.status()


async def _refused(node: NodeProcess, files: tls.TLSFiles) -> bool:
    try:
        await _status(node, files)
    except Exception:
        return True
    return False


@pytest.mark.slow  # waits for the node's certificate watcher twice (about 10 s each)
async def test_node_trusts_a_published_bundle_then_serves_the_new_leaf(
        world: dict[str, Any]) -> None:
    old, new, node, tls_dir, root = (world[k] for k in ("old", "new", "node", "dir", "root"))
    fp = tls.pem_fingerprints
    both = old.cert_pem + new.cert_pem
    admin_old = _client(root, "admin-old", old, both)
    admin_new = _client(root, "admin-new", new, both)
    waiter = Cluster(root / "unused", 1, "127.0.13.200")

    st = await waiter.wait_for(lambda: _status(node, admin_old), 60, "the node's API")
    assert st["trusted_ca_sha256"] == fp(old.cert_pem)
    assert st["certificate_sha256"] == fp((tls_dir / "tls.crt").read_bytes())[0]
    assert await _refused(node, admin_new)

    # Phase 1: the bundle arrives; the node's own certificate is unchanged.
    _atomic(tls_dir / "ca.crt", both)

    async def trusts_both() -> bool:
        return (await _status(node, admin_old))["trusted_ca_sha256"] == fp(both)

    await waiter.wait_for(trusts_both, 30, "the node to load the bundle")
    assert (await _status(node, admin_new))["node_id"] == "n0"

    # Phase 2: a leaf of the new CA; clients of either CA still get in.
    leaf = pki.issue_node(new, "n0", ip_addresses=[IP])
    _atomic(tls_dir / "tls.key", leaf.key_pem)
    _atomic(tls_dir / "tls.crt", leaf.cert_pem)

    async def serves_new() -> bool:
        return (await _status(node, admin_new))["certificate_sha256"] == fp(leaf.cert_pem)[0]

    await waiter.wait_for(serves_new, 30, "the node to serve the new certificate")
    assert (await _status(node, admin_old))["node_id"] == "n0"
    only_new = _client(root, "admin-only-new", new, new.cert_pem)
    assert (await _status(node, only_new))["node_id"] == "n0"
