"""continuum.federation.distributed: the distributed federation of CONTINUUM.

Public API (the spec's names): ``FederationCoordinator``, ``RaftConsensus``,
``MultiMasterReplicator``, ``NodeDiscovery``, ``GossipMesh`` and their
configuration classes. Only this module re-exports names; inside the package,
modules import modules.
"""

__all__: list[str] = []
