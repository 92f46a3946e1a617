"""Shared helpers for the operator tests: a Cluster under test and schema validation."""

from __future__ import annotations

from typing import Any

import kubernetes_validate

from continuum_operator import manifests, spec

K8S_VERSION = "1.31"


def cluster(name: str = "demo", namespace: str = "prod", **raw: Any) -> manifests.Cluster:
    return manifests.Cluster(name=name, namespace=namespace, uid=f"uid-{name}",
                             spec=spec.parse_spec(raw))


def validate(obj: dict[str, Any]) -> None:
    """Validate against the official Kubernetes schema (strict: unknown fields fail)."""
    kubernetes_validate.validate(obj, K8S_VERSION, strict=True)
