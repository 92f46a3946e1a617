"""A call's answer follows what happened to it, not who leads when the answer is built.

Three in-process nodes whose links the test cuts: a leader that loses its
leadership while a write, a read or a membership change is under way. A write
that was committed is applied (never refused); one another leader overwrote is
``NotLeader`` (not carried out); one whose fate the node cannot know is
``OutcomeUnknown``; a read or change cut short by the loss is ``NotLeader``.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import msgpack
import pytest

from continuum.federation.distributed import (
    concepts,
    consensus,
    errors,
    replication,
    statemachine,
)
from unit.raft.test_raft_consensus import Cluster, wait_for


class Links:
    """Which in-process messages arrive: cut (sender, receiver) pairs are dropped."""

    def __init__(self, nodes: dict[str, consensus.RaftConsensus]) -> None:
        self.cut: set[tuple[str, str]] = set()
        for nid, node in nodes.items():
            deliver = node._receive

            def receive(kind: str, sender: str, body: dict[str, Any], *,
                        me: str = nid, deliver: Any = deliver) -> None:
                if (sender, me) not in self.cut:
                    deliver(kind, sender, body)
            node._receive = receive  # type: ignore[method-assign]
        self.ids = list(nodes)

    def deafen(self, nid: str) -> None:
        """``nid`` still sends, but hears nothing."""
        self.cut |= {(o, nid) for o in self.ids if o != nid}

    def isolate(self, nid: str) -> None:
        self.deafen(nid)
        self.cut |= {(nid, o) for o in self.ids if o != nid}

    def heal(self) -> None:
        self.cut.clear()


@pytest.fixture
async def cluster() -> AsyncIterator[tuple[Cluster, Links]]:
    c = Cluster(["node-1", "node-2", "node-3"])
    links = Links(c.nodes)
    await c.start()
    yield c, links
    await c.stop()


def others(c: Cluster, leader: consensus.RaftConsensus) -> list[consensus.RaftConsensus]:
    return [n for n in c.nodes.values() if n is not leader]


async def new_leader_among(c: Cluster, old: consensus.RaftConsensus) -> consensus.RaftConsensus:
    await wait_for(lambda: any(n.is_leader for n in others(c, old)))
    return next(n for n in others(c, old) if n.is_leader)


async def test_a_follower_refuses_a_write_as_not_carried_out(
        cluster: tuple[Cluster, Links]) -> None:
    c, _ = cluster
    leader = await c.leader()
    follower = others(c, leader)[0]
    with pytest.raises(errors.NotLeader) as refused:
        await follower.propose({"x": 1})
    assert refused.value.leader_id == leader.node_id
    assert {"x": 1} not in c.applied[leader.node_id]


async def test_an_isolated_leader_says_the_outcome_is_unknown_not_refused(
        cluster: tuple[Cluster, Links]) -> None:
    c, links = cluster
    leader = await c.leader()
    links.isolate(leader.node_id)
    with pytest.raises(errors.OutcomeUnknown):
        await leader.propose({"lonely": 1}, timeout=0.5)
    # the spec's bool cannot tell the two apart; ``propose`` can
    assert await leader.append_entry({"lonely": 2}, timeout=0.3) is False


async def test_a_write_the_next_leader_commits_is_applied_on_the_old_one(
        cluster: tuple[Cluster, Links]) -> None:
    c, links = cluster
    old = await c.leader()
    term = old.get_stats()["current_term"]
    # The old leader's appends reach the followers, but their answers never come back:
    # it cannot commit, steps down, and a follower that holds the entry takes over.
    links.deafen(old.node_id)
    write = asyncio.ensure_future(old.propose({"w": 1}, timeout=10.0))
    new = await new_leader_among(c, old)
    await wait_for(lambda: {"w": 1} in c.applied[new.node_id])
    assert new.get_stats()["current_term"] > term and not old.is_leader
    links.heal()
    applied = await write
    assert c.applied[old.node_id].count({"w": 1}) == 1
    assert applied.index > 0


async def test_a_committed_strong_put_is_answered_with_its_index_not_421(
        cluster: tuple[Cluster, Links]) -> None:
    c, links = cluster
    old = await c.leader()
    store = statemachine.StrongStore()

    def apply(command: Any) -> Any:
        if isinstance(command, dict) and command.get("type") == "concept.put":
            store.put(command["id"], command["value"])
            return True
        return None
    old.register_apply_callback(apply)
    service = concepts.ConceptService(old, store, replication.MultiMasterReplicator("x"),
                                      lambda kind, seconds: None)
    links.deafen(old.node_id)
    put = asyncio.ensure_future(service.put_strong("c1", {"v": 1}, "key-1"))
    await new_leader_among(c, old)
    links.heal()
    answer = await put  # the old leader no longer leads, yet the write took effect
    assert answer["consistency"] == "strong" and store.get("c1") == {"v": 1}
    assert old._node is not None  # the index answered is this write's own entry
    entry = old._node.log.entry(answer["commit_index"])
    assert msgpack.unpackb(entry.data, raw=False)["id"] == "c1"


async def test_a_write_another_leader_overwrote_is_not_carried_out(
        cluster: tuple[Cluster, Links]) -> None:
    c, links = cluster
    old = await c.leader()
    links.isolate(old.node_id)  # its entry never leaves it
    write = asyncio.ensure_future(old.propose({"lost": 1}, timeout=10.0))
    new = await new_leader_among(c, old)
    assert await new.append_entry({"other": 1})
    links.heal()
    with pytest.raises(errors.NotLeader):
        await write
    await wait_for(lambda: {"other": 1} in c.applied[old.node_id])
    assert all({"lost": 1} not in applied for applied in c.applied.values())


async def test_a_read_cut_short_by_the_loss_of_leadership_is_not_leader(
        cluster: tuple[Cluster, Links]) -> None:
    c, links = cluster
    leader = await c.leader()
    links.isolate(leader.node_id)
    with pytest.raises(errors.NotLeader):  # check-quorum steps it down mid-read
        await leader.read_index(timeout=10.0)


async def test_a_member_addition_cut_short_by_the_loss_of_leadership_is_not_leader(
        cluster: tuple[Cluster, Links]) -> None:
    c, links = cluster
    leader = await c.leader()
    # node-4 never runs, so the addition waits for its catch-up when the leader is cut off
    adding = asyncio.ensure_future(leader.add_member("node-4", "127.0.0.1:1", timeout=10.0))
    await wait_for(lambda: "node-4" in leader.get_stats()["learners"])
    links.isolate(leader.node_id)
    with pytest.raises(errors.NotLeader):
        await adding


async def test_a_removal_another_leader_overwrote_is_not_leader(
        cluster: tuple[Cluster, Links]) -> None:
    c, links = cluster
    old = await c.leader()
    victim = others(c, old)[0].node_id
    links.isolate(old.node_id)
    removing = asyncio.ensure_future(old.remove_member(victim, timeout=10.0))
    await new_leader_among(c, old)
    links.heal()
    with pytest.raises(errors.NotLeader):
        await removing
    await wait_for(lambda: old.leader_id not in (None, old.node_id))
    assert victim in {m["id"] for m in old.members()}


async def test_a_transfer_that_reaches_a_node_no_longer_leading_is_not_leader(
        cluster: tuple[Cluster, Links]) -> None:
    c, _ = cluster
    leader = await c.leader()
    follower = others(c, leader)[0]
    with pytest.raises(errors.NotLeader) as refused:
        await follower.transfer_leadership(leader.node_id)
    assert refused.value.leader_id == leader.node_id
