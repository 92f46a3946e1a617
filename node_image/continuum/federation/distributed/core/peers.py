"""The set of candidate peers discovery knows about (pure; time is passed in).

Every source (DNS, mDNS, bootstrap list, static list, gossip, the on-disk
cache) makes *claims*: "a peer may be reachable at this address", optionally
with the node id it is said to have, an SRV priority/weight, and a TTL after
which the claim lapses. A peer is keyed by the address we dial; it stays in
the set while at least one claim on it is alive.

Claims are hints. A peer becomes *verified* only when the shell reports a
successful mutual-TLS hello whose certificate speaks for the node id and whose
cluster name matches ours (``mark_verified``); a failed probe clears the flag
and backs off before the next try. An operator may also verify a peer by hand
(``set_verified``), even one whose id is not known yet (``expect_verified``):
the verdict then lands on the first claim that names that id.

``max_peers`` caps the set: once full, new addresses are refused (counted in
``refused``) rather than known ones evicted, so a flood of bogus candidates
cannot push out verified peers.
"""

from __future__ import annotations

import math
import random
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

DNS = "dns"
MDNS = "mdns"
BOOTSTRAP = "bootstrap"
STATIC = "static"
GOSSIP = "gossip"
CACHE = "cache"
SOURCES = frozenset({DNS, MDNS, BOOTSTRAP, STATIC, GOSSIP, CACHE})


@dataclass(frozen=True, slots=True)
class Candidate:
    """One source's claim that a peer may be reachable at ``address``."""

    address: str
    source: str
    node_id: str | None = None  # the id the source says it has (a hint until verified)
    ttl: float | None = None  # seconds the claim lives; None: until withdrawn
    priority: int = 0  # SRV priority: lower is preferred
    weight: int = 0  # SRV weight: among equal priorities, higher is picked more often

    def __post_init__(self) -> None:
        if self.source not in SOURCES:
            raise ValueError(f"unknown discovery source {self.source!r}")
        if not self.address or ":" not in self.address:
            raise ValueError(f"candidate address must be 'host:port', got {self.address!r}")
        if self.ttl is not None and (math.isnan(self.ttl) or self.ttl < 0):
            raise ValueError(f"ttl must be >= 0, got {self.ttl!r}")
        if not 0 <= self.priority <= 65535 or not 0 <= self.weight <= 65535:
            raise ValueError("SRV priority and weight must be in 0..65535")


@dataclass(slots=True)
class _Claim:
    expires_at: float
    node_id: str | None
    priority: int
    weight: int


@dataclass(slots=True)
class PeerRecord:
    address: str
    claims: dict[str, _Claim] = field(default_factory=dict)
    verified: bool = False
    verified_id: str | None = None  # the id the peer's certificate proved
    cluster: str | None = None
    formed: bool = False  # the peer reported being a member of a formed cluster
    first_seen: float = 0.0
    last_seen: float = 0.0  # last time a source re-confirmed the claim or a probe succeeded
    probed: bool = False  # at least one probe finished (either way)
    disproved: bool = False  # the last probe got an answer that failed the identity checks
    failures: int = 0  # consecutive failed probes
    next_probe: float = 0.0
    last_error: str | None = None

    @property
    def node_id(self) -> str | None:
        """The proven id, else the id a source claims (preferring the freshest)."""
        if self.verified_id is not None:
            return self.verified_id
        claimed = [c for c in self.claims.values() if c.node_id]
        if not claimed:
            return None
        return max(claimed, key=lambda c: c.expires_at).node_id

    @property
    def sources(self) -> frozenset[str]:
        return frozenset(self.claims)

    @property
    def priority(self) -> int:
        return min((c.priority for c in self.claims.values()), default=0)

    @property
    def weight(self) -> int:
        best = self.priority
        return max((c.weight for c in self.claims.values() if c.priority == best), default=0)


@dataclass(frozen=True, slots=True)
class PeerView:
    """What callers see of a peer: one per node id (or per address while the id is unknown)."""

    node_id: str | None
    address: str
    sources: frozenset[str]
    verified: bool
    formed: bool
    cluster: str | None
    priority: int
    weight: int
    first_seen: float
    last_seen: float
    probed: bool
    last_error: str | None


@dataclass(frozen=True, slots=True)
class Changes:
    added: tuple[str, ...] = ()
    removed: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class ProbePolicy:
    backoff_base: float = 1.0  # seconds before retrying a failed probe, doubled per failure
    backoff_max: float = 60.0
    reverify_after: float = 300.0  # re-check a verified peer this often
    recheck_unformed: float = 2.0  # until a peer reports a formed cluster, ask again this often

    def __post_init__(self) -> None:
        if (not 0 < self.backoff_base <= self.backoff_max or self.reverify_after <= 0
                or self.recheck_unformed <= 0):
            raise ValueError("probe backoff and re-verify intervals must be positive")

    def backoff(self, failures: int) -> float:
        return min(self.backoff_max, self.backoff_base * 2.0 ** min(failures - 1, 30))


class PeerSet:
    """Candidates from all sources, merged per address, with expiry and verification."""

    def __init__(self, self_address: str | None = None, policy: ProbePolicy | None = None,
                 *, max_peers: int | None = None) -> None:
        if max_peers is not None and max_peers < 1:
            raise ValueError(f"max_peers must be positive, got {max_peers!r}")
        self._self_address = self_address
        self._policy = policy or ProbePolicy()
        self._peers: dict[str, PeerRecord] = {}
        self._ignored: set[str] = set()
        self._expected: set[str] = set()  # ids verified by hand before any claim named them
        self.max_peers = max_peers
        self.added = 0  # addresses ever added
        self.refused = 0  # new addresses turned away because the set was full

    def set_self_address(self, address: str) -> None:
        """Our own address (known once our server is bound): never a peer."""
        self._self_address = address
        self._peers.pop(address, None)

    def __len__(self) -> int:
        return len(self._peers)

    def __contains__(self, address: object) -> bool:
        return address in self._peers

    def get(self, address: str) -> PeerRecord | None:
        return self._peers.get(address)

    def records(self) -> list[PeerRecord]:
        return [self._peers[a] for a in sorted(self._peers)]

    # -- claims ------------------------------------------------------------------------------

    def observe(self, source: str, candidates: Iterable[Candidate], now: float, *,
                complete: bool = False, self_id: str | None = None) -> Changes:
        """Record claims from ``source``.

        ``complete``: the candidates are the source's whole current answer (a DNS
        response), so this source's claims on any other address are withdrawn.
        Claims pointing at ourselves (our address or id) are ignored.
        """
        if source not in SOURCES:
            raise ValueError(f"unknown discovery source {source!r}")
        fresh = list(candidates)
        for c in fresh:
            if c.source != source:
                raise ValueError(f"candidate from {c.source!r} passed as {source!r}")
        added: list[str] = []
        seen: set[str] = set()
        for c in fresh:
            if (c.address == self._self_address or c.address in self._ignored
                    or (self_id and c.node_id == self_id)):
                continue
            seen.add(c.address)
            rec = self._peers.get(c.address)
            if rec is None:
                if self.max_peers is not None and len(self._peers) >= self.max_peers:
                    self.refused += 1
                    continue
                rec = self._peers[c.address] = PeerRecord(c.address, first_seen=now)
                added.append(c.address)
                self.added += 1
            expires = math.inf if c.ttl is None else now + c.ttl
            rec.claims[source] = _Claim(expires, c.node_id, c.priority, c.weight)
            rec.last_seen = max(rec.last_seen, now)
            if c.node_id is not None and c.node_id in self._expected:
                self._expected.discard(c.node_id)
                if not rec.verified:
                    rec.verified, rec.verified_id, rec.disproved = True, c.node_id, False
        removed: list[str] = []
        if complete:
            for addr in [a for a, r in self._peers.items() if source in r.claims and a not in seen]:
                del self._peers[addr].claims[source]
                if not self._peers[addr].claims:
                    del self._peers[addr]
                    removed.append(addr)
        return Changes(tuple(added), tuple(removed))

    def withdraw(self, source: str, address: str) -> bool:
        """Drop one source's claim on ``address``; True if the peer left the set."""
        rec = self._peers.get(address)
        if rec is None or source not in rec.claims:
            return False
        del rec.claims[source]
        if not rec.claims:
            del self._peers[address]
            return True
        return False

    def expire(self, now: float) -> Changes:
        """Drop lapsed claims; peers without any live claim leave the set."""
        removed: list[str] = []
        for addr, rec in list(self._peers.items()):
            for src in [s for s, c in rec.claims.items() if c.expires_at <= now]:
                del rec.claims[src]
            if not rec.claims:
                del self._peers[addr]
                removed.append(addr)
        return Changes(removed=tuple(removed))

    def remove(self, key: str) -> list[str]:
        """Forget every record whose address or node id is ``key``; returns their addresses."""
        self._expected.discard(key)
        gone = [a for a, r in self._peers.items() if key in (a, r.node_id)]
        for a in gone:
            del self._peers[a]
        return gone

    def unsettled(self) -> int:
        """Candidates whose identity is still open: not probed yet, or not answering.

        The formation rule will not found a cluster while any remain: an
        unanswered candidate might be a member of a cluster that already exists.
        """
        return sum(1 for r in self._peers.values() if not r.verified and not r.disproved)

    def next_expiry(self) -> float:
        return min((c.expires_at for r in self._peers.values() for c in r.claims.values()),
                   default=math.inf)

    # -- verification --------------------------------------------------------------------------

    def due_for_probe(self, now: float) -> list[PeerRecord]:
        """Peers to probe now: never probed, backed off long enough, or due for re-verify."""
        return [r for r in self.records() if r.next_probe <= now]

    def mark_verified(self, address: str, node_id: str, cluster: str, now: float, *,
                      formed: bool = False) -> PeerRecord | None:
        rec = self._peers.get(address)
        if rec is None:
            return None
        self._expected.discard(node_id)
        rec.verified, rec.verified_id, rec.cluster, rec.formed = True, node_id, cluster, formed
        rec.probed, rec.failures, rec.last_error, rec.disproved = True, 0, None, False
        rec.last_seen = max(rec.last_seen, now)
        rec.next_probe = now + (self._policy.reverify_after if formed
                                else self._policy.recheck_unformed)
        return rec

    def mark_failed(self, address: str, error: str, now: float, *,
                    disproved: bool = False) -> PeerRecord | None:
        """A probe failed; retry with backoff.

        ``disproved``: the peer answered but is not who or what we took it for
        (wrong id, wrong cluster, untrusted certificate), so it is no longer
        verified. A peer that merely did not answer keeps its flag: liveness is
        the mesh's business, identity is ours.
        """
        rec = self._peers.get(address)
        if rec is None:
            return None
        if disproved:
            rec.verified, rec.verified_id, rec.formed = False, None, False
        rec.disproved = disproved
        rec.probed = True
        rec.failures += 1
        rec.last_error = error
        rec.next_probe = now + self._policy.backoff(rec.failures)
        return rec

    def ignore(self, address: str) -> None:
        """``address`` turned out to be ourselves: forget it and never list it again."""
        self._ignored.add(address)
        self._peers.pop(address, None)

    def set_verified(self, key: str, verified: bool, now: float) -> list[PeerRecord]:
        """Operator override for every record whose address or id is ``key``."""
        if not verified:
            self._expected.discard(key)
        hit = [r for r in self.records() if key in (r.address, r.node_id)]
        for rec in hit:
            rec.verified = verified
            if verified:
                rec.verified_id = rec.node_id or rec.verified_id
                rec.disproved = False
                rec.last_seen = max(rec.last_seen, now)
            else:
                rec.verified_id = None
        return hit

    def anonymous(self) -> list[PeerRecord]:
        """Peers known by address only: no source named them and none has proven an id."""
        return [r for r in self.records() if r.node_id is None]

    def expect_verified(self, node_id: str) -> None:
        """Verify ``node_id`` by hand before any claim names it: the first one that does
        (a hello, gossip, a static or mDNS entry) is verified on arrival."""
        self._expected.add(node_id)

    @property
    def expected(self) -> frozenset[str]:
        return frozenset(self._expected)

    # -- views -----------------------------------------------------------------------------------

    def views(self, *, verified_only: bool = False) -> list[PeerView]:
        """One view per node id (its best address) plus one per id-less address.

        Best address: verified first, then lower SRV priority, higher weight,
        more sources, then the address itself for determinism. Sorted by SRV
        priority, then weight (descending), then id.
        """
        best: dict[str, PeerRecord] = {}
        for rec in self.records():
            if verified_only and not rec.verified:
                continue
            key = rec.node_id or rec.address
            cur = best.get(key)
            if cur is None or _rank(rec) < _rank(cur):
                best[key] = rec
        out = [_view(r) for r in best.values()]
        out.sort(key=lambda v: (v.priority, -v.weight, v.node_id or "", v.address))
        return out


def _rank(r: PeerRecord) -> tuple[int, int, int, int, str]:
    return (0 if r.verified else 1, r.priority, -r.weight, -len(r.claims), r.address)


def _view(r: PeerRecord) -> PeerView:
    return PeerView(node_id=r.node_id, address=r.address, sources=r.sources, verified=r.verified,
                    formed=r.formed, cluster=r.cluster, priority=r.priority, weight=r.weight,
                    first_seen=r.first_seen, last_seen=r.last_seen, probed=r.probed,
                    last_error=r.last_error)


def srv_order(records: Sequence[tuple[int, int, str]], rng: random.Random) -> list[str]:
    """Order ``(priority, weight, target)`` records as RFC 2782 says clients should try them.

    Lowest priority first; within one priority, a weighted random draw without
    replacement, where zero-weight records get a small chance (they are put
    first in the running sum, as the RFC describes) so they are not starved.
    """
    out: list[str] = []
    for prio in sorted({p for p, _, _ in records}):
        group = sorted(((w, t) for p, w, t in records if p == prio),
                       key=lambda x: (x[0] != 0, x[1]))
        while group:
            total = sum(w for w, _ in group)
            pick = rng.randint(0, total)
            running = 0
            for i, (w, t) in enumerate(group):
                running += w
                if running >= pick:
                    out.append(t)
                    del group[i]
                    break
    return out
