"""Selection algorithms and criteria as pure functions with a seeded RNG."""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import pytest

from continuum.federation.distributed.core import balancing


@dataclass
class Node:
    node_id: str
    load_score: float | None = None
    latency_ms: float | None = None
    capacity: Mapping[str, float] = field(default_factory=dict)
    metadata: Mapping[str, Any] = field(default_factory=dict)


def nodes(loads: list[float | None], latencies: list[float | None] | None = None) -> list[Node]:
    lat = latencies or [None] * len(loads)
    return [Node(f"n{i}", load, lat[i]) for i, load in enumerate(loads)]


@pytest.mark.parametrize("algorithm", balancing.ALGORITHMS)
def test_empty_gives_none(algorithm: str) -> None:
    assert balancing.select(algorithm, [], random.Random(1))[0] is None


@pytest.mark.parametrize("algorithm", balancing.ALGORITHMS)
def test_single_candidate_is_chosen(algorithm: str) -> None:
    only = nodes([0.9], [100.0])
    assert balancing.select(algorithm, only, random.Random(1))[0] is only[0]


def test_unknown_algorithm_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match="unknown algorithm 'fastest'"):
        balancing.select("fastest", nodes([0.1]), random.Random(1))


def test_least_loaded_with_two_is_exact() -> None:
    pair = nodes([0.7, 0.2])
    rng = random.Random(7)
    assert {balancing.least_loaded(pair, rng).node_id for _ in range(50)} == {"n1"}


def test_least_loaded_p2c_never_picks_the_most_loaded_and_favours_the_least() -> None:
    cands = nodes([0.5, 0.1, 0.9, 0.3])
    rng = random.Random(42)
    picks = Counter(balancing.least_loaded(cands, rng).node_id for _ in range(4000))
    assert "n2" not in picks  # the most loaded loses every comparison
    # P(least loaded is among 2 of 4 distinct samples) = 1/2
    assert 0.4 < picks["n1"] / 4000 < 0.6
    assert picks["n1"] > picks["n3"] > picks["n0"]


def test_p2c_samples_two_distinct_candidates() -> None:
    rng = random.Random(3)
    for n in (2, 3, 10):
        for _ in range(500):
            i, j = balancing._p2c_indexes(n, rng, 2)
            assert i != j and 0 <= i < n and 0 <= j < n


def test_choices_zero_compares_all() -> None:
    cands = nodes([0.5, 0.1, 0.9, 0.3, 0.2])
    rng = random.Random(5)
    assert {balancing.least_loaded(cands, rng, choices=0).node_id for _ in range(30)} == {"n1"}


def test_unreported_load_ranks_last() -> None:
    pair = nodes([None, 0.99])
    assert balancing.least_loaded(pair, random.Random(1)).node_id == "n1"


def test_latency_uses_p2c_on_latency() -> None:
    cands = nodes([0.0, 0.0, 0.0], [50.0, 5.0, 500.0])
    rng = random.Random(11)
    picks = Counter(balancing.lowest_latency(cands, rng).node_id for _ in range(3000))
    assert "n2" not in picks
    assert picks["n1"] > picks["n0"]
    assert balancing.lowest_latency(cands, rng, choices=0).node_id == "n1"


def test_round_robin_cycles_in_order_and_survives_shrinking() -> None:
    cands = nodes([0.1, 0.2, 0.3])
    cursor, seen = 0, []
    for _ in range(7):
        choice, cursor = balancing.round_robin(cands, cursor)
        seen.append(choice.node_id)
    assert seen == ["n0", "n1", "n2", "n0", "n1", "n2", "n0"]
    choice, cursor = balancing.round_robin(cands[:1], cursor)
    assert choice is cands[0]


def test_random_is_uniform_and_deterministic_for_a_seed() -> None:
    cands = nodes([0.1] * 4)
    r1, r2 = random.Random(9), random.Random(9)
    a = [balancing.pick_random(cands, r1).node_id for _ in range(40)]
    b = [balancing.pick_random(cands, r2).node_id for _ in range(40)]
    assert a == b and len(set(a)) == 4
    rng = random.Random(2)
    picks = Counter(balancing.pick_random(cands, rng).node_id for _ in range(8000))
    assert set(picks) == {"n0", "n1", "n2", "n3"}
    assert all(1700 < v < 2300 for v in picks.values())


# -- criteria ----------------------------------------------------------------------------

POOL = [
    Node("a", 0.2, 5.0, {"concepts": 10_000}, {"region": "eu", "tier": "ssd"}),
    Node("b", 0.8, 50.0, {"concepts": 500}, {"region": "eu"}),
    Node("c", 0.1, 1.0, {"concepts": 20_000}, {"region": "us"}),
    Node("d", None, None, {}, {}),
]


@pytest.mark.parametrize(
    ("criteria", "expected"),
    [
        (None, {"a", "b", "c", "d"}),
        ({}, {"a", "b", "c", "d"}),
        ({"min_capacity": {"concepts": 1000}}, {"a", "c"}),
        ({"metadata": {"region": "eu"}}, {"a", "b"}),
        ({"metadata": {"region": "eu", "tier": "ssd"}}, {"a"}),
        ({"exclude": ["a", "c"]}, {"b", "d"}),
        ({"exclude": "a"}, {"b", "c", "d"}),
        ({"include": ["b", "d", "zz"]}, {"b", "d"}),
        ({"max_load": 0.5}, {"a", "c"}),
        ({"max_latency_ms": 10}, {"a", "c"}),
        ({"min_capacity": {"concepts": 1000}, "metadata": {"region": "eu"}}, {"a"}),
        ({"metadata": {"region": "mars"}}, set()),
    ],
)
def test_criteria_filter(criteria: dict[str, Any] | None, expected: set[str]) -> None:
    crit = balancing.Criteria.parse(criteria)
    assert {n.node_id for n in balancing.qualify(POOL, crit)} == expected


@pytest.mark.parametrize(
    ("criteria", "message"),
    [
        ({"region": "eu"}, "unknown criteria"),
        ({"min_capacity": {"concepts": "lots"}}, "must be a finite number"),
        ({"max_load": float("nan")}, "must be a finite number"),
        ({"max_load": True}, "must be a finite number"),
        ({"exclude": [1, 2]}, "node id"),
        ({"metadata": ["region"]}, "must be dicts"),
        (["exclude"], "must be a dict"),
    ],
)
def test_bad_criteria_are_clear_errors(criteria: Any, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        balancing.Criteria.parse(criteria)


@pytest.mark.parametrize("choices", [0, 2])
def test_ties_are_broken_at_random(choices: int) -> None:
    equal = nodes([0.4, 0.4, 0.4])
    rng = random.Random(8)
    picks = {balancing.least_loaded(equal, rng, choices).node_id for _ in range(200)}
    assert picks == {"n0", "n1", "n2"}


def _pool(n: int) -> list[Node]:
    rng = random.Random(5)
    return [Node(f"n{i:03d}", rng.random(), rng.uniform(1, 50), {"c": float(i)},
                 {"even": i % 2 == 0}) for i in range(n)]


@pytest.mark.parametrize("algorithm", balancing.ALGORITHMS)
@pytest.mark.parametrize(
    "criteria",
    [
        {"metadata": {"even": True}},  # half qualify: found by sampling
        {"min_capacity": {"c": 297}},  # 3 of 300 qualify: the filter fallback
        {"exclude": [f"n{i:03d}" for i in range(299)]},  # exactly one left
    ],
)
def test_select_with_criteria_only_returns_qualifying_nodes(
    algorithm: str, criteria: dict[str, Any]
) -> None:
    pool = _pool(300)
    crit = balancing.Criteria.parse(criteria)
    assert crit is not None
    allowed = {n.node_id for n in balancing.qualify(pool, crit)}
    rng, cursor, seen = random.Random(1), 0, Counter[str]()
    for _ in range(600):
        choice, cursor = balancing.select(algorithm, pool, rng, cursor, 2, crit)
        assert choice is not None
        seen[choice.node_id] += 1
    assert set(seen) <= allowed
    if algorithm == "round_robin":
        assert set(seen) == allowed
    if algorithm == "random":  # 600 uniform draws over at most 150 nodes miss very few
        assert len(seen) >= 0.9 * len(allowed)
    if algorithm == "least_loaded" and len(allowed) > 2:
        worst = max(balancing.qualify(pool, crit), key=lambda n: n.load_score or 0)
        assert worst.node_id not in seen


def test_select_with_criteria_nobody_qualifies() -> None:
    crit = balancing.Criteria.parse({"metadata": {"even": "maybe"}})
    for algorithm in balancing.ALGORITHMS:
        assert balancing.select(algorithm, _pool(100), random.Random(1), 0, 2, crit)[0] is None


def test_round_robin_with_criteria_walks_qualifying_nodes_in_order() -> None:
    pool = _pool(10)
    crit = balancing.Criteria.parse({"metadata": {"even": True}})
    cursor, seen = 0, []
    for _ in range(6):
        choice, cursor = balancing.select("round_robin", pool, random.Random(1), cursor, 2, crit)
        seen.append(choice.node_id)  # type: ignore[union-attr]
    assert seen == ["n000", "n002", "n004", "n006", "n008", "n000"]
