"""FederationCoordinator: node registry, active health checks, load-balanced selection.

The asyncio shell around three pure cores:

* ``core.registry``: which nodes exist, where, and their health status. Every
  change is a command; with ``replicate`` (the node daemon passes Raft's
  ``append_entry``) commands go through the Raft log and come back through
  ``apply_command`` on every replica, so a new leader's coordinator carries on
  from the same registry. Without it, commands apply here and persist under
  ``storage_path`` (with ``replicate``, Raft's own storage holds the registry
  and ``storage_path`` is not used).
* ``core.health_checks``: consecutive-result counters, the status transition table
  and the panic guard. Only the *active* coordinator (``is_active()``: "am I
  the Raft leader") probes and proposes status changes.
* ``core.balancing``: the selection algorithms.

Health checks: every ``health_check_interval`` the active coordinator sends
``peer.ping`` to every registered node over mutual TLS and requires the
answer to come from a certificate that speaks for that node id. Without any
transport (the in-process mode of the spec's snippets) a node's heartbeat
within the last 1.5 intervals counts as a passed check instead.

TLS: ``tls_cert``, ``tls_key`` and ``tls_ca`` as the spec names them. Without
``tls_ca`` the ``ca.crt`` beside the certificate is the CA (a cert-manager
Secret's layout); with none there, construction fails, since mutual
authentication has nothing to verify peers against.

Heartbeat load figures (``load_score``, ``latency_ms``, ``capacity``) are kept
locally and never replicated: they change many times a second and every node's
coordinator hears them directly (from the gossip mesh or ``coord.heartbeat``),
so writing them through Raft would only add load to the log.

Selection prefers HEALTHY nodes and falls back to DEGRADED ones (missed a
probe, still inside ``unhealthy_threshold``) only when no healthy node
qualifies, as Envoy does with degraded hosts; UNKNOWN and UNHEALTHY nodes are
never selected.

Why one long file: it is the spec's ``FederationCoordinator``, one class whose
registry, health rounds and selection share the same entries; the decisions
are in the cores above, and what stays here is the asyncio around them.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import logging
import math
import os
import random
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgpack

from . import errors, storage
from .core import balancing, health_checks, registry
from .transport import link, peer

log = logging.getLogger(__name__)

NodeStatus = health_checks.NodeStatus

# Proposes a command through Raft; returns what applying it returned here (the
# ``registry.Applied``), or raises one of the package's errors when it was not applied.
Replicate = Callable[[dict[str, Any]], Awaitable[Any]]
IsActive = Callable[[], bool]

HEARTBEAT_KIND = "coord.heartbeat"
HEARTBEAT_KEYS = frozenset({"load_score", "latency_ms", "capacity", "uptime_seconds"})
HEARTBEAT_TTL_INTERVALS = 1.5  # in-process mode: a heartbeat this recent passes a check
RTT_EWMA_WEIGHT = 0.3  # weight of the newest probe round-trip in the average

_NODES_NS = "coord.nodes"
_META_NS = "coord.meta"


class CoordinatorError(RuntimeError):
    """A registry change could not be made (e.g. not committed through Raft)."""


class UnknownNodeError(LookupError):
    """The node id is not registered (``heartbeat`` returns False instead of raising it)."""


@dataclass(frozen=True, slots=True)
class LoadBalance:
    algorithm: str = "least_loaded"  # least_loaded | latency | round_robin | random
    health_check_interval: float = 10.0  # seconds between health-check rounds
    unhealthy_threshold: int = 3  # consecutive failed checks before a node leaves rotation
    healthy_threshold: int = 2  # consecutive passed checks before it comes back
    probe_timeout: float = 2.0  # seconds one probe may take
    panic_threshold: float = 0.5  # more than this fraction failing at once: evict nobody
    choices: int = 2  # candidates sampled by least_loaded and latency (0: all)
    max_concurrent_probes: int = 64
    seed: int | None = None  # for the selection RNG; None: from the OS

    def __post_init__(self) -> None:
        if self.algorithm not in balancing.ALGORITHMS:
            raise ValueError(f"unknown algorithm {self.algorithm!r}; "
                             f"known: {', '.join(balancing.ALGORITHMS)}")
        for name in ("health_check_interval", "probe_timeout"):
            value = getattr(self, name)
            if not isinstance(value, int | float) or not math.isfinite(value) or value <= 0:
                raise ValueError(f"{name} must be a positive number of seconds, got {value!r}")
        if self.choices < 0 or self.max_concurrent_probes < 1:
            raise ValueError("choices must be >= 0 and max_concurrent_probes >= 1")
        _ = self.policy  # building the policy validates the thresholds

    @property
    def policy(self) -> health_checks.HealthPolicy:
        return health_checks.HealthPolicy(self.unhealthy_threshold, self.healthy_threshold,
                                   self.panic_threshold)


@dataclass(frozen=True, slots=True)
class NodeInfo:
    """A snapshot of one registered node, as returned by ``select_node`` and ``get_node``.

    Attributes also read as keys (``node["address"]``) for dict-minded callers.
    """

    node_id: str
    address: str
    status: health_checks.NodeStatus
    metadata: Mapping[str, Any]
    load_score: float | None
    latency_ms: float | None
    capacity: Mapping[str, float]
    last_heartbeat: float | None  # wall-clock seconds
    probe_rtt_ms: float | None
    consecutive_failures: int
    consecutive_successes: int
    registered_at: float
    status_changed_at: float
    uptime_seconds: float | None = None  # as the node last reported it

    @property
    def id(self) -> str:
        return self.node_id

    @property
    def healthy(self) -> bool:
        return self.status is NodeStatus.HEALTHY

    def __getitem__(self, key: str) -> Any:
        if key == "id" or key in self.__dataclass_fields__:
            return getattr(self, key)
        raise KeyError(key)

    def to_dict(self) -> dict[str, Any]:
        out = {name: getattr(self, name) for name in self.__dataclass_fields__}
        out["status"] = self.status.value
        out["metadata"] = dict(self.metadata)
        out["capacity"] = dict(self.capacity)
        return out


StatusListener = Callable[[NodeInfo, health_checks.NodeStatus], None]

# The original module's name for a registered node's record.
NodeHealth = NodeInfo


class _Entry:
    """The registry record plus local figures; what the balancer compares (a ``Candidate``)."""

    __slots__ = ("address", "capacity", "generation", "heartbeat_mono", "info", "last_heartbeat",
                 "load_score", "metadata", "node_id", "probe_rtt_ms", "registered_at",
                 "reported_latency_ms", "status", "status_changed_at", "uptime_seconds")

    def __init__(self, rec: registry.NodeRecord) -> None:
        self.node_id = rec.node_id
        self.load_score: float | None = None
        self.reported_latency_ms: float | None = None
        self.capacity: dict[str, float] = {}
        self.last_heartbeat: float | None = None
        self.heartbeat_mono: float | None = None
        self.probe_rtt_ms: float | None = None
        self.uptime_seconds: float | None = None
        self.info: NodeInfo | None = None  # cached view; reset on every change
        self.update(rec)

    def update(self, rec: registry.NodeRecord) -> None:
        self.address = rec.address
        self.metadata = rec.metadata
        self.status = rec.status
        self.generation = rec.generation
        self.registered_at = rec.registered_at
        self.status_changed_at = rec.status_changed_at
        self.info = None

    @property
    def latency_ms(self) -> float | None:
        """What the node reports; failing that, what our probes measured."""
        return self.reported_latency_ms if self.reported_latency_ms is not None \
            else self.probe_rtt_ms


def _check_heartbeat(metrics: Any) -> tuple[float | None, float | None, dict[str, float] | None,
                                            float | None]:
    if metrics is None:
        return None, None, None, None
    if not isinstance(metrics, Mapping):
        raise ValueError(f"heartbeat metrics must be a dict, got {type(metrics).__name__}")
    unknown = set(metrics) - HEARTBEAT_KEYS
    if unknown:
        raise ValueError(f"unknown heartbeat fields {sorted(unknown)}; "
                         f"known: {sorted(HEARTBEAT_KEYS)}")

    def number(name: str, value: Any) -> float | None:
        if value is None:
            return None
        if (isinstance(value, bool) or not isinstance(value, int | float)
                or not math.isfinite(value) or value < 0):
            raise ValueError(f"heartbeat {name} must be a finite number >= 0, got {value!r}")
        return float(value)

    capacity = metrics.get("capacity")
    cap: dict[str, float] | None = None
    if capacity is not None:
        if not isinstance(capacity, Mapping):
            raise ValueError("heartbeat capacity must be a dict of numbers")
        cap = {}
        for k, v in capacity.items():
            if not isinstance(k, str):
                raise ValueError(f"heartbeat capacity keys must be strings, got {k!r}")
            n = number(f"capacity.{k}", v)
            if n is not None:
                cap[k] = n
    return (number("load_score", metrics.get("load_score")),
            number("latency_ms", metrics.get("latency_ms")), cap,
            number("uptime_seconds", metrics.get("uptime_seconds")))


class FederationCoordinator:
    def __init__(
        self,
        node_id: str,
        bind_address: str | None = None,
        tls_cert: str | None = None,
        tls_key: str | None = None,
        tls_ca: str | None = None,
        load_balance: LoadBalance | None = None,
        storage_path: str | os.PathLike[str] | None = None,
        *,
        transport: peer.PeerTransport | None = None,
        insecure: bool = False,  # plain HTTP on bind_address: tests only (transport.link)
        replicate: Replicate | None = None,
        is_active: IsActive | None = None,
        peer_domain: str | None = None,
    ) -> None:
        registry.check_node_id(node_id)
        self.node_id = node_id
        self.load_balance = load_balance or LoadBalance()
        if not isinstance(self.load_balance, LoadBalance):
            raise TypeError("load_balance must be a LoadBalance")
        self.storage_path = Path(storage_path) if storage_path is not None else None
        # Given TLS files but no bind_address, a client only: enough to probe.
        self._link = link.PeerLink.build(node_id, transport=transport, bind_address=bind_address,
                                         tls_cert=tls_cert, tls_key=tls_key, tls_ca=tls_ca,
                                         peer_domain=peer_domain, client_only=True,
                                         insecure=insecure)
        self.transport = self._link.transport
        self._replicate = replicate
        self._is_active = is_active
        self._registry = registry.Registry()
        self._entries: dict[str, _Entry] = {}
        self._monitor = health_checks.HealthMonitor(self.load_balance.policy)
        self._rng = random.Random(self.load_balance.seed)
        self._cursor = 0
        self._last_criteria: tuple[dict[str, Any], balancing.Criteria | None] | None = None
        self._healthy: list[_Entry] = []
        self._degraded: list[_Entry] = []
        self._dirty = True
        self._listeners: list[StatusListener] = []
        self._store: storage.DurableStore | None = None
        self._task: asyncio.Task[None] | None = None
        self._stopping = asyncio.Event()
        self._health_lock = asyncio.Lock()
        self._probe_sem = asyncio.Semaphore(self.load_balance.max_concurrent_probes)
        self._background: set[asyncio.Task[None]] = set()
        self._was_active = False
        self._panic = False
        self._created = time.monotonic()
        self._stats = dict.fromkeys(
            ("registrations", "deregistrations", "heartbeats", "selections", "selections_empty",
             "health_checks", "health_check_failures", "health_rounds", "failovers",
             "recoveries", "panic_rounds", "evictions_held", "proposals_failed"), 0)
        if self.transport is not None:
            self.transport.on(HEARTBEAT_KIND, self._on_heartbeat_message)

    # -- lifecycle -----------------------------------------------------------------------

    async def start(self) -> None:
        if self._task is not None:
            return
        self._stopping.clear()
        await self._link.start()
        if self.storage_path is not None and self._replicate is None:
            self._store = storage.DurableStore(self.storage_path / "coordinator.db")
            self._load(self._store)
        self._task = asyncio.get_running_loop().create_task(self._run(),
                                                            name=f"coordinator:{self.node_id}")

    async def stop(self) -> None:
        self._stopping.set()
        tasks = [t for t in (self._task, *self._background) if t is not None]
        for t in tasks:
            t.cancel()
        for t in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await t
        self._task = None
        self._background.clear()
        if self._store is not None:
            self._store.close()
            self._store = None
        await self._link.stop()

    @property
    def address(self) -> str | None:
        return self.transport.address if self.transport is not None else None

    def is_active(self) -> bool:
        """Whether this coordinator probes and proposes status changes (the Raft leader's)."""
        return self._is_active() if self._is_active is not None else True

    def register_status_callback(self, listener: StatusListener) -> None:
        """Call ``listener(node_info, old_status)`` after every applied status change."""
        self._listeners.append(listener)

    # -- the spec's API ------------------------------------------------------------------

    async def register_node(self, node_id: str, address: str,
                            metadata: Mapping[str, Any] | None = None) -> NodeInfo:
        """Register (or update) a node; returns its record once the change is applied."""
        registry.check_node_id(node_id)
        registry.check_address(address)
        meta = registry.check_metadata(metadata)
        await self._propose(registry.register_command(node_id, address, meta, time.time()))
        self._stats["registrations"] += 1
        entry = self._entries.get(node_id)
        if entry is None:
            raise CoordinatorError(f"node {node_id!r} was deregistered meanwhile")
        if entry.status is NodeStatus.UNKNOWN and self.transport is not None:
            # Probe at once rather than make a new node wait a whole interval for traffic.
            self._spawn(lambda: self._probe_one(node_id))
        return self._info(entry)

    async def deregister_node(self, node_id: str) -> bool:
        """Remove a node; False if it was not registered."""
        registry.check_node_id(node_id)
        if node_id not in self._entries:
            return False
        applied = await self._propose(registry.deregister_command(node_id, time.time()))
        if applied.ok:
            self._stats["deregistrations"] += 1
        return applied.ok

    async def heartbeat(self, node_id: str, metrics: Mapping[str, Any] | None = None) -> bool:
        """Record a node's load report (kept locally, see the module docstring).

        True when recorded; False, changing nothing, when ``node_id`` is not registered
        (as in the original module). Malformed metrics raise ``ValueError``.
        """
        load, latency, capacity, uptime = _check_heartbeat(metrics)
        entry = self._entries.get(node_id)
        if entry is None:
            log.debug("heartbeat from unregistered node %r ignored", node_id)
            return False
        if uptime is not None:
            entry.uptime_seconds = uptime
        if load is not None:
            entry.load_score = load
        if latency is not None:
            entry.reported_latency_ms = latency
        if capacity is not None:
            entry.capacity = capacity
        entry.last_heartbeat = time.time()
        entry.info = None
        entry.heartbeat_mono = time.monotonic()
        self._stats["heartbeats"] += 1
        if entry.status is NodeStatus.UNKNOWN and self.is_active():
            # First sign of life: a new node routes at once instead of after a round.
            await self._observe({node_id: True}, {node_id: entry.generation})
        return True

    async def select_node(self, criteria: Mapping[str, Any] | None = None) -> NodeInfo | None:
        """A healthy node chosen by the configured algorithm, or None if none qualifies."""
        crit = self._parse_criteria(criteria)
        if self._dirty:
            self._rebuild_candidates()
        algorithm, choices = self.load_balance.algorithm, self.load_balance.choices
        choice: _Entry | None = None
        for pool in (self._healthy, self._degraded):
            choice, self._cursor = balancing.select(algorithm, pool, self._rng, self._cursor,
                                                    choices, crit)
            if choice is not None:
                break
        self._stats["selections"] += 1
        if choice is None:
            self._stats["selections_empty"] += 1
            return None
        return self._info(choice)

    def _parse_criteria(self, raw: Mapping[str, Any] | None) -> balancing.Criteria | None:
        # Callers tend to pass the same criteria each time; comparing is cheaper than parsing.
        if not raw:
            return None
        cached = self._last_criteria
        if cached is not None and cached[0] == raw:
            return cached[1]
        crit = balancing.Criteria.parse(raw)
        self._last_criteria = (copy.deepcopy(dict(raw)), crit)
        return crit

    async def get_node(self, node_id: str) -> NodeInfo | None:
        entry = self._entries.get(node_id)
        return None if entry is None else self._info(entry)

    async def get_all_nodes(
        self, status_filter: NodeStatus | str | Iterable[NodeStatus | str] | None = None,
    ) -> list[NodeInfo]:
        """Every registered node in id order, optionally only those with the given status(es)."""
        wanted = _statuses(status_filter)
        return [self._info(e) for _, e in sorted(self._entries.items())
                if wanted is None or e.status in wanted]

    def get_stats(self) -> dict[str, Any]:
        """Counts and rates. ``success_rate`` is the fraction of health checks that passed.

        The original module's keys are there too: ``coordinator_id``,
        ``load_balance_algorithm``, ``uptime_seconds`` (since construction), and
        ``total_requests`` / ``total_failures``, the health checks this coordinator
        made and those that failed, so ``success_rate`` is still
        ``1 - total_failures / max(total_requests, 1)``.
        """
        by_status = {s.value: 0 for s in NodeStatus}
        for e in self._entries.values():
            by_status[e.status.value] += 1
        checks = self._stats["health_checks"]
        failed = self._stats["health_check_failures"]
        rtts = [e.probe_rtt_ms for e in self._entries.values() if e.probe_rtt_ms is not None]
        return {
            "node_id": self.node_id,
            "algorithm": self.load_balance.algorithm,
            "active": self.is_active(),
            "replicated": self._replicate is not None,
            "total_nodes": len(self._entries),
            "healthy_nodes": by_status[NodeStatus.HEALTHY.value],
            "nodes_by_status": by_status,
            "success_rate": (checks - failed) / checks if checks else 1.0,
            "panic": self._panic,
            "avg_probe_rtt_ms": sum(rtts) / len(rtts) if rtts else None,
            "registry_revision": self._registry.revision,
            **self._stats,
            "coordinator_id": self.node_id,
            "load_balance_algorithm": self.load_balance.algorithm,
            "uptime_seconds": time.monotonic() - self._created,
            "total_requests": checks,
            "total_failures": failed,
        }

    # -- replication -----------------------------------------------------------------------

    def apply_command(self, command: Mapping[str, Any]) -> registry.Applied:
        """Apply a committed ``coord.*`` command (the node daemon calls this from Raft's
        apply); what it returns reaches the proposer through Raft."""
        return self._apply(command)

    def snapshot(self) -> dict[str, Any]:
        """The registry as plain data (for Raft snapshots)."""
        return self._registry.snapshot()

    def restore(self, snapshot: Mapping[str, Any]) -> None:
        """Replace the registry with a snapshot (Raft installed one); local figures are kept."""
        self._registry = registry.Registry.from_snapshot(snapshot)
        old = self._entries
        self._entries = {}
        for rec in self._registry:
            entry = old.get(rec.node_id)
            if entry is None:
                entry = _Entry(rec)
            else:
                entry.update(rec)
            self._entries[rec.node_id] = entry
        for nid in set(self._monitor.counters) - set(self._entries):
            self._monitor.forget(nid)
        self._dirty = True

    async def _propose(self, command: dict[str, Any]) -> registry.Applied:
        registry.validate(command)
        if self._replicate is None:
            applied = self._apply(command)
            await self._persist(applied.changed)
            return applied
        try:
            result = await self._replicate(command)
        except errors.FederationError as exc:
            raise CoordinatorError(f"{command['type']} was not committed: {exc}") from None
        if not isinstance(result, registry.Applied):
            raise CoordinatorError(f"{command['type']} committed but was not applied here")
        return result

    def _apply(self, command: Mapping[str, Any]) -> registry.Applied:
        applied = self._registry.apply(command)
        if not applied.ok and (not isinstance(command, Mapping)
                               or command.get("type") != registry.DEREGISTER):
            log.warning("registry command rejected: %s", applied.error)
        for nid in applied.changed:
            rec = self._registry.get(nid)
            entry = self._entries.get(nid)
            if rec is None:
                self._entries.pop(nid, None)
                self._monitor.forget(nid)
                continue
            if entry is None:
                self._entries[nid] = _Entry(rec)
                continue
            if entry.generation != rec.generation:
                self._monitor.forget(nid)  # moved: old counters say nothing about the new address
            old = entry.status
            entry.update(rec)
            if old is not rec.status:
                self._status_changed(entry, old)
        if applied.changed:
            self._dirty = True
        return applied

    def _status_changed(self, entry: _Entry, old: health_checks.NodeStatus) -> None:
        new = entry.status
        if new is NodeStatus.UNHEALTHY and old in health_checks.SELECTABLE:
            self._stats["failovers"] += 1
        elif new is NodeStatus.HEALTHY and old is NodeStatus.UNHEALTHY:
            self._stats["recoveries"] += 1
        log.info("node %s: %s -> %s", entry.node_id, old.value, new.value)
        if self._listeners:
            info = self._info(entry)
            for listener in self._listeners:
                try:
                    listener(info, old)
                except Exception:
                    log.exception("status listener failed")

    # -- persistence (when not replicated) -------------------------------------------------

    def _load(self, store: storage.DurableStore) -> None:
        raw = store.get(_META_NS, "revision")
        nodes = [msgpack.unpackb(v, raw=False) for _, v in store.scan(_NODES_NS)]
        self.restore({"revision": int(raw.decode()) if raw else 0, "nodes": nodes})

    async def _persist(self, changed: Iterable[str]) -> None:
        if self._store is None:
            return
        ops: list[storage.Op] = []
        for nid in changed:
            rec = self._registry.get(nid)
            if rec is None:
                ops.append(storage.Delete(_NODES_NS, nid))
            else:
                ops.append(storage.Put(_NODES_NS, nid,
                                       msgpack.packb(rec.to_dict(), use_bin_type=True)))
        if ops:
            ops.append(storage.Put(_META_NS, "revision", str(self._registry.revision).encode()))
            await self._store.commit(ops)

    # -- health checks ---------------------------------------------------------------------

    async def _run(self) -> None:
        interval = self.load_balance.health_check_interval
        while not self._stopping.is_set():
            started = time.monotonic()
            try:
                await self.check_health()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("health-check round failed")
            delay = max(0.0, interval - (time.monotonic() - started))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), delay)

    async def check_health(self) -> None:
        """Run one health-check round now (the timer calls this every interval)."""
        if not self.is_active():
            self._was_active = False
            return
        if not self._was_active:
            self._monitor.reset()  # counters from an earlier term are stale
            for e in self._entries.values():
                e.info = None
            self._was_active = True
        targets = {nid: (e.address, e.generation) for nid, e in self._entries.items()}
        if not targets:
            return
        if self.transport is not None:
            names = sorted(targets)
            outcomes = await asyncio.gather(*(self._probe(n, targets[n][0]) for n in names))
            results = {n: ok for n, ok in zip(names, outcomes, strict=True) if ok is not None}
        else:
            results = self._heartbeat_results()
        self._stats["health_rounds"] += 1
        await self._observe(results, {n: gen for n, (_, gen) in targets.items()})

    def _heartbeat_results(self) -> dict[str, bool]:
        ttl = self.load_balance.health_check_interval * HEARTBEAT_TTL_INTERVALS
        now = time.monotonic()
        return {nid: e.heartbeat_mono is not None and now - e.heartbeat_mono <= ttl
                for nid, e in self._entries.items()}

    async def _probe(self, node_id: str, address: str) -> bool | None:
        """True if the node answered as itself; None if we could not try (not started)."""
        assert self.transport is not None
        async with self._probe_sem:
            started = time.monotonic()
            try:
                reply = await self.transport.request(
                    address, "peer.ping", {"echo": node_id},
                    timeout=self.load_balance.probe_timeout, expect=node_id)
            except peer.PeerError as exc:
                log.debug("probe of %s at %s failed: %s", node_id, address, exc)
                return False
            except RuntimeError:
                return None  # our transport is not started (yet): no verdict on the peer
            if reply.get("node_id") != node_id:
                log.warning("probe of %s at %s reached %r", node_id, address,
                            reply.get("node_id"))
                return False
            rtt = (time.monotonic() - started) * 1000.0
            entry = self._entries.get(node_id)
            if entry is not None:
                prev = entry.probe_rtt_ms
                entry.probe_rtt_ms = rtt if prev is None else \
                    prev + RTT_EWMA_WEIGHT * (rtt - prev)
                entry.info = None
            return True

    async def _probe_one(self, node_id: str) -> None:
        entry = self._entries.get(node_id)
        if entry is None or not self.is_active():
            return
        generation = entry.generation
        ok = await self._probe(node_id, entry.address)
        if ok is not None:
            await self._observe({node_id: ok}, {node_id: generation})

    async def _observe(self, results: Mapping[str, bool], generations: Mapping[str, int]) -> None:
        """Feed observations to the monitor and propose the resulting status changes."""
        async with self._health_lock:
            # Drop results about a node that moved or left while we were probing it.
            results = {n: ok for n, ok in results.items()
                       if n in self._entries and self._entries[n].generation == generations[n]}
            if not results or not self.is_active():
                return
            self._stats["health_checks"] += len(results)
            self._stats["health_check_failures"] += sum(1 for ok in results.values() if not ok)
            statuses = {nid: e.status for nid, e in self._entries.items()}
            verdict = self._monitor.observe(results, statuses)
            for nid in results:
                self._entries[nid].info = None  # its counters moved
            if len(results) > 1:
                self._panic = verdict.panic
            if verdict.panic:
                self._stats["panic_rounds"] += 1
                self._stats["evictions_held"] += len(verdict.held)
                log.warning("%d of %d nodes failed their checks at once: assuming we are the "
                            "one cut off; evicting nobody this round",
                            sum(1 for ok in results.values() if not ok), len(statuses))
            if not verdict.changes:
                return
            changes = {nid: (self._entries[nid].generation, st)
                       for nid, st in verdict.changes.items()}
            try:
                await self._propose(registry.status_command(changes, time.time()))
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # whatever the log raised (e.g. "not the leader")
                # Leadership moved or no quorum: the next round proposes again.
                self._stats["proposals_failed"] += 1
                log.info("status change not committed: %s", exc)

    def _spawn(self, make: Callable[[], Awaitable[None]]) -> None:
        async def run() -> None:
            try:
                await make()  # created here, so a task cancelled early leaves no stray coroutine
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("background health check failed")

        task = asyncio.get_running_loop().create_task(run())
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    # -- messages ------------------------------------------------------------------------

    async def _on_heartbeat_message(self, sender: str, body: dict[str, Any]) -> dict[str, Any]:
        """``coord.heartbeat`` from a node: the transport has proven the sender's identity."""
        if not await self.heartbeat(sender, body):
            raise ValueError(f"node {sender!r} is not registered")
        return {"ok": True}

    # -- views -----------------------------------------------------------------------------

    def _rebuild_candidates(self) -> None:
        ordered = [e for _, e in sorted(self._entries.items())]
        self._healthy = [e for e in ordered if e.status is NodeStatus.HEALTHY]
        self._degraded = [e for e in ordered if e.status is NodeStatus.DEGRADED]
        self._dirty = False

    def _info(self, e: _Entry) -> NodeInfo:
        if e.info is not None:
            return e.info
        counters = self._monitor.counters.get(e.node_id, health_checks.ZERO)
        e.info = NodeInfo(
            node_id=e.node_id, address=e.address, status=e.status, metadata=e.metadata,
            load_score=e.load_score, latency_ms=e.latency_ms, capacity=dict(e.capacity),
            last_heartbeat=e.last_heartbeat, probe_rtt_ms=e.probe_rtt_ms,
            consecutive_failures=counters.failures, consecutive_successes=counters.successes,
            registered_at=e.registered_at, status_changed_at=e.status_changed_at,
            uptime_seconds=e.uptime_seconds,
        )
        return e.info


def _statuses(
    status_filter: NodeStatus | str | Iterable[NodeStatus | str] | None,
) -> frozenset[NodeStatus] | None:
    if status_filter is None:
        return None
    items: Iterable[NodeStatus | str] = (
        [status_filter] if isinstance(status_filter, str) else status_filter
    )
    out = set()
    for s in items:
        try:
            out.add(NodeStatus(s))
        except ValueError:
            raise ValueError(f"unknown status {s!r}; known: "
                             f"{', '.join(x.value for x in NodeStatus)}") from None
    return frozenset(out)
