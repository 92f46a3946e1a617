"""Hypothesis: replicas converge under any delivery schedule; merge laws; strategy determinism."""

from __future__ import annotations

from typing import Any

from hypothesis import example, given, settings
from hypothesis import strategies as st

from continuum.federation.distributed.core.crdt import clock, replica, resolver, values

NODES = ["n1", "n2", "n3"]
KEYS = ["k1", "k2", "k3"]
STRATEGIES = list(resolver.ConflictResolutionStrategy)


def biggest_encoding(sibs: list[values.ReplicatedValue]) -> Any:
    """A CUSTOM strategy: deterministic, and unlike any built-in one."""
    return max((s.value for s in sibs), key=values.encode)


def make_resolver(strategy: resolver.ConflictResolutionStrategy) -> resolver.ConflictResolver:
    custom = biggest_encoding if strategy is resolver.ConflictResolutionStrategy.CUSTOM else None
    return resolver.ConflictResolver(strategy, custom)

small_values = st.one_of(
    st.integers(-5, 5), st.text(max_size=3),
    st.dictionaries(st.sampled_from("abc"), st.integers(0, 3), max_size=3),
    st.frozensets(st.integers(0, 5), max_size=3).map(set),
    st.lists(st.integers(0, 3), max_size=3),
)

GRACE = 0.5  # tombstone grace: ticks in a schedule pass it
# A message arrives within this many seconds or never (the transport's timeouts bound it in
# the real system). Longer than GRACE, so old states do arrive after their key's tombstone
# was collected; far shorter than a collected tombstone is remembered (Replica.collected_ttl).
LIFETIME = 1.0

# An op: ("write", node, key, value) | ("delete", node, key) | ("deliver", index, node)
# | ("tick", seconds) | ("sync", initiator, peer) | ("gc", node)
ops = st.lists(st.one_of(
    st.tuples(st.just("write"), st.sampled_from(NODES), st.sampled_from(KEYS), small_values),
    st.tuples(st.just("delete"), st.sampled_from(NODES), st.sampled_from(KEYS)),
    st.tuples(st.just("deliver"), st.integers(0, 10_000), st.sampled_from(NODES)),
    st.tuples(st.just("tick"), st.floats(0.0, 2.0)),
    st.tuples(st.just("sync"), st.sampled_from(NODES), st.sampled_from(NODES)),
    st.tuples(st.just("gc"), st.sampled_from(NODES)),
), max_size=60)


def anti_entropy(a: replica.Replica, b: replica.Replica, now: float) -> None:
    """One round as ``MultiMasterReplicator.sync_with`` runs it, ``a`` initiating.

    The keys whose digests differ (what the Merkle descent finds) go to ``b``,
    which merges them and answers with its states of those keys and the contexts
    of the tombstones it already collected; then ``a`` confirms the tombstones
    the round proved ``b`` holds too.
    """
    if a is b:
        return
    snapshot = a.tombstone_digests()
    keys = {k for k in a.states.keys() | b.states.keys()
            if k not in a.states or k not in b.states or a.states[k].digest != b.states[k].digest}
    for k in sorted(keys):
        if k in a.states:
            b.merge(k, a.states[k], now, a.node_id)
    for k in sorted(keys):
        if k in b.states:
            a.merge(k, b.states[k], now, b.node_id)
    for k, ctx in b.collected_contexts(sorted(keys)).items():
        a.peer_collected(b.node_id, k, clock.VectorClock.from_dict(ctx))
    a.confirm_round(b.node_id, snapshot, keys)


def run(schedule: list[tuple[Any, ...]], final_order: list[int],
        strategy: resolver.ConflictResolutionStrategy, *, collect: bool = True
        ) -> tuple[dict[str, replica.Replica], list[tuple[str, tuple[str, int]]]]:
    """Play a schedule; every written state becomes an in-flight message to every node.

    Messages are delivered when the schedule says, to whichever node it names, in any
    order and any number of times, while younger than ``LIFETIME`` (so states from
    before a tombstone was collected still arrive afterwards); anti-entropy rounds
    and tombstone collection run when the schedule says (collection only with
    ``collect``). Then anti-entropy alone repairs what messages missed: every
    pair runs a round, in an order ``final_order`` permutes, and every replica
    collects, three times over."""
    reps = {n: replica.Replica(n, make_resolver(strategy), tombstone_grace=GRACE)
            for n in NODES}
    for r in reps.values():
        r.known_replicas.update(n for n in NODES if n != r.node_id)
    # Skewed wall clocks: LWW must still pick one winner everywhere.
    skew = {"n1": 0.0, "n2": -0.5, "n3": 0.7}
    now = 100.0
    sent: list[tuple[str, replica.KeyState, float]] = []
    acked: list[tuple[str, tuple[str, int]]] = []
    for op in schedule:
        if op[0] == "write":
            rv, state = reps[op[1]].write(op[2], op[3], now + skew[op[1]])
            sent.append((op[2], state, now))
            acked.append((op[2], rv.dot))
        elif op[0] == "delete":
            out = reps[op[1]].delete(op[2], now + skew[op[1]])
            if out is not None:
                sent.append((op[2], out[1], now))
                acked.append((op[2], out[0].dot))
        elif op[0] == "deliver" and sent:
            key, state, at = sent[op[1] % len(sent)]
            if now - at <= LIFETIME:
                reps[op[2]].merge(key, state, now)
        elif op[0] == "tick":
            now += op[1]
        elif op[0] == "sync":
            anti_entropy(reps[op[1]], reps[op[2]], now)
        elif op[0] == "gc" and collect:
            reps[op[1]].collect_garbage(now)
    pairs = [(a, b) for a in NODES for b in NODES if a != b]
    order = sorted(range(len(pairs)), key=lambda i: final_order[i % len(final_order)] if
                   final_order else i)
    for _ in range(3):
        for i in order:
            anti_entropy(reps[pairs[i][0]], reps[pairs[i][1]], now)
        now += GRACE + 1.0  # past the grace on every (skewed) clock
        if collect:
            for r in reps.values():
                r.collect_garbage(now)
    return reps, acked


def history(r: replica.Replica, key: str) -> clock.VectorClock:
    """What ``r`` holds of ``key``'s causal history: its state, or its collected tombstone."""
    if key in r.states:
        return r.states[key].context
    return r.collected[key][0]


@settings(max_examples=150, deadline=None)
@given(ops, st.lists(st.integers(), min_size=1, max_size=50), st.sampled_from(STRATEGIES))
def test_any_schedule_converges_and_loses_nothing(
        schedule: list[tuple[Any, ...]], final_order: list[int],
        strategy: resolver.ConflictResolutionStrategy) -> None:
    reps, acked = run(schedule, final_order, strategy)
    kept, _ = run(schedule, final_order, strategy, collect=False)
    first = reps["n1"]
    for r in reps.values():
        assert r.tree.root == first.tree.root
        assert {k: s.digest for k, s in r.states.items()} == \
            {k: s.digest for k, s in first.states.items()}
        assert r.tombstones == 0  # every tombstone was collected in the end
        for key in KEYS:
            assert values.encode(r.read(key)) == values.encode(first.read(key))
            # Nothing deleted comes back: collecting tombstones changes no read.
            assert values.encode(r.read(key)) == values.encode(kept["n1"].read(key))
    for key, dot in acked:  # every acknowledged write is in the final causal history
        assert history(first, key).covers(*dot)


# One key, and collection-heavy: deletes, anti-entropy and collection interleave often.
collection_ops = st.lists(st.one_of(
    st.tuples(st.just("write"), st.sampled_from(NODES), st.just("k1"), st.integers(0, 3)),
    st.tuples(st.just("delete"), st.sampled_from(NODES), st.just("k1")),
    st.tuples(st.just("deliver"), st.integers(0, 10_000), st.sampled_from(NODES)),
    st.tuples(st.just("tick"), st.floats(0.3, 1.2)),
    st.tuples(st.just("sync"), st.sampled_from(NODES), st.sampled_from(NODES)),
    st.tuples(st.just("gc"), st.sampled_from(NODES)),
), min_size=4, max_size=40)

WRITE_THEN_DELETE = [("write", "n1", "k1", 1), ("deliver", 0, "n2"), ("deliver", 0, "n3"),
                     ("delete", "n1", "k1"), ("deliver", 1, "n2"), ("deliver", 1, "n3")]
ALL_CONFIRM = [("sync", a, b) for a in NODES for b in NODES if a != b]


@settings(max_examples=300, deadline=None)
@given(collection_ops, st.sampled_from(STRATEGIES))
# Collected while a replica still holds the live value: it must never come back.
@example([("write", "n1", "k1", 1), ("deliver", 0, "n2"), ("delete", "n1", "k1"),
          ("tick", 1.5), ("gc", "n1")], resolver.ConflictResolutionStrategy.LAST_WRITE_WINS)
# Collected everywhere, then the old write arrives late at one replica.
@example([*WRITE_THEN_DELETE, *ALL_CONFIRM, ("tick", 0.6), ("gc", "n1"), ("gc", "n2"),
          ("gc", "n3"), ("deliver", 0, "n1")],
         resolver.ConflictResolutionStrategy.HIGHEST_NODE_WINS)
# Collected everywhere, then the key is written again.
@example([*WRITE_THEN_DELETE, *ALL_CONFIRM, ("tick", 0.6), ("gc", "n1"), ("gc", "n2"),
          ("gc", "n3"), ("write", "n3", "k1", 2), ("deliver", 2, "n1")],
         resolver.ConflictResolutionStrategy.MERGE_UNION)
def test_collecting_tombstones_brings_nothing_back(
        schedule: list[tuple[Any, ...]], strategy: resolver.ConflictResolutionStrategy) -> None:
    test_any_schedule_converges_and_loses_nothing.hypothesis.inner_test(  # type: ignore[attr-defined]
        schedule, [0], strategy)


@settings(max_examples=100, deadline=None)
@given(ops, st.lists(st.integers(), min_size=1, max_size=50))
def test_merge_laws_on_states(schedule: list[tuple[Any, ...]], final_order: list[int]) -> None:
    """Collect states of one key seen anywhere; join is commutative, associative, idempotent."""
    reps, _ = run(schedule[: len(schedule) // 2], final_order,
                  resolver.ConflictResolutionStrategy.LAST_WRITE_WINS)
    # Partially synced replicas give us genuinely different states of the same key.
    states = [r.states[k] for r in reps.values() for k in KEYS if k in r.states and k == "k1"]
    states += [r.states["k1"] for r in run(schedule, final_order[::-1],
               resolver.ConflictResolutionStrategy.LAST_WRITE_WINS)[0].values()
               if "k1" in r.states]
    for a in states:
        assert replica.join(a, a).digest == a.digest
        for b in states:
            assert replica.join(a, b).digest == replica.join(b, a).digest
            # The shortcut for a state that supersedes the other joins as the general case.
            joined, general = replica.join(a, b), replica._join_siblings(a, b)
            assert (joined.digest, joined.siblings) == (general.digest, general.siblings)
            for c in states[:4]:
                left = replica.join(replica.join(a, b), c)
                right = replica.join(a, replica.join(b, c))
                assert left.digest == right.digest


def value_trees() -> st.SearchStrategy[Any]:
    leaves = st.one_of(st.none(), st.booleans(), st.integers(), st.text(max_size=5),
                       st.binary(max_size=5),
                       st.floats(allow_nan=False))
    hashable = st.one_of(leaves, st.tuples(leaves, leaves))
    return st.recursive(leaves, lambda inner: st.one_of(
        st.lists(inner, max_size=4),
        st.dictionaries(hashable, inner, max_size=4),
        st.frozensets(hashable, max_size=4).map(set),
        st.tuples(inner, inner),
    ), max_leaves=20)


@settings(max_examples=300, deadline=None)
@given(value_trees(), st.randoms(use_true_random=False))
def test_checksum_ignores_construction_order(value: Any, rnd: Any) -> None:
    def permute(v: Any) -> Any:
        if isinstance(v, dict):
            items = [(k, permute(x)) for k, x in v.items()]
            rnd.shuffle(items)
            return dict(items)
        if isinstance(v, set):
            items = list(v)
            rnd.shuffle(items)
            out = set()
            for x in items:
                out.add(x)
            return out
        if isinstance(v, list):
            return [permute(x) for x in v]
        if isinstance(v, tuple):
            return tuple(permute(x) for x in v)
        return v

    ts, vc = clock.HLCTimestamp(1, 0), clock.VectorClock({"n": 1})
    a = values.ReplicatedValue.create(value, ts, "n", vc)
    b = values.ReplicatedValue.create(permute(value), ts, "n", vc)
    assert a.checksum == b.checksum
    assert values.decode(values.encode(value)) == value


@settings(max_examples=300, deadline=None)
@given(value_trees(), st.integers(min_value=0), st.integers(1, 255))
def test_corrupt_values_are_rejected(value: Any, pos: int, flip: int) -> None:
    rv = values.ReplicatedValue.create(value, clock.HLCTimestamp(5, 0), "n",
                                       clock.VectorClock({"n": 1}))
    w = rv.to_wire()
    data = bytearray(w["data"])
    data[pos % len(data)] ^= flip
    try:
        values.ReplicatedValue.from_dict({**w, "data": bytes(data)})
    except ValueError:  # ChecksumError or EncodingError: either way refused
        return
    raise AssertionError("a corrupted value was accepted")


clocks = st.dictionaries(st.sampled_from(NODES), st.integers(0, 4), max_size=3).map(
    clock.VectorClock)


@given(clocks, clocks, clocks)
def test_vector_clock_partial_order(a: clock.VectorClock, b: clock.VectorClock,
                                    c: clock.VectorClock) -> None:
    mirror = {"before": "after", "after": "before", "equal": "equal", "concurrent": "concurrent"}
    assert b.compare(a) == mirror[a.compare(b)]
    assert (a.compare(b) == "equal") == (a == b)
    m = a.merge(b)
    assert m.dominates(a) and m.dominates(b)
    assert m == b.merge(a) and m.merge(c) == a.merge(b.merge(c))
    if a.dominates(b) and b.dominates(c):
        assert a.dominates(c)

