"""The Helm chart, rendered by a real helm binary and checked against the official schemas.

`scripts/install-helm.sh` puts helm 4 into ./bin (CI runs it before the tests). Every object
`helm template` renders, with default and non-default values, is validated with
kubernetes-validate (built-in kinds) or against its CRD schema (FederationCluster); the
values schema must reject bad values; the chart's CRD copy must equal crds/.
"""

from __future__ import annotations

import functools
import http.server
import json
import re
import subprocess
import sys
import tarfile
import tempfile
import threading
import tomllib
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml

from continuum_operator import manifests
from continuum_operator import spec as fc_spec
from continuum_operator.settings import OperatorSettings

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "helm" / "continuum-federation"
HELM = ROOT / "bin" / "helm"
CRDS = ROOT / "crds"
CHART_CRDS = CHART / "files" / "crds"
PEERING_CRDS = CHART / "crds" / "kopf-peerings.yaml"
# A Kubernetes version kubernetes-validate ships schemas for (the chart needs >= 1.29).
K8S_VERSION = "1.35.0"
RELEASE, NAMESPACE = "cf", "ops"

pytestmark = pytest.mark.skipif(
    not HELM.exists(), reason=f"{HELM} missing: run scripts/install-helm.sh (CI does)")

# Value sets the chart must render and validate with: every optional feature on, a
# single-namespace install, and the most stripped-down install.
VARIANTS: dict[str, dict[str, Any]] = {
    "default": {},
    "everything": {
        "image": {"digest": "sha256:" + "ab" * 32},
        "imagePullSecrets": [{"name": "regcred"}],
        "operator": {"logLevel": "debug", "extraArgs": ["--log-refkey=cr"],
                     "settings": {"interval": 2.5, "membershipTimeout": 300,
                                  "watchServerTimeout": 120},
                     "extraEnv": [{"name": "EXTRA", "value": "1"}]},
        "serviceAccount": {"name": "fed-operator", "annotations": {"a": "b"}},
        "podAnnotations": {"example.com/note": "hello"}, "podLabels": {"team": "data"},
        "nodeSelector": {"kubernetes.io/os": "linux"},
        "tolerations": [{"key": "k", "operator": "Exists", "effect": "NoSchedule"}],
        "affinity": {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {
            "nodeSelectorTerms": [{"matchExpressions": [
                {"key": "kubernetes.io/arch", "operator": "In", "values": ["amd64"]}]}]}}},
        "priorityClassName": "system-cluster-critical",
        "metrics": {"serviceMonitor": {"enabled": True, "labels": {"release": "prom"}},
                    "podMonitor": {"enabled": True},
                    "prometheusRule": {"enabled": True, "labels": {"release": "prom"},
                                       "memberLagEntries": 500}},
        "grafanaDashboard": {"namespace": "monitoring"},
        "exampleCluster": {"enabled": True, "replicas": 5,
                           "issuerRef": {"name": "cf-continuum-federation-ca"},
                           "backup": {"schedule": "0 2 * * *", "target": {"s3": {
                               "bucket": "backups", "credentialsSecret": {"name": "s3"}}},
                               "retention": {"keep": 7, "maxAge": "30d"}}},
        "certManager": {"createCAIssuer": True},
        "tests": {"clusterName": "demo"},
    },
    "namespaced": {"watchNamespace": "team-a", "exampleCluster": {"enabled": True}},
    "minimal": {
        "operator": {"replicas": 1},
        "crds": {"install": False}, "rbac": {"create": False},
        "serviceAccount": {"create": False, "name": "existing"},
        "grafanaDashboard": {"enabled": False}, "tests": {"enabled": False},
    },
}


def helm(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(HELM), *args], capture_output=True, text=True, timeout=120,
                          check=False)


def values_args(tmp_dir: Path, values: dict[str, Any]) -> list[str]:
    path = tmp_dir / "values.yaml"
    path.write_text(yaml.safe_dump(values))
    return ["-f", str(path)]


@functools.cache
def render(variant: str) -> tuple[dict[str, Any], ...]:
    """Objects `helm template` renders for a variant (cached: rendering is deterministic)."""
    with tempfile.TemporaryDirectory() as tmp:
        out = helm("template", RELEASE, str(CHART), "-n", NAMESPACE,
                   *values_args(Path(tmp), VARIANTS[variant]))
    assert out.returncode == 0, out.stderr
    return tuple(doc for doc in yaml.load_all(out.stdout, Loader=StrictLoader) if doc)


class StrictLoader(yaml.SafeLoader):
    """Refuses duplicate keys, which PyYAML silently resolves but the API server rejects."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        keys = [self.construct_object(k, deep=deep) for k, _ in node.value]
        dupes = {k for k in keys if keys.count(k) > 1}
        if dupes:
            raise yaml.constructor.ConstructorError(
                None, None, f"duplicate keys {sorted(dupes)}", node.start_mark)
        return super().construct_mapping(node, deep=deep)


def test_strict_loader_catches_duplicate_keys() -> None:
    with pytest.raises(yaml.constructor.ConstructorError, match="duplicate"):
        yaml.load("labels: {a: 1, a: 2}", Loader=StrictLoader)


def by_kind(objs: tuple[dict[str, Any], ...], kind: str) -> list[dict[str, Any]]:
    return [o for o in objs if o["kind"] == kind]


def named(objs: tuple[dict[str, Any], ...], kind: str, name: str) -> dict[str, Any]:
    (found,) = [o for o in objs if o["kind"] == kind and o["metadata"]["name"] == name]
    return found


def one(objs: tuple[dict[str, Any], ...], kind: str) -> dict[str, Any]:
    found = by_kind(objs, kind)
    assert len(found) == 1, f"expected one {kind}, got {len(found)}"
    return found[0]


# ---- lint --------------------------------------------------------------------------------

@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_helm_lint_strict_passes(variant: str, tmp_path: Path) -> None:
    out = helm("lint", "--strict", str(CHART), *values_args(tmp_path, VARIANTS[variant]))
    assert out.returncode == 0, out.stdout + out.stderr
    assert "0 chart(s) failed" in out.stdout


# ---- every rendered object is valid --------------------------------------------------------

def crd_schema() -> dict[str, Any]:
    crd = yaml.safe_load((CRDS / "federationclusters.continuum.dev.yaml").read_text())
    (version,) = [v for v in crd["spec"]["versions"] if v["name"] == fc_spec.VERSION]
    schema: dict[str, Any] = version["schema"]["openAPIV3Schema"]
    return schema


DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
# Custom resources whose CRDs we do not vendor: checked for shape, not against a schema.
FOREIGN_KINDS = {
    ("cert-manager.io/v1", "Issuer"), ("cert-manager.io/v1", "Certificate"),
    ("monitoring.coreos.com/v1", "ServiceMonitor"), ("monitoring.coreos.com/v1", "PodMonitor"),
    ("monitoring.coreos.com/v1", "PrometheusRule"),
}


def peering_schemas() -> dict[str, dict[str, Any]]:
    """The chart's own kopf peering CRDs (crds/), by kind."""
    out = {}
    for crd in yaml.safe_load_all(PEERING_CRDS.read_text()):
        kubernetes_validate.validate(crd, K8S_VERSION, strict=True)
        (version,) = crd["spec"]["versions"]
        out[crd["spec"]["names"]["kind"]] = version["schema"]["openAPIV3Schema"]
    return out


def validate(obj: dict[str, Any]) -> None:
    kind, api_version = obj["kind"], obj["apiVersion"]
    if api_version == fc_spec.API_VERSION:
        assert kind == fc_spec.KIND
        # A CRD schema is OpenAPI v3.0, i.e. JSON Schema draft 4 (boolean exclusiveMinimum).
        jsonschema.Draft4Validator(crd_schema()).validate(obj)
        fc_spec.parse_spec(obj["spec"])  # the operator's own model accepts it too
    elif api_version == "kopf.dev/v1":
        jsonschema.Draft4Validator(peering_schemas()[kind]).validate(obj)
        assert DNS_LABEL.match(obj["metadata"]["name"]), obj["metadata"]["name"]
    elif (api_version, kind) in FOREIGN_KINDS:
        assert DNS_LABEL.match(obj["metadata"]["name"]), obj["metadata"]["name"]
        assert isinstance(obj.get("spec"), dict) and obj["spec"], f"{kind} without a spec"
    else:
        try:
            kubernetes_validate.validate(obj, K8S_VERSION, strict=True)
        except kubernetes_validate.ValidationError as exc:
            raise AssertionError(
                f"{kind}/{obj['metadata']['name']}: {exc.message} at {list(exc.path)}") from None


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_every_rendered_object_is_valid_against_the_official_schemas(variant: str) -> None:
    objs = render(variant)
    assert objs
    for obj in objs:
        validate(obj)


def test_validation_is_not_vacuous() -> None:
    """A broken object must fail the same check the rendered objects pass."""
    deployment = json.loads(json.dumps(one(render("default"), "Deployment")))
    deployment["spec"]["replicas"] = "one"
    with pytest.raises(AssertionError, match="replicas"):
        validate(deployment)
    example = json.loads(json.dumps(one(render("everything"), "FederationCluster")))
    example["spec"]["replicas"] = 0
    with pytest.raises(jsonschema.ValidationError):
        validate(example)


def test_optional_objects_follow_their_switches() -> None:
    kinds = lambda v: sorted({o["kind"] for o in render(v)})  # noqa: E731
    assert kinds("default") == ["ClusterKopfPeering", "ClusterRole", "ClusterRoleBinding",
                                "ConfigMap", "CustomResourceDefinition", "Deployment",
                                "Pod", "PodDisruptionBudget", "Service", "ServiceAccount"]
    assert {"Certificate", "Issuer", "ServiceMonitor", "PodMonitor", "PrometheusRule",
            "FederationCluster"} <= set(kinds("everything"))
    assert kinds("minimal") == ["Deployment", "Service"]


def test_standard_labels_on_every_release_object() -> None:
    for variant in VARIANTS:
        for obj in render(variant):
            if obj["kind"] == fc_spec.KIND:
                continue  # the example is the user's object, not the release's
            labels = obj["metadata"]["labels"]
            name = f"{variant}: {obj['kind']}/{obj['metadata']['name']}"
            assert labels["app.kubernetes.io/name"] == "continuum-federation", name
            assert labels["app.kubernetes.io/instance"] == RELEASE, name
            assert labels["app.kubernetes.io/managed-by"] == "Helm", name
            assert labels["app.kubernetes.io/version"] == "0.1.0", name
            assert labels["helm.sh/chart"] == "continuum-federation-0.1.0", name


# ---- the operator Deployment ------------------------------------------------------------

def test_operator_deployment_runs_two_peered_replicas_restricted() -> None:
    objs = render("default")
    dep = one(objs, "Deployment")
    spec = dep["spec"]
    assert spec["replicas"] == 2
    # Peering makes an overlap harmless: the new replica stands by until the old one leaves.
    assert spec["strategy"] == {"type": "RollingUpdate",
                                "rollingUpdate": {"maxUnavailable": 0, "maxSurge": 1}}
    pod = spec["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    (container,) = pod["containers"]
    sc = container["securityContext"]
    assert sc["readOnlyRootFilesystem"] is True
    assert sc["allowPrivilegeEscalation"] is False
    assert sc["capabilities"]["drop"] == ["ALL"]
    assert container["resources"]["requests"] and container["resources"]["limits"]
    assert container["image"] == "ghcr.io/continuum/federation-operator:0.1.0"
    # The liveness probe reaches kopf's --liveness endpoint.
    cmd = container["command"]
    assert cmd[:3] == ["kopf", "run", "--module=continuum_operator"]
    liveness = next(a for a in cmd if a.startswith("--liveness="))
    assert liveness == "--liveness=http://0.0.0.0:8080/healthz"
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "health"}
    assert ports["health"] == 8080
    assert "--all-namespaces" in cmd
    # Peering: the object the replicas share, each replica named by its pod.
    peering = one(objs, "ClusterKopfPeering")
    assert f"--peering={peering['metadata']['name']}" in cmd and "--standalone" not in cmd
    env = {e["name"]: e for e in container["env"]}
    assert env["POD_ID"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name"
    assert env["CONTINUUM_OPERATOR_PEERING_LIFETIME"]["value"] == "30"
    anti = pod["affinity"]["podAntiAffinity"]["preferredDuringSchedulingIgnoredDuringExecution"]
    assert anti[0]["podAffinityTerm"]["topologyKey"] == "kubernetes.io/hostname"
    pdb = one(objs, "PodDisruptionBudget")
    assert pdb["spec"]["minAvailable"] == 1
    for selector in (dep["spec"]["selector"]["matchLabels"], pdb["spec"]["selector"][
            "matchLabels"], anti[0]["podAffinityTerm"]["labelSelector"]["matchLabels"]):
        assert selector_matches(selector, dep["spec"]["template"]["metadata"]["labels"])
    svc = one(objs, "Service")
    assert selector_matches(svc["spec"]["selector"], dep["spec"]["template"]["metadata"]["labels"])


def test_a_single_replica_runs_standalone_with_recreate() -> None:
    objs = render("minimal")
    dep = one(objs, "Deployment")
    assert dep["spec"]["replicas"] == 1 and dep["spec"]["strategy"] == {"type": "Recreate"}
    cmd = dep["spec"]["template"]["spec"]["containers"][0]["command"]
    assert "--standalone" in cmd and not any(a.startswith("--peering") for a in cmd)
    assert not by_kind(objs, "ClusterKopfPeering") and not by_kind(objs, "PodDisruptionBudget")


def pod_specs(objs: tuple[dict[str, Any], ...]) -> list[tuple[str, dict[str, Any]]]:
    specs = []
    for obj in objs:
        if obj["kind"] == "Pod":
            specs.append((obj["metadata"]["name"], obj["spec"]))
        elif obj["kind"] == "Deployment":
            specs.append((obj["metadata"]["name"], obj["spec"]["template"]["spec"]))
    return specs


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_every_pod_meets_the_restricted_pod_security_standard(variant: str) -> None:
    """The checks of Pod Security Standard "restricted", on every pod the chart makes."""
    specs = pod_specs(render(variant))
    assert specs
    for name, pod in specs:
        psc = pod.get("securityContext", {})
        assert not any(pod.get(k) for k in ("hostNetwork", "hostPID", "hostIPC")), name
        assert all("hostPath" not in v for v in pod.get("volumes", [])), name
        for c in pod["containers"] + pod.get("initContainers", []):
            sc = c.get("securityContext", {})
            where = f"{variant}: {name}/{c['name']}"
            assert sc.get("allowPrivilegeEscalation") is False, where
            assert sc.get("privileged", False) is False, where
            assert sc.get("capabilities", {}).get("drop") == ["ALL"], where
            assert not sc.get("capabilities", {}).get("add"), where
            assert (sc.get("runAsNonRoot", psc.get("runAsNonRoot"))) is True, where
            assert sc.get("runAsUser", psc.get("runAsUser", 1)) != 0, where
            seccomp = sc.get("seccompProfile", psc.get("seccompProfile", {}))
            assert seccomp.get("type") in ("RuntimeDefault", "Localhost"), where
            assert sc.get("readOnlyRootFilesystem") is True, where
            assert all("hostPort" not in p for p in c.get("ports", [])), where


def test_monitors_scrape_ports_that_exist() -> None:
    objs = render("everything")
    dep = one(objs, "Deployment")
    svc = one(objs, "Service")
    container_ports = {p["name"] for p in dep["spec"]["template"]["spec"]["containers"][0]["ports"]}
    assert {p["targetPort"] for p in svc["spec"]["ports"]} <= container_ports
    sm = one(objs, "ServiceMonitor")
    assert {e["port"] for e in sm["spec"]["endpoints"]} <= {p["name"] for p in svc["spec"]["ports"]}
    assert selector_matches(sm["spec"]["selector"]["matchLabels"], svc["metadata"]["labels"])
    assert sm["metadata"]["labels"]["release"] == "prom"
    pm = one(objs, "PodMonitor")
    # It selects the node pods the operator builds, on their metrics port.
    cluster = manifests.Cluster("demo", "team-a", "uid-1", fc_spec.parse_spec({}))
    sts = manifests.statefulset(cluster)
    node_pod = sts["spec"]["template"]
    assert selector_matches(pm["spec"]["selector"]["matchLabels"], node_pod["metadata"]["labels"])
    (port,) = [e["port"] for e in pm["spec"]["podMetricsEndpoints"]]
    assert port in {p["name"] for p in node_pod["spec"]["containers"][0]["ports"]}
    assert pm["spec"]["namespaceSelector"] == {"any": True}


def selector_matches(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return all(labels.get(k) == v for k, v in selector.items())


def test_namespaced_install_watches_only_that_namespace() -> None:
    objs = render("namespaced")
    cmd = one(objs, "Deployment")["spec"]["template"]["spec"]["containers"][0]["command"]
    assert "--namespace=team-a" in cmd and "--all-namespaces" not in cmd
    role, binding = one(objs, "Role"), one(objs, "RoleBinding")
    assert role["metadata"]["namespace"] == binding["metadata"]["namespace"] == "team-a"
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": "cf-continuum-federation",
                                    "namespace": NAMESPACE}]
    # Only reads stay cluster-wide: CRDs (kopf's discovery) and StorageClasses.
    (cluster_role,) = by_kind(objs, "ClusterRole")
    assert [r["resources"] for r in cluster_role["rules"]] == [["customresourcedefinitions"],
                                                               ["storageclasses"]]
    assert all(set(r["verbs"]) <= {"get", "list", "watch"} for r in cluster_role["rules"])
    # The replicas peer in the watched namespace, where the example cluster lives too.
    peering = one(objs, "KopfPeering")
    assert peering["metadata"]["namespace"] == "team-a"
    assert one(objs, "FederationCluster")["metadata"]["namespace"] == "team-a"


def test_image_digest_and_extra_settings_reach_the_pod() -> None:
    dep = one(render("everything"), "Deployment")
    pod = dep["spec"]["template"]["spec"]
    container = pod["containers"][0]
    assert container["image"] == "ghcr.io/continuum/federation-operator@sha256:" + "ab" * 32
    assert "--debug" in container["command"] and "--log-refkey=cr" in container["command"]
    assert {"name": "EXTRA", "value": "1"} in container["env"]
    assert pod["serviceAccountName"] == "fed-operator"
    assert pod["imagePullSecrets"] == [{"name": "regcred"}]
    assert pod["tolerations"][0]["key"] == "k"
    assert dep["spec"]["template"]["metadata"]["labels"]["team"] == "data"


def test_operator_settings_reach_the_operator_as_its_own_environment(
        monkeypatch: pytest.MonkeyPatch) -> None:
    container = one(render("everything"), "Deployment")["spec"]["template"]["spec"]["containers"][0]
    ours = {e["name"]: e["value"] for e in container["env"]
            if e["name"].startswith("CONTINUUM_OPERATOR_")}
    for name, value in ours.items():
        monkeypatch.setenv(name, value)
    fields = {f"CONTINUUM_OPERATOR_{f.upper()}" for f in OperatorSettings.model_fields}
    assert set(ours) <= fields, f"env the operator does not read: {set(ours) - fields}"
    settings = OperatorSettings()
    assert (settings.interval, settings.membership_timeout) == (2.5, 300)
    assert (settings.watch_server_timeout, settings.metrics_port) == (120, 9090)


def test_values_schema_offers_every_operator_setting() -> None:
    schema = json.loads((CHART / "values.schema.json").read_text())
    offered = set(schema["properties"]["operator"]["properties"]["settings"]["properties"])
    # api_server is for tests; metrics_port and peering_lifetime have their own values; a
    # fixed peering_priority would give every replica the same one (kopf pauses them all).
    expected = {re.sub(r"_(\w)", lambda m: m.group(1).upper(), f)
                for f in OperatorSettings.model_fields} - {
        "apiServer", "metricsPort", "peeringLifetime", "peeringPriority"}
    assert offered == expected


# ---- CRDs: the chart's copy, and how upgrades update it ---------------------------------

def test_chart_crd_copy_equals_repository_crds() -> None:
    """files/crds/ must be byte-for-byte crds/ (to fix: `cp crds/*.yaml` into it)."""
    repo = {p.name: p.read_bytes() for p in CRDS.glob("*.yaml")}
    chart = {p.name: p.read_bytes() for p in CHART_CRDS.glob("*.yaml")}
    assert sorted(chart) == sorted(repo), "chart CRD files differ from crds/"
    for name, content in repo.items():
        assert chart[name] == content, (
            f"{name} is stale: cp crds/{name} helm/continuum-federation/files/crds/")


def test_rendered_crd_is_the_repository_crd_plus_keep_policy() -> None:
    crds = {c["metadata"]["name"]: c for c in by_kind(render("default"),
                                                      "CustomResourceDefinition")}
    assert sorted(crds) == ["federationbackups.continuum.dev",
                            "federationclusters.continuum.dev"]
    for name, crd in crds.items():
        source = yaml.safe_load((CRDS / f"{name}.yaml").read_text())
        assert crd["spec"] == source["spec"]  # the YAML round trip in the template is lossless
        assert crd["metadata"]["annotations"] == {"helm.sh/resource-policy": "keep"}
        for key, value in source["metadata"].get("labels", {}).items():
            assert crd["metadata"]["labels"][key] == value


def test_crd_keep_policy_and_install_switches(tmp_path: Path) -> None:
    out = helm("template", RELEASE, str(CHART), "--set", "crds.keep=false",
               "--show-only", "templates/crds.yaml")
    assert out.returncode == 0, out.stderr
    crds = [d for d in yaml.safe_load_all(out.stdout) if d]
    assert len(crds) == 2
    for crd in crds:
        assert "helm.sh/resource-policy" not in crd["metadata"].get("annotations", {})
    assert not by_kind(render("minimal"), "CustomResourceDefinition")


# ---- values.schema.json rejects bad values ------------------------------------------------

BAD_VALUES = [
    (["--set", "image.pullPolicy=Sometimes"], "/image/pullPolicy"),
    (["--set", "watchNamespace=Team_A"], "/watchNamespace"),
    (["--set", "operator.logLevel=loud"], "/operator/logLevel"),
    (["--set", "operator.healthPort=70000"], "/operator/healthPort"),
    (["--set", "operator.metricsPort=8080"], "must differ"),
    (["--set", "image.digest=latest"], "/image/digest"),
    (["--set", "exampleCluster.replicas=0"], "/exampleCluster/replicas"),
    (["--set", "exampleCluster.storageSize=lots"], "/exampleCluster/storageSize"),
    (["--set", "exampleCluster.issuerRef.kind=Vault"], "/exampleCluster/issuerRef/kind"),
    (["--set", "metrics.serviceMonitor.interval=soon"], "/metrics/serviceMonitor/interval"),
    (["--set", "crds.install=maybe"], "/crds/install"),
    (["--set", "operator.settings.interval=0"], "/operator/settings/interval"),
    (["--set", "operator.settings.pollEvery=5"], "pollEvery"),
    (["--set", "replicaCount=2"], "replicaCount"),  # unknown keys are typos, not ignored
    (["--set", "serviceAccount.create=false"], "serviceAccount.name is required"),
]


@pytest.mark.parametrize(("args", "message"), BAD_VALUES, ids=[m for _, m in BAD_VALUES])
def test_bad_values_are_rejected_with_a_clear_message(args: list[str], message: str) -> None:
    out = helm("template", RELEASE, str(CHART), *args)
    assert out.returncode != 0, f"{args} was accepted"
    assert message in out.stderr, out.stderr


def test_lint_rejects_bad_values_too() -> None:
    out = helm("lint", "--strict", str(CHART), "--set", "image.pullPolicy=Sometimes")
    assert out.returncode != 0
    assert "pullPolicy" in out.stdout + out.stderr


# ---- NOTES and the helm test hook --------------------------------------------------------

def test_notes_tell_the_user_what_to_do_next() -> None:
    out = helm("install", RELEASE, str(CHART), "-n", NAMESPACE, "--dry-run=client")
    assert out.returncode == 0, out.stderr
    notes = out.stdout.split("NOTES:", 1)[1]
    assert "kind: FederationCluster" in notes
    assert f"kubectl -n {NAMESPACE} get fc demo" in notes
    assert "scale fc/demo --replicas=5" in notes
    assert "kubectl get fb" in notes and "FederationBackup CRDs are part of this release" in notes
    # The sample in the notes is a valid FederationCluster.
    sample = notes.split("<<'YAML'", 1)[1].split("\n     YAML\n", 1)[0]
    obj = yaml.safe_load("\n".join(line[5:] for line in sample.splitlines()[1:]))
    validate(obj | {"metadata": {"name": "demo", "namespace": NAMESPACE}})


def test_helm_test_hook_checks_the_operator_and_the_cluster() -> None:
    pod = named(render("everything"), "Pod", "cf-continuum-federation-test")
    assert pod["metadata"]["annotations"]["helm.sh/hook"] == "test"
    assert pod["spec"]["restartPolicy"] == "Never"
    (container,) = pod["spec"]["containers"]
    script = container["args"][0]
    compile(script, "helm-test", "exec")  # the embedded check is valid Python
    assert f"http://cf-continuum-federation.{NAMESPACE}.svc:8080/healthz" in script
    assert f"http://demo.{NAMESPACE}.svc:8080/readyz" in script
    assert container["securityContext"]["readOnlyRootFilesystem"] is True


class _Health(http.server.BaseHTTPRequestHandler):
    ready = True

    def do_GET(self) -> None:
        ok = self.path == "/healthz" or (self.path == "/readyz" and self.ready)
        self.send_response(200 if ok else 503)
        self.end_headers()

    def log_message(self, *args: Any) -> None:
        pass


@pytest.mark.parametrize("ready", [True, False])
def test_helm_test_script_passes_only_when_the_cluster_is_ready(ready: bool) -> None:
    """Run the hook's script for real, pointed at a local stand-in for the Services."""
    pod = named(render("everything"), "Pod", "cf-continuum-federation-test")
    script = pod["spec"]["containers"][0]["args"][0]
    handler = type("Handler", (_Health,), {"ready": ready})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        local = f"http://127.0.0.1:{server.server_address[1]}"
        script = re.sub(r"http://[a-z0-9.-]+\.svc:8080", local, script)
        script = script.replace("time.monotonic() + 120", "time.monotonic() + 1")
        run = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                             timeout=60, check=False)
    finally:
        server.shutdown()
        server.server_close()
        thread.join()
    assert run.returncode == (0 if ready else 1), run.stdout + run.stderr
    assert f"{local}/healthz 200" in run.stdout


# ---- packaging --------------------------------------------------------------------------

def test_chart_refuses_kubernetes_without_cel_on_crds() -> None:
    assert helm("template", RELEASE, str(CHART), "--kube-version", "1.29.0").returncode == 0
    out = helm("template", RELEASE, str(CHART), "--kube-version", "1.28.0")
    assert out.returncode != 0 and "kubeVersion" in out.stderr


def test_packaged_chart_carries_the_crd_and_the_dashboard(tmp_path: Path) -> None:
    out = helm("package", str(CHART), "-d", str(tmp_path))
    assert out.returncode == 0, out.stderr
    (tgz,) = tmp_path.glob("continuum-federation-0.1.0.tgz")
    with tarfile.open(tgz) as tar:
        names = set(tar.getnames())
    assert "continuum-federation/files/dashboards/continuum-federation.json" in names
    for crd in CRDS.glob("*.yaml"):
        assert f"continuum-federation/files/crds/{crd.name}" in names
    app_version = yaml.safe_load((CHART / "Chart.yaml").read_text())["appVersion"]
    with open(ROOT / "pyproject.toml", "rb") as f:
        assert app_version == tomllib.load(f)["project"]["version"]


def test_helm_test_round_trip_uses_the_operator_client_identity() -> None:
    pod = named(render("everything"), "Pod", "cf-continuum-federation-test-cluster")
    assert pod["metadata"]["annotations"]["helm.sh/hook"] == "test"
    assert pod["metadata"]["labels"]["app.kubernetes.io/component"] == "test"
    (container,) = pod["spec"]["containers"]
    assert container["image"] == "ghcr.io/continuum/federation-node:0.1.0"
    env = {e["name"]: e["value"] for e in container["env"]}
    assert env["API"] == f"https://demo.{NAMESPACE}.svc:7000"
    secret = next(v["secret"] for v in pod["spec"]["volumes"] if v["name"] == "client-tls")
    cluster = manifests.Cluster("demo", NAMESPACE, "uid-1", fc_spec.parse_spec({}))
    assert secret["secretName"] == cluster.client_secret  # the Secret the operator writes
    script = container["args"][0]
    for step in ("cf status --json", 'cf put "$CONCEPT"', 'cf get "$CONCEPT"',
                 'cf delete "$CONCEPT"'):
        assert step in script
    out = helm("template", RELEASE, str(CHART), "--set", "tests.clusterName=demo",
               "--set", "tests.clusterNamespace=team-a")
    docs = [d for d in yaml.load_all(out.stdout, Loader=StrictLoader) if d]
    pod = named(tuple(docs), "Pod", "cf-continuum-federation-test-cluster")
    assert pod["metadata"]["namespace"] == "team-a"  # next to the Secret it mounts


# ---- watchNamespace: user-facing objects go where the operator looks -----------------------

def test_example_cluster_issuer_and_notes_follow_the_watched_namespace(tmp_path: Path) -> None:
    values = {"watchNamespace": "team-a", "certManager": {"createCAIssuer": True},
              "exampleCluster": {"enabled": True, "issuerRef": {
                  "name": "cf-continuum-federation-ca"}}}
    out = helm("install", RELEASE, str(CHART), "-n", NAMESPACE, "--dry-run=client",
               *values_args(tmp_path, values))
    assert out.returncode == 0, out.stderr
    manifest, notes = out.stdout.split("NOTES:", 1)
    # Hooks (the example cluster) come first, then the release's manifest.
    body = manifest.split("HOOKS:", 1)[1].replace("MANIFEST:", "---")
    objs = [d for d in yaml.safe_load_all(body) if d]
    issuers = [o for o in objs if o["kind"] == "Issuer"]
    example = next(o for o in objs if o["kind"] == fc_spec.KIND)
    assert issuers and {o["metadata"]["namespace"] for o in issuers} == {"team-a"}
    assert example["metadata"]["namespace"] == "team-a"
    # The example's issuerRef names an Issuer that exists in its namespace.
    ref = example["spec"]["tls"]["issuerRef"]
    assert (ref["kind"], ref["name"]) in {(o["kind"], o["metadata"]["name"]) for o in issuers}
    assert "created in team-a" in notes and f"kubectl -n {NAMESPACE} get fc" not in notes


def test_notes_point_new_clusters_at_the_watched_namespace() -> None:
    out = helm("install", RELEASE, str(CHART), "-n", NAMESPACE, "--dry-run=client",
               "--set", "watchNamespace=team-a", "--set", "certManager.createCAIssuer=true")
    assert out.returncode == 0, out.stderr
    notes = out.stdout.split("NOTES:", 1)[1]
    assert "kubectl apply -n team-a" in notes and "cf-continuum-federation-ca" in notes


# ---- alerts --------------------------------------------------------------------------------

def exported_metric_names() -> set[str]:
    """What is really exported: the node's fixed gauge names (string literals in its source
    that docs/metrics.md documents too) and the operator's registry."""
    import ast

    from prometheus_client import REGISTRY

    import continuum_operator.metrics  # noqa: F401  (registers the operator's metrics)

    documented = set(re.findall(r"`(continuum_[a-z_]+)", (ROOT / "docs" / "metrics.md")
                                .read_text()))
    source = ROOT / "node_image" / "continuum" / "federation" / "distributed"
    literals = {n.value for path in source.rglob("*.py")
                for n in ast.walk(ast.parse(path.read_text()))
                if isinstance(n, ast.Constant) and isinstance(n.value, str)
                and re.fullmatch(r"continuum_[a-z_]+", n.value)}
    names = documented & literals
    assert "continuum_raft_is_leader" in names
    for family in REGISTRY.collect():
        if family.name.startswith("continuum_operator"):  # labelled ones may have no sample
            names.add(family.name + ("_total" if family.type == "counter" else ""))
    return names


def test_alerts_cover_the_failures_and_use_metrics_that_exist() -> None:
    rule = one(render("everything"), "PrometheusRule")
    assert rule["metadata"]["labels"]["release"] == "prom"
    rules = [r for g in rule["spec"]["groups"] for r in g["rules"]]
    alerts = {r["alert"]: r for r in rules if "alert" in r}
    assert {"ContinuumFederationNoLeader", "ContinuumFederationQuorumAtRisk",
            "ContinuumFederationQuorumLost", "ContinuumFederationMemberLagging",
            "ContinuumFederationCertificateExpiring", "ContinuumOperatorApplyErrors"} == set(alerts)
    recorded = {r["record"] for r in rules if "record" in r}
    exported = exported_metric_names()
    functions = {"max", "min", "sum", "count", "by", "on", "and", "floor", "label_replace",
                 "group_left", "group_right", "increase", "rate"}
    for r in rules:
        expr = r["expr"]
        assert expr.count("(") == expr.count(")"), expr
        for name in re.findall(r"\b[a-z_][a-z0-9_:]*\b(?=\s*[{(\[\s)]|$)", expr):
            if name in functions or not name.startswith("continuum"):
                continue
            assert name in recorded or name in exported, f"{name} is not exported ({expr})"
    for name, alert in alerts.items():
        assert alert["labels"]["severity"] in ("warning", "critical"), name
        assert alert["annotations"]["summary"] and alert["annotations"]["description"], name
        assert re.fullmatch(r"[0-9]+[smh]", alert["for"]), name
    assert "> 500" in alerts["ContinuumFederationMemberLagging"]["expr"]
    assert "< 7 * 86400" in alerts["ContinuumFederationCertificateExpiring"]["expr"]


def test_the_alert_check_catches_a_metric_nobody_exports() -> None:
    assert "continuum_raft_leader_changes" not in exported_metric_names()
    assert "continuum_operator_reconcile_errors_total" in exported_metric_names()


# ---- chart metadata and README ----------------------------------------------------------------

def test_chart_metadata_points_home_and_ships_its_icon() -> None:
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    assert chart["home"].startswith("https://") and chart["sources"]
    assert chart["icon"].endswith("helm/continuum-federation/icon.svg")
    assert (CHART / "icon.svg").read_text().startswith("<svg")


def test_readme_documents_every_top_level_value() -> None:
    readme = (CHART / "README.md").read_text()
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    missing = [k for k in values if f"`{k}" not in readme]
    assert not missing, f"README.md does not document: {missing}"
    for topic in ("watchNamespace", "replicas", "prometheusRule", "--skip-crds"):
        assert topic in readme, topic
