"""The node process seen from outside: metrics, readiness, graceful SIGTERM, certificate
rotation. Real processes of a local cluster, scraped and signalled as an operator would."""

from __future__ import annotations

import asyncio
import signal
import socket
import ssl
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from continuum.federation.distributed import pki, replication
from continuum.federation.distributed.transport import tls
from e2e.cluster import Cluster

COMPONENTS = ("raft", "replication", "mesh", "coordinator", "discovery", "transport")
BUCKETS = ("0.0005", "0.001", "0.0025", "0.005", "0.01", "0.025", "0.05", "0.1", "0.25", "0.5",
           "1.0", "2.5", "5.0", "+Inf")

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


@pytest.fixture
def make_cluster(tmp_path: Path) -> Iterator[Any]:
    made: list[Cluster] = []

    def make(first_ip: str, env: dict[str, str] | None = None) -> Cluster:
        c = Cluster(tmp_path / first_ip, 3, first_ip, env)
        made.append(c)
        return c

    yield make
    for c in made:
        c.stop()


def _get(url: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=5) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


async def _scrape(c: Cluster, node_id: str) -> Samples:
    status, body = await asyncio.to_thread(_get, c.node(node_id).health_url + "/metrics")
    assert status == 200
    out: Samples = {}
    for family in text_string_to_metric_families(body.decode()):
        for s in family.samples:
            out[(s.name, frozenset(s.labels.items()))] = s.value
    return out


async def _scrape_if(c: Cluster, node: str, done: Callable[[Samples], bool]) -> Samples | None:
    samples = await _scrape(c, node)
    return samples if done(samples) else None


def _value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


def _names(samples: Samples, prefix: str) -> set[str]:
    return {name for name, _ in samples if name.startswith(prefix)}


@pytest.mark.parametrize(("fast_path", "first_ip"), [("true", "127.0.116.11"),
                                                    ("false", "127.0.116.51")])
async def test_metrics_cover_every_component_and_move_with_writes(
        make_cluster: Any, fast_path: str, first_ip: str) -> None:
    """With the API port's own serving of concept requests and without it (aiohttp
    serving them), the same writes move the same figures."""
    c: Cluster = make_cluster(first_ip, {"CONTINUUM_API_FAST_PATH": fast_path})
    c.start()
    leader = await c.wait_for(lambda: c.agreed_leader(), 60, "a leader")
    before = await _scrape(c, leader)
    for i in range(5):
        await c.call(leader, lambda cl, i=i: cl.put(f"m-s{i}", {"i": i}, strong=True))
        await c.call(leader, lambda cl, i=i: cl.put(f"m-e{i}", {"i": i}))
    moved = {
        "continuum_raft_commit_index": 5, "continuum_raft_proposals": 5,
        "continuum_replication_writes_local": 5, "continuum_replication_keys": 5,
        "continuum_transport_frames_sent": 1, "continuum_mesh_state_updates": 1,
        "continuum_coordinator_heartbeats": 1,
    }

    def grown(samples: Samples) -> dict[str, float]:
        out = {}
        for name in moved:
            labels = node if name in ("continuum_raft_commit_index",
                                      "continuum_replication_keys") else {}
            out[name] = _value(samples, name, **labels) - _value(before, name, **labels)
        return out

    node = {"node": leader}
    # Load reports travel once a second: the figures move within a few.
    after = await c.wait_for(
        lambda: _scrape_if(c, leader, lambda s: all(
            grew >= moved[name] for name, grew in grown(s).items())), 15,
        "every figure to move with the writes")
    assert _value(after, "continuum_node_ready", **node) == 1.0
    assert _value(after, "continuum_raft_is_leader", **node) == 1.0
    for member in (n.node_id for n in c.nodes):
        assert _value(after, "continuum_member_healthy", node=leader, member=member) == 1.0
    for component in COMPONENTS:
        assert len(_names(after, f"continuum_{component}_")) >= 3, component
    # the figures move: every write is counted where it happened
    for name, grew in grown(after).items():
        assert grew >= moved[name], (name, grew)
    # latency histograms: every bucket, cumulative, counting exactly these writes
    for consistency in ("strong", "eventual"):
        series = {"consistency": consistency}
        counts = [_value(after, "continuum_write_seconds_bucket", le=le, **series)
                  for le in BUCKETS]
        assert counts == sorted(counts) and counts[-1] == 5 + _value(
            before, "continuum_write_seconds_count", **series)
        assert _value(after, "continuum_write_seconds_count", **series) == counts[-1]
    puts = {"route": "put", "code": "2xx"}
    assert all(("continuum_api_request_seconds_bucket", frozenset({**puts, "le": le}.items()))
               in after for le in BUCKETS)
    assert (_value(after, "continuum_api_request_seconds_count", **puts)
            - _value(before, "continuum_api_request_seconds_count", **puts)) == 10


async def test_readyz_is_503_without_a_leader_and_200_with_one(make_cluster: Any) -> None:
    c: Cluster = make_cluster("127.0.116.21")
    c.start(only=["node-1"])  # one member of three: no quorum, so no leader, ever
    health = c.node("node-1").health_url

    async def serving() -> bool:
        return (await asyncio.to_thread(_get, health + "/healthz"))[0] == 200

    await c.wait_for(serving, 30, "node-1 to serve /healthz")
    for _ in range(5):
        status, body = await asyncio.to_thread(_get, health + "/readyz")
        assert status == 503 and b'"ready": false' in body
        assert _value(await _scrape(c, "node-1"), "continuum_node_ready", node="node-1") == 0
        await asyncio.sleep(0.3)  # paced: staying 503 over time is the claim
    c.local.start_node("node-2")
    c.local.start_node("node-3")

    async def all_ready() -> bool:
        codes = [(await asyncio.to_thread(_get, n.health_url + "/readyz"))[0] for n in c.nodes]
        return codes == [200, 200, 200]

    await c.wait_for(all_ready, 60, "every node ready")
    assert _value(await _scrape(c, "node-1"), "continuum_node_ready", node="node-1") == 1


async def test_sigterm_on_the_leader_hands_over_and_flushes(make_cluster: Any) -> None:
    # An election cannot start before a follower has missed the leader for 4 s; a new
    # leader sooner than that after SIGTERM was handed leadership, not elected.
    min_election_s = 4.0
    c: Cluster = make_cluster("127.0.116.31",
                              {"CONTINUUM_RAFT__ELECTION_TIMEOUT_MS": "[4000, 5000]"})
    c.start()
    leader = await c.wait_for(lambda: c.agreed_leader(), 90, "a leader")
    follower = next(n.node_id for n in c.nodes if n.node_id != leader)
    for i in range(5):
        await c.call(leader, lambda cl, i=i: cl.put(f"t-s{i}", {"i": i}, strong=True))
    for i in range(10):
        await c.call(follower, lambda cl, i=i: cl.put(f"t-e{i}", {"i": i}))

    async def pushed_to_leader() -> bool:
        got = [await c.call(leader, lambda cl, i=i: cl.get(f"t-e{i}")) for i in range(10)]
        return all(g["value"] == {"i": i} for i, g in enumerate(got))

    await c.wait_for(pushed_to_leader, 30, "the follower's writes on the leader")
    old_term = (await c.call(leader, lambda cl: cl.status()))["term"]
    survivors = [n.node_id for n in c.nodes if n.node_id != leader]

    proc = c.local.procs[leader]
    started = time.monotonic()
    proc.send_signal(signal.SIGTERM)

    async def new_leader() -> str | None:
        got = await c.agreed_leader(survivors)
        return got if got not in (None, leader) else None

    new = await c.wait_for(new_leader, 30, "a new leader among the survivors")
    took = time.monotonic() - started
    assert took < min_election_s, f"new leader after {took:.2f}s: elected, not handed over"
    statuses = await c.statuses(survivors)
    assert {s["term"] for s in statuses.values()} == {old_term + 1}

    assert await asyncio.to_thread(proc.wait, 30) == 0
    log = (c.local.log_dir / f"{leader}.log").read_text()
    assert f"leadership handed over to {new}" in log
    assert log.rstrip().endswith(f"node {leader} stopped")
    # what the leader held is on its disk: the replicated writes it had received ...
    offline = replication.MultiMasterReplicator(
        leader, storage_path=c.data_dir / leader / "data" / "replication")
    try:
        for i in range(10):
            assert await offline.read(f"t-e{i}") == {"i": i}
    finally:
        await offline.stop()
    # ... and its Raft log: restarted, it serves the strong writes from its own log
    c.local.start_node(leader)

    async def caught_up() -> bool:
        got = [await c.call(leader, lambda cl, i=i: cl.get(f"t-s{i}")) for i in range(5)]
        return all(g["value"] == {"i": i} and g["consistency"] == "strong"
                   for i, g in enumerate(got))

    await c.wait_for(caught_up, 60, "the old leader serving its strong writes again")


def _served_certificate(ip: str, files: tls.TLSFiles) -> bytes:
    ctx = ssl.create_default_context(cafile=files.ca)
    ctx.check_hostname = False
    ctx.load_cert_chain(files.cert, files.key)
    with socket.create_connection((ip, 7000), timeout=5) as raw, \
            ctx.wrap_socket(raw) as conn:
        der = conn.getpeercert(binary_form=True)
    assert der is not None
    return der


async def test_a_rewritten_certificate_is_served_without_a_restart(make_cluster: Any) -> None:
    c: Cluster = make_cluster("127.0.116.41")
    c.start()
    await c.wait_for(lambda: c.agreed_leader(), 60, "a leader")
    target = c.node("node-2")
    assert c.files is not None
    tls_dir = c.data_dir / "node-2" / "tls"
    old = await asyncio.to_thread(_served_certificate, target.ip, c.files)
    assert old == ssl.PEM_cert_to_DER_cert((tls_dir / "tls.crt").read_text())
    pid = c.local.procs["node-2"].pid

    ca = pki.load_ca(c.data_dir / "pki" / "ca-key")
    fresh = pki.issue_node(ca, "node-2", dns_names=["localhost"], ip_addresses=[target.ip],
                           days=30)
    pki.write_secret_dir(tls_dir, fresh, ca.cert_pem)
    new = ssl.PEM_cert_to_DER_cert(fresh.cert_pem.decode())
    assert new != old

    async def serves_new() -> bool:
        return await asyncio.to_thread(_served_certificate, target.ip, c.files) == new

    await c.wait_for(serves_new, 40, "node-2 to serve its new certificate")
    assert c.local.procs["node-2"].pid == pid and c.local.procs["node-2"].poll() is None
    status = await c.call("node-2", lambda cl: cl.status())
    assert status["certificate_not_after"] == pki.not_after(fresh.cert_pem).isoformat()
    # peers still reach it with the new certificate: a write through it replicates
    await c.call("node-2", lambda cl: cl.put("after-rotation", {"ok": True}))

    async def everywhere() -> bool:
        got = [await c.call(n.node_id, lambda cl: cl.get("after-rotation")) for n in c.nodes]
        return all(g["value"] == {"ok": True} for g in got)

    await c.wait_for(everywhere, 30, "the write through node-2 on every node")
