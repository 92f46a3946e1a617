"""PeerSet: merging claims from several sources, expiry, verification, ordering."""

from __future__ import annotations

import math
import random
from collections import Counter

import pytest

from continuum.federation.distributed.core import peers
from continuum.federation.distributed.core.peers import Candidate, PeerSet


def c(addr: str, source: str = peers.DNS, node_id: str | None = None, ttl: float | None = None,
      priority: int = 0, weight: int = 0) -> Candidate:
    return Candidate(addr, source, node_id, ttl, priority, weight)


def test_sources_merge_per_address_and_the_node_id_is_a_hint_until_verified() -> None:
    ps = PeerSet()
    ps.observe(peers.DNS, [c("10.0.0.1:7000")], now=0)
    ps.observe(peers.GOSSIP, [c("10.0.0.1:7000", peers.GOSSIP, "n1", ttl=60)], now=1)
    [rec] = ps.records()
    assert rec.sources == {peers.DNS, peers.GOSSIP}
    assert rec.node_id == "n1" and not rec.verified
    ps.mark_verified("10.0.0.1:7000", "n1-real", "c", now=2)
    assert ps.get("10.0.0.1:7000").node_id == "n1-real"  # type: ignore[union-attr]


@pytest.mark.parametrize(
    ("ttl", "now", "present"),
    [(None, 1e9, True), (10.0, 9.9, True), (10.0, 10.0, False), (0.0, 0.0, False)],
)
def test_claims_expire_at_their_ttl(ttl: float | None, now: float, present: bool) -> None:
    ps = PeerSet()
    ps.observe(peers.DNS, [c("a:1", ttl=ttl)], now=0)
    changes = ps.expire(now)
    assert ("a:1" in ps) is present
    assert changes.removed == (() if present else ("a:1",))


def test_a_peer_stays_while_any_source_still_claims_it() -> None:
    ps = PeerSet()
    ps.observe(peers.DNS, [c("a:1", ttl=5)], now=0)
    ps.observe(peers.STATIC, [c("a:1", peers.STATIC, "a")], now=0)
    ps.expire(100)
    assert ps.get("a:1") is not None and ps.get("a:1").sources == {peers.STATIC}  # type: ignore[union-attr]


def test_a_complete_answer_withdraws_what_it_no_longer_lists() -> None:
    ps = PeerSet()
    ps.observe(peers.DNS, [c("a:1"), c("b:1")], now=0, complete=True)
    ps.observe(peers.BOOTSTRAP, [c("b:1", peers.BOOTSTRAP)], now=0)
    ch = ps.observe(peers.DNS, [c("a:1"), c("c:1")], now=1, complete=True)
    assert ch.added == ("c:1",)
    assert ch.removed == ()  # b:1 is still claimed by the bootstrap list
    assert ps.get("b:1").sources == {peers.BOOTSTRAP}  # type: ignore[union-attr]
    ch = ps.observe(peers.DNS, [], now=2, complete=True)  # NXDOMAIN: nothing from DNS
    assert set(ch.removed) == {"a:1", "c:1"} and len(ps) == 1


def test_self_is_never_a_peer() -> None:
    ps = PeerSet("me:1")
    ps.observe(peers.DNS, [c("me:1"), c("x:1", node_id="me"), c("y:1")], now=0, self_id="me")
    assert [r.address for r in ps.records()] == ["y:1"]
    ps.ignore("y:1")  # a probe found that y:1 is us too
    ps.observe(peers.DNS, [c("y:1")], now=1)
    assert len(ps) == 0


@pytest.mark.parametrize(
    ("bad", "error"),
    [
        (dict(address="nohost", source=peers.DNS), "host:port"),
        (dict(address="a:1", source="carrier-pigeon"), "unknown discovery source"),
        (dict(address="a:1", source=peers.DNS, ttl=-1.0), "ttl"),
        (dict(address="a:1", source=peers.DNS, ttl=math.nan), "ttl"),
        (dict(address="a:1", source=peers.DNS, priority=70000), "priority"),
    ],
)
def test_bad_candidates_are_refused(bad: dict[str, object], error: str) -> None:
    with pytest.raises(ValueError, match=error):
        Candidate(**bad)  # type: ignore[arg-type]


def test_observe_refuses_a_candidate_from_another_source_and_changes_nothing() -> None:
    ps = PeerSet()
    with pytest.raises(ValueError, match="passed as"):
        ps.observe(peers.DNS, [c("a:1"), c("b:1", peers.GOSSIP)], now=0)
    assert len(ps) == 0


def test_failed_probes_back_off_and_only_disproof_clears_verification() -> None:
    ps = PeerSet(policy=peers.ProbePolicy(backoff_base=1, backoff_max=8, reverify_after=100,
                                          recheck_unformed=2))
    ps.observe(peers.DNS, [c("a:1")], now=0)
    assert [r.address for r in ps.due_for_probe(0)] == ["a:1"]
    ps.mark_verified("a:1", "a", "c", now=0, formed=True)
    assert ps.due_for_probe(99) == [] and len(ps.due_for_probe(100)) == 1
    waits = []
    for i in range(5):
        rec = ps.mark_failed("a:1", "timeout", now=10.0 * i)
        waits.append(rec.next_probe - 10.0 * i)  # type: ignore[union-attr]
    assert waits == [1, 2, 4, 8, 8]
    assert ps.get("a:1").verified  # type: ignore[union-attr]  # unreachable is not disproof
    ps.mark_failed("a:1", "wrong cluster", now=50, disproved=True)
    assert not ps.get("a:1").verified  # type: ignore[union-attr]
    ps.mark_verified("a:1", "a", "c", now=60, formed=False)
    assert ps.get("a:1").next_probe == 62  # type: ignore[union-attr]  # ask again until formed


def test_views_merge_one_node_reached_at_two_addresses_preferring_the_verified_one() -> None:
    ps = PeerSet()
    ps.observe(peers.DNS, [c("10.0.0.1:7000", priority=0)], now=0)
    ps.observe(peers.BOOTSTRAP, [c("node1:7000", peers.BOOTSTRAP)], now=0)
    ps.mark_verified("node1:7000", "node-1", "c", now=1)
    ps.mark_verified("10.0.0.1:7000", "node-1", "c", now=1)
    assert [(v.node_id, v.address) for v in ps.views()] == [("node-1", "10.0.0.1:7000")]
    ps.mark_failed("10.0.0.1:7000", "x", now=2, disproved=True)
    assert {(v.node_id, v.address) for v in ps.views()} == {("node-1", "node1:7000"),
                                                           (None, "10.0.0.1:7000")}
    assert [v.address for v in ps.views(verified_only=True)] == ["node1:7000"]


def test_views_are_ordered_by_srv_priority_then_weight() -> None:
    ps = PeerSet()
    ps.observe(peers.DNS, [c("a:1", priority=20, weight=5), c("b:1", priority=10, weight=1),
                           c("c:1", priority=10, weight=50)], now=0)
    assert [v.address for v in ps.views()] == ["c:1", "b:1", "a:1"]


def test_set_verified_by_id_or_address() -> None:
    ps = PeerSet()
    ps.observe(peers.STATIC, [c("a:1", peers.STATIC, "n-a")], now=0)
    assert ps.set_verified("n-a", True, now=1)[0].verified
    assert ps.set_verified("a:1", False, now=2)[0].verified is False
    assert ps.set_verified("nobody", True, now=3) == []
    assert ps.remove("n-a") == ["a:1"] and len(ps) == 0


@pytest.mark.parametrize(
    ("records", "first"),
    [
        ([(10, 0, "x"), (0, 0, "y")], "y"),  # lower priority always first
        ([(0, 100, "heavy"), (0, 0, "zero"), (1, 100, "later")], None),
    ],
)
def test_srv_order_tries_lower_priorities_first(records: list[tuple[int, int, str]],
                                                 first: str | None) -> None:
    order = peers.srv_order(records, random.Random(1))
    assert sorted(order) == sorted(t for _, _, t in records)
    if first:
        assert order[0] == first
    assert order[-1] == max(records)[2]


def test_srv_order_draws_in_proportion_to_weight() -> None:
    rng = random.Random(7)
    firsts = Counter(peers.srv_order([(0, 90, "a"), (0, 10, "b")], rng)[0] for _ in range(4000))
    share = firsts["a"] / 4000
    assert 0.85 < share < 0.95  # expected 90/101 ~ 0.89


def test_unsettled_counts_candidates_not_yet_proven_either_way() -> None:
    ps = PeerSet()
    ps.observe(peers.DNS, [c("a:1"), c("b:1"), c("d:1")], now=0)
    assert ps.unsettled() == 3
    ps.mark_verified("a:1", "a", "c", now=1)
    ps.mark_failed("b:1", "connection refused", now=1)  # silent: might be a member
    ps.mark_failed("d:1", "cluster 'other'", now=1, disproved=True)
    assert ps.unsettled() == 1
    ps.mark_verified("b:1", "b", "c", now=2)
    assert ps.unsettled() == 0


def test_a_node_verified_by_id_before_anyone_named_it_is_verified_when_named() -> None:
    ps = PeerSet()
    ps.observe(peers.BOOTSTRAP, [c("10.0.0.1:7000", peers.BOOTSTRAP),
                                 c("10.0.0.2:7000", peers.BOOTSTRAP)], now=0)
    assert [r.address for r in ps.anonymous()] == ["10.0.0.1:7000", "10.0.0.2:7000"]
    assert ps.set_verified("node-2", True, now=1) == []
    ps.expect_verified("node-2")
    ps.observe(peers.GOSSIP, [c("10.0.0.1:7000", peers.GOSSIP, "node-1", ttl=60)], now=2)
    assert not ps.get("10.0.0.1:7000").verified  # type: ignore[union-attr]
    assert ps.expected == {"node-2"}
    ps.observe(peers.GOSSIP, [c("10.0.0.2:7000", peers.GOSSIP, "node-2", ttl=60)], now=3)
    rec = ps.get("10.0.0.2:7000")
    assert rec is not None and rec.verified and rec.node_id == "node-2"
    assert ps.expected == frozenset() and ps.anonymous() == []


@pytest.mark.parametrize("cancel", ["unverify", "remove", "proven"])
def test_a_waiting_verdict_can_be_withdrawn_or_overtaken(cancel: str) -> None:
    ps = PeerSet()
    ps.observe(peers.BOOTSTRAP, [c("10.0.0.2:7000", peers.BOOTSTRAP)], now=0)
    ps.expect_verified("node-2")
    if cancel == "unverify":
        ps.set_verified("node-2", False, now=1)
    elif cancel == "remove":
        ps.remove("node-2")
    else:
        ps.mark_verified("10.0.0.2:7000", "node-2", "c", now=1)
    assert ps.expected == frozenset()


def test_a_full_set_refuses_new_addresses_and_keeps_the_known_ones() -> None:
    ps = PeerSet(max_peers=2)
    ps.observe(peers.STATIC, [c("a:1", peers.STATIC, "a"), c("b:1", peers.STATIC, "b")], now=0)
    ps.mark_verified("a:1", "a", "c", now=0)
    changes = ps.observe(peers.DNS, [c("b:1"), c("x:1"), c("y:1")], now=1, complete=True)
    assert changes.added == () and sorted(r.address for r in ps.records()) == ["a:1", "b:1"]
    assert ps.get("b:1").sources == {peers.STATIC, peers.DNS}  # type: ignore[union-attr]
    assert (ps.added, ps.refused) == (2, 2)
    with pytest.raises(ValueError, match="max_peers"):
        PeerSet(max_peers=0)
