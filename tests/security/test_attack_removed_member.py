"""A removed member comes back: its certificate was revoked with its removal.

Three real node processes; an admin removes one member. Its certificate fingerprint
lands in the cluster's denylist (replicated through Raft), every node refuses it at
once, and the removed node, restarted with its old certificate as a new pod would be,
cannot join again. Term, leader and data stay as they were.
"""

from __future__ import annotations

from collections.abc import Iterator

import aiohttp
import pytest

from continuum.federation.distributed.transport import tls
from e2e.cluster import Cluster
from security.attacker import Attacker, Observer, member_files

FIRST_IP = "127.0.32.11"
ENV = {"CONTINUUM_RAFT__ELECTION_TIMEOUT_MS": "[1000, 2000]",
       "CONTINUUM_RAFT__HEARTBEAT_INTERVAL_MS": "100"}


@pytest.fixture
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    c = Cluster(tmp_path_factory.mktemp("removed") / "c", 3, FIRST_IP, env=ENV)
    c.start()
    yield c
    c.stop()


async def test_a_removed_member_is_refused_at_once_and_cannot_come_back(
        cluster: Cluster) -> None:
    c = cluster
    leader = await c.wait_for(lambda: c.agreed_leader(), 60, "one leader on every node")
    await c.call(leader, lambda cl: cl.put("s1", {"v": 1}, strong=True))
    gone = next(n.node_id for n in c.nodes if n.node_id != leader)
    stay = [n.node_id for n in c.nodes if n.node_id != gone]
    fingerprint = tls.file_fingerprints(member_files(c, gone).cert)[0]

    answer = await c.call(leader, lambda cl: cl.call("DELETE", f"/v1/members/{gone}"))
    assert answer["revoked_certificates"] == [fingerprint]

    async def denied_everywhere() -> bool:
        for node_id in stay:
            listed = await c.call(node_id, lambda cl: cl.call("GET", "/v1/revocations"))
            if fingerprint not in listed["revoked"]:
                return False
        return True

    await c.wait_for(denied_everywhere, 30, "the revocation to reach every member")
    obs = Observer(c, stay)
    before = await obs.view(["s1"])

    # The removed member's own key, in an attacker's hands (or its process, still up).
    old = Attacker(member_files(c, gone))
    term = before.terms[leader]
    for node_id in stay:
        address = c.node(node_id).peer_address
        status, body = await old.call(address, gone, "raft.vote",
                                      {"t": term + 1, "last_index": 10**6, "last_term": term,
                                       "pre": False, "transfer": True})
        assert status == 403 and b"revoked" in body
        with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
            await old.send(address, gone, "raft.timeout_now", {"t": term})
        assert refused.value.status == 403

    # Restarted onto its old volume with its old certificate, as a new pod: it asks to
    # join and is refused for its certificate.
    c.local.kill(gone)
    c.local.prepare()
    c.local.joining = [gone]  # not a member any more: it joins through the others
    c.local.start_node(gone)
    log = c.local.log_dir / f"{gone}.log"

    async def refused_again_and_again() -> bool:  # it keeps trying; every try is refused
        return log.read_text().count('"error": "revoked"') >= 4

    await c.wait_for(refused_again_and_again, 60, f"{gone} to be refused for its certificate")
    assert await obs.view(["s1"]) == before
    for node_id in stay:
        members = (await c.call(node_id, lambda cl: cl.status()))["members"]
        assert {m["id"] for m in members} == set(stay)
