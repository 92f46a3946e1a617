"""SWIM membership with Lifeguard, and epidemic dissemination of per-node state.

Pure: time arrives as ``now`` (seconds, any monotonic origin) and randomness
as a seeded ``random.Random``. ``node.SwimNode`` is the protocol; the shell
(``distributed/mesh.py``) feeds it messages and ticks and carries out its
``Ready`` effects.

Modules, read in this order:

* ``membership``: member states and the transition table (SWIM section 4.2).
* ``suspicion``: Lifeguard's dynamic suspicion timeout.
* ``dissemination``: the retransmit limit, the broadcast queue and the dedup buffer.
* ``state``: the versioned per-node state map (last writer by version).
* ``health``: Lifeguard's local health multiplier.
* ``messages``: the wire messages and their dict form.
* ``node``: ``SwimNode`` ties them together.
"""
