"""cluster.py's no-op detection and node_client.py's mTLS identity checks (real TLS)."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest
from builders import cluster
from harness import FakeFederation, free_port

from continuum_operator import certificates, node_client
from continuum_operator import cluster as kube

NOW = dt.datetime.now(dt.UTC)


@pytest.mark.parametrize(("desired", "live", "subset"), [
    ({"a": 1}, {"a": 1, "b": 2}, True),
    ({"a": {"x": 1}}, {"a": {"x": 1, "y": 2}}, True),
    ({"ports": [{"port": 1}]}, {"ports": [{"port": 1, "protocol": "TCP"}]}, True),  # defaults
    ({"ports": [{"port": 1}]}, {"ports": [{"port": 2}]}, False),
    ({"ports": [{"port": 1}]}, {"ports": [{"port": 1}, {"port": 2}]}, False),
    ({"a": "1"}, {"a": 1}, False),
    ({"a": 1}, {}, False),
])
def test_is_subset(desired: dict[str, object], live: dict[str, object], subset: bool) -> None:
    assert kube.is_subset(desired, live) is subset


def test_merge_patch_is_minimal() -> None:
    live = {"metadata": {"labels": {"a": "1"}, "uid": "u"},
            "spec": {"ports": [{"port": 1, "protocol": "TCP"}], "type": "ClusterIP"}}
    assert kube.merge_patch({"metadata": {"labels": {"a": "1"}},
                             "spec": {"ports": [{"port": 1}]}}, live) == {}
    assert kube.merge_patch({"metadata": {"labels": {"a": "2"}},
                             "spec": {"ports": [{"port": 1}]}}, live) == {
        "metadata": {"labels": {"a": "2"}}}


def test_statefulset_patches_leave_immutable_fields_alone() -> None:
    obj = {"apiVersion": "apps/v1", "kind": "StatefulSet", "metadata": {"name": "x"},
           "spec": {"serviceName": "s", "volumeClaimTemplates": [], "template": {"a": 1}}}
    assert set(kube._owned_fields(obj)["spec"]) == {"template"}


def _store() -> dict[str, dict[str, bytes] | None]:
    plan = certificates.plan(cluster(namespace="prod"), {}, NOW)
    return {s["metadata"]["name"]: certificates.decode(s) for s in plan.secrets}


async def test_node_client_speaks_mtls_and_checks_the_pod_identity(tmp_path: Path) -> None:
    store = _store()
    fed = FakeFederation("demo", free_port(), tmp_path)
    await fed.start_node("demo-0", store["demo-tls"] or {})
    material = node_client.Material.from_secret_data(store["demo-operator-client-tls"])
    assert material is not None and "PRIVATE" not in repr(material)
    client = node_client.NodeClient(material, "demo-peers.prod.svc.cluster.local")
    try:
        address = f"127.0.5.1:{fed.port}"
        status = await client.status(address, "demo-0")
        assert status["role"] == "leader" and status["members"][0]["id"] == "demo-0"
        # A certificate for another cluster's pods does not speak for ours.
        other = node_client.NodeClient(material, "other-peers.prod.svc.cluster.local")
        with pytest.raises(node_client.NodeError) as info:
            await other.status(address, "demo-0")
        assert info.value.code == "wrong_identity"
        await other.close()
        # Removing a non-member is "already removed", which makes resumed removals idempotent.
        assert await client.remove_member(address, "demo-0", "demo-9", timeout=5) is False
    finally:
        await client.close()
        await fed.stop()


async def test_node_client_with_a_foreign_client_certificate_is_refused(tmp_path: Path) -> None:
    ours, theirs = _store(), _store()
    fed = FakeFederation("demo", free_port(), tmp_path)
    await fed.start_node("demo-0", ours["demo-tls"] or {})
    material = node_client.Material.from_secret_data(theirs["demo-operator-client-tls"])
    assert material is not None
    client = node_client.NodeClient(material, "demo-peers.prod.svc.cluster.local", timeout=3)
    try:
        with pytest.raises(node_client.NodeError):
            await client.status(f"127.0.5.1:{fed.port}", "demo-0")
    finally:
        await client.close()
        await fed.stop()


def test_console_script_help(capsys: pytest.CaptureFixture[str]) -> None:
    from continuum_operator import __main__ as entry

    with pytest.raises(SystemExit) as info:
        entry.main(["--help"])
    assert info.value.code == 0
    out = capsys.readouterr().out
    assert "--namespace" in out and "--peering" in out


def test_earlier_replicas_rank_higher_and_never_tie() -> None:
    """kopf pauses every replica that sees a higher priority, and all of them on a tie."""
    import random

    from continuum_operator import handlers

    first = handlers.seniority(1_800_000_000.000, random.Random(1))
    later = handlers.seniority(1_800_000_000.001, random.Random(2))
    assert first > later > 0
    same_ms = {handlers.seniority(1_800_000_000.0, random.Random(seed)) for seed in range(50)}
    assert len(same_ms) > 40  # random thousandths of a millisecond apart
    assert max(same_ms) < 2**53  # exact in JSON everywhere


def test_importing_the_package_registers_the_handlers() -> None:
    """``kopf run -m continuum_operator`` imports the package: every handler must register."""
    import kopf

    import continuum_operator  # noqa: F401

    registry = kopf.get_default_registry()
    ids = {h.id for h in registry._spawning.get_all_handlers()}
    assert "run" in ids
    changing = {h.id for h in registry._changing.get_all_handlers()}
    assert {"validate", "delete"} <= changing


def test_a_grown_storage_size_never_patches_the_statefulset() -> None:
    """volumeClaimTemplates is immutable: a new size goes to the PVCs (volumes.py)."""
    from continuum_operator import manifests

    grown = cluster(storage={"size": "20Gi"})
    assert "volumeClaimTemplates" not in kube._owned_fields(manifests.statefulset(grown))["spec"]
