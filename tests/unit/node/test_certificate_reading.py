"""A node reads its certificates' expiry and fingerprints with the standard library alone,
and gets what the X.509 library says."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest
from cryptography import x509

from continuum.federation.distributed import pki
from continuum.federation.distributed.transport import tls


@pytest.mark.parametrize("days", [1, 365, 40_000])  # 40,000 days: past 2049, GeneralizedTime
def test_expiry_and_fingerprints_match_the_x509_library(days: int) -> None:
    ca = pki.create_ca(days=days)
    leaf = pki.issue_node(ca, "n1", dns_names=["n1.example"], ip_addresses=["127.0.0.1"],
                          days=min(days, 365))
    for pem in (ca.cert_pem, leaf.cert_pem):
        assert tls.not_after(pem) == pki.not_after(pem)
    bundle = leaf.cert_pem + ca.cert_pem
    assert tls.pem_fingerprints(bundle) == [
        tls.fingerprint(x509.load_pem_x509_certificate(p)) for p in (leaf.cert_pem, ca.cert_pem)]
    assert tls.not_after(bundle).tzinfo == dt.UTC


@pytest.mark.parametrize("pem", [b"", b"not a certificate",
                                 b"-----BEGIN CERTIFICATE-----\n!!!\n-----END CERTIFICATE-----\n",
                                 b"-----BEGIN CERTIFICATE-----\nMAA=\n-----END CERTIFICATE-----\n"])
def test_what_is_not_a_certificate_is_refused_clearly(pem: bytes) -> None:
    with pytest.raises(tls.TLSConfigError):
        tls.not_after(pem)


@pytest.mark.parametrize("role", ["node", "admin"])
def test_a_certificate_files_identity_matches_the_x509_library(role: str,
                                                               tmp_path: Path) -> None:
    ca = pki.create_ca()
    pair = (pki.issue_node(ca, "n1", dns_names=["n1.example"], ip_addresses=["127.0.0.1"])
            if role == "node" else pki.issue_client(ca, "someone", role=role))
    out = pki.write_secret_dir(tmp_path, pair, ca.cert_pem)
    parsed = tls.identity_of_certificate(x509.load_pem_x509_certificate(pair.cert_pem))
    assert tls.identity_of_file(out / "tls.crt") == parsed
    (tmp_path / "junk.crt").write_bytes(b"not a certificate")
    with pytest.raises(tls.TLSConfigError, match="cannot read the certificate"):
        tls.identity_of_file(tmp_path / "junk.crt")
