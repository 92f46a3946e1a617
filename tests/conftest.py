"""Fixtures shared by every test kind: a throwaway cluster CA and node certificates, and the
node and operator images built from these sources; the event loops async tests run on."""

from __future__ import annotations

import asyncio
import datetime as dt
from collections.abc import Callable, Mapping
from pathlib import Path

import pytest
import uvloop

from continuum.federation.distributed import pki
from continuum.federation.distributed.transport import tls
from image.containers import ImageBuildError, Images, build_images


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--long", action="store_true",
                     help="also run the long tests (scripts/test --long)")


def pytest_asyncio_loop_factories(
        config: pytest.Config, item: pytest.Item,
) -> Mapping[str, Callable[[], asyncio.AbstractEventLoop]]:
    """Async tests run on the standard loop; those marked ``uvloop_too`` on uvloop as well,
    the loop a node runs (its TLS transport is uvloop's own)."""
    if item.get_closest_marker("uvloop_too") is None:
        return {"asyncio": asyncio.new_event_loop}
    return {"asyncio": asyncio.new_event_loop, "uvloop": uvloop.new_event_loop}


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Tests marked ``long`` run only with ``--long``: the default run stays within CI's
    time budget, and each long test has a shorter sibling that always runs."""
    if config.getoption("--long"):
        return
    skip = pytest.mark.skip(reason="long mode only: scripts/test --long")
    for item in items:
        if "long" in item.keywords:
            item.add_marker(skip)


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


@pytest.fixture(scope="session")
def images() -> Images:
    """Built once per run (``scripts/test`` builds them before pytest starts, so this finds
    them by their content hash). A missing tool fails the tests that need the images."""
    try:
        return build_images()
    except ImageBuildError as exc:
        pytest.fail(str(exc), pytrace=False)
