"""The replica: a multi-value register per key with dotted version vectors.

A key's state is a *causal context* (a version vector with one entry per
node) and the *siblings*: the writes that no other write known here has
superseded, each tagged with its dot ``(node, counter)``. A local write takes
a new dot, covers the whole current context and so replaces every sibling;
writes made concurrently on different nodes survive side by side until a
later write covers them, and reads resolve them with the configured strategy
(deterministically, so every node reads the same value from the same state).
At most one sibling per node can survive, so siblings never explode.

``join`` is the causal-CRDT merge: keep a sibling unless the other side has
seen its dot and no longer holds it; unite the contexts. It is commutative,
associative and idempotent, so any delivery order, duplication or loss that
is eventually repaired converges every replica to the same state.

Dot counters are per node, not per key, and never fall below the wall clock
in microseconds: a node that lost its disk and rejoins under the same id
still writes dots no replica has seen.

Deletes write a tombstone sibling. A tombstone-only key is collected once
every known replica has confirmed holding the same state (anti-entropy
proves it) and a grace period has passed, so a slow replica cannot bring the
value back.
"""

from __future__ import annotations

import bisect
import hashlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from . import clock, merkle, resolver, values

MAX_KEY_LENGTH = 1024
MAX_SIBLINGS = 1024

Dot = tuple[str, int]


def check_key(key: object) -> str:
    if not isinstance(key, str) or not key:
        raise ValueError(f"keys are non-empty strings, got {key!r}")
    if len(key) > MAX_KEY_LENGTH:
        raise ValueError(f"key longer than {MAX_KEY_LENGTH} characters")
    return key


@dataclass(frozen=True, slots=True)
class KeyState:
    context: clock.VectorClock
    siblings: tuple[values.ReplicatedValue, ...]  # sorted by dot
    digest: bytes = field(default=b"", compare=False)

    def __post_init__(self) -> None:
        if not self.digest:
            parts = [b"%d:%s%d;" % (len(node), node.encode("utf-8"), n)
                     for node, n in self.context.sorted_items()]
            parts.extend(b"|" + s.checksum.encode("ascii") for s in self.siblings)
            object.__setattr__(self, "digest", hashlib.sha256(b"".join(parts)).digest())

    @classmethod
    def of(cls, context: clock.VectorClock, siblings: Iterable[values.ReplicatedValue]) -> KeyState:
        ordered = tuple(siblings)
        if len(ordered) > 1:
            ordered = tuple(sorted(ordered, key=lambda s: s.dot))
        return cls(context, ordered)

    @property
    def is_tombstone(self) -> bool:
        return all(s.deleted for s in self.siblings)

    def to_wire(self) -> dict[str, Any]:
        return {"c": self.context.to_dict(), "s": [s.to_wire() for s in self.siblings]}

    @classmethod
    def from_wire(cls, d: object, *, verify: bool = True) -> KeyState:
        """Parse and check a state; ``values.ChecksumError`` for a corrupt sibling."""
        if not isinstance(d, Mapping) or not isinstance(d.get("s"), list):
            raise ValueError("a key state is {'c': version vector, 's': [siblings]}")
        context = clock.VectorClock.from_dict(d.get("c", {}))
        raw = d["s"]
        if not 1 <= len(raw) <= MAX_SIBLINGS:
            raise ValueError(f"a key state holds 1..{MAX_SIBLINGS} siblings")
        sibs = [values.ReplicatedValue.from_dict(s, verify=verify) for s in raw]
        for s in sibs:
            if not context.dominates(s.version):
                raise ValueError(f"sibling by {s.node_id!r} is outside the state's context")
        return cls.of(context, normalize(sibs))

    @classmethod
    def single(cls, value: values.ReplicatedValue) -> KeyState:
        """The state a single write stands for: its own version is its context."""
        return cls(value.version.copy(), (value,))


def normalize(sibs: Iterable[values.ReplicatedValue]) -> list[values.ReplicatedValue]:
    """Drop siblings another sibling supersedes; one value per dot (highest checksum)."""
    sibs = list(sibs)
    if len(sibs) == 1:
        return sibs
    by_dot: dict[Dot, values.ReplicatedValue] = {}
    for s in sibs:
        cur = by_dot.get(s.dot)
        if cur is None or s.checksum > cur.checksum:
            by_dot[s.dot] = s
    return [s for d, s in by_dot.items()
            if not any(o.version.covers(*d) for od, o in by_dot.items() if od != d)]


def join(a: KeyState, b: KeyState) -> KeyState:
    """The least upper bound of two states of one key."""
    # The usual push: one side has seen all of the other and holds only writes the
    # other has not seen. The join is then that side itself, not a state built anew.
    if _supersedes(b, a):
        return b
    if _supersedes(a, b):
        return a
    return _join_siblings(a, b)


def _supersedes(new: KeyState, old: KeyState) -> bool:
    """True if the join of the two is ``new``: its context covers ``old``'s (and so every
    sibling of ``old``, which its context covers), and ``old`` has seen none of ``new``'s
    siblings (so none of them is one that ``old`` already superseded)."""
    return (new.context.dominates(old.context)
            and not any(old.context.covers(*s.dot) for s in new.siblings))


def _join_siblings(a: KeyState, b: KeyState) -> KeyState:
    """The join, sibling by sibling: the general case."""
    a_dots = {s.dot for s in a.siblings}
    b_dots = {s.dot for s in b.siblings}
    keep: dict[Dot, values.ReplicatedValue] = {}
    for mine, other_dots, other_ctx in ((a, b_dots, b.context), (b, a_dots, a.context)):
        for s in mine.siblings:
            d = s.dot
            if d in other_dots or not other_ctx.covers(*d):
                cur = keep.get(d)
                if cur is None or s.checksum > cur.checksum:
                    keep[d] = s
    return KeyState.of(a.context.merge(b.context), keep.values())


@dataclass(slots=True)
class _Tomb:
    since: float
    confirmed: set[str] = field(default_factory=set)


@dataclass(frozen=True, slots=True)
class MergeResult:
    changed: bool
    state: KeyState
    conflict: bool  # the merge left concurrent live siblings that reads must resolve


class Replica:
    def __init__(
        self,
        node_id: str,
        resolver_: resolver.ConflictResolver | None = None,
        *,
        tree_depth: int = 4,
        tree_fanout: int = 16,
        max_clock_offset: float = 60.0,
        tombstone_grace: float = 60.0,
    ) -> None:
        if not isinstance(node_id, str) or not node_id:
            raise ValueError("node_id must be a non-empty string")
        self.node_id = node_id
        self.resolver = resolver_ or resolver.ConflictResolver()
        self.hlc = clock.HybridLogicalClock(max_clock_offset)
        self.seq = 0  # the last dot counter this node used
        self.tombstone_grace = tombstone_grace
        self.states: dict[str, KeyState] = {}
        self.tree = merkle.MerkleTree(tree_depth, tree_fanout)
        self.vclock = clock.VectorClock()  # pointwise max of every key's context
        self.known_replicas: set[str] = set()  # other nodes that must see a tombstone first
        self._tombs: dict[str, _Tomb] = {}
        # Tombstones collected here: key -> (its context, when). Kept for a while so a
        # replica that has not collected yet neither re-installs it here nor waits forever.
        self.collected: dict[str, tuple[clock.VectorClock, float]] = {}
        self.collected_ttl = max(600.0, 10 * tombstone_grace)
        self._sorted: list[str] | None = None
        self.stats = {"writes_local": 0, "writes_remote": 0, "merges_unchanged": 0,
                      "conflicts_resolved": 0, "tombstones_collected": 0}

    # -- local writes ----------------------------------------------------------------------

    def write(self, key: str, value: Any, now: float) -> tuple[values.ReplicatedValue, KeyState]:
        """A local write: a new dot that supersedes every sibling seen here."""
        return self._write(check_key(key), value, now, deleted=False)

    def delete(self, key: str, now: float) -> tuple[values.ReplicatedValue, KeyState] | None:
        """A tombstone over the current state; None when there is nothing live to delete."""
        cur = self.states.get(check_key(key))
        if cur is None or cur.is_tombstone:
            return None
        return self._write(key, None, now, deleted=True)

    def _write(self, key: str, value: Any, now: float, *, deleted: bool
               ) -> tuple[values.ReplicatedValue, KeyState]:
        cur = self.states.get(key)
        if cur is not None:
            ctx = cur.context.copy()
        else:  # a collected tombstone's history still counts: the write supersedes it
            gone = self.collected.pop(key, None)
            ctx = gone[0].copy() if gone is not None else clock.VectorClock()
        self.seq = max(self.seq + 1, int(now * 1_000_000), ctx.get(self.node_id) + 1)
        ctx.increment(self.node_id, to=self.seq)
        rv = values.ReplicatedValue.create(value, self.hlc.now(now), self.node_id, ctx, deleted)
        state = KeyState(ctx, (rv,))
        self._install(key, state, now)
        self.stats["writes_local"] += 1
        return rv, state

    # -- merging remote state -----------------------------------------------------------------

    def merge(self, key: str, incoming: KeyState, now: float, sender: str | None = None
              ) -> MergeResult:
        """Join a remote state of ``key`` into ours."""
        check_key(key)
        cur = self.states.get(key)
        if cur is None and key in self.collected:
            gone = self.collected[key][0]
            # What the collected tombstone covered stays deleted; only newer writes count.
            fresh = [s for s in incoming.siblings if not gone.covers(*s.dot)]
            if not fresh:
                self.stats["merges_unchanged"] += 1
                return MergeResult(False, incoming, False)
            del self.collected[key]
            incoming = KeyState.of(gone.merge(incoming.context), fresh)
        new = incoming if cur is None else join(cur, incoming)
        if cur is not None and new.digest == cur.digest:
            self.stats["merges_unchanged"] += 1
            if sender is not None and incoming.digest == cur.digest:
                self._confirm(key, sender, cur)
            return MergeResult(False, cur, False)
        for s in incoming.siblings:
            self.hlc.observe(s.timestamp, now)
        # Never reuse a dot a peer has seen from us (e.g. after losing our disk).
        self.seq = max(self.seq, new.context.get(self.node_id))
        self._install(key, new, now)
        self.stats["writes_remote"] += 1
        live = [s for s in new.siblings if not s.deleted]
        conflict = len(new.siblings) > 1 and bool(live)
        if conflict:
            self.stats["conflicts_resolved"] += 1
        if sender is not None and incoming.digest == new.digest:
            self._confirm(key, sender, new)
        return MergeResult(True, new, conflict)

    def _install(self, key: str, state: KeyState, now: float) -> None:
        if key not in self.states:
            self._sorted = None
        self.states[key] = state
        self.tree.set(key, merkle.key_digest(key, state.digest))
        self.vclock.update(state.context)
        if state.is_tombstone:
            self._tombs[key] = _Tomb(now)
        else:
            self._tombs.pop(key, None)

    def load(self, key: str, state: KeyState, now: float) -> None:
        """Restore a state read back from disk."""
        self._install(check_key(key), state, now)
        self.seq = max(self.seq, state.context.get(self.node_id))
        for s in state.siblings:
            self.hlc.observe(s.timestamp, now)

    # -- reads -------------------------------------------------------------------------------

    def resolved(self, key: str) -> values.ReplicatedValue | None:
        """The value reads see (a tombstone counts as absent)."""
        state = self.states.get(key)
        if state is None:
            return None
        rv = state.siblings[0] if len(state.siblings) == 1 else self.resolver.resolve(
            state.siblings)
        return None if rv.deleted else rv

    def read(self, key: str) -> Any:
        rv = self.resolved(key)
        return None if rv is None else rv.value

    def keys(self, after: str | None = None, limit: int = 100) -> list[str]:
        """Live keys in order, after ``after``, at most ``limit``."""
        if limit < 1:
            raise ValueError("limit must be positive")
        if self._sorted is None:
            self._sorted = sorted(self.states)
        start = 0 if after is None else bisect.bisect_right(self._sorted, after)
        out: list[str] = []
        for k in self._sorted[start:]:
            if not self.states[k].is_tombstone:
                out.append(k)
                if len(out) >= limit:
                    break
        return out

    def updates_since(self, since: clock.VectorClock) -> list[tuple[str, KeyState]]:
        """States holding any event ``since`` has not seen."""
        return [(k, s) for k, s in self.states.items() if not since.dominates(s.context)]

    @property
    def live_keys(self) -> int:
        return len(self.states) - len(self._tombs)

    @property
    def tombstones(self) -> int:
        return len(self._tombs)

    # -- tombstone collection -----------------------------------------------------------------

    def tombstone_digests(self) -> dict[str, bytes]:
        """Snapshot taken before an anti-entropy round; see ``confirm_round``."""
        return {k: self.states[k].digest for k in self._tombs}

    def confirm_round(self, peer: str, snapshot: Mapping[str, bytes], differing: set[str]) -> None:
        """After a round with ``peer``: every tombstone outside ``differing`` matched theirs."""
        for key, dig in snapshot.items():
            state = self.states.get(key)
            if key not in differing and state is not None and state.digest == dig:
                self._confirm(key, peer, state)

    def _confirm(self, key: str, peer: str, state: KeyState) -> None:
        tomb = self._tombs.get(key)
        if tomb is not None and state.is_tombstone:
            tomb.confirmed.add(peer)

    def collect_garbage(self, now: float) -> list[str]:
        """Drop tombstones every known replica holds; returns the keys dropped."""
        done = [k for k, t in self._tombs.items()
                if now - t.since >= self.tombstone_grace and self.known_replicas <= t.confirmed]
        for k in done:
            del self._tombs[k]
            self.collected[k] = (self.states.pop(k).context, now)
            self.tree.set(k, None)
            self._sorted = None
        self.stats["tombstones_collected"] += len(done)
        expired = [k for k, (_, t) in self.collected.items() if now - t > self.collected_ttl]
        for k in expired:
            del self.collected[k]
        return done

    def collected_contexts(self, keys: Iterable[str]) -> dict[str, dict[str, int]]:
        """For peers asking about ``keys``: those we collected, with their contexts."""
        return {k: self.collected[k][0].to_dict() for k in keys
                if isinstance(k, str) and k not in self.states and k in self.collected}

    def peer_collected(self, peer: str, key: str, context: clock.VectorClock) -> None:
        """``peer`` collected ``key``'s tombstone: it counts as having seen ours if it covers it."""
        state = self.states.get(key)
        if state is not None and state.is_tombstone and context.dominates(state.context):
            self._confirm(key, peer, state)
