"""Membership: how a node becomes, stays and stops being a member of one cluster.

* **formation**: with ``initial_members`` every listed node starts with the same
  configuration (the local cluster). Otherwise discovery decides: resume from
  durable Raft state, bootstrap a one-node cluster (the founder), or join
  through a member (``node.join``), never two clusters;
* **rejoin**: a node whose member was removed (a scale-down whose volume came
  back, or a survivor left out of a forced new cluster) hears from no leader;
  when the current leader says it is not a member, it discards its Raft state
  and joins as new. A node that saw its own removal applied while running was
  removed on purpose and stays out until it restarts;
* **changes** on the leader: add (learner, catch up, promote), remove (and revoke
  the removed member's certificate), transfer leadership, force a new cluster after
  a permanent loss of quorum, revoke certificates;
* **admission**: who may speak to this node is Raft's decision (the members of its
  configuration, ``RaftNode.admitted``); the mesh and the replicator hear only them;
* **peers**: discovery finds and verifies peers and hands them to the mesh; the
  mesh says who is alive, and the replicator and Raft follow it.

Every collaborator is handed in; nothing here serves HTTP (``api.py`` does).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

from . import (
    config,
    consensus,
    coordinator,
    discovery,
    errors,
    mesh,
    replication,
    statemachine,
)
from .core import formation
from .transport import peer

log = logging.getLogger(__name__)

JOIN_KIND = "node.join"
INFO_KIND = "node.info"
FORMATION_POLL_SECONDS = 0.5
REMOVED_CHECK_SECONDS = 2.0
DEPARTED_CHECK_SECONDS = 5.0  # a departed member's replica is forgotten within this

Spawn = Callable[[Callable[[], Awaitable[None]], str], None]


class Membership:
    def __init__(self, settings: config.NodeSettings, raft: consensus.RaftConsensus,
                 transport: peer.PeerTransport, gossip: mesh.GossipMesh,
                 replicator: replication.MultiMasterReplicator,
                 finder: discovery.NodeDiscovery, registry: coordinator.FederationCoordinator,
                 state: statemachine.FederationStateMachine, spawn: Spawn) -> None:
        self.node_id = settings.node_id
        self._settings = settings
        self._raft = raft
        self._transport = transport
        self._mesh = gossip
        self._replicator = replicator
        self._discovery = finder
        self._coordinator = registry
        self._state = state
        self._spawn = spawn
        self.formation_state = "starting"
        transport.on(JOIN_KIND, self._on_join)
        transport.on(INFO_KIND, self._on_info)
        raft.register_admission_callback(self._on_admission)
        # Until Raft names the members, data is exchanged with nobody; the mesh hears any
        # node (formation learns of peers through it; it carries no data).
        gossip.set_admitted(None)
        replicator.set_admitted(frozenset())
        state.on_revoked = transport.set_revoked
        finder.register_discovery_callback(self._on_discovered)
        gossip.register_membership_callback(self._on_mesh_membership)

    async def start(self) -> None:
        """Start Raft the way this node's state calls for, and the watchers."""
        initial = self._settings.initial_members
        for pid, addr in initial.items():
            if pid != self.node_id:
                await self._mesh.add_peer(pid, addr)
                self._replicator.add_peer(pid, addr)
        if initial:
            await self._raft.start(cluster_nodes=sorted(initial), join=False)
            self._became_member()
        elif self._has_raft_state():
            await self._raft.start(cluster_nodes=[], join=True)  # resumes its durable state
            self._became_member()
        else:
            self._spawn(self._form, "formation")
        if not initial:
            # Not only after a restart: a survivor left out of a forced new cluster runs on.
            self._spawn(self._rejoin_if_removed, "removed-check")
        self._spawn(self._watch_departed_replicas, "departed")

    # -- views ------------------------------------------------------------------------------

    def is_ready(self) -> bool:
        """A member that follows a known leader."""
        if self._raft.leader_id is None:
            return False
        return any(m["id"] == self.node_id for m in self._raft.members())

    def members(self) -> list[dict[str, Any]]:
        started = self._mesh.address is not None  # /metrics may ask during start-up
        alive = {m["id"]: m["status"] for m in self._mesh.members()} if started else {}
        return [{**m, "healthy": m["id"] == self.node_id or alive.get(m["id"]) == "alive"}
                for m in self._raft.members()]

    def revocations(self) -> dict[str, dict[str, str]]:
        """The cluster's denylist: fingerprint -> {node_id, reason}."""
        return dict(self._state.revoked)

    def _on_admission(self, members: frozenset[str]) -> None:
        self._mesh.set_admitted(members)
        self._replicator.set_admitted(members)

    # -- formation --------------------------------------------------------------------------

    def _has_raft_state(self) -> bool:
        return (self._settings.data_dir / "raft" / consensus.DB_FILE).exists()

    def _became_member(self) -> None:
        self.formation_state = "member"
        self._discovery.set_formed(True)

    async def _form(self) -> None:
        while self.formation_state != "member":
            await self._discovery.discover_now()
            decision = self._discovery.formation_decision()
            self.formation_state = type(decision).__name__.lower() + ": " + getattr(
                decision, "reason", "")
            if isinstance(decision, formation.Bootstrap) and not self._raft.running:
                log.info("bootstrapping a new cluster: %s", decision.reason)
                await self._raft.start(cluster_nodes=[self.node_id], join=False)
                self._became_member()
                return
            if isinstance(decision, formation.Join) and await self._join(decision.targets):
                return
            await asyncio.sleep(FORMATION_POLL_SECONDS)

    async def _join(self, targets: tuple[str, ...]) -> bool:
        """Ask members to add us; follows redirects to the leader. True once added."""
        if not self._raft.running:
            await self._raft.start(cluster_nodes=[], join=True)
            self.formation_state = "joining"
        body = {"id": self.node_id, "address": self._settings.peer_address}
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
                info = await self._transport.request(address, INFO_KIND, {}, timeout=5.0)
                self._learn_address(info.get("node_id"), address)
                self._learn_address(info.get("leader_id"), info.get("leader_address"))
                leader = info.get("leader_id")
                if isinstance(leader, str):  # it alone may replicate to us until we join
                    await self._raft.expect_leader(frozenset({leader}))
                reply = await self._transport.request(address, JOIN_KIND, body, timeout=90.0)
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
        address = body.get("address")
        if body.get("id") != sender or not isinstance(address, str):
            raise ValueError("a node may only ask to join as itself, with an address")
        peer.split_address(address)
        if not self._raft.is_leader:
            return {"ok": False, "leader_id": self._raft.leader_id,
                    "leader_address": self._raft.leader_address()}
        await self.add_member(sender, address)
        return {"ok": True}

    def _on_info(self, sender: str, body: dict[str, Any]) -> dict[str, Any]:
        raft = self._raft
        return {"node_id": self.node_id, "leader_id": raft.leader_id,
                "leader_address": raft.leader_address(),
                "members": [m["id"] for m in raft.members()]}

    def _learn_address(self, node_id: Any, address: Any) -> None:
        """Tell Raft where a node listens (it also learns addresses from config entries)."""
        if isinstance(node_id, str) and isinstance(address, str) and node_id != self.node_id:
            with contextlib.suppress(ValueError):  # an address we cannot dial
                self._raft.set_peer_address(node_id, address)

    async def _rejoin_if_removed(self) -> None:
        """See the module docstring: a member the cluster removed joins as new, unless
        this process saw its own removal applied: then it was removed on purpose (a
        scale-down whose pod has not stopped yet) and stays out until it restarts."""
        quiet_since: float | None = None
        member_here = False  # this process has seen itself in the configuration
        while True:
            await asyncio.sleep(REMOVED_CHECK_SECONDS)
            in_config = self.node_id in {m["id"] for m in self._raft.members()}
            if in_config:
                member_here = True
            elif member_here and self._raft.running:
                if self.formation_state != "removed":
                    log.warning("this node was removed from the cluster; it stays out until "
                                "it is restarted")
                    self.formation_state = "removed"
                continue
            if (not self._raft.running or self._raft.leader_id is not None
                    or self.formation_state != "member"):
                quiet_since = None
                continue
            now = time.monotonic()
            quiet_since = quiet_since or now
            if now - quiet_since < REMOVED_CHECK_SECONDS * 2:
                continue
            if await self._removed_says_the_leader():
                await self._discard_and_rejoin()
                quiet_since = None  # watch again once the new membership is in place
                member_here = False

    async def _removed_says_the_leader(self) -> bool:
        for found in await self._discovery.get_nodes(verified_only=True):
            try:
                info = await self._transport.request(found.address, INFO_KIND, {}, timeout=3.0)
            except peer.PeerError:
                continue
            leader_says = info.get("leader_id") == info.get("node_id")
            if leader_says and self.node_id not in info.get("members", [self.node_id]):
                log.warning("the leader %s says we are no longer a member: discarding "
                            "our Raft state and joining as new", info.get("node_id"))
                return True
        return False

    async def _discard_and_rejoin(self) -> None:
        await self._raft.stop()
        self._raft.discard_state()
        # Our applied state may hold entries the new cluster never committed (a survivor
        # left out of a forced new cluster): it is replayed from empty.
        self._state.reset()
        self.formation_state = "joining"
        self._discovery.set_formed(False)
        self._spawn(self._form, "formation")

    # -- changes, on the leader -------------------------------------------------------------

    async def add_member(self, node_id: str, address: str, timeout: float = 60.0) -> None:
        """Idempotent and resumable (see ``RaftConsensus.add_member``)."""
        try:
            peer.split_address(address)
        except ValueError as exc:
            raise errors.InvalidInput(f"member address: {exc}") from None
        await self._raft.add_member(node_id, address, timeout=timeout)
        await self._mesh.add_peer(node_id, address)
        self._replicator.add_peer(node_id, address)

    async def remove_member(self, node_id: str) -> list[str]:
        """``errors.NotFound`` (``not_a_member``) for a node that is not a member. Removing
        the leader itself hands leadership over first: then the new leader removes it.
        Returns the fingerprints of the removed member's certificates, now revoked."""
        self._raft.require_leader()
        if node_id not in {m["id"] for m in self._raft.members()}:
            raise errors.NotFound(f"{node_id} is not a member", code="not_a_member")
        if node_id == self.node_id:
            await self._raft.transfer_leadership()
            raise self._raft.not_leader()
        await self._raft.remove_member(node_id)
        with contextlib.suppress(Exception):
            await self._coordinator.deregister_node(node_id)
        return await self._revoke_removed(node_id)

    async def _revoke_removed(self, node_id: str) -> list[str]:
        """Revoke the certificates the removed member was seen speaking with, so it cannot
        come back with them. A certificate other members speak with too (a shared
        wildcard) is kept: revoking it would cut off the cluster."""
        seen = self._transport.certificates_of(node_id)
        members = {m["id"] for m in self._raft.members()}
        shared = {fp for fp in seen if self._transport.speakers_of(fp) & members}
        if shared:
            log.warning("%s spoke with a certificate other members share (a wildcard): it "
                        "cannot be revoked for %s alone; rotate the shared certificate",
                        node_id, node_id)
        revoke = sorted(seen - shared)
        if not seen:
            log.warning("no certificate of %s was seen by this node: revoke it by fingerprint "
                        "(POST /v1/revocations) if it may still be used", node_id)
        if revoke:
            await self.revoke(revoke, node_id, "member removed")
        return revoke

    async def revoke(self, fingerprints: list[str], node_id: str | None, reason: str
                     ) -> list[str]:
        """Add certificates to the cluster's denylist (through Raft); the newly revoked."""
        try:
            command = statemachine.revoke_command(fingerprints, node_id, reason)
        except ValueError as exc:
            raise errors.InvalidInput(str(exc)) from None
        applied = await self._raft.propose(command)
        result = applied.result
        return list(result) if isinstance(result, list) else []

    async def transfer_leadership(self, target: str | None) -> str:
        return await self._raft.transfer_leadership(target)

    async def force_new_cluster(self) -> dict[str, Any]:
        """Quorum is lost for good: this node becomes the sole voter (see
        ``RaftConsensus.force_new_cluster``); the others are added back as new members."""
        raft = self._raft
        if not raft.running:
            raise errors.MembershipError("no_raft_state", "this node has no Raft state")
        if raft.leader_id is not None:
            raise errors.MembershipError(
                "has_leader", f"this node sees a leader ({raft.leader_id}): quorum is not lost",
                leader_id=raft.leader_id)
        r = await raft.force_new_cluster()
        self._became_member()
        lost = sorted(r.old_config.members - {self.node_id})
        return {"id": self.node_id, "leader_id": raft.leader_id,
                "term": raft.get_stats()["current_term"], "kept_through_index": r.truncated_after,
                "discarded_entries": r.discarded, "former_members": lost}

    # -- peers: discovery -> mesh -> replication --------------------------------------------

    async def _on_discovered(self, event: str, found: discovery.DiscoveredNode) -> None:
        if not found.node_id or found.node_id == self.node_id:
            return
        if event == "up":
            await self._mesh.add_peer(found.node_id, found.address)
        else:
            await self._mesh.remove_peer(found.node_id)

    async def _on_mesh_membership(self, node_id: str, status: str, address: str | None) -> None:
        if node_id == self.node_id:
            return
        if status == "alive" and address:
            self._replicator.add_peer(node_id, address)
            self._learn_address(node_id, address)
            # Discovery verifies it like any hint, and its cache then covers it.
            with contextlib.suppress(ValueError):  # an address we cannot dial
                await self._discovery.register_node(node_id, address)
        elif status in ("dead", "left"):
            self._replicator.remove_peer(node_id)
            self._forget_departed_replicas()
            if status == "left":  # gone on purpose: a restarted node should not dial it
                await self._discovery.remove_node(node_id)

    def _forget_departed_replicas(self) -> None:
        """Stop holding tombstones for replicas that left for good (a scale-down).

        A replica departed when it is neither in the Raft configuration nor
        reachable in the mesh. Either alone is not enough: every graceful
        restart leaves the mesh, and a member removed from Raft keeps
        replicating until its process stops. Judged only by a member that
        follows a leader, so the configuration is current.
        """
        if self._raft.leader_id is None or self.formation_state != "member":
            return
        members = {m["id"] for m in self._raft.members()}
        if self.node_id not in members:
            return  # we were removed ourselves: our view says nothing about the others
        departed = self._replicator.known_replicas - members - set(self._mesh.alive_peers())
        for node_id in sorted(departed):
            log.info("replica %s left the cluster: tombstones no longer wait for it", node_id)
            self._replicator.forget_replica(node_id)

    async def _watch_departed_replicas(self) -> None:
        """Raft reports no configuration changes as events, so check now and then."""
        while True:
            await asyncio.sleep(DEPARTED_CHECK_SECONDS)
            self._forget_departed_replicas()
