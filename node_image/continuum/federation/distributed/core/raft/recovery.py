"""Disaster recovery after a permanent loss of quorum (etcd's ``--force-new-cluster``).

When a majority of voters is gone for good (their disks destroyed), no leader can
ever be elected again. ``force_new_cluster`` rewrites one survivor's durable Raft
state so that it alone forms a new cluster and keeps every entry it knew to be
committed; the others are then added back as new members (learner, then voter).

This is a decision only a human (or the operator, on a human's annotation) takes:
entries committed by the lost majority that this node had not yet heard were
committed are gone, and so are its own uncommitted entries.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from . import messages as m


@dataclass(frozen=True, slots=True)
class Recovered:
    """The rewritten durable state, and what changed (for the operator's log)."""

    hard_state: m.HardState
    snapshot: m.Snapshot | None       # unchanged
    entries: tuple[m.Entry, ...]      # the committed prefix, then the new configuration
    config: m.ClusterConfig           # this node as the sole voter
    discarded: int                    # entries after the old commit index that were dropped
    old_config: m.ClusterConfig       # the configuration the cluster had (last one kept)

    @property
    def config_entry(self) -> m.Entry:
        return self.entries[-1]

    @property
    def truncated_after(self) -> int:
        """The old commit index: log rows after it are replaced."""
        return self.config_entry.index - 1


def force_new_cluster(hard_state: m.HardState, snapshot: m.Snapshot | None,
                      entries: Sequence[m.Entry], node_id: str,
                      address: str | None = None) -> Recovered:
    """This node's state rewritten as a one-voter cluster that keeps its committed log.

    Raises ``ValueError`` (with the reason) for a node that holds nothing committed, has
    no configuration, or is not a member of its own last configuration: recovering such a
    node would found an empty or stale cluster over the survivors' data.
    """
    base = snapshot.index if snapshot is not None else 0
    last = entries[-1].index if entries else base
    if entries and entries[0].index != base + 1:
        raise ValueError("log entries do not start right after the snapshot")
    # The commit index is written with the log in one transaction, but clamp like the log.
    commit = max(min(hard_state.commit, last), base)
    if commit == 0:
        raise ValueError(f"{node_id} has no committed Raft data: recovering it would found an "
                         "empty cluster; choose the survivor with the most recent data")
    kept = [e for e in entries if e.index <= commit]
    old = snapshot.config if snapshot is not None else m.ClusterConfig()
    for e in kept:
        if e.kind == m.CONFIG:
            old = m.ClusterConfig.decode(e.data)
    if not old.members:
        raise ValueError(f"{node_id} has no cluster configuration in its committed state")
    if node_id not in old.members:
        raise ValueError(f"{node_id} is not a member of its last committed configuration "
                         f"({', '.join(sorted(old.members))}): its data may be stale")
    new = _sole_voter(node_id, address or old.addresses.get(node_id))
    # A new term, not the current one: a lost member may hold an uncommitted entry at
    # (commit + 1, term); an entry of the same index and term here would, by Log Matching,
    # pass for the same entry should that member's disk ever come back.
    term = next_term(hard_state.term, snapshot, entries)
    entry = m.Entry(term, commit + 1, m.CONFIG, new.encode())
    # The configuration is committed by fiat: this node is its only voter and holds it.
    hs = m.HardState(term, None, entry.index)
    return Recovered(hs, snapshot, (*kept, entry), new, last - commit, old)


def next_term(term: int, snapshot: m.Snapshot | None, entries: Sequence[m.Entry]) -> int:
    """The term a forced new cluster starts in: the next one, or, when the stored term is
    poisoned (at ``MAX_TERM``, set by a forged message before terms were bounded), the one
    after the last term in this node's log. Either is after every term whose leader
    wrote into this log; the former members, whose logs may hold later ones, discard
    theirs when they join again."""
    if term < m.MAX_TERM:
        return term + 1
    terms = [e.term for e in entries] + [snapshot.term if snapshot is not None else 0]
    return min(max(terms), m.MAX_TERM - 1) + 1


def from_snapshot(snapshot: m.Snapshot, node_id: str, address: str | None = None) -> Recovered:
    """A new one-voter cluster whose state is ``snapshot`` (a backup being restored).

    As ``force_new_cluster`` does for a survivor's log, the snapshot's state stays whole
    and a configuration entry right after it makes ``node_id`` the sole voter, committed
    by fiat; the others then join as new members. The snapshot's own configuration is
    replaced too: it names the old cluster's members and addresses, which a member that
    installs this snapshot must never dial. ``node_id`` need not have been a member of
    the cluster the snapshot came from: a backup restores into a new cluster.
    """
    if snapshot.index == 0:
        raise ValueError("the snapshot holds no committed entry: nothing to restore")
    if snapshot.term >= m.MAX_TERM:
        raise ValueError(f"the snapshot's term {snapshot.term} is beyond the bound "
                         f"{m.MAX_TERM}: the archive is not a sound one")
    new = _sole_voter(node_id, address)
    snap = m.Snapshot(snapshot.index, snapshot.term, new, snapshot.data)
    term = snapshot.term + 1  # after every term of the snapshot's history
    entry = m.Entry(term, snapshot.index + 1, m.CONFIG, new.encode())
    hs = m.HardState(term, None, entry.index)
    return Recovered(hs, snap, (entry,), new, 0, snapshot.config)


def _sole_voter(node_id: str, address: str | None) -> m.ClusterConfig:
    return m.ClusterConfig(frozenset({node_id}), frozenset(),
                           {node_id: address} if address else {})
