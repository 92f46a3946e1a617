"""One reconcile cycle of one FederationCluster: observe -> children -> plan -> one step -> status.

This is the I/O shell around the pure modules; ``handlers.py`` runs it from a
per-object kopf daemon, so one cluster is never reconciled twice at once.
A cycle reads the CR fresh (the operation record it plans from must be the
one last written), puts owned objects into shape (unless ``spec.paused``),
polls every pod's ``/v1/status`` over mTLS, writes the planner's operation
record *before* executing its step, and finally patches the status with
only what changed.

Why one long file: the cycle's order (fresh read, children, poll, record, step,
status) is the operator's main safety argument; it reads best in one place.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import datetime as dt
import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any

import pydantic

from . import (
    backup_spec,
    backups,
    certificates,
    cluster,
    manifests,
    metrics,
    node_client,
    planner,
    status,
    volumes,
)
from . import spec as api
from .settings import OperatorSettings

log = logging.getLogger("continuum_operator")

# (object the Event is about, type Normal|Warning, reason, message)
EventSink = Callable[[Mapping[str, Any], str, str, str], Awaitable[None] | None]


@dataclass
class _Memory:
    """What the operator remembers per cluster between cycles (losing it is harmless)."""

    client: node_client.NodeClient | None = None
    last_warning: str | None = None


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def _earliest_not_after(statuses: Mapping[str, Mapping[str, Any] | None]
                        ) -> dt.datetime | None:
    """The earliest expiry among the certificates the nodes report serving."""
    found = []
    for st in statuses.values():
        raw = (st or {}).get("certificate_not_after")
        with contextlib.suppress(TypeError, ValueError):
            found.append(dt.datetime.fromisoformat(str(raw)))
    return min(found) if found else None


def _iso(t: dt.datetime) -> str:
    return t.replace(microsecond=0).isoformat().replace("+00:00", "Z")


def cr_path(namespace: str, name: str, sub: str | None = None) -> str:
    return cluster.path(api.API_VERSION, api.PLURAL, namespace, name, sub)


class Reconciler:
    def __init__(self, kube: cluster.Kube, settings: OperatorSettings, emit: EventSink,
                 clock: Callable[[], dt.datetime] = _now) -> None:
        self.kube = kube
        self.settings = settings
        self._emit_fn = emit
        self.clock = clock
        self._memory: dict[tuple[str, str], _Memory] = {}
        self.backups = backups.Backups(kube, emit, clock)

    async def emit(self, cr: Mapping[str, Any], type_: str, reason: str, message: str) -> None:
        result = self._emit_fn(cr, type_, reason, message)
        if result is not None:
            await result

    async def _warn_once(self, cr: Mapping[str, Any], mem: _Memory, reason: str,
                         message: str) -> None:
        if mem.last_warning != f"{reason}:{message}":
            mem.last_warning = f"{reason}:{message}"
            await self.emit(cr, "Warning", reason, message)

    # ---- the cycle -----------------------------------------------------------------------------

    async def reconcile(self, namespace: str, name: str) -> bool:
        """One cycle; True when an operation is in flight (poll again soon)."""
        started = time.perf_counter()
        try:
            busy = await self._reconcile(namespace, name)
        except Exception:
            metrics.RECONCILES.labels("error").inc()
            metrics.RECONCILE_ERRORS.labels(namespace, name).inc()
            raise
        metrics.RECONCILES.labels("busy" if busy else "ok").inc()
        metrics.RECONCILE_SECONDS.observe(time.perf_counter() - started)
        return busy

    async def _reconcile(self, namespace: str, name: str) -> bool:
        cr = await self.kube.get(cr_path(namespace, name))
        if cr is None or cr["metadata"].get("deletionTimestamp"):
            return False
        mem = self._memory.setdefault((namespace, name), _Memory())
        current = dict(cr.get("status") or {})
        now = self.clock()
        if (bad_name := api.name_problem(name)) is not None:
            await self._refuse(cr, mem, current, now, f"metadata.name: {bad_name}")
            return False
        try:
            sp = api.parse_spec(cr.get("spec"))
        except pydantic.ValidationError as exc:
            await self._refuse(cr, mem, current, now, api.describe_errors(exc))
            return False
        c = manifests.Cluster(name, namespace, cr["metadata"].get("uid", ""), sp)
        annotations = cr["metadata"].get("annotations") or {}

        secrets = await self._secrets(c)
        sts = await self.kube.get(cluster.object_path(manifests.statefulset(c)))
        if (changed := await self._fixed_at_creation(c, sts, secrets, current)) is not None:
            await self._refuse(cr, mem, current, now, changed)
            return False
        bootstrap = current.get("bootstrap")
        may_create = True
        if sts is None and sp.bootstrap is not None and not sp.paused:
            gate = await self.backups.bootstrap(c, cr, current)
            bootstrap, may_create = gate.status, gate.ready
        if not sp.paused:
            sts = await self._ensure_children(c, cr, sts, annotations, may_create)
        pods = await self.kube.list("v1", "pods", namespace, manifests.selector_labels(c))
        pvcs = await self.kube.list("v1", "persistentvolumeclaims", namespace,
                                    manifests.selector_labels(c))
        client = await self._client(c, mem, secrets.get(c.client_secret))
        by_pod = {p["metadata"]["name"]: p for p in pods}
        statuses = await self._poll(c, client, pods)
        leader_status = _leader(statuses)
        # After the poll: a CA rotation advances only on what the nodes report having loaded.
        rotation = await self._ensure_tls(c, cr, secrets, pods, statuses)
        # Per-pod certificates live in the pods (CSI): the earliest a node reports serving.
        cert_not_after = (certificates.not_after(secrets.get(c.tls_secret))
                          if c.shared_certificate else _earliest_not_after(statuses))

        operation = _operation(current.get("operation"))
        recover = annotations.get(api.RECOVER_QUORUM)
        force = annotations.get(api.FORCE_NEW_CLUSTER) or None
        # Removing the annotation forgets the record, so the same pod can be named again later.
        force_handled = current.get("forceNewClusterHandled") if force else None
        observed = planner.Observed(
            name=name, desired=sp.replicas,
            sts_replicas=None if sts is None else int(sts.get("spec", {}).get("replicas") or 0),
            update_revision=(sts or {}).get("status", {}).get("updateRevision"),
            pods=tuple(_with_raft(_pod_view(name, p), statuses.get(p["metadata"]["name"]))
                       for p in pods if manifests.ordinal(name, p["metadata"]["name"]) is not None),
            members=None if leader_status is None else tuple(
                planner.Member(str(m.get("id")), bool(m.get("voter")), bool(m.get("healthy")),
                               _int(m.get("match_index")))
                for m in leader_status.get("members", [])),
            leader=None if leader_status is None else str(leader_status.get("node_id")),
            commit_index=_int((leader_status or {}).get("commit_index")),
            max_lag=self.settings.catch_up_lag,
            membership_committed=planner.membership_committed(leader_status),
            operation=operation,
            pvcs=frozenset(p["metadata"]["name"] for p in pvcs),
            force_scale_down=str(annotations.get(api.FORCE_SCALE_DOWN, "")).lower() == "true",
            recover_quorum=bool(recover) and recover != current.get("recoveryHandled"),
            force_new_cluster=force if force != force_handled else None,
            pvc_when_scaled=sp.storage.retention.when_scaled,
            started_at=_iso(now),
        )
        claims = volumes.member_claims(c, pvcs, observed.sts_replicas or 0)
        expandable = {sc: await self._expandable(sc)
                      for sc in volumes.classes_to_check(sp.storage.size, claims)}
        grow = volumes.plan(sp.storage.size, claims, expandable)
        if not sp.paused:
            await self._grow_volumes(c, cr, mem, grow)
        step: planner.Step | None = None
        done = False
        recovery_handled = current.get("recoveryHandled")
        if not sp.paused:
            decision = planner.plan(observed)
            step = decision.step
            if decision.operation != operation:
                await self._write_operation(namespace, name, current, decision.operation)
                operation = decision.operation
            done = await self._execute(c, cr, mem, step, observed, by_pod, client)
            if done and isinstance(step, planner.RecoverQuorum):
                recovery_handled = recover
            if (done and isinstance(step, planner.ForceNewCluster)) or isinstance(
                    step, planner.RefuseForceNewCluster):
                force_handled = force

        backup_status = current.get("backup")
        try:
            backup_status = await self.backups.run_schedule(c, cr, current, now)
        except cluster.ApiError as exc:  # the schedule never holds up the cluster
            await self._warn_once(cr, mem, "BackupScheduleFailed", str(exc))

        desired = status.compute(status.Inputs(
            name=name, now=now, generation=cr["metadata"].get("generation"),
            desired=sp.replicas, selector=manifests.selector_string(c),
            sts_replicas=observed.sts_replicas, pods=observed.pods,
            leader_status=leader_status, node_status=statuses, step=step,
            operation=operation, paused=sp.paused,
            cert_not_after=cert_not_after,
            cert_renew_before=api.parse_duration(sp.tls.renew_before),
            previous=current, recovery_handled=recovery_handled,
            force_new_cluster_handled=force_handled,
            certificates=api.Certificates(
                secret_name=c.tls_secret if c.shared_certificate else None,
                client_secret_name=c.client_secret,
                ca_secret_name=c.ca_secret if sp.tls.mode == "SelfSigned" else None,
                not_after=_iso(cert_not_after) if cert_not_after else None,
                rotation=rotation),
            volumes=grow, bootstrap=bootstrap, backup=backup_status,
        ))
        await self._announce_quorum(cr, current, desired)
        await self._announce_warnings(cr, current, desired)
        await self._write_status(namespace, name, current, desired)
        _gauges(namespace, name, desired)
        return done or operation is not None

    # ---- children ------------------------------------------------------------------------------

    async def _ensure_children(self, c: manifests.Cluster, cr: Mapping[str, Any],
                               sts: dict[str, Any] | None, annotations: Mapping[str, str],
                               may_create_statefulset: bool = True) -> dict[str, Any] | None:
        """``may_create_statefulset``: False while the first member's volume is restored."""
        size = int((sts or {}).get("spec", {}).get("replicas") or 1)
        voters = min(c.spec.replicas, size)
        for obj in manifests.children(c, voters):
            extra = None
            live_now = None
            if obj["kind"] == "StatefulSet":
                if sts is None and not may_create_statefulset:
                    continue
                live_now = sts
                restart = annotations.get(api.RESTART)
                if restart:
                    obj["spec"]["template"]["metadata"]["annotations"][api.RESTART] = restart
                extra = {"replicas": 1}  # a new cluster starts with its bootstrap member
            result, live = await self.kube.ensure(obj, create_extra=extra, live=live_now)
            if obj["kind"] == "StatefulSet":
                sts = live
            if result is not None:
                metrics.ACTIONS.labels(f"{result}_{obj['kind'].lower()}").inc()
                await self.emit(cr, "Normal", result.capitalize(),
                                f"{obj['kind']} {obj['metadata']['name']} {result}")
        if manifests.pod_disruption_budget(c, voters) is None:
            pdb = cluster.path("policy/v1", "poddisruptionbudgets", c.namespace, c.name)
            if await self.kube.get(pdb) is not None and await self.kube.delete(pdb):
                await self.emit(cr, "Normal", "Deleted",
                                f"PodDisruptionBudget {c.name} deleted: {voters} member(s) "
                                "cannot lose any")
        return sts

    async def _refuse(self, cr: Mapping[str, Any], mem: _Memory, current: dict[str, Any],
                      now: dt.datetime, message: str) -> None:
        """An invalid CR: a Warning naming the field, a status that says so, nothing else."""
        meta = cr["metadata"]
        await self._warn_once(cr, mem, "InvalidSpec", message)
        desired = status.compute(status.Inputs(
            name=meta["name"], now=now, generation=meta.get("generation"), invalid=message,
            previous=current))
        await self._write_status(meta["namespace"], meta["name"], current, desired)

    async def _fixed_at_creation(self, c: manifests.Cluster, sts: Mapping[str, Any] | None,
                                 secrets: Mapping[str, dict[str, bytes] | None],
                                 current: Mapping[str, Any]) -> str | None:
        """A change to a field that must keep its first value, seen in the children (for API
        servers that did not apply the CRD's transition rules), or None."""
        if sts is not None and (why := _bootstrap_changed(c, current)) is not None:
            return why
        if sts is not None:
            env = {e.get("name"): e.get("value") for e in _node_env(sts)}
            live = env.get("CONTINUUM_PEER_DOMAIN")
            if live and live != c.peer_domain:
                was = live.split(".svc.", 1)[-1]
                return (f"spec.clusterDomain: cannot change after creation (members are known "
                        f"by addresses in {was}); set it back to {was}")
        tls_live = secrets.get(c.tls_secret) is not None
        if c.spec.tls.mode == "CertManager":
            ca = await self.kube.get(cluster.path("v1", "secrets", c.namespace, c.ca_secret))
            if ca is not None and tls_live:
                return ("spec.tls.mode: cannot change from SelfSigned to CertManager after "
                        "creation (the nodes trust the operator's CA); set it back to SelfSigned")
        elif tls_live and secrets.get(c.ca_secret) is None:
            url = cluster.path("cert-manager.io/v1", "certificates", c.namespace,
                               c.node_certificate)
            if await self._get_optional(url) is not None:
                return ("spec.tls.mode: cannot change from CertManager to SelfSigned after "
                        "creation (the nodes trust the issuer's CA); set it back to CertManager")
        return None

    async def _get_optional(self, url: str) -> dict[str, Any] | None:
        """GET that treats a resource type the server does not serve as absent."""
        try:
            return await self.kube.get(url)
        except cluster.ApiError as exc:
            if exc.status in (403, 405):
                return None
            raise

    async def _expandable(self, storage_class: str) -> bool:
        if not storage_class:
            return False  # a PVC without a class was bound by hand: nothing can grow it
        sc = await self.kube.get(cluster.cluster_path("storage.k8s.io/v1", "storageclasses",
                                                      storage_class))
        return bool((sc or {}).get("allowVolumeExpansion"))

    async def _grow_volumes(self, c: manifests.Cluster, cr: Mapping[str, Any], mem: _Memory,
                            grow: volumes.Plan) -> None:
        for pvc in grow.grow:
            url = cluster.path("v1", "persistentvolumeclaims", c.namespace, pvc)
            try:
                await self.kube.patch(url, {"spec": {"resources": {"requests": {
                    "storage": grow.size}}}})
            except cluster.ApiError as exc:  # e.g. a volume its driver cannot grow
                await self._warn_once(cr, mem, "VolumeExpansionFailed", f"PVC {pvc}: {exc}")
                continue
            metrics.ACTIONS.labels("expand_volume").inc()
            await self.emit(cr, "Normal", "VolumeExpansion",
                            f"PVC {pvc} grown to {grow.size} (online expansion)")

    async def _secrets(self, c: manifests.Cluster) -> dict[str, dict[str, bytes] | None]:
        """The TLS Secrets (decoded), read once per cycle."""
        names = [c.tls_secret, c.client_secret]
        if c.spec.tls.mode == "SelfSigned":
            names.append(c.ca_secret)
        out: dict[str, dict[str, bytes] | None] = {}
        for n in names:
            raw = await self.kube.get(cluster.path("v1", "secrets", c.namespace, n))
            out[n] = None if raw is None else (certificates.decode(raw) or {})
        return out

    async def _ensure_tls(self, c: manifests.Cluster, cr: Mapping[str, Any],
                          secrets: dict[str, dict[str, bytes] | None],
                          pods: list[dict[str, Any]],
                          statuses: Mapping[str, Mapping[str, Any] | None]
                          ) -> api.CARotation | None:
        """Self-signed mode: write what ``certificates.plan`` asks for; the rotation state."""
        if c.spec.tls.mode != "SelfSigned":
            return None
        nodes = [certificates.NodeReport.from_status(view.name, view.ready,
                                                     statuses.get(view.name))
                 for view in (_pod_view(c.name, p) for p in pods)
                 if not view.terminating and manifests.ordinal(c.name, view.name) is not None]
        plan = certificates.plan(c, {k: v or None for k, v in secrets.items()}, self.clock(),
                                 nodes, paused=c.spec.paused)
        for secret, reason in zip(plan.secrets, plan.reasons, strict=True):
            name = secret["metadata"]["name"]
            url = cluster.object_path(secret)
            old = secrets.get(name)
            if old is None:
                await self.kube.create(secret)
            else:  # a merge patch; keys the plan no longer writes are removed
                data: dict[str, str | None] = {k: None for k in old if k not in secret["data"]}
                data.update(secret["data"])
                await self.kube.patch(url, {"metadata": {"annotations": secret["metadata"][
                    "annotations"]}, "data": data})
            secrets[name] = certificates.decode(secret)
            metrics.ACTIONS.labels("issue_certificate").inc()
            await self.emit(cr, "Normal", "CertificateIssued", f"{reason}: Secret {name}")
        return plan.rotation

    # ---- nodes ---------------------------------------------------------------------------------

    async def _client(self, c: manifests.Cluster, mem: _Memory,
                      secret: dict[str, bytes] | None) -> node_client.NodeClient | None:
        material = node_client.Material.from_secret_data(secret)
        if material is None:
            return None
        if mem.client is None or mem.client.material != material:
            if mem.client is not None:
                await mem.client.close()
            mem.client = node_client.NodeClient(material, c.peer_domain,
                                                timeout=self.settings.node_timeout)
        return mem.client

    def _address(self, pod: Mapping[str, Any] | None) -> str | None:
        ip = (pod or {}).get("status", {}).get("podIP")
        return f"{ip}:{self.settings.node_port}" if ip else None

    async def _poll(self, c: manifests.Cluster, client: node_client.NodeClient | None,
                    pods: list[dict[str, Any]]) -> dict[str, dict[str, Any] | None]:
        if client is None:
            return {}
        targets = [(p["metadata"]["name"], self._address(p)) for p in pods
                   if not p["metadata"].get("deletionTimestamp")]

        async def one(pod: str, address: str | None) -> dict[str, Any] | None:
            if address is None:
                return None
            try:
                return await client.status(address, pod)
            except node_client.NodeError as exc:
                metrics.NODE_ERRORS.labels(exc.code).inc()
                log.info("%s/%s: status of %s failed: %s", c.namespace, c.name, pod, exc)
                return None

        results = await asyncio.gather(*(one(p, a) for p, a in targets))
        return {p: r for (p, _), r in zip(targets, results, strict=True)}

    # ---- steps ---------------------------------------------------------------------------------

    async def _execute(self, c: manifests.Cluster, cr: Mapping[str, Any], mem: _Memory,
                       step: planner.Step, o: planner.Observed,
                       pods: Mapping[str, Mapping[str, Any]],
                       client: node_client.NodeClient | None) -> bool:
        """Run one step; False when it could not be done now (it is retried next cycle)."""
        if isinstance(step, planner.Idle | planner.Wait):
            return False
        if isinstance(step, planner.Blocked):
            if (cr.get("status") or {}).get("blockedReason") != step.reason:
                metrics.BLOCKED.inc()
                await self.emit(cr, "Warning", "ScaleBlocked", step.reason)
            return False
        if isinstance(step, planner.RefuseForceNewCluster):
            await self.emit(cr, "Warning", "ForceNewClusterRefused", step.reason)
            return False
        kind = type(step).__name__
        try:
            message = await self._act(c, step, o, pods, client)
        except (node_client.NodeError, cluster.ApiError) as exc:
            await self._warn_once(cr, mem, f"{kind}Failed", str(exc))
            return False
        if message is None:
            return False
        mem.last_warning = None
        metrics.ACTIONS.labels(kind).inc()
        kind_type = ("Warning" if isinstance(step, planner.RecoverQuorum
                                             | planner.ForceNewCluster) else "Normal")
        await self.emit(cr, kind_type, kind, message)
        return True

    async def _act(self, c: manifests.Cluster, step: planner.Step, o: planner.Observed,
                   pods: Mapping[str, Mapping[str, Any]],
                   client: node_client.NodeClient | None) -> str | None:
        s = self.settings
        sts_url = cluster.path("apps/v1", "statefulsets", c.namespace, c.name)
        if isinstance(step, planner.GrowStatefulSet | planner.ShrinkStatefulSet):
            await self.kube.patch(sts_url, {"spec": {"replicas": step.to}})
            verb = "grown" if isinstance(step, planner.GrowStatefulSet) else "shrunk"
            return f"StatefulSet {c.name} {verb} to {step.to}"
        if isinstance(step, planner.ApplyPVCRetention):
            url = cluster.path("v1", "persistentvolumeclaims", c.namespace, step.pvc)
            await self.kube.delete(url)
            return f"PVC {step.pvc} deleted after {step.member} left the cluster"
        if isinstance(step, planner.DeletePod):
            await self.kube.delete(cluster.path("v1", "pods", c.namespace, step.pod))
            return f"pod {step.pod} deleted ({step.reason})"
        if isinstance(step, planner.RecoverQuorum):
            for pod in step.pods:
                await self.kube.delete(cluster.path("v1", "pods", c.namespace, pod))
            return (f"quorum recovery ({api.RECOVER_QUORUM}): restarted NotReady pods "
                    f"{', '.join(step.pods)}")
        if isinstance(step, planner.ForceNewCluster):
            address = self._address(pods.get(step.pod))
            if client is None or address is None:
                return None
            result = await client.force_new_cluster(address, step.pod,
                                                    timeout=s.membership_timeout)
            former = ", ".join(result.get("former_members") or []) or "none"
            return (f"{api.FORCE_NEW_CLUSTER}: {step.pod} is the sole voter of a new cluster "
                    f"(kept its log through index {result.get('kept_through_index')}, "
                    f"discarded {result.get('discarded_entries')} uncommitted entries; former "
                    f"members {former} are added back one at a time, their old Raft state "
                    "discarded)")
        # The rest talk to the leader.
        leader = o.leader
        address = self._address(pods.get(leader or ""))
        if client is None or leader is None or address is None:
            return None
        if isinstance(step, planner.AddMember):
            await client.add_member(address, leader, step.member, c.address(step.member),
                                    timeout=s.membership_timeout)
            return f"member {step.member} added (learner, then voter)"
        if isinstance(step, planner.RemoveMember):
            removed = await client.remove_member(address, leader, step.member,
                                                 timeout=s.membership_timeout)
            return (f"member {step.member} removed from Raft" if removed else
                    f"member {step.member} was already removed")
        if isinstance(step, planner.TransferLeadership):
            result = await client.transfer_leadership(address, leader, step.to,
                                                      timeout=s.membership_timeout)
            return f"leadership moved from {step.from_member} to {result.get('leader_id')}"
        raise AssertionError(f"unknown step {step!r}")

    # ---- status --------------------------------------------------------------------------------

    async def _write_operation(self, namespace: str, name: str, current: dict[str, Any],
                               op: api.Operation | None) -> None:
        value = op.model_dump(by_alias=True, exclude_none=True) if op else None
        # A diff, so keys of the previous operation that this one lacks are removed too.
        patch = status.diff({"operation": current.get("operation")}, {"operation": value})
        if value is None:
            patch = {"operation": None}
        await self.kube.patch(cr_path(namespace, name, "status"), {"status": patch})
        current["operation"] = value

    async def _write_status(self, namespace: str, name: str, current: dict[str, Any],
                            desired: Mapping[str, Any]) -> None:
        patch = status.diff(current, desired)
        if patch:
            await self.kube.patch(cr_path(namespace, name, "status"), {"status": patch})
            merged = status.apply(current, patch)
            current.clear()
            current.update(merged)

    async def _announce_warnings(self, cr: Mapping[str, Any], current: Mapping[str, Any],
                                 desired: Mapping[str, Any]) -> None:
        """A Warning when placement or storage turns bad, or says something new."""
        before = {c.get("type"): c for c in current.get("conditions") or []}
        for cond in desired.get("conditions") or []:
            if cond["type"] not in ("MembersSpread", volumes.CONDITION):
                continue
            if cond["status"] != "False" or cond["reason"] == "Resizing":
                continue
            old = before.get(cond["type"]) or {}
            if (old.get("status"), old.get("message")) != ("False", cond["message"]):
                await self.emit(cr, "Warning", cond["reason"], cond["message"])

    async def _announce_quorum(self, cr: Mapping[str, Any], current: Mapping[str, Any],
                               desired: Mapping[str, Any]) -> None:
        def q(st: Mapping[str, Any]) -> str | None:
            return next((c.get("status") for c in st.get("conditions") or []
                         if c.get("type") == "Quorum"), None)

        before, after = q(current), q(desired)
        if after == "False" and before != "False":
            message = next(c["message"] for c in desired["conditions"] if c["type"] == "Quorum")
            await self.emit(cr, "Warning", "QuorumLost", message)
        elif after == "True" and before == "False":
            await self.emit(cr, "Normal", "QuorumRestored", "a healthy quorum is back")

    # ---- deletion ------------------------------------------------------------------------------

    async def cleanup(self, namespace: str, name: str, spec_raw: Mapping[str, Any] | None,
                      uid: str = "") -> list[str]:
        """Delete every owned object (and PVCs if retention says so); names of what went."""
        mem = self._memory.pop((namespace, name), None)
        if mem is not None and mem.client is not None:
            await mem.client.close()
        try:
            sp = api.parse_spec(dict(spec_raw or {}))
        except pydantic.ValidationError:
            sp = api.FederationClusterSpec()
        c = manifests.Cluster(name, namespace, uid, sp)
        gone = []
        urls = [cluster.object_path(o) for o in manifests.children(c, sp.replicas)]
        urls.append(cluster.path("policy/v1", "poddisruptionbudgets", namespace, name))
        if sp.tls.mode == "CertManager":
            urls += [cluster.path("cert-manager.io/v1", "certificates", namespace, n)
                     for n in (c.node_certificate, c.client_certificate)]
        urls += [cluster.path("v1", "secrets", namespace, n)
                 for n in (c.tls_secret, c.ca_secret, c.client_secret)]
        urls.append(backups.job_path(namespace, f"{name}-restore"))
        for url in dict.fromkeys(urls):
            if await self.kube.delete(url):
                gone.append(url.rsplit("/", 2)[-2] + "/" + url.rsplit("/", 1)[-1])
        if sp.storage.retention.when_deleted == "Delete":
            for pvc in await self.kube.list("v1", "persistentvolumeclaims", namespace,
                                            manifests.selector_labels(c)):
                url = cluster.path("v1", "persistentvolumeclaims", namespace,
                                   pvc["metadata"]["name"])
                if await self.kube.delete(url):
                    gone.append(f"persistentvolumeclaims/{pvc['metadata']['name']}")
        return gone

    async def close(self) -> None:
        for mem in self._memory.values():
            if mem.client is not None:
                await mem.client.close()
        self._memory.clear()


# ---- helpers ----------------------------------------------------------------------------------

def _operation(raw: Any) -> api.Operation | None:
    if not raw:
        return None
    try:
        return api.Operation.model_validate(raw)
    except pydantic.ValidationError:
        log.warning("ignoring an unreadable status.operation: %r", raw)
        return None


def _pod_view(cluster_name: str, pod: Mapping[str, Any]) -> planner.Pod:
    meta = pod["metadata"]
    conditions = (pod.get("status") or {}).get("conditions") or []
    ready = any(c.get("type") == "Ready" and c.get("status") == "True" for c in conditions)
    return planner.Pod(
        name=meta["name"], ordinal=manifests.ordinal(cluster_name, meta["name"]) or 0,
        ready=ready and not meta.get("deletionTimestamp"),
        revision=(meta.get("labels") or {}).get("controller-revision-hash"),
        terminating=bool(meta.get("deletionTimestamp")),
        ip=(pod.get("status") or {}).get("podIP"),
        node=(pod.get("spec") or {}).get("nodeName"))


def _with_raft(pod: planner.Pod, st: Mapping[str, Any] | None) -> planner.Pod:
    """The pod's Raft position and own view of membership, from its /v1/status."""
    if not st:
        return pod
    raft = st.get("raft") or {}
    position = (int(raft.get("last_log_term") or 0), int(raft.get("last_log_index") or 0))
    believes = any(m.get("id") == pod.name for m in st.get("members") or [])
    return dataclasses.replace(pod, log_position=position, believes_member=believes)


def _bootstrap_changed(c: manifests.Cluster, current: Mapping[str, Any]) -> str | None:
    """spec.bootstrap set on a cluster that was created otherwise (its StatefulSet exists)."""
    src = c.spec.bootstrap.from_backup if c.spec.bootstrap else None
    if src is None:
        return None  # removing it afterwards changes nothing
    was = current.get("bootstrap") or {}
    same = (was.get("federationBackup") == src.federation_backup if src.federation_backup
            else src.target is not None and src.backup_name is not None
            and was.get("source") == backups.describe(src.target, src.backup_name))
    if was.get("phase") == "Restored" and same:
        return None
    origin = f"from {was['source']}" if was.get("source") else "without a backup"
    return (f"{backup_spec.BOOTSTRAP_FIXED}; this cluster was created {origin}: remove "
            "spec.bootstrap or set it back")


def _node_env(sts: Mapping[str, Any]) -> list[dict[str, Any]]:
    containers = (((sts.get("spec") or {}).get("template") or {}).get("spec") or {}).get(
        "containers") or []
    node: Mapping[str, Any] = next((x for x in containers if x.get("name") == "node"), {})
    return list(node.get("env") or [])


def _int(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _leader(statuses: Mapping[str, Mapping[str, Any] | None]) -> dict[str, Any] | None:
    leaders = [dict(s) for s in statuses.values() if s and s.get("role") == "leader"]
    if not leaders:
        return None
    return max(leaders, key=lambda s: int(s.get("term") or 0))


def _gauges(namespace: str, name: str, st: Mapping[str, Any]) -> None:
    quorum = next((c["status"] for c in st.get("conditions") or [] if c["type"] == "Quorum"),
                  None)
    metrics.QUORUM.labels(namespace, name).set(1 if quorum == "True" else 0)
    metrics.MEMBERS.labels(namespace, name).set(len(st.get("members") or []))
    metrics.READY.labels(namespace, name).set(st.get("readyReplicas") or 0)
