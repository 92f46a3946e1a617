"""POST /v1/cluster/force-new-cluster: guarded against accidents and a working quorum."""

from __future__ import annotations

from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from continuum.federation.distributed import api, consensus
from unit.node.test_api_errors import _Metrics


class _Raft:
    def __init__(self, leader_id: str | None) -> None:
        self.leader_id = leader_id


class _Node:
    node_id = "node-1"

    def __init__(self, leader_id: str | None, error: BaseException | None = None) -> None:
        self.raft = _Raft(leader_id)
        self.error = error
        self.metrics = _Metrics()
        self.calls = 0

    async def force_new_cluster(self) -> dict[str, Any]:
        self.calls += 1
        if self.error is not None:
            raise self.error
        return {"id": self.node_id, "leader_id": self.node_id, "former_members": ["node-2"]}


async def _post(node: _Node, body: Any) -> tuple[int, dict[str, Any]]:
    app = web.Application()
    api.mount(app, node)  # type: ignore[arg-type]
    async with TestClient(TestServer(app, host="127.0.0.1")) as client:
        kw = {} if body is None else {"json": body}
        resp = await client.post("/v1/cluster/force-new-cluster", **kw)
        return resp.status, await resp.json()


@pytest.mark.parametrize(("body", "status", "code"), [
    (None, 400, "invalid"),
    ([], 400, "invalid"),
    ({}, 400, "invalid"),
    ({"confirm": 1}, 400, "invalid"),
    ({"confirm": "node-2"}, 400, "invalid"),  # another node's id: a call meant elsewhere
])
async def test_a_body_without_this_nodes_id_is_refused(body: Any, status: int,
                                                        code: str) -> None:
    node = _Node(None)
    got, payload = await _post(node, body)
    assert (got, payload["error"]) == (status, code)
    assert "node-1" in payload["message"]
    assert node.calls == 0


async def test_a_node_that_sees_a_leader_refuses_with_409() -> None:
    node = _Node("node-3")
    status, payload = await _post(node, {"confirm": "node-1"})
    assert status == 409 and payload["error"] == "has_leader"
    assert payload["leader_id"] == "node-3" and "quorum is not lost" in payload["message"]
    assert node.calls == 0


async def test_a_node_without_committed_data_refuses_with_409() -> None:
    node = _Node(None, consensus.MembershipError("refused", "node-1 has no committed Raft data"))
    status, payload = await _post(node, {"confirm": "node-1"})
    assert status == 409 and payload == {"error": "refused",
                                         "message": "node-1 has no committed Raft data"}


async def test_a_confirmed_call_without_a_leader_recovers() -> None:
    node = _Node(None)
    status, payload = await _post(node, {"confirm": "node-1"})
    assert status == 200 and payload["leader_id"] == "node-1"
    assert node.metrics.requests == [("force_new_cluster", 200)]
