"""The node writes the Prometheus text format itself: what it writes parses, and says
what was observed."""

from __future__ import annotations

from prometheus_client.parser import text_string_to_metric_families

from continuum.federation.distributed import metrics


def test_histograms_and_gauges_parse_and_count_what_was_observed() -> None:
    m = metrics.NodeMetrics(
        lambda: {"raft": {"commit_index": 7, "role": "leader", "running": True},
                 "coordinator": {"nodes_by_status": {"healthy": 2, 'odd"one\\': 1}}},
        lambda: [("continuum_raft_commit_index", "Raft commit index", {"node": "n1"}, 7.0)])
    for seconds in (0.0004, 0.003, 0.003, 7.0):
        m.observe_request("put", 200, seconds)
    m.observe_request("get", 404, 0.001)
    m.observe_write("strong", 0.02)
    families = {f.name: f for f in text_string_to_metric_families(m.render().decode())}
    samples = {(s.name, tuple(sorted(s.labels.items()))): s.value
               for f in families.values() for s in f.samples}
    put = (("code", "2xx"), ("route", "put"))
    assert samples[("continuum_api_request_seconds_bucket", (*put[:1], ("le", "0.0005"),
                                                             put[1]))] == 1
    assert samples[("continuum_api_request_seconds_bucket", (*put[:1], ("le", "0.005"),
                                                             put[1]))] == 3
    assert samples[("continuum_api_request_seconds_bucket", (*put[:1], ("le", "+Inf"),
                                                             put[1]))] == 4
    assert samples[("continuum_api_request_seconds_count", put)] == 4
    assert abs(samples[("continuum_api_request_seconds_sum", put)] - 7.0064) < 1e-9
    assert samples[("continuum_write_seconds_count", (("consistency", "strong"),))] == 1
    assert families["continuum_raft_commit_index"].type == "gauge"
    # the named gauge wins over the component's figure of the same name
    assert samples[("continuum_raft_commit_index", (("node", "n1"),))] == 7
    assert ("continuum_raft_commit_index", ()) not in samples
    assert samples[("continuum_raft_running", ())] == 1
    assert samples[("continuum_coordinator_nodes_by_status", (("key", 'odd"one\\'),))] == 1
    assert "continuum_raft_role" not in families  # not a number
