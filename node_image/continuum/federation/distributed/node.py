"""FederationNode: one process of the federation, wiring the five components.

One mutual-TLS listener serves the peer protocol of every component and the
HTTP API (``api.py``); a plain listener serves ``/healthz``, ``/readyz`` and
``/metrics`` (``health.py``). Data flows as the design says:

* discovery finds and verifies peers and hands them to the gossip mesh;
* the mesh says who is alive: the replicator pushes to those peers, and
  every node gossips its own load, which every node's coordinator takes as
  that node's heartbeat (so ``select_node`` is load-aware on any node);
* Raft carries strong writes, membership and the coordinator's registry;
  its committed commands drive ``statemachine.FederationStateMachine``;
* the leader's coordinator keeps every Raft member registered and probes them.

Cluster formation: with ``initial_members`` every listed node starts with
the same configuration (the local cluster). Otherwise discovery decides:
resume from durable Raft state, bootstrap a one-node cluster (the founder),
or join through a member (``node.join``), never two clusters.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import shutil
import signal
import time
import uuid
from collections.abc import Awaitable, Callable
from importlib import metadata
from pathlib import Path
from typing import Any

from aiohttp import web

from . import (
    api,
    config,
    consensus,
    coordinator,
    discovery,
    health,
    mesh,
    metrics,
    pki,
    replication,
    statemachine,
)
from .backup import source as backup_source
from .core import formation
from .core import load as loadmod
from .core.crdt import resolver as crdt_resolver
from .transport import peer, tls

log = logging.getLogger(__name__)

JOIN_KIND = "node.join"
INFO_KIND = "node.info"
LOAD_REPORT_SECONDS = 1.0
LOAD_STATE_KEY = "load"  # mesh state: the node's coordinator heartbeat figures
LEADER_DUTY_SECONDS = 1.0
CERT_CHECK_SECONDS = 10.0
STRONG_TIMEOUT_SECONDS = 10.0
FORMATION_POLL_SECONDS = 0.5
REMOVED_CHECK_SECONDS = 2.0
# In-flight requests get this long to finish on shutdown, then are cancelled: one waiting
# on a quorum that is shutting down too must not hold the process past its grace period.
REQUEST_GRACE_SECONDS = 2.0
DEPARTED_CHECK_SECONDS = 1.0


def _version() -> str:
    try:
        return metadata.version("continuum-federation")
    except metadata.PackageNotFoundError:
        return "0+unknown"


class FederationNode:
    def __init__(self, settings: config.NodeSettings) -> None:
        self.settings = settings
        self.node_id = settings.node_id
        self.tls_files = tls.TLSFiles.from_dir(settings.tls_dir)
        self.data_dir = settings.data_dir
        self.transport = peer.PeerTransport(self.node_id, None, self.tls_files,
                                            peer_domain=settings.peer_domain)
        self.transport.on(JOIN_KIND, self._on_join)
        self.transport.on(INFO_KIND, self._on_info)
        self.coordinator = coordinator.FederationCoordinator(
            self.node_id,
            load_balance=coordinator.LoadBalance(
                algorithm=settings.load_balance.algorithm,
                health_check_interval=settings.load_balance.health_check_interval,
                unhealthy_threshold=settings.load_balance.unhealthy_threshold),
            transport=self.transport,
            replicate=self._replicate,
            is_active=lambda: self.raft is not None and self.raft.is_leader,
        )
        self.state = statemachine.FederationStateMachine(
            self.coordinator.apply_command, self.coordinator.snapshot, self.coordinator.restore)
        strategy_name = settings.replication.conflict_strategy.upper()
        strategy = crdt_resolver.ConflictResolutionStrategy[strategy_name]
        self.replicator = replication.MultiMasterReplicator(
            self.node_id, crdt_resolver.ConflictResolver(strategy),
            storage_path=self.data_dir / "replication", transport=self.transport,
            fsync=settings.fsync,
            anti_entropy_interval=settings.mesh.sync_interval_seconds,
            tombstone_grace=settings.replication.tombstone_grace_seconds)
        self.mesh = mesh.GossipMesh(
            self.node_id,
            mesh.MeshConfig(fanout=settings.mesh.fanout,
                            gossip_interval_ms=settings.mesh.gossip_interval_ms,
                            sync_interval_seconds=settings.mesh.sync_interval_seconds,
                            message_buffer_size=settings.mesh.message_buffer_size),
            storage_path=self.data_dir / "mesh", transport=self.transport,
            advertise_address=settings.peer_address,
        )
        self.discovery = discovery.NodeDiscovery(
            self.node_id, self._discovery_config(), advertise_address=settings.peer_address,
            storage_path=self.data_dir / "discovery", transport=self.transport,
            peer_domain=settings.peer_domain)
        self.raft: consensus.RaftConsensus | None = None
        self.started_at = time.monotonic()
        self.formation_state = "starting"
        self._runners: list[web.AppRunner] = []
        self._tasks: list[asyncio.Task[None]] = []
        self._in_flight = 0
        self._latency_ms: float | None = None
        self._loop_lag_ms = 0.0
        self._cert_mtime: tuple[float, float, float] | None = None
        self._heartbeats: set[asyncio.Task[None]] = set()
        self._not_after = pki.not_after(Path(self.tls_files.cert).read_bytes())
        # What the loaded TLS files are, for the operator's two-phase CA rotation: it re-issues
        # leaves from a new CA only once every node trusts it, and retires the old CA only
        # once every node serves a leaf of the new one.
        self._trusted_ca_sha256 = tls.file_fingerprints(self.tls_files.ca)
        self._cert_sha256 = tls.file_fingerprints(self.tls_files.cert)[0]
        self.metrics = metrics.NodeMetrics(self._stats_sources, self._named_metrics)
        # Backup hook: serves POST /v1/backup (api.py) and the leader's ReadIndex for it.
        self.backup = backup_source.BackupSource(self)

    # -- configuration ---------------------------------------------------------------------

    def _discovery_config(self) -> discovery.DiscoveryConfig:
        s = self.settings
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
            static_nodes={k: v for k, v in s.initial_members.items() if k != self.node_id},
            cluster_name=s.cluster_name,
            formation_mode=s.formation_mode,
            formation_stable_seconds=s.formation_stable_seconds,
            formation_min_nodes=s.bootstrap_expect or 1,
        )

    def _raft(self, *, cluster_nodes: list[str], join: bool) -> consensus.RaftConsensus:
        s = self.settings
        raft = consensus.RaftConsensus(
            self.node_id, cluster_nodes,
            election_timeout_ms=s.raft.election_timeout_ms,
            heartbeat_interval_ms=s.raft.heartbeat_interval_ms,
            peers={k: v for k, v in s.initial_members.items() if k != self.node_id},
            storage_path=self.data_dir / "raft", transport=self.transport, join=join,
            fsync=s.fsync, advertise_address=s.peer_address,
        )
        raft.register_apply_callback(self.state.apply)
        raft.register_snapshot_callbacks(self.state.snapshot, self.state.restore)
        return raft

    # -- lifecycle -------------------------------------------------------------------------

    async def start(self) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        await self.transport.start()
        app = web.Application(client_max_size=self.transport.limits.max_frame_bytes)
        self.transport.mount(app)
        api.mount(app, self)
        await self._listen(app, self.settings.bind_address, self.transport.server_ssl_context)
        await self._listen(health.app(self), self.settings.health_address, None)
        self.discovery.register_listener(self._on_discovered)
        self.mesh.register_membership_callback(self._on_membership)
        self.mesh.register_state_update_callback(self._on_mesh_state)
        self.replicator.register_change_callback(self._on_replicated_change)
        await self.coordinator.start()
        await self.replicator.start()
        await self.mesh.start()
        await self.discovery.start()
        for pid, addr in self.settings.initial_members.items():
            if pid != self.node_id:
                await self.mesh.add_peer(pid, addr)
                self.replicator.add_peer(pid, addr)
        if self.settings.initial_members:
            await self._start_raft(cluster_nodes=sorted(self.settings.initial_members),
                                   join=False)
        elif self._has_raft_state():
            await self._start_raft(cluster_nodes=[], join=True, resume=True)
        else:
            self._spawn(self._form, "formation")
        if not self.settings.initial_members:
            # Not only after a restart: a survivor left out of a forced new cluster runs on.
            self._spawn(self._rejoin_if_removed, "removed-check")
        for loop_fn, name in ((self._report_load, "load"), (self._leader_duties, "leader"),
                              (self._watch_certificates, "certs"), (self._measure_lag, "lag"),
                              (self._watch_departed_replicas, "departed")):
            self._spawn(loop_fn, name)
        log.info("node %s: peers and API on %s (mTLS), health on %s", self.node_id,
                 self.settings.bind_address, self.settings.health_address)

    async def _listen(self, app: web.Application, address: str, ssl_ctx: Any) -> None:
        runner = web.AppRunner(app, access_log=None, handle_signals=False,
                               shutdown_timeout=REQUEST_GRACE_SECONDS)
        await runner.setup()
        host, port = peer.split_address(address)
        await web.TCPSite(runner, host, port, ssl_context=ssl_ctx, reuse_address=True).start()
        self._runners.append(runner)

    def _spawn(self, fn: Callable[[], Awaitable[None]], name: str) -> None:
        async def guarded() -> None:
            try:
                await fn()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("node task %s failed", name)

        self._tasks.append(asyncio.create_task(guarded(), name=f"node:{name}"))

    async def _start_raft(self, *, cluster_nodes: list[str], join: bool,
                          resume: bool = False) -> None:
        self.raft = self._raft(cluster_nodes=cluster_nodes, join=join)
        await self.raft.start()
        if join and not resume:
            self.formation_state = "joining"
        else:
            self._became_member()

    def _became_member(self) -> None:
        self.formation_state = "member"
        self.discovery.set_formed(True)

    async def stop(self) -> None:
        """Graceful: hand leadership over, leave the mesh, then stop and flush everything."""
        raft = self.raft
        if raft is not None and raft.is_leader and len(raft.members()) > 1:
            try:
                # Once we have stepped down the chosen voter is campaigning; waiting for
                # it to win would only delay our exit (and it may be stopping too).
                chosen = await raft.transfer_leadership(timeout=5.0, wait_for_successor=False)
                log.info("leadership handed over to %s", chosen)
            except TimeoutError:
                log.warning("leadership transfer on shutdown timed out after 5 s")
            except Exception as exc:
                log.warning("leadership transfer on shutdown failed: %s", exc)
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self.mesh.leave(), 3.0)
        for task in [*self._tasks, *self._heartbeats]:
            task.cancel()
        for task in [*self._tasks, *self._heartbeats]:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        for runner in reversed(self._runners):
            await runner.cleanup()
        if raft is not None:
            await raft.stop()
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
        await stop.wait()
        log.info("node %s shutting down", self.node_id)
        await self.stop()

    # -- formation -------------------------------------------------------------------------

    def _has_raft_state(self) -> bool:
        return (self.data_dir / "raft" / "raft.db").exists()

    async def _form(self) -> None:
        while self.formation_state != "member":
            await self.discovery.discover_now()
            decision = self.discovery.formation_decision()
            self.formation_state = type(decision).__name__.lower() + ": " + getattr(
                decision, "reason", "")
            if isinstance(decision, formation.Bootstrap) and self.raft is None:
                log.info("bootstrapping a new cluster: %s", decision.reason)
                await self._start_raft(cluster_nodes=[self.node_id], join=False)
                return
            if isinstance(decision, formation.Join) and await self._join(decision.targets):
                return
            await asyncio.sleep(FORMATION_POLL_SECONDS)

    async def _join(self, targets: tuple[str, ...]) -> bool:
        """Ask members to add us; follows redirects to the leader. True once added."""
        if self.raft is None:
            await self._start_raft(cluster_nodes=[], join=True)
        body = {"id": self.node_id, "address": self.settings.peer_address}
        queue = list(targets)
        seen: set[str] = set()
        while queue:
            address = queue.pop(0)
            if address in seen:
                continue
            seen.add(address)
            try:
                # A joining node has no configuration yet: learn who leads, and where, so
                # Raft can answer the leader's first append before the config reaches us.
                info = await self.transport.request(address, INFO_KIND, {}, timeout=5.0)
                self._learn_address(info.get("node_id"), address)
                self._learn_address(info.get("leader_id"), info.get("leader_address"))
                reply = await self.transport.request(address, JOIN_KIND, body, timeout=90.0)
            except peer.PeerError as exc:
                log.info("join through %s failed: %s", address, exc)
                continue
            if reply.get("ok"):
                log.info("joined the cluster through %s", address)
                self._became_member()
                return True
            leader = reply.get("leader_address")
            if isinstance(leader, str) and leader not in seen:
                queue.insert(0, leader)
        return False

    async def _on_join(self, sender: str, body: dict[str, Any]) -> dict[str, Any]:
        """``node.join`` from a node (its certificate proves ``sender``): add it if we lead."""
        raft = self.raft
        address = body.get("address")
        if body.get("id") != sender or not isinstance(address, str):
            raise ValueError("a node may only ask to join as itself, with an address")
        peer.split_address(address)
        if raft is None or not raft.is_leader:
            return {"ok": False, "leader_id": raft.leader_id if raft else None,
                    "leader_address": raft.leader_address() if raft else None}
        await self.add_member(sender, address)
        return {"ok": True}

    async def _rejoin_if_removed(self) -> None:
        """A node whose member was removed (scale-down, then the PVC came back; or a survivor
        left out of a forced new cluster) hears from no leader. When the current leader
        itself says we are not a member, discard our Raft state and join as a new member."""
        quiet_since: float | None = None
        while True:
            await asyncio.sleep(REMOVED_CHECK_SECONDS)
            raft = self.raft
            if raft is None or raft.leader_id is not None or self.formation_state != "member":
                quiet_since = None
                continue
            now = time.monotonic()
            quiet_since = quiet_since or now
            if now - quiet_since < REMOVED_CHECK_SECONDS * 2:
                continue
            for found in await self.discovery.get_nodes(verified_only=True):
                try:
                    info = await self.transport.request(found.address, INFO_KIND, {},
                                                        timeout=3.0)
                except peer.PeerError:
                    continue
                leader_says = info.get("leader_id") == info.get("node_id")
                if leader_says and self.node_id not in info.get("members", [self.node_id]):
                    log.warning("the leader %s says we are no longer a member: discarding "
                                "our Raft state and joining as new", info.get("node_id"))
                    await raft.stop()
                    self.raft = None
                    wipe_removed_member(self.data_dir)
                    # Our applied state may hold entries the new cluster never committed
                    # (a survivor left out of a forced new cluster): it is replayed from empty.
                    self.state.reset()
                    self.formation_state = "joining"
                    self.discovery.set_formed(False)
                    self._spawn(self._form, "formation")
                    quiet_since = None  # watch again once the new membership is in place
                    break

    def _on_info(self, sender: str, body: dict[str, Any]) -> dict[str, Any]:
        raft = self.raft
        return {"node_id": self.node_id, "leader_id": raft.leader_id if raft else None,
                "leader_address": raft.leader_address() if raft else None,
                "members": [m["id"] for m in raft.members()] if raft else []}

    def _learn_address(self, node_id: Any, address: Any) -> None:
        """Tell Raft where a node listens (it also learns addresses from config entries)."""
        if (self.raft is not None and isinstance(node_id, str) and isinstance(address, str)
                and node_id != self.node_id):
            self.raft.peers.setdefault(node_id, address)

    # -- membership --------------------------------------------------------------------------

    def require_leader(self) -> consensus.RaftConsensus:
        raft = self.raft
        if raft is None or not raft.is_leader:
            raise api.NotLeader(raft.leader_id if raft else None,
                                raft.leader_address() if raft else None)
        return raft

    async def add_member(self, node_id: str, address: str, timeout: float = 60.0) -> None:
        """Idempotent and resumable (see ``RaftConsensus.add_member``)."""
        raft = self.require_leader()
        if any(m["id"] == node_id and m["voter"] for m in raft.members()):
            return
        await raft.add_member(node_id, address, timeout=timeout)
        await self.mesh.add_peer(node_id, address)
        self.replicator.add_peer(node_id, address)

    async def remove_member(self, node_id: str) -> None:
        raft = self.require_leader()
        if node_id == self.node_id:
            await raft.transfer_leadership()
            raise api.NotLeader(raft.leader_id, raft.leader_address())
        await self.require_leader().remove_member(node_id)
        with contextlib.suppress(Exception):
            await self.coordinator.deregister_node(node_id)

    async def force_new_cluster(self) -> dict[str, Any]:
        """Quorum is lost for good: this node becomes the sole voter (see
        ``RaftConsensus.force_new_cluster``); the others are added back as new members."""
        raft = self.raft
        if raft is None:
            raise consensus.MembershipError("no_raft_state", "this node has no Raft state")
        r = await raft.force_new_cluster()
        self._became_member()
        lost = sorted(r.old_config.members - {self.node_id})
        return {"id": self.node_id, "leader_id": raft.leader_id, "term": raft.get_stats()[
            "current_term"], "kept_through_index": r.truncated_after,
            "discarded_entries": r.discarded, "former_members": lost}

    async def transfer_leadership(self, target: str | None) -> str:
        return await self.require_leader().transfer_leadership(target)

    async def _replicate(self, command: dict[str, Any]) -> bool:
        raft = self.raft
        if raft is None:
            return False
        return await raft.append_entry(command)

    # -- peers: discovery -> mesh -> replication ---------------------------------------------

    async def _on_discovered(self, event: str, found: discovery.DiscoveredNode) -> None:
        if not found.node_id or found.node_id == self.node_id:
            return
        if event == "up":
            await self.mesh.add_peer(found.node_id, found.address)
        else:
            await self.mesh.remove_peer(found.node_id)

    async def _on_membership(self, node_id: str, status: str, address: str | None) -> None:
        if node_id == self.node_id:
            return
        if status == "alive" and address:
            self.replicator.add_peer(node_id, address)
            self._learn_address(node_id, address)
            # Discovery verifies it like any hint, and its cache then covers it.
            with contextlib.suppress(ValueError):  # an address we cannot dial
                await self.discovery.register_node(node_id, address)
        elif status in ("dead", "left"):
            self.replicator.remove_peer(node_id)
            self._forget_departed_replicas()
            if status == "left":  # gone on purpose: a restarted node should not dial it
                await self.discovery.remove_node(node_id)

    def _forget_departed_replicas(self) -> None:
        """Stop holding tombstones for replicas that left for good (a scale-down).

        A replica departed when it is neither in the Raft configuration nor
        reachable in the mesh. Either alone is not enough: every graceful
        restart leaves the mesh, and a member removed from Raft keeps
        replicating until its process stops. Judged only by a member that
        follows a leader, so the configuration is current.
        """
        raft = self.raft
        if raft is None or raft.leader_id is None or self.formation_state != "member":
            return
        members = {m["id"] for m in raft.members()}
        if self.node_id not in members:
            return  # we were removed ourselves: our view says nothing about the others
        departed = self.replicator.known_replicas - members - set(self.mesh.alive_peers())
        for node_id in sorted(departed):
            log.info("replica %s left the cluster: tombstones no longer wait for it", node_id)
            self.replicator.forget_replica(node_id)

    async def _watch_departed_replicas(self) -> None:
        """Raft reports no configuration changes as events, so check now and then."""
        while True:
            await asyncio.sleep(DEPARTED_CHECK_SECONDS)
            self._forget_departed_replicas()

    # -- background duties -------------------------------------------------------------------

    def load_inputs(self) -> loadmod.LoadInputs:
        return loadmod.LoadInputs(self._in_flight, self._loop_lag_ms, self._latency_ms or 0.0,
                                  self.replicator.get_stats().get("keys_stored", 0)
                                  + len(self.state.concepts))

    async def _report_load(self) -> None:
        """Gossip our load; every node's coordinator hears it (``_on_mesh_state``)."""
        while True:
            await self.mesh.update_state(LOAD_STATE_KEY, loadmod.heartbeat(self.load_inputs()))
            await asyncio.sleep(LOAD_REPORT_SECONDS)

    def _on_mesh_state(self, node_id: str, key: str, value: Any) -> None:
        """A node's load arrived through the mesh (ours too): our coordinator's heartbeat."""
        if key != LOAD_STATE_KEY:
            return

        async def beat() -> None:
            try:
                await self.coordinator.heartbeat(node_id, value)
            except coordinator.UnknownNodeError:
                pass  # not registered here yet: its next report counts
            except ValueError as exc:
                log.debug("ignoring a malformed load report from %s: %s", node_id, exc)
            except coordinator.CoordinatorError as exc:
                log.debug("heartbeat of %s not recorded: %s", node_id, exc)

        # A first heartbeat may propose a status change through Raft: off the mesh's
        # callback queue, so membership events are not held up behind a commit.
        task = asyncio.get_running_loop().create_task(beat())
        self._heartbeats.add(task)
        task.add_done_callback(self._heartbeats.discard)

    async def _leader_duties(self) -> None:
        """On the leader: keep the coordinator's registry equal to Raft's membership."""
        while True:
            raft = self.raft
            if raft is not None and raft.is_leader and self.state.identity is None:
                # Backup hook: a cluster id, so a restore can tell clusters apart. Retried
                # each round until applied; should two land, the first applied wins.
                with contextlib.suppress(consensus.OverloadedError):
                    await raft.append_entry(statemachine.identity_command(
                        self.settings.cluster_name, uuid.uuid4().hex),
                        timeout=LEADER_DUTY_SECONDS)
            if raft is not None and raft.is_leader:
                members = {m["id"]: m["address"] for m in raft.members() if m["address"]}
                registered = {n.node_id: n.address for n in await self.coordinator.get_all_nodes()}
                try:
                    for nid, addr in members.items():
                        if registered.get(nid) != addr:
                            await self.coordinator.register_node(nid, addr, {"raft": True})
                    for nid in set(registered) - set(members):
                        await self.coordinator.deregister_node(nid)
                except coordinator.CoordinatorError as exc:
                    log.debug("registry sync deferred: %s", exc)
            await asyncio.sleep(LEADER_DUTY_SECONDS)

    async def _watch_certificates(self) -> None:
        """Reload rotated certificates (cert-manager renews the Secret in place)."""
        while True:
            try:
                mtime = self.tls_files.mtime()
                if self._cert_mtime is not None and mtime != self._cert_mtime:
                    self.transport.reload_tls()
                    self._not_after = pki.not_after(self._read_cert())
                    self._trusted_ca_sha256 = tls.file_fingerprints(self.tls_files.ca)
                    self._cert_sha256 = tls.file_fingerprints(self.tls_files.cert)[0]
                    log.info("reloaded rotated TLS certificates (valid until %s)",
                             self._not_after.isoformat())
                self._cert_mtime = mtime
            except (OSError, ValueError, tls.TLSConfigError) as exc:
                log.warning("certificate reload failed, keeping the old ones: %s", exc)
            await asyncio.sleep(CERT_CHECK_SECONDS)

    def _read_cert(self) -> bytes:
        return Path(self.tls_files.cert).read_bytes()

    async def _measure_lag(self) -> None:
        """How late the event loop wakes us: the local-health signal for load reports."""
        interval = 0.25
        while True:
            start = time.monotonic()
            await asyncio.sleep(interval)
            lag = max(0.0, (time.monotonic() - start - interval) * 1000)
            self._loop_lag_ms = loadmod.ewma(self._loop_lag_ms, lag)

    # -- concepts ------------------------------------------------------------------------------

    # One id, one consistency domain: an id in the strong store is strong; else, if the
    # multi-master store holds it live, it is eventual; else it is free. Writes and deletes
    # that name the other domain are refused (409) and change nothing. When the first writes
    # of both kinds race on different nodes, both stores end up holding the id; the strong
    # store wins on every node, and the leader retires the multi-master copy (a tombstone).

    async def _live_eventual(self, concept_id: str) -> bool:
        rv = await self.replicator.read_value(concept_id)
        return rv is not None and not rv.deleted

    async def _retire_shadow(self, concept_id: str) -> None:
        """On the leader: tombstone a multi-master copy of an id the strong store owns."""
        raft = self.raft
        if (raft is not None and raft.is_leader and concept_id in self.state.concepts
                and await self._live_eventual(concept_id)):
            log.info("concept %s was written both ways at once: the strong value wins",
                     concept_id)
            await self.replicator.delete(concept_id)

    def _on_replicated_change(self, concept_id: str, value: Any) -> Awaitable[None] | None:
        if concept_id in self.state.concepts:
            return self._retire_shadow(concept_id)
        return None

    async def put_eventual(self, concept_id: str, value: Any) -> dict[str, Any]:
        if concept_id in self.state.concepts:
            raise api.WrongConsistency(concept_id, "strong")
        start = time.perf_counter()
        self._in_flight += 1
        try:
            rv = await self.replicator.write(concept_id, value)
        except replication.ReplicationError as exc:
            raise ValueError(str(exc)) from None
        finally:
            self._in_flight -= 1
            self._observe_write("eventual", start)
        return {"id": concept_id, "consistency": "eventual", "node_id": rv.node_id,
                "version": rv.version.to_dict(), "checksum": rv.checksum}

    async def put_strong(self, concept_id: str, value: Any, request_id: str) -> dict[str, Any]:
        self.require_leader()
        if concept_id not in self.state.concepts and await self._live_eventual(concept_id):
            raise api.WrongConsistency(concept_id, "eventual")
        command = {"type": "concept.put", "id": concept_id, "value": value}
        await self._commit(command, request_id)
        await self._retire_shadow(concept_id)
        return {"id": concept_id, "consistency": "strong",
                "commit_index": self.require_leader().get_stats()["commit_index"]}

    async def delete_strong(self, concept_id: str, request_id: str) -> bool:
        raft = self.require_leader()
        await raft.read_index()
        if concept_id not in self.state.concepts:
            if await self._live_eventual(concept_id):
                raise api.WrongConsistency(concept_id, "eventual")
            return False
        await self._retire_shadow(concept_id)  # so the id does not come back as eventual
        await self._commit({"type": "concept.delete", "id": concept_id}, request_id)
        return True

    async def _commit(self, command: dict[str, Any], request_id: str) -> None:
        raft = self.require_leader()
        start = time.perf_counter()
        self._in_flight += 1
        try:
            ok = await raft.append_entry(command, request_id=request_id or uuid.uuid4().hex,
                                         timeout=STRONG_TIMEOUT_SECONDS)
        finally:
            self._in_flight -= 1
            self._observe_write("strong", start)
        if not ok:
            if not raft.is_leader:
                raise api.NotLeader(raft.leader_id, raft.leader_address())
            raise TimeoutError("commit outcome unknown")

    async def delete_eventual(self, concept_id: str) -> bool:
        if concept_id in self.state.concepts:
            raise api.WrongConsistency(concept_id, "strong")
        return await self.replicator.delete(concept_id)

    async def get_concept(self, concept_id: str, *, strong: bool) -> dict[str, Any] | None:
        if strong:
            await self.require_leader().read_index()
        if concept_id in self.state.concepts:
            return {"id": concept_id, "value": self.state.concepts.get(concept_id),
                    "consistency": "strong"}
        rv = await self.replicator.read_value(concept_id)
        if rv is None or rv.deleted:
            return None
        if strong:
            raise api.WrongConsistency(concept_id, "eventual")
        value = await self.replicator.read(concept_id)
        if value is None:
            return None
        return {"id": concept_id, "value": value, "consistency": "eventual",
                "node_id": rv.node_id, "version": rv.version.to_dict(), "checksum": rv.checksum}

    def list_concepts(self, after: str | None, limit: int) -> list[str]:
        merged = set(self.state.concepts.ids(after, limit)) | set(
            self.replicator.keys(after, limit))
        return sorted(merged)[:limit]

    def _observe_write(self, consistency: str, start: float) -> None:
        seconds = time.perf_counter() - start
        self.metrics.observe_write(consistency, seconds)
        self._latency_ms = loadmod.ewma(self._latency_ms, seconds * 1000)

    # -- views ---------------------------------------------------------------------------------

    def is_ready(self) -> bool:
        raft = self.raft
        if raft is None or raft.leader_id is None:
            return False
        return any(m["id"] == self.node_id for m in raft.members())

    def members(self) -> list[dict[str, Any]]:
        raft = self.raft
        if raft is None:
            return []
        alive = {m["id"]: m["status"] for m in self.mesh.members()}
        out = []
        for m in raft.members():
            healthy = m["id"] == self.node_id or alive.get(m["id"]) == "alive"
            out.append({**m, "healthy": healthy})
        return out

    def status(self) -> dict[str, Any]:
        raft = self.raft
        rstats = raft.get_stats() if raft is not None else {}
        return {
            "node_id": self.node_id,
            "cluster": self.settings.cluster_name,
            "cluster_id": self.state.identity["id"] if self.state.identity else None,
            "address": self.settings.peer_address,
            "role": raft.role() if raft is not None else "none",
            "term": rstats.get("current_term", 0),
            "leader_id": rstats.get("leader_id"),
            "leader_address": rstats.get("leader_address"),
            "commit_index": rstats.get("commit_index", 0),
            "last_applied": rstats.get("last_applied", 0),
            "ready": self.is_ready(),
            "formation": self.formation_state,
            "members": self.members(),
            "membership_committed": raft is not None and raft.membership_committed(),
            "strong_concepts": len(self.state.concepts),
            "raft": rstats,
            "replication": self.replicator.get_stats(),
            "mesh": self.mesh.get_stats(),
            "coordinator": self.coordinator.get_stats(),
            "discovery": self.discovery.get_stats(),
            "transport": dict(self.transport.stats),
            "load": loadmod.heartbeat(self.load_inputs()),
            "version": _version(),
            "certificate_not_after": self._not_after.isoformat(),
            "certificate_sha256": self._cert_sha256,
            "trusted_ca_sha256": list(self._trusted_ca_sha256),
            "uptime_seconds": round(time.monotonic() - self.started_at, 3),
        }

    def _stats_sources(self) -> dict[str, dict[str, Any]]:
        sources = {
            "backup": dict(self.backup.stats),
            "replication": self.replicator.get_stats(),
            "mesh": self.mesh.get_stats(),
            "coordinator": self.coordinator.get_stats(),
            "discovery": self.discovery.get_stats(),
            "transport": dict(self.transport.stats),
        }
        if self.raft is not None:
            sources["raft"] = self.raft.get_stats()
        return sources

    def _named_metrics(self) -> list[tuple[str, str, dict[str, str], float]]:
        raft = self.raft
        stats = raft.get_stats() if raft is not None else {}
        node = {"node": self.node_id}
        out: list[tuple[str, str, dict[str, str], float]] = [
            ("continuum_raft_term", "Current Raft term", node,
             float(stats.get("current_term", 0))),
            ("continuum_raft_commit_index", "Raft commit index", node,
             float(stats.get("commit_index", 0))),
            ("continuum_raft_applied_index", "Last applied Raft index", node,
             float(stats.get("last_applied", 0))),
            ("continuum_raft_is_leader", "1 on the Raft leader", node,
             1.0 if raft is not None and raft.is_leader else 0.0),
            ("continuum_node_ready", "1 when the node is ready", node,
             1.0 if self.is_ready() else 0.0),
            ("continuum_replication_keys", "Concepts in the multi-master store", node,
             float(self.replicator.get_stats().get("keys_stored", 0))),
            ("continuum_load_score", "This node's load score", node,
             float(loadmod.load_score(self.load_inputs()))),
            ("continuum_certificate_expiry_seconds", "Seconds until the node certificate expires",
             node, self._not_after.timestamp() - time.time()),
        ]
        for m in self.members():
            out.append(("continuum_member_healthy", "1 when a member is alive in the mesh",
                        {"node": self.node_id, "member": m["id"]}, 1.0 if m["healthy"] else 0.0))
        lag = self.replicator.get_stats().get("replication_lag_seconds")
        if isinstance(lag, int | float):
            out.append(("continuum_replication_lag_seconds",
                        "Age of the last replicated write when it arrived here", node, float(lag)))
        return out


def wipe_removed_member(data_dir: Path) -> None:
    """Discard Raft state of a member the cluster removed, so the node joins as new."""
    raft_dir = data_dir / "raft"
    if raft_dir.exists():
        shutil.rmtree(raft_dir)
