"""Shared fixtures for the discovery integration tests: a CA, node certificates, nodes."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import waiting
from continuum.federation.distributed import discovery, pki
from continuum.federation.distributed.transport import tls


def node_tls(directory: Path, ca: pki.KeyPair, cert_id: str, *,
             trust: pki.KeyPair | None = None) -> tls.TLSFiles:
    """A cert for ``cert_id`` signed by ``ca``; the node trusts ``trust`` (default: ``ca``)."""
    pair = pki.issue_node(ca, cert_id, ip_addresses=["127.0.0.1"])
    d = pki.write_secret_dir(directory / cert_id, pair, (trust or ca).cert_pem)
    return tls.TLSFiles.from_dir(d)


def make_node(tmp: Path, ca: pki.KeyPair, node_id: str, config: discovery.DiscoveryConfig, *,
              host: str = "127.0.0.1", cert_id: str | None = None,
              trust: pki.KeyPair | None = None, storage: Path | None = None,
              ) -> discovery.NodeDiscovery:
    files = node_tls(tmp / "certs" / node_id, ca, cert_id or node_id, trust=trust)
    return discovery.NodeDiscovery(node_id, config, bind_address=f"{host}:0",
                                   storage_path=storage, tls_cert=files.cert,
                                   tls_key=files.key, tls_ca=files.ca)


async def eventually(check: Callable[[], Any], *, timeout: float = 20.0,
                     interval: float = 0.1) -> Any:
    """Poll ``check`` (sync or async) until it returns something truthy, or fail."""
    return await waiting.until(check, timeout=timeout, what="the condition", interval=interval)


async def verified_ids(node: discovery.NodeDiscovery) -> set[str]:
    return {n.node_id for n in await node.get_nodes(verified_only=True) if n.node_id}
