"""The peer transport over real TLS sockets on loopback: who gets in, what is refused."""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import msgpack
import pytest

from conftest import TestPKI
from continuum.federation.distributed.transport import peer, tls, wire


@pytest.fixture
async def server(cluster_pki: TestPKI) -> AsyncIterator[peer.PeerTransport]:
    t = peer.PeerTransport("n2", "127.0.0.1:0", cluster_pki.node("n2"),
                           limits=peer.TransportLimits(max_frame_bytes=64 * 1024))
    t.on("echo", lambda sender, body: {"sender": sender, **body})
    await t.start()
    yield t
    await t.stop()


@pytest.fixture
async def client(cluster_pki: TestPKI) -> AsyncIterator[peer.PeerTransport]:
    t = peer.PeerTransport("n1", None, cluster_pki.node("n1"))
    await t.start()
    yield t
    await t.stop()


def _raw_context(files: tls.TLSFiles | None, ca: str, *, max_version: ssl.TLSVersion | None = None
                 ) -> ssl.SSLContext:
    ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=ca)
    ctx.check_hostname = False
    if max_version is not None:
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        ctx.maximum_version = max_version
    if files is not None:
        ctx.load_cert_chain(files.cert, files.key)
    return ctx


async def _post(server: peer.PeerTransport, ctx: ssl.SSLContext, data: bytes,
                path: str = peer.CALL_PATH) -> tuple[int, Any]:
    async with aiohttp.ClientSession() as session, session.post(
        f"https://{server.address}{path}", data=data, ssl=ctx,
        timeout=aiohttp.ClientTimeout(total=10),
    ) as resp:
        body = await resp.read()
        return resp.status, body


def _frame(sender: str, kind: str = "echo", body: dict[str, Any] | None = None) -> bytes:
    return wire.encode(wire.Frame(sender, (wire.Message(kind, body or {"x": 1}),)))


async def _still_serves(server: peer.PeerTransport, client: peer.PeerTransport) -> None:
    reply = await client.request(server.address or "", "echo", {"x": 7}, expect="n2")
    assert reply == {"sender": "n1", "x": 7}


async def test_call_round_trip_binds_sender_to_certificate(server: peer.PeerTransport,
                                                           client: peer.PeerTransport) -> None:
    await _still_serves(server, client)


async def test_one_way_messages_arrive_in_order_batched(server: peer.PeerTransport,
                                                        client: peer.PeerTransport) -> None:
    got: asyncio.Queue[int] = asyncio.Queue()
    server.on("note", lambda sender, body: got.put_nowait(body["i"]))
    for i in range(500):
        assert client.send(server.address or "", "note", {"i": i})
    received = [await asyncio.wait_for(got.get(), 10) for _ in range(500)]
    assert received == list(range(500))
    assert client.stats["frames_sent"] < 500  # batched, not one request per message


@pytest.mark.parametrize("case", ["no_cert", "foreign_ca", "expired", "tls12"])
async def test_refused_clients(case: str, server: peer.PeerTransport, client: peer.PeerTransport,
                               cluster_pki: TestPKI, foreign_pki: TestPKI) -> None:
    ca = cluster_pki.node("n1").ca
    if case == "no_cert":
        ctx = _raw_context(None, ca)
    elif case == "foreign_ca":
        ctx = _raw_context(foreign_pki.node("n1"), ca)
    elif case == "expired":
        ctx = _raw_context(cluster_pki.expired_node("n1"), ca)
    else:
        ctx = _raw_context(cluster_pki.node("n1"), ca, max_version=ssl.TLSVersion.TLSv1_2)
    with pytest.raises((aiohttp.ClientError, ssl.SSLError, ConnectionError)):
        await _post(server, ctx, _frame("n1"))
    await _still_serves(server, client)


async def test_client_certificate_cannot_speak_as_node(server: peer.PeerTransport,
                                                       client: peer.PeerTransport,
                                                       cluster_pki: TestPKI) -> None:
    files = cluster_pki.client("admin")
    status, body = await _post(server, _raw_context(files, files.ca), _frame("admin"))
    assert status == 403
    assert b"not_a_node" in body
    assert b"urn:continuum:role:node" in body  # says what a node certificate needs


# Frames of kind "note", which only the stream test handles: none of them may get that far.
BAD_FRAMES = pytest.mark.parametrize(
    ("payload", "status", "code"),
    [
        (b"\xc1\xff garbage", 400, b"malformed"),
        (_frame("n1", "note")[:-3], 400, b"malformed"),
        (msgpack.packb({"v": 99, "from": "n1", "msgs": [{"k": "note", "b": {}}]}), 400,
         b"bad_version"),
        (msgpack.packb({"v": 1, "from": "n1", "msgs": []}), 400, b"malformed"),
        (msgpack.packb({"v": 1, "from": "n1", "msgs": [{"k": "note", "b": [1]}]}), 400,
         b"malformed"),
        (msgpack.packb([1, 2, 3]), 400, b"malformed"),
        (b"", 400, b"malformed"),
        (_frame("n1", "note", body={"blob": b"x" * 100_000}), 413, b"too_large"),
        (_frame("n3", "note"), 403, b"forged_sender"),  # n1's certificate, n3's name
    ],
    ids=["garbage", "truncated", "wrong_version", "no_messages", "body_not_map", "not_map",
         "empty", "oversized", "forged_sender"],
)


@BAD_FRAMES
async def test_bad_calls_get_clear_errors_and_server_keeps_serving(
    payload: bytes, status: int, code: bytes, server: peer.PeerTransport,
    client: peer.PeerTransport, cluster_pki: TestPKI,
) -> None:
    files = cluster_pki.node("n1")
    got_status, body = await _post(server, _raw_context(files, files.ca), payload)
    assert got_status == status
    assert code in body
    await _still_serves(server, client)


@BAD_FRAMES
async def test_bad_stream_frames_close_the_stream_and_server_keeps_serving(
    payload: bytes, status: int, code: bytes, server: peer.PeerTransport,
    client: peer.PeerTransport, cluster_pki: TestPKI,
) -> None:
    """On the one-way stream a bad frame closes it with a code saying why; nothing of the
    frame reaches a handler, and other peers' streams and calls go on."""
    got: asyncio.Queue[tuple[str, Any]] = asyncio.Queue()
    server.on("note", lambda sender, body: got.put_nowait((sender, body)))
    assert client.send(server.address or "", "note", {"i": 0})  # another peer's stream
    assert await asyncio.wait_for(got.get(), 10) == ("n1", {"i": 0})
    rejected = server.stats["frames_rejected"]
    files = cluster_pki.node("n1")
    async with aiohttp.ClientSession() as session, session.ws_connect(
        f"https://{server.address}{peer.STREAM_PATH}", ssl=_raw_context(files, files.ca)
    ) as ws:
        await ws.send_bytes(payload)
        msg = await ws.receive(timeout=10)
        assert msg.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED)
        if status == 413:
            # Refused from its header, before it is buffered whole; the server's close
            # may then reach the sender as a reset, its unsent remainder being refused.
            assert ws.close_code in (aiohttp.WSCloseCode.MESSAGE_TOO_BIG,
                                     aiohttp.WSCloseCode.ABNORMAL_CLOSURE)
        else:
            assert ws.close_code == aiohttp.WSCloseCode.POLICY_VIOLATION
            assert msg.extra is not None and code.decode() in msg.extra
    assert server.stats["frames_rejected"] == rejected + 1
    assert got.empty()
    assert client.send(server.address or "", "note", {"i": 1})
    assert await asyncio.wait_for(got.get(), 10) == ("n1", {"i": 1})
    await _still_serves(server, client)


async def test_unknown_kind_is_404(server: peer.PeerTransport, client: peer.PeerTransport) -> None:
    with pytest.raises(peer.PeerError) as err:
        await client.request(server.address or "", "nope", {})
    assert err.value.status == 404


async def test_expect_checks_server_identity(server: peer.PeerTransport,
                                             client: peer.PeerTransport) -> None:
    with pytest.raises(peer.PeerError, match="expected node 'n9'"):
        await client.request(server.address or "", "echo", {}, expect="n9")


async def test_unreachable_peer_fails_fast_and_send_drops(client: peer.PeerTransport) -> None:
    with pytest.raises(peer.PeerError):
        await client.request("127.0.0.1:1", "echo", {}, timeout=2)
    assert client.send("127.0.0.1:1", "note", {})


async def test_outbox_is_bounded(cluster_pki: TestPKI) -> None:
    t = peer.PeerTransport("n1", None, cluster_pki.node("n1"),
                           limits=peer.TransportLimits(outbox_size=10))
    await t.start()
    try:
        results = [t.send("127.0.0.1:1", "note", {"i": i}) for i in range(50)]
        assert results.count(True) == 10
        assert t.stats["messages_dropped"] >= 40
    finally:
        await t.stop()


def test_tls_material_required() -> None:
    with pytest.raises(tls.TLSConfigError):
        peer.PeerTransport("n1", "127.0.0.1:0", None)
    with pytest.raises(tls.TLSConfigError, match="together"):
        tls.TLSFiles.optional("a", None, None)


def test_identity_comes_from_subject_alt_names_only() -> None:
    """The common name never counts: a client certificate whose common name is the node
    role (or a node's id) holds neither."""
    cert = {"subject": ((("commonName", tls.NODE_ROLE_URI),),),
            "subjectAltName": (("URI", "urn:continuum:role:read"),)}
    identity = tls.identity_from_peercert(cert)
    assert not tls.is_node(identity)
    assert identity.api_role == "read"
    named = tls.identity_from_peercert({"subject": ((("commonName", "n1"),),),
                                        "subjectAltName": (("URI", tls.NODE_ROLE_URI),)})
    assert tls.is_node(named) and not tls.authorizes(named, "n1")
    # A DNS name that looks like the role URI is a DNS name, not the role.
    dns = tls.identity_from_peercert({"subjectAltName": (("DNS", tls.NODE_ROLE_URI),)})
    assert not tls.is_node(dns)


def test_wildcards_count_only_when_opted_in_and_only_for_the_peer_domain() -> None:
    domain = "demo-peers.ns.svc.cluster.local"
    wild = tls.identity_from_peercert({"subjectAltName": (("DNS", f"*.{domain}"),
                                                          ("URI", tls.NODE_ROLE_URI))})
    assert not tls.authorizes(wild, "demo-0", domain)  # not opted in
    assert tls.authorizes(wild, "demo-0", domain, wildcard=True)
    assert not tls.authorizes(wild, "demo-0", wildcard=True)  # no peer domain
    assert not tls.authorizes(wild, "demo-0", "other-peers.ns.svc.cluster.local",
                              wildcard=True)
    assert not tls.authorizes(wild, "a.demo-0", domain, wildcard=True)  # one label only
    local = tls.identity_from_peercert({"subjectAltName": (("DNS", "*.local"),)})
    assert not tls.authorizes(local, "anything.local", wildcard=True)
    assert not tls.authorizes(local, "anything", "local", wildcard=False)
    per_pod = tls.identity_from_peercert({"subjectAltName": (("DNS", f"demo-0.{domain}"),)})
    assert tls.authorizes(per_pod, "demo-0", domain)
    assert not tls.authorizes(per_pod, "demo-1", domain)


async def test_reply_identity_comes_from_the_certificate_not_the_claim(
    cluster_pki: TestPKI, client: peer.PeerTransport,
) -> None:
    # A member holding n2's certificate pretends to be n3: the reply must be refused,
    # however small (aiohttp releases small replies' connections early).
    impostor = peer.PeerTransport("n3", "127.0.0.1:0", cluster_pki.node("n2"))
    impostor.on("echo", lambda sender, body: {"ok": True})
    await impostor.start()
    try:
        with pytest.raises(peer.PeerError, match="certificate does not say so"):
            await client.request(impostor.address or "", "echo", {}, expect="n3")
    finally:
        await impostor.stop()


async def test_batches_split_under_the_frame_limit(cluster_pki: TestPKI) -> None:
    limits = peer.TransportLimits(max_frame_bytes=64 * 1024)
    server = peer.PeerTransport("n2", "127.0.0.1:0", cluster_pki.node("n2"), limits=limits)
    got: asyncio.Queue[int] = asyncio.Queue()
    server.on("blob", lambda sender, body: got.put_nowait(body["i"]))
    client = peer.PeerTransport("n1", None, cluster_pki.node("n1"), limits=limits)
    await server.start()
    await client.start()
    try:
        for i in range(40):  # 40 x 10 KiB: several frames' worth, queued at once
            client.send(server.address or "", "blob", {"i": i, "pad": b"x" * 10_000})
        client.send(server.address or "", "blob", {"i": -1, "pad": b"x" * 100_000})  # too big
        client.send(server.address or "", "blob", {"i": 40, "pad": b""})
        received = [await asyncio.wait_for(got.get(), 10) for _ in range(41)]
        assert received == [*range(40), 40]
        assert client.stats["messages_dropped"] == 1
    finally:
        await client.stop()
        await server.stop()


async def test_stream_refuses_client_certificates(server: peer.PeerTransport,
                                                  cluster_pki: TestPKI) -> None:
    files = cluster_pki.client("admin")
    async with aiohttp.ClientSession() as session:
        with pytest.raises(aiohttp.WSServerHandshakeError) as err:
            await session.ws_connect(f"https://{server.address}{peer.STREAM_PATH}",
                                     ssl=_raw_context(files, files.ca))
        assert err.value.status == 403


async def test_a_revoked_certificate_is_refused_and_its_open_stream_closed(
        server: peer.PeerTransport, cluster_pki: TestPKI) -> None:
    files = cluster_pki.node("n7")
    got: asyncio.Queue[Any] = asyncio.Queue()
    server.on("note", lambda sender, body: got.put_nowait(body))
    member = peer.PeerTransport("n7", None, files)
    await member.start()
    try:
        member.send(server.address or "", "note", {"i": 1})
        assert await asyncio.wait_for(got.get(), 10) == {"i": 1}
        fingerprint = tls.file_fingerprints(files.cert)[0]
        assert server.certificates_of("n7") == {fingerprint}
        server.set_revoked(frozenset({fingerprint}))
        with pytest.raises(peer.PeerError) as refused:
            await member.request(server.address or "", "echo", {})
        assert refused.value.status == 403 and "revoked" in str(refused.value)
        # The stream that was open is closed; what is sent later never reaches a handler.
        member.send(server.address or "", "note", {"i": 2})
        await member.drain(5)
        assert server.stats["revoked_refused"] >= 2
        assert got.empty()
    finally:
        await member.stop()


@pytest.mark.parametrize("component", ["raft", "mesh", "replication", "discovery",
                                       "coordinator"])
def test_components_refuse_a_network_address_without_tls(component: str) -> None:
    """All network communication is mutual TLS: plain HTTP only when asked for by name."""
    from continuum.federation.distributed import (
        consensus,
        coordinator,
        discovery,
        mesh,
        replication,
    )

    def make(insecure: bool) -> Any:
        address = "127.0.0.1:0"
        if component == "raft":
            return consensus.RaftConsensus("n1", ["n1"], bind_address=address,
                                           insecure=insecure)
        if component == "mesh":
            return mesh.GossipMesh("n1", bind_address=address, insecure=insecure)
        if component == "replication":
            return replication.MultiMasterReplicator("n1", bind_address=address,
                                                     insecure=insecure)
        if component == "discovery":
            return discovery.NodeDiscovery("n1", discovery.DiscoveryConfig(),
                                           bind_address=address, insecure=insecure)
        return coordinator.FederationCoordinator("n1", bind_address=address,
                                                 insecure=insecure)

    with pytest.raises(tls.TLSConfigError, match="insecure=True"):
        make(False)
    assert make(True) is not None
