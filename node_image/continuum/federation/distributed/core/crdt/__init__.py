"""The pure replication core: clocks, values, conflict resolution, the replica and its hash tree.

Sans-I/O like every core: ``now`` is an argument, nothing here touches a disk
or a socket. ``replica.Replica`` is the state machine the asyncio shell
(``distributed/replication.py``) drives; ``merkle.MerkleTree`` is the digest
structure anti-entropy compares.
"""
