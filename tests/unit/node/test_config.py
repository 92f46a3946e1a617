from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from continuum.federation.distributed import config


def test_environment_and_yaml_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = tmp_path / "node.yaml"
    cfg.write_text("raft:\n  heartbeat_interval_ms: 40\nmesh:\n  fanout: 2\n"
                   "cluster_name: from-file\n")
    monkeypatch.setenv("CONTINUUM_CONFIG_FILE", str(cfg))
    monkeypatch.setenv("CONTINUUM_NODE_ID", "demo-0")
    monkeypatch.setenv("CONTINUUM_CLUSTER_NAME", "from-env")
    monkeypatch.setenv("CONTINUUM_BOOTSTRAP", "a:1, b:2")
    monkeypatch.setenv("CONTINUUM_INITIAL_MEMBERS", '{"demo-0": "127.0.0.1:7000"}')
    s = config.NodeSettings()
    assert s.node_id == "demo-0"
    assert s.cluster_name == "from-env"  # env beats file
    assert s.raft.heartbeat_interval_ms == 40
    assert s.mesh.fanout == 2
    assert s.bootstrap == ["a:1", "b:2"]
    assert s.initial_members == {"demo-0": "127.0.0.1:7000"}
    # explicit arguments beat everything
    assert config.NodeSettings(cluster_name="flag").cluster_name == "flag"


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"node_id": ""}, "node_id"),
        ({"node_id": "a b"}, "node_id"),
        ({"node_id": "n", "bind_address": "nohost"}, "host:port"),
        ({"node_id": "n", "raft": {"election_timeout_ms": (300, 150)}}, "election_timeout_ms"),
        ({"node_id": "n", "raft": {"heartbeat_interval_ms": 600}}, "half the election timeout"),
        ({"node_id": "n", "load_balance": {"algorithm": "fastest"}}, "algorithm"),
        ({"node_id": "n", "typo_field": 1}, "typo_field"),
        ({"node_id": "n", "replication": {"tombstone_grace_seconds": -1}},
         "tombstone_grace_seconds"),
        ({"node_id": "n", "bootstrap_expect": 0}, "bootstrap_expect"),
        # Hints without ordinals and without an expected size could found two clusters.
        ({"node_id": "n", "bootstrap": ["a:1"]}, "bootstrap_expect is required"),
        ({"node_id": "n", "mdns": True}, "bootstrap_expect is required"),
        ({"node_id": "node-a", "discovery_srv": "_p._tcp.svc"}, "bootstrap_expect is required"),
        ({"node_id": "demo-1", "bootstrap": ["demo-0:7000"]}, "bootstrap_expect is required"),
    ],
)
def test_bad_settings_name_the_field(kwargs: dict[str, object], message: str,
                                     monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CONTINUUM_CONFIG_FILE", raising=False)
    with pytest.raises(ValidationError, match=message):
        config.NodeSettings(**kwargs)  # type: ignore[arg-type]


def test_bad_yaml_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = tmp_path / "node.yaml"
    cfg.write_text("- not\n- a mapping\n")
    monkeypatch.setenv("CONTINUUM_CONFIG_FILE", str(cfg))
    with pytest.raises(ValueError, match="mapping"):
        config.NodeSettings(node_id="n")


@pytest.mark.parametrize(("kwargs", "mode", "expect"), [
    ({"node_id": "n"}, "lowest_id", None),  # no hints: a lone node founds its own cluster
    ({"node_id": "n", "bootstrap": ["a:1"], "bootstrap_expect": 3}, "lowest_id", 3),
    ({"node_id": "n", "mdns": True, "bootstrap_expect": 1}, "lowest_id", 1),  # chosen: alone
    ({"node_id": "n", "bootstrap": ["a:1"], "initial_members": {"n": "127.0.0.1:1"}},
     "lowest_id", None),  # a static member list never runs the formation rule
    ({"node_id": "demo-1", "discovery_srv": "_p._tcp.svc", "bootstrap": ["demo-0:7000"]},
     "ordinal", None),  # StatefulSet pods: only demo-0 can found
])
def test_formation_settings(kwargs: dict[str, object], mode: str, expect: int | None,
                            monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CONTINUUM_CONFIG_FILE", raising=False)
    s = config.NodeSettings(**kwargs)  # type: ignore[arg-type]
    assert s.formation_mode == mode and s.bootstrap_expect == expect


def test_secure_defaults() -> None:
    """The health port (metrics say much about the cluster) binds loopback unless told
    otherwise; a shared wildcard certificate is not accepted unless opted in; node ids
    are matched whole (no trailing newline)."""
    s = config.NodeSettings(node_id="n1")
    assert s.health_address == "127.0.0.1:8080"
    assert s.wildcard_certificates is False
    assert s.liveness_leaderless_seconds > 0 and s.http_read_timeout_seconds > 0
    with pytest.raises(ValidationError):
        config.NodeSettings(node_id="n1\n")


def test_the_environment_is_read_as_the_documented_rules_say(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CONTINUUM_CONFIG_FILE", raising=False)
    monkeypatch.setenv("continuum_node_id", "n1")  # names match without regard to case
    monkeypatch.setenv("CONTINUUM_RAFT", '{"heartbeat_interval_ms": 60}')
    monkeypatch.setenv("CONTINUUM_RAFT__ELECTION_TIMEOUT_MS", "[400, 800]")
    monkeypatch.setenv("CONTINUUM_LOAD_BALANCE__ALGORITHM", "latency")
    monkeypatch.setenv("CONTINUUM_DNS_NAMESERVERS", "10.0.0.1:53,10.0.0.2:53")
    monkeypatch.setenv("CONTINUUM_FSYNC", "false")
    monkeypatch.setenv("CONTINUUM_LOG_LEVEL", "DEBUG")  # not a setting: left alone
    s = config.NodeSettings()
    assert s.node_id == "n1" and s.raft.heartbeat_interval_ms == 60
    assert s.raft.election_timeout_ms == (400, 800)
    assert s.load_balance.algorithm == "latency" and s.fsync is False
    assert s.dns_nameservers == ["10.0.0.1:53", "10.0.0.2:53"]


@pytest.mark.parametrize(("name", "value", "message"), [
    ("CONTINUUM_INITIAL_MEMBERS", "{not json", "CONTINUUM_INITIAL_MEMBERS must be JSON"),
    ("CONTINUUM_RAFT__BOGUS", "1", "bogus"),
    ("CONTINUUM_MESH__FANOUT", "zero", "fanout"),
])
def test_a_bad_variable_is_named(name: str, value: str, message: str,
                                 monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CONTINUUM_CONFIG_FILE", raising=False)
    monkeypatch.setenv(name, value)
    with pytest.raises(ValueError, match=message):
        config.NodeSettings(node_id="n")
