"""Hypothesis: the top-down digest comparison finds exactly the keys that differ."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from continuum.federation.distributed.core.crdt import merkle

keys = st.text(min_size=1, max_size=6)
stores = st.dictionaries(keys, st.binary(max_size=3), max_size=200)


def build(store: dict[str, bytes]) -> merkle.MerkleTree:
    t = merkle.MerkleTree(depth=3, fanout=4)
    for k, v in store.items():
        t.set(k, merkle.key_digest(k, v))
    return t


def compare(a: merkle.MerkleTree, b: merkle.MerkleTree) -> set[str]:
    level, nodes = 1, list(range(a.fanout))
    while True:
        diff = merkle.differing(nodes, a.hashes(level, nodes), b.hashes(level, nodes))
        if not diff:
            return set()
        if level == a.depth:
            break
        nodes, level = a.children(level, diff), level + 1
    out: set[str] = set()
    for mine, theirs in zip(a.entries(diff), b.entries(diff), strict=True):
        out |= merkle.differing_keys(mine, theirs)
    return out


@settings(max_examples=200, deadline=None)
@given(stores, stores)
def test_descent_finds_exactly_the_differences(x: dict[str, bytes], y: dict[str, bytes]) -> None:
    expect = {k for k in x.keys() | y.keys() if x.get(k) != y.get(k)}
    a, b = build(x), build(y)
    assert compare(a, b) == expect == compare(b, a)
    assert (a.root == b.root) == (not expect)


@settings(max_examples=100, deadline=None)
@given(stores, st.lists(st.tuples(keys, st.one_of(st.none(), st.binary(max_size=3)))))
def test_incremental_updates_equal_a_rebuild(start: dict[str, bytes],
                                             edits: list[tuple[str, bytes | None]]) -> None:
    t = build(start)
    final = dict(start)
    for k, v in edits:
        t.set(k, None if v is None else merkle.key_digest(k, v))
        if v is None:
            final.pop(k, None)
        else:
            final[k] = v
    assert t.levels == build(final).levels
