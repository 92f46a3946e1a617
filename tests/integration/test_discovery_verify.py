"""Peer verification over real mutual TLS, the persistent cache, and formation."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from continuum.federation.distributed import discovery, pki
from continuum.federation.distributed.core import formation
from continuum.federation.distributed.discovery import DiscoveryConfig, DiscoveryMethod
from integration.discovery_helpers import eventually, make_node, verified_ids

CLUSTER = "demo"


@pytest.fixture
def ca() -> pki.KeyPair:
    return pki.create_ca()


def cfg(**kw: object) -> DiscoveryConfig:
    base: dict[str, object] = dict(
        enabled_methods={DiscoveryMethod.BOOTSTRAP, DiscoveryMethod.STATIC,
                         DiscoveryMethod.GOSSIP},
        cluster_name=CLUSTER, verify_timeout_seconds=3.0, discovery_interval_seconds=60.0)
    base.update(kw)
    return DiscoveryConfig(**base)  # type: ignore[arg-type]


@contextlib.asynccontextmanager
async def serving(node: discovery.NodeDiscovery) -> AsyncIterator[str]:
    """Run ``node``'s server only (no discovery loop); yield its address."""
    assert node.transport is not None
    await node.transport.start()
    try:
        assert node.transport.address
        yield node.transport.address
    finally:
        await node.stop()
        await node.transport.stop()


async def test_peers_verify_each_other_and_hello_teaches_the_callee(
        tmp_path: Path, ca: pki.KeyPair) -> None:
    b = make_node(tmp_path, ca, "node-b", cfg())
    await b.start()
    try:
        assert b.transport is not None and b.transport.address
        a = make_node(tmp_path, ca, "node-a", cfg(bootstrap_nodes=[b.transport.address]))
        ups: list[str | None] = []
        a.register_discovery_callback(
            lambda kind, n: ups.append(n.node_id) if kind == "up" else None)
        await a.start()
        try:
            await eventually(lambda: ups == ["node-b"])
            [nb] = await a.get_nodes(verified_only=True)
            assert nb.address == b.transport.address and "bootstrap" in nb.sources
            # b never had a's address: a's hello told it, and b verified a on its own
            assert await eventually(lambda: verified_ids(b)) == {"node-a"}
            [na] = await b.get_nodes()
            assert na.sources == {"gossip"}
        finally:
            await a.stop()
    finally:
        await b.stop()


async def test_a_peer_with_a_foreign_ca_is_never_verified(tmp_path: Path,
                                                          ca: pki.KeyPair) -> None:
    foreign = pki.create_ca("someone-elses-ca")
    # same node id, a real node cert, but from another CA (and trusting that CA)
    evil = make_node(tmp_path / "evil", foreign, "node-b", cfg())
    async with serving(evil) as addr:
        a = make_node(tmp_path, ca, "node-a", cfg(static_nodes={"node-b": addr},
                                                  bootstrap_nodes=[addr]))
        ups: list[str] = []
        a.register_discovery_callback(lambda kind, n: ups.append(kind))
        async with serving(a):
            for _ in range(2):
                found = await a.discover_now()
                assert [n.verified for n in found] == [False]
            assert found[0].last_error and "certificate" in found[0].last_error.lower()
            assert await a.get_nodes(verified_only=True) == []
            assert ups == []
            assert a.get_stats()["verifications_failed"] >= 1
            # proven foreign, not merely silent: it does not hold up forming a cluster
            assert "not verified" not in a.formation_decision().reason


async def test_a_foreign_peer_cannot_get_verified_by_calling_us(tmp_path: Path,
                                                                ca: pki.KeyPair) -> None:
    foreign = pki.create_ca("someone-elses-ca")
    a = make_node(tmp_path, ca, "node-a", cfg())
    async with serving(a) as addr:
        # the intruder trusts our CA, so it can check our cert, but its own is foreign
        evil = make_node(tmp_path / "evil", foreign, "node-x", cfg(bootstrap_nodes=[addr]),
                         trust=ca)
        async with serving(evil):
            await evil.discover_now()
            assert a.get_stats()["hellos_received"] == 0  # refused during the TLS handshake
            assert await a.get_nodes() == []


async def test_a_peer_whose_cert_speaks_for_another_id_is_not_verified(
        tmp_path: Path, ca: pki.KeyPair) -> None:
    # a genuine member of our CA, but it is node-3 that answers where node-2 should be
    imposter = make_node(tmp_path, ca, "node-3", cfg())
    async with serving(imposter) as addr:
        a = make_node(tmp_path, ca, "node-a", cfg(static_nodes={"node-2": addr}))
        async with serving(a):
            [n] = await a.discover_now()
            assert not n.verified and n.node_id == "node-2"
            assert n.last_error and "node-2" in n.last_error
            assert await a.verify_node("node-2", verified=False)  # API: by hand, by id


async def test_verifying_an_id_asks_the_nodes_known_by_address_only(
        tmp_path: Path, ca: pki.KeyPair) -> None:
    """verify_node("node-2") when node-2 is one of the bootstrap addresses: the one that
    proves it is node-2 is verified, the others stay as they were (no automatic checks)."""
    two = make_node(tmp_path, ca, "node-2", cfg(), host="127.0.20.42")
    three = make_node(tmp_path, ca, "node-3", cfg(), host="127.0.20.43")
    async with serving(two) as addr2, serving(three) as addr3:
        a = make_node(tmp_path, ca, "node-a", cfg(bootstrap_nodes=[addr2, addr3], verify=False),
                      host="127.0.20.41")
        async with serving(a):
            await a.discover_now()
            assert [n.node_id for n in await a.get_nodes()] == [None, None]
            assert await a.verify_node("node-2", verified=True)
            [n] = await a.get_nodes(verified_only=True)
            assert (n.node_id, n.address) == ("node-2", addr2)
            assert {n.node_id for n in await a.get_nodes()} == {"node-2", None}
            # an id none of them has: the verdict waits for a node that says it
            assert await a.verify_node("node-9", verified=True)
            assert a.get_stats()["pending_verifications"] == 1
            assert not await a.verify_node("node-9", verified=False)
            assert a.get_stats()["pending_verifications"] == 0


async def test_a_node_that_lies_about_its_id_in_the_reply_is_not_verified(
        tmp_path: Path, ca: pki.KeyPair) -> None:
    # its certificate says node-3, and it claims node-2 in the frame: refused
    liar = make_node(tmp_path, ca, "node-2", cfg(), cert_id="node-3")
    async with serving(liar) as addr:
        a = make_node(tmp_path, ca, "node-a", cfg(bootstrap_nodes=[addr]))
        async with serving(a):
            [n] = await a.discover_now()
            assert not n.verified
            assert n.last_error and "certificate" in n.last_error


async def test_a_peer_of_another_cluster_is_not_verified(tmp_path: Path,
                                                          ca: pki.KeyPair) -> None:
    other = make_node(tmp_path, ca, "node-b", cfg(cluster_name="other"))
    async with serving(other) as addr:
        a = make_node(tmp_path, ca, "node-a", cfg(bootstrap_nodes=[addr]))
        async with serving(a):
            [n] = await a.discover_now()
            assert not n.verified and "cluster 'other'" in (n.last_error or "")


async def test_the_cache_finds_peers_again_after_a_restart(tmp_path: Path,
                                                           ca: pki.KeyPair) -> None:
    b = make_node(tmp_path, ca, "node-b", cfg())
    async with serving(b) as addr:
        store = tmp_path / "a-data"
        a = make_node(tmp_path, ca, "node-a", cfg(bootstrap_nodes=[addr]), storage=store)
        await a.start()
        await eventually(lambda: verified_ids(a))
        await a.stop()
        assert a.transport is not None
        await a.transport.stop()

        # restarted without any source but its cache
        a2 = make_node(tmp_path, ca, "node-a", cfg(), storage=store)
        await a2.start()
        try:
            assert a2.get_stats()["cache_loaded"] == 1
            assert await eventually(lambda: verified_ids(a2)) == {"node-b"}
            [n] = await a2.get_nodes()
            assert n.sources == {"cache"} and n.address == addr
        finally:
            await a2.stop()


async def test_a_disproved_peer_leaves_the_cache(tmp_path: Path, ca: pki.KeyPair) -> None:
    store = tmp_path / "a-data"
    b = make_node(tmp_path, ca, "node-b", cfg())
    async with serving(b) as addr:
        a = make_node(tmp_path, ca, "node-a", cfg(bootstrap_nodes=[addr]), storage=store)
        await a.start()
        await eventually(lambda: verified_ids(a))
        await a.stop()
    # the address now belongs to a node of another cluster
    other = discovery.NodeDiscovery(
        "node-b", cfg(cluster_name="other"), bind_address=addr,
        tls_cert=str(tmp_path / "certs/node-b/node-b/tls.crt"),
        tls_key=str(tmp_path / "certs/node-b/node-b/tls.key"),
        tls_ca=str(tmp_path / "certs/node-b/node-b/ca.crt"))
    async with serving(other):
        a2 = make_node(tmp_path, ca, "node-a", cfg(), storage=store)
        async with serving(a2):
            await a2.start()
            await eventually(lambda: a2.get_stats()["verifications_failed"] >= 1)
            await a2.stop()
    a3 = make_node(tmp_path, ca, "node-a", cfg(), storage=store)
    await a3.start()
    try:
        assert a3.get_stats()["cache_loaded"] == 0
    finally:
        await a3.stop()


async def test_ordinal_zero_founds_and_the_others_join_it(tmp_path: Path,
                                                          ca: pki.KeyPair) -> None:
    names = ["demo-0", "demo-1", "demo-2"]
    nodes = {n: make_node(tmp_path, ca, n, cfg(formation_mode="ordinal",
                                               formation_stable_seconds=0.5)) for n in names}
    try:
        for n in nodes.values():
            assert n.transport is not None
            await n.transport.start()
        addrs = {k: v.transport.address for k, v in nodes.items() if v.transport}
        # hints arrive in a scrambled order: everyone is told about everyone else by gossip
        for me, node in reversed(nodes.items()):
            for other in reversed(names):
                if other != me:
                    await node.register_node(other, addrs[other] or "")
        for node in nodes.values():
            await node.start()
        d0 = await eventually(lambda: isinstance(nodes["demo-0"].formation_decision(),
                                                 formation.Bootstrap)
                              and nodes["demo-0"].formation_decision())
        assert isinstance(d0, formation.Bootstrap)
        for n in ("demo-1", "demo-2"):
            d = nodes[n].formation_decision()
            assert isinstance(d, formation.Wait) and "demo-0" in d.reason
        nodes["demo-0"].set_formed()  # it bootstrapped
        for n in ("demo-1", "demo-2"):
            d = await eventually(lambda n=n: isinstance(nodes[n].formation_decision(),
                                                        formation.Join)
                                 and nodes[n].formation_decision(), timeout=30)
            assert isinstance(d, formation.Join) and d.targets == (addrs["demo-0"],)
        assert isinstance(nodes["demo-0"].formation_decision(), formation.Resume)
    finally:
        for node in nodes.values():
            await node.stop()


async def test_the_founder_waits_while_a_listed_candidate_does_not_answer(
        tmp_path: Path, ca: pki.KeyPair) -> None:
    # nothing listens on the static peer's address: it might be a member of a live cluster
    a = make_node(tmp_path, ca, "demo-0", cfg(static_nodes={"demo-1": "127.0.0.1:1"},
                                              formation_mode="ordinal",
                                              formation_stable_seconds=0.0))
    async with serving(a):
        [n] = await a.discover_now()
        assert not n.verified and n.last_error
        d = a.formation_decision()
        assert isinstance(d, formation.Wait) and "not verified" in d.reason
        await a.remove_node("demo-1")
        assert isinstance(a.formation_decision(), formation.Bootstrap)
