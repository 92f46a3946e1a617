"""Canonical encoding and ReplicatedValue checksums."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest

from continuum.federation.distributed.core.crdt import clock, values

TS = clock.HLCTimestamp(1000, 0)


def rv(value: Any, node: str = "n1") -> values.ReplicatedValue:
    return values.ReplicatedValue.create(value, TS, node, clock.VectorClock({node: 1}))


@pytest.mark.parametrize("value", [
    None, True, False, 0, -17, 2**80, 1.5, -0.0, "", "héllo", b"\x00\xff", [], [1, [2, [3]]],
    (1, "a", (2,)), {"a": {"b": [1, {2, 3}]}}, {1: "x", "1": "y", (1, 2): None}, set(),
    {frozenset({1, 2}), (3, 4), "z"},
])
def test_round_trip_is_exact(value: Any) -> None:
    data = values.encode(value)
    back = values.decode(data)
    assert back == value
    assert values.encode(back) == data


def test_equal_values_encode_equal_whatever_the_order() -> None:
    a = {"x": 1, "y": {3, 1, 2}, "z": {"q": 1, "p": 2}}
    b = {"z": {"p": 2, "q": 1}, "y": {2, 3, 1}, "x": 1}
    assert values.encode(a) == values.encode(b)
    assert values.encode(-0.0) == values.encode(0.0)
    # Types stay distinct: a list is not a tuple, 1 is not True, "1" is not 1.
    assert len({values.encode(x) for x in ([1], (1,), 1, True, "1", b"1", 1.0)}) == 7


@pytest.mark.parametrize("bad", [float("nan"), object(), {1: float("nan")}, [complex(1, 2)]])
def test_unencodable_values_are_refused(bad: Any) -> None:
    with pytest.raises(values.EncodingError):
        values.encode(bad)


def test_too_deep_is_refused() -> None:
    v: Any = 1
    for _ in range(values.MAX_DEPTH + 2):
        v = [v]
    with pytest.raises(values.EncodingError):
        values.encode(v)


@pytest.mark.parametrize("data", [b"", b"x", b"i3:12", b"s5:abc", b"l2:N", b"NN", b"S1:l0:",
                                  b"d1:d0:N", b"f\x00", b"i2:ab"])
def test_malformed_encodings_raise(data: bytes) -> None:
    with pytest.raises(values.EncodingError):
        values.decode(data)


def test_checksum_verifies_and_detects_any_change() -> None:
    v = rv({"name": "Distributed Systems", "tags": {"a", "b"}})
    assert v.verify()
    for change in ({"value": {"name": "x"}}, {"timestamp": clock.HLCTimestamp(1001, 0)},
                   {"node_id": "n2"}, {"version": clock.VectorClock({"n1": 2})},
                   {"deleted": True}):
        assert not dataclasses.replace(v, **change).verify(), change


def test_wire_and_plain_forms_round_trip() -> None:
    v = rv({"s": {1, 2}, "t": (1, 2)})
    for form in (v.to_wire(), v.to_dict()):
        back = values.ReplicatedValue.from_dict(form)
        assert back == v and back.verify()


def test_from_dict_rejects_corrupt_and_malformed() -> None:
    w = rv({"a": 1}).to_wire()
    with pytest.raises(values.ChecksumError):
        values.ReplicatedValue.from_dict({**w, "data": values.encode({"a": 2})})
    with pytest.raises(values.ChecksumError):
        values.ReplicatedValue.from_dict({**w, "checksum": "0" * 64})
    for bad in ({k: x for k, x in w.items() if k != "node_id"}, {**w, "version": {"other": 1}},
                {**w, "timestamp": "now"}, {**w, "data": "str"}, {**w, "data": b"\xff"}):
        with pytest.raises(ValueError):
            values.ReplicatedValue.from_dict(bad)


def _signed(value: Any, ts: Any, node: Any, version: clock.VectorClock,
            deleted: Any = False) -> values.ReplicatedValue:
    """A value object whose checksum matches whatever its fields are (as a buggy or hostile
    writer could build it without ``create``)."""
    data = values.encode(value)
    try:
        checksum = values.checksum_of_encoded(data, ts, node, version, deleted)
    except (TypeError, ValueError):
        checksum = "0" * 64
    return values.ReplicatedValue(value, ts, node, version, checksum, deleted, data)


@pytest.mark.parametrize(("bad", "match"), [
    (_signed("x", TS, "n1", clock.VectorClock()), "own entry"),
    (_signed("x", TS, "n1", clock.VectorClock({"n2": 3})), "own entry"),
    (_signed("x", (-1, 0), "n1", clock.VectorClock({"n1": 1})), "HLC timestamp"),
    (_signed("x", ("now", 0), "n1", clock.VectorClock({"n1": 1})), "HLC timestamp"),
    (_signed("x", (1, True), "n1", clock.VectorClock({"n1": 1})), "HLC timestamp"),
    (_signed("x", TS, "", clock.VectorClock({"a": 1})), "node_id"),
    (_signed("x", TS, "n1", clock.VectorClock({"n1": 1}), deleted=1), "bool"),
    (values.ReplicatedValue("x", TS, "n1", {"n1": 1}, "0" * 64), "VectorClock"),  # type: ignore[arg-type]
    (values.ReplicatedValue(float("nan"), TS, "n1", clock.VectorClock({"n1": 1}), "0" * 64),
     "NaN"),
    (dataclasses.replace(rv({"a": 1}), value={"a": 2}), "checksum"),
])
def test_validated_holds_value_objects_to_the_parse_checks(
        bad: values.ReplicatedValue, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        values.ReplicatedValue.validated(bad)
    # The same fields in dict form are refused by the parser too: the two paths agree.
    if isinstance(bad.version, clock.VectorClock) and bad.value == bad.value:
        with pytest.raises(ValueError):
            values.ReplicatedValue.from_dict({
                "value": bad.value, "timestamp": list(bad.timestamp), "node_id": bad.node_id,
                "version": bad.version.to_dict(), "checksum": bad.checksum,
                "deleted": bad.deleted})


def test_validated_returns_a_detached_copy() -> None:
    tags = {"a"}
    good = values.ReplicatedValue.create({"tags": tags}, TS, "n1", clock.VectorClock({"n1": 1}))
    ok = values.ReplicatedValue.validated(good)
    assert ok == good and ok.verify()
    assert ok.to_wire() == good.to_wire()
    object.__getattribute__(good, "version").increment("n1")  # the caller's clock changes
    good.value["tags"].add("b")  # and so does the caller's value
    assert ok.version.to_dict() == {"n1": 1} and ok.value == {"tags": {"a"}} and ok.verify()


def test_create_refuses_a_value_without_its_own_dot() -> None:
    with pytest.raises(ValueError, match="own entry"):
        values.ReplicatedValue.create("x", TS, "n1", clock.VectorClock({"n2": 1}))
    with pytest.raises(ValueError, match="HLC timestamp"):
        values.ReplicatedValue.create("x", clock.HLCTimestamp(-5, 0), "n1",
                                      clock.VectorClock({"n1": 1}))
