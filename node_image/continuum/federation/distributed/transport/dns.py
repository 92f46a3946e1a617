"""DNS SRV lookups with dnspython's async resolver.

Kubernetes answers ``_<port>._tcp.<svc>.<ns>.svc.cluster.local`` for a
headless Service with one SRV record per pod, whose target is the pod's own
name (``<pod>.<svc>.<ns>.svc.cluster.local``) with an A record; the A records
usually ride along in the additional section, else we ask for them. Each
target carries the smallest TTL of its SRV and address records, so a caller
can drop it when that lapses without a fresh answer.

NXDOMAIN (and an empty answer) is an authoritative "no peers": an empty
result with a log line. Timeouts and server failures raise ``DNSLookupError``
so the caller keeps what it had until the TTLs run out.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import dns.asyncresolver
import dns.exception
import dns.message
import dns.name
import dns.nameserver
import dns.rdatatype
import dns.resolver
import dns.rrset

from . import peer

log = logging.getLogger(__name__)


class DNSLookupError(RuntimeError):
    """The lookup failed (timeout, no usable server, server failure): no answer, not 'no peers'."""


@dataclass(frozen=True, slots=True)
class SrvTarget:
    target: str  # host name, no trailing dot
    port: int
    priority: int
    weight: int
    ttl: float  # seconds: min of the SRV record's and the address records' TTLs
    addresses: tuple[str, ...]  # IPs of the target

    @property
    def dial_addresses(self) -> tuple[str, ...]:
        """``host:port`` strings to dial (IPv6 in brackets)."""
        return tuple(f"[{a}]:{self.port}" if ":" in a else f"{a}:{self.port}"
                     for a in self.addresses)


@dataclass(frozen=True, slots=True)
class SrvResult:
    name: str
    targets: tuple[SrvTarget, ...]
    nxdomain: bool = False


def parse_nameservers(nameservers: list[str]) -> list[dns.nameserver.Nameserver]:
    """``["127.0.4.1:5353", "10.0.0.10"]`` into dnspython nameservers (port 53 by default)."""
    out: list[dns.nameserver.Nameserver] = []
    for ns in nameservers:
        if ns.count(":") == 1 or ns.startswith("["):
            host, port = peer.split_address(ns)
        else:
            host, port = ns, 53
        out.append(dns.nameserver.Do53Nameserver(host, port))
    if not out:
        raise ValueError("dns_nameservers must not be empty (None means the system resolver)")
    return out


class SrvResolver:
    """Resolve SRV names to targets with addresses; one instance per discovery loop."""

    def __init__(self, nameservers: list[str] | None = None, *, timeout: float = 3.0) -> None:
        if timeout <= 0:
            raise ValueError("DNS timeout must be positive")
        self._nameservers = parse_nameservers(nameservers) if nameservers is not None else None
        self._timeout = timeout
        self._resolver: dns.asyncresolver.Resolver | None = None
        self.queries = 0
        self.failures = 0

    def _get_resolver(self) -> dns.asyncresolver.Resolver:
        if self._resolver is None:
            if self._nameservers is None:
                try:
                    res = dns.asyncresolver.Resolver()
                except dns.resolver.NoResolverConfiguration as exc:
                    raise DNSLookupError(f"no system DNS configuration: {exc}") from None
            else:
                res = dns.asyncresolver.Resolver(configure=False)
                res.nameservers = list(self._nameservers)
            res.lifetime = self._timeout
            res.timeout = self._timeout
            res.cache = None  # we honour TTLs ourselves, and a re-query must be fresh
            self._resolver = res
        return self._resolver

    async def lookup(self, name: str) -> SrvResult:
        """The SRV targets of ``name`` with their addresses, or an empty NXDOMAIN result."""
        qname = name if name.endswith(".") else name + "."
        try:
            answer = await self._query(qname, "SRV")
        except (dns.resolver.NXDOMAIN, dns.resolver.NoAnswer) as exc:
            kind = "NXDOMAIN" if isinstance(exc, dns.resolver.NXDOMAIN) else "no SRV records"
            log.info("DNS discovery: %s for %s; no peers from DNS", kind, name)
            return SrvResult(name, (), nxdomain=True)
        if answer.rrset is None:
            return SrvResult(name, (), nxdomain=True)
        srv_ttl = float(answer.rrset.ttl)
        extra = _additional_addresses(answer.response)
        targets: list[SrvTarget] = []
        for rr in answer.rrset:
            host = rr.target.to_text(omit_final_dot=True).lower()
            found = extra.get(host)
            if found is None:
                found = await self._addresses(host)
            ips, addr_ttl = found
            if not ips:
                log.info("DNS discovery: SRV target %s of %s has no address", host, name)
                continue
            targets.append(SrvTarget(host, int(rr.port), int(rr.priority), int(rr.weight),
                                     min(srv_ttl, addr_ttl), tuple(sorted(ips))))
        targets.sort(key=lambda t: (t.priority, -t.weight, t.target))
        return SrvResult(name, tuple(targets))

    async def _addresses(self, host: str) -> tuple[list[str], float]:
        for rdtype in ("A", "AAAA"):
            try:
                ans = await self._query(host + ".", rdtype)
            except (dns.resolver.NXDOMAIN, dns.resolver.NoAnswer):
                continue
            if ans.rrset is not None:
                return [r.to_text() for r in ans.rrset], float(ans.rrset.ttl)
        return [], 0.0

    async def _query(self, qname: str, rdtype: str) -> dns.resolver.Answer:
        self.queries += 1
        try:
            return await self._get_resolver().resolve(qname, rdtype, search=False)
        except (dns.resolver.NXDOMAIN, dns.resolver.NoAnswer):
            raise
        except (dns.exception.Timeout, dns.resolver.NoNameservers) as exc:
            self.failures += 1
            raise DNSLookupError(f"{rdtype} {qname}: {exc}") from None
        except dns.exception.DNSException as exc:
            self.failures += 1
            raise DNSLookupError(f"{rdtype} {qname}: {type(exc).__name__}: {exc}") from None


def _additional_addresses(response: dns.message.Message) -> dict[str, tuple[list[str], float]]:
    out: dict[str, tuple[list[str], float]] = {}
    for rrset in response.additional:
        if rrset.rdtype not in (dns.rdatatype.A, dns.rdatatype.AAAA):
            continue
        host = rrset.name.to_text(omit_final_dot=True).lower()
        ips, ttl = out.get(host, ([], float(rrset.ttl)))
        out[host] = ([*ips, *(r.to_text() for r in rrset)], min(ttl, float(rrset.ttl)))
    return out
