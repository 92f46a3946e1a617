"""The fake federation behind the operator's emulator scenarios (``tests/operator/harness.py``)
answers the operator's calls as real nodes do; otherwise those scenarios would prove the
operator against a node that does not exist.

Every call the operator makes goes, through the operator's own ``NodeClient`` and an
operator client certificate, both to a real three-node local cluster and to a three-pod fake,
and the outcomes are compared: the status fields the fake serves (a subset of the real ones,
with the same types), redirects from a follower, the refusals and their codes, a learner that
has not caught up, its removal, and a leadership transfer.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Awaitable
from pathlib import Path
from typing import Any

import pytest

from continuum.federation.distributed import errors, pki
from continuum_operator import certificates, node_client
from e2e.cluster import Cluster
from e2e.operator_world import harness  # tests/operator/harness.py (puts its folder on the path)

import builders  # isort: skip  (tests/operator: on the path once harness is imported)

pytestmark = pytest.mark.timeout(180)


class Side:
    """One federation as the operator sees it: a client and where each node listens."""

    def __init__(self, client: node_client.NodeClient, addresses: dict[str, str]) -> None:
        self.client = client
        self.addresses = addresses
        self.leader = ""

    def at(self, node: str) -> tuple[str, str]:
        return self.addresses[node], node

    async def status(self, node: str) -> dict[str, Any]:
        return await self.client.status(*self.at(node))

    def follower(self) -> str:
        return next(n for n in sorted(self.addresses) if n != self.leader)


async def outcome(call: Awaitable[Any]) -> tuple[Any, ...]:
    """What the operator can tell apart: success (and its shape), a redirect, a refusal."""
    try:
        result = await call
    except node_client.NodeError as exc:
        if isinstance(exc.error, errors.NotLeader):
            return ("not_leader", exc.error.leader_id is not None,
                    exc.error.leader_address is not None)
        return ("error", exc.status, exc.code)
    if isinstance(result, dict):
        return ("ok", tuple(sorted(result)))
    return ("ok", result)


def json_type(value: Any) -> str:
    return {bool: "bool", int: "number", float: "number", str: "string", list: "list",
            dict: "object"}[type(value)]


def assert_subset_with_types(fake: dict[str, Any], real: dict[str, Any], where: str) -> None:
    missing = sorted(set(fake) - set(real))
    assert not missing, f"the fake's {where} has fields no real node serves: {missing}"
    for key, value in fake.items():
        if value is not None and real[key] is not None:
            assert json_type(value) == json_type(real[key]), f"{where}.{key}"


@pytest.fixture
def real(tmp_path: Path) -> Any:
    c = Cluster(tmp_path / "real", 3, "127.0.116.11")
    c.start()
    yield c
    c.stop()


async def test_the_fake_federation_answers_the_operator_as_real_nodes_do(
        real: Cluster, tmp_path: Path) -> None:
    leader = await real.wait_for(lambda: real.agreed_leader(), 60, "a leader")
    ca = pki.load_ca(tmp_path / "real" / "pki" / "ca-key")
    operator = pki.issue_client(ca, "operator", role="admin")
    r = Side(node_client.NodeClient(
        node_client.Material(operator.cert_pem, operator.key_pem, ca.cert_pem), None,
        timeout=20), {n.node_id: n.peer_address for n in real.nodes})
    r.leader = leader

    plan = certificates.plan(builders.cluster(namespace=harness.NS), {},
                             dt.datetime.now(dt.UTC))
    secrets = {s["metadata"]["name"]: certificates.decode(s) for s in plan.secrets}
    material = node_client.Material.from_secret_data(secrets["demo-operator-client-tls"])
    assert material is not None
    fed = harness.FakeFederation("demo", harness.free_port(), tmp_path / "fake")
    f = Side(node_client.NodeClient(material, fed.peer_domain, timeout=20),
             {p: f"{fed.ip(p)}:{fed.port}" for p in ("demo-0", "demo-1", "demo-2")})
    try:
        for pod in f.addresses:
            await fed.start_node(pod, secrets["demo-tls"] or {})
        f.leader = "demo-0"  # the fake's ordinal 0 bootstraps; the operator adds the others
        for pod in ("demo-1", "demo-2"):
            await f.client.add_member(*f.at(f.leader), pod, f"{pod}.{fed.peer_domain}:7000",
                                      timeout=10)

        # Status: everything the fake serves, a real node serves too, with the same types.
        for side_node in ((r, r.leader), (r, r.follower()), (f, f.leader), (f, f.follower())):
            assert (await side_node[0].status(side_node[1]))["node_id"] == side_node[1]
        for real_node, fake_node in ((r.leader, f.leader), (r.follower(), f.follower())):
            got_real, got_fake = await r.status(real_node), await f.status(fake_node)
            assert got_fake["role"] == got_real["role"]
            assert_subset_with_types(got_fake, got_real, "status")
            assert_subset_with_types(got_fake["raft"], got_real["raft"], "status.raft")
            for member_real, member_fake in zip(got_real["members"], got_fake["members"],
                                                strict=True):
                assert_subset_with_types(member_fake, member_real, "status.members[]")

        async def both(call: Any) -> tuple[Any, ...]:
            """Run ``call(side)`` against each; they must come out the same."""
            got_real, got_fake = await outcome(call(r)), await outcome(call(f))
            assert got_real == got_fake, f"real {got_real} != fake {got_fake}"
            return got_real

        timeout = {"timeout": 10.0}
        # A leader-only call on a follower is a redirect that names the leader.
        assert await both(lambda s: s.client.add_member(
            *s.at(s.follower()), "x-9", "x-9:7000", **timeout)) == ("not_leader", True, True)
        # Removing what is not a member is "already removed", at the client and on the wire.
        assert await both(lambda s: s.client.remove_member(
            *s.at(s.leader), "nobody", **timeout)) == ("ok", False)
        assert await both(lambda s: s.client.call(
            *s.at(s.leader), "DELETE", "/v1/members/nobody")) == ("error", 404, "not_a_member")
        # Refusals that change nothing are 409 with their reason.
        assert await both(lambda s: s.client.transfer_leadership(
            *s.at(s.leader), "nobody", **timeout)) == ("error", 409, "no_target")
        assert await both(lambda s: s.client.force_new_cluster(
            *s.at(s.follower()), **timeout)) == ("error", 409, "has_leader")

        # A member whose pod is not up yet: it stays a learner and the call says why, before
        # the client's own deadline; removing it (scaled back down) does not wait behind it.
        newcomer = {r: ("node-9", "127.0.116.19:7000"),
                    f: ("demo-3", f"demo-3.{fed.peer_domain}:7000")}
        assert await both(lambda s: s.client.add_member(
            *s.at(s.leader), *newcomer[s], timeout=6)) == ("error", 409, "not_caught_up")
        for s in (r, f):
            members = {m["id"]: m["voter"] for m in (await s.status(s.leader))["members"]}
            assert members[newcomer[s][0]] is False, members
        assert await both(lambda s: s.client.remove_member(
            *s.at(s.leader), newcomer[s][0], **timeout)) == ("ok", True)
        for s in (r, f):
            assert newcomer[s][0] not in {m["id"] for m in (await s.status(s.leader))["members"]}

        # A transfer without a target picks another voter, which then leads.
        assert await both(lambda s: s.client.transfer_leadership(
            *s.at(s.leader), None, **timeout)) == ("ok", ("leader_id",))
        new_leader = await real.wait_for(lambda: real.agreed_leader(), 30, "the new leader")
        assert new_leader != r.leader and fed.leader != f.leader
    finally:
        await r.client.close()
        await f.client.close()
        await fed.stop()
