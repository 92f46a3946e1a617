"""Conflict resolution: pick or build one value from concurrent siblings, the same on every node.

Every strategy first puts the siblings in a canonical order (HLC timestamp,
then node id, then checksum), so the outcome depends only on the *set* of
siblings, never on the order they arrived in:

* ``LAST_WRITE_WINS``: the highest hybrid-logical timestamp; node id breaks ties.
* ``HIGHEST_NODE_WINS``: the sibling written by the highest node id (then the latest).
  Ids compare in natural order (``node_order``): runs of ASCII digits by their
  numeric value, everything else character by character, so ``node-9`` <
  ``node-10`` < ``node-10a`` < ``node-b``; ids that differ only in leading
  zeros (``node-01``, ``node-1``) fall back to plain string order. The rule is
  a pure function of the ids, so every replica picks the same winner. Nodes
  that ordered ids as plain strings (before natural order) read a different
  winner for the keys where the two orders disagree until they are upgraded;
  the stored siblings are the same on both, only the read differs.
* ``MERGE_UNION``: dicts merge key by key (recursively), sets unite, lists
  concatenate in canonical sibling order without duplicates; anything else
  falls back to last-write-wins. Live values beat tombstones (add wins).
* ``CUSTOM``: ``custom_fn(siblings)`` (canonically ordered live siblings) returns a
  value or a ``ReplicatedValue``; it must itself be deterministic.
"""

from __future__ import annotations

import enum
import functools
import re
from collections.abc import Callable, Sequence
from typing import Any

from . import clock, values

CustomFn = Callable[[list[values.ReplicatedValue]], Any]


class ConflictResolutionStrategy(enum.StrEnum):
    LAST_WRITE_WINS = "last_write_wins"
    HIGHEST_NODE_WINS = "highest_node_wins"
    MERGE_UNION = "merge_union"
    CUSTOM = "custom"


def canonical_order(v: values.ReplicatedValue) -> tuple[clock.HLCTimestamp, str, str]:
    return (v.timestamp, v.node_id, v.checksum)


_DIGITS = re.compile(r"([0-9]+)")

NaturalKey = tuple[tuple[str | tuple[int, str], ...], str]


@functools.lru_cache(maxsize=1024)  # a cluster has few writers; reads of conflicts repeat them
def node_order(node_id: str) -> NaturalKey:
    """Sort key that puts ids in natural order: ``node-9`` before ``node-10``.

    ``re.split`` with a capturing group alternates text and digit runs, text
    first, so two keys always hold the same kind of part at the same place.
    A digit run compares by (length without leading zeros, digits): numeric
    order without ``int()``, which refuses runs of more than 4300 digits. The
    id itself breaks the ties that leading zeros leave, so the order is total.
    """
    parts: list[str | tuple[int, str]] = []
    for i, part in enumerate(_DIGITS.split(node_id)):
        if i % 2:
            digits = part.lstrip("0") or "0"
            parts.append((len(digits), digits))
        else:
            parts.append(part)
    return tuple(parts), node_id


class ConflictResolver:
    def __init__(
        self,
        strategy: ConflictResolutionStrategy = ConflictResolutionStrategy.LAST_WRITE_WINS,
        custom_fn: CustomFn | None = None,
    ) -> None:
        if not isinstance(strategy, ConflictResolutionStrategy):
            try:
                strategy = ConflictResolutionStrategy(strategy)
            except ValueError:
                names = ", ".join(s.value for s in ConflictResolutionStrategy)
                raise ValueError(
                    f"unknown conflict strategy {strategy!r} (one of {names})") from None
        if strategy is ConflictResolutionStrategy.CUSTOM and custom_fn is None:
            raise ValueError("the CUSTOM strategy needs custom_fn")
        self.strategy = strategy
        self.custom_fn = custom_fn

    def detect_conflicts(self, siblings: Sequence[values.ReplicatedValue]
                         ) -> list[values.ReplicatedValue]:
        """The values no other value causally supersedes, if more than one (else ``[]``)."""
        distinct = {v.checksum: v for v in siblings}
        frontier = [
            v for v in distinct.values()
            if not any(o is not v and o.version.compare(v.version) == "after"
                       for o in distinct.values())
        ]
        frontier.sort(key=canonical_order)
        return frontier if len(frontier) > 1 else []

    def resolve(self, siblings: Sequence[values.ReplicatedValue]) -> values.ReplicatedValue:
        """The single value the siblings resolve to; deterministic across nodes."""
        if not siblings:
            raise ValueError("nothing to resolve")
        ordered = sorted({v.checksum: v for v in siblings}.values(), key=canonical_order)
        # Causally superseded siblings never win a conflict.
        frontier = [v for v in ordered
                    if not any(o.version.compare(v.version) == "after" for o in ordered)]
        if len(frontier) == 1:
            return frontier[0]
        s = self.strategy
        if s is ConflictResolutionStrategy.LAST_WRITE_WINS:
            return frontier[-1]
        if s is ConflictResolutionStrategy.HIGHEST_NODE_WINS:
            return max(frontier, key=lambda v: (node_order(v.node_id), canonical_order(v)))
        live = [v for v in frontier if not v.deleted]
        if not live:
            return frontier[-1]
        if s is ConflictResolutionStrategy.MERGE_UNION:
            merged = merge_values([v.value for v in live])
            return _synthesize(merged, live, frontier)
        assert self.custom_fn is not None
        out = self.custom_fn(list(live))
        if isinstance(out, values.ReplicatedValue):
            return out
        return _synthesize(out, live, frontier)


def _synthesize(value: Any, live: list[values.ReplicatedValue],
                frontier: list[values.ReplicatedValue]) -> values.ReplicatedValue:
    """A resolved value: the latest sibling's metadata, the union of the versions."""
    latest = live[-1]
    version = clock.VectorClock()
    for v in frontier:
        version.update(v.version)
    return values.ReplicatedValue.create(value, latest.timestamp, latest.node_id, version,
                                         resolved_from=tuple(frontier))


def merge_values(items: list[Any]) -> Any:
    """Merge values listed in canonical sibling order (the last is the latest write)."""
    if len(items) == 1:
        return items[0]
    if all(isinstance(x, dict) for x in items):
        keys: dict[Any, None] = {}
        for d in items:
            keys.update(dict.fromkeys(d))
        out = {}
        for k in sorted(keys, key=values.encode):
            out[k] = merge_values([d[k] for d in items if k in d])
        return out
    if all(isinstance(x, set | frozenset) for x in items):
        return set().union(*items)
    if all(isinstance(x, list) for x in items):
        seen: set[bytes] = set()
        merged = []
        for lst in items:
            for x in lst:
                e = values.encode(x)
                if e not in seen:
                    seen.add(e)
                    merged.append(x)
        return merged
    return items[-1]
