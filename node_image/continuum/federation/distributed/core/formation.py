"""Safe first formation of a cluster from discovery hints (pure).

Discovery answers are hints and arrive in any order, so every node must reach
the same conclusion about who founds the cluster, or two clusters form. The
rule (the shape of Akka Cluster Bootstrap's, with StatefulSet ordinals):

1. A node with durable membership state resumes it: it never bootstraps again.
2. If a verified peer already belongs to a formed cluster, join it.
3. Otherwise exactly one node is the *founder*: in ``ordinal`` mode the pod
   with ordinal 0 (``<name>-0``, whatever else is seen); in ``lowest_id`` mode
   the node whose id sorts lowest among itself and its verified peers.
4. The founder bootstraps only when every candidate is settled (verified, or
   proven not to be one of ours; one that does not answer might belong to a
   cluster that already exists, so it blocks), at least
   ``min_nodes`` nodes (itself included) are verified, and that view has not
   changed for ``stable_seconds``. Everyone else waits for a formed peer.

Safety: in ``ordinal`` mode only one id can ever be founder. In ``lowest_id``
mode two founders need two nodes that each see ``min_nodes`` nodes but not
each other; with ``min_nodes`` equal to the initial cluster size (every node
must see every other) that cannot happen. The node daemon takes ``min_nodes``
from ``bootstrap_expect`` (Consul's name for it) and refuses to start with
discovery hints in ``lowest_id`` mode without one.
"""

from __future__ import annotations

import re
from collections.abc import Hashable, Sequence
from dataclasses import dataclass

ORDINAL = "ordinal"
LOWEST_ID = "lowest_id"
_ORDINAL_RE = re.compile(r"^(?P<stem>.+)-(?P<n>\d+)$")


@dataclass(frozen=True, slots=True)
class FormationConfig:
    mode: str = LOWEST_ID
    stable_seconds: float = 5.0  # Akka's stable-margin default
    min_nodes: int = 1  # verified nodes, us included, before the founder may bootstrap

    def __post_init__(self) -> None:
        if self.mode not in (ORDINAL, LOWEST_ID):
            raise ValueError(f"formation mode must be {ORDINAL!r} or {LOWEST_ID!r}")
        if self.stable_seconds < 0 or self.min_nodes < 1:
            raise ValueError("stable_seconds must be >= 0 and min_nodes >= 1")


@dataclass(frozen=True, slots=True)
class FormationPeer:
    node_id: str
    address: str
    formed: bool = False


@dataclass(frozen=True, slots=True)
class Resume:
    """Durable membership exists: restart from it, never bootstrap."""

    reason: str = "durable membership state exists"


@dataclass(frozen=True, slots=True)
class Bootstrap:
    """Found a new cluster with ourselves as its only member; the others join."""

    reason: str


@dataclass(frozen=True, slots=True)
class Join:
    """Ask these members (addresses, best first) to add us."""

    targets: tuple[str, ...]
    reason: str


@dataclass(frozen=True, slots=True)
class Wait:
    reason: str


Decision = Resume | Bootstrap | Join | Wait


def ordinal(node_id: str) -> int | None:
    """The StatefulSet ordinal of ``<name>-<n>``, else None."""
    m = _ORDINAL_RE.match(node_id)
    return int(m.group("n")) if m else None


def id_key(node_id: str) -> tuple[tuple[tuple[int, int | str], ...], str]:
    """Natural sort key, so ``node-2`` sorts before ``node-10`` on every node alike.

    The id itself breaks ties (``n01`` and ``n1`` read as equal numbers): two
    ids must never compare equal, or both would take themselves for founder.
    """
    parts = re.split(r"(\d+)", node_id)
    return tuple((0, int(p)) if p.isdigit() else (1, p) for p in parts if p), node_id


def founder(self_id: str, peer_ids: Sequence[str], mode: str) -> str | None:
    """Who founds the cluster as far as this node can tell (None: unknown yet)."""
    if mode == ORDINAL:
        stem = _ORDINAL_RE.match(self_id)
        if stem is None:
            raise ValueError(f"ordinal formation needs ids like 'name-0', got {self_id!r}")
        return f"{stem.group('stem')}-0"
    return min([self_id, *peer_ids], key=id_key)


def decide(self_id: str, *, has_membership: bool, peers: Sequence[FormationPeer],
           unresolved: int, stable_for: float, config: FormationConfig) -> Decision:
    """What a node without a cluster should do now.

    ``peers``: verified peers of our cluster. ``unresolved``: candidates not
    settled yet (not probed, or not answering). ``stable_for``: seconds the
    candidate view has been unchanged.
    """
    if has_membership:
        return Resume()
    formed = sorted((p for p in peers if p.formed), key=lambda p: id_key(p.node_id))
    if formed:
        return Join(tuple(p.address for p in formed),
                    f"{len(formed)} verified peer(s) already belong to a cluster")
    chosen = founder(self_id, [p.node_id for p in peers], config.mode)
    if chosen != self_id:
        return Wait(f"waiting for {chosen} to form the cluster")
    if unresolved:
        return Wait(f"{unresolved} candidate(s) not verified yet")
    if 1 + len(peers) < config.min_nodes:
        return Wait(f"{1 + len(peers)} of {config.min_nodes} nodes verified")
    if stable_for < config.stable_seconds:
        return Wait(f"candidate set stable for {stable_for:.1f}s of {config.stable_seconds:.1f}s")
    return Bootstrap(f"founder of {1 + len(peers)} verified node(s), stable {stable_for:.1f}s")


class StabilityTimer:
    """How long a view (any hashable summary of the candidates) has stayed the same."""

    def __init__(self) -> None:
        self._view: Hashable = None
        self._since: float | None = None

    def update(self, view: Hashable, now: float) -> float:
        if self._since is None or view != self._view:
            self._view, self._since = view, now
        return max(0.0, now - self._since)
