"""Hypothesis: replicas converge under any delivery schedule; merge laws; strategy determinism."""

from __future__ import annotations

from typing import Any

from hypothesis import given, settings
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

# An op: ("write", node, key, value) | ("delete", node, key) | ("deliver", index) | ("tick",)
ops = st.lists(st.one_of(
    st.tuples(st.just("write"), st.sampled_from(NODES), st.sampled_from(KEYS), small_values),
    st.tuples(st.just("delete"), st.sampled_from(NODES), st.sampled_from(KEYS)),
    st.tuples(st.just("deliver"), st.integers(0, 10_000), st.sampled_from(NODES)),
    st.tuples(st.just("tick"), st.floats(0.0, 2.0)),
), max_size=60)


def run(schedule: list[tuple[Any, ...]], final_order: list[int],
        strategy: resolver.ConflictResolutionStrategy
        ) -> tuple[dict[str, replica.Replica], list[tuple[str, tuple[str, int]]]]:
    """Play a schedule; every written state becomes an in-flight message to every node.

    Messages are delivered when the schedule says, to whichever node it names, in any
    order and any number of times; at the end each message is delivered once more in a
    permuted order (a reliable-eventually network)."""
    reps = {n: replica.Replica(n, make_resolver(strategy)) for n in NODES}
    # Skewed wall clocks: LWW must still pick one winner everywhere.
    skew = {"n1": 0.0, "n2": -0.5, "n3": 0.7}
    now = 100.0
    sent: list[tuple[str, replica.KeyState]] = []
    acked: list[tuple[str, tuple[str, int]]] = []
    for op in schedule:
        if op[0] == "write":
            rv, state = reps[op[1]].write(op[2], op[3], now + skew[op[1]])
            sent.append((op[2], state))
            acked.append((op[2], rv.dot))
        elif op[0] == "delete":
            out = reps[op[1]].delete(op[2], now + skew[op[1]])
            if out is not None:
                sent.append((op[2], out[1]))
                acked.append((op[2], out[0].dot))
        elif op[0] == "deliver" and sent:
            key, state = sent[op[1] % len(sent)]
            reps[op[2]].merge(key, state, now)
        elif op[0] == "tick":
            now += op[1]
    order = sorted(range(len(sent)), key=lambda i: final_order[i % len(final_order)] if
                   final_order else i)
    for target in NODES:
        for i in order:
            reps[target].merge(sent[i][0], sent[i][1], now)
    return reps, acked


@settings(max_examples=150, deadline=None)
@given(ops, st.lists(st.integers(), min_size=1, max_size=50), st.sampled_from(STRATEGIES))
def test_any_schedule_converges_and_loses_nothing(
        schedule: list[tuple[Any, ...]], final_order: list[int],
        strategy: resolver.ConflictResolutionStrategy) -> None:
    reps, acked = run(schedule, final_order, strategy)
    first = reps["n1"]
    for r in reps.values():
        assert r.tree.root == first.tree.root
        assert {k: s.digest for k, s in r.states.items()} == \
            {k: s.digest for k, s in first.states.items()}
        for key in KEYS:
            assert values.encode(r.read(key)) == values.encode(first.read(key))
    for key, dot in acked:  # every acknowledged write is in the final causal history
        assert first.states[key].context.covers(*dot)


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

