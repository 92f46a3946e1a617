"""SWIM admission: a member hears only the nodes the cluster's membership admits."""

from __future__ import annotations

from continuum.federation.distributed.core.swim import messages, state
from continuum.federation.distributed.core.swim import swim_node as node
from continuum.federation.distributed.core.swim.membership import Status
from unit.swim.test_swim_node import make, of_type, sent


def test_a_node_not_admitted_is_not_heard_at_all() -> None:
    a = make("a", peers=("b",))
    a.admit(0.0, frozenset({"b"}))
    a.ready()
    forged = messages.MemberUpdate("b", "addr-evil", 99, Status.ALIVE, "intruder")
    a.receive(1.0, "intruder", messages.Ping(1, "a", "addr-intruder", (forged,)))
    a.receive(1.0, "intruder", messages.Gossip((state.Entry("intruder", "load", 1, 9),)))
    a.receive(1.0, "intruder", messages.Sync((forged,), (), "addr-intruder", False))
    rd = a.ready()
    assert rd.messages == () and rd.events == ()  # no ack, no sync reply, no change
    assert a.members["b"].address == "addr-b" and a.stats["refused"] == 3
    assert "intruder" not in a.members and "intruder" not in a.view()


def test_news_of_a_node_not_admitted_is_held_until_it_is() -> None:
    a = make("a", peers=("b",))
    a.admit(0.0, frozenset({"b"}))
    a.receive(1.0, "b", messages.Gossip((messages.MemberUpdate("j", "addr-j", 0, Status.ALIVE,
                                                               "b"),)))
    a.join(1.0, "k", "addr-k")
    assert "j" not in a.members and "k" not in a.members
    assert not of_type(sent(a), messages.Sync)
    a.admit(2.0, frozenset({"b", "j", "k"}))  # both were added to the cluster
    syncs = of_type(sent(a), messages.Sync)
    assert {s.address for s in syncs} == {"addr-j", "addr-k"}


def test_a_sync_refused_before_admission_is_answered_once_admitted() -> None:
    # While a cluster forms, the members' configurations grow at different moments: a sync
    # from a node we do not admit yet is refused, and we sync with it as soon as we do.
    a = make("a", peers=("b",))
    a.admit(0.0, frozenset({"b"}))
    a.ready()
    a.receive(1.0, "j", messages.Sync((), (), "addr-j", False))
    assert sent(a) == [] and "j" not in a.members and a.stats["refused"] == 1
    a.admit(2.0, frozenset({"b", "j"}))
    assert [s.address for s in of_type(sent(a), messages.Sync)] == ["addr-j"]


def test_a_member_no_longer_admitted_is_dropped_as_if_it_left() -> None:
    a = make("a", peers=("b", "c"))
    a.admit(0.0, frozenset({"b", "c"}))
    a.ready()
    a.admit(1.0, frozenset({"b"}))  # c was removed from the cluster
    events = a.ready().events
    assert node.MemberChanged("c", "addr-c", Status.LEFT, 0) in events
    assert "c" not in a.members
    a.receive(2.0, "c", messages.Ping(7, "a", "addr-c"))
    assert sent(a) == [] and a.stats["refused"] == 1


def test_a_standalone_mesh_hears_every_node() -> None:
    a = make("a")
    a.receive(1.0, "b", messages.Ping(1, "a", "addr-b"))
    assert of_type(sent(a), messages.Ack)
    a.admit(2.0, frozenset({"x"}))
    a.admit(3.0, None)
    a.receive(4.0, "b", messages.Ping(2, "a", "addr-b"))
    assert of_type(sent(a), messages.Ack) and a.stats["refused"] == 0
