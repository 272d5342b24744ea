"""The pybaetyl PKI: a certificate authority for nodes, operators, services and servers.

The cloud CA signs; each edge node generates its own key and sends a CSR. The identity in a client
certificate is decided by the caller, never by the CSR, and is read back with
`Identity.from_certificate` on a verified peer certificate::

    ca = CertificateAuthority.open_or_init(data_dir / "ca")
    issued = ca.issue_from_csr(csr_pem, Identity.node("acme", "gateway-1"))
    ca.revoke(issued.record.serial, x509.ReasonFlags.key_compromise)   # crl.pem is rewritten

Exceptions::

    CertsError
    ├── CAExistsError
    ├── CANotFoundError
    ├── CAInvalidError
    ├── InsecurePermissionsError
    ├── PrivateKeyError
    ├── CSRRejectedError
    ├── CertificateNotFoundError
    ├── CertificateRejectedError
    └── InvalidIdentityError

Programming errors (a validity of 0 days, a server certificate without any name) raise ValueError.
"""

from certs.authority import CertificateAuthority, Clock, IssuedCertificate, utc_now
from certs.csr import validate_csr
from certs.errors import (
    CAExistsError,
    CAInvalidError,
    CANotFoundError,
    CertificateNotFoundError,
    CertificateRejectedError,
    CertsError,
    CSRRejectedError,
    InsecurePermissionsError,
    InvalidIdentityError,
    PrivateKeyError,
)
from certs.identity import Identity, Kind
from certs.keys import (
    KeyType,
    PrivateKey,
    build_csr,
    generate_private_key,
    load_private_key,
    write_private_file,
    write_private_key,
    write_public_file,
)
from certs.layout import spki
from certs.profiles import CLOCK_SKEW, fingerprint
from certs.records import CertificateKind, CertificateRecord, Status, format_serial, parse_serial

__all__ = [
    "CLOCK_SKEW",
    "CAExistsError",
    "CAInvalidError",
    "CANotFoundError",
    "CSRRejectedError",
    "CertificateAuthority",
    "CertificateKind",
    "CertificateNotFoundError",
    "CertificateRecord",
    "CertificateRejectedError",
    "CertsError",
    "Clock",
    "Identity",
    "InsecurePermissionsError",
    "InvalidIdentityError",
    "IssuedCertificate",
    "KeyType",
    "Kind",
    "PrivateKey",
    "PrivateKeyError",
    "Status",
    "build_csr",
    "fingerprint",
    "format_serial",
    "generate_private_key",
    "load_private_key",
    "parse_serial",
    "spki",
    "utc_now",
    "validate_csr",
    "write_private_file",
    "write_private_key",
    "write_public_file",
]
