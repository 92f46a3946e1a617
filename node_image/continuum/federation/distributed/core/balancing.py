"""Load-balanced selection over candidate nodes: pure functions, injected randomness.

Algorithms (``LoadBalance.algorithm``):

* ``least_loaded``: power of two choices (P2C) by ``load_score``. Loads come
  from heartbeats and are always somewhat stale; picking the global minimum
  sends every selection made between two heartbeats to the same node (herding),
  while P2C (sample ``choices`` distinct nodes, take the least loaded) keeps the
  max-load gap at O(ln ln n) and costs O(1). With two candidates it is exact;
  ``choices=0`` compares every candidate.
* ``latency``: the same, by ``latency_ms`` (Finagle and Linkerd pair P2C with a
  latency estimate for the same reason).
* ``round_robin``: the next candidate after a cursor, in node-id order.
* ``random``: uniform.

A node with no reported figure ranks after every node that reported one.
``Criteria`` restrict the candidates. The sampling algorithms find qualifying
nodes by rejection sampling (O(1) while most nodes qualify) and fall back to
a full filter pass; round-robin walks from its cursor to the next qualifying
node.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

ALGORITHMS = ("least_loaded", "latency", "round_robin", "random")

SAMPLE_ATTEMPTS = 64  # random draws looking for qualifying nodes before filtering them all

CRITERIA_KEYS = frozenset(
    {"min_capacity", "metadata", "exclude", "include", "max_load", "max_latency_ms"}
)


class Candidate(Protocol):
    @property
    def node_id(self) -> str: ...
    @property
    def load_score(self) -> float | None: ...
    @property
    def latency_ms(self) -> float | None: ...
    @property
    def capacity(self) -> Mapping[str, float]: ...
    @property
    def metadata(self) -> Mapping[str, Any]: ...


C = TypeVar("C", bound=Candidate)


def _number(name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ValueError(f"criteria {name!r} must be a finite number, got {value!r}")
    return float(value)


def _ids(name: str, value: Any) -> frozenset[str]:
    if isinstance(value, str):
        return frozenset({value})
    if not isinstance(value, Iterable) or not all(isinstance(v, str) for v in value):
        raise ValueError(f"criteria {name!r} must be a node id or a list of node ids")
    return frozenset(value)


@dataclass(frozen=True, slots=True)
class Criteria:
    """Which candidates qualify. Every given condition must hold.

    ``min_capacity``: ``{"concepts": 1000}``, each reported capacity >= the value.
    ``metadata``: ``{"region": "eu"}``, each metadata key equals the value.
    ``exclude`` / ``include``: node ids to skip / the only ids allowed.
    ``max_load`` / ``max_latency_ms``: upper bounds on reported figures (a node
    that reported none does not qualify).
    """

    min_capacity: tuple[tuple[str, float], ...] = ()
    metadata: tuple[tuple[str, Any], ...] = ()
    exclude: frozenset[str] = frozenset()
    include: frozenset[str] | None = None
    max_load: float | None = None
    max_latency_ms: float | None = None

    @classmethod
    def parse(cls, raw: Mapping[str, Any] | None) -> Criteria | None:
        """Validate a criteria dict; ``None`` or ``{}`` mean "no filter"."""
        if not raw:
            return None
        if not isinstance(raw, Mapping):
            raise ValueError(f"criteria must be a dict, got {type(raw).__name__}")
        unknown = set(raw) - CRITERIA_KEYS
        if unknown:
            raise ValueError(f"unknown criteria {sorted(unknown)}; known: {sorted(CRITERIA_KEYS)}")
        cap = raw.get("min_capacity") or {}
        meta = raw.get("metadata") or {}
        if not isinstance(cap, Mapping) or not isinstance(meta, Mapping):
            raise ValueError("criteria 'min_capacity' and 'metadata' must be dicts")
        return cls(
            min_capacity=tuple((str(k), _number(f"min_capacity.{k}", v)) for k, v in cap.items()),
            metadata=tuple((str(k), v) for k, v in meta.items()),
            exclude=_ids("exclude", raw.get("exclude") or ()),
            include=_ids("include", raw["include"]) if raw.get("include") is not None else None,
            max_load=(_number("max_load", raw["max_load"])
                      if raw.get("max_load") is not None else None),
            max_latency_ms=(_number("max_latency_ms", raw["max_latency_ms"])
                            if raw.get("max_latency_ms") is not None else None),
        )

    def admits(self, c: Candidate) -> bool:
        if c.node_id in self.exclude:
            return False
        if self.include is not None and c.node_id not in self.include:
            return False
        if self.max_load is not None and (c.load_score is None or c.load_score > self.max_load):
            return False
        if self.max_latency_ms is not None and (
            c.latency_ms is None or c.latency_ms > self.max_latency_ms
        ):
            return False
        cap = c.capacity
        for key, least in self.min_capacity:
            have = cap.get(key)
            if have is None or have < least:
                return False
        meta = c.metadata
        for key, want in self.metadata:  # noqa: SIM110 (a loop: no generator on the hot path)
            if key not in meta or meta[key] != want:
                return False
        return True


def qualify(candidates: Sequence[C], criteria: Criteria | None) -> Sequence[C]:
    if criteria is None:
        return candidates
    return [c for c in candidates if criteria.admits(c)]


def _rank(value: float | None) -> float:
    return math.inf if value is None else value


def _below(rng: random.Random, n: int) -> int:
    """A uniform index in ``range(n)``; ``random()`` is 3x cheaper than ``randrange``.

    The bias from 53-bit floats is below 1e-12 for any cluster size we will see.
    """
    return int(rng.random() * n)


def _p2c_indexes(n: int, rng: random.Random, choices: int) -> Iterable[int]:
    if choices <= 0 or choices >= n:
        # Every candidate, from a random start so that ties do not always go to the first.
        start = rng.randrange(n)
        return [(start + k) % n for k in range(n)]
    if choices == 2:  # the hot path: two distinct indexes without building a sample
        i = _below(rng, n)
        j = _below(rng, n - 1)
        return (i, j + 1 if j >= i else j)
    return rng.sample(range(n), choices)


def least_loaded(candidates: Sequence[C], rng: random.Random, choices: int = 2) -> C | None:
    """P2C by ``load_score``; ties go to the first sampled candidate (a random one)."""
    if not candidates:
        return None
    best: C | None = None
    best_load = math.inf
    for i in _p2c_indexes(len(candidates), rng, choices):
        c = candidates[i]
        load = _rank(c.load_score)
        if best is None or load < best_load:
            best, best_load = c, load
    return best


def lowest_latency(candidates: Sequence[C], rng: random.Random, choices: int = 2) -> C | None:
    """P2C by ``latency_ms``."""
    if not candidates:
        return None
    best: C | None = None
    best_latency = math.inf
    for i in _p2c_indexes(len(candidates), rng, choices):
        c = candidates[i]
        latency = _rank(c.latency_ms)
        if best is None or latency < best_latency:
            best, best_latency = c, latency
    return best


def round_robin(candidates: Sequence[C], cursor: int) -> tuple[C | None, int]:
    """The candidate at ``cursor`` (mod len) and the next cursor."""
    if not candidates:
        return None, cursor
    i = cursor % len(candidates)
    return candidates[i], i + 1


def pick_random(candidates: Sequence[C], rng: random.Random) -> C | None:
    if not candidates:
        return None
    return candidates[_below(rng, len(candidates))]


def _sample_admitted(
    candidates: Sequence[C], rng: random.Random, k: int, admits: Callable[[C], bool],
) -> list[C] | None:
    """``k`` distinct admitted candidates, uniformly, by rejection; None if it takes too long.

    Drawing uniformly and skipping what does not qualify gives the same
    distribution as filtering first and sampling the survivors, without a pass
    over every node when most of them qualify.
    """
    n = len(candidates)
    seen: set[int] = set()
    found: list[C] = []
    for _ in range(SAMPLE_ATTEMPTS):
        i = _below(rng, n)
        if i in seen:
            continue
        seen.add(i)
        c = candidates[i]
        if admits(c):
            found.append(c)
            if len(found) == k:
                return found
    return None


def _round_robin_where(
    candidates: Sequence[C], cursor: int, admits: Callable[[C], bool],
) -> tuple[C | None, int]:
    """The first admitted candidate at or after ``cursor``, cyclically."""
    n = len(candidates)
    for step in range(n):
        i = (cursor + step) % n
        if admits(candidates[i]):
            return candidates[i], i + 1
    return None, cursor


def select(
    algorithm: str,
    candidates: Sequence[C],
    rng: random.Random,
    cursor: int = 0,
    choices: int = 2,
    criteria: Criteria | None = None,
) -> tuple[C | None, int]:
    """Run ``algorithm`` over the candidates ``criteria`` admit.

    Returns the choice (None if no candidate qualifies) and the next
    round-robin cursor.
    """
    if algorithm not in ALGORITHMS:
        raise ValueError(f"unknown algorithm {algorithm!r}; known: {', '.join(ALGORITHMS)}")
    if criteria is not None and candidates:
        if algorithm == "round_robin":
            return _round_robin_where(candidates, cursor, criteria.admits)
        k = 1 if algorithm == "random" else choices
        if 0 < k < len(candidates):
            sample = _sample_admitted(candidates, rng, k, criteria.admits)
            if sample is not None:
                candidates, choices = sample, 0
            else:  # few qualify: filter them all, then choose as usual
                candidates = qualify(candidates, criteria)
        else:
            candidates = qualify(candidates, criteria)
    if algorithm == "least_loaded":
        return least_loaded(candidates, rng, choices), cursor
    if algorithm == "latency":
        return lowest_latency(candidates, rng, choices), cursor
    if algorithm == "round_robin":
        return round_robin(candidates, cursor)
    return pick_random(candidates, rng), cursor
