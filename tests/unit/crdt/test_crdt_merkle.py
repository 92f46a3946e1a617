"""The bucketed hash tree: incremental hashes and top-down comparison."""

from __future__ import annotations

import pytest

from continuum.federation.distributed.core.crdt import merkle


def tree_with(keys: dict[str, bytes]) -> merkle.MerkleTree:
    t = merkle.MerkleTree(depth=3, fanout=8)
    for k, v in keys.items():
        t.set(k, merkle.key_digest(k, v))
    return t


def descend(a: merkle.MerkleTree, b: merkle.MerkleTree) -> tuple[set[str], int]:
    """The comparison the shell runs over the network; returns keys and hashes compared."""
    compared = 0
    level, nodes = 1, list(range(a.fanout))
    while True:
        diff = merkle.differing(nodes, a.hashes(level, nodes), b.hashes(level, nodes))
        compared += len(nodes)
        if not diff:
            return set(), compared
        if level == a.depth:
            break
        nodes, level = a.children(level, diff), level + 1
    keys: set[str] = set()
    for mine, theirs in zip(a.entries(diff), b.entries(diff), strict=True):
        keys |= merkle.differing_keys(mine, theirs)
    return keys, compared


def test_hashes_are_order_independent_and_incremental() -> None:
    data = {f"k{i}": str(i).encode() for i in range(500)}
    a = tree_with(data)
    b = tree_with(dict(reversed(list(data.items()))))
    assert a.root == b.root and a.levels == b.levels
    b.set("k7", merkle.key_digest("k7", b"changed"))
    assert a.root != b.root
    b.set("k7", merkle.key_digest("k7", b"7"))
    assert a.root == b.root
    b.set("extra", 123)
    b.set("extra", None)
    b.set("never-there", None)
    assert a.levels == b.levels


def test_descent_finds_exactly_the_differing_keys() -> None:
    data = {f"k{i}": b"v" for i in range(2000)}
    a = tree_with(data)
    b = tree_with(data)
    b.set("k5", merkle.key_digest("k5", b"other"))
    b.set("k1999", None)
    b.set("new", merkle.key_digest("new", b"v"))
    keys, compared = descend(a, b)
    assert keys == {"k5", "k1999", "new"}
    assert compared <= 8 + 2 * 3 * 8  # level 1, then the children of at most 3 nodes per level
    assert descend(a, a) == (set(), 8)


def test_bad_indices_and_shapes() -> None:
    t = merkle.MerkleTree(depth=2, fanout=4)
    with pytest.raises(ValueError):
        t.hashes(3, [0])
    with pytest.raises(ValueError):
        t.hashes(1, [4])
    with pytest.raises(ValueError):
        t.entries([16])
    with pytest.raises(ValueError):
        merkle.differing([0, 1], [1, 2], [1])
    with pytest.raises(ValueError):
        merkle.MerkleTree(depth=0)
    assert t.keys_under(0, 0) == []
