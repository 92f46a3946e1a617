"""Backups, the I/O shell: FederationBackups (one Job each), a cluster's bootstrap from a
backup, and its backup schedule with retention. The decisions are pure (``jobs.py``,
``schedule.py``); this module reads, creates and deletes through ``cluster.Kube``.

- ``reconcile_backup``: one cycle of one FederationBackup, run by its kopf daemon until it
  is Succeeded or Failed: wait for the cluster to have a leader, start the Job (from a
  caught-up follower), then follow the Job into the status.
- ``bootstrap``: while a cluster created with ``spec.bootstrap.fromBackup`` has no
  StatefulSet yet: make the first member's PVC, restore into it with a Job, and only then
  let the StatefulSet be created. A failed restore is reported and creates nothing more;
  deleting the failed Job retries it.
- ``run_schedule``: start the FederationBackup of each due slot, one at a time; after a
  scheduled backup succeeds, mark the backups retention removes (annotation, so the decision
  survives a restart), delete each one's data with a Job, then the object.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any

import pydantic

from . import backup_spec, cluster, jobs, manifests, metrics, schedule, status
from . import spec as api

log = logging.getLogger("continuum_operator")

EventSink = Callable[[Mapping[str, Any], str, str, str], Awaitable[None] | None]
TERMINAL = ("Succeeded", "Failed")


def _iso(t: dt.datetime | None) -> str | None:
    if t is None:
        return None
    return t.astimezone(dt.UTC).replace(microsecond=0).isoformat().replace("+00:00", "Z")


def _parse_time(text: Any) -> dt.datetime | None:
    if not isinstance(text, str) or not text:
        return None
    try:
        return dt.datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return None


def backup_path(namespace: str, name: str | None = None, sub: str | None = None) -> str:
    return cluster.path(backup_spec.API_VERSION, backup_spec.PLURAL, namespace, name, sub)


def job_path(namespace: str, name: str) -> str:
    return cluster.path("batch/v1", "jobs", namespace, name)


def describe(target: backup_spec.BackupTarget, name: str) -> str:
    """Where a backup is, for people: s3://bucket/prefix/NAME or pvc://claim/path/NAME."""
    if target.pvc is not None:
        path = "/".join(p for p in (target.pvc.claim_name, target.pvc.path.strip("/"), name) if p)
        return f"pvc://{path}"
    return f"{jobs.target_url(target)}/{name}"


def choose_source(c: manifests.Cluster,
                  cluster_status: Mapping[str, Any]) -> tuple[str, str | None]:
    """The node API a backup is taken from: the caught-up follower (highest match index)
    that is healthy and ready, so the leader keeps its time for writes; else the client
    Service (any ready node)."""
    leader = cluster_status.get("leader")
    followers = [m for m in cluster_status.get("members") or []
                 if m.get("voter") and m.get("healthy") and m.get("ready")
                 and m.get("role") == "follower" and m.get("name") != leader]
    if followers:
        best = max(followers, key=lambda m: (m.get("matchIndex") or -1,
                                              manifests.ordinal(c.name, m["name"]) or 0))
        return f"https://{c.address(best['name'])}", str(best["name"])
    service = f"{c.name}.{c.namespace}.svc.{c.spec.cluster_domain}"
    return f"https://{service}:{manifests.PEER_PORT}", None


@dataclass(frozen=True, slots=True)
class Gate:
    """Whether the StatefulSet may be created, and the cluster's ``status.bootstrap``."""

    ready: bool
    status: dict[str, Any] | None


class Backups:
    def __init__(self, kube: cluster.Kube, emit: EventSink,
                 clock: Callable[[], dt.datetime]) -> None:
        self.kube = kube
        self._emit_fn = emit
        self.clock = clock
        self._warned: dict[tuple[str, str], str] = {}

    async def emit(self, obj: Mapping[str, Any], type_: str, reason: str, message: str) -> None:
        result = self._emit_fn(obj, type_, reason, message)
        if result is not None:
            await result

    async def _warn_once(self, obj: Mapping[str, Any], reason: str, message: str) -> None:
        meta = obj["metadata"]
        key = (f"{obj.get('kind')}/{meta.get('namespace')}/{meta.get('name')}", reason)
        if self._warned.get(key) != message:
            self._warned[key] = message
            await self.emit(obj, "Warning", reason, message)

    async def _job_outcome(self, namespace: str, job: Mapping[str, Any]) -> jobs.Outcome:
        name = job["metadata"]["name"]
        pods = await self.kube.list("v1", "pods", namespace, {"job-name": name})
        return jobs.outcome(job, pods)

    # ---- FederationBackup ------------------------------------------------------------------

    async def reconcile_backup(self, namespace: str, name: str) -> bool:
        """One cycle; True once the backup is Succeeded or Failed (nothing more to do)."""
        fb = await self.kube.get(backup_path(namespace, name))
        if fb is None or fb["metadata"].get("deletionTimestamp"):
            return True
        current = dict(fb.get("status") or {})
        if current.get("phase") in TERMINAL:
            return True
        if (bad := backup_spec.name_problem(name)) is not None:
            await self._fail(fb, current, "InvalidSpec", f"metadata.name: {bad}")
            return True
        try:
            sp = backup_spec.parse_backup_spec(fb.get("spec"))
        except pydantic.ValidationError as exc:
            await self._fail(fb, current, "InvalidSpec", api.describe_errors(exc))
            return True
        job_name = jobs.backup_job_name(name)
        job = await self.kube.get(job_path(namespace, job_name))
        if job is None:
            if current.get("phase") == "Running":
                await self._fail(fb, current, "JobDeleted",
                                 f"Job {job_name} was deleted before it finished")
                return True
            return await self._start(fb, current, sp)
        if not jobs.owned_by(job, fb["metadata"].get("uid", "")):
            await self._fail(fb, current, "JobConflict",
                             f"a Job {job_name} exists that this backup did not create")
            return True
        result = await self._job_outcome(namespace, job)
        if result.state == "Running":
            return False
        if result.state == "Failed":
            await self._fail(fb, current, "BackupFailed", result.message, result)
            return True
        await self._succeed(fb, current, sp, result)
        return True

    async def _start(self, fb: Mapping[str, Any], current: dict[str, Any],
                     sp: backup_spec.FederationBackupSpec) -> bool:
        meta = fb["metadata"]
        namespace, name = meta["namespace"], meta["name"]
        cr = await self.kube.get(cluster.path(api.API_VERSION, api.PLURAL, namespace, sp.cluster))
        if cr is None:
            await self._pending(fb, current, "ClusterNotFound",
                                f"no FederationCluster {sp.cluster} in namespace {namespace}")
            return False
        try:
            c_spec = api.parse_spec(cr.get("spec"))
        except pydantic.ValidationError:
            await self._pending(fb, current, "ClusterInvalid",
                                f"FederationCluster {sp.cluster} has an invalid spec")
            return False
        c = manifests.Cluster(sp.cluster, namespace, cr["metadata"].get("uid", ""), c_spec)
        c_status = cr.get("status") or {}
        if not c_status.get("leader"):
            await self._pending(fb, current, "ClusterNotReady",
                                f"FederationCluster {sp.cluster} has no leader (phase "
                                f"{c_status.get('phase') or 'unknown'}): a backup needs one")
            return False
        if await self.kube.get(cluster.path("v1", "secrets", namespace, c.client_secret)) is None:
            await self._pending(fb, current, "NoClientCertificate",
                                f"the operator's client certificate Secret {c.client_secret} "
                                "does not exist yet")
            return False
        url, member = choose_source(c, c_status)
        job = jobs.backup_job(c, name, meta.get("uid", ""), sp, url)
        await self.kube.create_once(job)
        metrics.ACTIONS.labels("start_backup").inc()
        now = _iso(self.clock())
        await self._write(fb, current, {
            "phase": "Running", "job": job["metadata"]["name"], "source": url, "node": member,
            "backupName": name, "startedAt": now, "error": None,
        }, [("Completed", "False", "Running", f"Job {job['metadata']['name']} is copying "
             f"from {member or 'a ready node'}"),
            ("Failed", "False", "Running", "")])
        await self.emit(fb, "Normal", "BackupStarted",
                        f"Job {job['metadata']['name']}: backup of {sp.cluster} from "
                        f"{member or 'a ready node (no caught-up follower)'} to "
                        f"{describe(sp.target, name)}")
        return False

    async def _pending(self, fb: Mapping[str, Any], current: dict[str, Any], reason: str,
                       message: str) -> None:
        await self._write(fb, current, {"phase": "Pending"},
                          [("Completed", "False", reason, message),
                           ("Failed", "False", reason, "")])
        await self._warn_once(fb, reason, message)

    async def _fail(self, fb: Mapping[str, Any], current: dict[str, Any], reason: str,
                    message: str, result: jobs.Outcome | None = None) -> None:
        fields: dict[str, Any] = {"phase": "Failed", "error": message,
                                  "finishedAt": _iso(self.clock())}
        if result is not None and result.started:
            fields["startedAt"] = current.get("startedAt") or result.started
        await self._write(fb, current, fields, [("Completed", "False", reason, message),
                                                ("Failed", "True", reason, message)])
        metrics.ACTIONS.labels("backup_failed").inc()
        await self.emit(fb, "Warning", reason, message)

    async def _succeed(self, fb: Mapping[str, Any], current: dict[str, Any],
                       sp: backup_spec.FederationBackupSpec, result: jobs.Outcome) -> None:
        name = fb["metadata"]["name"]
        r = result.result or {}
        archive = r.get("archive") or {}
        raft = r.get("raft") or {}
        size = archive.get("size")
        fields = {
            "phase": "Succeeded", "backupName": r.get("name") or name,
            "location": describe(sp.target, r.get("name") or name),
            "node": r.get("node_id") or current.get("node"),
            "clusterId": (r.get("cluster") or {}).get("id"),
            "raftIndex": raft.get("index"), "raftTerm": raft.get("term"),
            "sizeBytes": size, "size": jobs.human_size(size) if isinstance(size, int) else None,
            "createdAt": r.get("created_at"), "finishedAt": result.finished or _iso(self.clock()),
            "error": None,
        }
        message = (f"stored at {fields['location']}: Raft index {fields['raftIndex']}, "
                   f"{fields['size']}, from {fields['node']}")
        await self._write(fb, current, fields, [("Completed", "True", "Succeeded", message),
                                                ("Failed", "False", "Succeeded", "")])
        metrics.ACTIONS.labels("backup_succeeded").inc()
        await self.emit(fb, "Normal", "BackupSucceeded", message)

    async def _write(self, fb: Mapping[str, Any], current: dict[str, Any],
                     fields: Mapping[str, Any], conds: list[tuple[str, str, str, str]]) -> None:
        now = _iso(self.clock())
        prev = {c.get("type"): c for c in current.get("conditions") or []}
        conditions = []
        for type_, st, reason, message in conds:
            old = prev.get(type_) or {}
            since = old.get("lastTransitionTime") if old.get("status") == st else None
            conditions.append({"type": type_, "status": st, "reason": reason,
                               "message": message, "lastTransitionTime": since or now,
                               "observedGeneration": fb["metadata"].get("generation")})
        desired = {**current, **fields, "conditions": conditions,
                   "observedGeneration": fb["metadata"].get("generation")}
        patch = status.diff(current, desired)
        if patch:
            meta = fb["metadata"]
            await self.kube.patch(backup_path(meta["namespace"], meta["name"], "status"),
                                  {"status": patch})
            merged = status.apply(current, patch)
            current.clear()
            current.update(merged)

    # ---- bootstrap from a backup -----------------------------------------------------------

    async def _source(self, c: manifests.Cluster
                      ) -> tuple[backup_spec.BackupTarget, str, str | None] | str:
        """The target and name to restore, and the FederationBackup it came from; or why
        it cannot be known yet."""
        src = c.spec.bootstrap.from_backup if c.spec.bootstrap else None
        assert src is not None
        if src.federation_backup is None:
            assert src.target is not None and src.backup_name is not None
            return src.target, src.backup_name, None
        fb = await self.kube.get(backup_path(c.namespace, src.federation_backup))
        if fb is None:
            return f"FederationBackup {src.federation_backup} does not exist"
        fst = fb.get("status") or {}
        if fst.get("phase") != "Succeeded":
            why = f": {fst['error']}" if fst.get("error") else ""
            return (f"FederationBackup {src.federation_backup} is "
                    f"{fst.get('phase') or 'Pending'}{why}")
        try:
            fsp = backup_spec.parse_backup_spec(fb.get("spec"))
        except pydantic.ValidationError as exc:
            return f"FederationBackup {src.federation_backup}: {api.describe_errors(exc)}"
        return fsp.target, str(fst.get("backupName") or src.federation_backup), \
            src.federation_backup

    async def bootstrap(self, c: manifests.Cluster, cr: Mapping[str, Any],
                        current: Mapping[str, Any]) -> Gate:
        previous = dict(current.get("bootstrap") or {})
        if previous.get("phase") == "Restored":
            return Gate(True, previous)
        src = c.spec.bootstrap.from_backup if c.spec.bootstrap else None
        assert src is not None
        found = await self._source(c)
        if isinstance(found, str):
            failed = found.startswith(f"FederationBackup {src.federation_backup} is Failed")
            st = {"phase": "Failed" if failed else "Restoring",
                  "source": f"federationBackup {src.federation_backup}",
                  "federationBackup": src.federation_backup, "message": found}
            await self._warn_once(cr, "RestoreFailed" if failed else "RestoreWaiting", found)
            return Gate(False, st)
        target, name, fb_name = found
        base = {"source": describe(target, name), "federationBackup": fb_name,
                "job": jobs.restore_job_name(c)}
        claim = jobs.first_claim(c)
        created, _ = await self.kube.create_once(claim)
        if created:
            await self.emit(cr, "Normal", "Created",
                            f"PersistentVolumeClaim {claim['metadata']['name']} created for "
                            "the restore")
        job = jobs.restore_job(c, target, name)
        created, live = await self.kube.create_once(job)
        if created:
            metrics.ACTIONS.labels("start_restore").inc()
            await self.emit(cr, "Normal", "RestoreStarted",
                            f"Job {base['job']}: restoring {base['source']} into "
                            f"{claim['metadata']['name']} as {c.pod(0)}")
            return Gate(False, {**base, "phase": "Restoring",
                                "message": f"Job {base['job']} is restoring the backup"})
        if not jobs.owned_by(live, c.uid):
            message = f"a Job {base['job']} exists that this cluster did not create"
            await self._warn_once(cr, "RestoreFailed", message)
            return Gate(False, {**base, "phase": "Failed", "message": message})
        result = await self._job_outcome(c.namespace, live)
        if result.state == "Running":
            return Gate(False, {**base, "phase": "Restoring",
                                "message": f"Job {base['job']} is restoring the backup"})
        if result.state == "Failed":
            message = (f"restore of {base['source']} failed: {result.message}. Nothing else "
                       f"was created; fix the cause, then delete Job {base['job']} to retry")
            if previous.get("phase") != "Failed":
                await self.emit(cr, "Warning", "RestoreFailed", message)
            return Gate(False, {**base, "phase": "Failed", "message": message})
        r = result.result or {}
        raft = r.get("raft") or {}
        st = {**base, "phase": "Restored", "clusterId": (r.get("cluster") or {}).get("id"),
              "raftIndex": raft.get("index"), "backupCreatedAt": r.get("created_at"),
              "restoredAt": result.finished or _iso(self.clock()),
              "message": f"{c.pod(0)} restored from {base['source']}; the other members "
                         "join it empty"}
        await self.emit(cr, "Normal", "Restored",
                        f"{c.pod(0)}'s volume holds {base['source']} (Raft index "
                        f"{st['raftIndex']}); creating the StatefulSet")
        return Gate(True, st)

    # ---- schedule and retention ------------------------------------------------------------

    async def _scheduled(self, c: manifests.Cluster) -> list[dict[str, Any]]:
        return await self.kube.list(backup_spec.API_VERSION, backup_spec.PLURAL, c.namespace,
                                    {backup_spec.CLUSTER_LABEL: c.name,
                                     backup_spec.SCHEDULED_LABEL: "true"})

    async def run_schedule(self, c: manifests.Cluster, cr: Mapping[str, Any],
                           current: Mapping[str, Any], now: dt.datetime
                           ) -> dict[str, Any] | None:
        """One pass; the new ``status.backup`` (None: no schedule)."""
        sp = c.spec.backup
        if sp is None:
            return None
        prev = dict(current.get("backup") or {})
        out = {**prev, "schedule": sp.schedule,
               "nextScheduleTime": _iso(schedule.following(sp.schedule, now))}
        slot = schedule.latest(sp.schedule, now)
        last = _parse_time(prev.get("lastScheduleTime"))
        fbs = await self._scheduled(c)
        if prev.get("schedule") != sp.schedule or sp.suspend:
            out["lastScheduleTime"] = _iso(slot)  # slots before it was set (or resumed) pass
        elif slot is not None and (last is None or slot > last):
            out["lastScheduleTime"] = _iso(slot)
            busy = [f for f in fbs if (f.get("status") or {}).get("phase") not in TERMINAL]
            if busy:
                await self.emit(cr, "Warning", "BackupSkipped",
                                f"the backup due at {_iso(slot)} was not started: "
                                f"{busy[0]['metadata']['name']} is still "
                                f"{(busy[0].get('status') or {}).get('phase') or 'Pending'}")
            else:
                fb = self._scheduled_backup(c, cr, schedule.backup_name(c.name, slot))
                created, live = await self.kube.create_once(fb)
                out["lastBackup"] = fb["metadata"]["name"]
                if created:
                    fbs.append(live)
                    metrics.ACTIONS.labels("schedule_backup").inc()
                    await self.emit(cr, "Normal", "BackupScheduled",
                                    f"FederationBackup {fb['metadata']['name']} created for "
                                    f"the slot {_iso(slot)}")
        await self._retention(c, cr, sp, fbs, out, now)
        return out

    def _scheduled_backup(self, c: manifests.Cluster, cr: Mapping[str, Any],
                          name: str) -> dict[str, Any]:
        assert c.spec.backup is not None
        sp = c.spec.backup
        body: dict[str, Any] = {"cluster": c.name,
                                "target": sp.target.model_dump(by_alias=True,
                                                               exclude_none=True)}
        if sp.max_rate_mib_per_second:
            body["maxRateMiBPerSecond"] = sp.max_rate_mib_per_second
        return {"apiVersion": backup_spec.API_VERSION, "kind": backup_spec.KIND,
                "metadata": {"name": name, "namespace": c.namespace,
                             "labels": {**manifests.labels(c, "backup"),
                                        backup_spec.CLUSTER_LABEL: c.name,
                                        backup_spec.SCHEDULED_LABEL: "true"}},
                "spec": body}

    async def _retention(self, c: manifests.Cluster, cr: Mapping[str, Any],
                         sp: backup_spec.BackupSchedule, fbs: list[dict[str, Any]],
                         out: dict[str, Any], now: dt.datetime) -> None:
        def taken(fb: Mapping[str, Any]) -> dt.datetime:
            st = fb.get("status") or {}
            return (_parse_time(st.get("createdAt")) or _parse_time(st.get("startedAt"))
                    or _parse_time(fb["metadata"].get("creationTimestamp")) or now)

        done = [f for f in fbs if (f.get("status") or {}).get("phase") in TERMINAL]
        good = sorted((f for f in done if f["status"]["phase"] == "Succeeded"), key=taken)
        if good:
            out["lastSuccessfulBackup"] = good[-1]["metadata"]["name"]
            out["lastSuccessTime"] = _iso(taken(good[-1]))
            newest = good[-1]["metadata"]["name"]
            if out.get("retentionAppliedFor") != newest:
                out["retentionAppliedFor"] = newest
                records = [schedule.Record(f["metadata"]["name"], taken(f),
                                           f["status"]["phase"] == "Succeeded") for f in done]
                max_age = (schedule.age_seconds(sp.retention.max_age)
                           if sp.retention.max_age else None)
                victims = schedule.expired(records, sp.retention.keep, max_age, now)
                for name in victims:
                    await self.kube.patch(backup_path(c.namespace, name), {"metadata": {
                        "annotations": {backup_spec.EXPIRED_ANNOTATION: _iso(now)}}})
                    for f in fbs:
                        if f["metadata"]["name"] == name:
                            f["metadata"].setdefault("annotations", {})[
                                backup_spec.EXPIRED_ANNOTATION] = _iso(now)
                    # A deletion that failed before is tried again.
                    await self.kube.delete(job_path(c.namespace, jobs.delete_job_name(name)))
                if victims:
                    await self.emit(cr, "Normal", "RetentionApplied",
                                    f"after {newest} succeeded, removing "
                                    f"{len(victims)} backup(s): {', '.join(victims)}")
        for fb in fbs:
            if (fb["metadata"].get("annotations") or {}).get(backup_spec.EXPIRED_ANNOTATION):
                await self._expire(c, cr, fb)

    async def _expire(self, c: manifests.Cluster, cr: Mapping[str, Any],
                      fb: Mapping[str, Any]) -> None:
        """Delete an expired backup's data (a Job), then its FederationBackup."""
        meta = fb["metadata"]
        try:
            sp = backup_spec.parse_backup_spec(fb.get("spec"))
        except pydantic.ValidationError:
            await self.kube.delete(backup_path(c.namespace, meta["name"]))
            return
        stored = (fb.get("status") or {}).get("backupName") or meta["name"]
        job = jobs.delete_job(c, meta["name"], meta.get("uid", ""), sp.target, stored)
        created, live = await self.kube.create_once(job)
        if created:
            return
        result = await self._job_outcome(c.namespace, live)
        if result.state == "Failed":
            await self._warn_once(cr, "RetentionFailed",
                                  f"deleting {describe(sp.target, stored)} failed: "
                                  f"{result.message} (tried again after the next successful "
                                  "backup)")
        elif result.state == "Succeeded":
            await self.kube.delete(backup_path(c.namespace, meta["name"]))
            metrics.ACTIONS.labels("expire_backup").inc()
            await self.emit(cr, "Normal", "BackupExpired",
                            f"{describe(sp.target, stored)} and FederationBackup "
                            f"{meta['name']} deleted (retention)")
