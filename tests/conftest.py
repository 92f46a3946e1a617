"""Fixtures shared by every test kind: a throwaway cluster CA and node certificates."""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from pathlib import Path

import pytest

from continuum.federation.distributed import pki
from continuum.federation.distributed.transport import tls


class TestPKI:
    """A cluster CA in a temporary directory that issues certificates on demand."""

    __test__ = False

    def __init__(self, root: Path) -> None:
        self.root = root
        self.ca = pki.init_ca(root / "ca")

    def node(self, node_id: str, *, ips: tuple[str, ...] = ("127.0.0.1",),
             dns: tuple[str, ...] = ()) -> tls.TLSFiles:
        pair = pki.issue_node(self.ca, node_id, dns_names=list(dns), ip_addresses=list(ips))
        return tls.TLSFiles.from_dir(pki.write_secret_dir(self.root / node_id, pair,
                                                          self.ca.cert_pem))

    def client(self, name: str, role: str = "admin") -> tls.TLSFiles:
        pair = pki.issue_client(self.ca, name, role=role)
        return tls.TLSFiles.from_dir(pki.write_secret_dir(self.root / f"client-{name}-{role}",
                                                          pair, self.ca.cert_pem))

    def expired_node(self, node_id: str) -> tls.TLSFiles:
        pair = pki.issue(self.ca, node_id, dns_names=[node_id], uris=[tls.NODE_ROLE_URI], days=1,
                         not_before=dt.datetime.now(dt.UTC) - dt.timedelta(days=3))
        return tls.TLSFiles.from_dir(pki.write_secret_dir(self.root / f"expired-{node_id}", pair,
                                                          self.ca.cert_pem))


@pytest.fixture(scope="session")
def cluster_pki(tmp_path_factory: pytest.TempPathFactory) -> TestPKI:
    return TestPKI(tmp_path_factory.mktemp("pki"))


@pytest.fixture(scope="session")
def foreign_pki(tmp_path_factory: pytest.TempPathFactory) -> TestPKI:
    return TestPKI(tmp_path_factory.mktemp("foreign-pki"))


@pytest.fixture
def make_pki(tmp_path: Path) -> Callable[[str], TestPKI]:
    return lambda name: TestPKI(tmp_path / name)
