"""Pure builders: a FederationCluster's spec -> the Kubernetes objects it owns (plain dicts).

Nothing here reads the cluster or a clock. Two rules shape the StatefulSet:
the replica count is left out (the planner changes it one member at a time,
through ``cluster.py``), and certificate contents never enter the pod
template (the TLS Secret is mounted by name, so a renewal rotates files in
place and nodes reload them without a restart). The ConfigMap's hash does go
into the template: a tunable change is a new revision that the planner rolls
out in the safe order.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any

import yaml

from . import quantities
from . import spec as api

PEER_PORT = 7000
HEALTH_PORT = 8080
DATA_DIR = "/var/lib/continuum"
TLS_DIR = "/etc/continuum/tls"
CONFIG_DIR = "/etc/continuum/config"
CONFIG_KEY = "node.yaml"
NODE_UID = 10001
NODE_ROLE_URI = "urn:continuum:role:node"
OPERATOR_CLIENT = "operator"
OPERATOR_ROLE_URI = "urn:continuum:role:admin"  # the API role the operator's calls need
CSI_DRIVER = "csi.cert-manager.io"
CONFIG_HASH = f"{api.PREFIX}/config-hash"
APP = "continuum-federation"
MANAGER = "continuum-operator"


@dataclass(frozen=True, slots=True)
class Cluster:
    """What every builder needs to know about the CR besides its spec."""

    name: str
    namespace: str
    uid: str
    spec: api.FederationClusterSpec

    @property
    def peers_service(self) -> str:
        return f"{self.name}-peers"

    @property
    def peer_domain(self) -> str:
        return f"{self.peers_service}.{self.namespace}.svc.{self.spec.cluster_domain}"

    @property
    def config_map(self) -> str:
        return f"{self.name}-config"

    @property
    def tls_secret(self) -> str:
        return f"{self.name}-tls"

    @property
    def ca_secret(self) -> str:
        return f"{self.name}-ca"

    @property
    def client_secret(self) -> str:
        return f"{self.name}-operator-client-tls"

    @property
    def node_certificate(self) -> str:
        return f"{self.name}-node"

    @property
    def client_certificate(self) -> str:
        return f"{self.name}-operator-client"

    @property
    def shared_certificate(self) -> bool:
        """One certificate for every pod (SelfSigned mode, or the wildcard opt-in); else each
        pod has its own from cert-manager's CSI driver."""
        return self.spec.tls.mode == "SelfSigned" or self.spec.tls.wildcard

    def pod(self, ordinal: int) -> str:
        return f"{self.name}-{ordinal}"

    def pvc(self, pod: str) -> str:
        return f"data-{pod}"

    def address(self, pod: str) -> str:
        """The address a node advertises and peers dial (stable across restarts)."""
        return f"{pod}.{self.peer_domain}:{PEER_PORT}"


def ordinal(cluster_name: str, pod_name: str) -> int | None:
    prefix = f"{cluster_name}-"
    tail = pod_name[len(prefix):] if pod_name.startswith(prefix) else ""
    return int(tail) if tail.isdigit() else None


def selector_labels(c: Cluster) -> dict[str, str]:
    return {"app.kubernetes.io/name": APP, "app.kubernetes.io/instance": c.name,
            "app.kubernetes.io/component": "node"}


def selector_string(c: Cluster) -> str:
    return ",".join(f"{k}={v}" for k, v in sorted(selector_labels(c).items()))


def labels(c: Cluster, component: str = "node") -> dict[str, str]:
    return {**selector_labels(c), "app.kubernetes.io/component": component,
            "app.kubernetes.io/managed-by": MANAGER, "app.kubernetes.io/part-of": APP}


def _meta(c: Cluster, name: str, component: str = "node") -> dict[str, Any]:
    return {
        "name": name,
        "namespace": c.namespace,
        "labels": labels(c, component),
        "ownerReferences": [{
            "apiVersion": api.API_VERSION, "kind": api.KIND, "name": c.name, "uid": c.uid,
            "controller": True, "blockOwnerDeletion": True,
        }],
    }


def quorum(voters: int) -> int:
    return voters // 2 + 1


# ---- services and config ----------------------------------------------------------------------

def peers_service(c: Cluster) -> dict[str, Any]:
    """Headless: one DNS name and SRV record per pod, published before the pod is ready."""
    return {
        "apiVersion": "v1", "kind": "Service",
        "metadata": _meta(c, c.peers_service),
        "spec": {
            "clusterIP": "None",
            "publishNotReadyAddresses": True,
            "selector": selector_labels(c),
            "ports": [
                {"name": "peer", "port": PEER_PORT, "targetPort": "peer", "protocol": "TCP"},
                {"name": "health", "port": HEALTH_PORT, "targetPort": "health",
                 "protocol": "TCP"},
            ],
        },
    }


def client_service(c: Cluster) -> dict[str, Any]:
    """Ready members only: the mTLS API for clients, and metrics."""
    return {
        "apiVersion": "v1", "kind": "Service",
        "metadata": _meta(c, c.name),
        "spec": {
            "type": "ClusterIP",
            "selector": selector_labels(c),
            "ports": [
                {"name": "api", "port": PEER_PORT, "targetPort": "peer", "protocol": "TCP"},
                {"name": "metrics", "port": HEALTH_PORT, "targetPort": "health",
                 "protocol": "TCP"},
            ],
        },
    }


def node_settings(c: Cluster) -> dict[str, Any]:
    """The YAML the node reads from CONTINUUM_CONFIG_FILE (keys named as in the library)."""
    s = c.spec
    return {
        "cluster_name": c.name,
        "raft": {
            "election_timeout_ms": [s.consensus.election_timeout_min_ms,
                                    s.consensus.election_timeout_max_ms],
            "heartbeat_interval_ms": s.consensus.heartbeat_interval_ms,
            "max_inflight_appends": s.consensus.max_inflight_appends,
        },
        "mesh": {
            "fanout": s.mesh.fanout,
            "gossip_interval_ms": s.mesh.gossip_interval_ms,
            "sync_interval_seconds": s.mesh.sync_interval_seconds,
        },
        "load_balance": {
            "algorithm": s.load_balance.algorithm,
            "health_check_interval": s.load_balance.health_check_interval_seconds,
            "unhealthy_threshold": s.load_balance.unhealthy_threshold,
        },
        "replication": {"conflict_strategy": s.replication.conflict_strategy},
    }


def config_map(c: Cluster) -> dict[str, Any]:
    text = yaml.safe_dump(node_settings(c), sort_keys=True)
    return {
        "apiVersion": "v1", "kind": "ConfigMap",
        "metadata": _meta(c, c.config_map),
        "data": {CONFIG_KEY: text},
    }


def config_hash(c: Cluster) -> str:
    return hashlib.sha256(config_map(c)["data"][CONFIG_KEY].encode()).hexdigest()[:16]


# ---- the StatefulSet --------------------------------------------------------------------------

def _env(c: Cluster) -> list[dict[str, Any]]:
    domain = c.peer_domain
    plain = {
        "CONTINUUM_NODE_ID": "$(POD_NAME)",
        "CONTINUUM_CLUSTER_NAME": c.name,
        "CONTINUUM_BIND_ADDRESS": f"0.0.0.0:{PEER_PORT}",
        "CONTINUUM_ADVERTISE_ADDRESS": f"$(POD_NAME).{domain}:{PEER_PORT}",
        "CONTINUUM_HEALTH_ADDRESS": f"$(POD_IP):{HEALTH_PORT}",  # probes and scrapes only
        "CONTINUUM_WILDCARD_CERTIFICATES": str(c.shared_certificate).lower(),
        "CONTINUUM_DATA_DIR": DATA_DIR,
        "CONTINUUM_TLS_DIR": TLS_DIR,
        "CONTINUUM_PEER_DOMAIN": domain,
        "CONTINUUM_DISCOVERY_SRV": f"_peer._tcp.{domain}",
        "CONTINUUM_BOOTSTRAP": c.address(c.pod(0)),
        "CONTINUUM_CONFIG_FILE": f"{CONFIG_DIR}/{CONFIG_KEY}",
    }
    # POD_NAME first: Kubernetes expands $(POD_NAME) only from variables defined earlier.
    return [
        {"name": "POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
        {"name": "POD_NAMESPACE", "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}}},
        {"name": "POD_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}},
        *({"name": k, "value": v} for k, v in plain.items()),
        *(e.model_dump(by_alias=True, exclude_none=True) for e in c.spec.pod_template.env),
    ]


def _probe(path: str, period: int, failures: int) -> dict[str, Any]:
    return {"httpGet": {"path": path, "port": "health", "scheme": "HTTP"},
            "periodSeconds": period, "failureThreshold": failures, "timeoutSeconds": 3}


def _container(c: Cluster) -> dict[str, Any]:
    s = c.spec
    resources: dict[str, Any] = {}
    for kind, amounts in (("requests", s.resources.requests), ("limits", s.resources.limits)):
        if amounts:
            resources[kind] = {k: quantities.mark(v) for k, v in amounts.items()}
    return {
        "name": "node",
        "image": s.image.reference,
        "imagePullPolicy": s.image.pull_policy,
        "ports": [
            {"name": "peer", "containerPort": PEER_PORT, "protocol": "TCP"},
            {"name": "health", "containerPort": HEALTH_PORT, "protocol": "TCP"},
        ],
        "env": _env(c),
        "startupProbe": _probe("/healthz", 2, 60),
        "livenessProbe": _probe("/healthz", 10, 6),
        "readinessProbe": _probe("/readyz", 5, 3),
        "resources": resources,
        "securityContext": {
            "allowPrivilegeEscalation": False,
            "readOnlyRootFilesystem": True,
            "runAsNonRoot": True,
            "capabilities": {"drop": ["ALL"]},
            "seccompProfile": {"type": "RuntimeDefault"},
        },
        "volumeMounts": [
            {"name": "data", "mountPath": DATA_DIR},
            {"name": "tls", "mountPath": TLS_DIR, "readOnly": True},
            {"name": "config", "mountPath": CONFIG_DIR, "readOnly": True},
            {"name": "tmp", "mountPath": "/tmp"},
        ],
    }


HOSTNAME = "kubernetes.io/hostname"
ZONE = "topology.kubernetes.io/zone"


def spread_constraints(c: Cluster) -> list[dict[str, Any]]:
    """The user's topologySpreadConstraints, else members spread over hosts and zones.

    maxSkew 1 over hosts: no host ever runs two members more than another, so with as
    many hosts as members each runs one, and a lost host costs at most its share. Tainted
    or cordoned nodes the pods cannot use are left out of the count (nodeTaintsPolicy
    Honor), so they never make a spread look uneven and block scheduling.
    """
    sched = c.spec.scheduling
    if sched.topology_spread_constraints:
        return list(sched.topology_spread_constraints)
    out = []
    for key, mode in ((HOSTNAME, sched.host_spread), (ZONE, sched.zone_spread)):
        if mode == "Disabled":
            continue
        out.append({
            "maxSkew": 1, "topologyKey": key,
            "whenUnsatisfiable": "DoNotSchedule" if mode == "Required" else "ScheduleAnyway",
            "labelSelector": {"matchLabels": selector_labels(c)},
            "nodeTaintsPolicy": "Honor",
        })
    return out


def _pod_spec(c: Cluster) -> dict[str, Any]:
    s = c.spec
    extra = s.pod_template
    pod: dict[str, Any] = {
        "automountServiceAccountToken": extra.automount_service_account_token,
        "enableServiceLinks": False,
        "terminationGracePeriodSeconds": s.termination_grace_period_seconds,
        "securityContext": {
            "runAsNonRoot": True, "runAsUser": NODE_UID, "runAsGroup": NODE_UID,
            "fsGroup": NODE_UID, "fsGroupChangePolicy": "OnRootMismatch",
            "seccompProfile": {"type": "RuntimeDefault"},
        },
        "containers": [_container(c)],
        "volumes": [
            _tls_volume(c),
            {"name": "config", "configMap": {"name": c.config_map}},
            {"name": "tmp", "emptyDir": {"sizeLimit": quantities.mark("64Mi")}},
        ],
    }
    if extra.service_account_name:
        pod["serviceAccountName"] = extra.service_account_name
    if extra.image_pull_secrets:
        pod["imagePullSecrets"] = [r.model_dump() for r in extra.image_pull_secrets]
    sched = s.scheduling
    if sched.affinity:
        pod["affinity"] = sched.affinity
    if spread := spread_constraints(c):
        pod["topologySpreadConstraints"] = spread
    if sched.tolerations:
        pod["tolerations"] = list(sched.tolerations)
    if sched.node_selector:
        pod["nodeSelector"] = dict(sched.node_selector)
    if sched.priority_class_name:
        pod["priorityClassName"] = sched.priority_class_name
    return pod


def _tls_volume(c: Cluster) -> dict[str, Any]:
    """The shared TLS Secret, or a certificate of the pod's own from cert-manager's CSI
    driver (its key never leaves the node; renewed in place)."""
    if c.shared_certificate:
        return {"name": "tls", "secret": {"secretName": c.tls_secret, "defaultMode": 0o440}}
    issuer, tls = _issuer(c), c.spec.tls
    ns = c.namespace
    names = [f"${{POD_NAME}}.{c.peer_domain}", f"{c.name}.{ns}.svc.{c.spec.cluster_domain}",
             f"{c.name}.{ns}.svc"]
    return {"name": "tls", "csi": {"driver": CSI_DRIVER, "readOnly": True, "volumeAttributes": {
        f"{CSI_DRIVER}/issuer-name": issuer["name"], f"{CSI_DRIVER}/issuer-kind": issuer["kind"],
        f"{CSI_DRIVER}/issuer-group": issuer["group"], f"{CSI_DRIVER}/dns-names": ",".join(names),
        f"{CSI_DRIVER}/uri-sans": NODE_ROLE_URI, f"{CSI_DRIVER}/fs-group": str(NODE_UID),
        f"{CSI_DRIVER}/key-usages": "digital signature,server auth,client auth",
        f"{CSI_DRIVER}/duration": tls.duration, f"{CSI_DRIVER}/renew-before": tls.renew_before}}}


def _claim(c: Cluster) -> dict[str, Any]:
    claim: dict[str, Any] = {
        "accessModes": ["ReadWriteOnce"],
        "resources": {"requests": {"storage": quantities.mark(c.spec.storage.size)}},
    }
    if c.spec.storage.storage_class_name:
        claim["storageClassName"] = c.spec.storage.storage_class_name
    return {"apiVersion": "v1", "kind": "PersistentVolumeClaim",
            "metadata": {"name": "data", "labels": selector_labels(c)}, "spec": claim}


def _pod_metadata(c: Cluster) -> dict[str, Any]:
    """The user's pod labels and annotations, then ours (the spec refuses clashes)."""
    extra = c.spec.pod_template.metadata
    return {"labels": {**extra.labels, **labels(c)},
            "annotations": {**extra.annotations, CONFIG_HASH: config_hash(c)}}


def statefulset(c: Cluster) -> dict[str, Any]:
    """Without ``spec.replicas``: that count is changed only by the planner's steps."""
    return {
        "apiVersion": "apps/v1", "kind": "StatefulSet",
        "metadata": _meta(c, c.name),
        "spec": {
            "serviceName": c.peers_service,
            "podManagementPolicy": "Parallel",
            "updateStrategy": {"type": "OnDelete"},
            "selector": {"matchLabels": selector_labels(c)},
            # The operator deletes scaled-away PVCs itself, after the member's removal committed.
            "persistentVolumeClaimRetentionPolicy": {
                "whenScaled": "Retain",
                "whenDeleted": c.spec.storage.retention.when_deleted,
            },
            "template": {
                "metadata": _pod_metadata(c),
                "spec": _pod_spec(c),
            },
            "volumeClaimTemplates": [_claim(c)],
        },
    }


def pod_disruption_budget(c: Cluster, voters: int) -> dict[str, Any] | None:
    """Allow only as many voluntary disruptions as keep a majority of ``voters`` up.

    ``voters`` is the smaller of the current and the desired size, so a budget
    computed for the target of a scale-up never exceeds what the current
    membership can lose. Below three members any disruption loses quorum, and a
    budget of zero would block every node drain, so none is made unless the
    user set ``maxUnavailable`` explicitly.
    """
    d = c.spec.disruption
    if not d.enabled:
        return None
    if d.max_unavailable is not None:
        allowed = d.max_unavailable
    elif voters < 3:
        return None
    else:
        allowed = voters - quorum(voters)
    return {
        "apiVersion": "policy/v1", "kind": "PodDisruptionBudget",
        "metadata": _meta(c, c.name),
        "spec": {"maxUnavailable": allowed, "selector": {"matchLabels": selector_labels(c)}},
    }


# ---- certificates (cert-manager mode) ---------------------------------------------------------

def node_dns_names(c: Cluster) -> list[str]:
    """One wildcard for every pod (scaling never re-issues) plus the Service names."""
    ns = c.namespace
    return [f"*.{c.peer_domain}", c.peer_domain,
            f"{c.name}.{ns}.svc.{c.spec.cluster_domain}", f"{c.name}.{ns}.svc"]


def _issuer(c: Cluster) -> dict[str, str]:
    ref = c.spec.tls.issuer_ref
    if ref is None:
        raise ValueError("tls.issuerRef is required when tls.mode is CertManager")
    return {"name": ref.name, "kind": ref.kind, "group": ref.group}


def _certificate(c: Cluster, name: str, secret: str, body: dict[str, Any]) -> dict[str, Any]:
    tls = c.spec.tls
    return {
        "apiVersion": "cert-manager.io/v1", "kind": "Certificate",
        "metadata": _meta(c, name, "tls"),
        "spec": {
            "secretName": secret,
            "secretTemplate": {"labels": labels(c, "tls")},
            "duration": tls.duration,
            "renewBefore": tls.renew_before,
            "privateKey": {"algorithm": "ECDSA", "size": 256, "rotationPolicy": "Always"},
            "issuerRef": _issuer(c),
            **body,
        },
    }


def certificates(c: Cluster) -> list[dict[str, Any]]:
    """The shared node certificate (wildcard opt-in only) and the operator's client
    certificate; [] in SelfSigned mode."""
    if c.spec.tls.mode != "CertManager":
        return []
    node = _certificate(c, c.node_certificate, c.tls_secret, {
        "dnsNames": node_dns_names(c),
        "uris": [NODE_ROLE_URI],
        "usages": ["digital signature", "server auth", "client auth"],
    })
    client = _certificate(c, c.client_certificate, c.client_secret, {
        "commonName": OPERATOR_CLIENT,
        "uris": [OPERATOR_ROLE_URI],
        "usages": ["digital signature", "client auth"],
    })
    return [node, client] if c.spec.tls.wildcard else [client]


def children(c: Cluster, voters: int) -> list[dict[str, Any]]:
    """Every owned object except TLS Secrets (see ``certificates.py``), in creation order."""
    objs = [config_map(c), peers_service(c), client_service(c), *certificates(c), statefulset(c)]
    pdb = pod_disruption_budget(c, voters)
    if pdb is not None:
        objs.append(pdb)
    return objs
