"""The benchmark's PKI, cached and grown on demand: CA, server, service and N node certificates.

Layout of the cache directory (it doubles as ``--data-dir`` for our broker, which finds its CA in
``ca/`` and its server certificate in ``server/``)::

    ca/                 our CA (certs.CertificateAuthority)
    server/server.crt   chain, DNS localhost, IP 127.0.0.1 and ::1 (what `baetyl` itself issues)
    server/server.key
    service.pem         key + chain of service:bench (the cloud-side client)
    nodes/n<i>.pem      key + certificate of node bench.n<i>
    timings.json        how long issuance took

Node keys are generated here and their certificates issued from CSRs through
``CertificateAuthority.issue_from_csr``, like activation does. A cache whose CA this code cannot
load (an older CA format) is rebuilt.
"""

from __future__ import annotations

import ipaddress
import json
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import certs
from certs.keys import private_key_pem

__all__ = ["NAMESPACE", "FleetPKI", "ensure_pki", "node_id"]

NAMESPACE = "bench"
SERVICE_NAME = "bench"


def node_id(index: int) -> str:
    """The node id (client id, topic segment, certificate CN) of node `index`."""
    return f"{NAMESPACE}.n{index}"


@dataclass(frozen=True, slots=True)
class FleetPKI:
    """Paths of everything the brokers and the load generator load."""

    root: Path

    @property
    def ca_dir(self) -> Path:
        return self.root / "ca"

    @property
    def ca_file(self) -> Path:
        return self.ca_dir / "ca.crt"

    @property
    def crl_file(self) -> Path:
        return self.ca_dir / "crl.pem"

    @property
    def server_cert(self) -> Path:
        return self.root / "server" / "server.crt"

    @property
    def server_key(self) -> Path:
        return self.root / "server" / "server.key"

    @property
    def service_file(self) -> Path:
        return self.root / "service.pem"

    @property
    def service_client_id(self) -> str:
        return f"service:{SERVICE_NAME}"

    def node_file(self, index: int) -> Path:
        return self.root / "nodes" / f"n{index}.pem"


def _write_private(path: Path, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)


def _record_timing(pki: FleetPKI, key: str, count: int, seconds: float) -> None:
    path = pki.root / "timings.json"
    data: dict[str, object] = json.loads(path.read_text()) if path.exists() else {}
    data[key] = {"count": count, "seconds": round(seconds, 3)}
    path.write_text(json.dumps(data, indent=2) + "\n")


def _init_base(pki: FleetPKI) -> None:
    if pki.root.exists():
        shutil.rmtree(pki.root)
    pki.root.mkdir(parents=True, mode=0o700)
    ca = certs.CertificateAuthority.init(pki.ca_dir, common_name="pybaetyl bench CA")
    (pki.root / "server").mkdir(mode=0o700)
    server = ca.issue_server(
        "pybaetyl server",
        dns_names=["localhost"],
        ip_addresses=[ipaddress.ip_address("127.0.0.1"), ipaddress.ip_address("::1")],
    )
    assert server.private_key_pem is not None
    _write_private(pki.server_key, server.private_key_pem)
    pki.server_cert.write_bytes(server.chain_pem)
    service = ca.issue_service(SERVICE_NAME)
    assert service.private_key_pem is not None
    _write_private(pki.service_file, service.private_key_pem + service.chain_pem)
    (pki.root / "nodes").mkdir(mode=0o700)


def ensure_pki(root: Path, nodes: int, *, log: bool = True) -> FleetPKI:
    """Create (or reuse and grow) the cache in `root` so that nodes 0..nodes-1 have certificates."""
    pki = FleetPKI(root)
    ca: certs.CertificateAuthority | None = None
    if pki.ca_file.exists() and pki.service_file.exists():
        try:
            ca = certs.CertificateAuthority.load(pki.ca_dir)
        except certs.CertsError as exc:
            if log:
                print(f"[pki] rebuilding {root}: {exc}", flush=True)
    if ca is None:
        _init_base(pki)
        ca = certs.CertificateAuthority.load(pki.ca_dir)
    missing = [i for i in range(nodes) if not pki.node_file(i).exists()]
    if not missing:
        return pki
    if log:
        print(f"[pki] issuing {len(missing)} node certificates in {root}", flush=True)
    started = time.monotonic()
    for i in missing:
        key = certs.generate_private_key()
        identity = certs.Identity.node(NAMESPACE, f"n{i}")
        cert_pem = ca.issue_from_csr(certs.build_csr(key), identity).certificate_pem
        _write_private(pki.node_file(i), private_key_pem(key) + cert_pem)
    seconds = time.monotonic() - started
    _record_timing(pki, "issue_from_csr", len(missing), seconds)
    if log:
        per = seconds * 1000 / len(missing)
        print(f"[pki]   {len(missing)} issued in {seconds:.1f} s ({per:.2f} ms each)", flush=True)
    return pki
