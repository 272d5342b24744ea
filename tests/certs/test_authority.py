"""The CA on disk: creation, loading, issuing, revocation, the CRL and the registry."""

from __future__ import annotations

import ipaddress
import json
import stat
import threading
from datetime import timedelta
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID

from certs import (
    CLOCK_SKEW,
    CAExistsError,
    CAInvalidError,
    CANotFoundError,
    CertificateAuthority,
    CertificateKind,
    CertificateNotFoundError,
    Identity,
    InsecurePermissionsError,
    Status,
    format_serial,
    parse_serial,
)
from tests.certs.helpers import FakeClock, new_csr, openssl

NODE = Identity.node("acme", "gw-1")


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def _crl(ca: CertificateAuthority) -> x509.CertificateRevocationList:
    return x509.load_pem_x509_crl(ca.crl_path.read_bytes())


def test_init_creates_the_directory(tmp_path: Path) -> None:
    """init writes the key 0600 in a 0700 directory, the certificate, the journal, an empty CRL."""
    ca = CertificateAuthority.init(tmp_path / "data" / "ca")
    assert _mode(ca.directory) == 0o700
    assert _mode(ca.directory / "ca.key") == 0o600
    assert _mode(ca.directory / "index.jsonl") == 0o600
    assert ca.ca_path.read_bytes() == ca.certificate_pem
    header, *commits = (ca.directory / "index.jsonl").read_text().splitlines()
    assert json.loads(header) == {"format": "pybaetyl-ca-journal", "version": 1}
    assert [json.loads(line)["events"] for line in commits] == [[{"event": "crl", "number": 1}]]
    assert ca.records() == []
    crl = _crl(ca)
    assert len(crl) == 0
    assert crl.is_signature_valid(ca.certificate.public_key())  # type: ignore[arg-type]


def test_ca_certificate_profile(ca: CertificateAuthority) -> None:
    """The CA may sign end-entity certificates and CRLs only, and names its key."""
    ext = ca.certificate.extensions
    constraints = ext.get_extension_for_class(x509.BasicConstraints)
    assert constraints.critical
    assert constraints.value.ca
    assert constraints.value.path_length == 0
    usage = ext.get_extension_for_class(x509.KeyUsage)
    assert usage.critical
    assert usage.value.key_cert_sign
    assert usage.value.crl_sign
    assert not usage.value.digital_signature
    ext.get_extension_for_class(x509.SubjectKeyIdentifier)
    assert ca.certificate.subject.rfc4514_string() == "CN=pybaetyl CA"
    assert len(ca.fingerprint.split(":")) == 32


def test_init_never_overwrites(ca: CertificateAuthority) -> None:
    """A second init in the same directory raises CAExistsError and leaves the CA as it was."""
    before = (ca.directory / "ca.key").read_bytes()
    with pytest.raises(CAExistsError, match="never overwritten"):
        CertificateAuthority.init(ca.directory)
    assert (ca.directory / "ca.key").read_bytes() == before


def test_init_refuses_a_leftover_key(tmp_path: Path) -> None:
    """A lone ca.key (a half-created CA) is not overwritten either."""
    (tmp_path / "ca").mkdir()
    (tmp_path / "ca" / "ca.key").write_text("precious")
    with pytest.raises(CAExistsError):
        CertificateAuthority.init(tmp_path / "ca")
    assert (tmp_path / "ca" / "ca.key").read_text() == "precious"


def test_load_missing_ca_says_to_init(tmp_path: Path) -> None:
    """Loading where there is no CA tells the user to run `baetyl certs init`."""
    with pytest.raises(CANotFoundError, match="baetyl certs init"):
        CertificateAuthority.load(tmp_path / "nowhere")


def test_load_refuses_a_readable_key(ca: CertificateAuthority) -> None:
    """A ca.key readable by group or others is refused with the chmod to run."""
    (ca.directory / "ca.key").chmod(0o644)
    with pytest.raises(InsecurePermissionsError, match=r"chmod 600 .*ca\.key"):
        CertificateAuthority.load(ca.directory)


def test_load_refuses_a_key_of_another_ca(tmp_path: Path) -> None:
    """A ca.key that does not match ca.crt is refused."""
    first = CertificateAuthority.init(tmp_path / "a")
    second = CertificateAuthority.init(tmp_path / "b")
    (first.directory / "ca.key").write_bytes((second.directory / "ca.key").read_bytes())
    with pytest.raises(CAInvalidError, match="does not match"):
        CertificateAuthority.load(first.directory)


def test_load_refuses_a_missing_certificate(ca: CertificateAuthority) -> None:
    """A CA with its key but without its certificate is reported as incomplete."""
    ca.ca_path.unlink()
    with pytest.raises(CAInvalidError, match=r"ca\.crt is missing"):
        CertificateAuthority.load(ca.directory)


@pytest.mark.parametrize(
    "content",
    [
        "",
        "{not json",
        "{not json\n",
        "[]\n",
        '{"format": "pybaetyl-ca-index", "version": 1}\n',
        '{"format": "pybaetyl-ca-journal", "version": 2}\n',
        '{"format": "pybaetyl-ca-journal", "version": 1}',  # the header itself is incomplete
        '{"format": "x"}\n',
    ],
)
def test_corrupt_journal_is_reported_and_kept(ca: CertificateAuthority, content: str) -> None:
    """A journal without a complete, valid header raises CAInvalidError and is left as it was."""
    journal = ca.directory / "index.jsonl"
    journal.write_text(content)
    with pytest.raises(CAInvalidError, match=r"index\.jsonl is corrupt at line 1"):
        CertificateAuthority.load(ca.directory)
    assert journal.read_text() == content


def test_journal_with_a_bad_record_is_refused(ca: CertificateAuthority) -> None:
    """A record whose identity disagrees with its common name makes the journal corrupt."""
    ca.issue_from_csr(new_csr()[1], NODE)
    journal = ca.directory / "index.jsonl"
    lines = journal.read_text().splitlines(keepends=True)
    commit = json.loads(lines[2])
    commit["events"][0]["record"]["common_name"] = "acme.other"
    lines[2] = json.dumps(commit) + "\n"
    journal.write_text("".join(lines))  # in place and shorter: the running instance reads it again
    with pytest.raises(CAInvalidError, match="corrupt at line 3"):
        ca.records()
    with pytest.raises(CAInvalidError, match="corrupt at line 3"):
        CertificateAuthority.load(ca.directory)


def test_open_or_init_creates_once(tmp_path: Path) -> None:
    """open_or_init creates the CA the first time and loads the same one afterwards."""
    first = CertificateAuthority.open_or_init(tmp_path / "ca")
    second = CertificateAuthority.open_or_init(tmp_path / "ca")
    assert first.fingerprint == second.fingerprint


def test_node_certificate_profile(ca: CertificateAuthority, clock: FakeClock) -> None:
    """A node certificate names only the identity, is a client cert, and starts 5 minutes early."""
    issued = ca.issue_from_csr(new_csr()[1], NODE, validity_days=30)
    cert = issued.certificate
    ext = cert.extensions
    assert cert.subject.rfc4514_string() == "CN=acme.gw-1"
    assert cert.issuer == ca.certificate.subject
    san = ext.get_extension_for_class(x509.SubjectAlternativeName).value
    assert list(san) == [x509.UniformResourceIdentifier("spiffe://pybaetyl/ns/acme/node/gw-1")]
    assert list(ext.get_extension_for_class(x509.ExtendedKeyUsage).value) == [
        ExtendedKeyUsageOID.CLIENT_AUTH
    ]
    usage = ext.get_extension_for_class(x509.KeyUsage)
    assert usage.critical
    assert usage.value.digital_signature
    assert usage.value.key_agreement
    assert not usage.value.key_cert_sign
    assert ext.get_extension_for_class(x509.BasicConstraints).value.ca is False
    ca_ski = ca.certificate.extensions.get_extension_for_class(x509.SubjectKeyIdentifier)
    aki = ext.get_extension_for_class(x509.AuthorityKeyIdentifier).value
    assert aki.key_identifier == ca_ski.value.digest
    ext.get_extension_for_class(x509.SubjectKeyIdentifier)
    start = clock.now.replace(microsecond=0)
    assert cert.not_valid_before_utc == start - CLOCK_SKEW
    assert cert.not_valid_after_utc == start + timedelta(days=30)
    assert 0 < cert.serial_number < 2**159
    assert issued.chain_pem == issued.certificate_pem + ca.certificate_pem
    assert issued.private_key_pem is None
    assert "PRIVATE" not in repr(issued)


def test_node_certificate_verifies_with_openssl(ca: CertificateAuthority, tmp_path: Path) -> None:
    """`openssl verify -CAfile ca.crt` accepts a node certificate issued from a CSR."""
    issued = ca.issue_from_csr(new_csr()[1], NODE)
    (tmp_path / "node.crt").write_bytes(issued.certificate_pem)
    result = openssl("verify", "-CAfile", str(ca.ca_path), str(tmp_path / "node.crt"))
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().endswith("OK")


def test_rsa_client_gets_key_encipherment(ca: CertificateAuthority) -> None:
    """An RSA client key gets keyEncipherment instead of keyAgreement."""
    from certs import KeyType, build_csr, generate_private_key

    issued = ca.issue_from_csr(build_csr(generate_private_key(KeyType.RSA_2048)), NODE)
    usage = issued.certificate.extensions.get_extension_for_class(x509.KeyUsage).value
    assert usage.key_encipherment
    assert not usage.key_agreement


def test_operator_without_csr_gets_a_key(ca: CertificateAuthority) -> None:
    """issue_operator makes a key when no CSR is given and returns it with the certificate."""
    issued = ca.issue_operator("alice")
    assert issued.private_key_pem is not None
    key = x509.load_pem_x509_certificate(issued.certificate_pem).public_key()
    assert isinstance(key, ec.EllipticCurvePublicKey)
    assert Identity.from_certificate(issued.certificate) == Identity.operator("alice")
    assert issued.record.kind is CertificateKind.OPERATOR
    assert issued.record.lifetime == timedelta(days=90) + CLOCK_SKEW


def test_service_from_csr_returns_no_key(ca: CertificateAuthority) -> None:
    """issue_service with a CSR certifies that key and returns no private key."""
    issued = ca.issue_service("shadow", csr_pem=new_csr("service:shadow")[1])
    assert issued.private_key_pem is None
    assert Identity.from_certificate(issued.certificate) == Identity.service("shadow")


def test_server_certificate(ca: CertificateAuthority) -> None:
    """A server certificate carries the DNS names and IPs given, EKU serverAuth, and its key."""
    issued = ca.issue_server(
        "broker.example.com",
        dns_names=["broker.example.com"],
        ip_addresses=[ipaddress.ip_address("10.0.0.1")],
    )
    ext = issued.certificate.extensions
    san = ext.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["broker.example.com"]
    assert san.get_values_for_type(x509.IPAddress) == [ipaddress.ip_address("10.0.0.1")]
    assert list(ext.get_extension_for_class(x509.ExtendedKeyUsage).value) == [
        ExtendedKeyUsageOID.SERVER_AUTH
    ]
    assert issued.private_key_pem is not None
    assert issued.record.identity is None
    assert issued.record.kind is CertificateKind.SERVER


def test_server_certificate_needs_a_name(ca: CertificateAuthority) -> None:
    """A server certificate without any SAN is refused."""
    with pytest.raises(ValueError, match="at least one DNS name"):
        ca.issue_server("broker", dns_names=[], ip_addresses=[])


def test_records_and_expiry(ca: CertificateAuthority, clock: FakeClock) -> None:
    """Records list every certificate; a valid one turns expired once the clock passes not_after."""
    issued = ca.issue_from_csr(new_csr()[1], NODE, validity_days=1)
    assert [r.serial for r in ca.records()] == [issued.record.serial]
    assert ca.record(issued.record.serial).status is Status.VALID
    clock.advance(timedelta(days=1, seconds=1))
    assert ca.record(issued.record.serial).status is Status.EXPIRED
    with pytest.raises(CertificateNotFoundError, match="baetyl certs list"):
        ca.record(12345)


def test_revoke_puts_the_serial_on_the_crl(ca: CertificateAuthority, tmp_path: Path) -> None:
    """A revoked certificate is in crl.pem with date and reason, per cryptography and openssl."""
    issued = ca.issue_from_csr(new_csr()[1], NODE)
    kept = ca.issue_from_csr(new_csr()[1], Identity.node("acme", "gw-2"))
    number_before = _crl(ca).extensions.get_extension_for_class(x509.CRLNumber).value.crl_number
    record = ca.revoke(issued.record.serial, x509.ReasonFlags.key_compromise)
    assert record.status is Status.REVOKED
    assert ca.is_revoked(issued.record.serial)
    assert not ca.is_revoked(kept.record.serial)
    assert ca.revoked_serials() == {issued.record.serial}

    crl = _crl(ca)
    assert crl.is_signature_valid(ca.certificate.public_key())  # type: ignore[arg-type]
    entry = crl.get_revoked_certificate_by_serial_number(issued.record.serial)
    assert entry is not None
    assert entry.revocation_date_utc == record.revoked_at
    reason = entry.extensions.get_extension_for_class(x509.CRLReason).value.reason
    assert reason is x509.ReasonFlags.key_compromise
    assert crl.get_revoked_certificate_by_serial_number(kept.record.serial) is None
    number = crl.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number
    assert number == number_before + 1
    crl.extensions.get_extension_for_class(x509.AuthorityKeyIdentifier)

    text = openssl("crl", "-in", str(ca.crl_path), "-noout", "-text")
    assert text.returncode == 0, text.stderr
    assert format_serial(issued.record.serial) in text.stdout
    assert "Key Compromise" in text.stdout


def test_openssl_crl_check(ca: CertificateAuthority, tmp_path: Path) -> None:
    """`openssl verify -crl_check` fails for the revoked certificate and passes for the other."""
    revoked = ca.issue_from_csr(new_csr()[1], NODE)
    kept = ca.issue_from_csr(new_csr()[1], Identity.node("acme", "gw-2"))
    ca.revoke(revoked.record.serial)
    for name, issued in (("revoked", revoked), ("kept", kept)):
        (tmp_path / f"{name}.crt").write_bytes(issued.certificate_pem)

    def verify(name: str) -> tuple[int, str]:
        result = openssl(
            "verify",
            "-crl_check",
            "-CAfile",
            str(ca.ca_path),
            "-CRLfile",
            str(ca.crl_path),
            str(tmp_path / f"{name}.crt"),
        )
        return result.returncode, result.stdout + result.stderr

    code, output = verify("revoked")
    assert code != 0
    assert "certificate revoked" in output
    code, output = verify("kept")
    assert code == 0, output


def test_unspecified_reason_is_omitted(ca: CertificateAuthority) -> None:
    """Revoking without a reason lists the serial without a reason code (RFC 5280 5.3.1)."""
    issued = ca.issue_from_csr(new_csr()[1], NODE)
    ca.revoke(issued.record.serial)
    entry = _crl(ca).get_revoked_certificate_by_serial_number(issued.record.serial)
    assert entry is not None
    assert len(entry.extensions) == 0


def test_revoke_twice_keeps_the_first_time(ca: CertificateAuthority, clock: FakeClock) -> None:
    """Revoking again is harmless and keeps the first revocation time and reason."""
    serial = ca.issue_from_csr(new_csr()[1], NODE).record.serial
    first = ca.revoke(serial, x509.ReasonFlags.key_compromise)
    clock.advance(timedelta(hours=1))
    second = ca.revoke(serial, x509.ReasonFlags.cessation_of_operation)
    assert second.revoked_at == first.revoked_at
    assert second.reason is x509.ReasonFlags.key_compromise


def test_revoke_unknown_serial(ca: CertificateAuthority) -> None:
    """Revoking a serial this CA never issued raises CertificateNotFoundError."""
    with pytest.raises(CertificateNotFoundError, match="ABCDEF"):
        ca.revoke(0xABCDEF)


def test_revocations_persist_across_load(ca: CertificateAuthority) -> None:
    """A new CertificateAuthority on the same directory sees the revocation and its reason."""
    serial = ca.issue_from_csr(new_csr()[1], NODE).record.serial
    ca.revoke(serial, x509.ReasonFlags.affiliation_changed)
    again = CertificateAuthority.load(ca.directory)
    record = again.record(serial)
    assert record.status is Status.REVOKED
    assert record.reason is x509.ReasonFlags.affiliation_changed
    assert record.identity == NODE
    assert again.is_revoked(serial)


def test_revocation_by_another_instance_is_seen(ca: CertificateAuthority) -> None:
    """A revocation made through another instance (the CLI) is seen by a running one."""
    serial = ca.issue_from_csr(new_csr()[1], NODE).record.serial
    assert not ca.is_revoked(serial)
    CertificateAuthority.load(ca.directory).revoke(serial)
    assert ca.is_revoked(serial)


def test_concurrent_issuing_loses_nothing(ca: CertificateAuthority) -> None:
    """Two instances issuing from several threads at once keep every record (the lock works)."""
    other = CertificateAuthority.load(ca.directory)
    csrs = [new_csr()[1] for _ in range(16)]
    errors: list[BaseException] = []

    def work(authority: CertificateAuthority, batch: list[bytes]) -> None:
        try:
            for csr in batch:
                authority.issue_from_csr(csr, NODE)
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [
        threading.Thread(target=work, args=(authority, csrs[i::4]))
        for i, authority in enumerate([ca, other, ca, other])
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert len(CertificateAuthority.load(ca.directory).records()) == 16


def test_crl_pem_is_refreshed_before_it_expires(ca: CertificateAuthority, clock: FakeClock) -> None:
    """crl_pem re-signs the CRL when its next update is less than a day away."""
    fresh = ca.crl_pem()
    assert fresh == ca.crl_path.read_bytes()
    clock.advance(timedelta(days=6, hours=12))
    refreshed = x509.load_pem_x509_crl(ca.crl_pem())
    assert refreshed.next_update_utc is not None
    assert refreshed.next_update_utc > clock.now + timedelta(days=6)


def test_build_crl_increments_the_number(ca: CertificateAuthority) -> None:
    """Every CRL signed gets the next CRL number."""
    first = ca.build_crl().extensions.get_extension_for_class(x509.CRLNumber).value.crl_number
    second = ca.build_crl().extensions.get_extension_for_class(x509.CRLNumber).value.crl_number
    assert second == first + 1


@pytest.mark.parametrize(
    ("text", "serial"),
    [("ABCDEF", 0xABCDEF), ("0xabcdef", 0xABCDEF), ("ab:cd:ef", 0xABCDEF), ("10", 16)],
)
def test_parse_serial_is_hex(text: str, serial: int) -> None:
    """Serials are read as hex, with or without 0x and colons; plain digits are hex too."""
    assert parse_serial(text) == serial
    assert parse_serial(format_serial(serial)) == serial


@pytest.mark.parametrize("text", ["", "0x", "xyz", "12 34"])
def test_parse_serial_refuses_non_hex(text: str) -> None:
    """Anything that is not hexadecimal is refused."""
    with pytest.raises(ValueError, match="not hexadecimal"):
        parse_serial(text)
