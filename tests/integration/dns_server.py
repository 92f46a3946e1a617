"""A small authoritative DNS server on loopback (UDP and TCP) for tests.

It serves what a Kubernetes headless Service looks like to its pods: for
``_<port>._tcp.<svc>.<ns>.svc.cluster.local`` one SRV record per pod whose
target is ``<pod>.<svc>.<ns>.svc.cluster.local``, with the A records in the
additional section and also answerable on their own. Records can change while
it runs (a pod added or removed), unknown names get NXDOMAIN, and ``mode``
makes it answer SERVFAIL or stay silent to simulate an outage. Large answers
over UDP are truncated (TC bit) so clients retry over TCP, as real servers do.

Usage::

    with DNSServer() as dns:
        svc = dns.headless_service("demo-peers", "ns", "peer", {"demo-0": ("127.0.0.5", 7000)})
        NodeDiscovery(..., config=DiscoveryConfig(dns_domain=svc, dns_nameservers=[dns.nameserver]))

Runs in background threads, so both sync and asyncio tests can use it; also
``python -m integration.dns_server`` serves a JSON zone file for manual tries.
"""

from __future__ import annotations

import errno
import json
import socket
import struct
import sys
import threading
from collections import Counter
from collections.abc import Iterator, Mapping
from contextlib import contextmanager, suppress
from typing import Any

from dnslib import AAAA, QTYPE, RCODE, RR, SRV, A, DNSLabel, DNSRecord

CLUSTER_DOMAIN = "svc.cluster.local"
MAX_UDP = 512


def _key(name: str) -> str:
    return name.lower().rstrip(".")


class DNSServer:
    def __init__(self, host: str = "127.0.4.1", *, port: int = 0, default_ttl: int = 30) -> None:
        self.host = host
        self.port = port  # 0: any free port (53 is what a resolv.conf can name)
        self.default_ttl = default_ttl
        self.mode = "ok"  # "ok" | "servfail" | "drop"
        self.queries: Counter[str] = Counter()  # "udp"/"tcp" and "<qtype> <name>"
        self._lock = threading.Lock()
        self._srv: dict[str, list[tuple[int, int, int, str, int]]] = {}
        self._addr: dict[str, list[tuple[str, int]]] = {}
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._udp: socket.socket | None = None
        self._tcp: socket.socket | None = None

    # -- zone ------------------------------------------------------------------------------

    @property
    def nameserver(self) -> str:
        return f"{self.host}:{self.port}"

    def set_srv(self, name: str, records: list[tuple[int, int, int, str]],
                ttl: int | None = None) -> None:
        """Replace ``name``'s SRV records: ``(priority, weight, port, target)`` each."""
        t = self.default_ttl if ttl is None else ttl
        with self._lock:
            self._srv[_key(name)] = [(p, w, port, _key(tg), t) for p, w, port, tg in records]

    def set_address(self, host: str, ips: list[str], ttl: int | None = None) -> None:
        t = self.default_ttl if ttl is None else ttl
        with self._lock:
            self._addr[_key(host)] = [(ip, t) for ip in ips]

    def delete(self, name: str) -> None:
        """Forget every record of ``name`` (it answers NXDOMAIN from now on)."""
        with self._lock:
            self._srv.pop(_key(name), None)
            self._addr.pop(_key(name), None)

    def headless_service(self, service: str, namespace: str, port_name: str,
                         pods: Mapping[str, tuple[str, int]], *, ttl: int | None = None,
                         priorities: Mapping[str, tuple[int, int]] | None = None) -> str:
        """Publish (or replace) a headless Service's records; returns the SRV name.

        ``pods``: pod name -> (IP, port). ``priorities``: pod -> (priority, weight);
        Kubernetes itself always answers 0 and an equal weight.
        """
        base = f"{service}.{namespace}.{CLUSTER_DOMAIN}"
        name = f"_{port_name}._tcp.{base}"
        weight = 100 // max(1, len(pods))
        records = []
        with self._lock:
            old = {tg for *_, tg, _ in self._srv.get(_key(name), [])}
        for pod, (ip, port) in sorted(pods.items()):
            target = f"{pod}.{base}"
            prio, w = (priorities or {}).get(pod, (0, weight))
            records.append((prio, w, port, target))
            self.set_address(target, [ip], ttl)
            old.discard(_key(target))
        for gone in old:
            self.delete(gone)
        self.set_srv(name, records, ttl)
        self.set_address(base, [ip for ip, _ in pods.values()], ttl)
        return name

    # -- answering -------------------------------------------------------------------------

    def answer(self, data: bytes, limit: int | None) -> bytes | None:
        """The packed reply to a packed query (``limit``: UDP size, None over TCP)."""
        try:
            request = DNSRecord.parse(data)
        except Exception:
            return None
        if self.mode == "drop":
            return None
        reply = request.reply()
        reply.header.aa = 1
        if self.mode == "servfail":
            reply.header.rcode = RCODE.SERVFAIL
            return bytes(reply.pack())
        with self._lock:
            for q in request.questions:
                name, qtype = _key(str(q.qname)), QTYPE[q.qtype]
                self.queries[f"{qtype} {name}"] += 1
                if name not in self._srv and name not in self._addr:
                    reply.header.rcode = RCODE.NXDOMAIN
                    continue
                if qtype in ("SRV", "ANY"):
                    for prio, w, port, target, ttl in self._srv.get(name, []):
                        reply.add_answer(RR(q.qname, QTYPE.SRV, ttl=ttl,
                                            rdata=SRV(prio, w, port, DNSLabel(target + "."))))
                        for ip, attl in self._addr.get(target, []):
                            reply.add_ar(_addr_rr(target, ip, attl))
                if qtype in ("A", "AAAA", "ANY"):
                    for ip, ttl in self._addr.get(name, []):
                        rr = _addr_rr(name, ip, ttl)
                        if qtype == "ANY" or QTYPE[rr.rtype] == qtype:
                            reply.add_answer(rr)
        packed = bytes(reply.pack())
        if limit is not None:
            size = max([MAX_UDP, *(rr.rclass for rr in request.ar if rr.rtype == QTYPE.OPT)])
            if len(packed) > size:
                short = request.reply()
                short.header.aa = 1
                short.header.tc = 1
                packed = bytes(short.pack())
        return packed

    # -- lifecycle -------------------------------------------------------------------------

    def start(self) -> DNSServer:
        for _ in range(50 if self.port == 0 else 1):
            udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            udp.bind((self.host, self.port))
            port = udp.getsockname()[1]
            tcp = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            tcp.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                tcp.bind((self.host, port))
            except OSError as exc:  # someone holds that TCP port: try another
                udp.close()
                tcp.close()
                if exc.errno != errno.EADDRINUSE or self.port != 0:
                    raise
                continue
            tcp.listen(64)
            self._udp, self._tcp, self.port = udp, tcp, port
            break
        else:
            raise RuntimeError("no free port for DNS on both UDP and TCP")
        for sock in (self._udp, self._tcp):
            sock.settimeout(0.2)
        for target in (self._serve_udp, self._serve_tcp):
            t = threading.Thread(target=target, daemon=True, name=f"dns:{target.__name__}")
            t.start()
            self._threads.append(t)
        return self

    def stop(self) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(timeout=5)
        for sock in (self._udp, self._tcp):
            if sock is not None:
                sock.close()

    def __enter__(self) -> DNSServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _serve_udp(self) -> None:
        assert self._udp is not None
        while not self._stop.is_set():
            try:
                data, peer = self._udp.recvfrom(65535)
            except TimeoutError:
                continue
            except OSError:
                return
            self.queries["udp"] += 1
            out = self.answer(data, MAX_UDP)
            if out is not None:
                self._udp.sendto(out, peer)

    def _serve_tcp(self) -> None:
        assert self._tcp is not None
        while not self._stop.is_set():
            try:
                conn, _ = self._tcp.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            threading.Thread(target=self._tcp_conn, args=(conn,), daemon=True).start()

    def _tcp_conn(self, conn: socket.socket) -> None:
        conn.settimeout(5)
        with conn:
            try:
                while not self._stop.is_set():
                    head = _recv_exact(conn, 2)
                    if head is None:
                        return
                    data = _recv_exact(conn, struct.unpack("!H", head)[0])
                    if data is None:
                        return
                    self.queries["tcp"] += 1
                    out = self.answer(data, None)
                    if out is None:
                        return
                    conn.sendall(struct.pack("!H", len(out)) + out)
            except OSError:
                return


def _addr_rr(name: str, ip: str, ttl: int) -> RR:
    if ":" in ip:
        return RR(name + ".", QTYPE.AAAA, ttl=ttl, rdata=AAAA(ip))
    return RR(name + ".", QTYPE.A, ttl=ttl, rdata=A(ip))


def _recv_exact(conn: socket.socket, n: int) -> bytes | None:
    buf = b""
    while len(buf) < n:
        chunk = conn.recv(n - len(buf))
        if not chunk:
            return None
        buf += chunk
    return buf


@contextmanager
def running(host: str = "127.0.4.1", **kwargs: Any) -> Iterator[DNSServer]:
    server = DNSServer(host, **kwargs).start()
    try:
        yield server
    finally:
        server.stop()


def main(argv: list[str]) -> int:
    """``python -m integration.dns_server ZONE.json [HOST]``: zone is
    ``{"services": [{"service", "namespace", "port_name", "pods": {pod: [ip, port]}}]}``."""
    with open(argv[0]) as f:
        zone = json.load(f)
    server = DNSServer(argv[1] if len(argv) > 1 else "127.0.4.1").start()
    for svc in zone.get("services", []):
        pods = {p: (ip, int(port)) for p, (ip, port) in svc["pods"].items()}
        print(server.headless_service(svc["service"], svc["namespace"], svc["port_name"], pods))
    print(f"serving on {server.nameserver}", flush=True)
    with suppress(KeyboardInterrupt):
        threading.Event().wait()
    server.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
