"""Online volume expansion, planned from the PVCs and their StorageClasses (pure)."""

from __future__ import annotations

from typing import Any

from builders import cluster

from continuum_operator import volumes


def pvc(name: str, requested: str, capacity: str | None = "10Gi", *, bound: bool = True,
        storage_class: str | None = "standard", pending_fs: bool = False) -> dict[str, Any]:
    status: dict[str, Any] = {"phase": "Bound" if bound else "Pending"}
    if capacity is not None:
        status["capacity"] = {"storage": capacity}
    if pending_fs:
        status["conditions"] = [{"type": "FileSystemResizePending", "status": "True"}]
    spec: dict[str, Any] = {"resources": {"requests": {"storage": requested}}}
    if storage_class is not None:
        spec["storageClassName"] = storage_class
    return {"metadata": {"name": name}, "spec": spec, "status": status}


def claims(*pvcs: dict[str, Any], members: int = 3) -> list[volumes.Claim]:
    return volumes.member_claims(cluster(), list(pvcs), members)


def test_nothing_to_do_at_the_asked_size_whatever_its_spelling() -> None:
    cl = claims(pvc("data-demo-0", "10Gi"), pvc("data-demo-1", "10240Mi", "10240Mi"))
    plan = volumes.plan("10Gi", cl, {})
    assert plan.grow == [] and plan.pending == []
    assert plan.condition[:2] == ("True", "AsRequested")
    assert volumes.classes_to_check("10Gi", cl) == set()


def test_bound_claims_of_an_expandable_class_are_grown() -> None:
    cl = claims(pvc("data-demo-0", "10Gi"), pvc("data-demo-1", "10Gi"),
                pvc("data-demo-2", "10Gi", None, bound=False))
    assert volumes.classes_to_check("20Gi", cl) == {"standard"}
    plan = volumes.plan("20Gi", cl, {"standard": True})
    assert plan.grow == ["data-demo-0", "data-demo-1"]  # the unbound one waits
    assert plan.pending == ["data-demo-0", "data-demo-1", "data-demo-2"]
    assert plan.condition[:2] == ("False", "Resizing")
    assert "waiting for data-demo-2 to be bound" in plan.condition[2]


def test_a_class_without_expansion_is_reported_and_nothing_is_patched() -> None:
    cl = claims(pvc("data-demo-0", "10Gi", storage_class="slow"),
                pvc("data-demo-1", "10Gi", storage_class=None))
    plan = volumes.plan("20Gi", cl, {"slow": False, "": False})
    assert plan.grow == []
    status, reason, message = plan.condition
    assert (status, reason) == ("False", "ExpansionNotSupported")
    assert "slow" in message and "allowVolumeExpansion" in message


def test_after_the_patch_it_waits_for_the_driver_then_is_done() -> None:
    asked = claims(pvc("data-demo-0", "20Gi", "10Gi"))
    assert volumes.plan("20Gi", asked, {}).condition[1] == "Resizing"
    assert volumes.plan("20Gi", asked, {}).grow == []  # already asked: no second patch
    fs = claims(pvc("data-demo-0", "20Gi", "10Gi", pending_fs=True))
    assert volumes.plan("20Gi", fs, {}).condition[1] == "FileSystemResizePending"
    done = claims(pvc("data-demo-0", "20Gi", "20Gi"))
    assert volumes.plan("20Gi", done, {}).condition[:2] == ("True", "AsRequested")


def test_pvcs_kept_after_a_scale_down_are_left_alone() -> None:
    cl = claims(pvc("data-demo-0", "10Gi"), pvc("data-demo-5", "10Gi"), members=1)
    assert [c.name for c in cl] == ["data-demo-0"]
