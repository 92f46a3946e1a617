"""SwimNode driven by hand: probes, ping-req, suspicion, refutation, state, sync, leave."""

from __future__ import annotations

import random

import pytest

from continuum.federation.distributed.core.swim import config as cfg
from continuum.federation.distributed.core.swim import messages, state
from continuum.federation.distributed.core.swim import swim_node as node
from continuum.federation.distributed.core.swim.membership import Status

CONF = cfg.SwimConfig(probe_interval=1.0, probe_timeout=0.4, sync_interval=1000.0)


def make(node_id: str, *, incarnation: int = 0, peers: tuple[str, ...] = ()) -> node.SwimNode:
    sw = node.SwimNode(node_id, f"addr-{node_id}", CONF, random.Random(7), 0.0,
                       incarnation=incarnation)
    for p in peers:
        sw.adopt(0.0, p, f"addr-{p}")
    return sw


def sent(sw: node.SwimNode) -> list[node.Outgoing]:
    return list(sw.ready().messages)


def of_type(out: list[node.Outgoing], t: type) -> list[node.Outgoing]:
    return [o for o in out if isinstance(o.message, t)]


def test_probe_acked_directly_raises_no_suspicion() -> None:
    a, b = make("a", peers=("b",)), make("b", peers=("a",))
    a.tick(a.next_deadline())
    ping = of_type(sent(a), messages.Ping)[0]
    assert ping.node == "b" and ping.address == "addr-b"
    b.receive(0.5, "a", ping.message)
    ack = of_type(sent(b), messages.Ack)[0]
    assert ack.address == "addr-a"
    a.receive(0.6, "b", ack.message)
    a.tick(5.0)
    assert a.members["b"].status == Status.ALIVE
    assert a.stats["probe_failures"] == 0


def test_silent_target_gets_ping_req_then_suspected_then_dead() -> None:
    a = make("a", peers=("b", "c", "d"))
    t = a.next_deadline()
    a.tick(t)
    target = of_type(sent(a), messages.Ping)[0].node
    a.tick(t + CONF.probe_timeout)
    reqs = of_type(sent(a), messages.PingReq)
    assert {r.node for r in reqs} == {"b", "c", "d"} - {target}
    assert all(isinstance(r.message, messages.PingReq) and r.message.target == target
               for r in reqs)
    a.tick(t + CONF.probe_interval)
    assert a.members[target].status == Status.SUSPECT
    assert a.health.score == 2  # two helpers did not even nack: maybe we are the problem
    events = a.ready().events
    assert node.MemberChanged(target, f"addr-{target}", Status.SUSPECT, 0) in events
    # Nobody confirms and nobody refutes: dead after the long Lifeguard timeout.
    a.tick(t + CONF.probe_interval + 1.0)
    assert a.members[target].status == Status.SUSPECT
    for step in range(400):
        a.tick(t + 2.0 + step * 0.25)
        if a.members[target].status == Status.DEAD:
            break
    assert a.members[target].status == Status.DEAD


def test_helper_relays_ack_and_nacks_when_target_is_silent() -> None:
    c = make("c", peers=("a", "b"))
    c.receive(1.0, "a", messages.PingReq(42, "b", "addr-b", "addr-a"))
    ping = of_type(sent(c), messages.Ping)[0]
    assert ping.address == "addr-b" and isinstance(ping.message, messages.Ping)
    c.receive(1.1, "b", messages.Ack(ping.message.seq))
    relayed = of_type(sent(c), messages.Ack)
    assert relayed[0].address == "addr-a" and relayed[0].message == messages.Ack(42)
    c.receive(2.0, "a", messages.PingReq(43, "b", "addr-b", "addr-a"))
    sent(c)
    c.tick(2.0 + CONF.probe_timeout)
    nacks = of_type(sent(c), messages.Nack)
    assert nacks and nacks[0].message == messages.Nack(43)


def test_ping_for_someone_else_is_not_acked() -> None:
    b = make("b")
    b.receive(1.0, "a", messages.Ping(1, "old-owner-of-this-address", "addr-a"))
    assert of_type(sent(b), messages.Ack) == []


def test_suspicion_of_self_is_refuted_with_higher_incarnation() -> None:
    a = make("a", incarnation=5, peers=("b",))
    a.receive(1.0, "b", messages.Gossip((messages.MemberUpdate("a", "addr-a", 5, Status.SUSPECT,
                                                               "b"),)))
    r = a.ready()
    assert a.incarnation == 6 and r.incarnation == 6
    assert a.stats["refutations"] == 1 and a.health.score == 1
    a.tick(a.next_deadline())
    carried = [u for o in a.ready().messages
               if isinstance(o.message, messages.Ping | messages.Gossip) for u in o.message.updates]
    assert messages.MemberUpdate("a", "addr-a", 6, Status.ALIVE, "a") in carried
    # An old accusation changes nothing.
    a.receive(2.0, "b", messages.Gossip((messages.MemberUpdate("a", "addr-a", 5, Status.DEAD,
                                                               "b"),)))
    assert a.incarnation == 6


def test_restarted_node_outbids_its_old_death() -> None:
    fresh = make("a", incarnation=0)
    old_view = messages.Sync((messages.MemberUpdate("a", "addr-a", 3, Status.DEAD, "b"),
                              messages.MemberUpdate("b", "addr-b", 1, Status.ALIVE, "b")),
                             (), "addr-b", reply=False)
    fresh.receive(1.0, "b", old_view)
    assert fresh.incarnation == 4
    assert fresh.members["b"].status == Status.ALIVE
    reply = of_type(sent(fresh), messages.Sync)[0]
    assert reply.address == "addr-b"
    assert isinstance(reply.message, messages.Sync) and reply.message.reply
    b = make("b", peers=("a",))
    b.receive(1.0, "a", messages.Gossip((messages.MemberUpdate("a", "addr-a", 3, Status.DEAD,
                                                               "b"),)))
    assert b.members["a"].status == Status.DEAD
    b.receive(1.1, "a", reply.message)
    assert b.members["a"].status == Status.ALIVE and b.members["a"].incarnation == 4


def test_confirmations_shorten_the_suspicion() -> None:
    many = tuple(f"n{i}" for i in range(20))
    a = make("a", peers=many)
    suspect = messages.MemberUpdate("n1", "addr-n1", 0, Status.SUSPECT, "n2")
    a.receive(1.0, "n2", messages.Gossip((suspect,)))
    long_deadline = a._suspicions["n1"].deadline()
    for confirmer in ("n3", "n4"):
        a.receive(1.1, confirmer, messages.Gossip((messages.MemberUpdate(
            "n1", "addr-n1", 0, Status.SUSPECT, confirmer),)))
    assert a.stats["confirmations"] == 2
    assert a._suspicions["n1"].deadline() < long_deadline
    a.tick(a._suspicions["n1"].deadline())
    assert a.members["n1"].status == Status.DEAD


def test_next_deadline_follows_suspicions_as_they_shorten_and_end() -> None:
    many = tuple(f"n{i}" for i in range(20))
    a = make("a", peers=many)
    far = 1e6  # no probing or syncing in the way: only suspicion timers are due
    a._next_probe = a._next_sync = far
    a.receive(1.0, "n2", messages.Gossip((
        messages.MemberUpdate("n1", "addr-n1", 0, Status.SUSPECT, "n2"),
        messages.MemberUpdate("n5", "addr-n5", 0, Status.SUSPECT, "n2"))))
    a.ready()
    a._next_gossip = far
    first = a.next_deadline()
    assert first == a._suspicions["n1"].deadline() == a._suspicions["n5"].deadline()
    a.receive(1.1, "n3", messages.Gossip((
        messages.MemberUpdate("n5", "addr-n5", 0, Status.SUSPECT, "n3"),)))
    a._next_gossip = far
    shorter = a._suspicions["n5"].deadline()
    assert shorter < first and a.next_deadline() == shorter  # the confirmation counts now
    a.receive(1.2, "n5", messages.Gossip((
        messages.MemberUpdate("n5", "addr-n5", 1, Status.ALIVE, "n5"),)))  # refuted
    a._next_gossip = far
    assert "n5" not in a._suspicions and a.next_deadline() == first
    a.tick(first)
    assert a.members["n1"].status == Status.DEAD and a.members["n5"].status == Status.ALIVE
    assert a.stats["declared_dead"] == 1


def test_state_updates_are_versioned_and_never_roll_back() -> None:
    a, b = make("a", peers=("b",)), make("b", peers=("a",))
    v1 = a.update_state(0.0, "load", 0.1)
    v2 = a.update_state(0.0, "load", 0.2)
    assert v2 > v1
    late = messages.Gossip((state.Entry("a", "load", v1, 0.1),))
    fresh = messages.Gossip((state.Entry("a", "load", v2, 0.2),))
    b.receive(1.0, "a", fresh)
    b.receive(1.1, "a", late)
    b.receive(1.2, "a", fresh)
    events = [e for e in b.ready().events if isinstance(e, node.StateChanged)]
    assert events == [node.StateChanged("a", "load", 0.2, v2)]  # once, and never rolled back
    assert b.view()["a"] == {"load": 0.2}


def test_update_state_rejects_bad_input_and_changes_nothing() -> None:
    a = make("a")
    with pytest.raises(ValueError):
        a.update_state(0.0, "", 1)
    with pytest.raises(ValueError):
        a.update_state(0.0, "k", object())
    assert a.view() == {} and a.ready().events == ()


def test_own_state_from_a_previous_life_is_outbid() -> None:
    a = make("a")
    a.update_state(0.0, "load", 0.9)  # version 1 in this life
    a.receive(1.0, "b", messages.Gossip((state.Entry("a", "load", 77, 0.1),)))
    assert a.view()["a"] == {"load": 0.9}
    assert a.state.get("a", "load") is not None
    entry = a.state.get("a", "load")
    assert entry is not None and entry.version > 77


def test_leave_is_announced_and_not_refuted() -> None:
    a, b = make("a", peers=("b",)), make("b", peers=("a",))
    a.leave(1.0)
    gossip = of_type(sent(a), messages.Gossip)
    assert gossip and gossip[0].node == "b"
    b.receive(1.1, "a", gossip[0].message)
    assert b.members["a"].status == Status.LEFT
    assert node.MemberChanged("a", "addr-a", Status.LEFT, 0) in b.ready().events
    # Hearing of its own departure does not make the leaver refute.
    a.receive(1.2, "b", messages.Gossip((messages.MemberUpdate("a", "addr-a", 0, Status.LEFT,
                                                               "b"),)))
    assert a.incarnation == 0
    # Tombstones go after their TTL.
    b.tick(1.1 + CONF.dead_node_ttl + 1)
    assert "a" not in b.members


def test_join_retries_until_answered() -> None:
    a = make("a")
    a.join(0.0, "b", "addr-b")
    first = of_type(sent(a), messages.Sync)
    assert first and first[0].address == "addr-b"
    a.tick(CONF.probe_interval)
    assert of_type(sent(a), messages.Sync)  # retried
    a.receive(5.0, "b", messages.Sync((messages.MemberUpdate("b", "addr-b", 2, Status.ALIVE,
                                                             "b"),), (), "addr-b", reply=True))
    assert a.members["b"].status == Status.ALIVE
    assert a._joins == {}
    assert of_type(sent(a), messages.Sync) == []  # a reply is not answered again


def test_late_timer_lowers_local_health() -> None:
    a = make("a", peers=("b",))
    due = a.next_deadline()
    a.tick(due + 2.0)
    assert a.stats["late_timers"] == 1 and a.health.multiplier == 2


@pytest.mark.parametrize("msg", [
    messages.Ping(1, "b", "addr-a", (messages.MemberUpdate("x", "addr-x", 3, Status.SUSPECT,
                                                           "a"),)),
    messages.Ack(2, (state.Entry("a", "k", 5, {"nested": [1, 2.5, None, b"x"]}),)),
    messages.PingReq(3, "b", "addr-b", "addr-a"),
    messages.Nack(4),
    messages.Gossip((state.Entry("a", "k", 1, "v"),)),
    messages.Sync((messages.MemberUpdate("a", "addr-a", 1, Status.ALIVE, "a"),),
                  (state.Entry("a", "k", 1, "v"),), "addr-a", reply=True),
])
def test_messages_round_trip(msg: messages.Message) -> None:
    assert messages.decode(messages.kind(msg), messages.encode(msg)) == msg


@pytest.mark.parametrize(("kind", "body"), [
    ("swim.ping", {"seq": -1, "target": "b", "reply_to": "x"}),
    ("swim.ping", {"seq": 1, "target": 5, "reply_to": "x"}),
    ("swim.ack", {"seq": 1, "u": [["m", "x", "a", 1, 9, "o"]]}),
    ("swim.ack", {"seq": 1, "u": [["s", "x", "k", 1, {1: 2}]]}),
    ("swim.gossip", {"u": "nope"}),
    ("swim.sync", {"members": [], "entries": [], "reply_to": "x"}),
    ("swim.sync", {"members": [["s", "x", "k", 1, 1]], "entries": [], "reply_to": "x",
                   "reply": True}),
    ("swim.unknown", {}),
    ("swim.nack", []),
])
def test_decode_rejects_malformed(kind: str, body: object) -> None:
    with pytest.raises(ValueError):
        messages.decode(kind, body)


def test_a_member_believed_dead_learns_it_from_the_ack_to_its_ping() -> None:
    b = make("b", peers=("a",))
    b.receive(1.0, "c", messages.Gossip((messages.MemberUpdate("a", "addr-a", 2, Status.DEAD,
                                                               "c"),)))
    sent(b)
    b.receive(2.0, "a", messages.Ping(9, "b", "addr-a"))
    ack = of_type(sent(b), messages.Ack)[0].message
    assert isinstance(ack, messages.Ack)
    assert messages.MemberUpdate("a", "addr-a", 2, Status.DEAD, "b") in ack.updates
    a = make("a", incarnation=2, peers=("b",))
    a.receive(2.1, "b", ack)
    assert a.incarnation == 3  # refuted at once


def test_suspicion_of_a_stranger_introduces_it_and_death_of_one_does_not() -> None:
    a = make("a", peers=("b",))
    a.receive(1.0, "b", messages.Gossip((messages.MemberUpdate("x", "addr-x", 1, Status.DEAD,
                                                               "b"),)))
    assert "x" not in a.members
    a.receive(1.0, "b", messages.Gossip((messages.MemberUpdate("y", "addr-y", 1, Status.SUSPECT,
                                                               "b"),)))
    assert a.members["y"].status == Status.SUSPECT and "y" in a._suspicions
    a.receive(1.5, "y", messages.Gossip((messages.MemberUpdate("y", "addr-y", 2, Status.ALIVE,
                                                               "y"),)))
    assert a.members["y"].status == Status.ALIVE and "y" not in a._suspicions
