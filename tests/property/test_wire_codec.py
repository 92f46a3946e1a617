"""The wire codec round-trips every valid frame and refuses everything else with WireError."""

from __future__ import annotations

import msgpack
from hypothesis import given, settings
from hypothesis import strategies as st

from continuum.federation.distributed.transport import wire

scalars = st.none() | st.booleans() | st.integers(-(2**63), 2**64 - 1) | st.floats(
    allow_nan=False) | st.text(max_size=20) | st.binary(max_size=20)
values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(
    st.text(max_size=8), inner, max_size=4), max_leaves=12)
bodies = st.dictionaries(st.text(max_size=8), values, max_size=5)
messages = st.builds(wire.Message, st.text(min_size=1, max_size=wire.MAX_KIND_LENGTH), bodies)
frames = st.builds(wire.Frame, st.text(min_size=1, max_size=40),
                   st.lists(messages, min_size=1, max_size=5).map(tuple))


@given(frames)
def test_round_trip(frame: wire.Frame) -> None:
    assert wire.decode(wire.encode(frame)) == frame


@settings(max_examples=300)
@given(st.binary(max_size=200))
def test_random_bytes_never_crash(data: bytes) -> None:
    try:
        wire.decode(data)
    except wire.WireError as exc:
        assert exc.code in {"malformed", "bad_version", "too_large"}


@given(frames, st.integers(min_value=1, max_value=50))
def test_truncation_is_refused(frame: wire.Frame, cut: int) -> None:
    data = wire.encode(frame)
    if cut >= len(data):
        return
    try:
        decoded = wire.decode(data[:-cut])
    except wire.WireError:
        return
    raise AssertionError(f"truncated frame decoded as {decoded}")


@given(st.integers(-(2**63), 2**63 - 1).filter(lambda v: v != wire.PROTOCOL_VERSION))
def test_other_versions_refused(version: int) -> None:
    data = msgpack.packb({"v": version, "from": "a", "msgs": [{"k": "x", "b": {}}]})
    try:
        wire.decode(data)
    except wire.WireError as exc:
        assert exc.code == "bad_version"
    else:
        raise AssertionError("accepted a foreign version")


def test_size_limit() -> None:
    data = wire.encode(wire.Frame("a", (wire.Message("x", {"b": b"0" * 2000}),)))
    try:
        wire.decode(data, max_bytes=1000)
    except wire.WireError as exc:
        assert exc.code == "too_large"
    else:
        raise AssertionError("oversized frame accepted")
