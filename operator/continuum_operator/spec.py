"""The FederationCluster API: pydantic models of the spec and the status.

The CRD under ``crds/`` is generated from these models (see ``crd.py``), so
this file is the one place where the API is defined. Field names are
snake_case in Python and camelCase on the wire (``by_alias``). Unknown spec
fields are rejected, so a typo is an error, not a silently ignored setting.
"""

from __future__ import annotations

import re
from typing import Any, Literal

from pydantic import ConfigDict, Field, field_validator, model_validator

from continuum.federation.distributed import config as node_config
from continuum.federation.distributed.core.raft import config as raft_config

from . import backup_spec
from .fields import DNS_SUBDOMAIN, DURATION, NAME_PATTERN, Condition
from .fields import Model as _Model

GROUP = "continuum.dev"
VERSION = "v1alpha1"
PLURAL = "federationclusters"
SINGULAR = "federationcluster"
KIND = "FederationCluster"
SHORT_NAMES = ("fc",)
API_VERSION = f"{GROUP}/{VERSION}"

# Our own annotation prefix and finalizer (kopf's progress storage uses it too).
PREFIX = GROUP
FINALIZER = f"{PREFIX}/finalizer"
# Allows a scale-down that the operator would refuse because it risks quorum.
FORCE_SCALE_DOWN = f"{PREFIX}/force-scale-down"
# Quorum-loss recovery: any new value restarts every NotReady pod once.
RECOVER_QUORUM = f"{PREFIX}/recover-quorum"
# Disaster recovery: the value names the surviving pod to make the sole voter of a new
# cluster, acted on only while quorum is lost (status.forceNewClusterHandled).
FORCE_NEW_CLUSTER = f"{PREFIX}/force-new-cluster"
# Any new value restarts every pod in the safe order (followers, then leader).
RESTART = f"{PREFIX}/restart"
# Labels and environment variables the operator sets on every node pod.
RESERVED_LABELS = frozenset({
    "app.kubernetes.io/name", "app.kubernetes.io/instance", "app.kubernetes.io/component",
    "app.kubernetes.io/managed-by", "app.kubernetes.io/part-of", "controller-revision-hash",
    "statefulset.kubernetes.io/pod-name", "apps.kubernetes.io/pod-index"})
RESERVED_ENV = frozenset({
    "POD_NAME", "POD_NAMESPACE", "POD_IP", "CONTINUUM_NODE_ID", "CONTINUUM_CLUSTER_NAME",
    "CONTINUUM_BIND_ADDRESS", "CONTINUUM_ADVERTISE_ADDRESS", "CONTINUUM_HEALTH_ADDRESS",
    "CONTINUUM_DATA_DIR", "CONTINUUM_TLS_DIR", "CONTINUUM_PEER_DOMAIN", "CONTINUUM_DISCOVERY_SRV",
    "CONTINUUM_BOOTSTRAP", "CONTINUUM_CONFIG_FILE", "CONTINUUM_WILDCARD_CERTIFICATES"})

# A non-negative Kubernetes quantity (resource.Quantity's grammar): 1, 0.5, 500m, 0.5Gi, 1e3.
QUANTITY = r"^\+?([0-9]+(\.[0-9]*)?|\.[0-9]+)(([KMGTPE]i)|[numkMGTPE]|[eE][+-]?[0-9]+)?$"
TLS_MODE_RULE = ("tls.mode is immutable: the nodes trust one CA for their whole life; create a "
                 "new cluster to change it")
HEARTBEAT_RULE = "heartbeatIntervalMs must be at most half of electionTimeoutMinMs"
ELECTION_RULE = "electionTimeoutMinMs must be below electionTimeoutMaxMs"

INT_OR_STRING: dict[str, Any] = {"x-kubernetes-int-or-string": True,
                 "anyOf": [{"type": "integer"}, {"type": "string"}]}
QUANTITY_SCHEMA: dict[str, Any] = {**INT_OR_STRING, "pattern": QUANTITY}

# The CR's name becomes a Service name (a DNS-1035 label) and, with a hyphen and a 10-character
# hash, the value of the controller-revision-hash label on every pod (at most 63 characters).
NAME_MAX = 52
NAME_RULES: list[dict[str, str]] = [
    {"rule": f"self.metadata.name.matches('{NAME_PATTERN}')",
     "message": "metadata.name must be a DNS-1035 label: lowercase letters, digits and '-', "
                "starting with a letter (it names the cluster's Services)"},
    {"rule": f"size(self.metadata.name) <= {NAME_MAX}",
     "message": f"metadata.name must be at most {NAME_MAX} characters (pods carry it in the "
                "controller-revision-hash label, with a hyphen and a 10-character hash)"},
]
LABEL_KEY = (r"^([a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*/)?"
             r"[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?$")
LABEL_VALUE = r"^(([A-Za-z0-9][-A-Za-z0-9_.]{0,61})?[A-Za-z0-9])?$"
ENV_NAME = r"^[-._a-zA-Z][-._a-zA-Z0-9]*$"


def name_problem(name: str) -> str | None:
    """Why ``name`` cannot name a FederationCluster (the CRD's CEL rules, for servers
    that did not apply them), or None."""
    if not re.fullmatch(NAME_PATTERN, name):
        return NAME_RULES[0]["message"]
    if len(name) > NAME_MAX:
        return NAME_RULES[1]["message"]
    return None


def immutable(field: str, hint: str = "") -> dict[str, Any]:
    """A CEL transition rule: the field keeps the value it was created with."""
    return {"x-kubernetes-validations": [
        {"rule": "self == oldSelf", "message": f"{field} is immutable{hint}"}]}
FREE_OBJECT: dict[str, Any] = {"type": "object", "x-kubernetes-preserve-unknown-fields": True}


def free_list(description: str) -> dict[str, Any]:
    return {"type": "array", "description": description, "items": dict(FREE_OBJECT)}


class Image(_Model):
    repository: str = Field(default="ghcr.io/continuum/federation-node", min_length=1)
    tag: str = Field(default="0.1.0", min_length=1)
    pull_policy: Literal["Always", "IfNotPresent", "Never"] = "IfNotPresent"

    @property
    def reference(self) -> str:
        sep = "@" if self.tag.startswith("sha256:") else ":"
        return f"{self.repository}{sep}{self.tag}"


def _requests() -> dict[str, int | str]:
    return {"cpu": "250m", "memory": "256Mi"}


def _limits() -> dict[str, int | str]:
    return {"memory": "512Mi"}


class Resources(_Model):
    """Container resources of each node (Kubernetes quantities, written any way Kubernetes
    accepts them: the operator compares them by value, not by spelling)."""

    requests: dict[str, int | str] = Field(
        default_factory=_requests,
        json_schema_extra={"type": "object", "additionalProperties": QUANTITY_SCHEMA})
    limits: dict[str, int | str] = Field(
        default_factory=_limits,
        json_schema_extra={"type": "object", "additionalProperties": QUANTITY_SCHEMA})

    @field_validator("requests", "limits")
    @classmethod
    def _quantities(cls, values: dict[str, int | str]) -> dict[str, int | str]:
        for key, value in values.items():
            if isinstance(value, bool) or (isinstance(value, int) and value < 0) or (
                    isinstance(value, str) and not re.fullmatch(QUANTITY, value)):
                raise ValueError(f"{key}: {value!r} is not a Kubernetes quantity (e.g. 1, "
                                 "500m, 0.5Gi)")
        return values


class Retention(_Model):
    """What happens to a member's PVC: when scaled away, and when the cluster is deleted."""

    when_scaled: Literal["Retain", "Delete"] = "Delete"
    when_deleted: Literal["Retain", "Delete"] = "Retain"


class Storage(_Model):
    model_config = ConfigDict(json_schema_extra={"x-kubernetes-validations": [
        {"rule": "quantity(self.size).compareTo(quantity(oldSelf.size)) >= 0",
         "message": "storage.size may only grow"},
        {"rule": "(has(self.storageClassName) ? self.storageClassName : '') == "
                 "(has(oldSelf.storageClassName) ? oldSelf.storageClassName : '')",
         "message": "storage.storageClassName is immutable"},
    ]})

    size: str = Field(default="10Gi", pattern=QUANTITY,
                      description="PVC size per member; may only grow. Growing it expands "
                                  "each PVC online when its StorageClass allows expansion.")
    storage_class_name: str | None = Field(default=None, description="Immutable once set.")
    retention: Retention = Field(default_factory=Retention)


class Consensus(_Model):
    """Raft timing in milliseconds; the rules are the ones every node checks at start."""

    # The node's timing rule (core.raft.config.timing_error), stated in CEL for the API
    # server: a spec breaking it would render a ConfigMap every node refuses to start with.
    # tests/operator/test_spec_rules.py checks that the two agree.
    model_config = ConfigDict(json_schema_extra={"x-kubernetes-validations": [
        {"rule": "self.heartbeatIntervalMs * 2 <= self.electionTimeoutMinMs",
         "message": HEARTBEAT_RULE},
        {"rule": "self.electionTimeoutMinMs < self.electionTimeoutMaxMs",
         "message": ELECTION_RULE},
    ]})

    # The node's defaults (etcd's: a 100 ms heartbeat, elections after 1-2 s of silence);
    # the upper bounds are the operator's own sanity limits (the node has none).
    election_timeout_min_ms: int = Field(default=1000, ge=10, le=60000)
    election_timeout_max_ms: int = Field(default=2000, ge=11, le=120000)
    heartbeat_interval_ms: int = Field(default=100, ge=1, le=30000)
    max_inflight_appends: int = Field(
        default=1, ge=1, le=64,
        description="Append messages in flight per follower. One batches every write "
                    "proposed during a round trip into the next append (fewer frames and "
                    "fsyncs per write); raise it where round trips are long.")

    @model_validator(mode="after")
    def _ordered(self) -> Consensus:
        # The node's own rule (core/raft/config.py), named in this resource's fields.
        problem = raft_config.timing_error(
            (self.election_timeout_min_ms, self.election_timeout_max_ms),
            self.heartbeat_interval_ms)
        if problem == raft_config.HEARTBEAT_RULE:
            raise ValueError(HEARTBEAT_RULE)
        if problem is not None:
            raise ValueError(ELECTION_RULE)
        return self


class Mesh(_Model):
    fanout: int = Field(default=3, ge=1, le=32)
    gossip_interval_ms: int = Field(default=100, ge=10, le=60000)
    sync_interval_seconds: float = Field(default=30.0, gt=0, le=3600)


class LoadBalance(_Model):
    algorithm: node_config.BalanceAlgorithm = "least_loaded"
    health_check_interval_seconds: float = Field(default=10.0, gt=0, le=3600)
    unhealthy_threshold: int = Field(default=3, ge=1, le=100)


class Replication(_Model):
    conflict_strategy: node_config.ConflictStrategy = "last_write_wins"


class IssuerRef(_Model):
    name: str = Field(min_length=1)
    kind: Literal["Issuer", "ClusterIssuer"] = "Issuer"
    group: str = "cert-manager.io"


class TLS(_Model):
    """CertManager: certificates from the given issuer. SelfSigned: the operator runs a CA."""

    model_config = ConfigDict(json_schema_extra={"x-kubernetes-validations": [
        {"rule": "self.mode != 'CertManager' || has(self.issuerRef)",
         "message": "tls.issuerRef is required when tls.mode is CertManager"},
        {"rule": "self.mode == oldSelf.mode", "message": TLS_MODE_RULE},
    ]})

    mode: Literal["SelfSigned", "CertManager"] = Field(
        default="SelfSigned", description="Fixed at creation: the nodes trust one CA.")
    issuer_ref: IssuerRef | None = None
    wildcard: bool = Field(default=False, description=(
        "CertManager mode: one shared *.<name>-peers certificate for every pod instead of "
        "one per pod (issued by cert-manager's CSI driver, which must be installed). "
        "SelfSigned mode always shares one. A shared key lets any pod speak as any member "
        "and cannot be revoked per member: see docs/security.md."))
    duration: str = Field(default="2160h", pattern=DURATION)
    renew_before: str = Field(default="360h", pattern=DURATION)

    @model_validator(mode="after")
    def _issuer(self) -> TLS:
        if self.mode == "CertManager" and self.issuer_ref is None:
            raise ValueError("tls.issuerRef is required when tls.mode is CertManager")
        if parse_duration(self.renew_before) >= parse_duration(self.duration):
            raise ValueError("tls.renewBefore must be shorter than tls.duration")
        return self


Spread = Literal["Required", "Preferred", "Disabled"]


class Scheduling(_Model):
    """Where members run. Unless ``topologySpreadConstraints`` is given, members spread over
    hosts (one host's loss never takes more than its share) and, where it can, over zones."""

    affinity: dict[str, Any] | None = Field(default=None, json_schema_extra=FREE_OBJECT)
    topology_spread_constraints: list[dict[str, Any]] = Field(
        default_factory=list, json_schema_extra=free_list(
            "Passed to the pod spec as is; when given, replaces hostSpread and zoneSpread."))
    host_spread: Spread = Field(
        default="Required", description="Spread over kubernetes.io/hostname: Required (never "
        "more than one member above an even spread), Preferred, or Disabled.")
    zone_spread: Spread = Field(
        default="Preferred", description="Spread over topology.kubernetes.io/zone.")
    tolerations: list[dict[str, Any]] = Field(
        default_factory=list, json_schema_extra=free_list("Passed to the pod spec as is."))
    node_selector: dict[str, str] = Field(default_factory=dict)
    priority_class_name: str | None = None


class PodMetadata(_Model):
    labels: dict[str, str] = Field(default_factory=dict)
    annotations: dict[str, str] = Field(default_factory=dict)

    @field_validator("labels")
    @classmethod
    def _labels(cls, labels: dict[str, str]) -> dict[str, str]:
        for key, value in labels.items():
            _label_key(key)
            if key in RESERVED_LABELS:
                raise ValueError(f"{key} is set by the operator")
            if len(value) > 63 or not re.fullmatch(LABEL_VALUE, value):
                raise ValueError(f"{key}: {value!r} is not a valid label value")
        return labels

    @field_validator("annotations")
    @classmethod
    def _annotations(cls, annotations: dict[str, str]) -> dict[str, str]:
        for key in annotations:
            _label_key(key)
            if key.startswith(f"{PREFIX}/"):
                raise ValueError(f"{key}: the {PREFIX}/ prefix is the operator's")
        return annotations


def _label_key(key: str) -> None:
    prefix, _, name = key.rpartition("/")
    if len(name) > 63 or len(prefix) > 253 or not re.fullmatch(LABEL_KEY, key):
        raise ValueError(f"{key!r} is not a valid label or annotation key")


class LocalObjectReference(_Model):
    name: str = Field(min_length=1, max_length=253, pattern=DNS_SUBDOMAIN)


class KeySelector(_Model):
    name: str = Field(min_length=1, max_length=253, pattern=DNS_SUBDOMAIN)
    key: str = Field(min_length=1, max_length=253, pattern=r"^[-._a-zA-Z0-9]+$")
    optional: bool | None = None


class FieldSelector(_Model):
    field_path: str = Field(min_length=1)
    api_version: str | None = None


class ResourceFieldSelector(_Model):
    resource: str = Field(min_length=1)
    container_name: str | None = None
    divisor: int | str | None = Field(default=None, json_schema_extra=QUANTITY_SCHEMA)


ONE_SOURCE = "exactly one of fieldRef, resourceFieldRef, configMapKeyRef, secretKeyRef"


class EnvSource(_Model):
    model_config = ConfigDict(json_schema_extra={"x-kubernetes-validations": [{
        "rule": "[has(self.fieldRef), has(self.resourceFieldRef), has(self.configMapKeyRef), "
                "has(self.secretKeyRef)].filter(x, x).size() == 1",
        "message": ONE_SOURCE}]})

    field_ref: FieldSelector | None = None
    resource_field_ref: ResourceFieldSelector | None = None
    config_map_key_ref: KeySelector | None = None
    secret_key_ref: KeySelector | None = None

    @model_validator(mode="after")
    def _one(self) -> EnvSource:
        given = [self.field_ref, self.resource_field_ref, self.config_map_key_ref,
                 self.secret_key_ref]
        if sum(g is not None for g in given) != 1:
            raise ValueError(ONE_SOURCE)
        return self


VALUE_OR_SOURCE = "env: value and valueFrom are exclusive"


class EnvVar(_Model):
    model_config = ConfigDict(json_schema_extra={"x-kubernetes-validations": [{
        "rule": "!(has(self.value) && has(self.valueFrom))", "message": VALUE_OR_SOURCE}]})

    name: str = Field(min_length=1, pattern=ENV_NAME)
    value: str | None = None
    value_from: EnvSource | None = None

    @model_validator(mode="after")
    def _exclusive(self) -> EnvVar:
        if self.value is not None and self.value_from is not None:
            raise ValueError(VALUE_OR_SOURCE)
        if self.name in RESERVED_ENV:
            raise ValueError(f"{self.name} is set by the operator")
        return self


class PodTemplate(_Model):
    """Additions to every node pod (the operator's own labels, annotations and environment
    variables cannot be overridden). A change restarts the pods in the safe order."""

    metadata: PodMetadata = Field(default_factory=PodMetadata)
    image_pull_secrets: list[LocalObjectReference] = Field(default_factory=list)
    env: list[EnvVar] = Field(default_factory=list, description=(
        "After the operator's variables, so $(POD_NAME) and $(POD_NAMESPACE) can be used."))
    service_account_name: str | None = Field(default=None, max_length=253,
                                             pattern=DNS_SUBDOMAIN)
    automount_service_account_token: bool = Field(
        default=False, description="The nodes never call the Kubernetes API themselves.")

    @field_validator("env")
    @classmethod
    def _unique(cls, env: list[EnvVar]) -> list[EnvVar]:
        names = [e.name for e in env]
        if dupes := sorted({n for n in names if names.count(n) > 1}):
            raise ValueError(f"duplicate names: {', '.join(dupes)}")
        return env


class Disruption(_Model):
    """The PodDisruptionBudget. By default maxUnavailable keeps a voting majority up."""

    enabled: bool = True
    max_unavailable: int | None = Field(default=None, ge=0,
                                        description="Default: replicas - quorum.")


class FederationClusterSpec(_Model):
    model_config = ConfigDict(json_schema_extra={"x-kubernetes-validations": [
        {"rule": "has(self.bootstrap) == has(oldSelf.bootstrap) && (!has(self.bootstrap) "
                 "|| self.bootstrap == oldSelf.bootstrap)",
         "message": backup_spec.BOOTSTRAP_FIXED}]})

    replicas: int = Field(default=3, ge=1, le=99, description="Members; changed one at a time.")
    image: Image = Field(default_factory=Image)
    resources: Resources = Field(default_factory=Resources)
    storage: Storage = Field(default_factory=Storage)
    consensus: Consensus = Field(default_factory=Consensus)
    mesh: Mesh = Field(default_factory=Mesh)
    load_balance: LoadBalance = Field(default_factory=LoadBalance)
    replication: Replication = Field(default_factory=Replication)
    tls: TLS = Field(default_factory=TLS)
    scheduling: Scheduling = Field(default_factory=Scheduling)
    disruption: Disruption = Field(default_factory=Disruption)
    pod_template: PodTemplate = Field(default_factory=PodTemplate)
    cluster_domain: str = Field(
        default="cluster.local", min_length=1, max_length=128, pattern=DNS_SUBDOMAIN,
        description="The Kubernetes cluster's DNS domain; part of every member's address and "
                    "certificate name. Fixed at creation.",
        json_schema_extra=immutable("clusterDomain", ": members are known by addresses in it"))
    termination_grace_period_seconds: int = Field(
        default=60, ge=10, le=3600,
        description="Time for a graceful leave: leadership transfer, mesh leave, flush.")
    paused: bool = Field(default=False,
                         description="Stop changing children; status keeps updating.")
    bootstrap: backup_spec.Bootstrap | None = Field(
        default=None, description="Create the cluster from a backup. Fixed at creation.")
    backup: backup_spec.BackupSchedule | None = Field(
        default=None, description="Scheduled backups and their retention.")


# ---- status -----------------------------------------------------------------------------------

class Member(_Model):
    name: str
    role: str = "unknown"
    voter: bool = False
    healthy: bool = False
    ready: bool = False
    match_index: int | None = None
    version: str | None = None
    node_name: str | None = Field(default=None, description="The Kubernetes node it runs on.")


class Operation(_Model):
    """The step in flight, written before it is acted on so a restarted operator resumes it."""

    type: Literal["ScaleUp", "ScaleDown", "Update"]
    step: str
    member: str
    target: int | None = None
    removal_confirmed: bool = False
    started_at: str | None = None


class CARotation(_Model):
    """A rotation of the operator-managed CA in progress (read from the CA Secret)."""

    phase: Literal["PublishingBundle", "ReissuingLeaves"]
    ca_sha256: str = Field(description="SHA-256 of the new CA certificate (DER).")
    waiting_for: list[str] = Field(default_factory=list,
                                   description="Pods that have not confirmed this phase yet.")
    message: str = ""


class Certificates(_Model):
    secret_name: str | None = None
    ca_secret_name: str | None = None
    client_secret_name: str | None = None
    not_after: str | None = None
    rotation: CARotation | None = None


class StorageStatus(_Model):
    """Volume expansion: the size asked for and the PVCs that do not have it yet."""

    size: str
    pending: list[str] = Field(default_factory=list)


class FederationClusterStatus(_Model):
    model_config = ConfigDict(extra="ignore")

    observed_generation: int | None = None
    replicas: int | None = None
    ready_replicas: int | None = None
    selector: str | None = None
    phase: str | None = None
    leader: str | None = None
    term: int | None = None
    members: list[Member] = Field(default_factory=list, json_schema_extra={
        "x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["name"]})
    operation: Operation | None = None
    certificates: Certificates | None = None
    current_version: str | None = None
    storage: StorageStatus | None = None
    blocked_reason: str | None = None
    recovery_handled: str | None = Field(default=None,
                                         description="Last recover-quorum value acted on.")
    restart_handled: str | None = Field(default=None, description="Last restart value acted on.")
    force_new_cluster_handled: str | None = Field(
        default=None, description="Last force-new-cluster value decided (acted on or refused).")
    bootstrap: backup_spec.ClusterBootstrapStatus | None = None
    backup: backup_spec.ClusterBackupStatus | None = None
    conditions: list[Condition] = Field(default_factory=list, json_schema_extra={
        "x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["type"]})


_DURATION_PART = re.compile(r"([0-9]+(?:\.[0-9]+)?)(h|ms|m|s)")
_UNIT = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 0.001}


def parse_duration(text: str) -> float:
    """Seconds in a Go duration such as ``2160h`` or ``1h30m`` (cert-manager's format)."""
    if not re.fullmatch(DURATION, text):
        raise ValueError(f"not a duration: {text!r}")
    return sum(float(n) * _UNIT[u] for n, u in _DURATION_PART.findall(text))


def parse_spec(raw: dict[str, Any] | None) -> FederationClusterSpec:
    """Validate a CR's spec; raises ``pydantic.ValidationError`` with the field paths."""
    return FederationClusterSpec.model_validate(dict(raw or {}))


def describe_errors(exc: Exception) -> str:
    """One readable line per problem, with the camelCase field path the user wrote."""
    errors = getattr(exc, "errors", None)
    if not callable(errors):
        return str(exc)
    lines = []
    for err in errors():
        path = ".".join(str(p) for p in err.get("loc", ())) or "spec"
        lines.append(f"spec.{path}: {err.get('msg', 'invalid')}")
    return "; ".join(lines)
