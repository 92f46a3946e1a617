"""Pure: observations -> the FederationCluster status (phase, conditions, members, leader).

Time comes in as ``now``; a condition's ``lastTransitionTime`` changes only
when its status does, so the same observations always give the same status
and a no-op reconcile has nothing to write.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from . import manifests, planner, volumes
from . import spec as api

CONDITIONS = ("Ready", "Quorum", "Progressing", "Degraded", "CertificatesReady", "Paused",
              "ScaleBlocked", "MembersSpread", volumes.CONDITION)
# Phases in which the cluster once had a leader: losing it now is quorum loss, not bootstrap.
_HAD_LEADER = {"Running", "Degraded", "Scaling", "Upgrading", "QuorumLost", "Paused"}
# The status keys this module owns (others, e.g. kopf's, are left alone).
OWNED_KEYS = tuple(api.FederationClusterStatus.model_json_schema(by_alias=True)["properties"])


@dataclass(frozen=True, slots=True)
class Inputs:
    name: str
    now: dt.datetime
    generation: int | None = None
    desired: int | None = None
    selector: str = ""
    sts_replicas: int | None = None
    pods: tuple[planner.Pod, ...] = ()
    leader_status: Mapping[str, Any] | None = None
    node_status: Mapping[str, Mapping[str, Any] | None] = field(default_factory=dict)
    step: planner.Step | None = None
    operation: api.Operation | None = None
    paused: bool = False
    invalid: str | None = None
    cert_not_after: dt.datetime | None = None
    cert_renew_before: float = 0.0
    previous: Mapping[str, Any] = field(default_factory=dict)
    recovery_handled: str | None = None
    force_new_cluster_handled: str | None = None
    certificates: api.Certificates | None = None
    volumes: volumes.Plan | None = None
    bootstrap: Mapping[str, Any] | None = None   # status.bootstrap (a cluster from a backup)
    backup: Mapping[str, Any] | None = None      # status.backup (the schedule)


def members(i: Inputs) -> list[dict[str, Any]]:
    ready = {p.name: p.ready for p in i.pods}
    hosts = {p.name: p.node for p in i.pods}
    out = []
    for m in (i.leader_status or {}).get("members", []):
        node = i.node_status.get(str(m.get("id")))
        role = "leader" if m.get("id") == (i.leader_status or {}).get("node_id") else (
            node.get("role") if node else ("follower" if m.get("voter") else "learner"))
        out.append(api.Member(
            name=str(m.get("id")), role=str(role), voter=bool(m.get("voter")),
            healthy=bool(m.get("healthy")), ready=ready.get(str(m.get("id")), False),
            match_index=m.get("match_index"), version=node.get("version") if node else None,
            node_name=hosts.get(str(m.get("id"))),
        ).model_dump(by_alias=True, exclude_none=True))
    return sorted(out, key=lambda m: (manifests.ordinal(i.name, m["name"]) or 0, m["name"]))


def _quorum(i: Inputs) -> tuple[str, str, str]:
    if i.leader_status is None:
        prev = i.previous.get("phase")
        if prev in _HAD_LEADER or i.previous.get("leader"):
            return ("False", "QuorumLost",
                    "no reachable leader: a majority of voters is down. Recovery: annotate "
                    f"{api.RECOVER_QUORUM}=<any new value> to restart every NotReady pod; "
                    f"if members are lost for good, {api.FORCE_NEW_CLUSTER}=<the most "
                    "up-to-date surviving pod> (docs: Quorum loss and recovery)")
        return "Unknown", "Bootstrapping", "waiting for the first leader"
    voters = [m for m in i.leader_status.get("members", []) if m.get("voter")]
    healthy = [m for m in voters if m.get("healthy")]
    need = manifests.quorum(len(voters)) if voters else 1
    if len(healthy) < need:
        return ("False", "QuorumAtRisk",
                f"{len(healthy)} healthy of {len(voters)} voters, quorum is {need}")
    return "True", "QuorumHealthy", f"{len(healthy)} healthy of {len(voters)} voters"


def _cert(i: Inputs) -> tuple[str, str, str]:
    if i.cert_not_after is None:
        return "False", "CertificateMissing", "the node TLS Secret is not issued yet"
    left = (i.cert_not_after - i.now).total_seconds()
    if left <= 0:
        return "False", "CertificateExpired", f"expired at {i.cert_not_after.isoformat()}"
    valid = f"valid until {i.cert_not_after.isoformat()}"
    rotation = i.certificates.rotation if i.certificates else None
    if rotation is not None:
        waiting = ", ".join(rotation.waiting_for) or "nobody"
        return ("True", "CARotationInProgress",
                f"{valid}; CA rotation {rotation.phase}: {rotation.message} "
                f"(waiting for {waiting})")
    return "True", "CertificateValid", valid


def _spread(i: Inputs) -> tuple[str, str, str]:
    """Whether one Kubernetes node's loss would cost more than one member, or the quorum."""
    placed = [p for p in i.pods if p.node and not p.terminating]
    voters = [m for m in (i.leader_status or {}).get("members", []) if m.get("voter")]
    total = len(voters) or len([p for p in i.pods if not p.terminating])
    if total <= 1:
        return "True", "SingleMember", "one member: nothing to spread"
    if not placed:
        return "Unknown", "NotScheduled", "no member is scheduled yet"
    by_host: dict[str, list[str]] = {}
    for p in sorted(placed, key=lambda p: p.ordinal):
        by_host.setdefault(str(p.node), []).append(p.name)
    shared = {h: names for h, names in sorted(by_host.items()) if len(names) > 1}
    if not shared:
        return "True", "SpreadAcrossHosts", f"{len(placed)} members on {len(by_host)} hosts"
    fatal = {h: names for h, names in shared.items()
             if total - len(names) < manifests.quorum(total)}
    worst = fatal or shared
    detail = "; ".join(f"{h} runs {', '.join(n)}" for h, n in worst.items())
    if fatal:
        return ("False", "QuorumOnOneHost",
                f"{detail}: losing that node loses the quorum of {manifests.quorum(total)}; "
                "add nodes or check spec.scheduling")
    return ("False", "MembersShareHost",
            f"{detail} (the quorum survives the loss of one node)")


def _storage(i: Inputs) -> tuple[str, str, str]:
    if i.volumes is None:
        return "Unknown", "NotChecked", "volumes not checked yet"
    return i.volumes.condition


def _phase(i: Inputs, quorum: str, degraded: bool) -> str:
    if i.invalid:
        return "Invalid"
    if i.paused:
        return "Paused"
    if i.sts_replicas is None and (i.bootstrap or {}).get("phase") == "Restoring":
        return "Restoring"
    if i.sts_replicas is None and (i.bootstrap or {}).get("phase") == "Failed":
        return "RestoreFailed"
    if i.sts_replicas is None or not i.pods:
        return "Pending"
    if quorum == "Unknown":
        return "Bootstrapping"
    if i.leader_status is None:
        return "QuorumLost"
    if i.operation is not None:
        return "Upgrading" if i.operation.type == "Update" else "Scaling"
    if degraded or isinstance(i.step, planner.Blocked):
        return "Degraded"
    if i.desired is not None and i.desired != i.sts_replicas:
        return "Scaling"
    return "Running"


def conditions(i: Inputs) -> list[tuple[str, str, str, str]]:
    q_status, q_reason, q_msg = _quorum(i)
    c_status, c_reason, c_msg = _cert(i)
    unhealthy = [m["id"] for m in (i.leader_status or {}).get("members", [])
                 if not m.get("healthy")]
    not_ready = [p.name for p in i.pods if not p.ready]
    expiring = (i.cert_not_after is not None
                and (i.cert_not_after - i.now).total_seconds() < i.cert_renew_before)
    blocked = i.step.reason if isinstance(i.step, planner.Blocked) else None

    degraded: list[tuple[str, str]] = []
    if blocked:
        degraded.append(("ScaleBlocked", blocked))
    if unhealthy or not_ready:
        degraded.append(("MemberNotReady",
                         "not ready: " + ", ".join(sorted(set(unhealthy) | set(not_ready)))))
    if q_status == "False":
        degraded.append((q_reason, q_msg))
    if expiring and c_status == "True":
        degraded.append(("CertificateExpiring", c_msg))

    op = i.operation
    if op is not None:
        reason = {"ScaleUp": "ScalingUp", "ScaleDown": "ScalingDown"}.get(op.type,
                                                                         "RollingUpdate")
        progressing = ("True", reason, f"{op.step} {op.member}")
    elif i.desired is not None and i.sts_replicas is not None and i.desired != i.sts_replicas:
        progressing = ("True", "Scaling", f"{i.sts_replicas} -> {i.desired} members")
    else:
        progressing = ("False", "Stable", "no operation in progress")

    phase = _phase(i, q_status, bool(degraded))
    ready_ok = phase == "Running" and not i.invalid
    why = i.invalid or (str((i.bootstrap or {}).get("message") or "")
                        if phase in ("Restoring", "RestoreFailed") else "") or f"phase {phase}"
    ready = (("True", "Ready", "every member is ready and votes") if ready_ok else
             ("False", "InvalidSpec" if i.invalid else phase, why))
    return [
        ("Ready", *ready),
        ("Quorum", q_status, q_reason, q_msg),
        ("Progressing", *progressing),
        ("Degraded", "True" if degraded else "False",
         degraded[0][0] if degraded else "AsExpected",
         "; ".join(m for _, m in degraded) if degraded else "all members healthy"),
        ("CertificatesReady", c_status, c_reason, c_msg),
        ("Paused", "True" if i.paused else "False",
         "Paused" if i.paused else "Reconciling",
         "spec.paused is set: children are not changed" if i.paused else "reconciling"),
        ("ScaleBlocked", "True" if blocked else "False",
         "QuorumWouldBeLost" if blocked else "NotBlocked", blocked or "no scale-down blocked"),
        ("MembersSpread", *_spread(i)),
        (volumes.CONDITION, *_storage(i)),
    ]


def _merge_conditions(i: Inputs, fresh: list[tuple[str, str, str, str]]) -> list[dict[str, Any]]:
    prev = {c.get("type"): c for c in i.previous.get("conditions") or []}
    now = i.now.replace(microsecond=0).isoformat().replace("+00:00", "Z")
    out = []
    for type_, status_, reason, message in fresh:
        old = prev.get(type_) or {}
        since = old.get("lastTransitionTime") if old.get("status") == status_ else None
        cond = {"type": type_, "status": status_, "reason": reason, "message": message,
                "lastTransitionTime": since or now}
        if i.generation is not None:
            cond["observedGeneration"] = i.generation
        out.append(cond)
    return out


def compute(i: Inputs) -> dict[str, Any]:
    """The full desired status (camelCase); ``None`` values mean "remove this key"."""
    fresh = conditions(i)
    phase = _phase(i, fresh[1][1], fresh[3][1] == "True")
    leader = i.leader_status or {}
    version = leader.get("version") if leader else None
    status: dict[str, Any] = {
        "observedGeneration": i.generation,
        "replicas": i.sts_replicas,
        "readyReplicas": sum(1 for p in i.pods if p.ready),
        "selector": i.selector or None,
        "phase": phase,
        "leader": leader.get("node_id") if leader else None,
        "term": leader.get("term") if leader else None,
        "members": members(i),
        "operation": (i.operation.model_dump(by_alias=True, exclude_none=True)
                      if i.operation else None),
        "certificates": (i.certificates.model_dump(by_alias=True, exclude_none=True)
                         if i.certificates else None),
        "currentVersion": version,
        "storage": (api.StorageStatus(size=i.volumes.size, pending=i.volumes.pending)
                    .model_dump(by_alias=True) if i.volumes else None),
        "blockedReason": i.step.reason if isinstance(i.step, planner.Blocked) else None,
        "recoveryHandled": i.recovery_handled,
        "forceNewClusterHandled": i.force_new_cluster_handled,
        "bootstrap": _present(i.bootstrap),
        "backup": _present(i.backup),
        "conditions": _merge_conditions(i, fresh),
    }
    if i.invalid:  # keep what was last observed; only say why nothing is reconciled
        keep = {"phase", "conditions", "observedGeneration"}
        status = {k: (v if k in keep else i.previous.get(k)) for k, v in status.items()}
    return status


def _present(fields: Mapping[str, Any] | None) -> dict[str, Any] | None:
    return {k: v for k, v in fields.items() if v is not None} if fields else None


def diff(current: Mapping[str, Any], desired: Mapping[str, Any]) -> dict[str, Any]:
    """A JSON merge patch turning ``current`` into ``desired`` ({} when nothing changed).

    Objects nest: a key gone from a desired object (``certificates.rotation`` once a
    rotation ends) is patched to null, because a merge patch leaves absent keys alone.
    Lists are replaced whole, as a merge patch does.
    """
    patch: dict[str, Any] = {}
    for key, value in desired.items():
        have = current.get(key)
        if value is None:
            if have is not None:
                patch[key] = None
        elif isinstance(value, Mapping) and isinstance(have, Mapping):
            full = {**{k: None for k in have if k not in value}, **value}
            if sub := diff(have, full):
                patch[key] = sub
        elif have != value:
            patch[key] = value
    return patch


def apply(current: Mapping[str, Any], patch: Mapping[str, Any]) -> dict[str, Any]:
    """``current`` after the merge patch ``patch`` (what the API server will store)."""
    out = dict(current)
    for key, value in patch.items():
        if value is None:
            out.pop(key, None)
        elif isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = apply(out[key], value)
        else:
            out[key] = value
    return out
