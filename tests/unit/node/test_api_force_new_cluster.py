"""POST /v1/cluster/force-new-cluster: guarded against accidents and a working quorum."""

from __future__ import annotations

from typing import Any

import pytest

from continuum.federation.distributed import errors
from unit.node.test_api_errors import serving


async def _post(error: BaseException | None, body: Any
                ) -> tuple[int, dict[str, Any], int]:
    async with serving(error) as (client, fake, _):
        kw = {} if body is None else {"json": body}
        resp = await client.post("/v1/cluster/force-new-cluster", **kw)
        return resp.status, await resp.json(), len(fake.calls)


@pytest.mark.parametrize("body", [
    None, [], {}, {"confirm": 1},
    {"confirm": "node-2"},  # another node's id: a call meant elsewhere
])
async def test_a_body_without_this_nodes_id_is_refused(body: Any) -> None:
    got, payload, calls = await _post(None, body)
    assert (got, payload["error"]) == (400, "invalid")
    assert "node-1" in payload["message"]
    assert calls == 0


async def test_a_node_that_sees_a_leader_refuses_with_409() -> None:
    refusal = errors.MembershipError("has_leader", "this node sees a leader (node-3): quorum "
                                     "is not lost", leader_id="node-3")
    status, payload, _ = await _post(refusal, {"confirm": "node-1"})
    assert status == 409 and payload["error"] == "has_leader"
    assert payload["leader_id"] == "node-3" and "quorum is not lost" in payload["message"]


async def test_a_node_without_committed_data_refuses_with_409() -> None:
    refusal = errors.MembershipError("refused", "node-1 has no committed Raft data")
    status, payload, _ = await _post(refusal, {"confirm": "node-1"})
    assert status == 409 and payload == {"error": "refused",
                                         "message": "node-1 has no committed Raft data"}


async def test_a_confirmed_call_without_a_leader_recovers() -> None:
    status, _, calls = await _post(None, {"confirm": "node-1"})
    assert status == 200 and calls == 1
