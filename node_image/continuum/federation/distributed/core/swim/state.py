"""The versioned per-node state map: every key of every node is last-writer by version.

Only a node writes its own keys, with versions it increases, so a late or
duplicated message (lower or equal version) can never roll a value back.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

MAX_DEPTH = 16


@dataclass(frozen=True, slots=True)
class Entry:
    node: str
    key: str
    version: int
    value: Any


def check_value(value: Any, depth: int = 0) -> None:
    """Raise ``ValueError`` unless ``value`` is a plain msgpack-able value."""
    if depth > MAX_DEPTH:
        raise ValueError("state value nests too deeply")
    if value is None or isinstance(value, str | bytes | bool | int | float):
        if isinstance(value, int) and not isinstance(value, bool) and not (
                -(2**63) <= value < 2**64):
            raise ValueError("state integers must fit in 64 bits")
        return
    if isinstance(value, list | tuple):
        for v in value:
            check_value(v, depth + 1)
        return
    if isinstance(value, dict):
        for k, v in value.items():
            if not isinstance(k, str):
                raise ValueError("state dict keys must be strings")
            check_value(v, depth + 1)
        return
    raise ValueError(f"state values must be plain data, not {type(value).__name__}")


class StateMap:
    def __init__(self) -> None:
        self._nodes: dict[str, dict[str, Entry]] = {}

    def merge(self, entry: Entry) -> bool:
        """Keep ``entry`` if it is newer than what we hold for its key; True when kept."""
        keys = self._nodes.setdefault(entry.node, {})
        cur = keys.get(entry.key)
        if cur is not None and cur.version >= entry.version:
            return False
        keys[entry.key] = entry
        return True

    def get(self, node: str, key: str) -> Entry | None:
        return self._nodes.get(node, {}).get(key)

    def max_version(self, node: str) -> int:
        return max((e.version for e in self._nodes.get(node, {}).values()), default=0)

    def entries(self) -> Iterator[Entry]:
        for keys in self._nodes.values():
            yield from keys.values()

    def node_view(self, node: str) -> dict[str, Any]:
        return {k: e.value for k, e in self._nodes.get(node, {}).items()}

    def nodes(self) -> list[str]:
        return list(self._nodes)

    def drop(self, node: str) -> None:
        self._nodes.pop(node, None)

    def __len__(self) -> int:
        return sum(len(k) for k in self._nodes.values())
