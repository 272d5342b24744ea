"""The one error tree of the PKI; see the package docstring for its shape."""

from __future__ import annotations

__all__ = [
    "CAExistsError",
    "CAInvalidError",
    "CANotFoundError",
    "CSRRejectedError",
    "CertificateNotFoundError",
    "CertificateRejectedError",
    "CertsError",
    "InsecurePermissionsError",
    "InvalidIdentityError",
    "PrivateKeyError",
]


class CertsError(Exception):
    """Base class of every error raised by the `certs` package."""


class CAExistsError(CertsError):
    """A CA already exists in the directory; it is never overwritten."""


class CANotFoundError(CertsError):
    """No CA exists in the directory."""


class CAInvalidError(CertsError):
    """The CA directory is inconsistent: a file is missing, corrupt, or the key does not match."""


class InsecurePermissionsError(CertsError):
    """A private key file is readable by group or others."""


class PrivateKeyError(CertsError):
    """A private key file cannot be read or holds an unsupported key."""


class CSRRejectedError(CertsError):
    """A CSR is malformed, badly signed, has a weak key, or claims another identity."""


class CertificateNotFoundError(CertsError):
    """No certificate with that serial number was issued by this CA."""


class CertificateRejectedError(CertsError):
    """A presented certificate is not ours, is expired, or is revoked, so it cannot be renewed."""


class InvalidIdentityError(CertsError):
    """A name, URI or certificate does not describe a valid pybaetyl identity."""
