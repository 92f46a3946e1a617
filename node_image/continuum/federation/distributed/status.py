"""What a node says about itself: ``GET /v1/status`` and the Prometheus figures.

Read-only views over the node's parts, built when asked (never polled, never stale).
"""

from __future__ import annotations

import time
from importlib import metadata
from typing import Any

from . import (
    config,
    consensus,
    coordinator,
    discovery,
    duties,
    membership,
    mesh,
    replication,
    statemachine,
)
from .backup import source as backup_source
from .core import load
from .transport import peer

Named = tuple[str, str, dict[str, str], float]  # name, help, labels, value


def version() -> str:
    try:
        return metadata.version("continuum-federation")
    except metadata.PackageNotFoundError:
        return "0+unknown"


class NodeView:
    def __init__(self, settings: config.NodeSettings, raft: consensus.RaftConsensus,
                 members: membership.Membership, state: statemachine.FederationStateMachine,
                 replicator: replication.MultiMasterReplicator, gossip: mesh.GossipMesh,
                 registry: coordinator.FederationCoordinator, finder: discovery.NodeDiscovery,
                 transport: peer.PeerTransport, reporter: duties.LoadReporter,
                 certificates: duties.Certificates, backups: backup_source.BackupSource) -> None:
        self._settings = settings
        self._raft = raft
        self._membership = members
        self._state = state
        self._replicator = replicator
        self._mesh = gossip
        self._coordinator = registry
        self._discovery = finder
        self._transport = transport
        self._reporter = reporter
        self._certs = certificates
        self._backups = backups
        self._started = time.monotonic()

    def status(self) -> dict[str, Any]:
        raft = self._raft
        rstats = raft.get_stats() if raft.running else {}
        return {
            "node_id": self._settings.node_id,
            "cluster": self._settings.cluster_name,
            "cluster_id": self._state.identity["id"] if self._state.identity else None,
            "address": self._settings.peer_address,
            "role": raft.role() if raft.running else "none",
            "term": rstats.get("current_term", 0),
            "leader_id": rstats.get("leader_id"),
            "leader_address": rstats.get("leader_address"),
            "commit_index": rstats.get("commit_index", 0),
            "last_applied": rstats.get("last_applied", 0),
            "ready": self._membership.is_ready(),
            "formation": self._membership.formation_state,
            "members": self._membership.members(),
            "membership_committed": raft.membership_committed(),
            "strong_concepts": len(self._state.concepts),
            "raft": rstats,
            "replication": self._replicator.get_stats(),
            "mesh": self._mesh.get_stats(),
            "coordinator": self._coordinator.get_stats(),
            "discovery": self._discovery.get_stats(),
            "transport": dict(self._transport.stats),
            "load": load.heartbeat(self._reporter.inputs()),
            "version": version(),
            "certificate_not_after": self._certs.not_after.isoformat(),
            "certificate_sha256": self._certs.cert_sha256,
            "trusted_ca_sha256": list(self._certs.trusted_ca_sha256),
            "uptime_seconds": round(time.monotonic() - self._started, 3),
        }

    def stats_sources(self) -> dict[str, dict[str, Any]]:
        sources = {
            "backup": dict(self._backups.stats),
            "replication": self._replicator.get_stats(),
            "mesh": self._mesh.get_stats(),
            "coordinator": self._coordinator.get_stats(),
            "discovery": self._discovery.get_stats(),
            "transport": dict(self._transport.stats),
        }
        if self._raft.running:
            sources["raft"] = self._raft.get_stats()
        return sources

    def named_metrics(self) -> list[Named]:
        raft = self._raft
        stats = raft.get_stats() if raft.running else {}
        node = {"node": self._settings.node_id}
        out: list[Named] = [
            ("continuum_raft_term", "Current Raft term", node,
             float(stats.get("current_term", 0))),
            ("continuum_raft_commit_index", "Raft commit index", node,
             float(stats.get("commit_index", 0))),
            ("continuum_raft_applied_index", "Last applied Raft index", node,
             float(stats.get("last_applied", 0))),
            ("continuum_raft_is_leader", "1 on the Raft leader", node,
             1.0 if raft.is_leader else 0.0),
            ("continuum_node_ready", "1 when the node is ready", node,
             1.0 if self._membership.is_ready() else 0.0),
            ("continuum_replication_keys", "Concepts in the multi-master store", node,
             float(self._replicator.get_stats().get("keys_stored", 0))),
            ("continuum_load_score", "This node's load score", node,
             float(load.load_score(self._reporter.inputs()))),
            ("continuum_certificate_expiry_seconds", "Seconds until the node certificate expires",
             node, self._certs.not_after.timestamp() - time.time()),
        ]
        for m in self._membership.members():
            out.append(("continuum_member_healthy", "1 when a member is alive in the mesh",
                        {"node": self._settings.node_id, "member": m["id"]},
                        1.0 if m["healthy"] else 0.0))
        lag = self._replicator.get_stats().get("replication_lag_seconds")
        if isinstance(lag, int | float):
            out.append(("continuum_replication_lag_seconds",
                        "Age of the last replicated write when it arrived here", node, float(lag)))
        return out
