"""The FederationCluster API: pydantic models of the spec and the status.

The CRD under ``crds/`` is generated from these models (see ``crd.py``), so
this file is the one place where the API is defined. Field names are
snake_case in Python and camelCase on the wire (``by_alias``). Unknown spec
fields are rejected, so a typo is an error, not a silently ignored setting.
"""

from __future__ import annotations

import re
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator
from pydantic.alias_generators import to_camel

from continuum.federation.distributed import config as node_config

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

QUANTITY = r"^([+]?[0-9.]+)([eEinumkKMGTP]*[-+]?[0-9]*)$"
DURATION = r"^([0-9]+(\.[0-9]+)?(h|m|s|ms))+$"
HEARTBEAT_RULE = "heartbeatIntervalMs must be at most half of electionTimeoutMinMs"
ELECTION_RULE = "electionTimeoutMinMs must be below electionTimeoutMaxMs"

INT_OR_STRING: dict[str, Any] = {"x-kubernetes-int-or-string": True,
                 "anyOf": [{"type": "integer"}, {"type": "string"}]}
FREE_OBJECT: dict[str, Any] = {"type": "object", "x-kubernetes-preserve-unknown-fields": True}


def free_list(description: str) -> dict[str, Any]:
    return {"type": "array", "description": description, "items": dict(FREE_OBJECT)}


class _Model(BaseModel):
    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="forbid",
                              frozen=True)


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
    """Container resources of each node (Kubernetes quantities)."""

    requests: dict[str, int | str] = Field(
        default_factory=_requests,
        json_schema_extra={"type": "object", "additionalProperties": INT_OR_STRING})
    limits: dict[str, int | str] = Field(
        default_factory=_limits,
        json_schema_extra={"type": "object", "additionalProperties": INT_OR_STRING})


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
                      description="PVC size per member; may only grow.")
    storage_class_name: str | None = Field(default=None, description="Immutable once set.")
    retention: Retention = Field(default_factory=Retention)


class Consensus(_Model):
    """Raft timing in milliseconds; the rules are the ones every node checks at start."""

    # Same rules as the node's RaftSettings: a spec breaking them would render a ConfigMap
    # that every node refuses to start with.
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

    @model_validator(mode="after")
    def _ordered(self) -> Consensus:
        if self.heartbeat_interval_ms * 2 > self.election_timeout_min_ms:
            raise ValueError(HEARTBEAT_RULE)
        if self.election_timeout_min_ms >= self.election_timeout_max_ms:
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
    ]})

    mode: Literal["SelfSigned", "CertManager"] = "SelfSigned"
    issuer_ref: IssuerRef | None = None
    duration: str = Field(default="2160h", pattern=DURATION)
    renew_before: str = Field(default="360h", pattern=DURATION)

    @model_validator(mode="after")
    def _issuer(self) -> TLS:
        if self.mode == "CertManager" and self.issuer_ref is None:
            raise ValueError("tls.issuerRef is required when tls.mode is CertManager")
        if parse_duration(self.renew_before) >= parse_duration(self.duration):
            raise ValueError("tls.renewBefore must be shorter than tls.duration")
        return self


class Scheduling(_Model):
    affinity: dict[str, Any] | None = Field(default=None, json_schema_extra=FREE_OBJECT)
    topology_spread_constraints: list[dict[str, Any]] = Field(
        default_factory=list, json_schema_extra=free_list("Passed to the pod spec as is."))
    tolerations: list[dict[str, Any]] = Field(
        default_factory=list, json_schema_extra=free_list("Passed to the pod spec as is."))
    node_selector: dict[str, str] = Field(default_factory=dict)
    priority_class_name: str | None = None


class Disruption(_Model):
    """The PodDisruptionBudget. By default maxUnavailable keeps a voting majority up."""

    enabled: bool = True
    max_unavailable: int | None = Field(default=None, ge=0,
                                        description="Default: replicas - quorum.")


class FederationClusterSpec(_Model):
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
    termination_grace_period_seconds: int = Field(
        default=60, ge=10, le=3600,
        description="Time for a graceful leave: leadership transfer, mesh leave, flush.")
    paused: bool = Field(default=False,
                         description="Stop changing children; status keeps updating.")


# ---- status -----------------------------------------------------------------------------------

class Condition(_Model):
    type: str
    status: Literal["True", "False", "Unknown"]
    reason: str = ""
    message: str = ""
    last_transition_time: str | None = None
    observed_generation: int | None = None


class Member(_Model):
    name: str
    role: str = "unknown"
    voter: bool = False
    healthy: bool = False
    ready: bool = False
    match_index: int | None = None
    version: str | None = None


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
    blocked_reason: str | None = None
    recovery_handled: str | None = Field(default=None,
                                         description="Last recover-quorum value acted on.")
    restart_handled: str | None = Field(default=None, description="Last restart value acted on.")
    force_new_cluster_handled: str | None = Field(
        default=None, description="Last force-new-cluster value decided (acted on or refused).")
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
