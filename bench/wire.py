"""Which serializer for peer frames? msgpack vs orjson vs json on the protocol's messages.

Run: .venv/bin/python bench/wire.py
"""

from __future__ import annotations

import base64
import json
import time
from collections.abc import Callable
from typing import Any

import msgpack

try:
    import orjson
except ImportError:  # a reference only: scripts/bootstrap bench installs it
    orjson = None

# Typical traffic: a Raft append with 64 entries of 100-byte commands, a SWIM ping
# with piggybacked updates, a replication push with a concept.
APPEND = {"v": 1, "from": "node-1", "msgs": [{"k": "raft.append", "b": {
    "term": 7, "prev_index": 1000, "prev_term": 7, "commit": 999,
    "entries": [{"index": 1001 + i, "term": 7, "data": b"x" * 100} for i in range(64)]}}]}
PING = {"v": 1, "from": "node-1", "msgs": [{"k": "swim.ping", "b": {
    "seq": 12345, "updates": [{"node": f"node-{i}", "inc": 3, "status": "alive",
                               "addr": f"127.0.0.{i}:7000"} for i in range(6)]}}]}
PUSH = {"v": 1, "from": "node-1", "msgs": [{"k": "repl.push", "b": {
    "key": "concept_123", "value": {"name": "Distributed Systems", "tags": ["a", "b"]},
    "clock": {"node-1": 12, "node-2": 9}, "hlc": [1732540000000, 3], "checksum": "ab" * 32}}]}


def _jsonable(obj: Any) -> Any:
    if isinstance(obj, bytes):
        return base64.b64encode(obj).decode()
    if isinstance(obj, dict):
        return {k: _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_jsonable(v) for v in obj]
    return obj


def measure(encode: Callable[[Any], bytes], decode: Callable[[bytes], Any], msg: Any,
            rounds: int) -> tuple[float, int]:
    data = encode(msg)
    t = time.perf_counter()
    for _ in range(rounds):
        decode(encode(msg))
    return (time.perf_counter() - t) / rounds * 1e6, len(data)


def main() -> None:
    codecs: dict[str, tuple[Callable[[Any], bytes], Callable[[bytes], Any], bool]] = {
        "msgpack": (lambda m: msgpack.packb(m, use_bin_type=True),
                    lambda d: msgpack.unpackb(d, raw=False), False),
        "json": (lambda m: json.dumps(m).encode(), json.loads, True),
    }
    if orjson is None:
        print("orjson not installed (scripts/bootstrap bench): skipped")
    else:
        codecs["orjson"] = (orjson.dumps, orjson.loads, True)
        # bytes need base64 in JSON: counted here, because the protocol carries bytes
        codecs["orjson+b64"] = (lambda m: orjson.dumps(_jsonable(m)), orjson.loads, False)
    print(f"{'message':<12} {'codec':<8} {'us/round trip':>14} {'bytes':>7}")
    for name, msg, rounds in (("append x64", APPEND, 3000), ("swim ping", PING, 20000),
                              ("repl push", PUSH, 20000)):
        base = None
        for codec, (enc, dec, needs_b64) in codecs.items():
            m = _jsonable(msg) if needs_b64 else msg
            us, size = measure(enc, dec, m, rounds)
            base = base or us
            print(f"{name:<12} {codec:<8} {us:>14.2f} {size:>7}   ({us / base:.2f}x msgpack)")


if __name__ == "__main__":
    main()
