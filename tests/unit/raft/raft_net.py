"""A tiny synchronous network of RaftNodes for unit tests (no faults unless asked).

``Net.stabilize()`` carries out Readies (persisting to per-node memory, as the
shell would) and delivers messages until nothing is left to do. Links can be
cut; ``tick`` advances logical time on chosen nodes.
"""

from __future__ import annotations

import random
from collections import deque

from continuum.federation.distributed.core.raft import config as rconfig
from continuum.federation.distributed.core.raft import messages as m
from continuum.federation.distributed.core.raft import raft_node as rnode

CFG = rconfig.RaftConfig(election_ticks_min=10, election_ticks_max=20, heartbeat_ticks=2)


def conf(*voters: str, learners: tuple[str, ...] = ()) -> m.ClusterConfig:
    return m.ClusterConfig(frozenset(voters), frozenset(learners), {v: f"{v}:1" for v in voters})


class Net:
    def __init__(self, *ids: str, cfg: rconfig.RaftConfig = CFG, seed: int = 1,
                 join: tuple[str, ...] = ()) -> None:
        boot = conf(*ids)
        self.cfg = cfg
        self.rng = random.Random(seed)
        self.nodes = {i: rnode.RaftNode(i, cfg, random.Random(seed + k), bootstrap=boot)
                      for k, i in enumerate(ids)}
        for j in join:
            self.nodes[j] = rnode.RaftNode(j, cfg, random.Random(seed + 99))
        self.queue: deque[m.Message] = deque()
        self.cut: set[tuple[str, str]] = set()
        self.applied: dict[str, list[m.Entry]] = {i: [] for i in self.nodes}
        self.read_states: dict[str, list[rnode.ReadState]] = {i: [] for i in self.nodes}
        self.sent: list[m.Message] = []
        self.readies: dict[str, list[rnode.Ready]] = {i: [] for i in self.nodes}

    def add(self, nid: str) -> None:
        self.nodes[nid] = rnode.RaftNode(nid, self.cfg, random.Random(77))
        self.applied[nid], self.read_states[nid], self.readies[nid] = [], [], []

    def process(self, nid: str) -> None:
        n = self.nodes[nid]
        while n.has_ready():
            rd = n.ready()
            self.readies[nid].append(rd)
            self.queue.extend(rd.early_messages)
            self.queue.extend(rd.messages)
            self.sent.extend(rd.early_messages + rd.messages)
            self.applied[nid].extend(e for e in rd.committed if e.index not in rd.duplicates)
            self.read_states[nid].extend(rd.read_states)
            n.advance(rd)

    def deliver_one(self) -> None:
        msg = self.queue.popleft()
        if (msg.frm, msg.to) in self.cut or msg.to not in self.nodes:
            return
        self.nodes[msg.to].step(msg)
        self.process(msg.to)

    def stabilize(self, limit: int = 100_000) -> None:
        for nid in self.nodes:
            self.process(nid)
        n = 0
        while self.queue:
            self.deliver_one()
            n += 1
            assert n < limit, "did not stabilize"

    def tick(self, *ids: str, times: int = 1) -> None:
        for _ in range(times):
            for nid in ids or tuple(self.nodes):
                self.nodes[nid].tick()
                self.process(nid)
            self.stabilize()

    def elect(self, nid: str) -> None:
        self.nodes[nid].campaign()
        self.stabilize()
        assert self.nodes[nid].is_leader

    def isolate(self, nid: str) -> None:
        for o in self.nodes:
            if o != nid:
                self.cut |= {(nid, o), (o, nid)}

    def heal(self) -> None:
        self.cut.clear()

    def leaders(self) -> list[str]:
        return [i for i, n in self.nodes.items() if n.is_leader]

    def propose(self, nid: str, *datas: bytes, rid: str | None = None) -> int:
        idx = self.nodes[nid].propose(list(datas), [rid] * len(datas) if rid else [])
        self.stabilize()
        return idx
