"""A node's background duties: timers that keep its parts in step.

* load: every node gossips its load (``LOAD_STATE_KEY`` in the mesh state), and
  every node's coordinator takes each report as that node's heartbeat, so
  ``select_node`` is load-aware on any node;
* leader: the leader keeps the coordinator's registry equal to Raft's membership,
  and commits the cluster's id once;
* certificates: rotated TLS files (cert-manager renews a Secret in place) are
  reloaded, and what is loaded is described for ``/v1/status``;
* the load's loop lag is how late the Raft loop's own timer runs (``RaftLoop.loop_lag_ms``),
  measured there rather than by a timer of its own;
* clocks: whether this node's wall clock is fit to stamp multi-master writes.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from . import concepts, consensus, coordinator, errors, mesh, replication, statemachine
from .core import clocks, load
from .transport import peer, tls

log = logging.getLogger(__name__)

LOAD_STATE_KEY = "load"
LOAD_REPORT_SECONDS = 1.0  # looked at this often; gossiped only when worth it (core.load)
LEADER_DUTY_SECONDS = 1.0
CERT_CHECK_SECONDS = 10.0
NAMING_POLL_SECONDS = 0.1


class Certificates:
    """The TLS files this node has loaded, reloaded when they are rotated."""

    def __init__(self, files: tls.TLSFiles, transport: peer.PeerTransport) -> None:
        self._files = files
        self._transport = transport
        self._mtime: tuple[float, float, float] | None = None
        self._describe()

    def _describe(self) -> None:
        self.not_after = tls.not_after(Path(self._files.cert).read_bytes())
        # For the operator's two-phase CA rotation: it re-issues leaves from a new CA only
        # once every node trusts it, and retires the old CA only once every node serves a
        # leaf of the new one.
        self.trusted_ca_sha256 = tls.file_fingerprints(self._files.ca)
        self.cert_sha256 = tls.file_fingerprints(self._files.cert)[0]

    def check(self) -> None:
        try:
            mtime = self._files.mtime()
            if self._mtime is not None and mtime != self._mtime:
                self._transport.reload_tls()
                self._describe()
                log.info("reloaded rotated TLS certificates (valid until %s)",
                         self.not_after.isoformat())
            self._mtime = mtime
        except (OSError, ValueError, tls.TLSConfigError) as exc:
            log.warning("certificate reload failed, keeping the old ones: %s", exc)

    async def watch(self) -> None:
        while True:
            self.check()
            await asyncio.sleep(CERT_CHECK_SECONDS)


class ClockWatch:
    """May this node stamp multi-master writes? Its wall clock against the members'
    (measured on the mesh's probes), its own jumps and its hybrid clock (core/clocks.py)."""

    def __init__(self, gossip: mesh.GossipMesh, replicator: replication.MultiMasterReplicator,
                 max_offset: float) -> None:
        self._check = clocks.ClockCheck(max_offset)
        self._replicator = replicator
        self.refused = 0
        gossip.register_clock_sample_callback(self._check.observe)

    def unfit(self) -> str | None:
        why = self._check.verdict(time.time(), time.monotonic(),
                                  self._replicator.hybrid_clock_seconds(),
                                  len(self._replicator.peers))
        if why is not None:
            self.refused += 1
        return why


class LoadReporter:
    """This node's load, gossiped; every node's load, heard as coordinator heartbeats."""

    def __init__(self, gossip: mesh.GossipMesh, registry: coordinator.FederationCoordinator,
                 store: concepts.ConceptService, loop_lag_ms: Callable[[], float]) -> None:
        self._mesh = gossip
        self._coordinator = registry
        self._concepts = store
        self._loop_lag_ms = loop_lag_ms
        self._beats: set[asyncio.Task[None]] = set()
        self.reports_sent = 0
        gossip.register_state_update_callback(self._on_mesh_state)

    @property
    def loop_lag_ms(self) -> float:
        return self._loop_lag_ms()

    def inputs(self) -> load.LoadInputs:
        c = self._concepts
        return load.LoadInputs(c.in_flight, self.loop_lag_ms, c.latency_ms or 0.0, c.count())

    async def report(self) -> None:
        last: dict[str, object] | None = None
        last_at = 0.0
        while True:
            beat = load.heartbeat(self.inputs())
            now = time.monotonic()
            if load.worth_reporting(last, beat, now - last_at):
                await self._mesh.update_state(LOAD_STATE_KEY, beat)
                last, last_at = beat, now
                self.reports_sent += 1
            await asyncio.sleep(LOAD_REPORT_SECONDS)

    def _on_mesh_state(self, node_id: str, key: str, value: Any) -> None:
        """A node's load arrived through the mesh (ours too): our coordinator's heartbeat."""
        if key != LOAD_STATE_KEY:
            return

        async def beat() -> None:
            try:
                # False while the node is not registered here yet: its next report counts.
                await self._coordinator.heartbeat(node_id, value)
            except ValueError as exc:
                log.debug("ignoring a malformed load report from %s: %s", node_id, exc)
            except coordinator.CoordinatorError as exc:
                log.debug("heartbeat of %s not recorded: %s", node_id, exc)

        # A first heartbeat may propose a status change through Raft: off the mesh's
        # callback queue, so membership events are not held up behind a commit.
        task = asyncio.get_running_loop().create_task(beat())
        self._beats.add(task)
        task.add_done_callback(self._beats.discard)

    async def stop(self) -> None:
        for task in list(self._beats):
            task.cancel()
        if self._beats:
            await asyncio.gather(*self._beats, return_exceptions=True)


async def name_the_cluster(raft: consensus.RaftConsensus,
                           state: statemachine.FederationStateMachine, cluster_name: str) -> None:
    """On the leader, once: commit a cluster id, so a restore can tell clusters apart.
    Retried until applied; should two land, the first applied wins. Looked at often (a
    heartbeat's time) until then, so that a backup taken right after formation already
    names its cluster; once named, never again."""
    while state.identity is None:
        if raft.is_leader:
            with contextlib.suppress(errors.FederationError):
                await raft.propose(statemachine.identity_command(cluster_name, uuid.uuid4().hex),
                                   timeout=LEADER_DUTY_SECONDS)
        await asyncio.sleep(NAMING_POLL_SECONDS)


async def sync_registry_with_raft(raft: consensus.RaftConsensus,
                                  registry: coordinator.FederationCoordinator) -> None:
    """On the leader: keep the coordinator's registry equal to Raft's membership."""
    while True:
        if raft.is_leader:
            members = {m["id"]: m["address"] for m in raft.members() if m["address"]}
            registered = {n.node_id: n.address for n in await registry.get_all_nodes()}
            try:
                for nid, addr in members.items():
                    if registered.get(nid) != addr:
                        await registry.register_node(nid, addr, {"raft": True})
                for nid in set(registered) - set(members):
                    await registry.deregister_node(nid)
            except coordinator.CoordinatorError as exc:
                log.debug("registry sync deferred: %s", exc)
        await asyncio.sleep(LEADER_DUTY_SECONDS)
