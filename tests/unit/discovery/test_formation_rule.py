"""The formation rule as a table: who bootstraps, who joins, who waits."""

from __future__ import annotations

import pytest

from continuum.federation.distributed.core import formation as f
from continuum.federation.distributed.core.formation import FormationConfig, FormationPeer

LOW = FormationConfig(f.LOWEST_ID, stable_seconds=5, min_nodes=1)
LOW3 = FormationConfig(f.LOWEST_ID, stable_seconds=5, min_nodes=3)
ORD = FormationConfig(f.ORDINAL, stable_seconds=5)


def P(node_id: str, formed: bool = False) -> FormationPeer:
    return FormationPeer(node_id, f"{node_id}:7000", formed)


CASES = [
    # self, membership, peers, unresolved, stable_for, config, expected type, reason contains
    ("a", True, [], 0, 0, LOW, f.Resume, "durable"),
    ("a", True, [P("b", True)], 0, 99, LOW, f.Resume, "durable"),  # never re-bootstraps
    ("a", False, [P("b", True), P("c")], 0, 0, LOW, f.Join, "already belong"),
    ("a", False, [], 0, 5, LOW, f.Bootstrap, "founder"),
    ("a", False, [], 0, 4.9, LOW, f.Wait, "stable"),
    ("a", False, [P("b")], 1, 10, LOW, f.Wait, "not verified"),
    ("b", False, [P("a")], 0, 10, LOW, f.Wait, "waiting for a"),
    ("a", False, [P("b")], 0, 10, LOW3, f.Wait, "2 of 3"),
    ("a", False, [P("b"), P("c")], 0, 10, LOW3, f.Bootstrap, "3 verified"),
    ("node-2", False, [P("node-10")], 0, 10, LOW, f.Bootstrap, "founder"),  # natural order
    # Ids that read as the same number still order one way: exactly one of them founds.
    ("n01", False, [P("n1")], 0, 10, LOW, f.Bootstrap, "founder"),
    ("n1", False, [P("n01")], 0, 10, LOW, f.Wait, "waiting for n01"),
    ("demo-0", False, [], 0, 5, ORD, f.Bootstrap, "founder"),
    ("demo-1", False, [], 0, 99, ORD, f.Wait, "waiting for demo-0"),  # alone, still not founder
    ("demo-1", False, [P("demo-2")], 0, 99, ORD, f.Wait, "waiting for demo-0"),
    ("demo-1", False, [P("demo-0", True)], 0, 0, ORD, f.Join, "already belong"),
    ("demo-0", False, [P("demo-1", True)], 0, 99, ORD, f.Join, "already belong"),  # lost its disk
]


@pytest.mark.parametrize(("me", "member", "peers", "unresolved", "stable", "cfg", "kind", "why"),
                         CASES)
def test_decide(me: str, member: bool, peers: list[FormationPeer], unresolved: int,
                stable: float, cfg: FormationConfig, kind: type, why: str) -> None:
    d = f.decide(me, has_membership=member, peers=peers, unresolved=unresolved,
                 stable_for=stable, config=cfg)
    assert isinstance(d, kind)
    assert why in d.reason


def test_join_targets_are_the_formed_peers_lowest_first() -> None:
    d = f.decide("x", has_membership=False, peers=[P("n-10", True), P("n-2", True), P("n-1")],
                 unresolved=0, stable_for=0, config=LOW)
    assert isinstance(d, f.Join) and d.targets == ("n-2:7000", "n-10:7000")


def test_ordinal_mode_refuses_ids_without_an_ordinal() -> None:
    with pytest.raises(ValueError, match="ordinal"):
        f.decide("alpha", has_membership=False, peers=[], unresolved=0, stable_for=9, config=ORD)


@pytest.mark.parametrize("kwargs", [dict(mode="vote"), dict(stable_seconds=-1), dict(min_nodes=0)])
def test_bad_config_is_refused(kwargs: dict[str, object]) -> None:
    with pytest.raises(ValueError):
        FormationConfig(**kwargs)  # type: ignore[arg-type]


def test_stability_timer_restarts_on_every_change() -> None:
    t = f.StabilityTimer()
    assert t.update({"a"}.__len__(), 0) == 0
    assert t.update(1, 3) == 3
    assert t.update(2, 4) == 0
    assert t.update(2, 10) == 6


@pytest.mark.parametrize(("node_id", "n"), [("demo-0", 0), ("my-app-12", 12), ("x", None),
                                             ("-3", None), ("a-b", None)])
def test_ordinal(node_id: str, n: int | None) -> None:
    assert f.ordinal(node_id) == n
