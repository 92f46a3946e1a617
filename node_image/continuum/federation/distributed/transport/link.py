"""How a component reaches its peers: the three ways every shell can run.

* **shared**: given ``transport=`` (the node daemon runs every component over one
  ``PeerTransport`` and one port); the component neither starts nor stops it;
* **own**: given ``bind_address=`` (the spec's standalone use), the component
  builds its own transport from ``tls_cert``/``tls_key``/``tls_ca`` and starts and
  stops it with itself. Without ``tls_ca`` the ``ca.crt`` beside the certificate
  is the CA (cert-manager's Secret layout). Without TLS material the address is
  refused: all network communication is mutual TLS 1.3, unless the caller passes
  ``insecure=True`` (plain HTTP, for tests and benchmarks on one machine);
* **in-process**: neither; the component talks to nothing over the network (the
  spec's snippets), or through an in-process stand-in of its own.

``client_only=True`` lets a component that only dials out (the coordinator's
health probes) build its own transport from TLS files alone, without listening.
Every shell calls ``PeerLink.build`` in its constructor, so the set-up is the
same everywhere.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from . import peer, tls

CA_NEXT_TO_CERT = "ca.crt"


@dataclass(slots=True)
class PeerLink:
    transport: peer.PeerTransport | None
    owned: bool

    @classmethod
    def build(cls, node_id: str, *, transport: peer.PeerTransport | None = None,
              bind_address: str | None = None, tls_cert: str | None = None,
              tls_key: str | None = None, tls_ca: str | None = None,
              peer_domain: str | None = None, client_only: bool = False,
              insecure: bool = False) -> PeerLink:
        if transport is not None:
            return cls(transport, owned=False)
        files = tls.TLSFiles.optional(tls_cert, tls_key, ca_beside(tls_cert, tls_key, tls_ca))
        if bind_address is None and not (client_only and files is not None):
            return cls(None, owned=False)
        if files is None and not insecure:
            raise tls.TLSConfigError(
                f"{node_id}: a network address ({bind_address}) needs mutual TLS; plain HTTP "
                f"only with insecure=True (tests, benchmarks on one machine). {tls.WHAT_TO_PASS}")
        own = peer.PeerTransport(node_id, bind_address, files, peer_domain=peer_domain,
                                 insecure=files is None)
        return cls(own, owned=True)

    @property
    def address(self) -> str | None:
        return self.transport.address if self.transport is not None else None

    async def start(self) -> None:
        if self.owned and self.transport is not None:
            await self.transport.start()

    async def stop(self) -> None:
        if self.owned and self.transport is not None:
            await self.transport.stop()


def ca_beside(cert: str | None, key: str | None, ca: str | None) -> str | None:
    """``ca``, or when only the certificate and key are given, the ``ca.crt`` beside them.

    Mutual authentication verifies peers against a CA, so without one there is no
    secure mode: the CA file of the certificate's directory (cert-manager's layout)
    is the only one we may assume."""
    if ca or not (cert and key):
        return ca
    beside = Path(cert).parent / CA_NEXT_TO_CERT
    if beside.is_file():
        return str(beside)
    raise tls.TLSConfigError(
        f"mutual TLS needs a CA to verify peers: pass tls_ca, or put {CA_NEXT_TO_CERT} "
        f"next to tls_cert (no {beside}). {tls.WHAT_TO_PASS}")
