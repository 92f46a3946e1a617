"""The certs CLI writes cert-manager-shaped files that the TLS loader accepts."""

from __future__ import annotations

import ssl
import stat
from pathlib import Path

import pytest
from cryptography import x509

from continuum.federation.distributed import cli
from continuum.federation.distributed.transport import tls


def test_certs_init_node_client(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    ca_dir, node_dir, client_dir = tmp_path / "ca", tmp_path / "n1", tmp_path / "admin"
    assert cli.main(["certs", "init", "--dir", str(ca_dir)]) == 0
    assert cli.main(["certs", "node", "--dir", str(ca_dir), "--id", "n1", "--dns", "n1.example",
                     "--ip", "127.0.0.9", "--out", str(node_dir), "--days", "30"]) == 0
    assert cli.main(["certs", "client", "--dir", str(ca_dir), "--name", "admin",
                     "--role", "admin", "--out", str(client_dir)]) == 0
    for d in (node_dir, client_dir):
        assert {p.name for p in d.iterdir()} == {"tls.crt", "tls.key", "ca.crt"}
        assert stat.S_IMODE((d / "tls.key").stat().st_mode) == 0o600
        tls.server_context(tls.TLSFiles.from_dir(d))  # loads
    cert = x509.load_pem_x509_certificate((node_dir / "tls.crt").read_bytes())
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert set(san.get_values_for_type(x509.DNSName)) == {"n1", "n1.example"}
    assert [str(ip) for ip in san.get_values_for_type(x509.IPAddress)] == ["127.0.0.9"]
    assert tls.NODE_ROLE_URI in san.get_values_for_type(x509.UniformResourceIdentifier)
    client = x509.load_pem_x509_certificate((client_dir / "tls.crt").read_bytes())
    client_uris = client.extensions.get_extension_for_class(
        x509.SubjectAlternativeName).value.get_values_for_type(x509.UniformResourceIdentifier)
    assert client_uris == ["urn:continuum:role:admin"]
    days = (cert.not_valid_after_utc - cert.not_valid_before_utc).days
    assert days == 30
    assert "valid until" in capsys.readouterr().out


@pytest.mark.parametrize("argv", [
    ["client", "--name", "urn:continuum:role:node", "--role", "read"],
    ["client", "--name", "admin\n", "--role", "admin"],
    ["node", "--id", "urn:continuum:role:node"],
    ["node", "--id", "n1", "--dns", "*.local"],
    ["node", "--id", "n1\n"],
], ids=["client-named-like-a-role", "client-name-with-newline", "node-named-like-a-role",
        "node-with-a-wildcard", "node-id-with-newline"])
def test_no_name_can_borrow_a_role_or_another_node(argv: list[str], tmp_path: Path,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    """A name goes into the common name (clients) or a DNS SAN (nodes), never into a role:
    names that look like role URIs, wildcards or carry a newline are refused, nothing is
    written."""
    ca_dir, out = tmp_path / "ca", tmp_path / "out"
    assert cli.main(["certs", "init", "--dir", str(ca_dir)]) == 0
    assert cli.main(["certs", *argv[:1], "--dir", str(ca_dir), *argv[1:], "--out",
                     str(out)]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: ") and len(err.strip().splitlines()) == 1
    assert not out.exists()


def test_a_client_role_is_required(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["certs", "init", "--dir", str(tmp_path / "ca")]) == 0
    with pytest.raises(SystemExit):
        cli.main(["certs", "client", "--dir", str(tmp_path / "ca"), "--name", "x",
                  "--out", str(tmp_path / "x")])
    assert "--role" in capsys.readouterr().err


def test_certs_errors_are_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = cli.main(["certs", "node", "--dir", str(tmp_path / "missing"), "--id", "n1",
                     "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert code == 1
    assert err.startswith("error: ")
    assert len(err.strip().splitlines()) == 1
    assert "Traceback" not in err


def test_tls_context_refuses_tls12(tmp_path: Path) -> None:
    cli.main(["certs", "init", "--dir", str(tmp_path / "ca")])
    cli.main(["certs", "node", "--dir", str(tmp_path / "ca"), "--id", "n", "--out",
              str(tmp_path / "n")])
    ctx = tls.server_context(tls.TLSFiles.from_dir(tmp_path / "n"))
    assert ctx.minimum_version == ssl.TLSVersion.TLSv1_3
    assert ctx.verify_mode == ssl.CERT_REQUIRED
