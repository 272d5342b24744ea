"""The ``baetyl certs`` command group, driven through its parser as the root command would."""

from __future__ import annotations

import argparse
import json
import stat
from pathlib import Path

import pytest
from cryptography import x509

from certs import (
    CAExistsError,
    CANotFoundError,
    CertificateAuthority,
    Identity,
    KeyType,
    Status,
    format_serial,
)
from management.cli.certs import KEY_TYPES, REASONS, STATUSES, add_parser
from management.config import load_settings
from tests.certs.helpers import new_csr, openssl


def run(data_dir: Path, *argv: str) -> int:
    """Parse ``certs <argv>`` with a root parser like the real one and call the handler."""
    parser = argparse.ArgumentParser(prog="baetyl")
    add_parser(parser.add_subparsers())
    args = parser.parse_args(["certs", *argv])
    args.data_dir = data_dir
    args.settings = load_settings(data_dir=data_dir, environ={})
    code: int = args.func(args)
    return code


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    """A data directory with an initialised CA."""
    run(tmp_path / "data", "init")
    return tmp_path / "data"


def _ca(data_dir: Path) -> CertificateAuthority:
    return CertificateAuthority.load(data_dir / "ca")


def test_init_prints_path_and_fingerprint(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`certs init` creates the CA in <data dir>/ca and prints where and its SHA-256 fingerprint."""
    assert run(tmp_path, "init", "--common-name", "Test CA") == 0
    out = capsys.readouterr().out
    ca = _ca(tmp_path)
    assert str(ca.ca_path) in out
    assert ca.fingerprint in out
    assert ca.certificate.subject.rfc4514_string() == "CN=Test CA"
    result = openssl("x509", "-in", str(ca.ca_path), "-noout", "-fingerprint", "-sha256")
    assert ca.fingerprint in result.stdout


def test_init_twice_is_an_error(data_dir: Path) -> None:
    """A second `certs init` raises CAExistsError for the root to print."""
    with pytest.raises(CAExistsError):
        run(data_dir, "init")


def test_commands_need_a_ca(tmp_path: Path) -> None:
    """Without a CA, commands raise CANotFoundError telling to run init."""
    with pytest.raises(CANotFoundError, match="baetyl certs init"):
        run(tmp_path, "list")


def test_issue_node_to_stdout(
    data_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`certs issue node` without --out prints the chain on stdout and the summary on stderr."""
    (tmp_path / "node.csr").write_bytes(new_csr()[1])
    code = run(
        data_dir, "issue", "node", "--namespace", "acme", "--name", "gw-1",
        "--csr", str(tmp_path / "node.csr"),
    )  # fmt: skip
    assert code == 0
    captured = capsys.readouterr()
    chain = x509.load_pem_x509_certificates(captured.out.encode())
    assert Identity.from_certificate(chain[0]) == Identity.node("acme", "gw-1")
    assert chain[1] == _ca(data_dir).certificate
    assert "issued node certificate" in captured.err
    record = _ca(data_dir).records()[0]
    assert record.lifetime.days == 365


def test_issue_node_to_file_with_days(data_dir: Path, tmp_path: Path) -> None:
    """`--out` writes the chain (0644) and `--days` sets the lifetime; openssl verifies it."""
    (tmp_path / "node.csr").write_bytes(new_csr()[1])
    run(
        data_dir, "issue", "node", "--namespace", "acme", "--name", "gw-1",
        "--csr", str(tmp_path / "node.csr"), "--days", "10", "--out", str(tmp_path / "node.pem"),
    )  # fmt: skip
    assert stat.S_IMODE((tmp_path / "node.pem").stat().st_mode) == 0o644
    assert _ca(data_dir).records()[0].lifetime.days == 10
    result = openssl(
        "verify", "-CAfile", str(data_dir / "ca" / "ca.crt"), str(tmp_path / "node.pem")
    )
    assert result.returncode == 0, result.stderr


def test_issue_node_days_default_from_settings(data_dir: Path, tmp_path: Path) -> None:
    """Without --days, the node lifetime comes from the settings' pki.node_cert_days."""
    (tmp_path / "node.csr").write_bytes(new_csr()[1])
    parser = argparse.ArgumentParser()
    add_parser(parser.add_subparsers())
    args = parser.parse_args(
        [
            "certs",
            "issue",
            "node",
            "--namespace",
            "acme",
            "--name",
            "gw-1",
            "--csr",
            str(tmp_path / "node.csr"),
            "--out",
            str(tmp_path / "node.pem"),
        ]
    )
    args.data_dir = data_dir
    args.settings = load_settings(
        data_dir=data_dir, environ={}, overrides=["pki.node_cert_days=42"]
    )
    args.func(args)
    assert _ca(data_dir).records()[0].lifetime.days == 42


def test_issue_operator_writes_a_bundle(data_dir: Path, tmp_path: Path) -> None:
    """`certs issue operator` writes <name>.crt, <name>.key (0600) and ca.crt for mosquitto_sub."""
    out = tmp_path / "alice"
    run(data_dir, "issue", "operator", "--name", "alice", "--out-dir", str(out))
    assert stat.S_IMODE((out / "alice.key").stat().st_mode) == 0o600
    assert stat.S_IMODE((out / "alice.crt").stat().st_mode) == 0o644
    cert = x509.load_pem_x509_certificate((out / "alice.crt").read_bytes())
    assert Identity.from_certificate(cert) == Identity.operator("alice")
    assert (out / "ca.crt").read_bytes() == (data_dir / "ca" / "ca.crt").read_bytes()
    result = openssl("pkey", "-in", str(out / "alice.key"), "-noout")
    assert result.returncode == 0, result.stderr


def test_issue_service_and_server(data_dir: Path, tmp_path: Path) -> None:
    """Service and server bundles are written; the server has the DNS names and IPs asked for."""
    run(data_dir, "issue", "service", "--name", "shadow", "--out-dir", str(tmp_path / "svc"))
    assert (tmp_path / "svc" / "shadow.key").exists()
    run(
        data_dir, "issue", "server", "--cn", "broker", "--dns", "broker", "broker.local",
        "--ip", "127.0.0.1", "--ip", "::1", "--out-dir", str(tmp_path / "srv"),
    )  # fmt: skip
    cert = x509.load_pem_x509_certificate((tmp_path / "srv" / "server.crt").read_bytes())
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["broker", "broker.local"]
    assert [str(ip) for ip in san.get_values_for_type(x509.IPAddress)] == ["127.0.0.1", "::1"]
    assert stat.S_IMODE((tmp_path / "srv" / "server.key").stat().st_mode) == 0o600


def test_renew(data_dir: Path, tmp_path: Path) -> None:
    """`certs renew` writes the new chain and supersedes the old certificate."""
    old = _ca(data_dir).issue_from_csr(new_csr()[1], Identity.node("acme", "gw-1"))
    (tmp_path / "old.crt").write_bytes(old.certificate_pem)
    (tmp_path / "new.csr").write_bytes(new_csr()[1])
    run(
        data_dir, "renew", "--cert", str(tmp_path / "old.crt"), "--csr", str(tmp_path / "new.csr"),
        "--out", str(tmp_path / "new.pem"),
    )  # fmt: skip
    new = x509.load_pem_x509_certificates((tmp_path / "new.pem").read_bytes())[0]
    assert Identity.from_certificate(new) == Identity.node("acme", "gw-1")
    assert _ca(data_dir).record(old.record.serial).status is Status.SUPERSEDED


@pytest.mark.parametrize("style", ["plain", "0x", "colons", "lower"])
def test_revoke_accepts_hex_serials(
    data_dir: Path, style: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """`certs revoke` takes the hex serial as list prints it, with 0x, colons or lower case."""
    serial = _ca(data_dir).issue_operator("alice").record.serial
    text = format_serial(serial)
    written = {
        "plain": text,
        "0x": "0x" + text,
        "colons": ":".join(text[i : i + 2] for i in range(0, len(text), 2)),
        "lower": text.lower(),
    }[style]
    run(data_dir, "revoke", written, "--reason", "keyCompromise")
    record = _ca(data_dir).record(serial)
    assert record.status is Status.REVOKED
    assert record.reason is x509.ReasonFlags.key_compromise
    assert text in capsys.readouterr().out


def test_revoke_refuses_non_hex(data_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A serial that is not hex is a usage error from argparse."""
    with pytest.raises(SystemExit):
        run(data_dir, "revoke", "not-a-serial")
    assert "not hexadecimal" in capsys.readouterr().err


def test_list_table_json_and_filter(data_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """`certs list` prints a table, --json a document, and --status filters."""
    ca = _ca(data_dir)
    kept = ca.issue_operator("alice").record
    gone = ca.issue_operator("bob").record
    ca.revoke(gone.serial)
    capsys.readouterr()

    run(data_dir, "list")
    table = capsys.readouterr().out.splitlines()
    assert table[0].split() == ["SERIAL", "KIND", "SUBJECT", "NOT", "AFTER", "(UTC)", "STATUS"]
    assert any(kept.serial_hex in line and line.endswith("valid") for line in table)
    assert any(gone.serial_hex in line and line.endswith("revoked") for line in table)

    run(data_dir, "list", "--json", "--status", "revoked")
    document = json.loads(capsys.readouterr().out)
    assert [(d["serial"], d["status"]) for d in document] == [(gone.serial_hex, "revoked")]


def test_crl_to_stdout_and_file(
    data_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`certs crl` prints the PEM CRL, or writes it with --out."""
    serial = _ca(data_dir).issue_operator("alice").record.serial
    _ca(data_dir).revoke(serial)
    capsys.readouterr()
    run(data_dir, "crl")
    crl = x509.load_pem_x509_crl(capsys.readouterr().out.encode())
    assert crl.get_revoked_certificate_by_serial_number(serial) is not None
    run(data_dir, "crl", "--out", str(tmp_path / "crl.pem"))
    assert x509.load_pem_x509_crl((tmp_path / "crl.pem").read_bytes()) == crl


def test_every_parser_has_help_and_description() -> None:
    """Each command and subcommand documents itself with help and description."""
    root = argparse.ArgumentParser()
    subparsers = root.add_subparsers()
    add_parser(subparsers)
    seen: list[str] = []

    def walk(action: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
        helps = {choice.dest: choice.help for choice in action._choices_actions}
        for name, parser in action.choices.items():
            assert helps.get(name), f"{name} has no help"
            assert parser.description, f"{name} has no description"
            seen.append(name)
            for sub in parser._actions:
                if isinstance(sub, argparse._SubParsersAction):
                    walk(sub)

    walk(subparsers)
    assert {"certs", "init", "issue", "node", "operator", "service", "server"} <= set(seen)
    assert {"renew", "revoke", "list", "crl"} <= set(seen)


def test_parser_choices_match_the_pki() -> None:
    """The choices spelled out for the parser (which loads no cryptography) are the PKI's own."""
    reasons = [r.value for r in x509.ReasonFlags if r is not x509.ReasonFlags.remove_from_crl]
    assert list(REASONS) == reasons
    assert list(KEY_TYPES) == [k.value for k in KeyType]
    assert list(STATUSES) == [s.value for s in Status]
