"""The versioned peer wire format (msgpack), the only serializer peers use.

A *frame* is what one HTTP request carries between two nodes::

    {"v": 1, "from": "<sender node id>", "msgs": [{"k": "<kind>", "b": {...}}, ...]}

``from`` must be an identity the sender's TLS certificate carries; the server
checks that before any handler runs. A frame holds one or more messages so a
busy link sends many protocol messages in one round trip.

msgpack was chosen by measurement (``bench/wire.py``): orjson is faster on
bodies of plain scalars, but the protocol carries bytes (log entries, snapshot
chunks, digests), and the Python-side base64 walk JSON needs for them costs
more than the codec itself; msgpack carries bytes natively and its frames are
25-30% smaller.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import msgpack

PROTOCOL_VERSION = 1
DEFAULT_MAX_FRAME_BYTES = 16 * 1024 * 1024
MAX_MESSAGES_PER_FRAME = 4096
MAX_KIND_LENGTH = 64
MAX_NODE_ID_LENGTH = 253


class WireError(ValueError):
    """A frame that cannot be accepted. ``code`` is stable and machine-readable."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message


@dataclass(frozen=True, slots=True)
class Message:
    kind: str
    body: dict[str, Any]


@dataclass(frozen=True, slots=True)
class Frame:
    sender: str
    messages: tuple[Message, ...] = field(default_factory=tuple)
    version: int = PROTOCOL_VERSION


def encode(frame: Frame) -> bytes:
    payload = {
        "v": frame.version,
        "from": frame.sender,
        "msgs": [{"k": m.kind, "b": m.body} for m in frame.messages],
    }
    data: bytes = msgpack.packb(payload, use_bin_type=True)
    return data


def decode(data: bytes, max_bytes: int = DEFAULT_MAX_FRAME_BYTES) -> Frame:
    """Decode and validate one frame; raise ``WireError`` on anything off."""
    if len(data) > max_bytes:
        raise WireError("too_large", f"frame of {len(data)} bytes exceeds {max_bytes}")
    if not data:
        raise WireError("malformed", "empty frame")
    try:
        raw = msgpack.unpackb(data, raw=False, strict_map_key=False)
    except (ValueError, msgpack.ExtraData, msgpack.FormatError, msgpack.StackError) as exc:
        raise WireError("malformed", f"not a msgpack frame ({type(exc).__name__})") from None
    except Exception as exc:  # msgpack raises a zoo of types on truncated input
        raise WireError("malformed", f"undecodable frame ({type(exc).__name__})") from None
    if not isinstance(raw, dict):
        raise WireError("malformed", "frame is not a map")
    version = raw.get("v")
    if version != PROTOCOL_VERSION:
        raise WireError(
            "bad_version", f"protocol version {version!r} unsupported (want {PROTOCOL_VERSION})"
        )
    sender = raw.get("from")
    if not isinstance(sender, str) or not 0 < len(sender) <= MAX_NODE_ID_LENGTH:
        raise WireError("malformed", "missing or invalid 'from'")
    msgs = raw.get("msgs")
    if not isinstance(msgs, list) or not msgs:
        raise WireError("malformed", "'msgs' must be a non-empty list")
    if len(msgs) > MAX_MESSAGES_PER_FRAME:
        raise WireError("too_large", f"{len(msgs)} messages exceed {MAX_MESSAGES_PER_FRAME}")
    messages = []
    for item in msgs:
        if not isinstance(item, dict):
            raise WireError("malformed", "message is not a map")
        kind = item.get("k")
        body = item.get("b")
        if not isinstance(kind, str) or not 0 < len(kind) <= MAX_KIND_LENGTH:
            raise WireError("malformed", "message kind missing or invalid")
        if not isinstance(body, dict):
            raise WireError("malformed", f"body of {kind!r} is not a map")
        messages.append(Message(kind, body))
    return Frame(sender=sender, messages=tuple(messages), version=version)
