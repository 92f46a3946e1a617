"""Majority arithmetic, kept as pure functions (etcd raft's quorum package)."""

from __future__ import annotations

from collections.abc import Collection, Mapping


def majority(n: int) -> int:
    return n // 2 + 1


def committed_index(voters: Collection[str], match: Mapping[str, int]) -> int:
    """The highest index stored on a majority of ``voters`` (0 without voters)."""
    if not voters:
        return 0
    idx = sorted((match.get(v, 0) for v in voters), reverse=True)
    return idx[majority(len(voters)) - 1]


def vote_result(voters: Collection[str], votes: Mapping[str, bool]) -> bool | None:
    """True once a majority granted, False once a majority is impossible, else None."""
    need = majority(len(voters))
    granted = sum(1 for v in voters if votes.get(v) is True)
    rejected = sum(1 for v in voters if votes.get(v) is False)
    if granted >= need:
        return True
    if len(voters) - rejected < need:
        return False
    return None


def has_quorum(voters: Collection[str], alive: Collection[str]) -> bool:
    return sum(1 for v in voters if v in alive) >= majority(len(voters))
