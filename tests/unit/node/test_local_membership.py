"""Which nodes of a local cluster start as members and which join (no processes here)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from continuum.federation.distributed import local


def _cluster(d: Path, n: int) -> local.LocalCluster:
    return local.LocalCluster(d, local.plan(n, "127.0.0.11", 7000, 8080))


def test_a_fresh_directory_starts_every_node_as_a_founding_member(tmp_path: Path) -> None:
    c = _cluster(tmp_path, 3)
    c._plan_membership()
    assert c.joining == []
    env = local.node_env(tmp_path, c.nodes[0], c.nodes, {})
    assert json.loads(env["CONTINUUM_INITIAL_MEMBERS"]) == {
        "node-1": "127.0.0.11:7000", "node-2": "127.0.0.12:7000", "node-3": "127.0.0.13:7000"}
    assert "CONTINUUM_BOOTSTRAP" not in env


def test_more_nodes_than_recorded_members_join_one_by_one(tmp_path: Path) -> None:
    (tmp_path / "members.json").write_text(json.dumps({"members": ["node-1", "node-2",
                                                                   "node-3"]}))
    c = _cluster(tmp_path, 5)
    c._plan_membership()
    assert c.joining == ["node-4", "node-5"]
    assert [n.node_id for n in c.members()] == ["node-1", "node-2", "node-3"]
    # a joiner must not found a cluster of its own: no static list, bootstrap peers instead
    env = local.node_env(tmp_path, c.nodes[3], c.nodes, {}, join_through=c.members())
    assert "CONTINUUM_INITIAL_MEMBERS" not in env
    assert env["CONTINUUM_BOOTSTRAP"] == "127.0.0.11:7000,127.0.0.12:7000,127.0.0.13:7000"


def test_a_directory_from_before_the_record_counts_nodes_with_raft_state(tmp_path: Path) -> None:
    for nid in ("node-1", "node-2", "node-10"):
        raft = tmp_path / nid / "data" / "raft"
        raft.mkdir(parents=True)
        (raft / "raft.db").write_bytes(b"")
    assert local.recorded_members(tmp_path) == ["node-1", "node-2", "node-10"]


def test_fewer_nodes_than_members_is_refused_in_one_line(tmp_path: Path) -> None:
    ids = [f"node-{i}" for i in range(1, 6)]
    (tmp_path / "members.json").write_text(json.dumps({"members": ids}))
    c = _cluster(tmp_path, 3)
    with pytest.raises(ValueError) as err:
        c.start()
    message = str(err.value)
    assert "\n" not in message and "--nodes 5" in message and f"remove {tmp_path}" in message
    assert not (tmp_path / "nodes.json").exists() and c.procs == {}  # nothing started
