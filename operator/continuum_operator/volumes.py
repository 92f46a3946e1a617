"""Pure: online volume expansion. What the members' PVCs have, and which to grow.

A StatefulSet's ``volumeClaimTemplates`` cannot change, so a larger ``spec.storage.size``
is applied to each member's PVC instead (the StatefulSet's template keeps the first size:
a PVC created later for a new member is grown right after, like the others). Kubernetes
grows a bound PVC when its StorageClass has ``allowVolumeExpansion: true``; the volume
driver then resizes the volume and, for most drivers, the file system while it is in use.
Nothing here is patched for a class that does not allow it: the condition says so.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from . import manifests, quantities

CONDITION = "StorageResized"


@dataclass(frozen=True, slots=True)
class Claim:
    name: str
    requested: Decimal | None
    capacity: Decimal | None      # None until bound (status.capacity.storage)
    bound: bool
    storage_class: str | None
    resize_pending: bool = False  # condition FileSystemResizePending: a restart finishes it

    @classmethod
    def from_pvc(cls, pvc: Mapping[str, Any]) -> Claim:
        spec, st = pvc.get("spec") or {}, pvc.get("status") or {}
        conditions = {c.get("type") for c in st.get("conditions") or []
                      if c.get("status") == "True"}
        return cls(
            name=pvc["metadata"]["name"],
            requested=quantities.parse(((spec.get("resources") or {}).get("requests") or {})
                                       .get("storage")),
            capacity=quantities.parse((st.get("capacity") or {}).get("storage")),
            bound=st.get("phase") == "Bound",
            storage_class=spec.get("storageClassName"),
            resize_pending="FileSystemResizePending" in conditions)


@dataclass(frozen=True, slots=True)
class Plan:
    size: str
    grow: list[str] = field(default_factory=list)      # PVCs to patch to ``size`` now
    pending: list[str] = field(default_factory=list)   # PVCs that do not have ``size`` yet
    condition: tuple[str, str, str] = ("True", "AsRequested", "")


def member_claims(c: manifests.Cluster, pvcs: Sequence[Mapping[str, Any]],
                  members: int) -> list[Claim]:
    """The PVCs of the pods the StatefulSet runs (not those kept after a scale-down)."""
    wanted = {c.pvc(c.pod(i)) for i in range(members)}
    return sorted((Claim.from_pvc(p) for p in pvcs if p["metadata"]["name"] in wanted),
                  key=lambda cl: cl.name)


def classes_to_check(size: str, claims: list[Claim]) -> set[str]:
    """The StorageClasses whose ``allowVolumeExpansion`` decides a growth."""
    want = quantities.parse(size)
    return {cl.storage_class or "" for cl in claims
            if want is not None and cl.requested is not None and cl.requested < want}


def plan(size: str, claims: list[Claim], expandable: Mapping[str, bool]) -> Plan:
    """What to patch, and the condition. ``expandable``: StorageClass name -> whether it
    allows expansion ("" for a PVC without a class, which cannot be expanded)."""
    want = quantities.parse(size)
    if want is None:
        return Plan(size, condition=("Unknown", "InvalidSize", f"{size!r} is not a quantity"))
    grow: list[str] = []
    waiting: list[str] = []
    restart: list[str] = []
    resizing: list[str] = []
    refused: list[Claim] = []
    for cl in claims:
        if cl.requested is not None and cl.requested < want:
            if not expandable.get(cl.storage_class or "", False):
                refused.append(cl)
            elif not cl.bound:
                waiting.append(cl.name)
            else:
                grow.append(cl.name)
        elif cl.capacity is not None and cl.capacity < want:
            (restart if cl.resize_pending else resizing).append(cl.name)
    pending = sorted({*grow, *waiting, *(cl.name for cl in refused), *restart, *resizing})
    if refused:
        names = sorted({cl.storage_class or "(none)" for cl in refused})
        return Plan(size, grow, pending, (
            "False", "ExpansionNotSupported",
            f"StorageClass {', '.join(names)} does not allow volume expansion "
            f"(allowVolumeExpansion is not true): {', '.join(cl.name for cl in refused)} keep "
            f"their size; grow them by hand, or move the data to a class that allows it"))
    if restart:
        return Plan(size, grow, pending, (
            "False", "FileSystemResizePending",
            f"{', '.join(restart)}: the volume has grown, its file system grows when the pod "
            f"restarts (annotate continuum.dev/restart to restart pods in the safe order)"))
    if grow or waiting or resizing:
        return Plan(size, grow, pending, (
            "False", "Resizing",
            f"growing {', '.join(pending)} to {size}"
            + (f" (waiting for {', '.join(waiting)} to be bound)" if waiting else "")))
    return Plan(size, condition=("True", "AsRequested", f"every member's volume has {size}"))
