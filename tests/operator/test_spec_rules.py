"""The CRD's CEL rules, evaluated with cel-python as the API server would, and the
operator's own checks for API servers that did not apply them: names, fields fixed at
creation, the pod template additions and quantities."""

from __future__ import annotations

from typing import Any

import celpy
import jsonschema
import pydantic
import pytest

from continuum.federation.distributed.core.raft import config as raft_config
from continuum_operator import backup_spec, crd
from continuum_operator import spec as api

SCHEMA = crd.build()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
SPEC = SCHEMA["properties"]["spec"]


def cel_ok(rules: list[dict[str, str]], new: Any, old: Any = None) -> list[str]:
    """The messages of the rules that refuse ``new`` (``old``: the stored value)."""
    env = celpy.Environment()
    refused = []
    for rule in rules:
        if "oldSelf" in rule["rule"] and old is None:
            continue  # transition rules run on updates only
        activation = {"self": celpy.json_to_cel(new)}
        if old is not None:
            activation["oldSelf"] = celpy.json_to_cel(old)
        if not env.program(env.compile(rule["rule"])).evaluate(activation):
            refused.append(rule["message"])
    return refused


@pytest.mark.parametrize(("name", "ok"), [
    ("demo", True), ("a", True), ("a" * 52, True), ("prod-eu-1", True),
    ("a" * 53, False), ("9demo", False), ("de.mo", False), ("Demo", False), ("demo-", False),
    ("de_mo", False),
])
def test_cr_names_are_refused_by_the_crd_and_by_the_operator(name: str, ok: bool) -> None:
    rules = SCHEMA["x-kubernetes-validations"]
    assert (not cel_ok(rules, {"metadata": {"name": name}})) is ok
    assert (api.name_problem(name) is None) is ok


def test_the_name_limit_leaves_room_for_every_derived_name() -> None:
    name = "a" * api.NAME_MAX
    from builders import cluster

    c = cluster(name=name)
    assert len(f"{c.name}-{'h' * 10}") <= 63          # controller-revision-hash label value
    assert len(c.peers_service) <= 63 and len(c.pod(98)) <= 63
    assert len(c.client_secret) <= 253


def test_tls_mode_is_fixed_at_creation() -> None:
    rules = SPEC["properties"]["tls"]["x-kubernetes-validations"]
    self_signed = {"mode": "SelfSigned", "duration": "2160h", "renewBefore": "360h"}
    cert_manager = {**self_signed, "mode": "CertManager", "issuerRef": {"name": "ca"}}
    assert cel_ok(rules, cert_manager, self_signed) == [api.TLS_MODE_RULE]
    assert cel_ok(rules, self_signed, cert_manager) == [api.TLS_MODE_RULE]
    assert cel_ok(rules, {**self_signed, "duration": "4320h"}, self_signed) == []
    assert cel_ok(rules, cert_manager) == []  # creation in either mode is fine


def test_cluster_domain_is_fixed_at_creation_and_well_formed() -> None:
    prop = SPEC["properties"]["clusterDomain"]
    assert prop["default"] == "cluster.local"
    assert cel_ok(prop["x-kubernetes-validations"], "corp.internal", "cluster.local")
    assert not cel_ok(prop["x-kubernetes-validations"], "cluster.local", "cluster.local")
    validator = jsonschema.Draft4Validator(prop)
    assert validator.is_valid("corp.example.internal")
    assert not validator.is_valid("Corp_Internal") and not validator.is_valid(".local")
    with pytest.raises(pydantic.ValidationError):
        api.parse_spec({"clusterDomain": "under_score.local"})


@pytest.mark.parametrize("value", ["1", 1, "0.5", "0.5Gi", "1000m", "1e3", "512Mi", ".5", "2E6"])
def test_quantities_written_any_valid_way_are_accepted(value: int | str) -> None:
    schema = SPEC["properties"]["resources"]["properties"]["requests"]
    assert jsonschema.Draft4Validator(schema).is_valid({"cpu": value})
    api.parse_spec({"resources": {"requests": {"cpu": value}}})


@pytest.mark.parametrize("value", ["lots", "1 Gi", "1gi", "-1", "1e", "Gi"])
def test_bad_quantities_are_refused_with_the_field_named(value: str) -> None:
    schema = SPEC["properties"]["resources"]["properties"]["requests"]
    assert not jsonschema.Draft4Validator(schema).is_valid({"cpu": value})
    with pytest.raises(pydantic.ValidationError) as info:
        api.parse_spec({"resources": {"requests": {"cpu": value}}})
    assert "spec.resources.requests" in api.describe_errors(info.value)


POD_TEMPLATE_REFUSED = [
    ({"metadata": {"labels": {"app.kubernetes.io/instance": "x"}}}, "set by the operator"),
    ({"metadata": {"labels": {"team": "a b"}}}, "not a valid label value"),
    ({"metadata": {"annotations": {"continuum.dev/restart": "1"}}}, "operator's"),
    ({"env": [{"name": "CONTINUUM_PEER_DOMAIN", "value": "x"}]}, "set by the operator"),
    ({"env": [{"name": "A", "value": "1"}, {"name": "A", "value": "2"}]}, "duplicate names"),
    ({"env": [{"name": "A", "value": "1", "valueFrom": {"fieldRef": {
        "fieldPath": "metadata.name"}}}]}, "exclusive"),
    ({"env": [{"name": "A", "valueFrom": {}}]}, "exactly one"),
    ({"env": [{"name": "1=A", "value": "1"}]}, "spec.podTemplate.env"),
    ({"imagePullSecrets": [{"name": "Reg_Cred"}]}, "spec.podTemplate.imagePullSecrets"),
    ({"serviceAccountName": "Bad Name"}, "spec.podTemplate.serviceAccountName"),
    ({"nodeName": "x"}, "spec.podTemplate.nodeName"),
]


@pytest.mark.parametrize(("raw", "fragment"), POD_TEMPLATE_REFUSED,
                         ids=[f for _, f in POD_TEMPLATE_REFUSED])
def test_pod_template_additions_are_validated(raw: dict[str, Any], fragment: str) -> None:
    with pytest.raises(pydantic.ValidationError) as info:
        api.parse_spec({"podTemplate": raw})
    assert fragment in api.describe_errors(info.value)


def test_env_cel_rules_match_the_model() -> None:
    env = SPEC["properties"]["podTemplate"]["properties"]["env"]["items"]
    both = {"name": "A", "value": "1", "valueFrom": {"fieldRef": {"fieldPath": "x"}}}
    assert cel_ok(env["x-kubernetes-validations"], both) == [api.VALUE_OR_SOURCE]
    source = env["properties"]["valueFrom"]
    assert cel_ok(source["x-kubernetes-validations"], {}) == [api.ONE_SOURCE]
    assert not cel_ok(source["x-kubernetes-validations"],
                      {"secretKeyRef": {"name": "s", "key": "k"}})


@pytest.mark.parametrize(("lo", "hi", "hb"), [
    (150, 300, 50), (150, 300, 75), (150, 300, 76), (300, 300, 50), (300, 150, 50),
    (1000, 2000, 100), (10, 11, 5), (10, 11, 6), (20, 40, 1),
])
def test_the_crd_the_operator_and_the_node_apply_one_timing_rule(lo: int, hi: int,
                                                                  hb: int) -> None:
    node_ok = raft_config.timing_error((lo, hi), hb) is None
    raw = {"electionTimeoutMinMs": lo, "electionTimeoutMaxMs": hi, "heartbeatIntervalMs": hb}
    rules = SPEC["properties"]["consensus"]["x-kubernetes-validations"]
    assert (not cel_ok(rules, raw)) == node_ok
    try:
        api.parse_spec({"consensus": raw})
        operator_ok = True
    except pydantic.ValidationError:
        operator_ok = False
    assert operator_ok == node_ok


# ---- backups ----------------------------------------------------------------------------------

BACKUP_SCHEMA = crd.build_backup()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
PVC = {"pvc": {"claimName": "vol"}}
S3 = {"s3": {"bucket": "backups"}}


@pytest.mark.parametrize(("target", "ok"), [(PVC, True), (S3, True), ({}, False),
                                            ({**PVC, **S3}, False)])
def test_a_target_is_exactly_one_of_pvc_and_s3(target: dict[str, Any], ok: bool) -> None:
    rules = BACKUP_SCHEMA["properties"]["spec"]["properties"]["target"][
        "x-kubernetes-validations"]
    assert (cel_ok(rules, target) == []) is ok
    try:
        backup_spec.BackupTarget.model_validate(target)
        model_ok = True
    except pydantic.ValidationError as exc:
        model_ok = False
        assert backup_spec.ONE_TARGET in str(exc)
    assert model_ok is ok


@pytest.mark.parametrize(("source", "ok"), [
    ({"federationBackup": "nightly"}, True),
    ({"target": PVC, "backupName": "demo-20261204T020000Z"}, True),
    ({"target": PVC}, False), ({"backupName": "x"}, False), ({}, False),
    ({"federationBackup": "nightly", "backupName": "x"}, False),
])
def test_a_bootstrap_source_is_a_federation_backup_or_a_target_and_name(
        source: dict[str, Any], ok: bool) -> None:
    rules = SPEC["properties"]["bootstrap"]["properties"]["fromBackup"][
        "x-kubernetes-validations"]
    assert (cel_ok(rules, source) == []) is ok
    try:
        api.parse_spec({"bootstrap": {"fromBackup": source}})
        model_ok = True
    except pydantic.ValidationError as exc:
        model_ok = False
        assert "spec.bootstrap.fromBackup" in api.describe_errors(exc)
    assert model_ok is ok


def test_bootstrap_is_fixed_at_creation_and_a_backup_spec_for_ever() -> None:
    rules = SPEC["x-kubernetes-validations"]
    boot = {"bootstrap": {"fromBackup": {"federationBackup": "a"}}}
    assert cel_ok(rules, boot, {}) == [backup_spec.BOOTSTRAP_FIXED]   # added later
    assert cel_ok(rules, {}, boot) == [backup_spec.BOOTSTRAP_FIXED]   # removed
    assert cel_ok(rules, {"bootstrap": {"fromBackup": {"federationBackup": "b"}}}, boot)
    assert cel_ok(rules, {**boot, "replicas": 5}, boot) == []
    assert cel_ok(rules, boot) == []                                   # at creation
    spec_rules = BACKUP_SCHEMA["properties"]["spec"]["x-kubernetes-validations"]
    fb = {"cluster": "demo", "target": PVC}
    assert cel_ok(spec_rules, {**fb, "cluster": "other"}, fb) == [backup_spec.SPEC_FIXED]


@pytest.mark.parametrize(("name", "ok"), [
    ("nightly", True), ("9-before-upgrade", True), ("a" * 56, True), ("a" * 57, False),
    ("Nightly", False), ("night.ly", False), ("-x", False)])
def test_backup_names_leave_room_for_their_jobs(name: str, ok: bool) -> None:
    assert (not cel_ok(BACKUP_SCHEMA["x-kubernetes-validations"],
                       {"metadata": {"name": name}})) is ok
    assert (backup_spec.name_problem(name) is None) is ok


@pytest.mark.parametrize(("expr", "shape_ok", "ok"), [
    ("0 2 * * *", True, True), ("@daily", True, True), ("*/5  *  * * 1-5", True, True),
    ("61 * * * *", True, False), ("0 2 * *", False, False), ("@sometimes", False, False),
])
def test_schedules_are_checked_by_the_crd_in_shape_and_by_the_operator_in_full(
        expr: str, shape_ok: bool, ok: bool) -> None:
    prop = SPEC["properties"]["backup"]["properties"]["schedule"]
    assert jsonschema.Draft4Validator(prop).is_valid(expr) is shape_ok
    raw = {"backup": {"schedule": expr, "target": PVC}}
    if ok:
        api.parse_spec(raw)
        return
    with pytest.raises(pydantic.ValidationError) as info:
        api.parse_spec(raw)
    assert "spec.backup.schedule" in api.describe_errors(info.value)


def test_retention_ages_and_folders_are_checked() -> None:
    retention = SPEC["properties"]["backup"]["properties"]["retention"]
    assert jsonschema.Draft4Validator(retention).is_valid({"keep": 7, "maxAge": "30d"})
    assert not jsonschema.Draft4Validator(retention).is_valid({"maxAge": "30 days"})
    assert not jsonschema.Draft4Validator(retention).is_valid({"keep": 0})
    folder = BACKUP_SCHEMA["properties"]["spec"]["properties"]["target"]["properties"]["pvc"]
    for bad in ("../x", "/abs", "a/../b", "a//b"):
        assert not jsonschema.Draft4Validator(folder).is_valid({"claimName": "v", "path": bad})
    assert jsonschema.Draft4Validator(folder).is_valid({"claimName": "v", "path": "a/b.c"})
