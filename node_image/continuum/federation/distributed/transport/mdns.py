"""mDNS (RFC 6762 / DNS-SD) with python-zeroconf's asyncio API.

We register one service instance ``<cluster>-<node id>._continuum._tcp.local.``
whose TXT record carries our node id, cluster name and the address peers
should dial, and browse the same type for everyone else. What we hear is a
hint like any other: the caller verifies it over mutual TLS.

mDNS works on one L2 segment only (not across most Kubernetes CNIs or Docker
bridges); ``interfaces=["127.0.0.1"]`` keeps it on loopback for local
clusters and tests instead of spraying every interface.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import socket
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from . import peer

if TYPE_CHECKING:  # zeroconf is imported by a node that runs mDNS, and only then
    from zeroconf import ServiceStateChange, Zeroconf
    from zeroconf.asyncio import AsyncServiceBrowser, AsyncServiceInfo, AsyncZeroconf

log = logging.getLogger(__name__)

SERVICE_TYPE = "_continuum._tcp.local."
INFO_TIMEOUT_MS = 3000


@dataclass(frozen=True, slots=True)
class MdnsPeer:
    node_id: str
    cluster: str
    address: str  # host:port to dial
    instance: str  # the mDNS instance name


def instance_name(cluster: str, node_id: str, service_type: str) -> str:
    label = f"{cluster}-{node_id}"
    if len(label.encode()) > 63:  # DNS label limit: keep it unique with a digest
        label = label[:50] + "-" + hashlib.sha256(label.encode()).hexdigest()[:12]
    return f"{label}.{service_type}"


class MdnsDiscovery:
    """Announce ourselves and keep the current set of peers seen on the segment."""

    def __init__(self, node_id: str, cluster: str, advertise_address: str | None, *,
                 service_type: str = SERVICE_TYPE, interfaces: list[str] | None = None,
                 on_change: Callable[[], None] | None = None) -> None:
        if not service_type.endswith("._tcp.local."):
            raise ValueError(f"mDNS service type must end in '._tcp.local.', got {service_type!r}")
        if advertise_address is not None:
            peer.split_address(advertise_address)
        self.node_id = node_id
        self.cluster = cluster
        self.advertise_address = advertise_address
        self.service_type = service_type
        self.interfaces = interfaces
        self._on_change = on_change
        self._zc: AsyncZeroconf | None = None
        self._browser: AsyncServiceBrowser | None = None
        self._info: AsyncServiceInfo | None = None
        self._peers: dict[str, MdnsPeer] = {}
        self._tasks: set[asyncio.Task[None]] = set()

    def peers(self) -> list[MdnsPeer]:
        return sorted(self._peers.values(), key=lambda p: p.instance)

    async def start(self) -> None:
        from zeroconf import InterfaceChoice, IPVersion
        from zeroconf.asyncio import AsyncServiceBrowser, AsyncZeroconf

        interfaces: Any = self.interfaces if self.interfaces else InterfaceChoice.All
        self._zc = AsyncZeroconf(interfaces=interfaces, ip_version=IPVersion.V4Only)
        if self.advertise_address is not None:
            self._info = self._service_info()
            await self._zc.async_register_service(self._info, allow_name_change=True)
        self._browser = AsyncServiceBrowser(self._zc.zeroconf, [self.service_type],
                                            handlers=[self._on_service])

    async def stop(self) -> None:
        for t in list(self._tasks):
            t.cancel()
        for t in list(self._tasks):
            with contextlib.suppress(asyncio.CancelledError):
                await t
        if self._browser is not None:
            await self._browser.async_cancel()
            self._browser = None
        if self._zc is not None:
            if self._info is not None:  # say goodbye so peers drop us at once
                # the call schedules the goodbye broadcast; await it, or closing
                # right after can cut it off and peers keep us until the TTL
                sent = await self._zc.async_unregister_service(self._info)
                await sent
            await self._zc.async_close()
            self._zc = None
        self._peers.clear()

    def _service_info(self) -> AsyncServiceInfo:
        from zeroconf.asyncio import AsyncServiceInfo

        assert self.advertise_address is not None
        host, port = peer.split_address(self.advertise_address)
        ips = [host] if _is_ipv4(host) and host != "0.0.0.0" else (self.interfaces or ["127.0.0.1"])
        props = {"id": self.node_id, "cluster": self.cluster, "addr": self.advertise_address}
        server = instance_name(self.cluster, self.node_id, "local.")
        return AsyncServiceInfo(
            self.service_type, instance_name(self.cluster, self.node_id, self.service_type),
            addresses=[socket.inet_aton(ip) for ip in ips if _is_ipv4(ip)], port=port,
            properties=props, server=server,
        )

    def _on_service(self, zeroconf: Zeroconf, service_type: str, name: str,
                    state_change: ServiceStateChange) -> None:
        from zeroconf import ServiceStateChange

        if state_change is ServiceStateChange.Removed:
            if self._peers.pop(name, None) is not None:
                self._notify()
            return
        task = asyncio.get_running_loop().create_task(self._resolve(zeroconf, service_type, name))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _resolve(self, zeroconf: Zeroconf, service_type: str, name: str) -> None:
        from zeroconf import IPVersion
        from zeroconf.asyncio import AsyncServiceInfo

        info = AsyncServiceInfo(service_type, name)
        if not await info.async_request(zeroconf, INFO_TIMEOUT_MS):
            log.debug("mDNS: no answer for %s", name)
            return
        props = {_text(k): _text(v) for k, v in (info.properties or {}).items()}
        node_id, cluster = props.get("id"), props.get("cluster")
        address = props.get("addr") or ""
        ips = info.parsed_addresses(IPVersion.V4Only)
        host = address.rpartition(":")[0]
        if (not address or host in ("0.0.0.0", "")) and ips and info.port:
            address = f"{ips[0]}:{info.port}"
        if not node_id or not cluster or ":" not in address:
            log.info("mDNS: ignoring %s: TXT lacks id/cluster/address", name)
            return
        if node_id == self.node_id and cluster == self.cluster:
            return
        found = MdnsPeer(node_id, cluster, address, name)
        if self._peers.get(name) != found:
            self._peers[name] = found
            self._notify()

    def _notify(self) -> None:
        if self._on_change is not None:
            self._on_change()


def _text(v: bytes | str | None) -> str:
    if v is None:
        return ""
    return v.decode("utf-8", "replace") if isinstance(v, bytes) else v


def _is_ipv4(host: str) -> bool:
    try:
        socket.inet_aton(host)
    except OSError:
        return False
    return host.count(".") == 3
