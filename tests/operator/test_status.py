"""Table tests for the status: phase, conditions, members, and no change without a change."""

from __future__ import annotations

import datetime as dt
from dataclasses import replace
from typing import Any

import pytest

from continuum_operator import planner, spec, status

NOW = dt.datetime(2026, 11, 25, 12, 0, tzinfo=dt.UTC)
LATER = NOW + dt.timedelta(minutes=5)
CERT = NOW + dt.timedelta(days=80)


def leader(n: int = 3, unhealthy: tuple[int, ...] = (), learners: tuple[int, ...] = (),
           term: int = 4) -> dict[str, Any]:
    return {"node_id": "demo-0", "role": "leader", "term": term, "version": "0.1.0",
            "members": [{"id": f"demo-{i}", "address": f"demo-{i}.x:7000",
                         "voter": i not in learners, "healthy": i not in unhealthy,
                         "match_index": 10} for i in range(n)]}


def inputs(n: int = 3, **kw: Any) -> status.Inputs:
    base = status.Inputs(
        name="demo", now=NOW, generation=2, desired=n, selector="a=b", sts_replicas=n,
        pods=tuple(planner.Pod(f"demo-{i}", i, ready=True) for i in range(n)),
        leader_status=leader(n), cert_not_after=CERT, cert_renew_before=15 * 86400)
    return replace(base, **kw)


def cond(st: dict[str, Any], type_: str) -> dict[str, Any]:
    return next(c for c in st["conditions"] if c["type"] == type_)


def test_healthy_cluster() -> None:
    st = status.compute(inputs())
    assert st["phase"] == "Running"
    assert st["leader"] == "demo-0" and st["term"] == 4
    assert st["readyReplicas"] == 3 and st["replicas"] == 3 and st["observedGeneration"] == 2
    assert [c["type"] for c in st["conditions"]] == list(status.CONDITIONS)
    assert cond(st, "Ready")["status"] == "True"
    assert cond(st, "Quorum")["status"] == "True"
    assert cond(st, "Degraded")["status"] == "False"
    assert cond(st, "CertificatesReady")["status"] == "True"
    assert [m["name"] for m in st["members"]] == ["demo-0", "demo-1", "demo-2"]
    assert st["members"][0]["role"] == "leader"


@pytest.mark.parametrize(("kw", "phase", "checks"), [
    ({"pods": (), "leader_status": None}, "Pending", {"Ready": "False"}),
    ({"leader_status": None}, "Bootstrapping", {"Quorum": "Unknown"}),
    ({"leader_status": None, "previous": {"phase": "Running"}}, "QuorumLost",
     {"Quorum": "False", "Degraded": "True", "Ready": "False"}),
    ({"leader_status": leader(3, unhealthy=(1, 2))}, "Degraded",
     {"Quorum": "False", "Degraded": "True"}),
    ({"leader_status": leader(3, unhealthy=(2,))}, "Degraded",
     {"Quorum": "True", "Degraded": "True"}),
    ({"step": planner.Blocked("scale-down refused: x")}, "Degraded",
     {"ScaleBlocked": "True", "Degraded": "True"}),
    ({"operation": spec.Operation(type="ScaleUp", step="AddMember", member="demo-3")},
     "Scaling", {"Progressing": "True"}),
    ({"operation": spec.Operation(type="Update", step="DeletePod", member="demo-1")},
     "Upgrading", {"Progressing": "True"}),
    ({"desired": 5}, "Scaling", {"Progressing": "True", "Ready": "False"}),
    ({"paused": True}, "Paused", {"Paused": "True"}),
    ({"invalid": "spec.replicas: too big"}, "Invalid", {"Ready": "False"}),
    ({"cert_not_after": None}, "Running", {"CertificatesReady": "False"}),
    ({"cert_not_after": NOW + dt.timedelta(days=3)}, "Degraded",
     {"CertificatesReady": "True", "Degraded": "True"}),
])
def test_phases_and_conditions(kw: dict[str, Any], phase: str, checks: dict[str, str]) -> None:
    st = status.compute(inputs(**kw))
    assert st["phase"] == phase
    for type_, value in checks.items():
        assert cond(st, type_)["status"] == value, (type_, cond(st, type_))


def test_quorum_loss_names_the_recovery_annotation() -> None:
    st = status.compute(inputs(leader_status=None, previous={"leader": "demo-1"}))
    assert "continuum.dev/recover-quorum" in cond(st, "Quorum")["message"]


def test_invalid_spec_keeps_last_observed_fields() -> None:
    prev = status.compute(inputs())
    st = status.compute(inputs(invalid="spec.replicas: bad", previous=prev))
    assert st["leader"] == prev["leader"] and st["members"] == prev["members"]
    assert cond(st, "Ready")["reason"] == "InvalidSpec"
    assert cond(st, "Ready")["message"] == "spec.replicas: bad"


def test_same_observations_later_give_no_patch() -> None:
    first = status.compute(inputs())
    again = status.compute(inputs(now=LATER, previous=first))
    assert status.diff(first, again) == {}


def test_transition_time_moves_only_on_change() -> None:
    first = status.compute(inputs())
    changed = status.compute(inputs(now=LATER, previous=first,
                                    leader_status=leader(3, unhealthy=(2,))))
    assert cond(changed, "Degraded")["lastTransitionTime"] == "2026-11-25T12:05:00Z"
    assert cond(changed, "Quorum")["lastTransitionTime"] == "2026-11-25T12:00:00Z"
    patch = status.diff(first, changed)
    assert set(patch) <= {"phase", "members", "conditions"}


def test_diff_removes_keys_set_to_none() -> None:
    assert status.diff({"leader": "a", "term": 1}, {"leader": None, "term": 1}) == {
        "leader": None}
    assert status.diff({}, {"leader": None}) == {}


def test_diff_nulls_keys_gone_from_a_nested_object() -> None:
    rotating = {"certificates": {"secretName": "demo-tls",
                                 "rotation": {"phase": "ReissuingLeaves", "caSha256": "ab"}}}
    done = {"certificates": {"secretName": "demo-tls"}}
    patch = status.diff(rotating, done)
    assert patch == {"certificates": {"rotation": None}}
    assert status.apply(rotating, patch) == done
    assert status.diff(done, done) == {}
    # a changed nested value patches only what changed
    moved = {"certificates": {"secretName": "demo-tls",
                              "rotation": {"phase": "ReissuingLeaves", "caSha256": "cd"}}}
    assert status.diff(rotating, moved) == {"certificates": {"rotation": {"caSha256": "cd"}}}
    assert status.apply(rotating, status.diff(rotating, moved)) == moved


def test_a_ca_rotation_shows_in_certificates_ready() -> None:
    rotation = spec.CARotation(phase="PublishingBundle", ca_sha256="ab",
                               waiting_for=["demo-2"], message="waiting")
    st = status.compute(inputs(certificates=spec.Certificates(rotation=rotation)))
    c = cond(st, "CertificatesReady")
    assert (c["status"], c["reason"]) == ("True", "CARotationInProgress")
    assert "PublishingBundle" in c["message"] and "demo-2" in c["message"]
    assert st["certificates"]["rotation"]["waitingFor"] == ["demo-2"]


# ---- members spread over hosts ----------------------------------------------------------------

def on_hosts(*hosts: str | None) -> tuple[planner.Pod, ...]:
    return tuple(planner.Pod(f"demo-{i}", i, ready=True, node=h) for i, h in enumerate(hosts))


@pytest.mark.parametrize(("hosts", "state", "reason", "fragment"), [
    (("a", "b", "c"), "True", "SpreadAcrossHosts", "3 members on 3 hosts"),
    (("a", "a", "c"), "False", "QuorumOnOneHost", "a runs demo-0, demo-1"),
    (("a", "b", "c", "d", "a"), "False", "MembersShareHost", "quorum survives"),
    (("a", "a", "a", "d", "e"), "False", "QuorumOnOneHost", "quorum of 3"),
    ((None, None, None), "Unknown", "NotScheduled", ""),
])
def test_members_sharing_a_host_are_reported(hosts: tuple[str | None, ...], state: str,
                                              reason: str, fragment: str) -> None:
    n = len(hosts)
    st = status.compute(inputs(n, pods=on_hosts(*hosts), leader_status=leader(n)))
    c = cond(st, "MembersSpread")
    assert (c["status"], c["reason"]) == (state, reason)
    assert fragment in c["message"]
    if hosts[0]:
        assert st["members"][0]["nodeName"] == hosts[0]


def test_a_single_member_has_nothing_to_spread() -> None:
    st = status.compute(inputs(1, pods=on_hosts("a"), leader_status=leader(1)))
    assert cond(st, "MembersSpread")["status"] == "True"
