"""Backups with the real operator (kopf + our handlers) against kmock's emulator: a
FederationBackup's Job and status, a failed backup, scheduled backups and retention, and a
cluster bootstrapped from a backup.

Jobs are run by ``harness.MockJobController``: each attempt's exit code and termination
message come from the test (what ``continuum-federation`` would print), so the tests check
what the operator asks for (the Job, validated against the official Kubernetes schema) and
what it makes of the answer.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import kopf
import pytest
from builders import validate
from harness import (
    NS,
    Api,
    Emulator,
    FakeFederation,
    MockJobController,
    MockStatefulSetController,
    arg,
    declare_resources,
    free_port,
    job_args,
    operator_settings,
    run_operator,
    wait_until,
)
from test_operator_kmock import cycles

from continuum_operator import backup_spec

pytestmark = [pytest.mark.timeout(180), pytest.mark.kmock(cls=Emulator)]

FB = f"/apis/{backup_spec.API_VERSION}/namespaces/{NS}/{backup_spec.PLURAL}"
JOBS = f"/apis/batch/v1/namespaces/{NS}/jobs"
STS = f"/apis/apps/v1/namespaces/{NS}/statefulsets"
S3 = {"s3": {"bucket": "backups", "prefix": "prod/demo", "region": "eu-west-1",
             "endpointURL": "http://minio.storage:9000",
             "credentialsSecret": {"name": "s3-credentials"}}}
PVC = {"pvc": {"claimName": "backup-volume", "path": "demo"}}
CLUSTER_ID = "c0ffee" * 5 + "ab"


class Clock:
    """The operator's clock, moved by the test (schedules are minutes and hours apart)."""

    def __init__(self, start: dt.datetime) -> None:
        self.now = start

    def __call__(self) -> dt.datetime:
        return self.now


class Env:
    def __init__(self, kmock: Any, tmp_path: Path) -> None:
        self.api = Api(str(kmock.url))
        self.fed = FakeFederation("demo", free_port(), tmp_path / "nodes")
        self.controller = MockStatefulSetController(self.api, self.fed)
        self.jobs = MockJobController(self.api, self.run)
        # Short cycles: every schedule slot and retention step waits for one.
        self.settings = operator_settings(str(kmock.url), self.fed.port, interval=0.1)
        self.clock = Clock(dt.datetime(2026, 12, 4, 1, 30, tzinfo=dt.UTC))
        self.memo = kopf.Memo()
        self.memo["clock"] = self.clock
        self.gate: asyncio.Event | None = None     # hold every Job's container until set
        self.fail: dict[str, str] = {}             # Job name -> the error it prints
        self.ran: list[list[str]] = []             # each attempt's CLI arguments
        self.index = 100

    async def run(self, job: dict[str, Any]) -> tuple[int, str]:
        """Stand-in for the Job's container: what the CLI's wrapper would report."""
        self.ran.append(job_args(job))
        if self.gate is not None:
            await self.gate.wait()
        name = job["metadata"]["name"]
        if name in self.fail:
            return 1, f"Traceback? no:\nerror: {self.fail[name]}\n"
        args = job_args(job)
        if args[0] == "backup" and args[1] == "delete":
            return 0, ""
        self.index += 10
        backup = arg(job, "--name") or (arg(job, "--from") or "").rsplit("/", 1)[-1]
        summary = {"name": backup, "cluster": {"name": "demo", "id": CLUSTER_ID},
                   "node_id": "demo-1", "created_at": self.clock.now.isoformat(),
                   "archive": {"size": 3 * 1024 * 1024 + 512, "sha256": "ab" * 32},
                   "raft": {"index": self.index, "term": 3},
                   "restored": True if args[0] == "restore" else None}
        return 0, json.dumps(summary)

    async def fb(self, name: str) -> dict[str, Any]:
        got = await self.api.get(f"{FB}/{name}")
        assert got is not None, name
        return got

    async def phase(self, name: str) -> str | None:
        got = await self.api.get(f"{FB}/{name}")
        return None if got is None else (got.get("status") or {}).get("phase")

    async def create_backup(self, name: str, spec: dict[str, Any],
                            status: dict[str, Any] | None = None) -> None:
        await self.api.call("POST", FB, {
            "apiVersion": backup_spec.API_VERSION, "kind": backup_spec.KIND,
            "metadata": {"name": name, "namespace": NS, "uid": f"uid-{name}",
                         "resourceVersion": "1", "generation": 1},
            "spec": spec})
        if status is not None:
            await self.api.call("PATCH", f"{FB}/{name}/status", {"status": status})

    async def converged(self, n: int) -> bool:
        st = await self.api.cr_status("demo")
        voters = [m for m in st.get("members") or [] if m.get("voter")]
        return (st.get("phase") == "Running" and len(voters) == n
                and st.get("readyReplicas") == n and not st.get("operation"))


@pytest.fixture()
async def env(kmock: Any, tmp_path: Path) -> AsyncIterator[Env]:
    declare_resources(kmock)
    e = Env(kmock, tmp_path)
    e.controller.start()
    e.jobs.start()
    try:
        yield e
    finally:
        if e.gate is not None:
            e.gate.set()
        await e.jobs.stop()
        await e.controller.stop()
        await e.fed.stop()
        await e.api.close()


def _env_of(job: dict[str, Any]) -> dict[str, Any]:
    (container,) = job["spec"]["template"]["spec"]["containers"]
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in container.get("env") or []}


def _volumes(job: dict[str, Any]) -> dict[str, Any]:
    return {v["name"]: v for v in job["spec"]["template"]["spec"]["volumes"]}


async def test_a_backup_runs_as_a_job_from_a_follower_and_its_status_follows_the_job(
        env: Env) -> None:
    env.gate = asyncio.Event()
    async with run_operator(env.settings, env.memo):
        await env.api.create_cluster("demo", {"replicas": 3})
        await wait_until(lambda: env.converged(3), 60, "3 voters")
        await env.create_backup("before-upgrade", {"cluster": "demo", "target": S3,
                                                   "maxRateMiBPerSecond": 8})
        job = await wait_until(lambda: env.api.get(f"{JOBS}/before-upgrade-backup"), 30,
                               "the backup Job")
        validate({k: job[k] for k in ("apiVersion", "kind", "metadata", "spec")})
        (owner,) = job["metadata"]["ownerReferences"]
        assert (owner["kind"], owner["name"], owner["uid"]) == (
            "FederationBackup", "before-upgrade", "uid-before-upgrade")
        # From a caught-up follower (the leader keeps its time for writes), over mTLS with
        # the operator's client certificate, paced, into the bucket.
        leader = (await env.api.cr_status("demo"))["leader"]
        source = arg(job, "--api")
        assert source is not None and leader not in source
        assert source.startswith("https://demo-") and source.endswith(
            ".demo-peers.prod.svc.cluster.local:7000")
        assert job_args(job)[:2] == ["backup", "create"]
        assert (arg(job, "--to"), arg(job, "--name"), arg(job, "--max-rate"),
                arg(job, "--tls-dir")) == ("s3://backups/prod/demo", "before-upgrade", "8",
                                           "/etc/continuum/client")
        env_vars = _env_of(job)
        assert env_vars["AWS_ACCESS_KEY_ID"] == {"secretKeyRef": {
            "name": "s3-credentials", "key": "AWS_ACCESS_KEY_ID"}}
        assert env_vars["AWS_SESSION_TOKEN"]["secretKeyRef"]["optional"] is True
        assert (env_vars["AWS_REGION"], env_vars["AWS_ENDPOINT_URL_S3"]) == (
            "eu-west-1", "http://minio.storage:9000")
        assert _volumes(job)["client-tls"]["secret"]["secretName"] == "demo-operator-client-tls"
        pod = job["spec"]["template"]["spec"]
        assert pod["securityContext"]["runAsUser"] == 10001 and not pod[
            "automountServiceAccountToken"]
        # The credentials reach the Job only: no node pod mentions them.
        sts = await env.api.get(f"{STS}/demo")
        assert "s3-credentials" not in json.dumps(sts)

        async def running() -> bool:
            st = (await env.fb("before-upgrade")).get("status") or {}
            return st.get("phase") == "Running" and st.get("startedAt") is not None

        await wait_until(running, 30, "phase Running")
        st = (await env.fb("before-upgrade"))["status"]
        completed = next(c for c in st["conditions"] if c["type"] == "Completed")
        assert (completed["status"], completed["reason"]) == ("False", "Running")
        env.gate.set()
        await wait_until(lambda: _is(env, "before-upgrade", "Succeeded"), 30, "Succeeded")
        st = (await env.fb("before-upgrade"))["status"]
        assert st["backupName"] == "before-upgrade"
        assert st["location"] == "s3://backups/prod/demo/before-upgrade"
        assert (st["raftIndex"], st["raftTerm"], st["clusterId"]) == (110, 3, CLUSTER_ID)
        assert (st["sizeBytes"], st["size"]) == (3 * 1024 * 1024 + 512, "3.0 MiB")
        assert st["node"] == "demo-1" and st["finishedAt"] and st["startedAt"]
        assert {c["type"]: c["status"] for c in st["conditions"]} == {
            "Completed": "True", "Failed": "False"}
        events = [(e["reason"], e["message"]) for e in await env.api.events()
                  if e["involvedObject"].get("name") == "before-upgrade"]
        assert [r for r, _ in events] == ["BackupStarted", "BackupSucceeded"]
        assert "Raft index 110" in events[1][1]
        assert env.jobs.attempts["before-upgrade-backup"] == 1


async def _is(env: Env, name: str, phase: str) -> bool:
    return await env.phase(name) == phase


async def test_a_failed_backup_is_reported_with_the_error_after_the_retries(
        env: Env) -> None:
    env.fail["nightly-backup"] = "http://demo-0...: not_caught_up: the node is behind"
    async with run_operator(env.settings, env.memo):
        await env.api.create_cluster("demo", {"replicas": 1})
        await wait_until(lambda: env.converged(1), 60, "1 voter")
        await env.create_backup("nightly", {"cluster": "demo", "target": PVC})
        await wait_until(lambda: _is(env, "nightly", "Failed"), 60, "Failed")
        job = await env.api.get(f"{JOBS}/nightly-backup")
        assert job is not None
        validate({k: job[k] for k in ("apiVersion", "kind", "metadata", "spec")})
        assert arg(job, "--to") == "/backups/demo" and arg(job, "--max-rate") is None
        assert _volumes(job)["backups"]["persistentVolumeClaim"] == {"claimName": "backup-volume"}
        assert env.jobs.attempts["nightly-backup"] == 3  # backoffLimit 2: three attempts
        st = (await env.fb("nightly"))["status"]
        assert st["error"] == "error: http://demo-0...: not_caught_up: the node is behind"
        # No follower to copy from: the client Service (any ready node).
        assert arg(job, "--api") == "https://demo.prod.svc.cluster.local:7000"
        failed = next(c for c in st["conditions"] if c["type"] == "Failed")
        assert (failed["status"], failed["reason"]) == ("True", "BackupFailed")
        warnings = [e for e in await env.api.events("BackupFailed")]
        assert len(warnings) == 1 and warnings[0]["type"] == "Warning"
        assert "not_caught_up" in warnings[0]["message"]


async def test_bad_backups_are_refused_or_wait_and_nothing_is_half_made(env: Env) -> None:
    async with run_operator(env.settings, env.memo):
        # Refused by the operator (an API server applies the CRD's schema first): the field
        # is named, the backup fails, no Job is made.
        await env.create_backup("two-targets", {"cluster": "demo",
                                                "target": {**S3, **PVC}})
        await env.create_backup("Bad_Name", {"cluster": "demo", "target": PVC})
        await wait_until(lambda: _is(env, "two-targets", "Failed"), 30, "two-targets refused")
        await wait_until(lambda: _is(env, "Bad_Name", "Failed"), 30, "Bad_Name refused")
        st = (await env.fb("two-targets"))["status"]
        assert "spec.target" in st["error"] and "exactly one of pvc and s3" in st["error"]
        assert "metadata.name" in (await env.fb("Bad_Name"))["status"]["error"]
        # A backup of a cluster that does not exist (yet) waits, and says why.
        await env.create_backup("orphan", {"cluster": "nowhere", "target": PVC})

        async def waiting() -> bool:
            st = (await env.fb("orphan")).get("status") or {}
            cond = next((c for c in st.get("conditions") or [] if c["type"] == "Completed"),
                        {})
            return st.get("phase") == "Pending" and cond.get("reason") == "ClusterNotFound"

        await wait_until(waiting, 30, "orphan Pending")
        assert await env.api.items(JOBS) == []
        reasons = [e["reason"] for e in await env.api.events()]
        assert reasons.count("InvalidSpec") == 2 and reasons.count("ClusterNotFound") == 1


async def _scheduled(env: Env) -> dict[str, str | None]:
    return {f["metadata"]["name"]: (f.get("status") or {}).get("phase")
            for f in await env.api.items(FB)}


@pytest.mark.slow  # five schedule slots, each a backup Job: ~20 s
async def test_scheduled_backups_run_each_slot_once_and_retention_follows_success(
        env: Env) -> None:
    schedule_spec = {"schedule": "0 * * * *", "target": S3,
                     "retention": {"keep": 3, "maxAge": "2h"}}
    async with run_operator(env.settings, env.memo):
        await env.api.create_cluster("demo", {"replicas": 1, "backup": schedule_spec})
        await wait_until(lambda: env.converged(1), 60, "1 voter")

        async def seen() -> bool:
            st = (await env.api.cr_status("demo")).get("backup") or {}
            return st.get("nextScheduleTime") == "2026-12-04T02:00:00Z"

        await wait_until(seen, 30, "the schedule in the status")
        assert await _scheduled(env) == {}  # 01:00 was before the schedule existed

        async def slot(hour: int) -> str:
            env.clock.now = dt.datetime(2026, 12, 4, hour, 0, 20, tzinfo=dt.UTC)
            name = f"demo-20261204{hour:02d}00"
            try:
                await wait_until(lambda: _is(env, name, "Succeeded"), 30, f"{name} Succeeded")
            except AssertionError:
                print("backups:", await _scheduled(env), "\nstatus:",
                      (await env.api.cr_status("demo")).get("backup"), "\nevents:",
                      *[(e["reason"], e["message"]) for e in await env.api.events()],
                      sep="\n  ")
                raise
            return name

        first = await slot(2)
        fb = await env.fb(first)
        assert fb["spec"] == {"cluster": "demo", "target": {"s3": {
            **S3["s3"], "prefix": "prod/demo"}}, "maxRateMiBPerSecond": 16.0}
        assert fb["metadata"]["labels"][backup_spec.SCHEDULED_LABEL] == "true"
        assert "ownerReferences" not in fb["metadata"]  # the records outlive the cluster
        await slot(3)
        # A failing slot: no retention after a failure.
        env.fail["demo-202612040400-backup"] = "the node refused"
        env.clock.now = dt.datetime(2026, 12, 4, 4, 0, 10, tzinfo=dt.UTC)
        await wait_until(lambda: _is(env, "demo-202612040400", "Failed"), 60, "04:00 failed")
        assert set(await _scheduled(env)) == {first, "demo-202612040300",
                                              "demo-202612040400"}
        # The next success removes 02:00 (over 2 h old) and the failure before it.
        await slot(5)

        async def pruned() -> bool:
            return set(await _scheduled(env)) == {"demo-202612040300", "demo-202612040500"}

        await wait_until(pruned, 60, "retention")
        deletes = [a for a in env.ran if a[:2] == ["backup", "delete"]]
        assert sorted(deletes) == [
            ["backup", "delete", "s3://backups/prod/demo/demo-202612040200"],
            ["backup", "delete", "s3://backups/prod/demo/demo-202612040400"]]
        # A slot is taken once: more cycles at the same time start nothing.
        ran = len(env.ran)
        await cycles(5)
        assert len(env.ran) == ran
        st = (await env.api.cr_status("demo"))["backup"]
        assert st["lastSuccessfulBackup"] == "demo-202612040500"
        assert st["lastScheduleTime"] == "2026-12-04T05:00:00Z"
        assert st["retentionAppliedFor"] == "demo-202612040500"
        # At 08:00 the older two are over 2 h old: only the newest stays.
        await slot(8)
        await wait_until(lambda: _scheduled_is(env, {"demo-202612040800"}), 60, "max age")
        reasons = [e["reason"] for e in await env.api.events()]
        assert reasons.count("BackupScheduled") == 5 and reasons.count("BackupExpired") == 4


async def _scheduled_is(env: Env, names: set[str]) -> bool:
    return set(await _scheduled(env)) == names


@pytest.mark.slow  # a restore, then a new cluster of three: ~20 s
async def test_a_cluster_created_from_a_backup_restores_its_first_member_then_grows(
        env: Env) -> None:
    env.fail["demo-restore"] = "s3://backups/prod/demo/before-upgrade: AccessDenied"
    await env.create_backup("before-upgrade", {"cluster": "old", "target": S3}, status={
        "phase": "Succeeded", "backupName": "before-upgrade", "raftIndex": 90})
    async with run_operator(env.settings, env.memo):
        await env.api.create_cluster("demo", {"replicas": 3, "bootstrap": {
            "fromBackup": {"federationBackup": "before-upgrade"}}})
        job = await wait_until(lambda: env.api.get(f"{JOBS}/demo-restore"), 30, "restore Job")
        validate({k: job[k] for k in ("apiVersion", "kind", "metadata", "spec")})
        # The first member only: its own PVC, its id and its address.
        assert job_args(job)[0] == "restore"
        assert (arg(job, "--from"), arg(job, "--node-id"), arg(job, "--address"),
                arg(job, "--data-dir")) == (
            "s3://backups/prod/demo/before-upgrade", "demo-0",
            "demo-0.demo-peers.prod.svc.cluster.local:7000", "/var/lib/continuum")
        assert _volumes(job)["data"]["persistentVolumeClaim"] == {"claimName": "data-demo-0"}
        pvc = await env.api.get(f"/api/v1/namespaces/{NS}/persistentvolumeclaims/data-demo-0")
        assert pvc is not None
        validate({k: pvc[k] for k in ("apiVersion", "kind", "metadata", "spec")})

        async def restore_failed() -> bool:
            st = await env.api.cr_status("demo")
            return st.get("phase") == "RestoreFailed"

        await wait_until(restore_failed, 60, "RestoreFailed")
        st = await env.api.cr_status("demo")
        assert "AccessDenied" in st["bootstrap"]["message"]
        ready = next(c for c in st["conditions"] if c["type"] == "Ready")
        assert ready["reason"] == "RestoreFailed" and "AccessDenied" in ready["message"]
        assert await env.api.get(f"{STS}/demo") is None  # nothing made past the failure
        assert len(await env.api.events("RestoreFailed")) == 1
        # Fixed (the credentials), the failed Job deleted: it runs again, then the cluster.
        del env.fail["demo-restore"]
        await env.api.call("DELETE", f"{JOBS}/demo-restore")
        await wait_until(lambda: env.converged(3), 90, "3 voters from the restored member")
        st = await env.api.cr_status("demo")
        assert {k: st["bootstrap"].get(k) for k in (
            "phase", "source", "federationBackup", "clusterId", "job")} == {
            "phase": "Restored", "source": "s3://backups/prod/demo/before-upgrade",
            "federationBackup": "before-upgrade", "clusterId": CLUSTER_ID,
            "job": "demo-restore"}
        # Only the first member restored; the others joined empty, as learners first.
        restores = [a for a in env.ran if a[0] == "restore"]
        assert {arg_of(a, "--node-id") for a in restores} == {"demo-0"}
        assert env.fed.log[:3] == [("bootstrap", "demo-0"), ("add_learner", "demo-1"),
                                   ("promote", "demo-1")]
        sts = await env.api.get(f"{STS}/demo")
        assert sts is not None and "initContainers" not in sts["spec"]["template"]["spec"]
        reasons = [e["reason"] for e in await env.api.events()]
        assert reasons.index("Restored") < reasons.index("GrowStatefulSet")
        # spec.bootstrap cannot change now (the CRD refuses it; the operator too).
        await env.api.call("PATCH", env.api.cr_path("demo"), {"spec": {"bootstrap": {
            "fromBackup": {"federationBackup": "another"}}}})

        async def refused() -> bool:
            ready = await env.api.condition("demo", "Ready")
            return ready.get("reason") == "InvalidSpec" and "spec.bootstrap" in ready["message"]

        await wait_until(refused, 30, "spec.bootstrap change refused")


def arg_of(args: list[str], flag: str) -> str | None:
    return args[args.index(flag) + 1] if flag in args else None
