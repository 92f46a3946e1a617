"""The committed CRD is exactly what the pydantic model generates, and is a valid CRD."""

from __future__ import annotations

from pathlib import Path

import kubernetes_validate
import pytest
import yaml

from continuum_operator import crd, spec

ROOT = Path(__file__).resolve().parents[2]
COMMITTED = ROOT / "crds" / crd.FILENAME
BACKUP = ROOT / "crds" / crd.BACKUP_FILENAME
K8S_VERSION = "1.31"


def test_committed_crd_is_in_sync_with_the_model() -> None:
    assert COMMITTED.read_text() == crd.render(), (
        "crds/ is stale: run PYTHONPATH=operator python -m continuum_operator.crd -o crds/")
    assert BACKUP.read_text() == crd.render(crd.BACKUP_FILENAME), (
        "crds/ is stale: run PYTHONPATH=operator python -m continuum_operator.crd -o crds/")


def test_check_command_reports_a_stale_file(tmp_path: Path) -> None:
    stale = tmp_path / "crd.yaml"
    stale.write_text(crd.render().replace("shortNames", "shortNamez"))
    assert crd.main(["--check", str(stale)]) == 1
    assert crd.main(["--check", str(COMMITTED)]) == 0
    assert crd.main(["--check", str(COMMITTED.parent)]) == 0  # every CRD in crds/
    (tmp_path / crd.FILENAME).write_text(crd.render())
    assert crd.main(["--check", str(tmp_path)]) == 1  # the backup CRD is missing there
    assert crd.main(["-o", str(tmp_path)]) == 0 and crd.main(["--check", str(tmp_path)]) == 0


def test_backup_crd_is_valid_structural_and_shows_its_outcome() -> None:
    kubernetes_validate.validate(yaml.safe_load(BACKUP.read_text()), K8S_VERSION, strict=True)
    version = crd.build_backup()["spec"]["versions"][0]
    for path, node in _walk(version["schema"]["openAPIV3Schema"]):
        assert "$ref" not in node and "title" not in node, path
        assert node.get("x-kubernetes-int-or-string") or "type" in node, path
    assert version["subresources"] == {"status": {}}
    names = [c["name"] for c in version["additionalPrinterColumns"] if "priority" not in c]
    assert names == ["Cluster", "Phase", "Size", "Raft Index", "Started", "Age"]
    assert crd.build_backup()["spec"]["names"]["shortNames"] == ["fb"]


def test_crd_is_valid_against_the_official_schema() -> None:
    kubernetes_validate.validate(yaml.safe_load(COMMITTED.read_text()), K8S_VERSION, strict=True)


def _walk(node: object, path: str = "") -> list[tuple[str, dict[str, object]]]:
    found: list[tuple[str, dict[str, object]]] = []
    if isinstance(node, dict):
        found.append((path, node))
        for key in ("properties",):
            for name, sub in node.get(key, {}).items():
                found += _walk(sub, f"{path}.{name}")
        for key in ("items", "additionalProperties"):
            if isinstance(node.get(key), dict):
                found += _walk(node[key], f"{path}[]")
    return found


def test_schema_is_structural() -> None:
    schema = crd.build()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    for path, node in _walk(schema):
        assert "$ref" not in node and "title" not in node, path
        assert node.get("additionalProperties") is not False, path
        if not (node.get("x-kubernetes-int-or-string") or "type" in node):
            pytest.fail(f"{path} has no type")
        if "anyOf" in node:
            assert node.get("x-kubernetes-int-or-string"), path


def test_scale_subresource_and_printer_columns() -> None:
    version = crd.build()["spec"]["versions"][0]
    assert version["subresources"]["scale"] == {
        "specReplicasPath": ".spec.replicas", "statusReplicasPath": ".status.replicas",
        "labelSelectorPath": ".status.selector"}
    assert "status" in version["subresources"]
    names = [c["name"] for c in version["additionalPrinterColumns"] if "priority" not in c]
    assert names == ["Replicas", "Ready", "Leader", "Quorum", "Phase", "Age"]


def test_cel_rules_present() -> None:
    props = crd.build()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]
    rules = {r["message"] for p in props["properties"].values()
             for r in p.get("x-kubernetes-validations", [])}
    assert "storage.storageClassName is immutable" in rules
    assert "storage.size may only grow" in rules
    assert "tls.issuerRef is required when tls.mode is CertManager" in rules


def test_schema_defaults_match_the_model_defaults() -> None:
    props = crd.build()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]
    model = spec.FederationClusterSpec()
    assert props["properties"]["replicas"]["default"] == model.replicas
    storage = props["properties"]["storage"]["properties"]
    assert storage["size"]["default"] == model.storage.size
    assert storage["retention"]["properties"]["whenScaled"]["default"] == "Delete"
    assert props["properties"]["tls"]["properties"]["mode"]["default"] == "SelfSigned"


@pytest.mark.parametrize(("raw", "fragment"), [
    ({"replicas": 0}, "spec.replicas"),
    ({"tls": {"mode": "CertManager"}}, "issuerRef is required"),
    ({"consensus": {"heartbeatIntervalMs": 600}}, "at most half of electionTimeoutMinMs"),
    ({"consensus": {"electionTimeoutMaxMs": 150}}, "electionTimeoutMinMs must be below"),
    ({"storage": {"size": "ten gigs"}}, "spec.storage.size"),
    ({"replicaz": 3}, "spec.replicaz"),
    ({"tls": {"duration": "1h", "renewBefore": "2h"}}, "renewBefore must be shorter"),
])
def test_invalid_specs_are_described_clearly(raw: dict[str, object], fragment: str) -> None:
    with pytest.raises(ValueError) as info:
        spec.parse_spec(raw)
    assert fragment in spec.describe_errors(info.value)


def test_durations() -> None:
    assert spec.parse_duration("2160h") == 2160 * 3600
    assert spec.parse_duration("1h30m") == 5400
    with pytest.raises(ValueError):
        spec.parse_duration("3 days")
