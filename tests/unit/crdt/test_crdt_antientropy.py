"""Merkle anti-entropy without a network: the descent finds exactly the differing keys,
over the wire form, and the decoders refuse what a peer must not send."""

from __future__ import annotations

from typing import Any

import pytest

from continuum.federation.distributed.core.crdt import antientropy, messages, replica


def replicas(shared: int, only_a: list[str], only_b: list[str]
             ) -> tuple[replica.Replica, replica.Replica]:
    a, b = replica.Replica("a"), replica.Replica("b")
    for i in range(shared):
        v, _ = a.write(f"k{i}", i, 1.0)
        b.merge(f"k{i}", replica.KeyState.single(v), 1.0, sender="a")
    for k in only_a:
        a.write(k, "a", 2.0)
    for k in only_b:
        b.write(k, "b", 2.0)
    return a, b


def descend(a: replica.Replica, b: replica.Replica) -> tuple[set[str], int]:
    """Run a's descent against b, every message through its wire form."""
    descent = antientropy.Descent(a.tree)
    asked = 0
    while (req := descent.next_request()) is not None:
        asked += 1
        on_wire = messages.decode_digest_request(messages.encode_digest_request(req))
        reply = antientropy.answer_digest(b.tree, on_wire)
        body = messages.encode_digest_reply(reply, entries=req.entries)
        descent.on_reply(messages.decode_digest_reply(body, req))
    return descent.differing_keys, asked


def test_equal_replicas_settle_in_one_request() -> None:
    a, b = replicas(500, [], [])
    keys, asked = descend(a, b)
    assert keys == set() and asked == 1


def test_the_descent_names_exactly_the_keys_that_differ_both_ways() -> None:
    a, b = replicas(2000, ["only-a-1", "only-a-2"], ["only-b"])
    b.write("k7", "changed on b", 3.0)
    keys, asked = descend(a, b)
    assert keys == {"only-a-1", "only-a-2", "only-b", "k7"}
    assert asked == a.tree.depth + 1  # one request per level, then the leaves' entries


def test_a_request_must_be_answered_before_the_next() -> None:
    a, _ = replicas(1, ["x"], [])
    descent = antientropy.Descent(a.tree)
    assert descent.next_request() is not None
    with pytest.raises(RuntimeError):
        descent.next_request()


@pytest.mark.parametrize("body", [
    {"level": "1", "nodes": [0]}, {"level": 1, "nodes": "0"}, {"level": 1, "nodes": [True]},
    {"level": True, "nodes": [0]}, {"level": 1, "nodes": list(range(70_000))},
])
def test_a_malformed_digest_request_is_refused(body: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        messages.decode_digest_request(body)


def test_a_reply_that_does_not_line_up_with_the_request_is_refused() -> None:
    req = messages.DigestRequest(1, (0, 1, 2))
    for body in ({"hashes": [1, 2]}, {"hashes": [1, 2, "3"]}, {}):
        with pytest.raises(ValueError):
            messages.decode_digest_reply(body, req)
    leaves = messages.DigestRequest(4, (0,), entries=True)
    for body in ({"entries": [[["k", "digest"]]]}, {"entries": [[["k"]]]}, {"entries": []}):
        with pytest.raises(ValueError):
            messages.decode_digest_reply(body, leaves)


def test_a_corrupt_state_is_dropped_and_reported_while_the_rest_is_kept() -> None:
    a = replica.Replica("a")
    a.write("good", 1, 1.0)
    a.write("bad", 2, 1.0)
    wire = messages.encode_states([("good", a.states["good"]), ("bad", a.states["bad"])])
    wire[1][1]["s"][0]["data"] = b"i1:3"  # the checksum no longer matches
    got = messages.decode_states(wire)
    assert set(got.states) == {"good"} and len(got.rejected) == 1


def test_a_fetch_reply_keeps_only_what_was_asked_for() -> None:
    reply = messages.decode_fetch_reply(
        {"states": [], "more": ["a", "zzz", 3], "collected": {"a": {"n": 2}, "b": "junk"}},
        ["a", "b"])
    assert reply.more == ("a",) and set(reply.collected) == {"a"}
