"""Table tests for the planner: the next step for each observed situation."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import pytest

from continuum_operator import planner as p
from continuum_operator import spec

REV = "rev-2"


def obs(desired: int, size: int, *, members: int | None = None, unhealthy: tuple[int, ...] = (),
        not_ready: tuple[int, ...] = (), leader: int | None = 0, learners: tuple[int, ...] = (),
        pods: int | None = None, revision: dict[int, str] | None = None,
        op: dict[str, Any] | None = None, committed: bool = True, **kw: Any) -> p.Observed:
    """A cluster 'demo' with ``size`` pods in the StatefulSet and ``members`` Raft members."""
    n_members = size if members is None else members
    n_pods = size if pods is None else pods
    mems = tuple(p.Member(f"demo-{i}", voter=i not in learners, healthy=i not in unhealthy)
                 for i in range(n_members))
    pod_list = tuple(p.Pod(f"demo-{i}", i, ready=i not in not_ready and i not in unhealthy,
                           revision=(revision or {}).get(i, REV)) for i in range(n_pods))
    return p.Observed(
        name="demo", desired=desired, sts_replicas=size, update_revision=REV, pods=pod_list,
        members=mems if leader is not None else None,
        leader=f"demo-{leader}" if leader is not None else None,
        membership_committed=committed and leader is not None,
        operation=spec.Operation.model_validate(op) if op else None,
        pvcs=frozenset(f"data-demo-{i}" for i in range(max(n_pods, size) + 2)), **kw)


def _step(o: p.Observed) -> p.Step:
    return p.plan(o).step


@pytest.mark.parametrize(("o", "step"), [
    (obs(3, 3), p.Idle()),
    (replace(obs(3, 3), sts_replicas=None), p.Wait("StatefulSet not created yet")),
    (obs(3, 1), p.GrowStatefulSet(2)),
    (obs(5, 3), p.GrowStatefulSet(4)),
    # a pod that is not (yet) a voter joins before anything else
    (obs(5, 4, members=3), p.AddMember("demo-3")),
    (obs(3, 3, learners=(2,)), p.AddMember("demo-2")),
    # scale down: highest ordinal leaves Raft first
    (obs(3, 5), p.RemoveMember("demo-4")),
    (obs(3, 5, leader=4), p.TransferLeadership("demo-4", "demo-0")),
    (obs(3, 5, leader=4, unhealthy=(0,)), p.TransferLeadership("demo-4", "demo-1")),
    # a victim that is no member any more: shrink straight away
    (obs(3, 4, members=3), p.ShrinkStatefulSet(3)),
    # no leader: wait, loudly; recovery restarts the stuck pods
    (obs(3, 3, leader=None, not_ready=(1, 2)), p.Wait("no leader: the cluster has no quorum")),
    (obs(3, 3, leader=None, not_ready=(1, 2), recover_quorum=True),
     p.RecoverQuorum(("demo-1", "demo-2"))),
])
def test_next_step(o: p.Observed, step: p.Step) -> None:
    assert _step(o) == step


@pytest.mark.parametrize(("o", "blocked"), [
    (obs(2, 3, unhealthy=(1,)), True),         # 2 voters left, 1 healthy < 2
    (obs(4, 5, unhealthy=(1, 2)), True),       # 4 left, 2 healthy < 3
    (obs(4, 5, unhealthy=(1,)), False),        # 4 left, 3 healthy
    (obs(2, 3, unhealthy=(2,)), False),        # removing the unhealthy one helps
    (obs(1, 2, unhealthy=(0,), leader=1), True),
    (obs(2, 3, unhealthy=(1,), force_scale_down=True), False),
])
def test_unsafe_scale_down_is_blocked(o: p.Observed, blocked: bool) -> None:
    step = _step(o)
    assert isinstance(step, p.Blocked) is blocked, step
    if blocked:
        assert "continuum.dev/force-scale-down" in step.reason  # type: ignore[union-attr]


def test_scale_up_records_the_operation_before_acting() -> None:
    d = p.plan(obs(5, 3))
    assert d.operation is not None
    assert (d.operation.type, d.operation.step, d.operation.member, d.operation.target) == (
        "ScaleUp", "GrowStatefulSet", "demo-3", 4)


def test_scale_up_sequence() -> None:
    op = {"type": "ScaleUp", "step": "GrowStatefulSet", "member": "demo-3", "target": 4}
    # the StatefulSet patch has not landed yet: repeat it (idempotent)
    assert _step(obs(5, 3, op=op)) == p.GrowStatefulSet(4)
    # grown, pod not there yet
    assert _step(obs(5, 4, members=3, pods=3, op=op)) == p.Wait("waiting for pod demo-3")
    # pod there: add it (as a learner; the node promotes it)
    d = p.plan(obs(5, 4, members=3, not_ready=(3,), op=op))
    assert d.step == p.AddMember("demo-3") and d.operation and d.operation.step == "AddMember"
    # a learner still catching up: ask again
    assert _step(obs(5, 4, learners=(3,), op=op)) == p.AddMember("demo-3")
    # a voter now: the operation is over and the next one starts
    d = p.plan(obs(5, 4, op=op))
    assert d.step == p.GrowStatefulSet(5) and d.operation and d.operation.member == "demo-4"
    d = p.plan(obs(4, 4, op=op))
    assert d == p.Decision(p.Idle(), None)


def test_scale_down_sequence_never_deletes_a_pvc_early() -> None:
    op = {"type": "ScaleDown", "step": "RemoveMember", "member": "demo-4", "target": 4}
    # still a member: (re)issue the removal of the SAME member
    assert _step(obs(3, 5, op=op)) == p.RemoveMember("demo-4")
    # leader could not be reached: no decision about the PVC
    assert isinstance(_step(obs(3, 5, leader=None, op=op)), p.Wait)
    # removal observed: shrink, and remember the confirmation
    d = p.plan(obs(3, 5, members=4, op=op))
    assert d.step == p.ShrinkStatefulSet(4)
    assert d.operation and d.operation.removal_confirmed and d.operation.step == "ShrinkStatefulSet"
    confirmed = dict(op, step="ShrinkStatefulSet", removalConfirmed=True)
    # shrunk, pod still terminating: wait
    assert _step(obs(3, 4, members=4, pods=5, op=confirmed)) == p.Wait(
        "waiting for pod demo-4 to terminate")
    # pod gone: PVC retention applies
    d = p.plan(obs(3, 4, members=4, op=confirmed))
    assert d.step == p.ApplyPVCRetention("demo-4", "data-demo-4", delete=True)
    # PVC gone: next member
    gone = replace(obs(3, 4, members=4, op=dict(confirmed, step="ApplyPVCRetention")),
                   pvcs=frozenset())
    d = p.plan(gone)
    assert d.step == p.RemoveMember("demo-3") and d.operation and d.operation.member == "demo-3"


def test_an_uncommitted_removal_neither_shrinks_nor_deletes_the_pvc() -> None:
    # The leader's members already lack demo-4 (the configuration is in force once
    # appended), but that configuration is not committed: a new leader could bring it back.
    op = {"type": "ScaleDown", "step": "RemoveMember", "member": "demo-4", "target": 4}
    d = p.plan(obs(3, 5, members=4, op=op, committed=False))
    assert d.step == p.Wait("the removal of demo-4 is not committed yet")
    assert d.operation is not None and not d.operation.removal_confirmed
    assert d.operation.step == "RemoveMember"
    # the same without a recorded operation (a victim that is no member any more)
    assert p.plan(obs(3, 5, members=4, committed=False)) == p.Decision(
        p.Wait("the removal of demo-4 is not committed yet"), None)
    # committed: now the StatefulSet shrinks and the confirmation is recorded
    d = p.plan(obs(3, 5, members=4, op=op, committed=True))
    assert d.step == p.ShrinkStatefulSet(4)
    assert d.operation is not None and d.operation.removal_confirmed


def test_a_new_leader_without_the_removal_gets_it_reissued() -> None:
    # Uncommitted, then the leader changed and the new one never had the entry.
    op = {"type": "ScaleDown", "step": "RemoveMember", "member": "demo-4", "target": 4}
    assert _step(obs(3, 5, leader=1, op=op, committed=True)) == p.RemoveMember("demo-4")


@pytest.mark.parametrize(("status", "committed"), [
    (None, False),
    ({}, False),                                   # a node that does not report it
    ({"membership_committed": False}, False),
    ({"membership_committed": "true"}, False),     # only the JSON boolean counts
    ({"membership_committed": 1}, False),
    ({"membership_committed": True}, True),
])
def test_membership_committed_is_read_strictly(status: dict[str, Any] | None,
                                               committed: bool) -> None:
    assert p.membership_committed(status) is committed


def test_retain_policy_keeps_the_pvc() -> None:
    confirmed = {"type": "ScaleDown", "step": "ShrinkStatefulSet", "member": "demo-4",
                 "removalConfirmed": True}
    d = p.plan(replace(obs(4, 4, op=confirmed), pvc_when_scaled="Retain"))
    assert d == p.Decision(p.Idle(), None)


def test_resume_after_a_crash_does_not_remove_a_second_member() -> None:
    # The operator removed demo-4, crashed before writing status; demo-3 is now the highest
    # *member* but the recorded operation still names demo-4 and the StatefulSet has 5 pods.
    op = {"type": "ScaleDown", "step": "RemoveMember", "member": "demo-4", "target": 4}
    d = p.plan(obs(3, 5, members=4, op=op))
    assert d.step == p.ShrinkStatefulSet(4)


def test_scale_down_of_the_leader_transfers_first() -> None:
    op = {"type": "ScaleDown", "step": "TransferLeadership", "member": "demo-4"}
    assert _step(obs(3, 5, leader=4, op=op)) == p.TransferLeadership("demo-4", "demo-0")
    assert _step(obs(3, 5, leader=1, op=op)) == p.RemoveMember("demo-4")


@pytest.mark.parametrize(("o", "step"), [
    # NotReady outdated pods first, even before followers
    (obs(3, 3, revision={0: "old", 1: "old", 2: "old"}, not_ready=(1,)),
     p.DeletePod("demo-1", "restarting a NotReady pod first")),
    # then followers, highest ordinal first
    (obs(3, 3, revision={0: "old", 1: "old", 2: "old"}),
     p.DeletePod("demo-2", "follower restart")),
    # a restarted pod still coming up: wait
    (obs(3, 3, revision={0: "old", 1: "old"}, not_ready=(2,)),
     p.Wait("waiting for every pod to be ready before the next restart")),
    # a voter the leader sees as unhealthy (its pod still looks ready): wait
    (replace(obs(3, 3, revision={0: "old", 1: "old"}),
             members=(p.Member("demo-0", True, True), p.Member("demo-1", True, True),
                      p.Member("demo-2", True, False))),
     p.Wait("waiting for every voter to be healthy before the next restart")),
    # only the leader is outdated: hand over to an updated member, then restart it
    (obs(3, 3, revision={0: "old"}), p.TransferLeadership("demo-0", "demo-1")),
    (obs(1, 1, revision={0: "old"}), p.DeletePod("demo-0", "single member restart")),
])
def test_rolling_update_order(o: p.Observed, step: p.Step) -> None:
    assert _step(o) == step


def test_rolling_update_resumes_leader_restart() -> None:
    op = {"type": "Update", "step": "TransferLeadership", "member": "demo-0"}
    assert _step(obs(3, 3, revision={0: "old"}, op=op)) == p.TransferLeadership("demo-0",
                                                                                "demo-1")
    assert _step(obs(3, 3, leader=1, revision={0: "old"}, op=op)) == p.DeletePod(
        "demo-0", "old leader restart")
    op = dict(op, step="DeletePod")
    without_0 = obs(3, 3, leader=1, op=op)
    without_0 = replace(without_0, pods=without_0.pods[1:])
    assert _step(without_0) == p.Wait(
        "waiting for pod demo-0 to come back")
    assert _step(obs(3, 3, leader=1, not_ready=(0,), op=op)) == p.Wait(
        "waiting for pod demo-0 to be ready")
    assert p.plan(obs(3, 3, leader=1, op=op)) == p.Decision(p.Idle(), None)


def test_scale_wins_over_update_and_operations_finish_first() -> None:
    o = obs(4, 3, revision={1: "old"})
    assert _step(o) == p.GrowStatefulSet(4)
    op = {"type": "Update", "step": "DeletePod", "member": "demo-1"}
    assert _step(obs(4, 3, revision={1: "old"}, op=op)) == p.DeletePod("demo-1", "restart")


def test_quorum_recovery_comes_before_a_stuck_operation_and_keeps_it() -> None:
    op = {"type": "ScaleDown", "step": "RemoveMember", "member": "demo-2"}
    stuck = obs(2, 2, leader=None, not_ready=(1,), op=op)
    assert isinstance(p.plan(stuck).step, p.Wait)
    d = p.plan(replace(stuck, recover_quorum=True))
    assert d.step == p.RecoverQuorum(("demo-1",))
    assert d.operation is not None and d.operation.member == "demo-2"


# ---- force-new-cluster (disaster recovery) ----------------------------------------------------

def _lost(positions: dict[int, tuple[int, int] | None], *, size: int = 3,
          op: dict[str, Any] | None = None, **kw: Any) -> p.Observed:
    """No leader; pod i answered /v1/status with (last log term, index) or not at all."""
    o = obs(3, size, leader=None, not_ready=tuple(range(size)), op=op, **kw)
    pods = tuple(replace(pod, log_position=positions.get(pod.ordinal),
                         believes_member=positions.get(pod.ordinal) is not None)
                 for pod in o.pods)
    return replace(o, pods=pods)


REFUSED = "continuum.dev/force-new-cluster=demo-{} refused: "


@pytest.mark.parametrize(("o", "step"), [
    # the only reachable survivor, or the most up-to-date one (ties are fine)
    (_lost({0: (3, 40)}, force_new_cluster="demo-0"), p.ForceNewCluster("demo-0")),
    (_lost({0: (3, 40), 1: (3, 38)}, force_new_cluster="demo-0"), p.ForceNewCluster("demo-0")),
    (_lost({0: (3, 40), 1: (3, 40)}, force_new_cluster="demo-1"), p.ForceNewCluster("demo-1")),
    (_lost({0: (2, 90), 2: (3, 10)}, force_new_cluster="demo-2"), p.ForceNewCluster("demo-2")),
    # a later term beats a longer log
    (_lost({0: (2, 90), 2: (3, 10)}, force_new_cluster="demo-0"), p.RefuseForceNewCluster(
        "demo-0", REFUSED.format(0) + "demo-2 is more up to date (last log term, index "
        "(3, 10)) than demo-0 (2, 90); name the most up-to-date survivor")),
    (_lost({0: (3, 40), 1: (3, 41)}, force_new_cluster="demo-0"), p.RefuseForceNewCluster(
        "demo-0", REFUSED.format(0) + "demo-1 is more up to date (last log term, index "
        "(3, 41)) than demo-0 (3, 40); name the most up-to-date survivor")),
    # the named pod has not answered yet: wait, do not decide
    (_lost({1: (3, 41)}, force_new_cluster="demo-0"),
     p.Wait("waiting for demo-0 to answer, to force a new cluster")),
    (_lost({0: (0, 0)}, force_new_cluster="demo-0"),
     p.RefuseForceNewCluster("demo-0", REFUSED.format(0) + "demo-0 holds no Raft data")),
    (_lost({0: (3, 40)}, force_new_cluster="demo-7"),
     p.RefuseForceNewCluster("demo-7", REFUSED.format(7) + "demo-7 is not a pod of this "
                             "cluster")),
    # the call went through but its answer was lost: record it, do not call again
    (replace(obs(3, 3, members=1), force_new_cluster="demo-0"), p.RefuseForceNewCluster(
        "demo-0", REFUSED.format(0) + "demo-0 already leads alone: nothing to do")),
    # quorum is not lost: never split a working cluster
    (obs(3, 3, force_new_cluster="demo-1"), p.RefuseForceNewCluster(
        "demo-1", REFUSED.format(1) + "the cluster has a leader (demo-0): quorum is not lost")),
])
def test_force_new_cluster(o: p.Observed, step: p.Step) -> None:
    assert _step(o) == step


def test_force_new_cluster_keeps_a_stuck_operation() -> None:
    op = {"type": "ScaleUp", "step": "AddMember", "member": "demo-2", "target": 3}
    d = p.plan(_lost({0: (3, 40)}, op=op, force_new_cluster="demo-0"))
    assert d.step == p.ForceNewCluster("demo-0")
    assert d.operation is not None and d.operation.member == "demo-2"


def _recovered(stale: tuple[int, ...], op: dict[str, Any] | None = None) -> p.Observed:
    """demo-0 leads alone after the recovery; the ``stale`` pods still hold old Raft state."""
    o = obs(3, 3, members=1, op=op)
    pods = tuple(replace(pod, believes_member=pod.ordinal in stale or pod.ordinal == 0)
                 for pod in o.pods)
    return replace(o, pods=pods)


@pytest.mark.parametrize(("o", "step"), [
    # the others come back one at a time, lowest ordinal first
    (_recovered(()), p.AddMember("demo-1")),
    (replace(_recovered(()), members=(p.Member("demo-0", True, True),
                                      p.Member("demo-1", True, True))), p.AddMember("demo-2")),
    # a survivor with the old cluster's state is not added until it has wiped it
    (_recovered((1,)), p.Wait("waiting for demo-1 to discard the Raft state of a "
                              "configuration it is no longer part of")),
    (_recovered((2,), op={"type": "ScaleUp", "step": "AddMember", "member": "demo-2",
                          "target": 3}),
     p.Wait("waiting for demo-2 to discard the Raft state of a configuration it is no "
            "longer part of")),
])
def test_after_a_forced_new_cluster_members_are_added_back(o: p.Observed, step: p.Step) -> None:
    assert _step(o) == step


# ---- restarts and removals wait for members to catch up --------------------------------------

def lagging(o: p.Observed, behind: dict[int, int | None], commit: int = 1000,
            max_lag: int = 100) -> p.Observed:
    """``o`` where member i's match index trails the commit index by ``behind[i]``."""
    members = tuple(replace(m, match_index=None if behind.get(i, 0) is None
                            else commit - (behind.get(i) or 0))
                    for i, m in enumerate(o.members or ()))
    return replace(o, members=members, commit_index=commit, max_lag=max_lag)


def test_the_next_restart_waits_until_the_restarted_member_caught_up() -> None:
    outdated = {0: "rev-1", 1: "rev-1"}  # demo-2 was restarted already
    o = obs(3, 3, revision=outdated)
    assert _step(lagging(o, {2: 0})) == p.DeletePod("demo-1", "follower restart")
    step = _step(lagging(o, {2: 900}))
    assert isinstance(step, p.Wait) and "demo-2 to catch up" in step.reason
    assert "match index 100, leader commit index 1000" in step.reason
    # within the bound counts as caught up; an unknown match index does not
    assert _step(lagging(o, {2: 100})) == p.DeletePod("demo-1", "follower restart")
    assert isinstance(_step(lagging(o, {2: None})), p.Wait)


def test_a_restart_is_done_only_once_the_member_caught_up() -> None:
    op = {"type": "Update", "step": "DeletePod", "member": "demo-2"}
    o = obs(3, 3, op=op, revision={0: "rev-1", 1: "rev-1"})
    decision = p.plan(lagging(o, {2: 500}))
    assert isinstance(decision.step, p.Wait) and decision.operation is not None
    assert decision.operation.member == "demo-2"  # still recorded: the restart is not over
    done = p.plan(lagging(o, {2: 0}))
    assert done.step == p.DeletePod("demo-1", "follower restart")


def test_a_removal_waits_for_the_remaining_voters_unless_forced() -> None:
    o = obs(3, 4)
    step = _step(lagging(o, {1: 700}))
    assert isinstance(step, p.Wait) and "demo-1 to catch up" in step.reason
    assert "before removing demo-3" in step.reason
    assert _step(lagging(o, {3: 700})) == p.RemoveMember("demo-3")  # the victim may lag
    assert _step(lagging(replace(o, force_scale_down=True), {1: 700})) == p.RemoveMember(
        "demo-3")


def test_a_scale_up_finishes_once_the_new_voter_caught_up() -> None:
    op = {"type": "ScaleUp", "step": "AddMember", "member": "demo-3", "target": 4}
    o = obs(5, 4, op=op)
    assert isinstance(_step(lagging(o, {3: 400})), p.Wait)
    assert _step(lagging(o, {3: 0})) == p.GrowStatefulSet(5)


def test_a_leader_that_reports_no_commit_index_is_not_waited_for() -> None:
    o = obs(3, 3, revision={0: "rev-1", 1: "rev-1"})
    assert _step(o) == p.DeletePod("demo-1", "follower restart")


def test_a_member_without_a_pod_is_removed() -> None:
    """A removed node can join again on its own before its pod is gone: once the pod is
    gone, the member it left behind is removed, as the scale-down meant."""
    o = obs(3, 3, members=5, unhealthy=(3, 4))
    decision = p.plan(o)
    assert decision.step == p.RemoveMember("demo-4")
    assert decision.operation is not None and decision.operation.type == "ScaleDown"
    done = obs(3, 3, members=4, unhealthy=(3,),
               op={"type": "ScaleDown", "step": "RemoveMember", "member": "demo-4",
                   "target": 3})
    assert _step(replace(done, pvcs=frozenset())) == p.RemoveMember("demo-3")
    assert _step(obs(3, 3, members=3)) == p.Idle()
