"""Backups, the pure parts: cron schedules and retention, the Jobs (validated against the
official Kubernetes schemas), their outcome, and where a backup is taken from."""

from __future__ import annotations

import datetime as dt
import json
from typing import Any

import pytest
from builders import cluster, validate

from continuum_operator import backup_spec, backups, jobs, schedule

UTC = dt.UTC
S3 = backup_spec.BackupTarget.model_validate({"s3": {
    "bucket": "bkp", "prefix": "/prod/", "credentialsSecret": {"name": "creds"},
    "serviceAccountName": "backup-irsa"}})
PVC = backup_spec.BackupTarget.model_validate({"pvc": {"claimName": "vol", "path": "a/b"}})


def t(*args: int) -> dt.datetime:
    return dt.datetime(*args, tzinfo=UTC)


# ---- cron -------------------------------------------------------------------------------------

@pytest.mark.parametrize(("expr", "now", "latest", "following"), [
    ("0 2 * * *", t(2026, 12, 4, 2, 0, 30), t(2026, 12, 4, 2, 0), t(2026, 12, 5, 2, 0)),
    ("0 2 * * *", t(2026, 12, 4, 1, 59, 59), t(2026, 12, 3, 2, 0), t(2026, 12, 4, 2, 0)),
    ("*/15 * * * *", t(2026, 12, 4, 10, 44), t(2026, 12, 4, 10, 30), t(2026, 12, 4, 10, 45)),
    ("@hourly", t(2026, 12, 4, 10, 0), t(2026, 12, 4, 10, 0), t(2026, 12, 4, 11, 0)),
    ("@weekly", t(2026, 12, 4, 10, 0), t(2026, 11, 29, 0, 0), t(2026, 12, 6, 0, 0)),
    ("30 1 1,15 * MON-FRI", t(2026, 12, 4, 10, 0), t(2026, 12, 4, 1, 30),
     t(2026, 12, 7, 1, 30)),  # day-of-month OR day-of-week, as cron does
])
def test_slots(expr: str, now: dt.datetime, latest: dt.datetime,
               following: dt.datetime) -> None:
    assert schedule.problem(expr) is None
    assert schedule.latest(expr, now) == latest
    assert schedule.following(expr, now) == following


@pytest.mark.parametrize(("expr", "why"), [
    ("61 * * * *", "Bad minute"), ("0 0 31 2 *", "Bad day-of-month"),
    ("* * * *", "five fields"), ("@often", "five fields"), ("0 2 * * * *", "five fields"),
])
def test_bad_schedules_are_refused_with_the_field_named(expr: str, why: str) -> None:
    assert why in (schedule.problem(expr) or "")
    with pytest.raises(ValueError) as info:
        backup_spec.BackupSchedule.model_validate({"schedule": expr, "target": {
            "pvc": {"claimName": "b"}}})
    assert why in str(info.value)


def test_scheduled_names_fit_their_jobs_names() -> None:
    assert schedule.backup_name("demo", t(2026, 12, 4, 2, 0, 59)) == "demo-202612040200"
    long = schedule.backup_name("a" * 52, t(2026, 12, 4, 2, 0))
    assert len(long) <= backup_spec.NAME_MAX and long.endswith("-202612040200")
    assert len(jobs.delete_job_name(long)) <= 63
    assert backup_spec.name_problem(long) is None


def _r(name: str, hour: int, ok: bool = True) -> schedule.Record:
    return schedule.Record(name, t(2026, 12, 4, hour, 0), ok)


@pytest.mark.parametrize(("keep", "age", "expected"), [
    (None, None, ["f1"]),                       # failures older than the newest success
    (2, None, ["b1", "b2", "f1"]),
    (None, 3 * 3600, ["b1", "b2", "f1"]),       # b3 is 3 h old: not over
    (10, 1, ["b1", "b2", "f1", "b3"]),          # never the newest
    (1, None, ["b1", "b2", "f1", "b3"]),
])
def test_retention(keep: int | None, age: int | None, expected: list[str]) -> None:
    records = [_r("b1", 1), _r("f1", 2, ok=False), _r("b2", 2), _r("b3", 3), _r("b4", 6),
               _r("f2", 7, ok=False)]  # f2 failed after the newest success: kept
    assert schedule.expired(records, keep, age, t(2026, 12, 4, 6, 0)) == expected
    assert schedule.expired([_r("f", 1, ok=False)], 1, 1, t(2026, 12, 4, 6, 0)) == []


def test_ages() -> None:
    assert schedule.age_seconds("30d") == 30 * 86400
    assert schedule.age_seconds("1d12h") == 36 * 3600
    with pytest.raises(ValueError):
        schedule.age_seconds("1 week")


# ---- Jobs -------------------------------------------------------------------------------------

def _spec(**kw: Any) -> backup_spec.FederationBackupSpec:
    return backup_spec.FederationBackupSpec.model_validate({"cluster": "demo", **kw})


@pytest.mark.parametrize("target", [S3, PVC], ids=["s3", "pvc"])
def test_every_job_is_valid_kubernetes(target: backup_spec.BackupTarget) -> None:
    c = cluster(podTemplate={"imagePullSecrets": [{"name": "regcred"}]})
    spec = _spec(target=target.model_dump(by_alias=True, exclude_none=True))
    for job in (jobs.backup_job(c, "b1", "uid-b1", spec, "https://x:7000"),
                jobs.delete_job(c, "b1", "uid-b1", target, "b1"),
                jobs.restore_job(c, target, "b1"), jobs.first_claim(c)):
        validate(json.loads(json.dumps(job)))


def test_the_backup_job_holds_no_secret_and_runs_as_the_nodes_do() -> None:
    c = cluster()
    job = jobs.backup_job(c, "b1", "uid-b1", _spec(target={"pvc": {"claimName": "vol"}}),
                          "https://demo-1:7000")
    pod = job["spec"]["template"]["spec"]
    (ctr,) = pod["containers"]
    assert ctr["image"] == c.spec.image.reference and ctr["command"][:2] == ["/bin/sh", "-c"]
    assert ctr["args"] == ["backup", "create", "--to", "/backups", "--name", "b1", "--api",
                           "https://demo-1:7000", "--tls-dir", "/etc/continuum/client"]
    assert ctr["securityContext"]["readOnlyRootFilesystem"] is True
    assert ctr["terminationMessagePolicy"] == "FallbackToLogsOnError"
    assert pod["securityContext"]["fsGroup"] == 10001 and pod["restartPolicy"] == "Never"
    assert pod["automountServiceAccountToken"] is False and "serviceAccountName" not in pod
    # Its pods are not node pods: no Service, PDB or StatefulSet selects them.
    labels = job["spec"]["template"]["metadata"]["labels"]
    assert labels["app.kubernetes.io/component"] == "backup"
    assert job["metadata"]["labels"][backup_spec.CLUSTER_LABEL] == "demo"


def test_s3_credentials_or_a_service_account_reach_the_job() -> None:
    job = jobs.delete_job(cluster(), "b1", "u", S3, "b1")
    pod = job["spec"]["template"]["spec"]
    assert pod["serviceAccountName"] == "backup-irsa" and pod["automountServiceAccountToken"]
    (ctr,) = pod["containers"]
    assert ctr["args"] == ["backup", "delete", "s3://bkp/prod/b1"]
    names = [e["name"] for e in ctr["env"]]
    assert names == ["AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN"]


def test_the_restore_job_writes_the_first_members_claim_only() -> None:
    c = cluster(storage={"size": "20Gi", "storageClassName": "fast"})
    job = jobs.restore_job(c, PVC, "nightly")
    (ctr,) = job["spec"]["template"]["spec"]["containers"]
    assert ctr["args"] == ["restore", "--from", "/backups/a/b/nightly", "--data-dir",
                           "/var/lib/continuum", "--node-id", "demo-0", "--address",
                           "demo-0.demo-peers.prod.svc.cluster.local:7000"]
    mounts = {m["name"]: m for m in ctr["volumeMounts"]}
    assert mounts["backups"]["readOnly"] is True and mounts["data"]["mountPath"] == (
        "/var/lib/continuum")
    claim = jobs.first_claim(c)
    assert claim["metadata"]["name"] == "data-demo-0"
    template = c.spec  # the StatefulSet adopts it: the same claim it would make
    from continuum_operator import manifests

    (tpl,) = manifests.statefulset(c)["spec"]["volumeClaimTemplates"]
    assert claim["spec"] == tpl["spec"] and claim["metadata"]["labels"] == tpl["metadata"][
        "labels"]
    assert template.storage.size == "20Gi"
    (owner,) = job["metadata"]["ownerReferences"]
    assert (owner["kind"], owner["uid"]) == ("FederationCluster", "uid-demo")


def _job(cond: str | None, uid: str = "j1") -> dict[str, Any]:
    status: dict[str, Any] = {"startTime": "2026-12-04T02:00:00Z"}
    if cond:
        status["conditions"] = [{"type": cond, "status": "True",
                                 "lastTransitionTime": "2026-12-04T02:01:00Z",
                                 "reason": "BackoffLimitExceeded"}]
    return {"metadata": {"uid": uid}, "status": status}


def _pod(code: int, message: str, at: str, owner: str = "j1") -> dict[str, Any]:
    return {"metadata": {"ownerReferences": [{"uid": owner}]}, "status": {
        "containerStatuses": [{"name": "backup", "state": {"terminated": {
            "exitCode": code, "message": message, "finishedAt": at}}}]}}


def test_outcomes() -> None:
    assert jobs.outcome(_job(None), []).state == "Running"
    summary = {"name": "b1", "raft": {"index": 7, "term": 2}}
    ok = jobs.outcome(_job("Complete"), [_pod(1, "boom", "01"), _pod(0, json.dumps(summary),
                                                                     "02")])
    assert ok.state == "Succeeded" and ok.result == summary
    log = "some line\nerror: http://demo-1:7000: not_caught_up: behind\n"
    failed = jobs.outcome(_job("Failed"), [_pod(1, "error: older", "01"),
                                           _pod(1, log, "02"),
                                           _pod(1, "error: another Job's", "03", owner="j0")])
    assert failed.state == "Failed"
    assert failed.message == "error: http://demo-1:7000: not_caught_up: behind"
    assert "BackoffLimitExceeded" in jobs.outcome(_job("Failed"), []).message


def test_a_backup_is_taken_from_the_most_caught_up_healthy_follower() -> None:
    c = cluster()
    members = [
        {"name": "demo-0", "role": "leader", "voter": True, "healthy": True, "ready": True,
         "matchIndex": 90},
        {"name": "demo-1", "role": "follower", "voter": True, "healthy": True, "ready": True,
         "matchIndex": 80},
        {"name": "demo-2", "role": "follower", "voter": True, "healthy": True, "ready": True,
         "matchIndex": 88},
        {"name": "demo-3", "role": "follower", "voter": True, "healthy": False, "ready": True,
         "matchIndex": 90},
        {"name": "demo-4", "role": "learner", "voter": False, "healthy": True, "ready": True,
         "matchIndex": 90}]
    url, member = backups.choose_source(c, {"leader": "demo-0", "members": members})
    assert (url, member) == ("https://demo-2.demo-peers.prod.svc.cluster.local:7000", "demo-2")
    url, member = backups.choose_source(c, {"leader": "demo-0", "members": members[:1]})
    assert (url, member) == ("https://demo.prod.svc.cluster.local:7000", None)


def test_where_a_backup_is_described() -> None:
    assert backups.describe(S3, "n") == "s3://bkp/prod/n"
    assert backups.describe(PVC, "n") == "pvc://vol/a/b/n"
    assert jobs.human_size(3 * 1024 * 1024) == "3.0 MiB" and jobs.human_size(10) == "10 B"
