"""First start and every start: the data directory, the CAs and the server certificate.

Two CAs live in the data directory: ``ca/`` (the cloud's: nodes, operators, services, the
cloud's server certificate; what the cloud broker trusts) and ``device-ca/`` (the node data
plane's: devices' client certificates and node brokers' server certificates). The cloud broker
and the agents never trust the device CA for the cloud, so a node broker's certificate cannot
impersonate the cloud and a device's certificate never reaches the cloud broker.
"""

from __future__ import annotations

import contextlib
import fcntl
import ipaddress
import logging
import os
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

from cryptography import x509

from broker import TLSFiles
from certs import CertificateAuthority, write_private_file, write_public_file
from management.config import ConfigError, Settings

__all__ = [
    "CLOUD_SERVICE_NAME",
    "DEVICE_CA_COMMON_NAME",
    "RENEW_SERVER_BEFORE",
    "DataDirectoryBusy",
    "ensure_device_ca",
    "ensure_pki",
    "ensure_service_cert",
    "serving",
]

log = logging.getLogger(__name__)

# A server certificate closer than this to its expiry is replaced at start.
RENEW_SERVER_BEFORE = timedelta(days=30)
SERVER_CERT, SERVER_KEY = "server.crt", "server.key"
# The cloud's own client identity on an external broker: CN "service:cloud".
CLOUD_SERVICE_NAME = "cloud"
SERVICE_CERT, SERVICE_KEY = "service.crt", "service.key"
DEVICE_CA_COMMON_NAME = "pybaetyl device CA"
# Held (flock) by the process that serves from the data directory; it holds that process's pid.
SERVING_LOCK = "serving.lock"


class DataDirectoryBusy(ConfigError):
    """Another process already serves from the data directory."""


@contextlib.contextmanager
def serving(settings: Settings) -> Iterator[None]:
    """Hold the data directory for this process's broker, or refuse if another process holds it.

    The embedded broker and the SQLite file are one process's: a second ``baetyl up`` on the
    same directory would start its own broker on other ports beside the first, the nodes split
    between two brokers that know nothing of each other. The lock is a ``flock``, gone with its
    process, so a SIGKILLed cloud leaves no stale lock behind. Replicas on an external broker
    share the directory on purpose and do not take it.
    """
    settings.data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    path = settings.data_dir / SERVING_LOCK
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 32).decode("ascii", errors="replace").strip()
            which = f" (pid {holder})" if holder.isdigit() else ""
            raise DataDirectoryBusy(
                f"Another 'baetyl up' or 'baetyl broker run'{which} already serves from the "
                f"data directory {settings.data_dir.resolve()}; stop it first, or give this one "
                "a directory of its own with --data-dir."
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode("ascii"), 0)
        yield
    finally:
        os.close(fd)


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
    with _locked(settings.server_dir):  # replicas sharing the data directory issue it once
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
    ensure_device_ca(settings)
    return ca, files


def ensure_device_ca(settings: Settings) -> CertificateAuthority:
    """Open (or on first start create) the device CA in ``<data-dir>/device-ca``."""
    settings.data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    device_ca = CertificateAuthority.open_or_init(
        settings.device_ca_dir, common_name=DEVICE_CA_COMMON_NAME
    )
    device_ca.crl_pem()
    return device_ca


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


def ensure_service_cert(settings: Settings, ca: CertificateAuthority) -> tuple[Path, Path]:
    """The cloud's client certificate for an external broker (CN ``service:cloud``).

    Issued on first need into ``<data-dir>/server/`` and replaced when close to expiry; every
    replica sharing the data directory uses the same one (the broker's ACL names it).
    """
    cert, key = settings.server_dir / SERVICE_CERT, settings.server_dir / SERVICE_KEY
    with _locked(settings.server_dir):  # replicas starting together issue it once
        if _still_good(cert) and key.exists():
            return cert, key
        issued = ca.issue_service(CLOUD_SERVICE_NAME, validity_days=settings.pki.service_cert_days)
        assert issued.private_key_pem is not None
        write_private_file(key, issued.private_key_pem)
        write_public_file(cert, issued.chain_pem)
    log.info("issued the cloud's service certificate %s", cert)
    return cert, key


@contextlib.contextmanager
def _locked(directory: Path) -> Iterator[None]:
    """Hold an exclusive lock on ``directory``'s lock file (other processes wait)."""
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    fd = os.open(directory / ".lock", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def _still_good(path: Path) -> bool:
    try:
        cert = x509.load_pem_x509_certificate(path.read_bytes())
    except (OSError, ValueError):
        return False
    return cert.not_valid_after_utc - datetime.now(UTC) >= RENEW_SERVER_BEFORE
