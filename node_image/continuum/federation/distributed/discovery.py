"""NodeDiscovery: find federation peers and verify them before anyone trusts them.

Sources (``DiscoveryMethod``): DNS SRV (a Kubernetes headless Service), mDNS
on the local segment, a bootstrap list of ``host:port``, static ``id ->
address`` entries, and peers learned by gossip (``register_node``, and every
peer that says hello to us). All of them are hints merged in a
``core.peers.PeerSet``; a peer is *verified* once a mutual-TLS ``disc.hello``
call proves that its certificate speaks for the node id it answers with and
that it belongs to our cluster. Listeners (the node daemon, which hands them
to the gossip mesh) hear about verified nodes only.

Verified peers are kept in ``<storage_path>/discovery.db`` so a restarted
node finds them again without DNS; cached entries are re-verified before use.

``formation_decision()`` applies ``core.formation.decide`` to what we know:
whether this node should resume, bootstrap a new cluster, join, or wait.

Why one long file: it is the spec's ``NodeDiscovery``: four sources, the
verification handshake and the peer cache feed one ``core.peers.PeerSet``,
which holds the decisions.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import inspect
import json
import logging
import math
import os
import random
import ssl
import time
from collections.abc import Awaitable, Callable, Collection, Iterable, Mapping
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from . import storage
from .core import formation, peers
from .transport import link, mdns, peer, tls

if TYPE_CHECKING:  # dnspython is imported by a node that looks peers up in DNS, and only then
    from .transport import dns

log = logging.getLogger(__name__)

HELLO = "disc.hello"
CACHE_NS = "discovery.peers"
_MAX_PARALLEL_PROBES = 16


class DiscoveryMethod(enum.StrEnum):
    DNS = "dns"
    MDNS = "mdns"
    BOOTSTRAP = "bootstrap"
    GOSSIP = "gossip"
    STATIC = "static"


@dataclass(frozen=True)
class DiscoveryConfig:
    enabled_methods: Collection[DiscoveryMethod | str] = frozenset(
        {DiscoveryMethod.BOOTSTRAP, DiscoveryMethod.STATIC, DiscoveryMethod.GOSSIP})
    dns_domain: str | None = None  # SRV name, e.g. _peer._tcp.demo-peers.ns.svc.cluster.local
    bootstrap_nodes: list[str] = field(default_factory=list)  # "host:port", ids unknown
    discovery_interval_seconds: float = 60.0  # full re-discovery; DNS also refreshes at TTL
    dns_nameservers: list[str] | None = None  # "host:port" (port 53 if omitted); None: system
    dns_timeout_seconds: float = 3.0
    dns_min_ttl_seconds: float = 5.0  # floor for TTL 0 answers, so peers do not flap
    mdns_service: str = mdns.SERVICE_TYPE
    mdns_interfaces: list[str] | None = None  # e.g. ["127.0.0.1"]; None: all interfaces
    static_nodes: Mapping[str, str] = field(default_factory=dict)  # node id -> "host:port"
    cluster_name: str = "continuum"
    verify: bool = True  # probe candidates over mTLS; False: only verify_node() verifies
    verify_timeout_seconds: float = 3.0
    reverify_interval_seconds: float = 300.0
    retry_backoff_max_seconds: float = 60.0
    gossip_ttl_seconds: float = 600.0  # a gossiped peer lapses unless heard of again
    cache_enabled: bool = True  # needs storage_path
    cache_ttl_seconds: float = 7 * 86400.0  # forget a cached peer not verified for this long
    formation_mode: str = formation.LOWEST_ID  # "ordinal" for StatefulSets: <name>-0 founds
    formation_stable_seconds: float = 5.0
    formation_min_nodes: int = 1  # verified nodes (us included) before the founder bootstraps
    # The original module's fields. mdns_service_type names mdns_service; the cap is off
    # by default (the original's 100 would cut a large cluster's DNS answer short).
    mdns_service_type: str | None = None
    max_discovered_nodes: int | None = None  # full: new addresses are refused, none evicted
    mdns_interval_seconds: float | None = None  # no effect: mDNS answers arrive as announced

    def __post_init__(self) -> None:
        if self.mdns_service_type is not None:
            object.__setattr__(self, "mdns_service", self.mdns_service_type)
        if self.max_discovered_nodes is not None and self.max_discovered_nodes < 1:
            raise ValueError(f"max_discovered_nodes must be positive (or None for no cap), "
                             f"got {self.max_discovered_nodes!r}")
        if self.mdns_interval_seconds is not None:
            log.info("DiscoveryConfig.mdns_interval_seconds has no effect: mDNS peers are "
                     "heard as they announce themselves, and read every discovery round")
        methods = frozenset(_method(m) for m in self.enabled_methods)
        object.__setattr__(self, "enabled_methods", methods)
        object.__setattr__(self, "bootstrap_nodes", list(self.bootstrap_nodes))
        object.__setattr__(self, "static_nodes", dict(self.static_nodes))
        for name in ("discovery_interval_seconds", "dns_timeout_seconds", "verify_timeout_seconds",
                     "reverify_interval_seconds", "retry_backoff_max_seconds",
                     "gossip_ttl_seconds", "cache_ttl_seconds"):
            value = getattr(self, name)
            if not isinstance(value, int | float) or math.isnan(value) or value <= 0:
                raise ValueError(f"{name} must be a positive number, got {value!r}")
        if self.dns_min_ttl_seconds < 0:
            raise ValueError("dns_min_ttl_seconds must be >= 0")
        if DiscoveryMethod.DNS in methods and not self.dns_domain:
            raise ValueError("DNS discovery needs dns_domain (the SRV name to query)")
        if self.dns_nameservers is not None:
            from .transport import dns

            dns.parse_nameservers(self.dns_nameservers)
        for addr in self.bootstrap_nodes:
            peer.split_address(addr)
        for node_id, addr in self.static_nodes.items():
            if not node_id:
                raise ValueError("static_nodes ids must not be empty")
            peer.split_address(addr)
        if not self.cluster_name:
            raise ValueError("cluster_name must not be empty")
        formation.FormationConfig(self.formation_mode, self.formation_stable_seconds,
                                  self.formation_min_nodes)

    @property
    def formation(self) -> formation.FormationConfig:
        return formation.FormationConfig(self.formation_mode, self.formation_stable_seconds,
                                         self.formation_min_nodes)


def _method(m: DiscoveryMethod | str) -> DiscoveryMethod:
    if isinstance(m, DiscoveryMethod):
        return m
    try:
        return DiscoveryMethod(str(m).lower())
    except ValueError:
        known = ", ".join(x.value for x in DiscoveryMethod)
        raise ValueError(f"unknown discovery method {m!r} (known: {known})") from None


@dataclass(frozen=True, slots=True)
class DiscoveredNode:
    """A peer as discovery sees it: ``node_id`` is proven if ``verified``, else a hint or None.

    As in the original module, ``DiscoveredNode(node_id, address, discovery_method=...,
    metadata=..., priority=...)`` builds one to hand to ``register_node``. A node found
    several ways lists them all in ``sources``; ``discovery_method`` is then the first
    of them in ``DiscoveryMethod`` order. ``priority`` is an SRV priority: lower is
    preferred. ``discovered_at`` is ``first_seen`` as a datetime.
    """

    node_id: str | None
    address: str
    verified: bool = False
    sources: frozenset[str] = frozenset()
    cluster: str | None = None
    formed: bool = False  # it reported being a member of a formed cluster
    priority: int = 0
    weight: int = 0
    first_seen: float = 0.0  # wall-clock seconds
    last_seen: float = 0.0
    last_error: str | None = None
    discovery_method: DiscoveryMethod | None = field(default=None, compare=False)
    metadata: Mapping[str, Any] = field(default_factory=dict, compare=False)
    discovered_at: datetime | None = field(default=None, compare=False)

    def __post_init__(self) -> None:
        if not isinstance(self.verified, bool):
            raise TypeError(f"verified must be a bool, got {self.verified!r}; pass the "
                            "original's discovery_method by keyword: DiscoveredNode(node_id, "
                            "address, discovery_method=DiscoveryMethod.DNS)")
        method = None if self.discovery_method is None else _method(self.discovery_method)
        sources = frozenset(self.sources)
        if method is not None and not sources:
            sources = frozenset({method.value})
        if method is None:
            method = next((m for m in DiscoveryMethod if m.value in sources), None)
        first_seen = self.first_seen
        if self.discovered_at is not None and not first_seen:
            first_seen = self.discovered_at.timestamp()
        at = self.discovered_at or (datetime.fromtimestamp(first_seen, UTC) if first_seen
                                    else None)
        for name, value in (("discovery_method", method), ("sources", sources),
                            ("first_seen", first_seen), ("discovered_at", at),
                            ("metadata", dict(self.metadata))):
            object.__setattr__(self, name, value)

    def to_dict(self) -> dict[str, Any]:
        return {"node_id": self.node_id, "address": self.address, "verified": self.verified,
                "sources": sorted(self.sources), "cluster": self.cluster, "formed": self.formed,
                "priority": self.priority, "weight": self.weight, "first_seen": self.first_seen,
                "last_seen": self.last_seen, "last_error": self.last_error,
                "discovery_method": None if self.discovery_method is None
                else self.discovery_method.value, "metadata": dict(self.metadata)}


# A listener gets ("up" | "down", node) when a verified node appears (or moves) or goes away.
Listener = Callable[[str, DiscoveredNode], Awaitable[None] | None]


class _Disproved(Exception):
    """The peer answered, but is not the node or cluster it was taken for."""


class NodeDiscovery:
    def __init__(
        self,
        node_id: str,
        config: DiscoveryConfig | None = None,
        *,
        bind_address: str | None = None,
        advertise_address: str | None = None,
        storage_path: str | os.PathLike[str] | None = None,
        tls_cert: str | None = None,
        tls_key: str | None = None,
        tls_ca: str | None = None,
        transport: peer.PeerTransport | None = None,
        insecure: bool = False,  # plain HTTP on bind_address: tests only (transport.link)
        peer_domain: str | None = None,
        rng: random.Random | None = None,
    ) -> None:
        if not node_id:
            raise ValueError("node_id must not be empty")
        self.node_id = node_id
        self.config = config or DiscoveryConfig()
        self.storage_path = Path(storage_path) if storage_path is not None else None
        self._link = link.PeerLink.build(node_id, transport=transport, bind_address=bind_address,
                                         tls_cert=tls_cert, tls_key=tls_key, tls_ca=tls_ca,
                                         peer_domain=peer_domain, insecure=insecure)
        self.transport = transport = self._link.transport
        if transport is not None:
            transport.on(HELLO, self._on_hello)
        self._advertise = advertise_address
        self._rng = rng or random.Random()
        self._peers = peers.PeerSet(advertise_address, peers.ProbePolicy(
            backoff_max=self.config.retry_backoff_max_seconds,
            reverify_after=self.config.reverify_interval_seconds),
            max_peers=self.config.max_discovered_nodes)
        self._stability = formation.StabilityTimer()
        self._formed = False
        self._listeners: list[Listener] = []
        self._reported: dict[str, str] = {}  # node id -> address last announced "up"
        self._store: storage.DurableStore | None = None
        self._srv: dns.SrvResolver | None = None
        if DiscoveryMethod.DNS in self.config.enabled_methods:
            from .transport import dns

            self._srv = dns.SrvResolver(self.config.dns_nameservers,
                                        timeout=self.config.dns_timeout_seconds)
        self._mdns: mdns.MdnsDiscovery | None = None
        self._task: asyncio.Task[None] | None = None
        self._wake = asyncio.Event()
        self._lock = asyncio.Lock()
        self._next_dns = 0.0
        self._next_full = 0.0
        self._warned_insecure = False
        self._stats: dict[str, Any] = {
            "discovery_runs": 0, "last_discovery": None, "dns_queries": 0, "dns_failures": 0,
            "dns_nodes": 0, "mdns_nodes": 0, "verifications_succeeded": 0,
            "verifications_failed": 0, "hellos_received": 0, "cache_loaded": 0,
        }

    # -- lifecycle ---------------------------------------------------------------------------

    @property
    def advertise_address(self) -> str | None:
        """The address peers should dial us at (the transport's real one when not given)."""
        if self._advertise is not None:
            return self._advertise
        addr = self.transport.address if self.transport is not None else None
        if addr is None or addr.startswith(("0.0.0.0:", "[::]:")):
            return None
        return addr

    async def start(self) -> None:
        if self._task is not None:
            return
        await self._link.start()
        if self.advertise_address is not None:
            self._peers.set_self_address(self.advertise_address)
        methods = self.config.enabled_methods
        if self.storage_path is not None and self.config.cache_enabled:
            self._store = storage.DurableStore(self.storage_path / "discovery.db")
            self._load_cache(time.time())
        if DiscoveryMethod.MDNS in methods:
            self._mdns = mdns.MdnsDiscovery(
                self.node_id, self.config.cluster_name, self.advertise_address,
                service_type=self.config.mdns_service, interfaces=self.config.mdns_interfaces,
                on_change=self._wake.set)
            await self._mdns.start()
        self._task = asyncio.get_running_loop().create_task(self._run(), name="discovery")

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if self._mdns is not None:
            await self._mdns.stop()
            self._mdns = None
        async with self._lock:  # let a running discover_now() finish its writes
            if self._store is not None:
                self._store.close()
                self._store = None
        await self._link.stop()

    # -- the spec's API --------------------------------------------------------------------------

    async def discover_now(self) -> list[DiscoveredNode]:
        """Query every enabled source now, probe new candidates, and return all nodes known."""
        await self._round(full=True)
        return await self.get_nodes()

    async def get_nodes(self, verified_only: bool = False,
                        min_priority: int = 0) -> list[DiscoveredNode]:
        """Known nodes, best SRV priority/weight first; with ``verified_only`` only proven ones.

        ``min_priority`` (the original's filter) keeps nodes whose priority is at least that.
        """
        self._expire(time.time())
        return [_node(v) for v in self._peers.views(verified_only=verified_only)
                if v.priority >= min_priority]

    async def verify_node(self, node_id: str, verified: bool = True) -> bool:
        """Set a node's verified flag by hand (by id or address).

        A node found by address only (bootstrap, DNS) has no id until it answers.
        Verifying such an id asks those nodes who they are (with a transport) and
        verifies the one that proves it is ``node_id``; if none does yet, the verdict
        waits and lands on the first node that turns up with that id (a hello,
        gossip, static or mDNS entry), and this returns True. False when nothing
        known is or could become that node.
        """
        hit = self._peers.set_verified(node_id, verified, time.time())
        if not hit and verified and node_id != self.node_id \
                and not self._valid_address(node_id) and self._peers.anonymous():
            if self.transport is not None:
                await self._identify(node_id)
                hit = [r for r in self._peers.records() if r.node_id == node_id and r.verified]
            if not hit:
                self._peers.expect_verified(node_id)
                log.info("verify_node: %r verified once a node answers with that id", node_id)
                return True
        if not hit:
            log.warning("verify_node: no known node %r", node_id)
            return False
        await self._persist(hit)
        await self._emit()
        return True

    async def register_node(self, node: DiscoveredNode | str, address: str | None = None, *,
                            method: DiscoveryMethod | str = DiscoveryMethod.GOSSIP) -> None:
        """Add a peer by hand: ``(node_id, address)``, or a ``DiscoveredNode`` as the
        original module took it. It is probed soon.

        The claim is recorded under its method: gossip lapses after ``gossip_ttl_seconds``
        unless heard again; an enabled DNS, mDNS or bootstrap source has the last word
        on its own addresses at its next answer. ``verified=True`` verifies it by hand.
        """
        verified = False
        if isinstance(node, DiscoveredNode):
            if address is not None:
                raise TypeError("pass a DiscoveredNode alone, or a node id and an address")
            node_id, address, verified = node.node_id, node.address, node.verified
            m, priority, weight = node.discovery_method or DiscoveryMethod.GOSSIP, \
                node.priority, node.weight
        else:
            node_id, m, priority, weight = node, _method(method), 0, 0
        if not node_id:
            raise ValueError("node_id must not be empty")
        if address is None:
            raise TypeError("register_node needs the node's address ('host:port')")
        peer.split_address(address)
        ttl = self.config.gossip_ttl_seconds if m is DiscoveryMethod.GOSSIP else None
        now = time.time()
        self._peers.observe(m.value, [peers.Candidate(address, m.value, node_id, ttl, priority,
                                                      weight)], now, self_id=self.node_id)
        if verified:
            await self._persist(self._peers.set_verified(address, True, now))
        self._wake.set()

    async def remove_node(self, node_id: str) -> bool:
        """Forget a node (by id or address) and its cache entry; False if it was unknown."""
        gone = self._peers.remove(node_id)
        if self._store is not None and gone:
            await self._store.commit([storage.Delete(CACHE_NS, a) for a in gone])
        await self._emit()
        return bool(gone)

    def register_discovery_callback(self, callback: Listener) -> None:
        """``callback("up"|"down", node)`` for verified nodes appearing and going away."""
        self._listeners.append(callback)

    def get_stats(self) -> dict[str, Any]:
        """Counts. The original module's keys are there too: ``discovered_nodes`` (as
        ``total_nodes``), ``discovery_attempts`` (discovery rounds), ``nodes_discovered``
        (addresses ever added) and ``methods`` (nodes per method, every method listed)."""
        views = self._peers.views()
        by_source: dict[str, int] = {}
        for rec in self._peers.records():
            for src in rec.sources:
                by_source[src] = by_source.get(src, 0) + 1
        return {
            **self._stats,
            "total_nodes": len(views),
            "verified_nodes": sum(1 for v in views if v.verified),
            "nodes_by_source": by_source,
            "enabled_methods": sorted(_method(m).value for m in self.config.enabled_methods),
            "cluster_name": self.config.cluster_name,
            "formed": self._formed,
            "pending_verifications": len(self._peers.expected),
            "nodes_refused": self._peers.refused,
            "node_id": self.node_id,
            "discovered_nodes": len(views),
            "discovery_attempts": self._stats["discovery_runs"],
            "nodes_discovered": self._peers.added,
            "methods": {m.value: by_source.get(m.value, 0) for m in DiscoveryMethod},
        }

    # -- formation ---------------------------------------------------------------------------

    def set_formed(self, formed: bool = True) -> None:
        """Tell discovery we hold membership (durable state, bootstrapped or joined)."""
        self._formed = formed

    def formation_decision(self, now: float | None = None) -> formation.Decision:
        """Resume, Bootstrap, Join(targets) or Wait(reason), from what is known right now."""
        now = time.time() if now is None else now
        views = self._peers.views()
        ours = [formation.FormationPeer(v.node_id, v.address, v.formed) for v in views
                if v.verified and v.node_id and v.cluster == self.config.cluster_name]
        unresolved = 0
        if self.config.verify and self.transport is not None:
            unresolved = self._peers.unsettled()
        view = frozenset((r.address, r.node_id, r.verified, r.formed)
                         for r in self._peers.records())
        stable_for = self._stability.update(view, now)
        decision = formation.decide(self.node_id, has_membership=self._formed, peers=ours,
                                    unresolved=unresolved, stable_for=stable_for,
                                    config=self.config.formation)
        if isinstance(decision, formation.Join):
            decision = replace(decision, targets=tuple(
                self.dial_order(decision.targets, views)))
        return decision

    def dial_order(self, addresses: Iterable[str],
                   views: Iterable[peers.PeerView] | None = None) -> list[str]:
        """``addresses`` in the order to try them: RFC 2782 (lowest SRV priority first,
        then a draw weighted by SRV weight), so joins spread as the DNS records say."""
        known = {v.address: v for v in (views if views is not None else self._peers.views())}
        records = [(known[a].priority, known[a].weight, a) if a in known else (0, 0, a)
                   for a in addresses]
        return peers.srv_order(records, self._rng)

    # -- the loop ----------------------------------------------------------------------------

    async def _run(self) -> None:
        while True:
            now = time.time()
            try:
                await self._round(full=now >= self._next_full)
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("discovery round failed")
            self.formation_decision()  # keep the stability timer fed
            delay = self._next_wakeup(time.time())
            self._wake.clear()
            # asyncio.timeout, not wait_for: on 3.11 wait_for can swallow our own
            # cancellation when the event fires at the same moment, and stop() hangs.
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(delay):
                    await self._wake.wait()

    def _next_wakeup(self, now: float) -> float:
        due = [self._next_full, self._peers.next_expiry()]
        if self._srv is not None:
            due.append(self._next_dns)
        if self.config.verify and self.transport is not None:
            due.extend(r.next_probe for r in self._peers.records())
        return min(max(0.05, min(due) - now), self.config.discovery_interval_seconds)

    async def _round(self, *, full: bool) -> None:
        async with self._lock:
            now = time.time()
            if full:
                interval = self.config.discovery_interval_seconds
                self._next_full = now + interval * self._rng.uniform(0.9, 1.1)
                self._observe_static(now)
            if self._srv is not None and (full or now >= self._next_dns):
                await self._query_dns(now)
            if self._mdns is not None:
                self._observe_mdns(now)
            self._expire(now)
            if self.config.verify and self.transport is not None:
                await self._probe_due(time.time())
            self._stats["discovery_runs"] += 1
            self._stats["last_discovery"] = time.time()
        await self._emit()

    def _observe_static(self, now: float) -> None:
        methods = self.config.enabled_methods
        if DiscoveryMethod.BOOTSTRAP in methods:
            self._peers.observe(peers.BOOTSTRAP, [peers.Candidate(a, peers.BOOTSTRAP)
                                                  for a in self.config.bootstrap_nodes],
                                now, complete=True, self_id=self.node_id)
        if DiscoveryMethod.STATIC in methods:
            self._peers.observe(peers.STATIC, [peers.Candidate(a, peers.STATIC, i)
                                               for i, a in self.config.static_nodes.items()],
                                now, self_id=self.node_id)

    async def _query_dns(self, now: float) -> None:
        from .transport import dns

        assert self._srv is not None and self.config.dns_domain
        floor = self.config.dns_min_ttl_seconds
        before = self._srv.queries
        try:
            result = await self._srv.lookup(self.config.dns_domain)
        except dns.DNSLookupError as exc:
            self._stats["dns_failures"] += 1
            log.warning("DNS discovery failed for %s: %s (keeping answers until their TTL)",
                        self.config.dns_domain, exc)
            self._next_dns = now + max(floor, 1.0)
            return
        finally:
            self._stats["dns_queries"] += self._srv.queries - before
        found = [peers.Candidate(addr, peers.DNS, None, max(t.ttl, floor), t.priority, t.weight)
                 for t in result.targets for addr in t.dial_addresses]
        self._peers.observe(peers.DNS, found, now, complete=True, self_id=self.node_id)
        self._stats["dns_nodes"] = len(found)
        # Refresh ahead of the shortest TTL so live peers never lapse between answers.
        ttl = min((c.ttl or floor for c in found), default=self.config.discovery_interval_seconds)
        self._next_dns = now + max(0.8 * ttl, 0.5)

    def _observe_mdns(self, now: float) -> None:
        assert self._mdns is not None
        found = [peers.Candidate(p.address, peers.MDNS, p.node_id)
                 for p in self._mdns.peers() if p.cluster == self.config.cluster_name]
        self._peers.observe(peers.MDNS, found, now, complete=True, self_id=self.node_id)
        self._stats["mdns_nodes"] = len(found)

    def _expire(self, now: float) -> None:
        self._peers.expire(now)

    # -- verification ------------------------------------------------------------------------

    async def _probe_due(self, now: float) -> None:
        due = self._peers.due_for_probe(now)
        if not due:
            return
        sem = asyncio.Semaphore(_MAX_PARALLEL_PROBES)

        async def one(address: str, claimed: str | None) -> None:
            async with sem:
                await self._probe(address, claimed)

        await asyncio.gather(*(one(r.address, _claimed_id(r)) for r in due))

    async def _probe(self, address: str, claimed: str | None) -> None:
        assert self.transport is not None
        t = self.transport
        timeout = self.config.verify_timeout_seconds
        try:
            if claimed is None:  # learn who claims to live there, then make it prove it
                pong = await t.request(address, "peer.ping", {}, timeout=timeout)
                claimed = pong.get("node_id")
                if not isinstance(claimed, str) or not claimed:
                    raise _Disproved("ping reply without a node id")
            reply = await t.request(address, HELLO, self._hello_body(), timeout=timeout,
                                    expect=claimed)
            if reply.get("node_id") != claimed:
                raise _Disproved(f"hello names {reply.get('node_id')!r}, expected {claimed!r}")
            if reply.get("cluster") != self.config.cluster_name:
                raise _Disproved(f"cluster {reply.get('cluster')!r} is not "
                                 f"{self.config.cluster_name!r}")
            if not t.insecure:
                await self._prove_identity(address, claimed)
        except (_Disproved, peer.PeerError) as exc:
            disproved = isinstance(exc, _Disproved) or _is_identity_error(exc)
            self._stats["verifications_failed"] += 1
            rec = self._peers.mark_failed(address, str(exc), time.time(), disproved=disproved)
            log.info("discovery: %s not verified (%s): %s", address,
                     "disproved" if disproved else "unreachable", exc)
            if disproved and rec is not None and self._store is not None:
                await self._store.commit([storage.Delete(CACHE_NS, address)])
            return
        if claimed == self.node_id:  # one of our own addresses (DNS lists us too)
            self._peers.ignore(address)
            return
        if t.insecure and not self._warned_insecure:
            self._warned_insecure = True
            log.warning("discovery: transport without TLS, peers are verified by claim only")
        rec = self._peers.mark_verified(address, claimed, self.config.cluster_name, time.time(),
                                        formed=bool(reply.get("formed")))
        self._stats["verifications_succeeded"] += 1
        if rec is not None:
            await self._persist([rec])

    async def _identify(self, wanted: str) -> None:
        """Ask the peers known by address only who they are; verify the one that is
        ``wanted`` (with the full proof of ``_probe``) and leave the others as they were."""
        assert self.transport is not None
        t, timeout = self.transport, self.config.verify_timeout_seconds
        sem = asyncio.Semaphore(_MAX_PARALLEL_PROBES)

        async def one(address: str) -> None:
            async with sem:
                try:
                    pong = await t.request(address, "peer.ping", {}, timeout=timeout)
                except peer.PeerError:
                    return
                if pong.get("node_id") == wanted:
                    await self._probe(address, wanted)

        async with self._lock:
            await asyncio.gather(*(one(r.address) for r in self._peers.anonymous()))

    async def _prove_identity(self, address: str, claimed: str) -> None:
        """Check the certificate served at ``address`` ourselves: it must be a node
        certificate of our CA that speaks for ``claimed``.

        The RPC reply's sender is not enough on its own: the transport may not see
        the server's certificate once a small reply has been read (and then skips
        its own check), so this one handshake is the proof.
        """
        assert self.transport is not None
        ctx = self.transport.client_ssl_context
        host, port = peer.split_address(address)
        try:
            async with asyncio.timeout(self.config.verify_timeout_seconds):
                _, writer = await asyncio.open_connection(host, port, ssl=ctx)
        except ssl.SSLError as exc:
            raise _Disproved(f"TLS handshake refused the certificate: {exc}") from None
        except (OSError, TimeoutError) as exc:
            raise peer.PeerError(address, f"{type(exc).__name__}: {exc}") from None
        try:
            identity = tls.identity_of(writer.get_extra_info("ssl_object")) or tls.Identity()
        finally:
            writer.close()
            with contextlib.suppress(OSError, ssl.SSLError):
                await writer.wait_closed()
        if not tls.is_node(identity):
            raise _Disproved("the certificate lacks the node role")
        if self.transport.is_revoked(identity):
            raise _Disproved("the certificate is revoked")
        if not tls.authorizes(identity, claimed, self.transport.peer_domain,
                              wildcard=self.transport.wildcard):
            raise _Disproved(f"the certificate speaks for {identity.describe()}, "
                             f"not {claimed!r}")

    def _hello_body(self) -> dict[str, Any]:
        return {"cluster": self.config.cluster_name, "address": self.advertise_address,
                "formed": self._formed}

    def _on_hello(self, sender: str, body: dict[str, Any]) -> dict[str, Any]:
        """Answer who we are; the caller (already authenticated by its cert) is a new hint."""
        self._stats["hellos_received"] += 1
        address = body.get("address")
        if (body.get("cluster") == self.config.cluster_name and isinstance(address, str)
                and sender != self.node_id and self._valid_address(address)
                and DiscoveryMethod.GOSSIP in self.config.enabled_methods):
            known = self._peers.get(address)
            if known is None or not known.verified:
                self._peers.observe(peers.GOSSIP, [peers.Candidate(
                    address, peers.GOSSIP, sender, self.config.gossip_ttl_seconds)],
                    time.time(), self_id=self.node_id)
                self._wake.set()
        return {"node_id": self.node_id, "cluster": self.config.cluster_name,
                "formed": self._formed, "address": self.advertise_address}

    @staticmethod
    def _valid_address(address: str) -> bool:
        try:
            peer.split_address(address)
        except ValueError:
            return False
        return True

    # -- cache and listeners ---------------------------------------------------------------

    def _load_cache(self, now: float) -> None:
        assert self._store is not None
        stale: list[storage.Op] = []
        found: list[peers.Candidate] = []
        for key, raw in self._store.scan(CACHE_NS):
            try:
                entry = json.loads(raw)
                age = now - float(entry["verified_at"])
                node_id, cluster = str(entry["node_id"]), str(entry["cluster"])
            except (ValueError, KeyError, TypeError):
                stale.append(storage.Delete(CACHE_NS, key))
                continue
            left = self.config.cache_ttl_seconds - age
            if left <= 0 or cluster != self.config.cluster_name or node_id == self.node_id:
                stale.append(storage.Delete(CACHE_NS, key))
                continue
            found.append(peers.Candidate(str(key), peers.CACHE, node_id, left))
        self._peers.observe(peers.CACHE, found, now, self_id=self.node_id)
        self._stats["cache_loaded"] = len(found)
        if stale:
            self._store.commit_sync(stale)

    async def _persist(self, records: Iterable[peers.PeerRecord]) -> None:
        if self._store is None:
            return
        now = time.time()
        ops: list[storage.Op] = []
        for rec in records:
            if rec.verified and rec.node_id:
                entry = {"node_id": rec.node_id, "cluster": rec.cluster or
                         self.config.cluster_name, "verified_at": now}
                ops.append(storage.Put(CACHE_NS, rec.address, json.dumps(entry).encode()))
            else:
                ops.append(storage.Delete(CACHE_NS, rec.address))
        await self._store.commit(ops)

    async def _emit(self) -> None:
        current = {v.node_id: v for v in self._peers.views(verified_only=True) if v.node_id}
        events: list[tuple[str, DiscoveredNode]] = []
        for node_id, addr in list(self._reported.items()):
            if node_id not in current:
                del self._reported[node_id]
                events.append(("down", DiscoveredNode(node_id, addr, False, frozenset())))
        for node_id, v in current.items():
            if self._reported.get(node_id) != v.address:
                self._reported[node_id] = v.address
                events.append(("up", _node(v)))
        for kind, node in events:
            for cb in list(self._listeners):
                try:
                    result = cb(kind, node)
                    if inspect.isawaitable(result):
                        await result
                except Exception:
                    log.exception("discovery listener failed on %s %s", kind, node.node_id)


def _claimed_id(rec: peers.PeerRecord) -> str | None:
    return rec.verified_id or rec.node_id


def _is_identity_error(exc: peer.PeerError) -> bool:
    """Whether the peer answered but failed to prove itself (vs. did not answer at all)."""
    text = str(exc).lower()
    return exc.status in (401, 403) or any(s in text for s in (
        "certificate verify failed", "tlsv1_alert", "tlsv1 alert", "expected node",
        "claims to be"))


def _node(v: peers.PeerView) -> DiscoveredNode:
    return DiscoveredNode(node_id=v.node_id, address=v.address, verified=v.verified,
                          sources=v.sources, cluster=v.cluster, formed=v.formed,
                          priority=v.priority, weight=v.weight, first_seen=v.first_seen,
                          last_seen=v.last_seen, last_error=v.last_error)
