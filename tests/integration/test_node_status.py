"""A node's ``GET /v1/status`` over mTLS reports whether the Raft membership it shows is
committed (what the operator waits for between membership steps)."""

from __future__ import annotations

import socket
from pathlib import Path

import aiohttp
import pytest

from conftest import TestPKI
from continuum.federation.distributed import config, node
from continuum.federation.distributed.transport import tls


def _free_port(host: str) -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        port: int = s.getsockname()[1]
        return port


async def test_status_reports_committed_membership(cluster_pki: TestPKI, tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CONTINUUM_CONFIG_FILE", raising=False)
    host = "127.0.2.61"
    files = cluster_pki.node("status-0", ips=(host,))
    address = f"{host}:{_free_port(host)}"
    settings = config.NodeSettings(
        node_id="status-0", bind_address=address, health_address=f"{host}:{_free_port(host)}",
        data_dir=tmp_path / "data", tls_dir=Path(files.cert).parent,
        initial_members={"status-0": address}, formation_stable_seconds=0)
    n = node.FederationNode(settings)
    await n.start()
    try:
        assert n.raft is not None and n.raft.is_leader  # the sole voter elects itself
        admin = cluster_pki.client("admin")
        async with aiohttp.ClientSession() as session, session.get(
            f"https://{address}/v1/status", ssl=tls.client_context(admin),
            timeout=aiohttp.ClientTimeout(total=10),
        ) as resp:
            assert resp.status == 200
            status = await resp.json()
        assert status["membership_committed"] is True
        assert [m["id"] for m in status["members"]] == ["status-0"]
        assert status["raft"]["config_index"] <= status["commit_index"]
    finally:
        await n.stop()
