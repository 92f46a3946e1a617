"""The operator's spec, the CRD and the node's settings model accept the same tunables.

Forward: every value the spec allows (each enum value, each bound) is rendered through the
real manifests (env vars and the ConfigMap file) and loaded into ``NodeSettings``, as a pod
would. Reverse: every value the spec refuses is one the node refuses too, or a limit the
operator sets on purpose (the table says which, and checks that the node does accept it).
Both directions also run through the generated CRD (its OpenAPI bounds and CEL rules), so
the API server admits exactly what the operator accepts.
"""

from __future__ import annotations

import re
import typing
from pathlib import Path
from typing import Any

import celpy
import jsonschema
import pydantic
import pytest
import yaml
from builders import cluster

from continuum.federation.distributed import config
from continuum_operator import crd, manifests
from continuum_operator import spec as api

SECTIONS: dict[str, type[api._Model]] = {
    "consensus": api.Consensus, "mesh": api.Mesh, "loadBalance": api.LoadBalance,
    "replication": api.Replication,
}
ENUMS = [("loadBalance", "algorithm", config.BalanceAlgorithm),
         ("replication", "conflictStrategy", config.ConflictStrategy)]


def _enum_rows() -> list[tuple[str, dict[str, Any]]]:
    return [(section, {field: value}) for section, field, literal in ENUMS
            for value in typing.get_args(literal)]


ACCEPTED: list[tuple[str, dict[str, Any]]] = [
    ("consensus", {}),
    *_enum_rows(),
    # the smallest timings: heartbeat exactly half of the minimum, maximum one above it
    ("consensus", {"electionTimeoutMinMs": 10, "electionTimeoutMaxMs": 11,
                   "heartbeatIntervalMs": 5}),
    ("consensus", {"electionTimeoutMinMs": 100, "electionTimeoutMaxMs": 101,
                   "heartbeatIntervalMs": 50}),
    ("consensus", {"heartbeatIntervalMs": 1}),
    ("consensus", {"maxInflightAppends": 1}),
    ("consensus", {"maxInflightAppends": 64}),
    # the largest timings
    ("consensus", {"electionTimeoutMinMs": 60000, "electionTimeoutMaxMs": 120000,
                   "heartbeatIntervalMs": 30000}),
    ("mesh", {"fanout": 1, "gossipIntervalMs": 10, "syncIntervalSeconds": 0.001}),
    ("mesh", {"fanout": 32, "gossipIntervalMs": 60000, "syncIntervalSeconds": 3600}),
    ("loadBalance", {"healthCheckIntervalSeconds": 0.001, "unhealthyThreshold": 1}),
    ("loadBalance", {"healthCheckIntervalSeconds": 3600, "unhealthyThreshold": 100}),
]

NODE = "the node refuses it too"
# (section, values, why the operator refuses it: NODE, or the operator's own limit)
REJECTED: list[tuple[str, dict[str, Any], str]] = [
    ("replication", {"conflictStrategy": "highest_node"}, NODE),
    ("replication", {"conflictStrategy": "first_write_wins"}, NODE),
    ("loadBalance", {"algorithm": "fastest"}, NODE),
    ("consensus", {"electionTimeoutMinMs": 100, "heartbeatIntervalMs": 51}, NODE),
    ("consensus", {"electionTimeoutMinMs": 200, "electionTimeoutMaxMs": 200}, NODE),
    ("consensus", {"electionTimeoutMinMs": 300, "electionTimeoutMaxMs": 200}, NODE),
    ("consensus", {"electionTimeoutMinMs": 10, "electionTimeoutMaxMs": 10,
                   "heartbeatIntervalMs": 5}, NODE),
    ("consensus", {"heartbeatIntervalMs": 0}, NODE),
    ("consensus", {"maxInflightAppends": 0}, NODE),
    ("consensus", {"electionTimeoutMinMs": 60000, "electionTimeoutMaxMs": 120000,
                   "heartbeatIntervalMs": 30001}, NODE),
    ("mesh", {"fanout": 0}, NODE),
    ("mesh", {"gossipIntervalMs": 0}, NODE),
    ("mesh", {"syncIntervalSeconds": 0}, NODE),
    ("loadBalance", {"healthCheckIntervalSeconds": 0}, NODE),
    ("loadBalance", {"unhealthyThreshold": 0}, NODE),
    # Operator limits: timings below 10 ms cannot be met by a pod's event loop and
    # scheduler, and ones above a minute (two for the maximum) only hide a mistake.
    ("consensus", {"electionTimeoutMinMs": 9, "heartbeatIntervalMs": 4},
     "operator limit: elections faster than 10 ms"),
    ("consensus", {"electionTimeoutMinMs": 60001, "electionTimeoutMaxMs": 120000},
     "operator limit: election timeout above a minute"),
    ("consensus", {"electionTimeoutMaxMs": 120001},
     "operator limit: election timeout above two minutes"),
    # A gossip round per node under 10 ms floods the mesh; the other ceilings are an hour.
    ("mesh", {"gossipIntervalMs": 9}, "operator limit: gossip faster than 10 ms"),
    ("mesh", {"gossipIntervalMs": 60001}, "operator limit: gossip slower than a minute"),
    ("mesh", {"fanout": 33}, "operator limit: fanout above 32 (no cluster needs it)"),
    ("mesh", {"syncIntervalSeconds": 3601}, "operator limit: anti-entropy over an hour"),
    ("loadBalance", {"healthCheckIntervalSeconds": 3601},
     "operator limit: health checks over an hour apart"),
    ("loadBalance", {"unhealthyThreshold": 101}, "operator limit: threshold above 100"),
    ("consensus", {"maxInflightAppends": 65},
     "operator limit: more than 64 appends in flight (the Raft core's own default window)"),
]


# ---- loading settings the way a pod does ------------------------------------------------------

def _load_as_pod(c: manifests.Cluster, tmp_path: Path,
                 monkeypatch: pytest.MonkeyPatch) -> tuple[config.NodeSettings, dict[str, Any]]:
    """The StatefulSet's env vars and the ConfigMap's file, into NodeSettings for pod 2."""
    (key, text), = manifests.config_map(c)["data"].items()
    cfg = tmp_path / key
    cfg.write_text(text)
    container = manifests.statefulset(c)["spec"]["template"]["spec"]["containers"][0]
    for var in container["env"]:
        if "value" not in var:
            continue  # downward API values (POD_NAME) are substituted below
        value = re.sub(r"\$\(POD_NAME\)", c.pod(2), var["value"])
        if var["name"] == "CONTINUUM_CONFIG_FILE":
            value = str(cfg)
        monkeypatch.setenv(var["name"], value)
    return config.NodeSettings(), yaml.safe_load(text)


def _unchecked(section: str, values: dict[str, Any]) -> manifests.Cluster:
    """A Cluster whose spec holds ``values`` without the operator's validation."""
    model = SECTIONS[section]
    by_alias = {f.alias: name for name, f in model.model_fields.items()}
    fields = {**model().model_dump(), **{by_alias[k]: v for k, v in values.items()}}
    sp = api.FederationClusterSpec().model_copy(
        update={_snake(section): model.model_construct(**fields)})
    return manifests.Cluster(name="demo", namespace="prod", uid="uid-demo", spec=sp)


def _snake(camel: str) -> str:
    return re.sub(r"([A-Z])", lambda m: "_" + m.group(1).lower(), camel)


def _node_accepts(c: manifests.Cluster) -> bool:
    try:
        config.NodeSettings(node_id="demo-2", **manifests.node_settings(c))
    except pydantic.ValidationError:
        return False
    return True


# ---- the CRD as the API server applies it -----------------------------------------------------

def _crd_section(section: str) -> dict[str, Any]:
    schema = crd.build()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    node: dict[str, Any] = schema["properties"]["spec"]["properties"][section]
    return node


def _crd_accepts(section: str, values: dict[str, Any]) -> bool:
    """OpenAPI bounds and enums (draft 4 semantics, as in the CRD) and the CEL rules."""
    schema = _crd_section(section)
    defaults = {k: p["default"] for k, p in schema["properties"].items() if "default" in p}
    obj = {**defaults, **values}  # the API server applies defaults before validating
    if not jsonschema.Draft4Validator(schema).is_valid(obj):
        return False
    env = celpy.Environment()
    for rule in schema.get("x-kubernetes-validations", []):
        program = env.program(env.compile(rule["rule"]))
        if not program.evaluate({"self": celpy.json_to_cel(obj)}):
            return False
    return True


# ---- forward ----------------------------------------------------------------------------------

def test_spec_enums_are_the_node_value_names() -> None:
    for section, field, literal in ENUMS:
        assert _crd_section(section)["properties"][field]["enum"] == list(
            typing.get_args(literal)), (section, field)


@pytest.mark.parametrize(("section", "values"), ACCEPTED)
def test_every_allowed_value_loads_in_the_node(section: str, values: dict[str, Any],
                                               tmp_path: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    c = cluster(replicas=5, **{section: values})
    assert _crd_accepts(section, values)
    settings, rendered = _load_as_pod(c, tmp_path, monkeypatch)
    pod = c.pod(2)
    assert settings.node_id == pod
    assert settings.peer_domain and settings.peer_address.startswith(f"{pod}.")
    assert settings.discovery_srv == f"_peer._tcp.{settings.peer_domain}"
    s = c.spec
    assert settings.raft.election_timeout_ms == (s.consensus.election_timeout_min_ms,
                                                 s.consensus.election_timeout_max_ms)
    assert settings.raft.heartbeat_interval_ms == s.consensus.heartbeat_interval_ms
    assert (settings.mesh.fanout, settings.mesh.gossip_interval_ms,
            settings.mesh.sync_interval_seconds) == (
        s.mesh.fanout, s.mesh.gossip_interval_ms, s.mesh.sync_interval_seconds)
    assert (settings.load_balance.algorithm, settings.load_balance.health_check_interval,
            settings.load_balance.unhealthy_threshold) == (
        s.load_balance.algorithm, s.load_balance.health_check_interval_seconds,
        s.load_balance.unhealthy_threshold)
    assert settings.replication.conflict_strategy == s.replication.conflict_strategy
    assert rendered == manifests.node_settings(c)


# ---- reverse ----------------------------------------------------------------------------------

@pytest.mark.parametrize(("section", "values", "why"), REJECTED)
def test_every_refused_value_is_refused_by_the_node_or_an_operator_limit(
        section: str, values: dict[str, Any], why: str) -> None:
    with pytest.raises(pydantic.ValidationError):
        cluster(**{section: values})
    assert not _crd_accepts(section, values), "the API server would admit it"
    if why == NODE:
        assert not _node_accepts(_unchecked(section, values))
    else:
        assert why.startswith("operator limit: ")
        assert _node_accepts(_unchecked(section, values)), "not only an operator limit"


def test_the_unchecked_builder_renders_what_the_spec_would() -> None:
    """The reverse test's way round validation renders exactly like a validated spec."""
    values = {"electionTimeoutMinMs": 200, "electionTimeoutMaxMs": 400}
    assert (manifests.node_settings(_unchecked("consensus", values))
            == manifests.node_settings(cluster(consensus=values)))
