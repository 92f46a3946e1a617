"""Attacks by holders of certificates of the cluster's own CA who are not members.

A three-node local cluster of real processes, on loopback, with real mutual TLS.
The attacker holds one certificate signed by the cluster CA (a node certificate
made with ``certs node --id intruder``, a client certificate named like the node
role, a wildcard) and sends what a real attacker would. Each attack must be
refused, counted where it arrived, and leave every node's term and leader and the
data as they were.
"""

from __future__ import annotations

import asyncio
import ssl
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

import aiohttp
import pytest

from continuum.federation.distributed import pki
from continuum.federation.distributed.core.crdt import clock, replica
from continuum.federation.distributed.core.crdt import messages as crdt_messages
from continuum.federation.distributed.core.swim import messages as swim_messages
from continuum.federation.distributed.core.swim.membership import Status
from continuum.federation.distributed.transport import tls
from e2e.cluster import Cluster
from security.attacker import Attacker, Observer, cluster_ca, member_files, write

FIRST_IP = "127.0.31.11"
ATTACKER_IP = "127.0.31.99"
DOMAIN = "peers.test"
# Calm timings: an election during an attack would blur what the attack changed.
ENV = {"CONTINUUM_RAFT__ELECTION_TIMEOUT_MS": "[1000, 2000]",
       "CONTINUUM_RAFT__HEARTBEAT_INTERVAL_MS": "100",
       "CONTINUUM_PEER_DOMAIN": DOMAIN,
       "CONTINUUM_HTTP_READ_TIMEOUT_SECONDS": "2"}
CONCEPTS = ["s1", "e1"]


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    c = Cluster(tmp_path_factory.mktemp("outsiders") / "c", 3, FIRST_IP, env=ENV)
    c.start()
    yield c
    c.stop()


@pytest.fixture
async def seeded(cluster: Cluster) -> str:
    """The leader, once every node agrees on it and holds a strong and an eventual concept."""
    c = cluster
    leader = await c.wait_for(lambda: c.agreed_leader(), 60, "one leader on every node")
    await c.call(leader, lambda cl: cl.put("s1", {"v": "strong"}, strong=True))
    await c.call(leader, lambda cl: cl.put("e1", {"v": "eventual"}))

    async def everywhere() -> bool:
        for n in c.nodes:
            for cid in CONCEPTS:
                await c.call(n.node_id, lambda cl, cid=cid: cl.get(cid))
        return True

    await c.wait_for(everywhere, 30, "both concepts on every node")
    return leader


def _address(c: Cluster, node_id: str) -> str:
    return c.node(node_id).peer_address


def intruder(c: Cluster) -> Attacker:
    """``certs node --id intruder``: a real node certificate of the cluster CA, no member."""
    pair = pki.issue_node(cluster_ca(c), "intruder", ip_addresses=[ATTACKER_IP])
    return Attacker(write(c, "intruder", pair))


async def _attack_and_observe(c: Cluster, attack: Any, counted: tuple[str, ...],
                              nodes: list[str] | None = None) -> None:
    """Run ``attack(node_id)`` against each node, wait until each has counted the refusal
    under ``counted`` in its status, then check that nothing an attack could change did."""
    obs = Observer(c)
    targets = nodes or obs.nodes
    before = await obs.view(CONCEPTS)
    for node_id in targets:
        count = await obs.counter(node_id, *counted)
        await attack(node_id)
        await obs.until_counted(node_id, counted, count)
    after = await obs.view(CONCEPTS)
    assert after == before


async def test_a_max_term_vote_with_transfer_from_a_non_member_is_refused(
        cluster: Cluster, seeded: str) -> None:
    """The attack that ended a cluster for good: term 2^64-1, transfer=True. It is refused
    where decoded (no term above 2^48-1 is ever stored); a decodable one far ahead is
    refused by the core (the sender is no member)."""
    c, bad = cluster, intruder(cluster)
    forged = {"last_index": 10**9, "pre": False, "transfer": True}

    async def max_term(node_id: str) -> None:
        await bad.send(_address(c, node_id), "intruder", "raft.vote",
                       {"t": 2**64 - 1, "last_term": 2**64 - 1, **forged})

    async def far_ahead(node_id: str) -> None:
        await bad.send(_address(c, node_id), "intruder", "raft.vote",
                       {"t": 10**6, "last_term": 10**6, **forged})

    await _attack_and_observe(c, max_term, ("raft", "messages_rejected"))
    await _attack_and_observe(c, far_ahead, ("raft", "messages_refused"))


async def test_twenty_vote_requests_to_the_leader_move_neither_term_nor_leadership(
        cluster: Cluster, seeded: str) -> None:
    c, bad = cluster, intruder(cluster)
    term = (await c.call(seeded, lambda cl: cl.status()))["term"]

    async def votes(node_id: str) -> None:
        for k in range(20):
            await bad.send(_address(c, node_id), "intruder", "raft.vote",
                           {"t": term + 1 + 50 * k, "last_index": 10**6, "last_term": term,
                            "pre": k % 2 == 0, "transfer": False})

    await _attack_and_observe(c, votes, ("raft", "messages_refused"), [seeded])


async def test_timeout_now_from_anyone_but_the_leader_is_refused(cluster: Cluster,
                                                                 seeded: str) -> None:
    """From a non-member, and from a member that is not the leader (its own certificate)."""
    c, bad = cluster, intruder(cluster)
    followers = [n.node_id for n in c.nodes if n.node_id != seeded]
    term = (await c.call(seeded, lambda cl: cl.status()))["term"]

    async def from_intruder(node_id: str) -> None:
        await bad.send(_address(c, node_id), "intruder", "raft.timeout_now", {"t": term})

    other = followers[1]
    member = Attacker(member_files(c, other))

    async def from_a_member(node_id: str) -> None:
        await member.send(_address(c, node_id), other, "raft.timeout_now", {"t": term})

    await _attack_and_observe(c, from_intruder, ("raft", "messages_refused"), followers)
    await _attack_and_observe(c, from_a_member, ("raft", "messages_refused"), [followers[0]])


async def test_a_forged_heartbeat_does_not_send_clients_to_the_attacker(
        cluster: Cluster, seeded: str) -> None:
    c, bad = cluster, intruder(cluster)
    followers = [n.node_id for n in c.nodes if n.node_id != seeded]
    term = (await c.call(seeded, lambda cl: cl.status()))["term"]

    async def heartbeat(node_id: str) -> None:
        await bad.send(_address(c, node_id), "intruder", "raft.heartbeat",
                       {"t": term + 1, "commit": 0, "ctx": 0, "a": f"{ATTACKER_IP}:7000"},
                       times=5)

    await _attack_and_observe(c, heartbeat, ("raft", "messages_refused"), followers)
    for node_id in followers:
        st = await c.call(node_id, lambda cl: cl.status())
        assert st["leader_id"] == seeded
        assert c.files is not None
        admin = Attacker(c.files)
        status, body = await admin.api(c.url(node_id), "PUT",
                                       "/v1/concepts/s1?consistency=strong", {"v": "x"})
        assert status == 421 and body["leader_id"] == seeded
        assert body["leader_address"] == _address(c, seeded)


async def test_a_push_with_a_dominating_clock_from_a_non_member_is_refused(
        cluster: Cluster, seeded: str) -> None:
    """The concept stays as it was, on every node, and anti-entropy spreads nothing."""
    c, bad = cluster, intruder(cluster)
    evil = replica.Replica("intruder")
    top = clock.MAX_COUNTER - 1
    evil.collected["e1"] = (clock.VectorClock({n.node_id: top for n in c.nodes}), 0.0)
    _, state = evil.write("e1", {"v": "evil"}, time.time())
    body = crdt_messages.encode_push([("e1", state)])

    async def push(node_id: str) -> None:
        await bad.send(_address(c, node_id), "intruder", crdt_messages.PUSH, body)
        status, _ = await bad.call(_address(c, node_id), "intruder", crdt_messages.FETCH,
                                   {"states": crdt_messages.encode_states([("e1", state)]),
                                    "want": ["e1"]})
        assert status == 403

    await _attack_and_observe(c, push, ("replication", "refused"))


async def test_gossip_from_a_non_member_is_not_heard(cluster: Cluster, seeded: str) -> None:
    c, bad = cluster, intruder(cluster)
    victim = next(n.node_id for n in c.nodes if n.node_id != seeded)
    lie = swim_messages.MemberUpdate(victim, f"{ATTACKER_IP}:7000", 10**6, Status.DEAD,
                                     "intruder")
    gossip = swim_messages.encode(swim_messages.Gossip((lie,)))

    async def spread(node_id: str) -> None:
        await bad.send(_address(c, node_id), "intruder", "swim.gossip", gossip)
        ping = swim_messages.encode(swim_messages.Ping(1, node_id, f"{ATTACKER_IP}:7000", (lie,)))
        status, _ = await bad.call(_address(c, node_id), "intruder", "swim.ping_call", ping)
        assert status == 403

    await _attack_and_observe(c, spread, ("mesh", "messages_refused"))
    for node_id in (n.node_id for n in c.nodes):
        members = (await c.call(node_id, lambda cl: cl.status()))["members"]
        assert all(m["healthy"] for m in members), members
        assert {m["id"] for m in members} == {n.node_id for n in c.nodes}


async def test_a_client_certificate_named_like_the_node_role_is_no_node(
        cluster: Cluster, seeded: str) -> None:
    """Its common name is the node role URI (the CLI would refuse to make it; a CA signs
    what it is asked): the name counts for nothing, so it may not speak as a node."""
    c = cluster
    pair = pki.issue(cluster_ca(c), tls.NODE_ROLE_URI, dns_names=["node-9"],
                     uris=[tls.role_uri("read")], server=False)
    poser = Attacker(write(c, "cn-poser", pair))
    obs = Observer(c)
    before = await obs.view(CONCEPTS)
    for node in c.nodes:
        status, body = await poser.call(node.peer_address, "node-9", "raft.vote",
                                        {"t": 10**6, "last_index": 0, "last_term": 0,
                                         "pre": False, "transfer": True})
        assert status == 403 and b"not_a_node" in body
        with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
            await poser.send(node.peer_address, "node-9", "raft.timeout_now", {"t": 1})
        assert refused.value.status == 403
    assert await obs.view(CONCEPTS) == before


async def test_a_wildcard_certificate_cannot_pose_as_a_member(cluster: Cluster,
                                                              seeded: str) -> None:
    """``*.peers.test`` with the node role: without the wildcard opt-in it names no node."""
    c = cluster
    pair = pki.issue(cluster_ca(c), "wild", dns_names=[f"*.{DOMAIN}"],
                     uris=[tls.NODE_ROLE_URI])
    wild = Attacker(write(c, "wildcard", pair))
    term = (await c.call(seeded, lambda cl: cl.status()))["term"]
    obs = Observer(c)
    before = await obs.view(CONCEPTS)
    for node in c.nodes:
        status, body = await wild.call(node.peer_address, seeded, "raft.heartbeat",
                                       {"t": term + 1, "commit": 0, "ctx": 0})
        assert status == 403 and b"forged_sender" in body
        rejected = await obs.counter(node.node_id, "transport", "frames_rejected")
        await wild.send(node.peer_address, seeded, "raft.heartbeat",
                        {"t": term + 1, "commit": 0, "ctx": 0})
        await obs.until_counted(node.node_id, ("transport", "frames_rejected"), rejected)
    assert await obs.view(CONCEPTS) == before


async def test_a_member_cannot_speak_as_another(cluster: Cluster, seeded: str) -> None:
    c = cluster
    followers = [n.node_id for n in c.nodes if n.node_id != seeded]
    member = Attacker(member_files(c, followers[0]))
    status, body = await member.call(_address(c, followers[1]), seeded, "raft.heartbeat",
                                     {"t": 10**6, "commit": 0, "ctx": 0})
    assert status == 403 and b"forged_sender" in body


def test_data_is_private_to_the_node_user(cluster: Cluster) -> None:
    for node in cluster.nodes:
        data = cluster.data_dir / node.node_id / "data"
        assert oct(data.stat().st_mode & 0o777) == oct(0o700)
        files = [p for p in data.rglob("*") if p.is_file()]
        assert files and all(p.stat().st_mode & 0o077 == 0 for p in files), files
        dirs = [p for p in data.rglob("*") if p.is_dir()]
        assert all(p.stat().st_mode & 0o077 == 0 for p in dirs), dirs


@pytest.mark.parametrize("holder", ["read", "write", "admin", "node", "no-role"])
async def test_each_api_role_on_a_real_node(cluster: Cluster, seeded: str, holder: str) -> None:
    """Real client certificates of the cluster CA against routes of each level: a role
    reaches its routes and those below; a node certificate or one without a role reaches
    none. A refusal names the role needed and changes nothing."""
    c = cluster
    ca = cluster_ca(c)
    if holder in tls.API_ROLES:
        pair = pki.issue_client(ca, f"{holder}-user", role=holder)
    elif holder == "node":
        pair = pki.issue_node(ca, "intruder")
    else:
        pair = pki.issue(ca, "nobody", server=False)
    who = Attacker(write(c, f"api-{holder}", pair))
    calls = [("read", "GET", "/v1/concepts/s1", None),
             ("read", "GET", "/v1/status", None),
             ("write", "PUT", "/v1/concepts/w-" + holder, {"by": holder}),
             ("admin", "POST", "/v1/revocations", {"fingerprint": "0" * 64}),
             ("admin", "POST", "/v1/members", {"id": "intruder",
                                               "address": f"{ATTACKER_IP}:7000",
                                               "timeout": 0.5})]
    rank = {r: k for k, r in enumerate(tls.API_ROLES)}
    obs = Observer(c)
    before = await obs.view(CONCEPTS)
    for needed, method, path, body in calls:
        status, answer = await who.api(c.url(seeded), method, path, body)
        if holder in rank and rank[holder] >= rank[needed]:
            assert status != 403, (holder, path, answer)
        else:
            assert status == 403 and answer["role_needed"] == needed, (holder, path, answer)
    assert await obs.view(CONCEPTS) == before
    members = (await c.call(seeded, lambda cl: cl.status()))["members"]
    if holder != "admin":
        assert "intruder" not in {m["id"] for m in members}
    else:  # the admin asked for it: a learner that never catches up, removed again
        await c.call(seeded, lambda cl: cl.call("DELETE", "/v1/members/intruder"))


async def test_a_member_address_is_checked_before_anything_changes(cluster: Cluster,
                                                                   seeded: str) -> None:
    c = cluster
    assert c.files is not None
    admin = Attacker(c.files)
    for body in ({"id": "x", "address": "nope"}, {"id": "x\n", "address": "h:7000"},
                 {"id": "x", "address": "h:0"}):
        status, answer = await admin.api(c.url(seeded), "POST", "/v1/members", body)
        assert status == 400 and answer["error"] == "invalid", answer
    for node in c.nodes:
        members = (await c.call(node.node_id, lambda cl: cl.status()))["members"]
        assert {m["id"] for m in members} == {n.node_id for n in c.nodes}


async def test_small_inputs_are_refused_cleanly(cluster: Cluster, seeded: str) -> None:
    """Ids with a final newline, 5,000 levels of nesting, numbers JSON cannot hold, and a
    chunked body over the limit: each a clear 4xx, nothing stored."""
    c = cluster
    assert c.files is not None
    ctx = ssl.create_default_context(cafile=c.files.ca)
    ctx.check_hostname = False
    ctx.load_cert_chain(c.files.cert, c.files.key)
    url = c.url(seeded)

    async def big() -> AsyncIterator[bytes]:
        yield b'{"x": "'
        for _ in range(80):
            yield b"y" * 65536
        yield b'"}'

    cases: list[tuple[str, Any, int, str]] = [
        ("/v1/concepts/nl-test%0A", b'{"a": 1}', 400, "invalid"),
        ("/v1/concepts/deep", b"[" * 5000 + b"]" * 5000, 400, "too_deep"),
        ("/v1/concepts/inf", b'{"x": 1e400}', 400, "invalid_json"),
        ("/v1/concepts/ninf", b'{"x": -Infinity}', 400, "invalid_json"),
        ("/v1/concepts/chunked", big(), 413, "too_large"),
    ]
    async with aiohttp.ClientSession() as session:
        for path, data, status, code in cases:
            for query in ("", "?consistency=strong"):
                body = big() if path.endswith("chunked") else data
                async with session.put(url + path + query, data=body, ssl=ctx) as resp:
                    answer = await resp.json()
                    assert (resp.status, answer["error"]) == (status, code), (path, answer)
        async with session.get(url + "/v1/concepts", ssl=ctx) as resp:
            listed = (await resp.json())["items"]
    assert not {"nl-test", "nl-test\n", "deep", "inf", "ninf", "chunked"} & set(listed)


async def test_slow_clients_lose_their_connection(cluster: Cluster, seeded: str) -> None:
    """Headers trickled byte by byte (slowloris) and a body that never arrives: the node
    closes the first after its read timeout (2 s here) and answers the second 408."""
    c = cluster
    assert c.files is not None
    ctx = ssl.create_default_context(cafile=c.files.ca)
    ctx.check_hostname = False
    ctx.load_cert_chain(c.files.cert, c.files.key)
    host, port = c.node(seeded).ip, c.node(seeded).port
    reader, writer = await asyncio.open_connection(host, port, ssl=ctx)
    started = time.monotonic()
    closed = False
    try:
        for byte in b"GET /v1/status HTTP/1.1\r\nHost: x\r\nX-Slow: " + b"a" * 200:
            writer.write(bytes([byte]))
            await writer.drain()
            if reader.at_eof() or await _closed(reader):
                closed = True
                break
    except (ConnectionError, ssl.SSLError):
        closed = True
    finally:
        writer.close()
    assert closed and time.monotonic() - started < 10

    reader, writer = await asyncio.open_connection(host, port, ssl=ctx)
    try:
        writer.write(b"PUT /v1/concepts/slow HTTP/1.1\r\nHost: x\r\n"
                     b"Content-Type: application/json\r\nContent-Length: 100\r\n\r\n{")
        await writer.drain()
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
        assert head.startswith(b"HTTP/1.1 408")
    finally:
        writer.close()


async def _closed(reader: asyncio.StreamReader) -> bool:
    """True once the server hung up; waits a little between the attacker's bytes."""
    try:
        data = await asyncio.wait_for(reader.read(1), 0.05)
    except TimeoutError:
        return False
    return data == b""


def test_the_cluster_kept_its_secrets_out_of_the_logs(cluster: Cluster) -> None:
    keys = [p.read_text().splitlines()[1] for p in (cluster.data_dir / "attacker").rglob(
        "tls.key")]
    for log in cluster.local.log_dir.glob("*.log"):
        text = log.read_text()
        assert "PRIVATE KEY" not in text and not any(k in text for k in keys)
