"""Fresh nodes whose discovery hints arrive in any order form exactly one cluster.

A small model drives ``core.formation.decide`` for N nodes: hints about other
nodes arrive in a random order (``hint``), get probed at random times
(``probe``: the prober learns the peer is verified and whether it is already
formed), and time passes (``tick``). After every step each node without a
cluster asks the rule; Bootstrap founds a cluster, Join joins a formed one.
Safety: never two founders. Liveness: once every node sees every other and
time passes, everyone is in the one cluster.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from hypothesis import given, settings
from hypothesis import strategies as st

from continuum.federation.distributed.core import formation as f

STABLE = 5.0


@dataclass
class Node:
    node_id: str
    timer: f.StabilityTimer = field(default_factory=f.StabilityTimer)
    hints: set[int] = field(default_factory=set)
    known: dict[int, bool] = field(default_factory=dict)  # peer -> formed, as last probed
    formed: bool = False


class World:
    def __init__(self, ids: list[str], config: f.FormationConfig) -> None:
        self.nodes = [Node(i) for i in ids]
        self.config = config
        self.now = 0.0
        self.founders: list[str] = []

    def hint(self, i: int, j: int) -> None:
        if i != j and j not in self.nodes[i].known:
            self.nodes[i].hints.add(j)

    def probe(self, i: int, j: int) -> None:
        n = self.nodes[i]
        if j in n.hints or j in n.known:
            n.hints.discard(j)
            n.known[j] = self.nodes[j].formed

    def step(self) -> None:
        for n in self.nodes:
            if n.formed:
                continue
            peers = [f.FormationPeer(self.nodes[j].node_id, str(j), formed)
                     for j, formed in sorted(n.known.items())]
            view = (frozenset(n.hints), frozenset(n.known.items()))
            d = f.decide(n.node_id, has_membership=False, peers=peers, unresolved=len(n.hints),
                         stable_for=n.timer.update(view, self.now), config=self.config)
            if isinstance(d, f.Bootstrap):
                self.founders.append(n.node_id)
                n.formed = True
            elif isinstance(d, f.Join):
                assert all(self.nodes[int(t)].formed for t in d.targets)
                n.formed = True

    def settle(self) -> None:
        """Discovery converges: everyone probes everyone, repeatedly, as time passes."""
        for _ in range(len(self.nodes) + 2):
            for i in range(len(self.nodes)):
                for j in range(len(self.nodes)):
                    self.hint(i, j)
                    self.probe(i, j)
            self.now += STABLE + 1
            self.step()
            self.step()


event = st.one_of(
    st.tuples(st.just("hint"), st.integers(0, 7), st.integers(0, 7)),
    st.tuples(st.just("probe"), st.integers(0, 7), st.integers(0, 7)),
    st.tuples(st.just("tick"), st.floats(0.0, 3.0), st.just(0)),
)


def run(world: World, events: list[tuple[str, float, int]]) -> None:
    n = len(world.nodes)
    for kind, a, b in events:
        if kind == "tick":
            world.now += a
        elif kind == "hint":
            world.hint(int(a) % n, b % n)
        else:
            world.probe(int(a) % n, b % n)
        world.step()
        assert len(world.founders) <= 1, world.founders
    world.settle()
    assert len(world.founders) == 1, world.founders
    assert all(node.formed for node in world.nodes)


@settings(max_examples=300, deadline=None)
@given(n=st.integers(1, 8), events=st.lists(event, max_size=120))
def test_statefulset_ordinals_form_one_cluster(n: int,
                                                events: list[tuple[str, float, int]]) -> None:
    world = World([f"demo-{i}" for i in range(n)], f.FormationConfig(f.ORDINAL, STABLE))
    run(world, events)
    assert world.founders == ["demo-0"]


@settings(max_examples=300, deadline=None)
@given(ids=st.lists(st.text("abcdefgh-0123456789", min_size=1, max_size=6), min_size=1,
                    max_size=8, unique=True),
       events=st.lists(event, max_size=120))
def test_lowest_id_with_the_initial_size_forms_one_cluster(
        ids: list[str], events: list[tuple[str, float, int]]) -> None:
    world = World(ids, f.FormationConfig(f.LOWEST_ID, STABLE, min_nodes=len(ids)))
    run(world, events)
    assert world.founders == [min(ids, key=f.id_key)]


def test_the_model_catches_a_split_under_a_weaker_rule() -> None:
    """Guard against a vacuous model: lowest id with min_nodes=1 lets two nodes that have
    not seen each other within the stable window both found a cluster."""
    world = World(["a", "b"], f.FormationConfig(f.LOWEST_ID, STABLE, min_nodes=1))
    world.step()
    world.now = STABLE
    world.step()
    assert world.founders == ["a", "b"]
