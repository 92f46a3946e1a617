"""A ca.crt holding two CAs (what a CA rotation publishes) over real TLS on loopback.

The node's transport trusts every CA in the bundle, takes in a bundle written while it
runs (``reload_tls``, as the certificate watcher calls it), and reports the fingerprints
the operator's rotation waits for.
"""

from __future__ import annotations

import hashlib
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from continuum.federation.distributed import pki
from continuum.federation.distributed.transport import peer, tls

# Same subject on purpose: OpenSSL must tell the two apart by key, not by name.
NAME = "demo.prod continuum CA"


class Side:
    """One node's mounted TLS directory."""

    def __init__(self, root: Path, node_id: str, signer: pki.KeyPair, trusted: bytes) -> None:
        self.node_id = node_id
        self.dir = root / node_id
        self.write(signer, trusted)

    def write(self, signer: pki.KeyPair, trusted: bytes) -> None:
        pair = pki.issue_node(signer, self.node_id, ip_addresses=["127.0.0.1"])
        pki.write_secret_dir(self.dir, pair, trusted)

    @property
    def files(self) -> tls.TLSFiles:
        return tls.TLSFiles.from_dir(self.dir)


@pytest.fixture
def cas() -> tuple[pki.KeyPair, pki.KeyPair]:
    return pki.create_ca(NAME), pki.create_ca(NAME)


async def _started(side: Side, listen: bool) -> peer.PeerTransport:
    t = peer.PeerTransport(side.node_id, "127.0.0.1:0" if listen else None, side.files)
    t.on("echo", lambda sender, body: {"sender": sender, **body})
    await t.start()
    return t


@pytest.fixture
async def stopper() -> AsyncIterator[list[peer.PeerTransport]]:
    started: list[peer.PeerTransport] = []
    yield started
    for t in started:
        await t.stop()


async def _reaches(client: peer.PeerTransport, server: peer.PeerTransport) -> bool:
    try:
        reply = await client.request(server.address or "", "echo", {"x": 1}, expect="n0")
    except peer.PeerError:
        return False
    return reply == {"sender": client.node_id, "x": 1}


async def test_a_two_ca_bundle_accepts_leaves_of_either(
        tmp_path: Path, cas: tuple[pki.KeyPair, pki.KeyPair],
        stopper: list[peer.PeerTransport]) -> None:
    old, new = cas
    bundle = old.cert_pem + new.cert_pem
    server = await _started(Side(tmp_path, "n0", old, bundle), listen=True)
    stopper.append(server)
    for name, signer in (("n1", old), ("n2", new)):
        client = await _started(Side(tmp_path, name, signer, bundle), listen=False)
        stopper.append(client)
        assert await _reaches(client, server), name
    stranger = await _started(Side(tmp_path, "n3", pki.create_ca(NAME), bundle), listen=False)
    stopper.append(stranger)
    assert not await _reaches(stranger, server)


async def test_a_bundle_written_while_running_is_loaded_on_reload(
        tmp_path: Path, cas: tuple[pki.KeyPair, pki.KeyPair],
        stopper: list[peer.PeerTransport]) -> None:
    old, new = cas
    server_side = Side(tmp_path, "n0", old, old.cert_pem)
    server = await _started(server_side, listen=True)
    stopper.append(server)
    assert tls.file_fingerprints(server_side.files.ca) == tls.pem_fingerprints(old.cert_pem)
    client = await _started(Side(tmp_path, "n2", new, old.cert_pem + new.cert_pem),
                            listen=False)
    stopper.append(client)
    assert not await _reaches(client, server)  # not trusted yet: the leaf is from the new CA

    # Phase 1 reaches this node: ca.crt gains the new CA, its own leaf is unchanged.
    (server_side.dir / "ca.crt").write_bytes(old.cert_pem + new.cert_pem)
    server.reload_tls()
    assert tls.file_fingerprints(server_side.files.ca) == [
        *tls.pem_fingerprints(old.cert_pem), *tls.pem_fingerprints(new.cert_pem)]
    assert await _reaches(client, server)

    # Phase 2 reaches it: a leaf from the new CA; a peer still on the old bundle trusts it.
    server_side.write(new, old.cert_pem + new.cert_pem)
    server.reload_tls()
    lagging = await _started(Side(tmp_path, "n1", old, old.cert_pem + new.cert_pem),
                             listen=False)
    stopper.append(lagging)
    assert await _reaches(lagging, server)
    only_new = await _started(Side(tmp_path, "n4", new, new.cert_pem), listen=False)
    stopper.append(only_new)
    assert await _reaches(only_new, server)


def test_fingerprints_are_of_the_der_and_refuse_garbage(tmp_path: Path) -> None:
    ca = pki.create_ca(NAME)
    der = x509.load_pem_x509_certificate(ca.cert_pem).public_bytes(Encoding.DER)
    assert tls.pem_fingerprints(ca.cert_pem) == [hashlib.sha256(der).hexdigest()]
    with pytest.raises(tls.TLSConfigError):
        tls.pem_fingerprints(b"not a certificate")
    with pytest.raises(tls.TLSConfigError):
        tls.file_fingerprints(tmp_path / "missing.crt")
