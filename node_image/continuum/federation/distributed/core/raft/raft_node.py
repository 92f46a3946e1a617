"""RaftNode: the Raft state machine, driven by ``step`` and drained by ``ready``.

The shell's loop (see ``Ready`` for the order of work)::

    node.step(msg_or_tick)            # any number of inputs
    while node.has_ready():
        rd = node.ready()
        send(rd.early_messages)       # the leader's appends: safe before its own fsync
        persist(rd.hard_state, rd.entries, rd.snapshot)     # fsync
        send(rd.messages)             # only after persisting
        restore(rd.snapshot) if rd.snapshot_received; apply(rd.committed)
        node.advance(rd)

No input may be stepped between ``ready()`` and ``advance()``.

Who may speak (the transport has proven each sender's certificate, not its
membership): ``step`` drops, and counts in ``refused``, every message from a
node outside ``admitted()`` (the members of the latest configuration and of the
latest committed one); a vote request from a node that is not a voter there; a
``TimeoutNow`` from anyone but this term's leader. A node waiting to be added
has no configuration and hears only leader messages, from its ``sponsors``
when the shell named them (the leader it asked to add it). Leases hold against
disruption: a voter that hears from a live leader, and the leader itself,
ignore vote requests for a higher term, unless the leader announced a transfer
to that very candidate for the next term (a heartbeat's ``transferee``). A
candidate more than ``max_election_gap`` terms ahead is refused, and no node
campaigns past ``MAX_TERM`` (a term poisoned before these rules existed is
left to ``force_new_cluster``, which starts again from the log's last term).

Why one long file: ``RaftNode`` is one state machine whose every handler reads
and writes the same state (term, log, progress, reads); as in etcd's raft.go it
is kept whole and split by message type into ``_on_*`` methods, while the
pure pieces it uses live in ``log``, ``progress``, ``quorum``, ``requests`` and
``recovery``.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import msgpack

from ... import errors
from . import config as cfgmod
from . import log as logmod
from . import messages as m
from . import progress as pmod
from . import quorum, recovery
from . import requests as reqmod

FOLLOWER = "follower"
PRE_CANDIDATE = "pre_candidate"
CANDIDATE = "candidate"
LEADER = "leader"

ADD_LEARNER = "add_learner"
PROMOTE = "promote"
REMOVE = "remove"


@dataclass(frozen=True, slots=True)
class ReadState:
    """A ReadIndex request ``ctx`` may be served once ``index`` is applied locally."""

    ctx: int
    index: int


@dataclass(frozen=True, slots=True)
class Ready:
    """Effects for the shell, in this order.

    1. Send ``early_messages`` (the leader's appends and heartbeats: a leader
       may write its log in parallel with its followers, thesis 10.2.1, and
       counts itself only once told its entries are durable; a follower's
       heartbeat replies, which vouch for no entry).
    2. Persist ``hard_state`` (if not None), ``snapshot`` (if not None; delete
       log entries up to its index) and ``entries`` (they replace the log
       from ``entries[0].index`` on), and delete log entries after
       ``truncate_after`` if set, in one atomic, fsynced write.
    3. Send ``messages``; they may depend on what was just persisted.
    4. If ``snapshot_received``, restore the state machine from
       ``snapshot``; then apply ``committed`` in order, skipping the indexes in
       ``duplicates`` (request ids already applied).
    5. Serve ``read_states`` once their index is applied; call ``advance``.

    Asynchronous storage (etcd raft's AsyncStorageWrites): the shell may
    apply ``committed`` and call ``advance(rd, persisted=False)`` while the
    write of step 2 is still in flight, because committed entries are
    durable on a majority already; writes must complete in order, and each
    one's ``messages`` go out, and ``persisted_to(last entry)`` is reported,
    only once it is durable.
    """

    hard_state: m.HardState | None = None
    entries: tuple[m.Entry, ...] = ()
    snapshot: m.Snapshot | None = None
    snapshot_received: bool = False
    truncate_after: int | None = None
    early_messages: tuple[m.Message, ...] = ()
    messages: tuple[m.Message, ...] = ()
    committed: tuple[m.Entry, ...] = ()
    duplicates: frozenset[int] = frozenset()
    read_states: tuple[ReadState, ...] = ()

    @property
    def must_persist(self) -> bool:
        return bool(self.hard_state or self.entries or self.snapshot
                    or self.truncate_after is not None)


def pack_snapshot(app_data: bytes, requests: reqmod.Table | list[list[str | int]]) -> bytes:
    """A snapshot's data: the application's bytes and the request table, as columns."""
    table = requests if isinstance(requests, reqmod.Table) else reqmod.Table.of_rows(requests)
    data: bytes = msgpack.packb({"app": app_data, "req_ids": table.ids, "req_at": table.at},
                                use_bin_type=True)
    return data


def unpack_snapshot(data: bytes) -> tuple[bytes, reqmod.Table]:
    """The application's bytes and the request table in a snapshot's data (either layout:
    columns, or the ``req`` rows of older snapshots)."""
    if not data:
        return b"", reqmod.Table([], [])
    raw = msgpack.unpackb(data, raw=False)
    if not isinstance(raw, dict) or not isinstance(raw.get("app"), bytes):
        raise ValueError("malformed snapshot data")
    if "req" in raw:
        rows = raw["req"]
        if not isinstance(rows, list) or not all(isinstance(r, list) and len(r) == 2
                                                 for r in rows):
            raise ValueError("malformed snapshot request table")
        return raw["app"], reqmod.Table.of_rows(rows)
    ids, at = raw.get("req_ids"), raw.get("req_at")
    if not (isinstance(ids, list) and isinstance(at, list) and len(ids) == len(at)):
        raise ValueError("malformed snapshot request table")
    return raw["app"], reqmod.Table(ids, at)


@dataclass(slots=True)
class _PendingRead:
    ctx: int
    index: int
    acks: set[str] = field(default_factory=set)


class RaftNode:
    def __init__(
        self,
        node_id: str,
        config: cfgmod.RaftConfig,
        rng: random.Random,
        *,
        hard_state: m.HardState | None = None,
        snapshot: m.Snapshot | None = None,
        entries: Sequence[m.Entry] = (),
        bootstrap: m.ClusterConfig | None = None,
    ) -> None:
        self.id = node_id
        self.cfg = config
        self.rng = rng
        hs = hard_state or m.HardState()
        self.term, self.vote = hs.term, hs.vote
        self._snapshot_out: m.Snapshot | None = None
        if snapshot is None and not entries and bootstrap is not None:
            snapshot = self._snapshot_out = m.Snapshot(0, 0, bootstrap, b"")
        self.log = logmod.RaftLog(snapshot, entries, hs.commit)
        self.requests = reqmod.RequestTable(config.request_window)
        if snapshot is not None:
            self.requests.load(unpack_snapshot(snapshot.data)[1])
        self._configs: list[tuple[int, m.ClusterConfig]] = [
            (snapshot.index if snapshot else 0, snapshot.config if snapshot else m.ClusterConfig())]
        self.role = FOLLOWER
        self.leader_id: str | None = None
        self.progress: dict[str, pmod.Progress] = {}
        self.votes: dict[str, bool] = {}
        self.election_elapsed = 0
        self.heartbeat_elapsed = 0
        self.randomized_timeout = 0
        # Ticks left in which a campaign may start early (see RaftConfig.hurry_ticks): no
        # leader has been seen since start.
        self.hurry_left = config.election_ticks_max if config.hurry_ticks else 0
        self.local_health = 0  # Lifeguard's local health multiplier (0 = healthy)
        self._stalled_ticks = 0  # ticks of our own stall, not counted as the leader's silence
        self.pending_conf_index = 0
        self.lead_transferee: str | None = None
        self.transfer_sanctioned: str | None = None  # the transferee our leader announced
        self.sponsors: frozenset[str] | None = None  # who may add us (see the docstring)
        self.refused = 0  # messages dropped by the rules of who may speak
        # The configuration (held, so never mistaken for a new one) and commit index the
        # cache was worked out for.
        self._admission_seen: tuple[m.ClusterConfig, int] | None = None
        self._admission_cache: tuple[frozenset[str], frozenset[str]] = (frozenset(),
                                                                          frozenset())
        self._transfer_elapsed = 0
        self._read_seq = 0
        self._reads: list[_PendingRead] = []
        self._reads_waiting: list[int] = []
        self._read_bcast = False
        self._read_states: list[ReadState] = []
        self._snap_buf: tuple[tuple[int, int], bytes, bytearray] | None = None
        self._snapshot_received = False
        self._truncate_after: int | None = None
        self._msgs: list[m.Message] = []
        self._early: list[m.Message] = []
        self._bcast = False
        self._prev_hs = hs
        self._reset_election_timer()
        self._note_configs(self.log.entries)
        self._handlers: dict[type, Callable[[Any], None]] = {
            m.VoteRequest: self._on_vote_request, m.VoteResponse: self._on_vote_response,
            m.AppendRequest: self._on_append, m.AppendResponse: self._on_append_response,
            m.Heartbeat: self._on_heartbeat, m.HeartbeatResponse: self._on_heartbeat_response,
            m.SnapshotChunk: self._on_snapshot_chunk,
            m.SnapshotResponse: self._on_snapshot_response, m.TimeoutNow: self._on_timeout_now,
        }

    # -- views -----------------------------------------------------------------------------

    @property
    def conf(self) -> m.ClusterConfig:
        """The latest configuration in the log (in force as soon as appended)."""
        return self._configs[-1][1]

    @property
    def conf_index(self) -> int:
        """The log index of the entry that set ``conf`` (the snapshot's for a restored one)."""
        return self._configs[-1][0]

    def conf_committed(self) -> bool:
        """Is ``conf`` committed as far as this node knows? False while it has no
        configuration at all (a node waiting to be added)."""
        return bool(self.conf.members) and self.conf_index <= self.log.commit

    def config_at(self, index: int) -> m.ClusterConfig:
        for at, conf in reversed(self._configs):
            if at <= index:
                return conf
        return self._configs[0][1]

    @property
    def is_leader(self) -> bool:
        return self.role == LEADER

    def promotable(self) -> bool:
        return self.id in self.conf.voters

    def admitted(self) -> frozenset[str]:
        """Who may speak to us: the members of the latest configuration and of the latest
        committed one (a member being removed keeps its say until the removal commits, one
        being added has it once the entry is appended). Empty while we have none."""
        return self._admission()[0]

    def _admission(self) -> tuple[frozenset[str], frozenset[str]]:
        """(members, voters) admitted; worked out again only when they may have changed
        (every message asks)."""
        at, conf = self._configs[-1]
        commit = self.log.commit
        pending = at > commit
        seen = self._admission_seen
        if seen is None or seen[0] is not conf or seen[1] != (commit if pending else -1):
            if pending:
                committed = self.config_at(self.log.commit)
                self._admission_cache = (conf.members | committed.members,
                                         conf.voters | committed.voters)
            else:
                self._admission_cache = (conf.members, conf.voters)
            self._admission_seen = (conf, commit if pending else -1)
        return self._admission_cache

    def expect_leader(self, sponsors: frozenset[str]) -> None:
        """We are waiting to be added, by one of ``sponsors``: only they may replicate to
        us until a configuration arrives."""
        self.sponsors = sponsors

    @property
    def term_exhausted(self) -> bool:
        """The term reached ``MAX_TERM`` (a forged message before its bound existed): no
        election can follow; ``force_new_cluster`` recovers."""
        return self.term >= m.MAX_TERM

    def committed_in_term(self) -> bool:
        return self.log.term(self.log.commit) == self.term

    def hard_state(self) -> m.HardState:
        return m.HardState(self.term, self.vote, self.log.commit)

    def _vote_changed(self) -> bool:
        # Term and vote must be durable before any message; the commit index
        # is only a hint after a restart, so it is written along with other state.
        return (self.term, self.vote) != (self._prev_hs.term, self._prev_hs.vote)

    # -- inputs ------------------------------------------------------------------------------

    def step(self, msg: m.Message) -> bool:
        """A message from a peer; False when its sender may not send it (see the module
        docstring: nothing changed). Local inputs have methods of their own: ``tick``,
        ``propose``, ``read_index``, ``change_config``, ``transfer_leader``."""
        if not self._admits(msg):
            self.refused += 1
            return False
        if self._check_term(msg):
            self._handlers[type(msg)](msg)
        return True

    def _admits(self, msg: m.Message) -> bool:
        members, voters = self._admission()
        if not members:  # waiting to be added: only the leader that adds us speaks to us
            return isinstance(msg, _FROM_LEADER) and (self.sponsors is None
                                                       or msg.frm in self.sponsors)
        if msg.frm == self.id or msg.frm not in members:
            return False
        if isinstance(msg, m.VoteRequest):
            return msg.frm in voters
        if isinstance(msg, m.TimeoutNow):
            return msg.frm == self.leader_id and msg.term == self.term
        return True

    def tick(self) -> None:
        stalled = self._stalled_ticks > 0
        if stalled:
            self._stalled_ticks -= 1
        if self.role == LEADER:
            self._tick_leader(stalled)
        elif not stalled:
            self._tick_election()

    def peer_unreachable(self, peer: str) -> None:
        """The shell saw ``peer``'s connection drop (reset or closed without goodbye). If it
        is our leader, it is probably gone: stop deferring to it and campaign soon. A
        wrong guess costs nothing: the pre-vote fails while others still hear from it."""
        if self.role != FOLLOWER or peer != self.leader_id or not self.cfg.hurry_ticks:
            return
        self.leader_id = None
        self.hurry_left = self.cfg.election_ticks_max
        self.election_elapsed = 0
        self._reset_election_timer()

    def note_lag(self, lag_ticks: int) -> None:
        """The shell ran a timer ``lag_ticks`` late: how far behind this node itself is
        (Lifeguard's local health). A stall of a heartbeat or more raises the health
        multiplier and does not count against the leader (its messages may be waiting
        unread in our socket); a timer on time lowers it."""
        if lag_ticks >= self.cfg.heartbeat_ticks:
            self.local_health = min(self.cfg.max_local_health, self.local_health + 1)
            self._stalled_ticks = lag_ticks  # the next ticks delivered are the stall's
        elif self.local_health:
            self.local_health -= 1

    def ticks_until_due(self) -> int:
        """Ticks until the next tick-driven action (heartbeat, election, quorum check,
        transfer timeout), at least 1: a shell may sleep that long when nothing arrives."""
        if self.role == LEADER:
            due = min(self.cfg.heartbeat_ticks - self.heartbeat_elapsed,
                      self._quorum_timeout() - self.election_elapsed)
            if self.lead_transferee is not None:
                due = min(due, self.cfg.election_ticks_min - self._transfer_elapsed)
        else:
            due = self._election_timeout() - self.election_elapsed
        return max(1, due)

    def campaign(self) -> None:
        """Start an election now (e.g. a sole voter at start-up)."""
        if self.role != LEADER:
            self._campaign(pre=self.cfg.pre_vote)

    def propose(self, commands: Sequence[bytes], request_ids: Sequence[str | None] = ()) -> int:
        """Append client commands; returns the index of the first. Leader only."""
        self._require_leader()
        if self.log.last_index - self.log.commit + len(commands) > self.cfg.max_uncommitted_entries:
            raise errors.Overloaded("too many uncommitted entries (no quorum?)")
        rids = list(request_ids) + [None] * (len(commands) - len(request_ids))
        first = self.log.last_index + 1
        self._append_own([m.Entry(self.term, first + k, m.NORMAL, c, rids[k])
                          for k, c in enumerate(commands)])
        return first

    def read_index(self) -> int:
        """Start a linearizable read; a ``ReadState`` with the returned ctx follows."""
        if self.role != LEADER:
            raise errors.NotLeader(self.leader_id)
        self._read_seq += 1
        if self.committed_in_term():
            self._start_read(self._read_seq)
        else:  # Raft section 8: wait for a commit of our own term first
            self._reads_waiting.append(self._read_seq)
        return self._read_seq

    def change_config(self, op: str, node_id: str, address: str | None = None) -> int:
        """Single-server membership change; returns the config entry's index."""
        self._require_leader()
        if self.pending_conf_index > self.log.commit or not self.committed_in_term():
            raise errors.MembershipError("busy", "another configuration change is in progress")
        new = _changed(self.conf, op, node_id, address)
        self._append_own([m.Entry(self.term, self.log.last_index + 1, m.CONFIG, new.encode())])
        return self.pending_conf_index

    def transfer_leader(self, target: str | None = None) -> str:
        """Hand leadership to ``target`` (default: the most up-to-date voter)."""
        if self.role != LEADER:
            raise errors.NotLeader(self.leader_id)
        others = [v for v in self.conf.voters if v != self.id and v in self.progress]
        if target is None:
            if not others:
                raise errors.MembershipError("no_target", "no other voter to transfer to")
            # a voter we heard from this round over one that may be down, then the most
            # caught-up
            target = max(sorted(others), key=lambda v: (self.progress[v].recent_active,
                                                        self.progress[v].match))
        if target not in others:
            raise errors.MembershipError("no_target", f"{target!r} is not another voter")
        self.lead_transferee, self._transfer_elapsed = target, 0
        # Announce it first: voters let this candidate past their lease only then.
        self._bcast_heartbeat(self._reads[-1].ctx if self._reads else 0)
        if self.progress[target].match == self.log.last_index:
            self._send(m.TimeoutNow(self.term, self.id, target))
        else:
            self._send_append(target, allow_empty=True)
        return target

    def force_new_cluster(self, address: str | None = None) -> recovery.Recovered:
        """Quorum is lost for good: become the sole voter of a new cluster, in place.

        Keeps the committed log (and so the applied state machine and request table, which
        only ever saw committed entries); see ``recovery.force_new_cluster``. The next
        Ready persists it in one write (truncation, the configuration entry, the hard
        state); the node then elects itself. Refused while a leader is known: then quorum
        is not lost, and a second cluster must not be split off a working one.
        """
        if self.leader_id is not None:
            raise errors.MembershipError(
                "has_leader", f"this node sees a leader ({self.leader_id}): quorum is not "
                "lost; use the member add/remove calls")
        r = recovery.force_new_cluster(self.hard_state(), self.log.snapshot, self.log.entries,
                                       self.id, address)
        commit = r.truncated_after
        self._become_follower(r.hard_state.term, None)
        self.log.entries = list(r.entries[:-1])
        self.log.unstable = min(self.log.unstable, commit + 1)
        self.log.persisted = min(self.log.persisted, commit)
        self.log.append_new([r.config_entry])
        self.log.commit = r.hard_state.commit
        self._configs = [c for c in self._configs if c[0] <= commit] or self._configs[:1]
        self._configs.append((r.config_entry.index, r.config))
        self._truncate_after = commit
        self._snap_buf = None
        self.pending_conf_index = 0
        return r

    def capture(self, app_data: bytes) -> m.Snapshot | None:
        """The snapshot of the state at ``applied`` (``app_data``), as ``compact`` stores
        it, without compacting: a backup's copy. None before anything was applied."""
        point = self.capture_point()
        if point is None:
            return None
        idx, term, conf, requests = point
        return m.Snapshot(idx, term, conf, pack_snapshot(app_data, requests))

    def capture_point(self) -> tuple[int, int, m.ClusterConfig, reqmod.Table] | None:
        """What a snapshot at ``applied`` holds besides the application's state: index,
        term, configuration and request table (None before anything was applied)."""
        idx = self.log.applied
        term = self.log.term(idx)
        if idx == 0 or term is None:
            return None
        return idx, term, self.config_at(idx), self.requests.dump()

    def compact(self, app_data: bytes) -> m.Snapshot | None:
        """Snapshot the state at ``applied`` (``app_data``) and drop the log up to it."""
        if self.log.applied <= self.log.snapshot_index:
            return None
        snap = self.capture(app_data)
        if snap is None or not self.compact_to(snap):
            return None
        return snap

    def compact_to(self, snap: m.Snapshot) -> bool:
        """Drop the log up to ``snap``, a ``capture`` taken earlier (its packing may have
        run elsewhere meanwhile). False, changing nothing, when the log moved past it: a
        newer snapshot is in place, or ``snap`` is not of this log's applied prefix."""
        idx = snap.index
        if idx <= self.log.snapshot_index or idx > self.log.applied \
                or self.log.term(idx) != snap.term:
            return False
        self.log.compact(snap)
        self._configs = [(idx, snap.config)] + [c for c in self._configs if c[0] > idx]
        self._snapshot_out, self._snapshot_received = snap, False
        return True

    # -- ready / advance ---------------------------------------------------------------------

    def has_ready(self) -> bool:
        return bool(self._msgs or self._early or self._bcast or self._read_bcast
                    or self._read_states or self._snapshot_out
                    or self.log.unstable <= self.log.last_index
                    or self.log.commit > self.log.applied
                    or self._truncate_after is not None
                    or self._vote_changed())

    def ready(self) -> Ready:
        self._flush_broadcasts()
        hs = self.hard_state()
        entries = tuple(self.log.unstable_entries())
        committed = self.log.committed_to_apply(self.log.commit)
        dups = frozenset(e.index for e in committed
                         if not self.requests.record(e.request_id if e.kind == m.NORMAL else None,
                                                     e.index))
        rd = Ready(
            hard_state=hs if self._vote_changed() or (
                (entries or self._snapshot_out) and hs != self._prev_hs) else None,
            entries=entries,
            snapshot=self._snapshot_out, snapshot_received=self._snapshot_received,
            truncate_after=self._truncate_after,
            early_messages=tuple(self._early), messages=tuple(self._msgs),
            committed=tuple(committed), duplicates=dups, read_states=tuple(self._read_states),
        )
        if rd.hard_state is not None:
            self._prev_hs = hs
        self.log.unstable = self.log.last_index + 1
        self._msgs, self._early, self._read_states = [], [], []
        self._snapshot_out, self._snapshot_received, self._truncate_after = None, False, None
        if committed:
            self.log.applied = committed[-1].index
        return rd

    def advance(self, rd: Ready, *, persisted: bool = True) -> None:
        """The shell carried out ``rd``. With ``persisted=False`` its write is still in
        flight (asynchronous storage); report it later with ``persisted_to``."""
        if persisted and rd.entries:
            self.persisted_to(rd.entries[-1].index, rd.entries[-1].term)

    def persisted_to(self, index: int, term: int) -> None:
        """Entries up to (index, term) are durable locally: the leader may count itself."""
        if index <= self.log.persisted or self.log.term(index) != term:
            return  # old news, or rewritten (or compacted) since that write was issued
        self.log.persisted = index
        if self.role == LEADER:
            if self.id in self.progress:
                self.progress[self.id].acked(self.log.persisted)
            self._maybe_commit()

    # -- term and role -------------------------------------------------------------------------

    def _check_term(self, msg: m.Message) -> bool:
        """Apply the term rules common to all messages; False drops the message."""
        if msg.term > self.term:
            if isinstance(msg, m.VoteRequest):
                if msg.term - self.term > self.cfg.max_election_gap:
                    self.refused += 1  # no honest candidate gets this far ahead of us
                    return False
                if self._in_lease() and not self._sanctioned(msg):
                    return False  # we hear from a live leader: do not let this one disrupt it
                if msg.pre:
                    return True
            elif isinstance(msg, m.VoteResponse) and msg.pre and msg.granted:
                return True
            leader = msg.frm if isinstance(msg, _FROM_LEADER) else None
            self._become_follower(msg.term, leader)
            return True
        if msg.term < self.term:
            if isinstance(msg, _FROM_LEADER):  # a stale leader: our answer deposes it
                self._send(m.AppendResponse(self.term, self.id, msg.frm, False, 0))
            elif isinstance(msg, m.VoteRequest) and msg.pre:
                self._send(m.VoteResponse(self.term, self.id, msg.frm, False, pre=True))
            return False
        return True

    def _in_lease(self) -> bool:
        # A leader is always in its own lease (as etcd's): with check_quorum it steps down
        # by itself when it loses its quorum, and must not be deposed by a node that only
        # stopped hearing it (a reset connection, a stalled loop).
        if self.role == LEADER:
            return self.cfg.check_quorum
        # Shorter than the shortest election timeout by a heartbeat, so that followers
        # whose clocks lag the first candidate's a little do not ignore it.
        lease = self.cfg.election_ticks_min - self.cfg.heartbeat_ticks
        return (self.cfg.check_quorum and self.leader_id is not None
                and self.election_elapsed < lease)

    def _sanctioned(self, msg: m.VoteRequest) -> bool:
        """A transfer's vote request passes a lease only if this term's leader announced
        that candidate (or we are that leader), and only for the next term."""
        if not msg.transfer or msg.term != self.term + 1:
            return False
        announced = self.lead_transferee if self.role == LEADER else self.transfer_sanctioned
        return announced is not None and msg.frm == announced

    def _become_follower(self, term: int, leader: str | None) -> None:
        if term != self.term:
            self.term, self.vote = term, None
        self.role, self.leader_id = FOLLOWER, leader
        self.progress, self.votes = {}, {}
        self.lead_transferee = self.transfer_sanctioned = None
        self._reads, self._reads_waiting = [], []
        self.election_elapsed = 0
        self._reset_election_timer()

    def _reset_election_timer(self) -> None:
        if self.hurry_left > 0:
            self.randomized_timeout = self.rng.randint(1, self.cfg.hurry_ticks)
        else:
            self.randomized_timeout = self.rng.randint(self.cfg.election_ticks_min,
                                                       self.cfg.election_ticks_max)

    def _election_timeout(self) -> int:
        """A follower's timeout: widened while this node's own health is poor (it may have
        missed its leader's heartbeats itself), except when it knows the leader is gone."""
        if self.hurry_left > 0:
            return self.randomized_timeout
        return self.randomized_timeout * (1 + self.local_health)

    def _quorum_timeout(self) -> int:
        return self.cfg.election_ticks_max * (1 + self.local_health)

    def _campaign(self, pre: bool, transfer: bool = False) -> None:
        if not self.promotable() or self.term_exhausted:
            return
        if pre:
            self.role, self.leader_id = PRE_CANDIDATE, None
            term = self.term + 1
        else:
            self._become_follower(self.term + 1, None)
            self.role, self.vote = CANDIDATE, self.id
            term = self.term
        self.election_elapsed = 0
        self._reset_election_timer()
        self.votes = {self.id: True}
        if quorum.vote_result(self.conf.voters, self.votes):
            self._won(pre)
            return
        for v in sorted(self.conf.voters - {self.id}):
            self._send(m.VoteRequest(term, self.id, v, self.log.last_index, self.log.last_term,
                                     pre, transfer))

    def _won(self, pre: bool) -> None:
        if pre:
            self._campaign(pre=False)
        else:
            self._become_leader()

    def _become_leader(self) -> None:
        self.hurry_left = 0
        self.role, self.leader_id = LEADER, self.id
        self.heartbeat_elapsed = self.election_elapsed = 0
        nxt = self.log.last_index + 1
        self.progress = {p: pmod.Progress(next=nxt) for p in sorted(self.conf.members)}
        if self.id in self.progress:
            self.progress[self.id].acked(self.log.persisted)
            self.progress[self.id].become_replicate()
        # Any configuration still uncommitted in our log counts as pending.
        self.pending_conf_index = self.log.last_index
        self._append_own([m.Entry(self.term, nxt, m.NOOP)])

    def _require_leader(self) -> None:
        if self.role != LEADER:
            raise errors.NotLeader(self.leader_id)
        if self.lead_transferee is not None:
            raise errors.Overloaded("leadership transfer in progress")

    # -- ticks -------------------------------------------------------------------------------

    def _tick_election(self) -> None:
        self.election_elapsed += 1
        if self.hurry_left > 0:
            self.hurry_left -= 1
        if not self.promotable():
            return
        sole = self.conf.voters == {self.id}
        if sole or self.election_elapsed >= self._election_timeout():
            self._campaign(pre=self.cfg.pre_vote)

    def _tick_leader(self, stalled: bool) -> None:
        self.heartbeat_elapsed += 1
        if not stalled:  # a quorum check counts only time we could hear answers in
            self.election_elapsed += 1
        if self.lead_transferee is not None:
            self._transfer_elapsed += 1
            if self._transfer_elapsed >= self.cfg.election_ticks_min:
                self.lead_transferee = None  # the target did not take over in time
        if self.election_elapsed >= self._quorum_timeout():
            self.election_elapsed = 0
            if self.cfg.check_quorum and not self._quorum_active():
                self._become_follower(self.term, None)
                return
        if self.heartbeat_elapsed >= self.cfg.heartbeat_ticks:
            self.heartbeat_elapsed = 0
            self._bcast_heartbeat(self._reads[-1].ctx if self._reads else 0)

    def _quorum_active(self) -> bool:
        alive = {self.id}
        for pid, pr in self.progress.items():
            if pr.recent_active:
                alive.add(pid)
            pr.recent_active = pid == self.id
        return quorum.has_quorum(self.conf.voters, alive)

    # -- elections ---------------------------------------------------------------------------

    def _on_vote_request(self, msg: m.VoteRequest) -> None:
        can_vote = (self.vote == msg.frm
                    or (self.vote is None and self.leader_id is None)
                    or (msg.pre and msg.term > self.term))
        # A node waiting to be added has no configuration and must not help elect anyone:
        # pod names are reused, so a member left out of a forced new cluster may count a
        # fresh node of the same name as a voter of its old configuration.
        grant = (can_vote and bool(self.conf.members)
                 and self.log.is_up_to_date(msg.last_index, msg.last_term))
        if grant and not msg.pre:
            self.vote = msg.frm
            self.election_elapsed = 0
        self._send(m.VoteResponse(msg.term if grant else self.term, self.id, msg.frm, grant,
                                  msg.pre))

    def _on_vote_response(self, msg: m.VoteResponse) -> None:
        if (self.role, msg.pre) not in ((PRE_CANDIDATE, True), (CANDIDATE, False)):
            return
        self.votes[msg.frm] = msg.granted
        result = quorum.vote_result(self.conf.voters, self.votes)
        if result is True:
            self._won(msg.pre)
        elif result is False:
            self._become_follower(self.term, None)

    def _on_timeout_now(self, msg: m.TimeoutNow) -> None:
        self._campaign(pre=False, transfer=True)

    # -- replication: follower side ------------------------------------------------------------

    def _heard_from_leader(self, leader: str) -> None:
        if self.role != FOLLOWER:
            self._become_follower(self.term, leader)
        self.leader_id = leader
        self.election_elapsed = 0
        if self.hurry_left:
            self.hurry_left = 0
            self._reset_election_timer()

    def _on_append(self, msg: m.AppendRequest) -> None:
        self._heard_from_leader(msg.frm)
        prev, prev_term, entries = msg.prev_index, msg.prev_term, msg.entries
        if prev < self.log.commit:  # our committed prefix matches the leader's: skip it
            entries = tuple(e for e in entries if e.index > self.log.commit)
            prev, prev_term = self.log.commit, self.log.term(self.log.commit) or 0
        if not self.log.matches(prev, prev_term):
            self._reject_append(msg)
            return
        truncated = self.log.append(entries)
        if truncated is not None:
            self._configs = [c for c in self._configs if c[0] < truncated] or self._configs[:1]
        self._note_configs(entries)
        last_new = prev + len(entries)
        self.log.commit_to(min(msg.commit, last_new))
        self._send(m.AppendResponse(self.term, self.id, msg.frm, True, last_new))

    def _reject_append(self, msg: m.AppendRequest) -> None:
        if msg.prev_index > self.log.last_index:
            hint, hint_term = self.log.last_index + 1, 0
        else:
            hint = self.log.first_index_of_term(msg.prev_index)
            hint_term = self.log.term(msg.prev_index) or 0
        self._send(m.AppendResponse(self.term, self.id, msg.frm, False, msg.prev_index,
                                    hint, hint_term))

    def _on_heartbeat(self, msg: m.Heartbeat) -> None:
        self._heard_from_leader(msg.frm)
        self.transfer_sanctioned = msg.transferee or None
        self.log.commit_to(msg.commit)
        reply = m.HeartbeatResponse(self.term, self.id, msg.frm, msg.ctx)
        # The reply vouches for no log entry, only that we follow this leader's term, so it
        # need not queue behind our disk writes: a slow fsync on the followers must not
        # look like a lost quorum to the leader. A term raised by this very message still
        # goes to disk first.
        (self._msgs if self._vote_changed() else self._early).append(reply)

    def _on_snapshot_chunk(self, msg: m.SnapshotChunk) -> None:
        self._heard_from_leader(msg.frm)
        if msg.index <= self.log.commit:  # we already hold all of it
            self._send(m.SnapshotResponse(self.term, self.id, msg.frm, msg.index, 0, True))
            return
        key = (msg.index, msg.snap_term)
        if msg.offset == 0:
            self._snap_buf = (key, msg.config, bytearray())
        buf = self._snap_buf
        if buf is None or buf[0] != key or msg.offset != len(buf[2]):
            have = len(buf[2]) if buf is not None and buf[0] == key else 0
            self._send(m.SnapshotResponse(self.term, self.id, msg.frm, msg.index, have))
            return
        buf[2].extend(msg.data)
        done = msg.done and self._install_snapshot(key, buf[1], bytes(buf[2]))
        self._send(m.SnapshotResponse(self.term, self.id, msg.frm, msg.index, len(buf[2]), done))

    def _install_snapshot(self, key: tuple[int, int], conf_raw: bytes, data: bytes) -> bool:
        self._snap_buf = None
        try:
            snap = m.Snapshot(key[0], key[1], m.ClusterConfig.decode(conf_raw), data)
            table = unpack_snapshot(data)[1]
        except (ValueError, TypeError, msgpack.UnpackException):
            return False
        discarded = self.log.restore(snap)
        self.requests.load(table)
        kept = [] if discarded else [c for c in self._configs if c[0] > snap.index]
        self._configs = [(snap.index, snap.config), *kept]
        if discarded:
            self._truncate_after = snap.index
        self._snapshot_out, self._snapshot_received = snap, True
        return True

    # -- replication: leader side --------------------------------------------------------------

    def _append_own(self, entries: list[m.Entry]) -> None:
        self.log.append_new(entries)
        if self._note_configs(entries):
            self.pending_conf_index = entries[-1].index
        self._bcast = True

    def _note_configs(self, entries: Sequence[m.Entry]) -> bool:
        changed = False
        for e in entries:
            if e.kind == m.CONFIG and e.index > self._configs[-1][0]:
                self._configs.append((e.index, m.ClusterConfig.decode(e.data)))
                changed = True
        if changed:
            self._on_config_changed()
        return changed

    def _on_config_changed(self) -> None:
        if self.role != LEADER:
            return
        members = self.conf.members
        # A removed member keeps being replicated to until its removal commits (as etcd
        # drops it on apply): it then holds the entry that removes it, and knows it was
        # removed on purpose. It no longer counts for any quorum (those use conf.voters).
        for pid in sorted(members - set(self.progress)):
            self.progress[pid] = pmod.Progress(next=self.log.last_index + 1)
        self._drop_departed()
        if self.lead_transferee not in self.conf.voters:
            self.lead_transferee = None

    def _drop_departed(self) -> None:
        if self.log.commit >= self.conf_index:
            for pid in [p for p in self.progress if p not in self.conf.members]:
                del self.progress[pid]

    def _flush_broadcasts(self) -> None:
        if self._bcast and self.role == LEADER:
            for pid, pr in self.progress.items():
                # A commit-only (empty) append goes only where nothing is in flight: an
                # answer is coming that will be followed by more, and heartbeats carry
                # the commit index too. Sending one per commit would double the traffic.
                if pid != self.id and self._send_append(pid, allow_empty=not pr.inflight):
                    self._send_appends(pid)
        self._bcast = False
        if self._read_bcast and self.role == LEADER:
            self._bcast_heartbeat(self._read_seq)
        self._read_bcast = False

    def _send_append(self, to: str, *, allow_empty: bool) -> bool:
        pr = self.progress.get(to)
        if pr is None or pr.paused(self.cfg.max_inflight):
            return False
        pr.next = min(pr.next, self.log.last_index + 1)
        prev = pr.next - 1
        prev_term = self.log.term(prev)
        if prev_term is None:
            self._start_snapshot(to, pr)
            return False
        entries: list[m.Entry] = []
        if pr.next <= self.log.last_index:
            entries = self.log.slice(pr.next, pr.next + self.cfg.max_entries_per_message,
                                     self.cfg.max_bytes_per_message)
        elif not allow_empty:
            return False
        self._send(m.AppendRequest(self.term, self.id, to, prev, prev_term, tuple(entries),
                                   self.log.commit))
        pr.sent_commit = self.log.commit
        pr.sent(entries[-1].index if entries else prev)
        return bool(entries)

    def _send_appends(self, to: str) -> None:
        while self._send_append(to, allow_empty=False):
            pass

    def _on_append_response(self, msg: m.AppendResponse) -> None:
        pr = self.progress.get(msg.frm)
        if self.role != LEADER or pr is None:
            return
        pr.recent_active = pr.answered = True
        if not msg.success:
            if pr.rejected(msg.index, self._next_hint(msg)):
                self._send_append(msg.frm, allow_empty=True)
            return
        if pr.acked(msg.index):
            if pr.state == pmod.PROBE:
                pr.become_replicate()
            elif pr.state == pmod.SNAPSHOT and pr.match >= pr.snap_index:
                pr.become_probe()
            self._maybe_commit()
            if msg.frm == self.lead_transferee and pr.match == self.log.last_index:
                self._send(m.TimeoutNow(self.term, self.id, msg.frm))
        self._send_appends(msg.frm)
        if not pr.inflight and pr.sent_commit < self.log.commit:
            self._send_append(msg.frm, allow_empty=True)  # the commit it has not seen yet

    def _next_hint(self, msg: m.AppendResponse) -> int:
        """Fast back-tracking: skip the follower's whole conflicting term at once."""
        if msg.hint_term == 0:
            return msg.hint_index
        last = self.log.last_index_of_term(msg.hint_term)
        return last + 1 if last is not None else msg.hint_index

    def _maybe_commit(self) -> None:
        if self.role != LEADER:
            return
        match = {pid: pr.match for pid, pr in self.progress.items()}
        match[self.id] = self.log.persisted
        idx = quorum.committed_index(self.conf.voters, match)
        # Only entries of our own term are committed by counting (Raft 5.4.2).
        if idx <= self.log.commit or self.log.term(idx) != self.term:
            return
        self.log.commit_to(idx)
        self._bcast = True
        self._drop_departed()
        if self._reads_waiting:
            for ctx in self._reads_waiting:
                self._start_read(ctx)
            self._reads_waiting = []
        if self.id not in self.conf.voters and self.log.commit >= self._configs[-1][0]:
            self._become_follower(self.term, None)  # we were removed; the change is committed

    def _start_snapshot(self, to: str, pr: pmod.Progress) -> None:
        pr.become_snapshot(self.log.snapshot_index)
        self._send_chunk(to, pr)

    def _send_chunk(self, to: str, pr: pmod.Progress) -> None:
        snap = self.log.snapshot
        if snap is None or snap.index != pr.snap_index:
            pr.become_probe()
            return
        off = pr.snap_offset
        chunk = snap.data[off:off + self.cfg.snapshot_chunk_bytes]
        done = off + len(chunk) >= len(snap.data)
        self._send(m.SnapshotChunk(self.term, self.id, to, snap.index, snap.term,
                                   snap.config.encode(), off, chunk, done))

    def _on_snapshot_response(self, msg: m.SnapshotResponse) -> None:
        pr = self.progress.get(msg.frm)
        if self.role != LEADER or pr is None:
            return
        pr.recent_active = True
        if pr.state != pmod.SNAPSHOT or msg.index != pr.snap_index:
            return
        if msg.done:
            pr.acked(msg.index)
            pr.become_probe()
            self._send_append(msg.frm, allow_empty=True)
        else:
            pr.snap_offset = msg.offset
            self._send_chunk(msg.frm, pr)

    # -- heartbeats and reads ---------------------------------------------------------------------

    def _bcast_heartbeat(self, ctx: int) -> None:
        for pid, pr in self.progress.items():
            if pid != self.id:
                self._send(m.Heartbeat(self.term, self.id, pid, min(pr.match, self.log.commit),
                                       ctx, self.lead_transferee or ""))

    def _on_heartbeat_response(self, msg: m.HeartbeatResponse) -> None:
        pr = self.progress.get(msg.frm)
        if self.role != LEADER or pr is None:
            return
        pr.recent_active = True
        answered, pr.answered = pr.answered, False
        if msg.ctx:
            self._ack_read(msg.frm, msg.ctx)
        if pr.state == pmod.SNAPSHOT:
            self._send_chunk(msg.frm, pr)  # a chunk or its answer may have been lost
        elif pr.match < self.log.last_index:
            if (pr.state == pmod.REPLICATE and pr.paused(self.cfg.max_inflight)
                    and not answered):
                pr.become_probe()  # the window is full and nothing came back: resend
            elif pr.state == pmod.PROBE:
                pr.probe_sent = False
            self._send_append(msg.frm, allow_empty=True)

    def _start_read(self, ctx: int) -> None:
        if quorum.has_quorum(self.conf.voters, {self.id}):
            self._read_states.append(ReadState(ctx, self.log.commit))
            return
        self._reads.append(_PendingRead(ctx, self.log.commit, {self.id}))
        self._read_bcast = True

    def _ack_read(self, frm: str, ctx: int) -> None:
        if frm not in self.conf.voters:
            return
        done = -1
        for k, r in enumerate(self._reads):
            if r.ctx > ctx:
                break
            r.acks.add(frm)
            if quorum.has_quorum(self.conf.voters, r.acks):
                done = k
        if done >= 0:  # reads are ordered: confirming one confirms all before it
            for r in self._reads[:done + 1]:
                self._read_states.append(ReadState(r.ctx, r.index))
            del self._reads[:done + 1]

    # -- output -----------------------------------------------------------------------------------

    def _send(self, msg: m.Message) -> None:
        (self._early if self.role == LEADER else self._msgs).append(msg)


_FROM_LEADER = (m.AppendRequest, m.Heartbeat, m.SnapshotChunk)


def _changed(conf: m.ClusterConfig, op: str, node_id: str,
             address: str | None) -> m.ClusterConfig:
    voters, learners = set(conf.voters), set(conf.learners)
    addrs = dict(conf.addresses)
    if op == ADD_LEARNER:
        if node_id in conf.members:
            raise errors.MembershipError("exists", f"{node_id!r} is already a member")
        learners.add(node_id)
    elif op == PROMOTE:
        if node_id not in conf.learners:
            raise errors.MembershipError("not_learner", f"{node_id!r} is not a learner")
        learners.discard(node_id)
        voters.add(node_id)
    elif op == REMOVE:
        if node_id not in conf.members:
            raise errors.MembershipError("not_member", f"{node_id!r} is not a member")
        voters.discard(node_id)
        learners.discard(node_id)
        addrs.pop(node_id, None)
    else:
        raise errors.MembershipError("bad_op", f"unknown configuration change {op!r}")
    if not voters:
        raise errors.MembershipError("last_voter", "cannot remove the last voter")
    if address is not None:
        addrs[node_id] = address
    return m.ClusterConfig(frozenset(voters), frozenset(learners), addrs)
