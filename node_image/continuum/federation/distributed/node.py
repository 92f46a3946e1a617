"""FederationNode: one process of the federation, the composition root.

It builds the parts, hands each its collaborators, and starts and stops them
in order; it makes no decisions of its own. One mutual-TLS listener serves
the peer protocol of every component and the HTTP API; a plain listener
serves ``/healthz``, ``/readyz`` and ``/metrics`` (``server.py``).

* components (the spec's classes, over one shared ``PeerTransport``):
  ``RaftConsensus`` (strong writes, membership, the coordinator's registry; its
  committed commands drive ``statemachine.FederationStateMachine``),
  ``MultiMasterReplicator``, ``GossipMesh``, ``NodeDiscovery``,
  ``FederationCoordinator``;
* services: ``concepts.ConceptService`` (reads and writes, the strong/eventual
  rule), ``membership.Membership`` (formation, join, rejoin, member changes,
  peers), ``duties`` (load reports, registry sync, certificate reload),
  ``status.NodeView`` (what ``/v1/status`` and ``/metrics`` say);
* ``server.NodeServer`` mounts ``api`` and ``probes`` over them.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import signal
from collections.abc import Awaitable, Callable
from typing import Any

from . import (
    api,
    concepts,
    config,
    consensus,
    coordinator,
    discovery,
    duties,
    membership,
    mesh,
    metrics,
    probes,
    replication,
    server,
    statemachine,
    status,
)
from .backup import source as backup_source
from .core.crdt import resolver as crdt_resolver
from .transport import peer, tls

log = logging.getLogger(__name__)

HANDOVER_SECONDS = 5.0  # a stopping leader's transfer before it leaves anyway
LEAVE_SECONDS = 3.0


class FederationNode:
    def __init__(self, settings: config.NodeSettings) -> None:
        s = self.settings = settings
        self.node_id = settings.node_id
        self.data_dir = settings.data_dir
        tls_files = tls.TLSFiles.from_dir(settings.tls_dir)
        # Peers would refuse a node whose certificate lacks the node role or its id: say so
        # now, in one line, rather than fail to form a cluster in silence.
        tls.check_own_node_certificate(tls_files, self.node_id, settings.peer_domain,
                                       wildcard=settings.wildcard_certificates)
        self.transport = peer.PeerTransport(
            self.node_id, None, tls_files, peer_domain=settings.peer_domain,
            wildcard=settings.wildcard_certificates,
            limits=peer.TransportLimits(read_timeout=settings.http_read_timeout_seconds))
        self.raft = consensus.RaftConsensus(
            self.node_id, sorted(s.initial_members), join=not s.initial_members,
            election_timeout_ms=s.raft.election_timeout_ms,
            heartbeat_interval_ms=s.raft.heartbeat_interval_ms,
            max_inflight_appends=s.raft.max_inflight_appends,
            peers={k: v for k, v in s.initial_members.items() if k != self.node_id},
            storage_path=self.data_dir / "raft", transport=self.transport,
            fsync=s.fsync, advertise_address=s.peer_address)
        self.coordinator = coordinator.FederationCoordinator(
            self.node_id,
            load_balance=coordinator.LoadBalance(
                algorithm=s.load_balance.algorithm,
                health_check_interval=s.load_balance.health_check_interval,
                unhealthy_threshold=s.load_balance.unhealthy_threshold),
            transport=self.transport, replicate=self._replicate,
            is_active=lambda: self.raft.is_leader)
        self.state = statemachine.FederationStateMachine(
            self.coordinator.apply_command, self.coordinator.snapshot, self.coordinator.restore)
        self.raft.register_apply_callback(self.state.apply)
        self.raft.register_snapshot_callbacks(self.state.snapshot, self.state.restore,
                                              self.state.frozen)
        strategy = crdt_resolver.ConflictResolutionStrategy[
            s.replication.conflict_strategy.upper()]
        self.replicator = replication.MultiMasterReplicator(
            self.node_id, crdt_resolver.ConflictResolver(strategy),
            storage_path=self.data_dir / "replication", transport=self.transport,
            fsync=s.fsync, anti_entropy_interval=s.mesh.sync_interval_seconds,
            tombstone_grace=s.replication.tombstone_grace_seconds,
            max_clock_offset=s.replication.max_clock_offset_ms / 1000)
        self.mesh = mesh.GossipMesh(
            self.node_id,
            mesh.MeshConfig(fanout=s.mesh.fanout, gossip_interval_ms=s.mesh.gossip_interval_ms,
                            sync_interval_seconds=s.mesh.sync_interval_seconds,
                            message_buffer_size=s.mesh.message_buffer_size,
                            probe_interval_ms=s.mesh.probe_interval_ms,
                            probe_timeout_ms=s.mesh.probe_timeout_ms),
            storage_path=self.data_dir / "mesh", transport=self.transport,
            advertise_address=s.peer_address)
        self.discovery = discovery.NodeDiscovery(
            self.node_id, _discovery_config(s), advertise_address=s.peer_address,
            storage_path=self.data_dir / "discovery", transport=self.transport,
            peer_domain=s.peer_domain)

        self._tasks: list[asyncio.Task[None]] = []
        self.membership = membership.Membership(
            s, self.raft, self.transport, self.mesh, self.replicator, self.discovery,
            self.coordinator, self.state, self._spawn)
        self.metrics = metrics.NodeMetrics(lambda: self.view.stats_sources(),
                                           lambda: self.view.named_metrics())
        self.clock = duties.ClockWatch(self.mesh, self.replicator,
                                       s.replication.max_clock_offset_ms / 1000)
        self.concepts = concepts.ConceptService(self.raft, self.state.concepts, self.replicator,
                                                self.metrics.observe_write, self.clock.unfit)
        self.replicator.register_change_callback(self.concepts.on_replicated_change)
        self.certificates = duties.Certificates(tls_files, self.transport)
        self.load = duties.LoadReporter(self.mesh, self.coordinator, self.concepts,
                                        lambda: self.raft.loop_lag_ms)
        self.backup = backup_source.BackupSource(
            self.node_id, s.cluster_name, self.raft, self.state, self.replicator,
            self.membership, self.transport)
        self.view = status.NodeView(s, self.raft, self.membership, self.state, self.replicator,
                                    self.mesh, self.coordinator, self.discovery, self.transport,
                                    self.load, self.certificates, self.backup)
        self.server = server.NodeServer(
            self.transport,
            api.Services(self.node_id, self.concepts, self.membership, self.coordinator,
                         self.backup, self.view.status, self.metrics,
                         is_revoked=self.transport.is_revoked,
                         read_timeout=s.http_read_timeout_seconds),
            probes.app(self.node_id, self.membership.is_ready,
                       lambda: self.membership.formation_state, self.metrics.render,
                       self._not_live),
            fast_path=s.api_fast_path)

    def _not_live(self) -> str | None:
        """Why this node fails its liveness check, if it does (see ``probes``)."""
        raft = self.raft
        if raft.failed is not None:
            return f"raft stopped after an internal failure: {raft.failed}"
        stalled = raft.seconds_since_progress()
        if stalled > probes.STALL_SECONDS:
            return f"the raft loop has not run for {stalled:.0f} s"
        limit = self.settings.liveness_leaderless_seconds
        leaderless = raft.leaderless_seconds()
        if limit and self.membership.formation_state == "member" and leaderless > limit:
            return f"a member without a leader for {leaderless:.0f} s (limit {limit:g} s)"
        return None

    async def _replicate(self, command: dict[str, Any]) -> Any:
        """The coordinator's registry changes go through Raft; it gets the apply result."""
        return (await self.raft.propose(command)).result

    # -- lifecycle -------------------------------------------------------------------------

    async def start(self) -> None:
        s = self.settings
        # Concept data is for this node's user alone (files 0600 through the store).
        self.data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        self.data_dir.chmod(0o700)
        await self.transport.start()
        await self.server.start(self.settings.bind_address, self.settings.health_address)
        await self.coordinator.start()
        await self.replicator.start()
        await self.mesh.start()
        await self.discovery.start()
        await self.membership.start()
        for duty, name in ((self.load.report, "load"), (self.certificates.watch, "certs"),
                           (lambda: duties.sync_registry_with_raft(self.raft, self.coordinator),
                            "leader"),
                           (lambda: duties.name_the_cluster(self.raft, self.state,
                                                            s.cluster_name), "cluster-id")):
            self._spawn(duty, name)
        log.info("node %s: peers and API on %s (mTLS), health on %s", self.node_id,
                 self.settings.bind_address, self.settings.health_address)

    def _spawn(self, fn: Callable[[], Awaitable[None]], name: str) -> None:
        async def guarded() -> None:
            try:
                await fn()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("node task %s failed", name)

        self._tasks.append(asyncio.create_task(guarded(), name=f"node:{name}"))

    async def stop(self) -> None:
        """Graceful: hand leadership over, leave the mesh, then stop and flush everything."""
        if self.raft.is_leader and len(self.raft.members()) > 1:
            try:
                # Once we have stepped down the chosen voter is campaigning; waiting for
                # it to win would only delay our exit (and it may be stopping too).
                chosen = await self.raft.transfer_leadership(timeout=HANDOVER_SECONDS,
                                                             wait_for_successor=False)
                log.info("leadership handed over to %s", chosen)
            except Exception as exc:
                log.warning("leadership transfer on shutdown failed: %s", exc)
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self.mesh.leave(), LEAVE_SECONDS)
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await self.load.stop()
        await self.server.stop()
        await self.raft.stop()
        await self.discovery.stop()
        await self.mesh.stop()
        await self.coordinator.stop()
        await self.replicator.stop()
        await self.transport.stop()
        log.info("node %s stopped", self.node_id)

    async def run_until_signal(self) -> None:
        loop = asyncio.get_running_loop()
        stop = asyncio.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await self.start()
        # What start-up built lives as long as the process: out of the collector's sight, so
        # its full collections walk only what came since.
        gc.collect()
        gc.freeze()
        await stop.wait()
        log.info("node %s shutting down", self.node_id)
        await self.stop()


def _discovery_config(s: config.NodeSettings) -> discovery.DiscoveryConfig:
    methods = {discovery.DiscoveryMethod.GOSSIP}
    if s.initial_members:
        methods.add(discovery.DiscoveryMethod.STATIC)
    if s.bootstrap:
        methods.add(discovery.DiscoveryMethod.BOOTSTRAP)
    if s.discovery_srv:
        methods.add(discovery.DiscoveryMethod.DNS)
    if s.mdns:
        methods.add(discovery.DiscoveryMethod.MDNS)
    return discovery.DiscoveryConfig(
        enabled_methods=methods,
        dns_domain=s.discovery_srv,
        bootstrap_nodes=list(s.bootstrap),
        discovery_interval_seconds=30.0,
        dns_nameservers=list(s.dns_nameservers) or None,
        static_nodes={k: v for k, v in s.initial_members.items() if k != s.node_id},
        cluster_name=s.cluster_name,
        formation_mode=s.formation_mode,
        formation_stable_seconds=s.formation_stable_seconds,
        formation_min_nodes=s.bootstrap_expect or 1,
    )
