"""Concepts: the node's data, in two consistency domains, behind one rule.

* **strong**: written through Raft (``?consistency=strong``), held by every node's
  state machine (``statemachine.StrongStore``), read linearizably through ReadIndex;
* **eventual**: written on any node into the multi-master CRDT store
  (``replication.MultiMasterReplicator``), spread by pushes and anti-entropy.

One id, one domain: an id in the strong store is strong; else, if the
multi-master store holds it live, it is eventual; else it is free. Writes and
deletes that name the other domain are refused (``errors.WrongConsistency``)
and change nothing. When the first writes of both kinds race on different
nodes, both stores end up holding the id; the strong store wins on every node,
and the leader retires the multi-master copy (a tombstone).

A strong write's answer is decided by what happened to its entry
(``consensus.RaftConsensus.propose``): applied (with the index of this write),
not carried out (``errors.NotLeader``), or unknown (``errors.OutcomeUnknown``).
"""

from __future__ import annotations

import itertools
import logging
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

from . import consensus, errors, replication, statemachine
from .core import load

log = logging.getLogger(__name__)

STRONG_TIMEOUT_SECONDS = 10.0  # a strong write's deadline before its outcome is unknown

ObserveWrite = Callable[[str, float], None]  # (consistency, seconds)
ClockUnfit = Callable[[], str | None]  # why this node's clock may not stamp writes now


def _always_fit() -> str | None:
    return None


class ConceptService:
    def __init__(self, raft: consensus.RaftConsensus, strong: statemachine.StrongStore,
                 replicator: replication.MultiMasterReplicator, observe_write: ObserveWrite,
                 clock_unfit: ClockUnfit = _always_fit) -> None:
        self._raft = raft
        self._clock_unfit = clock_unfit
        self._strong = strong
        self._replicator = replicator
        self._observe = observe_write
        self.in_flight = 0  # writes under way: part of this node's load report
        self.latency_ms: float | None = None  # moving average of write latency
        # A write without a client key still gets a request id (a snapshot that replaces
        # its entry tells by the id whether it was applied): unique per process, and a
        # counter rather than a fresh random UUID per write.
        self._own_ids = itertools.count()
        self._id_prefix = f"~{uuid.uuid4().hex[:16]}-"

    # -- writes -----------------------------------------------------------------------------

    async def put_strong(self, concept_id: str, value: Any, request_id: str) -> dict[str, Any]:
        if concept_id not in self._strong and await self._live_eventual(concept_id):
            raise errors.WrongConsistency(concept_id, "eventual")
        applied = await self._commit({"type": "concept.put", "id": concept_id,
                                      "value": value}, request_id)
        await self._retire_shadow(concept_id)
        return {"id": concept_id, "consistency": "strong", "commit_index": applied.index}

    async def put_eventual(self, concept_id: str, value: Any) -> dict[str, Any]:
        if concept_id in self._strong:
            raise errors.WrongConsistency(concept_id, "strong")
        self._check_clock()
        start = time.perf_counter()
        self.in_flight += 1
        try:
            rv = await self._replicator.write(concept_id, value)
        except replication.ReplicationError as exc:
            raise errors.InvalidInput(str(exc)) from None
        finally:
            self.in_flight -= 1
            self._observed("eventual", start)
        return {"id": concept_id, "consistency": "eventual", "node_id": rv.node_id,
                "version": rv.version.to_dict(), "checksum": rv.checksum}

    async def delete_strong(self, concept_id: str, request_id: str) -> bool:
        """False when there was no such concept. The ReadIndex round makes the check
        current; the entry's own result says whether this delete removed it."""
        await self._raft.read_index()
        if concept_id not in self._strong:
            if await self._live_eventual(concept_id):
                raise errors.WrongConsistency(concept_id, "eventual")
            return False
        await self._retire_shadow(concept_id)  # so the id does not come back as eventual
        applied = await self._commit({"type": "concept.delete", "id": concept_id}, request_id)
        # None: a retried request id that was applied before, i.e. this delete took effect.
        return applied.result is None or bool(applied.result)

    async def delete_eventual(self, concept_id: str) -> bool:
        if concept_id in self._strong:
            raise errors.WrongConsistency(concept_id, "strong")
        self._check_clock()
        return await self._replicator.delete(concept_id)

    def _check_clock(self) -> None:
        """Multi-master writes are ordered by this node's clock: refuse while it is unfit."""
        why = self._clock_unfit()
        if why is not None:
            raise errors.Unavailable(f"multi-master writes refused here: {why}; write through "
                                     "another node, or with ?consistency=strong",
                                     code="clock_unfit")

    async def _commit(self, command: dict[str, Any], request_id: str) -> consensus.Applied:
        start = time.perf_counter()
        self.in_flight += 1
        try:
            rid = request_id or f"{self._id_prefix}{next(self._own_ids):x}"
            return await self._raft.propose(command, request_id=rid,
                                            timeout=STRONG_TIMEOUT_SECONDS)
        finally:
            self.in_flight -= 1
            self._observed("strong", start)

    # -- reads ------------------------------------------------------------------------------

    async def get(self, concept_id: str, *, strong: bool) -> dict[str, Any] | None:
        if strong:
            await self._raft.read_index()
        if concept_id in self._strong:
            return {"id": concept_id, "value": self._strong.get(concept_id),
                    "consistency": "strong"}
        rv = await self._replicator.read_value(concept_id)
        if rv is None or rv.deleted:
            return None
        if strong:
            raise errors.WrongConsistency(concept_id, "eventual")
        value = await self._replicator.read(concept_id)
        if value is None:
            return None
        return {"id": concept_id, "value": value, "consistency": "eventual",
                "node_id": rv.node_id, "version": rv.version.to_dict(), "checksum": rv.checksum}

    def list(self, after: str | None, limit: int) -> list[str]:
        merged = set(self._strong.ids(after, limit)) | set(self._replicator.keys(after, limit))
        return sorted(merged)[:limit]

    def count(self) -> int:
        return len(self._strong) + self._replicator.live_keys

    # -- the two domains --------------------------------------------------------------------

    def on_replicated_change(self, concept_id: str, value: Any) -> Awaitable[None] | None:
        """The replicator merged a change: a multi-master copy of a strong id is retired."""
        if concept_id in self._strong:
            return self._retire_shadow(concept_id)
        return None

    async def _live_eventual(self, concept_id: str) -> bool:
        rv = await self._replicator.read_value(concept_id)
        return rv is not None and not rv.deleted

    async def _retire_shadow(self, concept_id: str) -> None:
        """On the leader: tombstone a multi-master copy of an id the strong store owns.
        Best effort, after the strong write has its answer: a failure here is retried by
        the next change the replicator merges, and never turns that answer into an error."""
        if not (self._raft.is_leader and concept_id in self._strong):
            return
        try:
            if await self._live_eventual(concept_id):
                log.info("concept %s was written both ways at once: the strong value wins",
                         concept_id)
                await self._replicator.delete(concept_id)
        except Exception:
            log.exception("could not retire the multi-master copy of %s", concept_id)

    def _observed(self, consistency: str, start: float) -> None:
        seconds = time.perf_counter() - start
        self._observe(consistency, seconds)
        self.latency_ms = load.ewma(self.latency_ms, seconds * 1000)
