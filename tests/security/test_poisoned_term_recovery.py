"""A cluster whose stored term was poisoned (before terms were bounded) is recovered.

The state a forged ``raft.vote`` with term 2^64-1 left behind on every node of an
earlier version: each stored term at 2^64-1, no next term that fits, no election
ever again, and a restart reloads it. The nodes start with it, fail their liveness
check (a member without a leader), and the documented recovery brings the cluster
back: ``recover --force-new-cluster`` on one node (its new term follows its log's
last term), then the others start again and join it as new members. Every
acknowledged strong write survives, and every node ends at a sane term.
"""

from __future__ import annotations

import asyncio
import json
import urllib.request
from collections.abc import Iterator

import pytest

from continuum.federation.distributed import cli, raft_storage, storage
from continuum.federation.distributed.core.raft import messages as rmsg
from e2e.cluster import Cluster

FIRST_IP = "127.0.34.11"
POISON = 2**64 - 1
ENV = {"CONTINUUM_LIVENESS_LEADERLESS_SECONDS": "3"}


@pytest.fixture
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    c = Cluster(tmp_path_factory.mktemp("poisoned") / "c", 3, FIRST_IP, env=ENV)
    c.start()
    yield c
    c.stop()


def _poison(c: Cluster, node_id: str) -> None:
    """Write the hard state the forged vote left (the node is stopped)."""
    store = storage.DurableStore(c.data_dir / node_id / "data" / "raft" / "raft.db")
    try:
        hs, _, _ = raft_storage.read_durable(store, node_id)
        store.commit_sync([raft_storage.hard_state_row(rmsg.HardState(POISON, None,
                                                                      hs.commit))])
    finally:
        store.close()


def _healthz(c: Cluster, node_id: str) -> tuple[int, dict[str, object]]:
    url = c.node(node_id).health_url + "/healthz"
    try:
        with urllib.request.urlopen(url, timeout=3) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())


async def test_a_poisoned_term_is_recovered_with_force_new_cluster(
        cluster: Cluster, capsys: pytest.CaptureFixture[str]) -> None:
    c = cluster
    ids = [n.node_id for n in c.nodes]
    leader = await c.wait_for(lambda: c.agreed_leader(), 60, "one leader on every node")
    strong = {f"s{k}": {"k": k} for k in range(5)}
    for cid, value in strong.items():
        await c.call(leader, lambda cl, cid=cid, value=value: cl.put(cid, value, strong=True))

    c.stop()
    for node_id in ids:
        _poison(c, node_id)
    c.start()

    async def all_poisoned_and_failing() -> bool:
        st = await c.statuses()
        if not all(s.get("term") == POISON and s["leader_id"] is None for s in st.values()):
            return False
        health = [await asyncio.to_thread(_healthz, c, n) for n in ids]
        return all(code == 503 and "without a leader" in str(body["reason"])
                   for code, body in health)

    await c.wait_for(all_poisoned_and_failing, 60, "every node to reload the poisoned term and "
                "fail its liveness check")
    st = await c.statuses()
    assert all(s["raft"]["term_exhausted"] for s in st.values())

    survivor = ids[0]
    loop = asyncio.get_running_loop()
    rc = await loop.run_in_executor(None, cli.main, ["recover", "--force-new-cluster", "--node",
                                                     survivor, "--data-dir", str(c.data_dir)])
    out = capsys.readouterr()
    assert rc == 0, out.err
    st1 = await c.call(survivor, lambda cl: cl.status())
    assert st1["leader_id"] == survivor and st1["term"] < rmsg.MAX_TERM

    # The others start again as new nodes of the recovered cluster: they find that its
    # leader does not count them, discard their poisoned Raft state and join.
    others = ids[1:]
    for node_id in others:
        c.local.kill(node_id)
    c.local.prepare()
    assert c.local.joining == others
    for node_id in others:
        c.local.start_node(node_id)

    async def whole_again() -> bool:
        st = await c.statuses()
        voters = {m["id"] for m in st[survivor]["members"] if m["voter"]}
        return (voters == set(ids) and all(s.get("leader_id") == survivor
                                           and s["term"] < rmsg.MAX_TERM for s in st.values()))

    await c.wait_for(whole_again, 120, "the others to join the recovered cluster as voters")
    for node_id in ids:
        for cid, value in strong.items():
            got = await c.call(node_id, lambda cl, cid=cid: cl.get(cid))
            assert got["value"] == value
        assert (await asyncio.to_thread(_healthz, c, node_id))[0] == 200
    await c.call(survivor, lambda cl: cl.put("after", {"ok": True}, strong=True))
