"""continuum.federation.distributed: the distributed federation of CONTINUUM.

The spec's public API, importable as written::

    from continuum.federation.distributed import (
        FederationCoordinator, LoadBalance, RaftConsensus, MultiMasterReplicator,
        ConflictResolver, ConflictResolutionStrategy, NodeDiscovery, DiscoveryConfig,
        DiscoveryMethod, GossipMesh, MeshConfig,
    )

plus the node that wires them (``FederationNode``, ``NodeSettings``) and the
value types and errors the API returns. Every name the original CONTINUUM
module exported is here too (``NodeHealth``, ``ConsensusState``,
``GossipMessage``), and its modules' names import from the same submodules
(``from continuum.federation.distributed.replication import VectorClock``);
docs/migration.md has the differences. Only this module re-exports names;
inside the package, modules import modules.
"""

from .config import NodeSettings
from .consensus import (
    ConsensusState,
    MembershipError,
    NodeRole,
    NotLeaderError,
    OverloadedError,
    RaftConsensus,
)
from .coordinator import (
    CoordinatorError,
    FederationCoordinator,
    LoadBalance,
    NodeHealth,
    NodeInfo,
    NodeStatus,
    UnknownNodeError,
)
from .core.crdt.clock import HybridLogicalClock, VectorClock
from .core.crdt.resolver import ConflictResolutionStrategy, ConflictResolver
from .core.crdt.values import ChecksumError, ReplicatedValue
from .discovery import DiscoveredNode, DiscoveryConfig, DiscoveryMethod, NodeDiscovery
from .mesh import GossipMesh, GossipMessage, MeshConfig
from .node import FederationNode
from .replication import MultiMasterReplicator, ReplicationError

__all__ = [
    "ChecksumError",
    "ConflictResolutionStrategy",
    "ConflictResolver",
    "ConsensusState",
    "CoordinatorError",
    "DiscoveredNode",
    "DiscoveryConfig",
    "DiscoveryMethod",
    "FederationCoordinator",
    "FederationNode",
    "GossipMesh",
    "GossipMessage",
    "HybridLogicalClock",
    "LoadBalance",
    "MembershipError",
    "MeshConfig",
    "MultiMasterReplicator",
    "NodeDiscovery",
    "NodeHealth",
    "NodeInfo",
    "NodeRole",
    "NodeSettings",
    "NodeStatus",
    "NotLeaderError",
    "OverloadedError",
    "RaftConsensus",
    "ReplicatedValue",
    "ReplicationError",
    "UnknownNodeError",
    "VectorClock",
]
