"""Pure builders: each owned object, validated against the official Kubernetes schemas."""

from __future__ import annotations

from typing import Any

import pytest
import yaml
from builders import cluster, validate

from continuum_operator import manifests


def _env(sts: dict[str, Any]) -> dict[str, Any]:
    env = sts["spec"]["template"]["spec"]["containers"][0]["env"]
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in env}


@pytest.mark.parametrize("raw", [
    {},
    {"replicas": 5, "tls": {"mode": "CertManager", "issuerRef": {"name": "ca",
                                                                  "kind": "ClusterIssuer"}}},
    {"storage": {"size": "50Gi", "storageClassName": "fast",
                 "retention": {"whenDeleted": "Delete"}},
     "scheduling": {
         "affinity": {"podAntiAffinity": {"preferredDuringSchedulingIgnoredDuringExecution": [{
             "weight": 100, "podAffinityTerm": {
                 "topologyKey": "kubernetes.io/hostname",
                 "labelSelector": {"matchLabels": {"app.kubernetes.io/instance": "demo"}}}}]}},
         "topologySpreadConstraints": [{"maxSkew": 1, "topologyKey": "topology.kubernetes.io/zone",
                                        "whenUnsatisfiable": "ScheduleAnyway"}],
         "tolerations": [{"key": "dedicated", "operator": "Equal", "value": "db",
                          "effect": "NoSchedule"}],
         "nodeSelector": {"disk": "ssd"}, "priorityClassName": "high"}},
    {"replicas": 1, "disruption": {"maxUnavailable": 0}},
    {"clusterDomain": "corp.internal", "scheduling": {"hostSpread": "Preferred"},
     "resources": {"requests": {"cpu": "0.5", "memory": "0.5Gi"}, "limits": {"cpu": 1}},
     "podTemplate": {"metadata": {"labels": {"team": "data"}},
                     "imagePullSecrets": [{"name": "regcred"}],
                     "env": [{"name": "A", "valueFrom": {"fieldRef": {
                         "fieldPath": "status.podIP"}}}],
                     "serviceAccountName": "node"}},
])
def test_every_child_is_valid_kubernetes(raw: dict[str, Any]) -> None:
    c = cluster(**raw)
    for obj in manifests.children(c, voters=c.spec.replicas):
        if obj["apiVersion"].startswith("cert-manager.io"):
            continue  # not an official schema; checked below
        validate(obj)


def test_children_are_owned_by_the_cluster() -> None:
    c = cluster()
    for obj in manifests.children(c, voters=3):
        (ref,) = obj["metadata"]["ownerReferences"]
        assert ref == {"apiVersion": "continuum.dev/v1alpha1", "kind": "FederationCluster",
                       "name": "demo", "uid": "uid-demo", "controller": True,
                       "blockOwnerDeletion": True}
        assert obj["metadata"]["namespace"] == "prod"
        assert obj["metadata"]["labels"]["app.kubernetes.io/managed-by"] == "continuum-operator"


def test_headless_peers_service_publishes_not_ready_addresses() -> None:
    svc = manifests.peers_service(cluster())
    assert svc["metadata"]["name"] == "demo-peers"
    assert svc["spec"]["clusterIP"] == "None"
    assert svc["spec"]["publishNotReadyAddresses"] is True
    assert {p["name"]: p["port"] for p in svc["spec"]["ports"]} == {"peer": 7000, "health": 8080}


def test_statefulset_shape() -> None:
    sts = manifests.statefulset(cluster(terminationGracePeriodSeconds=90))
    s = sts["spec"]
    assert "replicas" not in s  # the planner owns the count
    assert s["podManagementPolicy"] == "Parallel"
    assert s["updateStrategy"] == {"type": "OnDelete"}
    assert s["serviceName"] == "demo-peers"
    assert s["persistentVolumeClaimRetentionPolicy"]["whenScaled"] == "Retain"
    pod = s["template"]["spec"]
    assert pod["terminationGracePeriodSeconds"] == 90
    assert pod["securityContext"]["runAsNonRoot"] is True
    (ctr,) = pod["containers"]
    assert ctr["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "health",
                                                "scheme": "HTTP"}
    assert ctr["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert ctr["securityContext"]["capabilities"] == {"drop": ["ALL"]}
    assert ctr["securityContext"]["allowPrivilegeEscalation"] is False
    mounts = {m["name"]: m["mountPath"] for m in ctr["volumeMounts"]}
    assert mounts["tls"] == "/etc/continuum/tls"
    tls_volume = next(v for v in pod["volumes"] if v["name"] == "tls")
    assert tls_volume["secret"]["secretName"] == "demo-tls"
    (claim,) = s["volumeClaimTemplates"]
    assert claim["spec"]["resources"]["requests"]["storage"] == "10Gi"


def test_node_contract_environment() -> None:
    env = _env(manifests.statefulset(cluster()))
    assert env["POD_NAME"] == {"fieldRef": {"fieldPath": "metadata.name"}}
    assert next(iter(env)) == "POD_NAME"  # defined before the variables that expand it
    domain = "demo-peers.prod.svc.cluster.local"
    assert env["CONTINUUM_NODE_ID"] == "$(POD_NAME)"
    assert env["CONTINUUM_ADVERTISE_ADDRESS"] == f"$(POD_NAME).{domain}:7000"
    assert env["CONTINUUM_PEER_DOMAIN"] == domain
    assert env["CONTINUUM_DISCOVERY_SRV"] == f"_peer._tcp.{domain}"
    assert env["CONTINUUM_BOOTSTRAP"] == f"demo-0.{domain}:7000"
    assert env["CONTINUUM_TLS_DIR"] == "/etc/continuum/tls"
    assert env["CONTINUUM_CONFIG_FILE"] == "/etc/continuum/config/node.yaml"
    assert env["CONTINUUM_CLUSTER_NAME"] == "demo"


def test_pod_template_is_independent_of_replicas_and_certificate_contents() -> None:
    base = manifests.statefulset(cluster(replicas=3))
    assert manifests.statefulset(cluster(replicas=7)) == base
    shared = manifests.statefulset(cluster(
        tls={"mode": "CertManager", "issuerRef": {"name": "x"}, "wildcard": True}))
    assert shared["spec"]["template"] == base["spec"]["template"]


def test_cert_manager_mode_gives_each_pod_a_certificate_of_its_own() -> None:
    """Per-pod by default: cert-manager's CSI driver issues each pod's certificate (its key
    never leaves the node), named for that pod alone, with the node role."""
    c = cluster(tls={"mode": "CertManager", "issuerRef": {"name": "ca", "kind": "ClusterIssuer"},
                     "duration": "720h", "renewBefore": "240h"})
    pod = manifests.statefulset(c)["spec"]["template"]["spec"]
    volume = next(v for v in pod["volumes"] if v["name"] == "tls")
    attrs = volume["csi"]["volumeAttributes"]
    assert volume["csi"]["driver"] == "csi.cert-manager.io" and volume["csi"]["readOnly"]
    names = attrs["csi.cert-manager.io/dns-names"].split(",")
    assert names[0] == "${POD_NAME}.demo-peers.prod.svc.cluster.local"
    assert not any(n.startswith("*") for n in names)
    assert attrs["csi.cert-manager.io/uri-sans"] == "urn:continuum:role:node"
    assert attrs["csi.cert-manager.io/issuer-name"] == "ca"
    assert attrs["csi.cert-manager.io/issuer-kind"] == "ClusterIssuer"
    assert "server auth" in attrs["csi.cert-manager.io/key-usages"]
    assert (attrs["csi.cert-manager.io/duration"], attrs["csi.cert-manager.io/renew-before"]
            ) == ("720h", "240h")
    env = _env(manifests.statefulset(c))
    assert env["CONTINUUM_WILDCARD_CERTIFICATES"] == "false"
    # Only a shared certificate makes the node accept a wildcard.
    for shared in (cluster(), cluster(tls={"mode": "CertManager", "issuerRef": {"name": "x"},
                                           "wildcard": True})):
        assert _env(manifests.statefulset(shared))["CONTINUUM_WILDCARD_CERTIFICATES"] == "true"


def test_the_health_port_listens_on_the_pods_ip_only() -> None:
    env = _env(manifests.statefulset(cluster()))
    assert env["POD_IP"] == {"fieldRef": {"fieldPath": "status.podIP"}}
    assert env["CONTINUUM_HEALTH_ADDRESS"] == "$(POD_IP):8080"
    names = list(env)
    assert names.index("POD_IP") < names.index("CONTINUUM_HEALTH_ADDRESS")


def test_tunable_change_is_a_new_pod_template() -> None:
    a = manifests.statefulset(cluster())
    b = manifests.statefulset(cluster(mesh={"fanout": 5}))
    assert a["spec"]["template"] != b["spec"]["template"]


def test_config_map_carries_node_settings() -> None:
    cm = manifests.config_map(cluster(consensus={"electionTimeoutMinMs": 200,
                                                 "electionTimeoutMaxMs": 400,
                                                 "maxInflightAppends": 4},
                                      loadBalance={"algorithm": "latency"},
                                      replication={"conflictStrategy": "merge_union"}))
    settings = yaml.safe_load(cm["data"]["node.yaml"])
    assert settings["raft"] == {"election_timeout_ms": [200, 400], "heartbeat_interval_ms": 100,
                                "max_inflight_appends": 4}
    assert settings["load_balance"]["algorithm"] == "latency"
    assert settings["replication"]["conflict_strategy"] == "merge_union"
    assert settings["mesh"]["fanout"] == 3


@pytest.mark.parametrize(("voters", "raw", "expected"), [
    (1, {}, None),
    (2, {}, None),
    (3, {}, 1),
    (4, {}, 1),
    (5, {}, 2),
    (7, {}, 3),
    (5, {"disruption": {"maxUnavailable": 1}}, 1),
    (1, {"disruption": {"maxUnavailable": 0}}, 0),
    (5, {"disruption": {"enabled": False}}, None),
])
def test_pdb_keeps_quorum(voters: int, raw: dict[str, Any], expected: int | None) -> None:
    pdb = manifests.pod_disruption_budget(cluster(**raw), voters)
    if expected is None:
        assert pdb is None
    else:
        assert pdb is not None
        assert pdb["spec"]["maxUnavailable"] == expected
        assert voters - expected >= manifests.quorum(voters) or "maxUnavailable" in str(raw)


def test_cert_manager_certificates() -> None:
    c = cluster(tls={"mode": "CertManager", "issuerRef": {"name": "ca", "kind": "ClusterIssuer"},
                     "duration": "720h", "renewBefore": "240h", "wildcard": True})
    node, client = manifests.certificates(c)
    for cert in (node, client):
        assert cert["apiVersion"] == "cert-manager.io/v1" and cert["kind"] == "Certificate"
        assert cert["spec"]["issuerRef"] == {"name": "ca", "kind": "ClusterIssuer",
                                             "group": "cert-manager.io"}
        assert cert["spec"]["duration"] == "720h" and cert["spec"]["renewBefore"] == "240h"
    assert node["spec"]["secretName"] == "demo-tls"
    assert "*.demo-peers.prod.svc.cluster.local" in node["spec"]["dnsNames"]
    assert node["spec"]["uris"] == ["urn:continuum:role:node"]
    assert "server auth" in node["spec"]["usages"] and "client auth" in node["spec"]["usages"]
    assert client["spec"]["uris"] == ["urn:continuum:role:admin"]  # the operator is an admin
    assert client["spec"]["usages"] == ["digital signature", "client auth"]
    assert manifests.certificates(cluster()) == []
    per_pod = cluster(tls={"mode": "CertManager", "issuerRef": {"name": "ca"}})
    assert [x["metadata"]["name"] for x in manifests.certificates(per_pod)] == [
        "demo-operator-client"]  # no shared node certificate


def test_ordinals() -> None:
    assert manifests.ordinal("demo", "demo-12") == 12
    assert manifests.ordinal("demo", "demo-peers") is None
    assert manifests.ordinal("demo", "other-1") is None


def test_schema_validation_can_fail() -> None:
    sts = manifests.statefulset(cluster())
    sts["spec"]["template"]["spec"]["containers"][0]["livenesProbe"] = {}
    with pytest.raises(Exception, match="livenesProbe"):
        validate(sts)


# ---- placement ----------------------------------------------------------------------------

def _pod(c: Any) -> dict[str, Any]:
    pod: dict[str, Any] = manifests.statefulset(c)["spec"]["template"]["spec"]
    return pod


def test_members_spread_over_hosts_and_zones_by_default() -> None:
    c = cluster()
    by_key = {t["topologyKey"]: t for t in _pod(c)["topologySpreadConstraints"]}
    host, zone = by_key["kubernetes.io/hostname"], by_key["topology.kubernetes.io/zone"]
    assert (host["maxSkew"], host["whenUnsatisfiable"]) == (1, "DoNotSchedule")
    assert zone["whenUnsatisfiable"] == "ScheduleAnyway"
    for t in (host, zone):
        assert t["labelSelector"] == {"matchLabels": manifests.selector_labels(c)}
        assert t["nodeTaintsPolicy"] == "Honor"  # unusable nodes never block a spread
    validate(manifests.statefulset(c))


def test_spread_is_overridable() -> None:
    soft = _pod(cluster(scheduling={"hostSpread": "Preferred", "zoneSpread": "Disabled"}))
    (only,) = soft["topologySpreadConstraints"]
    assert only["whenUnsatisfiable"] == "ScheduleAnyway"
    assert "topologySpreadConstraints" not in _pod(cluster(scheduling={
        "hostSpread": "Disabled", "zoneSpread": "Disabled"}))
    mine = [{"maxSkew": 2, "topologyKey": "rack", "whenUnsatisfiable": "ScheduleAnyway"}]
    assert _pod(cluster(scheduling={"topologySpreadConstraints": mine}))[
        "topologySpreadConstraints"] == mine


# ---- cluster domain -----------------------------------------------------------------------

def test_cluster_domain_is_used_wherever_names_are_built() -> None:
    c = cluster(clusterDomain="corp.internal")
    env = _env(manifests.statefulset(c))
    assert env["CONTINUUM_PEER_DOMAIN"] == "demo-peers.prod.svc.corp.internal"
    assert env["CONTINUUM_ADVERTISE_ADDRESS"] == (
        "$(POD_NAME).demo-peers.prod.svc.corp.internal:7000")
    assert env["CONTINUUM_DISCOVERY_SRV"] == "_peer._tcp.demo-peers.prod.svc.corp.internal"
    assert env["CONTINUUM_BOOTSTRAP"] == "demo-0.demo-peers.prod.svc.corp.internal:7000"
    assert manifests.node_dns_names(c) == [
        "*.demo-peers.prod.svc.corp.internal", "demo-peers.prod.svc.corp.internal",
        "demo.prod.svc.corp.internal", "demo.prod.svc"]
    rendered = yaml.safe_dump(manifests.children(c, 3)[:3])
    assert "cluster.local" not in rendered
    assert all("cluster.local" not in str(v) for v in env.values())


# ---- pod template additions ---------------------------------------------------------------

def test_pod_template_additions_reach_the_pods_and_are_valid_kubernetes() -> None:
    c = cluster(podTemplate={
        "metadata": {"labels": {"team": "data"}, "annotations": {"example.com/owner": "x"}},
        "imagePullSecrets": [{"name": "regcred"}],
        "env": [{"name": "HTTPS_PROXY", "value": "http://proxy:3128"},
                {"name": "SELF", "value": "$(POD_NAME)"},
                {"name": "TOKEN", "valueFrom": {"secretKeyRef": {"name": "t", "key": "k"}}},
                {"name": "MEM", "valueFrom": {"resourceFieldRef": {
                    "resource": "limits.memory", "containerName": "node", "divisor": "1Mi"}}}],
        "serviceAccountName": "federation-node", "automountServiceAccountToken": True})
    sts = manifests.statefulset(c)
    validate(sts)
    template = sts["spec"]["template"]
    assert template["metadata"]["labels"]["team"] == "data"
    assert template["metadata"]["labels"]["app.kubernetes.io/instance"] == "demo"
    assert template["metadata"]["annotations"]["example.com/owner"] == "x"
    assert manifests.CONFIG_HASH in template["metadata"]["annotations"]
    pod = template["spec"]
    assert pod["imagePullSecrets"] == [{"name": "regcred"}]
    assert pod["serviceAccountName"] == "federation-node"
    assert pod["automountServiceAccountToken"] is True
    names = [e["name"] for e in pod["containers"][0]["env"]]
    # after the operator's variables, so $(POD_NAME) expands
    assert names.index("SELF") > names.index("POD_NAME")
    assert names[-4:] == ["HTTPS_PROXY", "SELF", "TOKEN", "MEM"]
    env = _env(sts)
    assert env["TOKEN"] == {"secretKeyRef": {"name": "t", "key": "k"}}


def test_without_additions_the_pod_keeps_no_token_and_no_extras() -> None:
    pod = _pod(cluster())
    assert pod["automountServiceAccountToken"] is False
    assert "serviceAccountName" not in pod and "imagePullSecrets" not in pod
