"""RaftConsensus: the spec's Raft API, a shell around the pure core (``core.raft``).

The shell owns the clock (a ticker), the disk (``storage.DurableStore``), the
network (a ``PeerTransport``, shared, its own, or an in-process hub: see
``transport.link``) and the application callbacks; ``raft_loop.RaftLoop`` is its
loop. Wiring: ``raft.*`` message kinds over ``transport.send`` (one-way); the
apply callback gets each committed command (any msgpack-able value) once, in
log order, and again after a restart for entries after the last snapshot (so a
state machine is either rebuilt from the log or restored by the snapshot
callbacks); what it returns reaches the proposer.

Two ways to write: ``append_entry`` (the spec's, ``-> bool``: True once
committed and applied here) and ``propose`` (``-> Applied(index, result)``, or
``errors.NotLeader`` when the write was not carried out, or
``errors.OutcomeUnknown`` when its fate is not known: retry with the same
``request_id`` to have it applied exactly once). Refusals are the package's
``errors``; ``MembershipError.code`` is ``exists``, ``not_member``, ``busy``,
``not_learner``, ``last_voter``, ``no_target``, ``transfer_failed`` (the chosen
voter did not take over within an election timeout; this node is still the
leader), ``not_caught_up`` (a learner did not catch up in time; it stays a
learner), ``removed`` (a learner was removed while its addition waited for it),
``has_leader`` or ``refused`` (force-new-cluster).

A RaftConsensus is restartable in place: ``stop()``, then ``start()`` again, with
``discard_state()`` between for a member that was removed and joins anew.

Durable layout in ``<storage_path>/raft.db``: namespace ``raft`` holds
``hard_state`` (term, vote and commit in one row, so one atomic write) and
``snapshot``; namespace ``raft.log`` holds one row per entry keyed by index.

Why one long file: it is the spec's ``RaftConsensus``, one class whose public calls
(lifecycle, proposals, reads, member changes, views) all turn on the same loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
import math
import random
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import msgpack

from . import errors, raft_loop, raft_storage, storage
from .core.raft import messages as rmsg
from .core.raft import raft_node as rnode
from .core.raft import recovery
from .transport import link, peer

log = logging.getLogger(__name__)

__all__ = ["Applied", "MembershipError", "NotLeaderError", "OverloadedError", "RaftConsensus"]

Applied = raft_loop.Applied
ApplyCallback = raft_loop.ApplyCallback
TakeSnapshot = raft_loop.TakeSnapshot
RestoreSnapshot = raft_loop.RestoreSnapshot

# The names library users catch, as the package's errors.
NotLeaderError = errors.NotLeader
OverloadedError = errors.Overloaded
MembershipError = errors.MembershipError

DB_FILE = "raft.db"


class NodeRole(enum.StrEnum):
    """A member's role, as ``role()`` and ``get_stats()["role"]`` give it."""

    FOLLOWER = "follower"
    CANDIDATE = "candidate"  # pre-candidates too
    LEADER = "leader"
    LEARNER = "learner"  # a non-voting member catching up (the original had none)


class ConsensusState(enum.StrEnum):
    """Where the module is in its life, as ``get_stats()["state"]`` gives it."""

    INITIALIZING = "initializing"  # constructed, not started
    FOLLOWING = "following"  # a follower or learner
    ELECTING = "electing"
    LEADING = "leading"
    SHUTDOWN = "shutdown"  # stopped (or failed)


_STATE_OF_ROLE = {NodeRole.FOLLOWER: ConsensusState.FOLLOWING,
                  NodeRole.LEARNER: ConsensusState.FOLLOWING,
                  NodeRole.CANDIDATE: ConsensusState.ELECTING,
                  NodeRole.LEADER: ConsensusState.LEADING}

# The original module's names for the Raft messages; the shell sends and receives
# them itself, so they are for reading, not for calling handlers by hand.
LogEntry = rmsg.Entry
VoteRequest = rmsg.VoteRequest
VoteResponse = rmsg.VoteResponse
AppendEntriesRequest = rmsg.AppendRequest
AppendEntriesResponse = rmsg.AppendResponse


class RaftConsensus(raft_loop.RaftLoop):
    def __init__(
        self,
        node_id: str,
        cluster_nodes: list[str],
        election_timeout_ms: tuple[int, int] = (150, 300),
        heartbeat_interval_ms: int = 50,
        *,
        bind_address: str | None = None,
        peers: dict[str, str] | None = None,
        storage_path: str | Path | None = None,
        tls_cert: str | None = None,
        tls_key: str | None = None,
        tls_ca: str | None = None,
        transport: peer.PeerTransport | None = None,
        insecure: bool = False,  # plain HTTP on bind_address: tests only (transport.link)
        join: bool = False,
        fsync: bool = True,
        snapshot_threshold: int = 20_000,
        max_inbox: int = 10_000,
        # One append in flight per follower: the next carries every entry proposed
        # during the round trip, so appends, fsyncs and answers are shared by more
        # writes (docs/performance.md). Raise it for links with long round trips.
        max_inflight_appends: int = 1,
        advertise_address: str | None = None,
        rng: random.Random | None = None,
    ) -> None:
        if not node_id:
            raise ValueError("node_id must not be empty")
        _check_founders(node_id, cluster_nodes, join)
        if snapshot_threshold < 1:
            raise ValueError("snapshot_threshold must be positive")
        if max_inbox < 1 or max_inflight_appends < 1:
            raise ValueError("max_inbox and max_inflight_appends must be positive")
        super().__init__(
            node_id, election_timeout_ms, heartbeat_interval_ms,
            link.PeerLink.build(node_id, transport=transport, bind_address=bind_address,
                                tls_cert=tls_cert, tls_key=tls_key, tls_ca=tls_ca,
                                insecure=insecure),
            peers=dict(peers or {}), max_inbox=max_inbox, snapshot_threshold=snapshot_threshold,
            max_inflight_appends=max_inflight_appends)
        self.cluster_nodes = list(cluster_nodes)
        self.election_timeout_ms = election_timeout_ms
        self.heartbeat_interval_ms = heartbeat_interval_ms
        self.join = join
        self._storage_path = Path(storage_path) if storage_path is not None else None
        self._fsync = fsync
        self._advertise = advertise_address
        self._rng = rng or random.Random()
        self._config_lock = asyncio.Lock()  # one configuration change at a time
        self._tasks: list[asyncio.Task[None]] = []

    # -- configuration -------------------------------------------------------------------------

    def register_apply_callback(self, callback: ApplyCallback) -> None:
        """``callback(command)`` (sync or async) runs for each committed command, in log
        order; callbacks run in the order they were registered, and what the first one
        returns is the proposer's ``Applied.result``.

        Register before ``start()`` to also see the entries replayed after a restart.
        """
        self._apply_cbs.append(callback)

    def register_admission_callback(self, callback: raft_loop.AdmissionCallback) -> None:
        """``callback(members)`` whenever the nodes that may speak to this one change (the
        latest and the latest committed configuration: ``RaftNode.admitted``), and once at
        start; the node hands it to the mesh and the replicator."""
        self._admission_cbs.append(callback)

    def register_snapshot_callbacks(self, take: TakeSnapshot, restore: RestoreSnapshot,
                                    freeze: raft_loop.FreezeSnapshot | None = None) -> None:
        """Let Raft compact its log: ``take()`` serializes the state machine as of the last
        applied command; ``restore(data)`` replaces it (on restart or when a leader sends a
        snapshot). Without them the log is never compacted. With ``freeze`` (a cheap copy
        of the state that returns the function packing it, safe to call on a thread),
        compaction packs in the background instead of holding up the loop."""
        self._take, self._restore, self._freeze = take, restore, freeze

    # -- lifecycle -----------------------------------------------------------------------------

    @property
    def running(self) -> bool:
        return self._running

    async def start(self, *, cluster_nodes: list[str] | None = None,
                    join: bool | None = None) -> None:
        """Start (or start again after ``stop``). Durable state, when there is some, is
        resumed; otherwise a fresh node founds a cluster of ``cluster_nodes`` or, with
        ``join``, waits to be added. Both default to the constructor's."""
        if self._running:
            return
        if cluster_nodes is not None or join is not None:
            founders = self.cluster_nodes if cluster_nodes is None else list(cluster_nodes)
            joining = self.join if join is None else join
            _check_founders(self.node_id, founders, joining)
            self.cluster_nodes, self.join = founders, joining
        self._failed, self._disk_last = None, 0
        self._last_pass = self._leaderless_since = time.monotonic()
        await self._link.start()
        self._self_address = self._advertise or self._link.address
        if self._storage_path is not None:
            self._store = storage.DurableStore(self._storage_path / DB_FILE, fsync=self._fsync)
        self._node = self._load()
        self._admitted = None
        self._note_admission(self._node)
        if self._node.term_exhausted:
            log.error("raft %s: the stored term %d is beyond the bound %d (a forged message "
                      "before terms were bounded): this node cannot take part in an election. "
                      "Recover the cluster with `continuum-federation recover "
                      "--force-new-cluster` on the member with the most data (see "
                      "docs/security.md); the others then join it as new members",
                      self.node_id, self._node.term, rmsg.MAX_TERM)
        snap = self._node.log.snapshot
        if snap is not None and snap.index > 0:
            await self._restore_app(snap)
        if self._link.transport is None:
            raft_loop.in_process_members()[self.node_id] = self
        self._running = True
        self._start_clock()
        loop = asyncio.get_running_loop()
        self._tasks = [loop.create_task(self._run(), name=f"raft:{self.node_id}")]
        self._wake.set()  # the first pass arms the clock
        if self._node.conf.voters == {self.node_id}:
            await self._call(lambda n: n.campaign())
            with contextlib.suppress(TimeoutError):
                await self._wait_until(lambda: self.is_leader, 5.0)

    async def stop(self) -> None:
        if not self._running and not self._tasks:
            return  # never started, or stopped already (a failed node still needs closing)
        self._running = False
        tasks = [*self._tasks, *([self._compaction] if self._compaction else [])]
        for t in tasks:
            t.cancel()
        for t in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await t
        self._tasks = []
        self._stop_clock()
        hub = raft_loop.in_process_members()
        if hub.get(self.node_id) is self:
            del hub[self.node_id]
        await self._flush_writes()
        if self._store is not None and self._node is not None and self._failed is None:
            # The commit index is persisted only along with other state, so it trails; a
            # clean stop records the latest, which offline recovery keeps as committed.
            with contextlib.suppress(storage.StorageError):
                await self._store.commit([raft_storage.hard_state_row(self._node.hard_state())])
        self._fail_all(f"raft {self.node_id} stopped")
        await self._link.stop()
        if self._store is not None:
            await asyncio.to_thread(self._store.close)
            self._store = None

    def discard_state(self) -> None:
        """Forget this node's Raft state (a stopped member the cluster removed, which
        joins anew): the durable log, term and vote, and the in-memory core."""
        if self._running:
            raise RuntimeError("stop the node before discarding its Raft state")
        if self._storage_path is not None:
            for suffix in ("", "-wal", "-shm"):
                (self._storage_path / (DB_FILE + suffix)).unlink(missing_ok=True)
        self._node = None

    # -- writes and reads ----------------------------------------------------------------------

    async def propose(self, command: Any, *, request_id: str | None = None,
                      timeout: float = 30.0) -> Applied:
        """Replicate ``command``; its ``Applied(index, result)`` once committed and applied
        here. ``errors.NotLeader``: not carried out (this node does not lead, or the entry
        was overwritten by another leader's). ``errors.OutcomeUnknown``: not decided
        within ``timeout`` (or this node stopped): retry with the same ``request_id``."""
        try:
            data = msgpack.packb(command, use_bin_type=True)
        except (TypeError, ValueError, OverflowError) as exc:
            raise errors.NotSerializable(f"command is not serializable: {exc}") from None
        if not self._running:
            raise errors.Unavailable(f"raft {self.node_id} is not running")
        self._check_room()
        loop = self._running_loop()
        fut: asyncio.Future[Applied] = loop.create_future()
        # No timer per call (a timer heap entry each is measurable at thousands per
        # second): the loop sweeps expired waiters every few ticks instead.
        self._inbox.append(raft_loop._Proposal(data, request_id, fut, loop.time() + timeout))
        self._wake.set()
        return await fut

    async def append_entry(self, command: Any, request_id: str | None = None,
                           timeout: float = 30.0) -> bool:
        """The spec's write: True once a majority committed ``command`` and it was applied
        here; False when it was not carried out or its outcome is not known in
        ``timeout`` (``propose`` tells the two apart)."""
        try:
            await self.propose(command, request_id=request_id, timeout=timeout)
        except errors.Overloaded:
            raise
        except (errors.NotLeader, errors.OutcomeUnknown, errors.Unavailable):
            return False
        return True

    async def read_index(self, timeout: float = 5.0) -> int:
        """A linearizable read barrier: returns once this (leader) node has applied every
        entry committed before the call. ``errors.NotLeader`` on a node that does not
        lead (or stops leading meanwhile), ``errors.Unavailable`` when no quorum
        confirmed the leadership within ``timeout``."""
        try:
            async with asyncio.timeout(timeout):
                fut: asyncio.Future[int] = asyncio.get_running_loop().create_future()

                def start(n: rnode.RaftNode) -> None:
                    self._reads[n.read_index()] = fut
                await self._call(start)
                return await fut
        except TimeoutError:
            raise errors.Unavailable(f"no quorum confirmed this node's leadership within "
                                     f"{timeout:g} s") from None

    # -- membership ----------------------------------------------------------------------------

    async def add_member(self, node_id: str, address: str, timeout: float = 60.0) -> None:
        """Add ``node_id`` as a learner, wait until it caught up, promote it to voter.

        Resumable and idempotent, so a caller whose earlier call ran out of time simply
        calls again: a learner already there is not added twice, only caught up and
        promoted, and a voter is left as it is. ``MembershipError`` ``not_caught_up`` when
        the learner has not caught up within ``timeout`` (it stays a learner), and
        ``removed`` when it is removed while this call waits for it; ``NotLeader`` when
        this node does not lead or stops leading meanwhile (calling the new leader resumes).
        """
        deadline = asyncio.get_running_loop().time() + timeout
        async with _decided_by(deadline, f"adding {node_id}"):
            conf = self._require_leader_node().conf
            if node_id in conf.voters:
                return
            if node_id not in conf.learners:
                await self._change(rnode.ADD_LEARNER, node_id, address)
        # One catch-up round (thesis 4.2.1): the learner must hold everything that was
        # committed when it was added; under load it never quite matches a moving commit.
        target = self._require_leader_node().log.commit

        def caught_up() -> bool:
            n = self._require_leader_node()
            if node_id not in n.conf.learners:
                if node_id in n.conf.voters:  # promoted by a concurrent call
                    return True
                raise errors.MembershipError("removed",
                                             f"{node_id} was removed before it caught up")
            pr = n.progress.get(node_id)
            return pr is not None and pr.match >= target
        try:
            await self._wait_until(caught_up, deadline - asyncio.get_running_loop().time())
        except TimeoutError:
            raise errors.MembershipError(
                "not_caught_up", f"{node_id} did not catch up within {timeout:g} s; it stays "
                "a learner, and adding it again resumes") from None
        async with _decided_by(deadline, f"promoting {node_id}"):
            if node_id in self._require_leader_node().conf.learners:
                await self._change(rnode.PROMOTE, node_id, None)

    async def remove_member(self, node_id: str, timeout: float = 30.0) -> None:
        loop = asyncio.get_running_loop()
        async with _decided_by(loop.time() + timeout, f"removing {node_id}"):
            await self._change(rnode.REMOVE, node_id, None)

    async def transfer_leadership(self, target: str | None = None, timeout: float = 10.0,
                                  *, wait_for_successor: bool = True) -> str:
        """Hand leadership to ``target`` (default: the most up-to-date voter); returns the
        new leader's id once it has taken over. Without ``wait_for_successor`` it returns
        the chosen voter's id as soon as this node has stepped down (the chosen one has
        started its election): enough for a node that is leaving anyway."""
        loop = asyncio.get_running_loop()
        async with _decided_by(loop.time() + timeout, "the leadership transfer"):
            chosen = await self._call(lambda n: n.transfer_leader(target))

            def abandoned() -> bool:  # the core gives up after an election timeout
                n = self._node
                return n is not None and n.is_leader and n.lead_transferee is None

            if wait_for_successor:
                await self._wait_until(
                    lambda: self.leader_id not in (None, self.node_id) or abandoned(), None)
            else:
                await self._wait_until(lambda: not self.is_leader or abandoned(), None)
            if abandoned():
                raise errors.MembershipError(
                    "transfer_failed", f"{chosen} did not take over within an election "
                    "timeout; this node is still the leader")
            if not wait_for_successor:
                return chosen
            assert self.leader_id is not None
            if self.leader_id != chosen:
                log.info("leadership went to %s instead of %s", self.leader_id, chosen)
            return self.leader_id

    async def force_new_cluster(self, timeout: float = 10.0) -> recovery.Recovered:
        """Quorum is lost for good: make this node the sole voter of a new cluster.

        Runs in the loop like any admin call: the core rewrites its log in place (the
        committed prefix stays, and so does the applied state machine) and elects itself;
        the rewrite is persisted by the next Ready in one fsynced transaction. Returns
        once this node leads and has committed an entry of its own term (ReadIndex and
        writes work). ``MembershipError`` ``has_leader`` while a leader is known, and
        ``refused`` for a node without committed data or configuration.
        """
        def rewrite(n: rnode.RaftNode) -> recovery.Recovered:
            try:
                r = n.force_new_cluster(self._self_address)
            except errors.MembershipError:
                raise
            except ValueError as exc:
                raise errors.MembershipError("refused", str(exc)) from None
            n.campaign()  # the sole voter wins at once; the same write carries its vote
            return r

        loop = asyncio.get_running_loop()
        async with _decided_by(loop.time() + timeout, "forcing a new cluster"):
            async with self._config_lock:
                result = await self._call(rewrite)
            log.warning("raft %s: forced a new cluster with itself as the sole voter (kept "
                        "entries up to %d, discarded %d uncommitted; old voters: %s)",
                        self.node_id, result.truncated_after, result.discarded,
                        ", ".join(sorted(result.old_config.voters)))
            await self._wait_until(
                lambda: self._node is not None and self._node.is_leader
                and self._node.committed_in_term(), None)
            return result

    # -- backup hooks (used by backup.source) -----------------------------------------------

    async def capture_snapshot(self, freeze: raft_loop.FreezeSnapshot | None = None
                               ) -> rmsg.Snapshot | None:
        """The state machine as of the last applied entry, packed as a Raft snapshot (what
        log compaction stores) without compacting; None before anything was applied.

        Taken inside the loop between Readies, so the state machine holds exactly the
        entries up to the snapshot's index, all of them committed. With ``freeze`` (a cheap
        copy of the state, returning the function that packs it) only the copy is made in
        the loop, and the packing runs on a thread: the loop is not held up by it."""
        take = self._take
        if take is None:
            raise RuntimeError("no snapshot callbacks are registered")
        if freeze is None:
            return await self._call(lambda n: n.capture(take()))
        return await self._capture(freeze)

    async def wait_applied(self, index: int, timeout: float) -> None:
        """Return once this node has applied ``index``; ``TimeoutError`` otherwise."""
        await self._wait_until(
            lambda: self._node is not None and self._node.log.applied >= index, timeout)

    async def _change(self, op: str, node_id: str, address: str | None) -> None:
        """Propose one configuration change and wait for its fate. Changes queue here,
        one at a time, and behind a new leader's first commit, rather than fail ``busy``;
        the wait for a learner to catch up is outside, so a removal never waits behind an
        addition."""
        def propose(n: rnode.RaftNode) -> tuple[int, int]:
            return n.change_config(op, node_id, address), n.term

        def settled() -> bool:  # a new leader changes nothing before its first commit
            return self._require_leader_node().committed_in_term()
        async with self._config_lock:
            await self._wait_until(settled, None)
            idx, term = await self._call(propose)
            fut: asyncio.Future[Applied] = asyncio.get_running_loop().create_future()
            self._waiters[idx] = raft_loop._Waiter(term, None, fut, math.inf)
            await fut

    async def expect_leader(self, sponsors: frozenset[str]) -> None:
        """We are about to ask to be added: until a configuration arrives, only
        ``sponsors`` (the leader we ask) may replicate to us."""
        await self._call(lambda n: n.expect_leader(sponsors))

    def set_peer_address(self, node_id: str, address: str) -> None:
        """Tell Raft where a node listens (learned by discovery, the mesh or a join).
        Addresses carried by the membership configuration take precedence."""
        peer.split_address(address)
        if node_id != self.node_id:
            self.peers[node_id] = address

    # -- views ---------------------------------------------------------------------------------

    @property
    def is_leader(self) -> bool:
        return self._node is not None and self._node.is_leader

    @property
    def leader_id(self) -> str | None:
        return self._node.leader_id if self._node is not None else None

    def require_leader(self) -> None:
        """``errors.NotLeader`` (with where the leader is) unless this node leads."""
        if not self.is_leader:
            raise self.not_leader()

    def members(self) -> list[dict[str, Any]]:
        n = self._node
        if n is None:
            return []
        conf = n.conf
        out = []
        for mid in sorted(conf.members):
            pr = n.progress.get(mid) if n.is_leader else None
            match = n.log.persisted if mid == self.node_id else (pr.match if pr else None)
            out.append({"id": mid, "address": self.address_of(mid),
                        "voter": mid in conf.voters, "match_index": match})
        return out

    def membership_committed(self) -> bool:
        """True when the configuration ``members()`` reports is committed on this node (its
        entry is at or below ``commit_index``); False while a change is in flight."""
        return self._node is not None and self._node.conf_committed()

    def role(self) -> str:
        n = self._node
        if n is None:
            return "follower"
        if n.role in (rnode.CANDIDATE, rnode.PRE_CANDIDATE):
            return "candidate"
        if n.role == rnode.FOLLOWER and not n.promotable():
            return "learner"
        return n.role

    def consensus_state(self) -> ConsensusState:
        if not self._running:
            return ConsensusState.INITIALIZING if self._node is None else ConsensusState.SHUTDOWN
        return _STATE_OF_ROLE[NodeRole(self.role())]

    def get_stats(self) -> dict[str, Any]:
        """Figures of this member; ``state`` and ``votes_received`` (while a candidate,
        else None) mean what they meant in the original module."""
        n = self._node
        role = self.role()
        campaigning = n is not None and n.role in (rnode.CANDIDATE, rnode.PRE_CANDIDATE)
        base: dict[str, Any] = {
            "node_id": self.node_id, "role": role,
            "state": self.consensus_state().value,
            "votes_received": sum(1 for granted in n.votes.values() if granted)
            if n is not None and campaigning else None,
            "current_term": n.term if n else 0, "voted_for": n.vote if n else None,
            "leader_id": self.leader_id, "leader_address": self.leader_address(),
            "log_size": (n.log.last_index - n.log.snapshot_index) if n else 0,
            "last_log_index": n.log.last_index if n else 0,
            "last_log_term": n.log.last_term if n else 0,
            "commit_index": n.log.commit if n else 0,
            "last_applied": n.log.applied if n else 0,
            "snapshot_index": n.log.snapshot_index if n else 0,
            "cluster_size": len(n.conf.voters) if n else len(self.cluster_nodes),
            "learners": sorted(n.conf.learners) if n else [],
            "config_index": n.conf_index if n else 0,
            "membership_committed": self.membership_committed(),
            "messages_refused": n.refused if n else 0,  # from senders that may not send them
            "term_exhausted": n.term_exhausted if n else False,
            "running": self._running,
            # Lifeguard's local health: how far behind this node's own timers run.
            "local_health": n.local_health if n else 0,
            "loop_lag_ms": round(self.loop_lag_ms, 3),
        }
        base.update(self.stats)
        return base

    # -- helpers -------------------------------------------------------------------------------

    def _load(self) -> rnode.RaftNode:
        hs = rmsg.HardState()
        snap: rmsg.Snapshot | None = None
        entries: list[rmsg.Entry] = []
        if self._store is not None:
            hs, snap, entries = raft_storage.read_durable(self._store, self.node_id)
            base = snap.index if snap else 0
            self._disk_last = entries[-1].index if entries else base
        fresh = snap is None and not entries and hs == rmsg.HardState()
        bootstrap = None
        if fresh and not self.join:
            addrs = {nid: a for nid in self.cluster_nodes if (a := self.peers.get(nid))}
            me = self._self_address
            if me:
                addrs[self.node_id] = me
            bootstrap = rmsg.ClusterConfig(frozenset(self.cluster_nodes), frozenset(), addrs)
        return rnode.RaftNode(self.node_id, self._config, random.Random(self._rng.random()),
                              hard_state=hs, snapshot=snap, entries=entries, bootstrap=bootstrap)


    def _require_leader_node(self) -> rnode.RaftNode:
        n = self._require_node()
        if not n.is_leader:
            raise self.not_leader()
        return n


def _check_founders(node_id: str, cluster_nodes: list[str], join: bool) -> None:
    if not join and node_id not in cluster_nodes:
        raise ValueError(f"cluster_nodes must include this node ({node_id!r}) unless join=True")


@contextlib.asynccontextmanager
async def _decided_by(deadline: float, what: str) -> AsyncIterator[None]:
    """A membership call's deadline: passing it leaves the change's fate unknown."""
    try:
        async with asyncio.timeout_at(deadline):
            yield
    except TimeoutError:
        raise errors.OutcomeUnknown(
            f"{what} was not decided in time: it may still take effect; calling again "
            "resumes it") from None
