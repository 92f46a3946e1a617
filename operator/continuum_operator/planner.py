"""Pure planner: given what was observed, the next single step to take.

The operator changes a consensus cluster one member at a time. Every step
that starts or advances a multi-step operation comes with the
``status.operation`` to persist *before* the step is executed (write-ahead),
so an operator restarted at any point re-plans from the record and the
observation, and every step is idempotent against both:

- scale up: GrowStatefulSet (one more pod) -> AddMember (the leader adds it
  as a learner, and promotes it once caught up) -> done when it votes;
- scale down: [TransferLeadership off the victim] -> RemoveMember (highest
  ordinal) -> ShrinkStatefulSet once the removal is observed committed (absent
  from the leader's members *and* the leader reports that configuration
  committed) -> ApplyPVCRetention once the pod is gone. A PVC is never deleted
  before its member's removal is confirmed, and a resumed RemoveMember never
  picks a different member than the one recorded;
- update (OnDelete): NotReady outdated pods first, then followers, then
  TransferLeadership and the old leader.

A pod being Ready only says its node knows a leader and is a member, not that it has
the log: so a restart is finished, and the next restart or removal starts, only once
every voter's match index (on the leader) is within ``max_lag`` entries of the leader's
commit index. Restarting the next follower while the previous one still catches up
would leave a bare majority to commit through one slow member.

A scale-down that would leave fewer healthy voters than a quorum is Blocked
unless the ``continuum.dev/force-scale-down`` annotation is set.

Disaster recovery (``continuum.dev/force-new-cluster=<pod>``): only while no leader
is reachable, and only on the most up-to-date reachable survivor by (last log term,
last log index), ForceNewCluster makes that pod the sole voter; any other case is
refused (RefuseForceNewCluster, a Warning). Each annotation value is decided once.
Afterwards the pods that are not members are added back one at a time by the
ordinary path, but never while a pod still holds the old cluster's Raft state (it
wipes that itself once the new leader says it is not a member).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any

from . import manifests
from . import spec as api

# ---- observations -----------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class Pod:
    name: str
    ordinal: int
    ready: bool
    revision: str | None = None
    terminating: bool = False
    ip: str | None = None
    # From the pod's own /v1/status (None: it did not answer): (last log term, last log index)
    log_position: tuple[int, int] | None = None
    # Its own configuration lists it: Raft state it keeps until it is told it was left out.
    believes_member: bool = False
    node: str | None = None           # the Kubernetes node it is scheduled on


@dataclass(frozen=True, slots=True)
class Member:
    id: str
    voter: bool
    healthy: bool
    match_index: int | None = None    # the leader's record of this member's log


@dataclass(frozen=True, slots=True)
class Observed:
    name: str
    desired: int
    sts_replicas: int | None          # None: no StatefulSet yet
    update_revision: str | None = None
    pods: tuple[Pod, ...] = ()
    members: tuple[Member, ...] | None = None   # None: no reachable leader
    leader: str | None = None
    commit_index: int | None = None   # the leader's (None: not reported)
    max_lag: int = 100                # entries a voter may trail it and count as caught up
    # The leader's ``members`` is its latest configuration, in force once appended; True only
    # when the leader reports that configuration committed (a missing report counts as False).
    membership_committed: bool = False
    operation: api.Operation | None = None
    pvcs: frozenset[str] = frozenset()
    force_scale_down: bool = False
    recover_quorum: bool = False      # a new recover-quorum annotation value
    force_new_cluster: str | None = None  # the pod of a new force-new-cluster annotation value
    pvc_when_scaled: str = "Delete"
    started_at: str | None = None     # timestamp to stamp new operations with

    def pod(self, name: str) -> Pod | None:
        return next((p for p in self.pods if p.name == name), None)

    def member(self, name: str) -> Member | None:
        if self.members is None:
            return None
        return next((m for m in self.members if m.id == name), None)

    @property
    def voters(self) -> list[Member]:
        return [m for m in self.members or () if m.voter]


def membership_committed(leader_status: Mapping[str, Any] | None) -> bool:
    """The leader's ``membership_committed``; absent (an older node) or not True is False."""
    return (leader_status or {}).get("membership_committed") is True


# ---- steps ------------------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class Wait:
    reason: str


@dataclass(frozen=True, slots=True)
class Idle:
    pass


@dataclass(frozen=True, slots=True)
class Blocked:
    reason: str


@dataclass(frozen=True, slots=True)
class GrowStatefulSet:
    to: int


@dataclass(frozen=True, slots=True)
class ShrinkStatefulSet:
    to: int


@dataclass(frozen=True, slots=True)
class AddMember:
    member: str


@dataclass(frozen=True, slots=True)
class RemoveMember:
    member: str


@dataclass(frozen=True, slots=True)
class TransferLeadership:
    from_member: str
    to: str | None


@dataclass(frozen=True, slots=True)
class ApplyPVCRetention:
    member: str
    pvc: str
    delete: bool


@dataclass(frozen=True, slots=True)
class DeletePod:
    pod: str
    reason: str


@dataclass(frozen=True, slots=True)
class RecoverQuorum:
    pods: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class ForceNewCluster:
    pod: str


@dataclass(frozen=True, slots=True)
class RefuseForceNewCluster:
    pod: str
    reason: str


Step = (Wait | Idle | Blocked | GrowStatefulSet | ShrinkStatefulSet | AddMember | RemoveMember
        | TransferLeadership | ApplyPVCRetention | DeletePod | RecoverQuorum | ForceNewCluster
        | RefuseForceNewCluster)

@dataclass(frozen=True, slots=True)
class Decision:
    """``step`` to execute after persisting ``operation`` (``None`` clears it)."""

    step: Step
    operation: api.Operation | None


def _decide(step: Step, op: api.Operation | None) -> Decision:
    return Decision(step, op)


def _op(o: Observed, type_: str, step: str, member: str, **kw: object) -> api.Operation:
    return api.Operation.model_validate({"type": type_, "step": step, "member": member,
                                         "started_at": o.started_at, **kw})


def _pod_name(o: Observed, ordinal: int) -> str:
    return f"{o.name}-{ordinal}"


def _safe_to_remove(o: Observed, victim: str) -> str | None:
    """Why removing ``victim`` would lose quorum, or None when it is safe."""
    voters = o.voters
    remaining = [m for m in voters if m.id != victim]
    healthy = [m for m in remaining if m.healthy]
    need = manifests.quorum(len(remaining)) if remaining else 1
    if len(healthy) < need:
        return (f"removing {victim} would leave {len(healthy)} healthy of {len(remaining)} "
                f"voters, below the quorum of {need}")
    return None


def _behind(o: Observed, names: list[str] | None = None) -> str | None:
    """Why a voter (of ``names``, default all) has not caught up with the leader, or None."""
    if o.commit_index is None:
        return None  # a node that does not report it: nothing to wait for
    for m in o.voters:
        if names is not None and m.id not in names:
            continue
        if m.match_index is None or o.commit_index - m.match_index > o.max_lag:
            have = "unknown" if m.match_index is None else str(m.match_index)
            return (f"waiting for {m.id} to catch up: match index {have}, leader commit index "
                    f"{o.commit_index} (allowed lag {o.max_lag})")
    return None


# ---- the planner ------------------------------------------------------------------------------

def plan(o: Observed) -> Decision:
    if o.sts_replicas is None:
        return _decide(Wait("StatefulSet not created yet"), o.operation)
    if o.force_new_cluster is not None:
        return _force_new_cluster(o, o.force_new_cluster)  # keeps any operation, too
    if o.members is None and o.recover_quorum:
        return _no_leader(o)  # recovery comes before any operation, which it keeps
    if o.operation is not None:
        return _resume(o, o.operation)
    if o.members is None:
        return _no_leader(o)
    return _next(o)


def _no_leader(o: Observed) -> Decision:
    if o.recover_quorum:
        stuck = tuple(p.name for p in o.pods if not p.ready and not p.terminating)
        if stuck:
            return _decide(RecoverQuorum(stuck), o.operation)
    if not o.pods:
        return _decide(Wait("waiting for the first pod"), o.operation)
    return _decide(Wait("no leader: the cluster has no quorum"), o.operation)


def _force_new_cluster(o: Observed, target: str) -> Decision:
    def refuse(why: str) -> Decision:
        return _decide(RefuseForceNewCluster(target, f"{api.FORCE_NEW_CLUSTER}={target} "
                                             f"refused: {why}"), o.operation)

    if o.members is not None:
        if o.leader == target and [m.id for m in o.voters] == [target]:
            # Our call went through but its answer was lost (or someone else did it).
            return refuse(f"{target} already leads alone: nothing to do")
        return refuse(f"the cluster has a leader ({o.leader}): quorum is not lost")
    ordinal = manifests.ordinal(o.name, target)
    if ordinal is None or ordinal >= (o.sts_replicas or 0):
        return refuse(f"{target} is not a pod of this cluster")
    pod = o.pod(target)
    if pod is None or pod.terminating or pod.log_position is None:
        return _decide(Wait(f"waiting for {target} to answer, to force a new cluster"),
                       o.operation)
    if pod.log_position[1] == 0:
        return refuse(f"{target} holds no Raft data")
    ahead = [p for p in o.pods if p.name != target and p.log_position is not None
             and p.log_position > pod.log_position]
    if ahead:
        best = max(ahead, key=lambda p: (p.log_position, -p.ordinal))
        return refuse(f"{best.name} is more up to date (last log term, index "
                      f"{best.log_position}) than {target} {pod.log_position}; "
                      f"name the most up-to-date survivor")
    return _decide(ForceNewCluster(target), o.operation)


def _stale(o: Observed, name: str) -> Wait | None:
    """A pod left out of the cluster that still holds its old Raft state is not added
    (its log conflicts with the leader's); it discards the state by itself first."""
    pod = o.pod(name)
    if pod is not None and pod.believes_member and o.member(name) is None:
        return Wait(f"waiting for {name} to discard the Raft state of a configuration "
                    "it is no longer part of")
    return None


def _next(o: Observed) -> Decision:
    size = o.sts_replicas or 0
    # A pod that exists but is not a member finishes joining first (an interrupted scale-up).
    for ordinal in range(size):
        name = _pod_name(o, ordinal)
        m = o.member(name)
        if (m is None or not m.voter) and ordinal < o.desired:
            if o.pod(name) is None:
                return _decide(Wait(f"waiting for pod {name}"), None)
            if (stale := _stale(o, name)) is not None:
                return _decide(stale, None)
            op = _op(o, "ScaleUp", "AddMember", name, target=size)
            return _decide(AddMember(name), op)
    if (stray := _stray(o, size)) is not None:
        return stray
    if o.desired > size:
        return _scale_up(o, size)
    if o.desired < size:
        return _scale_down(o, size)
    return _update(o)


def _stray(o: Observed, size: int) -> Decision | None:
    """A member whose pod the StatefulSet no longer runs (say a removed node that joined
    again on its own before its pod was gone): removed as a scale-down would have."""
    strays = sorted((m for m in o.members or ()
                     if (manifests.ordinal(o.name, m.id) or -1) >= size),
                    key=lambda m: -(manifests.ordinal(o.name, m.id) or 0))
    if not strays:
        return None
    victim = strays[0].id
    if (why := _safe_to_remove(o, victim)) is not None:
        return _decide(Wait(f"member {victim} has no pod, but {why}"), None)
    if o.leader == victim:
        op = _op(o, "ScaleDown", "TransferLeadership", victim, target=size)
        return _decide(TransferLeadership(victim, _transfer_target(o, exclude=victim)), op)
    return _decide(RemoveMember(victim), _op(o, "ScaleDown", "RemoveMember", victim,
                                             target=size))


def _scale_up(o: Observed, size: int) -> Decision:
    name = _pod_name(o, size)
    return _decide(GrowStatefulSet(size + 1), _op(o, "ScaleUp", "GrowStatefulSet", name,
                                                   target=size + 1))


def _scale_down(o: Observed, size: int) -> Decision:
    victim = _pod_name(o, size - 1)
    if o.member(victim) is None:
        if not o.membership_committed:
            return _decide(Wait(_uncommitted(victim)), None)
        op = _op(o, "ScaleDown", "ShrinkStatefulSet", victim, target=size - 1,
                 removal_confirmed=True)
        return _decide(ShrinkStatefulSet(size - 1), op)
    why = _safe_to_remove(o, victim)
    if why is not None and not o.force_scale_down:
        return _decide(Blocked(f"scale-down refused: {why}; set the annotation "
                               f"{api.FORCE_SCALE_DOWN}=true to override"), None)
    remaining = [m.id for m in o.voters if m.id != victim]
    if not o.force_scale_down and (behind := _behind(o, remaining)) is not None:
        return _decide(Wait(f"{behind}, before removing {victim}"), None)
    if o.leader == victim:
        to = _transfer_target(o, exclude=victim)
        op = _op(o, "ScaleDown", "TransferLeadership", victim, target=size - 1)
        return _decide(TransferLeadership(victim, to), op)
    op = _op(o, "ScaleDown", "RemoveMember", victim, target=size - 1)
    return _decide(RemoveMember(victim), op)


def _transfer_target(o: Observed, exclude: str, prefer_revision: str | None = None) -> str | None:
    candidates = [m for m in o.voters if m.healthy and m.id != exclude]
    if prefer_revision is not None:
        updated = [m for m in candidates
                   if (p := o.pod(m.id)) is not None and p.revision == prefer_revision]
        candidates = updated or candidates
    candidates.sort(key=lambda m: manifests.ordinal(o.name, m.id) or 0)
    return candidates[0].id if candidates else None


def _update(o: Observed) -> Decision:
    if o.update_revision is None:
        return _decide(Idle(), None)
    outdated = [p for p in o.pods if p.revision != o.update_revision and not p.terminating]
    if not outdated:
        return _decide(Idle(), None)
    for p in sorted(outdated, key=lambda p: -p.ordinal):
        if not p.ready:
            op = _op(o, "Update", "DeletePod", p.name)
            return _decide(DeletePod(p.name, "restarting a NotReady pod first"), op)
    if any(not p.ready or p.terminating for p in o.pods):
        return _decide(Wait("waiting for every pod to be ready before the next restart"), None)
    if any(not m.healthy for m in o.voters):
        return _decide(Wait("waiting for every voter to be healthy before the next restart"),
                       None)
    if (behind := _behind(o)) is not None:
        return _decide(Wait(f"{behind}, before the next restart"), None)
    followers = [p for p in outdated if p.name != o.leader]
    if followers:
        p = max(followers, key=lambda p: p.ordinal)
        return _decide(DeletePod(p.name, "follower restart"), _op(o, "Update", "DeletePod",
                                                                  p.name))
    leader = outdated[0].name
    to = _transfer_target(o, exclude=leader, prefer_revision=o.update_revision)
    if to is None:  # a single-member cluster has nobody to hand over to
        return _decide(DeletePod(leader, "single member restart"),
                       _op(o, "Update", "DeletePod", leader))
    return _decide(TransferLeadership(leader, to),
                   _op(o, "Update", "TransferLeadership", leader))


# ---- resuming an operation --------------------------------------------------------------------

def _resume(o: Observed, op: api.Operation) -> Decision:
    if op.type == "ScaleUp":
        return _resume_up(o, op)
    if op.type == "ScaleDown":
        return _resume_down(o, op)
    return _resume_update(o, op)


def _done(o: Observed) -> Decision:
    """The operation finished: plan afresh without it (clearing the record)."""
    fresh = plan(replace(o, operation=None))
    return Decision(fresh.step, fresh.operation)


def _resume_up(o: Observed, op: api.Operation) -> Decision:
    target = op.target or 0
    if op.step == "GrowStatefulSet" and (o.sts_replicas or 0) < target:
        return _decide(GrowStatefulSet(target), op)
    if o.members is None:
        return _decide(Wait("no leader: waiting to add the new member"), op)
    m = o.member(op.member)
    if m is not None and m.voter:
        if (behind := _behind(o, [op.member])) is not None:
            return _decide(Wait(behind), op)
        return _done(o)
    pod = o.pod(op.member)
    if pod is None or pod.terminating:
        return _decide(Wait(f"waiting for pod {op.member}"), replace_step(op, "AddMember"))
    if (stale := _stale(o, op.member)) is not None:
        return _decide(stale, op)
    return _decide(AddMember(op.member), replace_step(op, "AddMember"))


def replace_step(op: api.Operation, step: str, **kw: object) -> api.Operation:
    return op.model_copy(update={"step": step, **kw})


def _resume_down(o: Observed, op: api.Operation) -> Decision:
    ordinal = manifests.ordinal(o.name, op.member)
    if ordinal is None:
        return _decide(Blocked(f"recorded operation names an unknown member {op.member}"), op)
    if not op.removal_confirmed:
        if o.members is None:
            return _decide(Wait(f"no leader: cannot confirm the removal of {op.member}"), op)
        if o.member(op.member) is not None:
            if o.leader == op.member:
                to = _transfer_target(o, exclude=op.member)
                return _decide(TransferLeadership(op.member, to),
                               replace_step(op, "TransferLeadership"))
            return _decide(RemoveMember(op.member), replace_step(op, "RemoveMember"))
        if not o.membership_committed:
            return _decide(Wait(_uncommitted(op.member)), op)
        op = replace_step(op, "ShrinkStatefulSet", removal_confirmed=True)
    if (o.sts_replicas or 0) > ordinal:
        return _decide(ShrinkStatefulSet(ordinal), replace_step(op, "ShrinkStatefulSet"))
    pod = o.pod(op.member)
    if pod is not None:
        return _decide(Wait(f"waiting for pod {op.member} to terminate"), op)
    pvc = f"data-{op.member}"
    delete = o.pvc_when_scaled == "Delete"
    if delete and pvc in o.pvcs:
        return _decide(ApplyPVCRetention(op.member, pvc, delete=True),
                       replace_step(op, "ApplyPVCRetention"))
    return _done(o)


def _uncommitted(member: str) -> str:
    return f"the removal of {member} is not committed yet"


def _resume_update(o: Observed, op: api.Operation) -> Decision:
    pod = o.pod(op.member)
    if op.step == "TransferLeadership":
        if o.members is None:
            return _decide(Wait("no leader: waiting to move leadership"), op)
        if o.leader == op.member:
            to = _transfer_target(o, exclude=op.member, prefer_revision=o.update_revision)
            return _decide(TransferLeadership(op.member, to), op)
        if pod is not None and pod.revision != o.update_revision and not pod.terminating:
            return _decide(DeletePod(op.member, "old leader restart"),
                           replace_step(op, "DeletePod"))
    if pod is None or pod.terminating:
        return _decide(Wait(f"waiting for pod {op.member} to come back"), op)
    if pod.revision != o.update_revision:
        return _decide(DeletePod(op.member, "restart"), replace_step(op, "DeletePod"))
    if not pod.ready:
        return _decide(Wait(f"waiting for pod {op.member} to be ready"), op)
    if o.members is None:
        return _decide(Wait(f"no leader: waiting to see {op.member} catch up"), op)
    if (behind := _behind(o, [op.member])) is not None:
        return _decide(Wait(behind), op)
    return _done(o)
