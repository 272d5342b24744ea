"""First start and every start: the data directory, the CA and the server certificate."""

from __future__ import annotations

import ipaddress
import logging
from datetime import UTC, datetime, timedelta

from cryptography import x509

from broker import TLSFiles
from certs import CertificateAuthority, write_private_file, write_public_file
from management.config import Settings

__all__ = ["RENEW_SERVER_BEFORE", "ensure_pki"]

log = logging.getLogger(__name__)

# A server certificate closer than this to its expiry is replaced at start.
RENEW_SERVER_BEFORE = timedelta(days=30)
SERVER_CERT, SERVER_KEY = "server.crt", "server.key"


def ensure_pki(settings: Settings) -> tuple[CertificateAuthority, TLSFiles]:
    """Open (or on first start create) the CA, and make sure the server certificate is current."""
    settings.data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    ca = CertificateAuthority.open_or_init(settings.ca_dir, common_name=settings.pki.ca_common_name)
    files = TLSFiles(
        ca=ca.ca_path,
        cert=settings.server_dir / SERVER_CERT,
        key=settings.server_dir / SERVER_KEY,
        crl=ca.crl_path,
    )
    if _server_cert_needed(files, settings):
        issued = ca.issue_server(
            "pybaetyl server",
            dns_names=settings.pki.server_dns_names,
            ip_addresses=[ipaddress.ip_address(ip) for ip in settings.pki.server_ips],
            validity_days=settings.pki.server_cert_days,
        )
        assert issued.private_key_pem is not None
        # Key first: a reader never sees a new certificate beside the old key.
        write_private_file(files.key, issued.private_key_pem)
        write_public_file(files.cert, issued.chain_pem)
        log.info("issued the server certificate %s", files.cert)
    ca.crl_pem()  # re-signs crl.pem when it is close to its next update
    return ca, files


def _server_cert_needed(files: TLSFiles, settings: Settings) -> bool:
    if not files.cert.exists() or not files.key.exists():
        return True
    try:
        cert = x509.load_pem_x509_certificate(files.cert.read_bytes())
        sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except (ValueError, x509.ExtensionNotFound):
        log.warning("the server certificate %s is unreadable; issuing a new one", files.cert)
        return True
    if cert.not_valid_after_utc - datetime.now(UTC) < RENEW_SERVER_BEFORE:
        return True
    wanted_dns = set(settings.pki.server_dns_names)
    wanted_ips = {ipaddress.ip_address(ip) for ip in settings.pki.server_ips}
    return (
        set(sans.get_values_for_type(x509.DNSName)) != wanted_dns
        or set(sans.get_values_for_type(x509.IPAddress)) != wanted_ips
    )
