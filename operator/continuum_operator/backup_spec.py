"""The backup API: the ``FederationBackup`` resource, and the parts of a FederationCluster's
spec that name backups (``spec.backup``, the schedule; ``spec.bootstrap.fromBackup``).

A backup target is a PersistentVolumeClaim (a folder in it) or S3-compatible object
storage; the operator turns it into the Job's volume, environment and the ``--to`` /
``--from`` URL of ``continuum-federation backup``. S3 credentials come from a Secret
(keys ``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY``, optionally ``AWS_SESSION_TOKEN``)
or from the Job's service account (IRSA, workload identity); they only ever reach the
Jobs, never a node pod. The CRD for FederationBackup is generated from these models as
the FederationCluster's is (``crd.py``).
"""

from __future__ import annotations

import re
from typing import Any, Literal

from pydantic import ConfigDict, Field, field_validator, model_validator

from . import schedule
from .fields import DNS_LABEL, DNS_SUBDOMAIN, NAME_PATTERN, Condition, Model

GROUP = "continuum.dev"
VERSION = "v1alpha1"
PLURAL = "federationbackups"
SINGULAR = "federationbackup"
KIND = "FederationBackup"
SHORT_NAMES = ("fb",)
API_VERSION = f"{GROUP}/{VERSION}"

# Labels on FederationBackups (and their Jobs): which cluster, and which were scheduled.
CLUSTER_LABEL = f"{GROUP}/cluster"
SCHEDULED_LABEL = f"{GROUP}/scheduled"
# Set by retention on a scheduled backup it removes: its data is being deleted.
EXPIRED_ANNOTATION = f"{GROUP}/expired"

# A backup's Jobs are <name>-backup and <name>-delete: a Job name is at most 63 characters.
NAME_MAX = schedule.NAME_MAX
NAME_RULES: list[dict[str, str]] = [
    {"rule": f"self.metadata.name.matches('{DNS_LABEL}')",
     "message": "metadata.name must be a DNS-1123 label: lowercase letters, digits and '-' "
                "(it names the backup's Job and the backup at its target)"},
    {"rule": f"size(self.metadata.name) <= {NAME_MAX}",
     "message": f"metadata.name must be at most {NAME_MAX} characters (its Jobs are "
                "<name>-backup and <name>-delete)"},
]
ONE_TARGET = "target: set exactly one of pvc and s3"
ONE_SOURCE = ("fromBackup: set either federationBackup, or both target and backupName")
BOOTSTRAP_FIXED = ("spec.bootstrap is fixed at creation: a cluster is bootstrapped once, "
                   "when it is created")
SPEC_FIXED = "spec is immutable: a backup is taken once; create another FederationBackup"
# A backup's name at its target (archive.check_name in the node's backup package).
BACKUP_NAME = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$"
# A folder inside a volume: no absolute path, no '.' or '..' segments.
FOLDER = r"^([A-Za-z0-9_-][A-Za-z0-9._-]*(/[A-Za-z0-9_-][A-Za-z0-9._-]*)*)?$"
BUCKET = r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$"
PREFIX = r"^[A-Za-z0-9!_.*'()/-]*$"
DEFAULT_SCHEDULED_RATE = 16.0


def name_problem(name: str) -> str | None:
    """Why ``name`` cannot name a FederationBackup (the CRD's CEL rules), or None."""
    if not re.fullmatch(DNS_LABEL, name):
        return NAME_RULES[0]["message"]
    if len(name) > NAME_MAX:
        return NAME_RULES[1]["message"]
    return None


class SecretReference(Model):
    name: str = Field(min_length=1, max_length=253, pattern=DNS_SUBDOMAIN)


class PVCTarget(Model):
    claim_name: str = Field(min_length=1, max_length=253, pattern=DNS_SUBDOMAIN,
                            description="A PersistentVolumeClaim in the cluster's namespace; "
                            "ReadWriteMany if backups and restores may run on several nodes.")
    path: str = Field(default="", max_length=255, pattern=FOLDER,
                      description="A folder inside the volume (default: its root).")


class S3Target(Model):
    bucket: str = Field(min_length=3, max_length=63, pattern=BUCKET)
    prefix: str = Field(default="", max_length=512, pattern=PREFIX,
                        description="Where in the bucket; backups are <prefix>/<name>/.")
    region: str | None = Field(default=None, max_length=64, pattern=r"^[a-z0-9-]+$")
    endpoint_url: str | None = Field(
        default=None, max_length=512, alias="endpointURL", pattern=r"^https?://[^\s/]+(/[^\s]*)?$",
        description="Another S3 implementation (MinIO, Ceph): addressed path-style.")
    credentials_secret: SecretReference | None = Field(
        default=None, description="A Secret with AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY "
        "(and optionally AWS_SESSION_TOKEN). Without one, the Job's service account must "
        "carry the credentials (IRSA, workload identity).")
    service_account_name: str | None = Field(
        default=None, max_length=253, pattern=DNS_SUBDOMAIN,
        description="The Jobs' service account (e.g. for IRSA); default: none mounted.")

    def url(self) -> str:
        prefix = self.prefix.strip("/")
        return f"s3://{self.bucket}/{prefix}" if prefix else f"s3://{self.bucket}"


class BackupTarget(Model):
    """Where backups are stored: a folder of a PVC, or S3-compatible object storage."""

    model_config = ConfigDict(json_schema_extra={"x-kubernetes-validations": [
        {"rule": "has(self.pvc) != has(self.s3)", "message": ONE_TARGET}]})

    pvc: PVCTarget | None = None
    s3: S3Target | None = None

    @model_validator(mode="after")
    def _one(self) -> BackupTarget:
        if (self.pvc is None) == (self.s3 is None):
            raise ValueError(ONE_TARGET)
        return self




class FederationBackupSpec(Model):
    model_config = ConfigDict(json_schema_extra={"x-kubernetes-validations": [
        {"rule": "self == oldSelf", "message": SPEC_FIXED}]})

    cluster: str = Field(min_length=1, max_length=52, pattern=NAME_PATTERN,
                         description="The FederationCluster to back up (same namespace).")
    target: BackupTarget
    max_rate_mib_per_second: float | None = Field(
        default=None, gt=0, le=100000, alias="maxRateMiBPerSecond",
        description="Pace the node's stream (MiB/s); default: as fast as it goes.")


class BackupRetention(Model):
    """Applied right after a scheduled backup succeeded; the newest one is always kept."""

    keep: int | None = Field(default=None, ge=1, le=10000,
                             description="Keep at most this many successful backups.")
    max_age: str | None = Field(default=None, pattern=schedule.AGE,
                                description="Remove backups older than this, e.g. 30d, 12h.")


class BackupSchedule(Model):
    """Scheduled backups: each slot creates a FederationBackup <cluster>-<yyyymmddhhmm>."""

    # The pattern is the CRD's; the model's validator says what is wrong in words.
    schedule: str = Field(
        min_length=1, max_length=200, json_schema_extra={"pattern": schedule.SHAPE},
        description="Cron (minute hour day-of-month month day-of-week, UTC) or @hourly, "
                    "@daily, @weekly, @monthly, @yearly.")
    target: BackupTarget
    max_rate_mib_per_second: float = Field(
        default=DEFAULT_SCHEDULED_RATE, ge=0, le=100000, alias="maxRateMiBPerSecond",
        description="Pace scheduled backups (MiB/s), so the node that serves one keeps its "
                    "time for writes; 0: as fast as it goes.")
    retention: BackupRetention = Field(default_factory=BackupRetention)
    suspend: bool = Field(default=False, description="Start no new scheduled backups.")

    @field_validator("schedule")
    @classmethod
    def _cron(cls, text: str) -> str:
        if (why := schedule.problem(text)) is not None:
            raise ValueError(why)
        return text


class BackupSource(Model):
    """A backup to create the cluster from: a FederationBackup of this namespace, or a
    backup at a target by its name there (e.g. after the namespace was lost)."""

    model_config = ConfigDict(json_schema_extra={"x-kubernetes-validations": [
        {"rule": "has(self.federationBackup) ? !has(self.target) && !has(self.backupName) "
                 ": has(self.target) && has(self.backupName)", "message": ONE_SOURCE}]})

    federation_backup: str | None = Field(default=None, max_length=NAME_MAX, pattern=DNS_LABEL)
    target: BackupTarget | None = None
    backup_name: str | None = Field(default=None, pattern=BACKUP_NAME,
                                    description="The backup's name at the target.")

    @model_validator(mode="after")
    def _one(self) -> BackupSource:
        named = self.federation_backup is not None
        if named == (self.target is not None or self.backup_name is not None) or (
                not named and (self.target is None or self.backup_name is None)):
            raise ValueError(ONE_SOURCE)
        return self


class Bootstrap(Model):
    """How a new cluster starts. Fixed at creation."""

    from_backup: BackupSource = Field(description=(
        "Restore this backup into the first member's volume before any pod starts; the "
        "other members join it empty, as learners, then vote."))


# ---- status -----------------------------------------------------------------------------------

BackupPhase = Literal["Pending", "Running", "Succeeded", "Failed"]


class FederationBackupStatus(Model):
    model_config = ConfigDict(extra="ignore")

    observed_generation: int | None = None
    phase: BackupPhase | None = None
    backup_name: str | None = Field(default=None, description="Its name at the target.")
    location: str | None = Field(default=None, description="URL/NAME, for restore --from.")
    job: str | None = None
    source: str | None = Field(default=None, description="The node API it was copied from.")
    node: str | None = Field(default=None, description="The member that served it.")
    cluster_id: str | None = None
    raft_index: int | None = None
    raft_term: int | None = None
    size: str | None = None
    size_bytes: int | None = None
    created_at: str | None = Field(default=None,
                                   description="When the strong store was captured.")
    started_at: str | None = None
    finished_at: str | None = None
    error: str | None = None
    conditions: list[Condition] = Field(default_factory=list, json_schema_extra={
        "x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["type"]})


class ClusterBootstrapStatus(Model):
    """Where a cluster created from a backup came from."""

    model_config = ConfigDict(extra="ignore")

    phase: Literal["Restoring", "Restored", "Failed"]
    source: str = Field(description="URL/NAME of the backup.")
    federation_backup: str | None = None
    job: str | None = None
    cluster_id: str | None = None
    raft_index: int | None = None
    backup_created_at: str | None = None
    restored_at: str | None = None
    message: str | None = None


class ClusterBackupStatus(Model):
    """The backup schedule's state."""

    model_config = ConfigDict(extra="ignore")

    schedule: str | None = Field(default=None, description="The expression in force.")
    last_schedule_time: str | None = None
    next_schedule_time: str | None = None
    last_backup: str | None = Field(default=None, description="The last scheduled one.")
    last_successful_backup: str | None = None
    last_success_time: str | None = None
    retention_applied_for: str | None = Field(
        default=None, description="The successful backup retention last ran after.")


def parse_backup_spec(raw: dict[str, Any] | None) -> FederationBackupSpec:
    return FederationBackupSpec.model_validate(dict(raw or {}))
