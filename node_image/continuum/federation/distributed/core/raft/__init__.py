"""A pure Raft core in the style of etcd-io/raft's RawNode and Ready.

``raft_node.RaftNode`` takes peer messages through ``step`` and local inputs
through ``tick``, ``propose``, ``read_index``, ``change_config`` and
``transfer_leader``, and hands back its effects through ``ready()``: hard state
and entries to persist BEFORE any of ``messages`` is sent, committed entries to
apply after, and read states. ``advance(ready)`` tells it the effects were
carried out. Time is logical ticks and randomness a seeded ``random.Random``;
nothing here awaits or touches a disk. Refusals are the package's ``errors``
(``NotLeader``, ``Overloaded``, ``MembershipError``).

Files: ``messages`` (entries and the wire messages), ``log`` (the in-memory
log with its snapshot base), ``quorum`` (majority maths), ``progress`` (the
leader's view of each follower: flow control), ``requests`` (the applied
request table), ``config`` (tunables and the timing rule), ``raft_node`` (the
state machine), ``recovery`` (forcing a one-voter cluster after a permanent
loss of quorum).
"""
