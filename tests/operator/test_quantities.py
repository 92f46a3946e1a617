"""Quantities compared by amount: what the API server stores never looks like drift."""

from __future__ import annotations

import pytest
from builders import cluster
from harness import canonical_quantity

from continuum_operator import cluster as kube
from continuum_operator import manifests, quantities

# (as written, as the API server stores it): apimachinery's Quantity.String() outputs
CANONICAL = [
    ("1", "1"), (1, "1"), ("0.5", "500m"), ("0.5Gi", "512Mi"), ("1000m", "1"), ("1e3", "1e3"),
    ("1000", "1k"), ("1500", "1500"), ("1.5Gi", "1536Mi"), ("0.1Gi", "107374182400m"),
    ("1.5Ki", "1536"), ("250m", "250m"), ("10Gi", "10Gi"), ("1E6", "1e6"), ("100M", "100M"),
]


@pytest.mark.parametrize(("written", "stored"), CANONICAL)
def test_the_emulator_stores_quantities_as_the_api_server_does(written: int | str,
                                                              stored: str) -> None:
    assert canonical_quantity(written) == stored


@pytest.mark.parametrize(("written", "stored"), CANONICAL)
def test_a_stored_spelling_is_the_same_amount(written: int | str, stored: str) -> None:
    assert quantities.same(quantities.mark(written), stored)
    assert kube.is_subset({"cpu": quantities.mark(written)}, {"cpu": stored})


def test_a_different_amount_is_drift_and_unmarked_values_compare_as_text() -> None:
    assert not kube.is_subset({"cpu": quantities.mark("0.5")}, {"cpu": "501m"})
    assert not kube.is_subset({"image": "1"}, {"image": "1.0"})
    assert not quantities.same(quantities.mark("1Gi"), "lots")


@pytest.mark.parametrize("spelling", ["1", "0.5", "0.5Gi", "1000m", "1e3", 1])
def test_the_statefulset_is_not_patched_for_a_respelled_quantity(spelling: int | str) -> None:
    c = cluster(resources={"requests": {"cpu": spelling, "memory": spelling},
                           "limits": {"memory": spelling}})
    desired = manifests.statefulset(c)
    live = {**desired, "spec": {**desired["spec"], "template": {
        **desired["spec"]["template"], "spec": {
            **desired["spec"]["template"]["spec"], "containers": [
                {**desired["spec"]["template"]["spec"]["containers"][0], "resources": {
                    kind: {k: canonical_quantity(v) for k, v in amounts.items()}
                    for kind, amounts in desired["spec"]["template"]["spec"]["containers"][0][
                        "resources"].items()}}]}}}}
    assert kube.merge_patch(kube._owned_fields(desired), live) == {}
