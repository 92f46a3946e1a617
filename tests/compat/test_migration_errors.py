"""Where this project deliberately differs from the original module, the error says what
to pass instead (see docs/migration.md)."""

from __future__ import annotations

from pathlib import Path

import pytest

from conftest import TestPKI
from continuum.federation.distributed import (
    DiscoveryMethod,
    FederationCoordinator,
    MeshConfig,
    MultiMasterReplicator,
)
from continuum.federation.distributed.discovery import DiscoveredNode
from continuum.federation.distributed.transport import peer, tls


def test_mutual_tls_without_a_ca_names_what_is_missing(cluster_pki: TestPKI,
                                                        tmp_path: Path) -> None:
    files = cluster_pki.node("node-1")
    with pytest.raises(tls.TLSConfigError, match="missing tls_cert, tls_key"):
        MultiMasterReplicator("node-1", bind_address="127.0.20.61:0", tls_ca=files.ca)
    # Every component looks for the CA beside the certificate (cert-manager's layout);
    # with none there, it says what to pass:
    lone = tmp_path / "lone"
    lone.mkdir()
    (lone / "cert.pem").write_bytes(Path(files.cert).read_bytes())
    (lone / "key.pem").write_bytes(Path(files.key).read_bytes())
    for make in (
        lambda: MultiMasterReplicator("node-1", bind_address="127.0.20.61:0",
                                      tls_cert=str(lone / "cert.pem"),
                                      tls_key=str(lone / "key.pem")),
        lambda: FederationCoordinator("coordinator-1", bind_address="127.0.20.62:0",
                                      tls_cert=str(lone / "cert.pem"),
                                      tls_key=str(lone / "key.pem")),
    ):
        with pytest.raises(tls.TLSConfigError,
                           match="needs a CA to verify peers: pass tls_ca"):
            make()


def test_a_transport_without_tls_says_how_to_make_the_certificates() -> None:
    with pytest.raises(tls.TLSConfigError, match="continuum-federation certs init --dir CA"):
        peer.PeerTransport("node-1", "127.0.20.63:0")


def test_anti_entropy_cannot_be_turned_off_and_the_error_says_what_to_do() -> None:
    with pytest.raises(ValueError, match="raise sync_interval_seconds"):
        MeshConfig(enable_anti_entropy=False)


def test_the_original_positional_discovery_method_is_refused_with_the_keyword_to_use() -> None:
    with pytest.raises(TypeError, match=r"discovery_method=DiscoveryMethod\.DNS"):
        DiscoveredNode("node-2", "127.0.20.64:7000", DiscoveryMethod.DNS)  # type: ignore[arg-type]
    node = DiscoveredNode("node-2", "127.0.20.64:7000", discovery_method=DiscoveryMethod.DNS)
    assert node.sources == {"dns"} and not node.verified
