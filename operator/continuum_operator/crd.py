"""Generate the CRDs from the pydantic models: FederationCluster from ``spec.py``,
FederationBackup from ``backup_spec.py``.

    python -m continuum_operator.crd                 # print the FederationCluster CRD
    python -m continuum_operator.crd -o crds/        # write every CRD into crds/
    python -m continuum_operator.crd --check crds/   # exit 1 if any differs from the models
    python -m continuum_operator.crd --check crds/federationclusters.continuum.dev.yaml

pydantic emits JSON Schema; Kubernetes wants a *structural* OpenAPI v3
schema: no ``$ref``, no ``null`` types, a type on every node, OpenAPI 3.0's
boolean ``exclusiveMinimum``, and defaults written where the API server can
apply them. ``structural`` does that conversion; defaults come from a
default-constructed spec, so the CRD and the operator agree on them.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import yaml

from . import backup_spec, fields, spec

HEADER = ("# Generated from operator/continuum_operator/spec.py by "
          "`python -m continuum_operator.crd`. Do not edit by hand.\n")
CRD_NAME = f"{spec.PLURAL}.{spec.GROUP}"
FILENAME = f"{CRD_NAME}.yaml"
BACKUP_CRD_NAME = f"{backup_spec.PLURAL}.{backup_spec.GROUP}"
BACKUP_FILENAME = f"{BACKUP_CRD_NAME}.yaml"

_DROP = {"title"}


def _resolve(node: dict[str, Any], defs: dict[str, Any]) -> dict[str, Any]:
    ref = node.get("$ref")
    if ref is None:
        return dict(node)
    target = defs[ref.rsplit("/", 1)[-1]]
    merged = {**target, **{k: v for k, v in node.items() if k != "$ref"}}
    return _resolve(merged, defs)


def _without_null(node: dict[str, Any], defs: dict[str, Any]) -> dict[str, Any]:
    options = node.get("anyOf")
    if options is None or node.get("x-kubernetes-int-or-string"):
        return node
    rest = {k: v for k, v in node.items() if k != "anyOf"}
    non_null = [o for o in options if o.get("type") != "null"]
    if "type" in rest:  # an explicit schema from json_schema_extra wins
        return rest
    if len(non_null) != 1:
        raise ValueError(f"cannot express a union in a structural schema: {options}")
    return {**_resolve(non_null[0], defs), **rest}


def structural(node: dict[str, Any], defs: dict[str, Any], defaults: Any = None) -> dict[str, Any]:
    """Convert one pydantic JSON-schema node (recursively) into a structural schema node."""
    node = _without_null(_resolve(node, defs), defs)
    out: dict[str, Any] = {}
    for key, value in node.items():
        if key in _DROP or (key == "default" and value is None):
            continue
        if key in ("exclusiveMinimum", "exclusiveMaximum") and not isinstance(value, bool):
            out["minimum" if key == "exclusiveMinimum" else "maximum"] = value
            out[key] = True
        elif key == "properties":
            sub = defaults if isinstance(defaults, dict) else {}
            out[key] = {name: structural(prop, defs, sub.get(name)) for name, prop in value.items()}
        elif key in ("items", "additionalProperties") and isinstance(value, dict):
            out[key] = structural(value, defs)
        elif key == "additionalProperties" and value is True:
            out["x-kubernetes-preserve-unknown-fields"] = True
        elif key == "additionalProperties" and value is False:
            continue  # not allowed in a structural schema; the API server prunes instead
        else:
            out[key] = value
    if out.get("x-kubernetes-preserve-unknown-fields"):
        out.pop("additionalProperties", None)
    if defaults is not None and "default" not in out:
        # Objects with their own properties default to {} so nested defaults apply.
        out["default"] = {} if "properties" in out else defaults
    return out


def _schema(model: type[fields.Model], with_defaults: bool) -> dict[str, Any]:
    raw = model.model_json_schema(by_alias=True, mode="validation")
    defs = raw.pop("$defs", {})
    defaults = model().model_dump(by_alias=True, mode="json") if with_defaults else None
    result = structural(raw, defs, defaults)
    result.pop("default", None)
    return result


PRINTER_COLUMNS = [
    {"name": "Replicas", "type": "integer", "jsonPath": ".spec.replicas"},
    {"name": "Ready", "type": "integer", "jsonPath": ".status.readyReplicas"},
    {"name": "Leader", "type": "string", "jsonPath": ".status.leader"},
    {"name": "Quorum", "type": "string",
     "jsonPath": '.status.conditions[?(@.type=="Quorum")].status'},
    {"name": "Phase", "type": "string", "jsonPath": ".status.phase"},
    {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
    {"name": "Term", "type": "integer", "jsonPath": ".status.term", "priority": 1},
    {"name": "Operation", "type": "string", "jsonPath": ".status.operation.step", "priority": 1},
    {"name": "Paused", "type": "boolean", "jsonPath": ".spec.paused", "priority": 1},
    {"name": "Last Backup", "type": "date", "jsonPath": ".status.backup.lastSuccessTime",
     "priority": 1},
]
BACKUP_PRINTER_COLUMNS = [
    {"name": "Cluster", "type": "string", "jsonPath": ".spec.cluster"},
    {"name": "Phase", "type": "string", "jsonPath": ".status.phase"},
    {"name": "Size", "type": "string", "jsonPath": ".status.size"},
    {"name": "Raft Index", "type": "integer", "jsonPath": ".status.raftIndex"},
    {"name": "Started", "type": "date", "jsonPath": ".status.startedAt"},
    {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
    {"name": "Location", "type": "string", "jsonPath": ".status.location", "priority": 1},
    {"name": "Node", "type": "string", "jsonPath": ".status.node", "priority": 1},
    {"name": "Error", "type": "string", "jsonPath": ".status.error", "priority": 1},
]


def build() -> dict[str, Any]:
    spec_schema = _schema(spec.FederationClusterSpec, with_defaults=True)
    spec_schema["default"] = {}
    status_schema = _schema(spec.FederationClusterStatus, with_defaults=False)
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {
            "name": CRD_NAME,
            "labels": {"app.kubernetes.io/part-of": "continuum-federation"},
        },
        "spec": {
            "group": spec.GROUP,
            "names": {
                "kind": spec.KIND,
                "listKind": f"{spec.KIND}List",
                "plural": spec.PLURAL,
                "singular": spec.SINGULAR,
                "shortNames": list(spec.SHORT_NAMES),
                "categories": ["continuum"],
            },
            "scope": "Namespaced",
            "versions": [{
                "name": spec.VERSION,
                "served": True,
                "storage": True,
                "schema": {"openAPIV3Schema": {
                    "type": "object",
                    "description": "A Continuum federation cluster: a Raft/CRDT/gossip "
                                   "StatefulSet managed by the continuum operator.",
                    # The name is refused here, not half-way through creating children.
                    "x-kubernetes-validations": spec.NAME_RULES,
                    "properties": {
                        "apiVersion": {"type": "string"},
                        "kind": {"type": "string"},
                        "metadata": {"type": "object"},
                        "spec": spec_schema,
                        "status": status_schema,
                    },
                }},
                "subresources": {
                    "status": {},
                    "scale": {
                        "specReplicasPath": ".spec.replicas",
                        "statusReplicasPath": ".status.replicas",
                        "labelSelectorPath": ".status.selector",
                    },
                },
                "additionalPrinterColumns": PRINTER_COLUMNS,
            }],
        },
    }


def build_backup() -> dict[str, Any]:
    spec_schema = _schema(backup_spec.FederationBackupSpec, with_defaults=False)
    status_schema = _schema(backup_spec.FederationBackupStatus, with_defaults=False)
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {
            "name": BACKUP_CRD_NAME,
            "labels": {"app.kubernetes.io/part-of": "continuum-federation"},
        },
        "spec": {
            "group": backup_spec.GROUP,
            "names": {
                "kind": backup_spec.KIND,
                "listKind": f"{backup_spec.KIND}List",
                "plural": backup_spec.PLURAL,
                "singular": backup_spec.SINGULAR,
                "shortNames": list(backup_spec.SHORT_NAMES),
                "categories": ["continuum"],
            },
            "scope": "Namespaced",
            "versions": [{
                "name": backup_spec.VERSION,
                "served": True,
                "storage": True,
                "schema": {"openAPIV3Schema": {
                    "type": "object",
                    "description": "A consistent backup of a FederationCluster, taken once by "
                                   "a Job that runs `continuum-federation backup create`.",
                    "x-kubernetes-validations": backup_spec.NAME_RULES,
                    "required": ["spec"],
                    "properties": {
                        "apiVersion": {"type": "string"},
                        "kind": {"type": "string"},
                        "metadata": {"type": "object"},
                        "spec": spec_schema,
                        "status": status_schema,
                    },
                }},
                "subresources": {"status": {}},
                "additionalPrinterColumns": BACKUP_PRINTER_COLUMNS,
            }],
        },
    }


BUILDERS = {FILENAME: build, BACKUP_FILENAME: build_backup}


def render(filename: str = FILENAME) -> str:
    return HEADER + yaml.safe_dump(BUILDERS[filename](), sort_keys=False, width=100)


def _files(path: Path) -> dict[Path, str]:
    """The CRD files at ``path``: every one for a directory, else the one it names."""
    if path.is_dir() or not path.suffix:
        return {path / name: render(name) for name in BUILDERS}
    return {path: render(path.name if path.name in BUILDERS else FILENAME)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m continuum_operator.crd", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    group = parser.add_mutually_exclusive_group()
    group.add_argument("-o", "--output", type=Path, help="write the CRD to this file")
    group.add_argument("--check", type=Path, help="exit 1 if this file differs from the model")
    args = parser.parse_args(argv)
    if args.check is not None:
        stale = [f for f, text in _files(args.check).items()
                 if (f.read_text() if f.exists() else "") != text]
        for f in stale:
            print(f"{f} is out of date; run python -m continuum_operator.crd -o "
                  f"{args.check}", file=sys.stderr)
        return 1 if stale else 0
    if args.output is not None:
        for f, text in _files(args.output).items():
            f.parent.mkdir(parents=True, exist_ok=True)
            f.write_text(text)
        return 0
    sys.stdout.write(render())
    return 0


if __name__ == "__main__":
    sys.exit(main())
