"""Pure builders of the Jobs that run ``continuum-federation`` from the node image, and the
reading of their outcome.

- ``backup_job``: ``backup create`` for a FederationBackup. The node does the consistent
  capture and streams it over mutual TLS (the operator's client certificate Secret); the
  Job checks and stores it. So the target's credentials stay out of every node pod, the
  upload's CPU and memory are the Job's, and a Job outlives an operator restart.
- ``restore_job``: ``restore`` into the first member's PVC, before the StatefulSet exists
  (``spec.bootstrap.fromBackup``): it runs once, under the operator's control, and leaves
  the node pods' template (and the credentials) alone.
- ``delete_job``: ``backup delete`` for retention.

``backup create --json`` and ``restore --json`` print the stored manifest; a small wrapper
keeps it in the pod's log and writes its summary (name, cluster, node, Raft index and term,
archive size) to the termination message, where the operator reads it. On failure the
termination message is the end of the log (``FallbackToLogsOnError``): the error.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from . import backup_spec, manifests, quantities
from . import spec as api

BACKUP_DIR = "/backups"
CLIENT_DIR = "/etc/continuum/client"
# The termination message file (terminationMessagePath). Not the default /dev/termination-log:
# some runtimes keep /dev read-only even over a bind mount (buildah's chroot isolation, which
# the end-to-end tests run the Jobs with); the kubelet mounts the file wherever it is asked.
RESULT_FILE = "/run/termination-log"
CONTAINER = "backup"
BACKOFF_LIMIT = 2
# The last chunk of a failed Job's log that reaches a status or an Event.
MAX_ERROR = 1000

# $@ is the CLI's arguments. The manifest stays in the log; its summary (well within the
# 4 KiB a termination message may hold) goes to the termination message. Once the CLI has
# stored the backup, nothing fails the Job any more (a retry would find the name taken).
RESULT_SCRIPT = """set -e
continuum-federation "$@" --json > /tmp/result.json
cat /tmp/result.json
python - <<'EOF' || echo "warning: no summary in the termination message" >&2
import json
result = json.load(open("/tmp/result.json"))
m = result.get("manifest", result)
summary = {k: m.get(k) for k in ("name", "cluster", "node_id", "created_at", "archive")}
summary["raft"] = {k: (m.get("raft") or {}).get(k) for k in ("index", "term")}
summary["restored"] = result.get("restored")
with open("RESULT_FILE", "w") as f:
    json.dump(summary, f)
EOF
""".replace("RESULT_FILE", RESULT_FILE)


def target_url(target: backup_spec.BackupTarget) -> str:
    """The ``--to`` URL of a target, as the Job sees it."""
    if target.pvc is not None:
        path = target.pvc.path.strip("/")
        return f"{BACKUP_DIR}/{path}" if path else BACKUP_DIR
    assert target.s3 is not None
    return target.s3.url()


def _target_env(target: backup_spec.BackupTarget) -> list[dict[str, Any]]:
    s3 = target.s3
    if s3 is None:
        return []
    env: list[dict[str, Any]] = []
    if s3.credentials_secret is not None:
        secret = s3.credentials_secret.name
        for key, optional in (("AWS_ACCESS_KEY_ID", False), ("AWS_SECRET_ACCESS_KEY", False),
                              ("AWS_SESSION_TOKEN", True)):
            ref: dict[str, Any] = {"name": secret, "key": key}
            if optional:
                ref["optional"] = True
            env.append({"name": key, "valueFrom": {"secretKeyRef": ref}})
    if s3.region:
        env.append({"name": "AWS_REGION", "value": s3.region})
    if s3.endpoint_url:
        env.append({"name": "AWS_ENDPOINT_URL_S3", "value": s3.endpoint_url})
    return env


def _target_volume(target: backup_spec.BackupTarget, read_only: bool
                   ) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    if target.pvc is None:
        return [], []
    claim: dict[str, Any] = {"claimName": target.pvc.claim_name}
    if read_only:
        claim["readOnly"] = True
    return ([{"name": "backups", "persistentVolumeClaim": claim}],
            [{"name": "backups", "mountPath": BACKUP_DIR, "readOnly": read_only}])


def _owner(api_version: str, kind: str, name: str, uid: str) -> dict[str, Any]:
    return {"apiVersion": api_version, "kind": kind, "name": name, "uid": uid,
            "controller": True, "blockOwnerDeletion": True}


def _labels(c: manifests.Cluster, component: str, backup: str | None = None) -> dict[str, str]:
    out = {**manifests.labels(c, component), backup_spec.CLUSTER_LABEL: c.name}
    if backup is not None:
        out[f"{backup_spec.GROUP}/backup"] = backup
    return out


def _job(c: manifests.Cluster, name: str, labels: dict[str, str], owner: dict[str, Any], *,
         command: list[str], args: list[str], target: backup_spec.BackupTarget,
         volumes: Sequence[dict[str, Any]] = (), mounts: Sequence[dict[str, Any]] = (),
         target_read_only: bool = False) -> dict[str, Any]:
    t_volumes, t_mounts = _target_volume(target, target_read_only)
    account = target.s3.service_account_name if target.s3 else None
    pod: dict[str, Any] = {
        "restartPolicy": "Never",
        "automountServiceAccountToken": account is not None,
        "enableServiceLinks": False,
        "securityContext": {
            "runAsNonRoot": True, "runAsUser": manifests.NODE_UID,
            "runAsGroup": manifests.NODE_UID, "fsGroup": manifests.NODE_UID,
            "fsGroupChangePolicy": "OnRootMismatch",
            "seccompProfile": {"type": "RuntimeDefault"},
        },
        "containers": [{
            "name": CONTAINER,
            "image": c.spec.image.reference,
            "imagePullPolicy": c.spec.image.pull_policy,
            "command": command,
            "args": args,
            "env": _target_env(target),
            "resources": {"requests": {"cpu": quantities.mark("100m"),
                                       "memory": quantities.mark("128Mi")},
                          "limits": {"memory": quantities.mark("512Mi")}},
            "securityContext": {
                "allowPrivilegeEscalation": False, "readOnlyRootFilesystem": True,
                "runAsNonRoot": True, "capabilities": {"drop": ["ALL"]},
                "seccompProfile": {"type": "RuntimeDefault"},
            },
            "terminationMessagePath": RESULT_FILE,
            "terminationMessagePolicy": "FallbackToLogsOnError",
            "volumeMounts": [*mounts, *t_mounts, {"name": "tmp", "mountPath": "/tmp"}],
        }],
        "volumes": [*volumes, *t_volumes,
                    {"name": "tmp", "emptyDir": {"sizeLimit": quantities.mark("64Mi")}}],
    }
    if account is not None:
        pod["serviceAccountName"] = account
    if c.spec.pod_template.image_pull_secrets:
        pod["imagePullSecrets"] = [r.model_dump() for r in c.spec.pod_template.image_pull_secrets]
    return {
        "apiVersion": "batch/v1", "kind": "Job",
        "metadata": {"name": name, "namespace": c.namespace, "labels": labels,
                     "ownerReferences": [owner]},
        "spec": {
            "backoffLimit": BACKOFF_LIMIT,
            "template": {"metadata": {"labels": labels}, "spec": pod},
        },
    }


def _wrapped(args: list[str]) -> tuple[list[str], list[str]]:
    return ["/bin/sh", "-c", RESULT_SCRIPT, "continuum-federation"], args


def backup_job_name(backup: str) -> str:
    return f"{backup}-backup"


def delete_job_name(backup: str) -> str:
    return f"{backup}-delete"


def restore_job_name(c: manifests.Cluster) -> str:
    return f"{c.name}-restore"


def backup_job(c: manifests.Cluster, backup: str, uid: str,
               spec: backup_spec.FederationBackupSpec, api_url: str) -> dict[str, Any]:
    """``backup create`` of ``c`` into the FederationBackup ``backup``'s target, stored
    under the name ``backup``, from the node at ``api_url``."""
    args = ["backup", "create", "--to", target_url(spec.target), "--name", backup,
            "--api", api_url, "--tls-dir", CLIENT_DIR]
    if spec.max_rate_mib_per_second:
        args += ["--max-rate", f"{spec.max_rate_mib_per_second:g}"]
    command, args = _wrapped(args)
    return _job(c, backup_job_name(backup), _labels(c, "backup", backup),
                _owner(backup_spec.API_VERSION, backup_spec.KIND, backup, uid),
                command=command, args=args, target=spec.target,
                volumes=[{"name": "client-tls", "secret": {"secretName": c.client_secret,
                                                           "defaultMode": 0o440}}],
                mounts=[{"name": "client-tls", "mountPath": CLIENT_DIR, "readOnly": True}])


def delete_job(c: manifests.Cluster, backup: str, uid: str, target: backup_spec.BackupTarget,
               stored_name: str) -> dict[str, Any]:
    """``backup delete`` of one backup: its manifest first, then its archive."""
    return _job(c, delete_job_name(backup), _labels(c, "backup", backup),
                _owner(backup_spec.API_VERSION, backup_spec.KIND, backup, uid),
                command=["continuum-federation"],
                args=["backup", "delete", f"{target_url(target)}/{stored_name}"],
                target=target)


def first_claim(c: manifests.Cluster) -> dict[str, Any]:
    """The first member's PVC, exactly as the StatefulSet would make it (so it adopts it)."""
    template = manifests.statefulset(c)["spec"]["volumeClaimTemplates"][0]
    pod = c.pod(0)
    return {"apiVersion": "v1", "kind": "PersistentVolumeClaim",
            "metadata": {"name": f"{template['metadata']['name']}-{pod}",
                         "namespace": c.namespace, "labels": dict(template["metadata"]["labels"])},
            "spec": template["spec"]}


def restore_job(c: manifests.Cluster, target: backup_spec.BackupTarget,
                backup_name: str) -> dict[str, Any]:
    """``restore`` of ``backup_name`` into the first member's PVC, as that member: the
    sole voter of the new cluster, at the address its peers will dial."""
    pod = c.pod(0)
    command, args = _wrapped([
        "restore", "--from", f"{target_url(target)}/{backup_name}",
        "--data-dir", manifests.DATA_DIR, "--node-id", pod, "--address", c.address(pod)])
    claim = first_claim(c)["metadata"]["name"]
    owner = _owner(api.API_VERSION, api.KIND, c.name, c.uid)
    return _job(c, restore_job_name(c), _labels(c, "restore"), owner, command=command,
                args=args, target=target, target_read_only=True,
                volumes=[{"name": "data", "persistentVolumeClaim": {"claimName": claim}}],
                mounts=[{"name": "data", "mountPath": manifests.DATA_DIR}])


# ---- outcome ----------------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class Outcome:
    state: Literal["Running", "Succeeded", "Failed"]
    message: str = ""                       # why it failed
    result: Mapping[str, Any] | None = None  # the summary of a success
    started: str | None = None
    finished: str | None = None


def owned_by(job: Mapping[str, Any], uid: str) -> bool:
    return any(ref.get("uid") == uid for ref in job.get("metadata", {}).get(
        "ownerReferences") or [])


def _terminated(pods: Sequence[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
    """The Job container's terminated states, latest first."""
    out = []
    for pod in pods:
        for cs in (pod.get("status") or {}).get("containerStatuses") or []:
            state = (cs.get("state") or {}).get("terminated")
            if cs.get("name") == CONTAINER and state:
                out.append(state)
    return sorted(out, key=lambda s: str(s.get("finishedAt") or ""), reverse=True)


def outcome(job: Mapping[str, Any], pods: Sequence[Mapping[str, Any]]) -> Outcome:
    """What a Job came to, from its conditions and its pods' termination messages (pods of
    an earlier Job of the same name, not yet collected, are told apart by owner)."""
    uid = job.get("metadata", {}).get("uid")
    if uid:
        pods = [p for p in pods if owned_by(p, uid)]
    st = job.get("status") or {}
    done = {c.get("type"): c for c in st.get("conditions") or [] if c.get("status") == "True"}
    started, finished = st.get("startTime"), st.get("completionTime")
    states = _terminated(pods)
    if "Complete" in done:
        good = [s for s in states if s.get("exitCode") == 0]
        result: Mapping[str, Any] | None = None
        if good:
            try:
                parsed = json.loads(good[0].get("message") or "")
                result = parsed if isinstance(parsed, dict) else None
            except ValueError:
                result = None
        return Outcome("Succeeded", result=result, started=started,
                       finished=finished or done["Complete"].get("lastTransitionTime"))
    if "Failed" in done:
        bad = [s for s in states if s.get("exitCode") != 0]
        why = (bad[0].get("message") or "").strip() if bad else ""
        if not why:
            cond = done["Failed"]
            why = f"{cond.get('reason') or 'Failed'}: {cond.get('message') or ''}".strip(": ")
        lines = [ln for ln in why.splitlines() if ln.strip()]
        errors = [ln for ln in lines if ln.startswith("error:")]
        text = errors[-1] if errors else "\n".join(lines[-5:])
        return Outcome("Failed", message=text[-MAX_ERROR:], started=started,
                       finished=done["Failed"].get("lastTransitionTime"))
    return Outcome("Running", started=started)


def human_size(n: int) -> str:
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{n} B" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{size:.1f} GiB"
