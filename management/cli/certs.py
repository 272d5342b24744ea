"""``baetyl certs``: the PKI from the command line (CA, certificates, revocation, CRL).

The CA lives in ``<data dir>/ca``. ``certs issue device`` is the exception: a device's
certificate comes from the device CA through the management API (``--api-url``/``--token``, as
``baetyl device ...``), which records its serial in the device. Handlers raise
`certs.CertsError`; the root command prints it as ``error: <message>`` and exits 1. Serial
numbers are printed and accepted in hexadecimal (as ``openssl x509 -serial`` prints them); ``0x``
prefixes and ``:`` separators are accepted, decimal is not.
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # the handlers import the PKI (and cryptography) when they run
    from cryptography import x509

    from certs import CertificateAuthority, CertificateRecord, IssuedCertificate
    from management.config import Settings

__all__ = ["add_parser"]

# The values of cryptography's x509.ReasonFlags (but removeFromCRL), certs.KeyType and
# certs.Status, spelled out so that building the parser loads no cryptography
# (tests/certs/test_cli.py checks that they match).
REASONS = (
    "unspecified", "keyCompromise", "cACompromise", "affiliationChanged", "superseded",
    "cessationOfOperation", "certificateHold", "privilegeWithdrawn", "aACompromise",
)  # fmt: skip
KEY_TYPES = ("ec-p256", "ec-p384", "rsa-2048", "rsa-3072", "rsa-4096")
STATUSES = ("valid", "revoked", "superseded", "expired")


def _setting(args: argparse.Namespace, name: str) -> Any:
    """A PKI setting from the configuration tree the root command parsed."""
    settings: Settings = args.settings
    return getattr(settings.pki, name)


def _days(args: argparse.Namespace, setting: str) -> int:
    days: int = args.days if args.days is not None else _setting(args, setting)
    return days


def _ca_dir(args: argparse.Namespace) -> Path:
    return Path(args.data_dir) / "ca"


def _load(args: argparse.Namespace) -> CertificateAuthority:
    from certs import CertificateAuthority

    return CertificateAuthority.load(_ca_dir(args))


def _read(path: Path, what: str) -> bytes:
    from certs import CertsError

    try:
        return path.read_bytes()
    except OSError as exc:
        raise CertsError(f"Cannot read the {what} {path}: {exc.strerror}; check the path.") from exc


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a positive whole number of days")
    return value


def _serial(text: str) -> int:
    from certs import parse_serial

    try:
        return parse_serial(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from exc


def _summary(issued: IssuedCertificate) -> str:
    record = issued.record
    return (
        f"issued {record.kind} certificate {record.serial_hex} for {record.subject}, "
        f"valid until {record.not_after:%Y-%m-%d %H:%M} UTC"
    )


def _emit(data: bytes, out: Path | None, summary: str) -> None:
    """Write public PEM to `out`, or to stdout (with the summary on stderr to keep stdout clean)."""
    from certs import write_public_file

    if out is None:
        sys.stdout.write(data.decode())
        print(summary, file=sys.stderr)
    else:
        write_public_file(out, data)
        print(f"{summary}\nwritten to {out}")


def _write_bundle(out_dir: Path, stem: str, issued: IssuedCertificate, ca_pem: bytes) -> None:
    """Write ``<stem>.crt``, ``<stem>.key`` (0600, if the CA made the key) and ``ca.crt``."""
    from certs import write_private_file, write_public_file

    write_public_file(out_dir / f"{stem}.crt", issued.certificate_pem)
    written = [out_dir / f"{stem}.crt"]
    if issued.private_key_pem is not None:
        write_private_file(out_dir / f"{stem}.key", issued.private_key_pem)
        written.append(out_dir / f"{stem}.key")
    write_public_file(out_dir / "ca.crt", ca_pem)
    written.append(out_dir / "ca.crt")
    print(_summary(issued))
    for path in written:
        print(f"written {path}")


# -- handlers ------------------------------------------------------------------------------------


def _init(args: argparse.Namespace) -> int:
    from certs import CertificateAuthority, KeyType

    ca = CertificateAuthority.init(
        _ca_dir(args),
        common_name=args.common_name or _setting(args, "ca_common_name"),
        key_type=KeyType(args.key_type or _setting(args, "key_type")),
        validity_days=args.days,
    )
    print(f"CA created in {ca.directory}")
    print(f"certificate: {ca.ca_path}")
    print(f"fingerprint (SHA-256): {ca.fingerprint}")
    return 0


def _issue_node(args: argparse.Namespace) -> int:
    from certs import Identity

    ca = _load(args)
    issued = ca.issue_from_csr(
        _read(args.csr, "CSR"),
        Identity.node(args.namespace, args.name),
        validity_days=_days(args, "node_cert_days"),
    )
    _emit(issued.chain_pem, args.out, _summary(issued))
    return 0


def write_public_pem(path: Path, text: str) -> None:
    """Write public PEM ``text`` to ``path`` (0644), atomically: no reader sees half of it."""
    import os
    import tempfile

    from management.cli.apiclient import ClientError

    try:
        fd, temporary = tempfile.mkstemp(dir=path.parent or Path("."), prefix=f".{path.name}.")
        with os.fdopen(fd, "w", encoding="ascii") as file:
            file.write(text)
        os.chmod(temporary, 0o644)
        os.replace(temporary, path)
    except OSError as exc:
        raise ClientError(f"Cannot write {path} ({exc.strerror or exc}); check the path.") from None


def _issue_device(args: argparse.Namespace) -> int:
    """A device's certificate from its CSR, signed by the device CA through the API."""
    from management.cli.apiclient import ApiClient, ClientError, quote, resolve_endpoint

    try:
        csr = args.csr.read_text(encoding="ascii")
    except (OSError, UnicodeDecodeError) as exc:
        reason = getattr(exc, "strerror", None) or "not PEM text"
        raise ClientError(f"Cannot read the CSR {args.csr} ({reason}); check the path.") from None
    client = ApiClient(resolve_endpoint(args.api_url, args.token))
    answer = client.request("POST", f"/devices/{quote(args.name)}/certificates", {"csr": csr})
    write_public_pem(args.out, answer["certificate"])
    print(f"issued device certificate {answer['serial']} for device {args.name}")
    print(f"written {args.out}")
    if args.ca_out is not None:
        write_public_pem(args.ca_out, answer["ca"])
        print(f"written {args.ca_out} (the device CA: devices verify their node's broker with it)")
    return 0


def _issue_operator(args: argparse.Namespace) -> int:
    ca = _load(args)
    csr = None if args.csr is None else _read(args.csr, "CSR")
    days = _days(args, "operator_cert_days")
    issued = ca.issue_operator(args.name, validity_days=days, csr_pem=csr)
    _write_bundle(args.out_dir, args.name, issued, ca.certificate_pem)
    return 0


def _issue_service(args: argparse.Namespace) -> int:
    ca = _load(args)
    csr = None if args.csr is None else _read(args.csr, "CSR")
    days = _days(args, "service_cert_days")
    issued = ca.issue_service(args.name, validity_days=days, csr_pem=csr)
    _write_bundle(args.out_dir, args.name, issued, ca.certificate_pem)
    return 0


def _issue_server(args: argparse.Namespace) -> int:
    from certs import CertsError, KeyType

    dns_names, ips = args.dns, args.ip
    if not dns_names and not ips:
        dns_names = list(_setting(args, "server_dns_names") or [])
        ips = [ipaddress.ip_address(ip) for ip in _setting(args, "server_ips") or []]
    if not dns_names and not ips:
        raise CertsError("A server certificate needs at least one --dns name or --ip address.")
    ca = _load(args)
    issued = ca.issue_server(
        args.cn,
        dns_names=dns_names,
        ip_addresses=ips,
        validity_days=_days(args, "server_cert_days"),
        key_type=KeyType(args.key_type or _setting(args, "key_type")),
    )
    _write_bundle(args.out_dir, "server", issued, ca.certificate_pem)
    return 0


def _renew(args: argparse.Namespace) -> int:
    ca = _load(args)
    issued = ca.renew(
        _read(args.cert, "certificate"), _read(args.csr, "CSR"), validity_days=args.days
    )
    _emit(issued.chain_pem, args.out, _summary(issued))
    return 0


def _revoke(args: argparse.Namespace) -> int:
    from cryptography import x509

    ca = _load(args)
    record = ca.revoke(args.serial, x509.ReasonFlags(args.reason))
    reason = record.reason.value if record.reason is not None else "unspecified"
    revoked_at = f"{record.revoked_at:%Y-%m-%d %H:%M:%S} UTC" if record.revoked_at else "-"
    print(f"revoked {record.kind} certificate {record.serial_hex} ({record.subject})")
    print(f"reason: {reason}; since {revoked_at}")
    print(f"CRL updated: {ca.crl_path}")
    return 0


def _row(record: CertificateRecord) -> list[str]:
    return [
        record.serial_hex,
        record.kind.value,
        record.subject,
        f"{record.not_after:%Y-%m-%d %H:%M}",
        record.status.value,
    ]


def _list(args: argparse.Namespace) -> int:
    records = _load(args).records()
    if args.status is not None:
        records = [r for r in records if r.status == args.status]
    if args.json:
        print(json.dumps([r.to_json() for r in records], indent=2))
        return 0
    if not records:
        print("no certificates")
        return 0
    rows = [["SERIAL", "KIND", "SUBJECT", "NOT AFTER (UTC)", "STATUS"]]
    rows += [_row(r) for r in records]
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        print(
            "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
        )
    return 0


def _crl_number(crl: x509.CertificateRevocationList) -> int:
    from cryptography import x509

    return crl.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number


def _crl(args: argparse.Namespace) -> int:
    from cryptography import x509

    ca = _load(args)
    data = ca.crl_pem()
    crl = x509.load_pem_x509_crl(data)
    next_update = crl.next_update_utc
    when = "never" if next_update is None else f"{next_update:%Y-%m-%d %H:%M} UTC"
    summary = (
        f"CRL number {_crl_number(crl)} with {len(crl)} revoked certificate(s), next update {when}"
    )
    _emit(data, args.out, summary)
    return 0


# -- parsers -------------------------------------------------------------------------------------


def _add_days(parser: argparse.ArgumentParser, shown: str) -> None:
    parser.add_argument(
        "--days",
        type=_positive,
        default=None,
        metavar="N",
        help=f"validity in days (default: {shown})",
    )


def _add_key_type(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--key-type",
        choices=KEY_TYPES,
        default=None,
        help="key algorithm (default: pki.key_type, ec-p256)",
    )


def _add_issue_parsers(
    issue: argparse._SubParsersAction[argparse.ArgumentParser],
) -> None:
    node = issue.add_parser(
        "node",
        help="certify a node's CSR",
        description="Issue a node client certificate from the node's CSR. The identity comes from "
        "--namespace and --name, never from the CSR. Prints the chain (certificate + CA) as PEM.",
    )
    node.add_argument("--namespace", required=True, help="the node's namespace (tenant)")
    node.add_argument("--name", required=True, help="the node's name")
    node.add_argument("--csr", required=True, type=Path, metavar="FILE", help="the PEM CSR")
    _add_days(node, "pki.node_cert_days, 365")
    node.add_argument("--out", type=Path, metavar="FILE", help="write the chain here, not stdout")
    node.set_defaults(func=_issue_node)

    from management.cli.client import connection_options  # standard library only at its top

    device = issue.add_parser(
        "device",
        help="certify a device's CSR with the device CA (through the API)",
        description="Issue a device's client certificate from its CSR, signed by the device CA "
        "through the management API, which decides the identity (namespace, node, device) and "
        "lists the serial in the device. Revoke it with DELETE "
        "/v1/devices/NAME/certificates/SERIAL; deleting the device revokes them all.",
        parents=[connection_options()],
    )
    device.add_argument("name", metavar="NAME", help="the device's name")
    device.add_argument("--csr", required=True, type=Path, metavar="FILE", help="the PEM CSR")
    device.add_argument("--out", required=True, type=Path, metavar="FILE",
                        help="write the certificate here")  # fmt: skip
    device.add_argument(
        "--ca-out", type=Path, metavar="FILE",
        help="write the device CA here (what devices trust for the node broker)",
    )  # fmt: skip
    device.set_defaults(func=_issue_device, client_command=True)

    for kind, func, days in (
        ("operator", _issue_operator, "pki.operator_cert_days, 90"),
        ("service", _issue_service, "365"),
    ):
        sub = issue.add_parser(
            kind,
            help=f"issue a client certificate for a {kind}",
            description=f"Issue a {kind} client certificate and write <name>.crt, <name>.key "
            "(mode 0600) and ca.crt to --out-dir, ready for `mosquitto_sub --cert <name>.crt "
            "--key <name>.key --cafile ca.crt`. With --csr, the key stays yours (not written).",
        )
        sub.add_argument("--name", required=True, help=f"the {kind}'s name (a DNS label)")
        sub.add_argument(
            "--out-dir", required=True, type=Path, metavar="DIR", help="where to write"
        )
        sub.add_argument("--csr", type=Path, metavar="FILE", help="certify this CSR instead")
        _add_days(sub, days)
        sub.set_defaults(func=func)

    server = issue.add_parser(
        "server",
        help="issue a TLS server certificate",
        description="Issue a TLS server certificate (key generated here) and write server.crt, "
        "server.key (mode 0600) and ca.crt to --out-dir.",
    )
    server.add_argument("--cn", required=True, help="the subject common name")
    server.add_argument(
        "--dns",
        nargs="+",
        action="extend",
        default=[],
        metavar="NAME",
        help="DNS names (default, with no --ip either: pki.server_dns_names)",
    )
    server.add_argument(
        "--ip",
        nargs="+",
        action="extend",
        default=[],
        type=ipaddress.ip_address,
        metavar="ADDR",
        help="IP addresses (default, with no --dns either: pki.server_ips)",
    )
    server.add_argument("--out-dir", required=True, type=Path, metavar="DIR", help="where to write")
    _add_key_type(server)
    _add_days(server, "pki.server_cert_days, 825")
    server.set_defaults(func=_issue_server)


def add_parser(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add the ``certs`` command and its subcommands; each sets ``func`` to its handler."""
    parser = subparsers.add_parser(
        "certs",
        help="manage the PKI: CA, certificates, revocation, CRL",
        description="Manage the certificate authority in <data dir>/ca. Serial numbers are "
        "hexadecimal, as `certs list` and `openssl x509 -serial` print them.",
    )
    commands = parser.add_subparsers(dest="certs_command", metavar="COMMAND", required=True)

    init = commands.add_parser(
        "init",
        help="create the CA",
        description="Create the CA (key, certificate, registry, empty CRL) in <data dir>/ca. "
        "An existing CA is never overwritten.",
    )
    init.add_argument(
        "--common-name",
        metavar="CN",
        help="the CA's common name (default: pki.ca_common_name, 'pybaetyl CA')",
    )
    _add_key_type(init)
    init.add_argument(
        "--days", type=_positive, default=3650, metavar="N", help="validity (default: %(default)s)"
    )
    init.set_defaults(func=_init)

    issue = commands.add_parser(
        "issue",
        help="issue a certificate",
        description="Issue a node, device, operator, service or server certificate.",
    )
    _add_issue_parsers(issue.add_subparsers(dest="kind", metavar="KIND", required=True))

    renew = commands.add_parser(
        "renew",
        help="renew a client certificate from a new CSR",
        description="Issue a new certificate for the identity of a current, valid certificate, "
        "from a CSR with a new key. The old certificate is superseded and put on the CRL.",
    )
    renew.add_argument("--cert", required=True, type=Path, metavar="FILE", help="current cert")
    renew.add_argument("--csr", required=True, type=Path, metavar="FILE", help="new PEM CSR")
    renew.add_argument("--days", type=_positive, metavar="N", help="(default: original lifetime)")
    renew.add_argument("--out", type=Path, metavar="FILE", help="write the chain here, not stdout")
    renew.set_defaults(func=_renew)

    revoke = commands.add_parser(
        "revoke",
        help="revoke a certificate",
        description="Revoke a certificate by serial (hex, as `certs list` prints it; 0x and colons "
        "allowed) and rewrite the CRL. Revoking again keeps the first revocation time.",
    )
    revoke.add_argument("serial", type=_serial, metavar="SERIAL", help="hexadecimal serial")
    revoke.add_argument(
        "--reason", choices=REASONS, default="unspecified", help="(default: %(default)s)"
    )
    revoke.set_defaults(func=_revoke)

    listing = commands.add_parser(
        "list",
        help="list issued certificates",
        description="List every certificate the CA issued: serial, kind, subject, expiry, status.",
    )
    listing.add_argument("--json", action="store_true", help="print JSON instead of a table")
    listing.add_argument("--status", choices=STATUSES, help="only certificates in this status")
    listing.set_defaults(func=_list)

    crl = commands.add_parser(
        "crl",
        help="print the current CRL",
        description="Print the current CRL as PEM (re-signed first if it expires within a day).",
    )
    crl.add_argument("--out", type=Path, metavar="FILE", help="write the CRL here, not stdout")
    crl.set_defaults(func=_crl)
