"""The Grafana dashboard the chart ships: loadable by the sidecar, and reading exactly the
metric names the node exports (a renamed metric would leave a panel silently empty)."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "helm" / "continuum-federation"
HELM = ROOT / "bin" / "helm"
DASHBOARD = CHART / "files" / "dashboards" / "continuum-federation.json"

# The named gauges the node exports for dashboards (node.py, `_named_metrics`), each with a
# `node` label (the node id, which is the pod name in Kubernetes).
NODE_SOURCES = ROOT / "node_image" / "continuum" / "federation" / "distributed"
DASHBOARD_METRICS = {
    "continuum_raft_term", "continuum_raft_commit_index", "continuum_raft_applied_index",
    "continuum_raft_is_leader", "continuum_node_ready", "continuum_member_healthy",
    "continuum_replication_lag_seconds", "continuum_replication_keys",
    "continuum_certificate_expiry_seconds",
}


def exported_metrics() -> set[str]:
    """Metric names the node code declares as string literals."""
    names: set[str] = set()
    for path in NODE_SOURCES.rglob("*.py"):
        names |= set(re.findall(r"[\"'](continuum_[a-z_]+)[\"']", path.read_text()))
    return names


def panels() -> list[dict[str, Any]]:
    dash = json.loads(DASHBOARD.read_text())
    result: list[dict[str, Any]] = dash["panels"]
    return result


def test_dashboard_is_valid_json_with_a_stable_uid_and_variables() -> None:
    dash = json.loads(DASHBOARD.read_text())
    assert dash["uid"] == "continuum-federation"
    names = [v["name"] for v in dash["templating"]["list"]]
    assert names == ["datasource", "namespace", "cluster"]
    ids = [p["id"] for p in dash["panels"]]
    assert len(ids) == len(set(ids))


def test_every_panel_queries_known_node_metrics_and_all_are_shown() -> None:
    used: set[str] = set()
    for panel in panels():
        assert panel["targets"], panel["title"]
        for target in panel["targets"]:
            names = set(re.findall(r"\bcontinuum_[a-z_]+\b", target["expr"]))
            assert names, f"{panel['title']}: no continuum_ metric in {target['expr']}"
            assert names <= DASHBOARD_METRICS, f"{panel['title']}: {names - DASHBOARD_METRICS}"
            # Every query is scoped to the chosen cluster's nodes.
            assert 'node=~"$cluster-[0-9]+"' in target["expr"], target["expr"]
            used |= names
    assert used == DASHBOARD_METRICS


def test_the_node_exports_every_metric_the_dashboard_reads() -> None:
    missing = DASHBOARD_METRICS - exported_metrics()
    assert not missing, f"the node does not export {sorted(missing)}: panels would be empty"


@pytest.mark.parametrize("topic", ["Leader", "Term", "Commit rate", "health", "lag", "ready"])
def test_the_issue_s_panels_exist(topic: str) -> None:
    assert any(topic.lower() in p["title"].lower() for p in panels()), topic


@pytest.mark.skipif(not HELM.exists(), reason=f"{HELM} missing: run scripts/install-helm.sh")
def test_chart_ships_the_dashboard_in_a_sidecar_configmap() -> None:
    out = subprocess.run(
        [str(HELM), "template", "cf", str(CHART), "--show-only",
         "templates/grafana-dashboard.yaml", "--set", "grafanaDashboard.namespace=monitoring"],
        capture_output=True, text=True, timeout=120, check=False)
    assert out.returncode == 0, out.stderr
    cm = yaml.safe_load(out.stdout)
    assert cm["kind"] == "ConfigMap"
    assert cm["metadata"]["namespace"] == "monitoring"
    assert cm["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert json.loads(cm["data"]["continuum-federation.json"]) == json.loads(DASHBOARD.read_text())
