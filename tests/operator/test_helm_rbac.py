"""The chart's RBAC grants exactly what the operator says it uses, in both install modes.

The operator lists the resources and verbs it uses in the docstring of
``continuum_operator/__init__.py``; the chart must cover every one (or the operator fails
with 403 in a real cluster) and grant nothing more (least privilege).
"""

from __future__ import annotations

import re
import subprocess
from collections import defaultdict
from pathlib import Path
from typing import Any

import pytest
import yaml

import continuum_operator

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "helm" / "continuum-federation"
HELM = ROOT / "bin" / "helm"

pytestmark = pytest.mark.skipif(
    not HELM.exists(), reason=f"{HELM} missing: run scripts/install-helm.sh (CI does)")

Grants = dict[tuple[str, str], set[str]]
CLUSTER_SCOPED = {("apiextensions.k8s.io", "customresourcedefinitions"), ("", "namespaces"),
                  ("storage.k8s.io", "storageclasses"), ("kopf.dev", "clusterkopfpeerings")}


def operator_needs() -> Grants:
    """Parse '- <group> <resource>[, [<group>] <resource>]: verb, verb (note)' lines."""
    doc = continuum_operator.__doc__ or ""
    section = doc.split("Kubernetes API resources and verbs the operator uses", 1)[1]
    section = section.split("\n\n", 1)[0]
    entries: list[str] = []
    for line in section.splitlines()[1:]:
        if line.startswith("- "):
            entries.append(line[2:])
        elif entries and line.startswith(" "):
            entries[-1] += " " + line.strip()  # a wrapped note
    needs: Grants = defaultdict(set)
    for entry in entries:
        targets, _, rest = entry.partition(":")
        verbs = re.split(r"\s*,\s*", rest.split("(", 1)[0].strip())
        if verbs == ["none by default"] or verbs == ["none"]:
            continue
        group = ""
        for item in re.split(r"\s*,\s*", targets.strip()):
            if " " in item:
                group, resource = item.split()
                group = "" if group == "core" else group
            else:
                resource = item
            needs[(group, resource)] |= set(verbs)
    assert needs, "no RBAC list found in the continuum_operator docstring"
    return dict(needs)


def rendered_rules(*set_args: str) -> tuple[Grants, list[dict[str, Any]]]:
    out = subprocess.run(
        [str(HELM), "template", "cf", str(CHART), "-n", "ops", *set_args],
        capture_output=True, text=True, timeout=120, check=False)
    assert out.returncode == 0, out.stderr
    roles = [d for d in yaml.safe_load_all(out.stdout)
             if d and d["kind"] in ("Role", "ClusterRole")]
    grants: Grants = defaultdict(set)
    for role in roles:
        for rule in role["rules"]:
            for group in rule["apiGroups"]:
                for resource in rule["resources"]:
                    grants[(group, resource)] |= set(rule["verbs"])
    return dict(grants), roles


def test_the_operator_docstring_list_parses_into_real_grants() -> None:
    needs = operator_needs()
    assert needs[("continuum.dev", "federationclusters")] >= {"get", "list", "watch", "patch"}
    assert needs[("", "pods")] >= {"delete"}
    assert ("", "persistentvolumeclaims") in needs


def test_cluster_wide_install_grants_exactly_what_the_operator_uses() -> None:
    needs = operator_needs()
    grants, roles = rendered_rules()
    missing = {k: sorted(v - grants.get(k, set())) for k, v in needs.items()
               if v - grants.get(k, set())}
    extra = {k: sorted(v - needs.get(k, set())) for k, v in grants.items()
             if v - needs.get(k, set())}
    assert not missing, f"the chart does not grant: {missing}"
    assert not extra, f"the chart grants more than the operator uses: {extra}"
    assert {r["kind"] for r in roles} == {"ClusterRole"}


def test_namespaced_install_uses_a_role_and_keeps_only_crd_reads_cluster_wide() -> None:
    needs = operator_needs()
    grants, roles = rendered_rules("--set", "watchNamespace=team-a")
    namespaced = {k: v for k, v in needs.items() if k not in CLUSTER_SCOPED}
    (role,) = [r for r in roles if r["kind"] == "Role"]
    assert role["metadata"]["namespace"] == "team-a"
    role_grants: Grants = defaultdict(set)
    for rule in role["rules"]:
        for group in rule["apiGroups"]:
            for resource in rule["resources"]:
                role_grants[(group, resource)] |= set(rule["verbs"])
    assert dict(role_grants) == namespaced  # its peering is a KopfPeering in team-a
    cluster = {k: v for k, v in grants.items() if k in CLUSTER_SCOPED}
    assert cluster == {("apiextensions.k8s.io", "customresourcedefinitions"): {"list", "watch"},
                       ("storage.k8s.io", "storageclasses"): {"get"}}


def test_owner_references_with_block_owner_deletion_are_allowed() -> None:
    """Children carry blockOwnerDeletion: where owner-reference permissions are enforced
    (OpenShift), that needs `update` on the owner's finalizers subresource."""
    from builders import cluster

    from continuum_operator import manifests

    c = cluster(tls={"mode": "CertManager", "issuerRef": {"name": "ca"}})
    owners = {(ref["apiVersion"].split("/")[0], ref["kind"])
              for obj in manifests.children(c, 3) for ref in obj["metadata"]["ownerReferences"]
              if ref.get("blockOwnerDeletion")}
    assert owners == {("continuum.dev", "FederationCluster")}
    for args in ((), ("--set", "watchNamespace=team-a")):
        grants, _ = rendered_rules(*args)
        assert "update" in grants[("continuum.dev", "federationclusters/finalizers")], args


def test_no_wildcards_and_no_escalation_verbs() -> None:
    for args in ((), ("--set", "watchNamespace=team-a")):
        _, roles = rendered_rules(*args)
        for role in roles:
            for rule in role["rules"]:
                for field in ("apiGroups", "resources", "verbs"):
                    assert "*" not in rule[field], (role["metadata"]["name"], rule)
                assert not {"escalate", "bind", "impersonate"} & set(rule["verbs"])
                assert "rbac.authorization.k8s.io" not in rule["apiGroups"]


def test_rbac_can_be_left_to_the_cluster_admin() -> None:
    grants, roles = rendered_rules("--set", "rbac.create=false")
    assert not roles and not grants
