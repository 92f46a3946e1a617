"""Prometheus metrics of the operator (served by ``__main__`` on --metrics-port)."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

RECONCILES = Counter("continuum_operator_reconciles_total",
                     "Reconcile cycles, by result.", ["result"])
RECONCILE_SECONDS = Histogram("continuum_operator_reconcile_seconds",
                              "Duration of one reconcile cycle.",
                              buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30))
RECONCILE_ERRORS = Counter("continuum_operator_reconcile_errors_total",
                           "Reconcile cycles of a cluster that failed (e.g. a refused write).",
                           ["namespace", "name"])
ACTIONS = Counter("continuum_operator_actions_total",
                  "Steps executed against a cluster, by kind.", ["action"])
API_WRITES = Counter("continuum_operator_api_writes_total",
                     "Kubernetes API writes, by verb.", ["verb"])
NODE_ERRORS = Counter("continuum_operator_node_errors_total",
                      "Failed node API calls, by error code.", ["code"])
BLOCKED = Counter("continuum_operator_scale_blocked_total",
                  "Scale-downs refused because they would lose quorum.")
QUORUM = Gauge("continuum_operator_cluster_quorum",
               "1 when the cluster has a healthy quorum, else 0.", ["namespace", "name"])
MEMBERS = Gauge("continuum_operator_cluster_members", "Raft members seen by the leader.",
                ["namespace", "name"])
READY = Gauge("continuum_operator_cluster_ready_replicas", "Ready pods.", ["namespace", "name"])
