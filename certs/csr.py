"""The CA's policy for certificate signing requests.

The identity in a certificate is decided by the caller (from an activation token, an operator's
command), never read from the CSR. A CSR only proves possession of a key; what it may say about
itself is limited to repeating the identity it is for.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TypeAlias

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, rsa, x448, x25519
from cryptography.x509.oid import NameOID

from certs.errors import CSRRejectedError
from certs.identity import Identity

__all__ = ["PublicKey", "describe_key", "validate_csr", "validate_server_csr"]

PublicKey: TypeAlias = ec.EllipticCurvePublicKey | rsa.RSAPublicKey
"""The public keys the CA certifies."""

_ALLOWED_CURVES = (ec.SECP256R1, ec.SECP384R1)
_RSA_MIN_BITS = 2048
_RSA_MAX_BITS = 4096
_ALLOWED = "use an EC P-256/P-384 key or RSA of 2048 to 4096 bits"
_DSA = x509.ObjectIdentifier("1.2.840.10040.4.1")  # id-dsa (RFC 3279)


def describe_key(key: object) -> str:
    """Name a public key's algorithm and size for messages, e.g. ``RSA-1024``, ``EC secp256k1``."""
    if isinstance(key, rsa.RSAPublicKey):
        return f"RSA-{key.key_size}"
    if isinstance(key, ec.EllipticCurvePublicKey):
        return f"EC {key.curve.name}"
    names: list[tuple[type, str]] = [
        (ed25519.Ed25519PublicKey, "Ed25519"),
        (ed448.Ed448PublicKey, "Ed448"),
        (x25519.X25519PublicKey, "X25519"),
        (x448.X448PublicKey, "X448"),
    ]
    for cls, name in names:
        if isinstance(key, cls):
            return name
    # DSA by its class name: cryptography 51 deprecates the names of its dsa module, and using
    # one warns (an error under the tests' -W error) even for a key that is not DSA.
    name = type(key).__name__
    size = getattr(key, "key_size", None)
    if name == "DSAPublicKey" and isinstance(size, int):
        return f"DSA-{size}"
    return name


def _check_key(key: object) -> PublicKey:
    if isinstance(key, ec.EllipticCurvePublicKey) and isinstance(key.curve, _ALLOWED_CURVES):
        return key
    if isinstance(key, rsa.RSAPublicKey):
        if key.key_size < _RSA_MIN_BITS:
            raise CSRRejectedError(
                f"The CSR's public key is RSA-{key.key_size}; use an EC P-256/P-384 key or RSA "
                f"of at least {_RSA_MIN_BITS} bits."
            )
        if key.key_size > _RSA_MAX_BITS:
            raise CSRRejectedError(
                f"The CSR's public key is RSA-{key.key_size}; use an EC P-256/P-384 key or RSA "
                f"of at most {_RSA_MAX_BITS} bits."
            )
        return key
    raise CSRRejectedError(f"The CSR's public key is {describe_key(key)}; {_ALLOWED}.")


def _check_subject(csr: x509.CertificateSigningRequest, identity: Identity) -> None:
    attributes = list(csr.subject)
    if not attributes:
        return
    if (
        len(attributes) == 1
        and attributes[0].oid == NameOID.COMMON_NAME
        and attributes[0].value == identity.common_name
    ):
        return
    raise CSRRejectedError(
        f"The CSR's subject {csr.subject.rfc4514_string()!r} claims another identity than "
        f"{identity.uri}; leave the subject empty or set only CN={identity.common_name}."
    )


def _check_extensions(csr: x509.CertificateSigningRequest, identity: Identity) -> None:
    try:
        extensions = csr.extensions
    except ValueError as exc:
        raise CSRRejectedError(
            f"The CSR's requested extensions cannot be parsed ({exc}); request none."
        ) from exc
    try:
        san = extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return
    if list(san) != [x509.UniformResourceIdentifier(identity.uri)]:
        claimed = ", ".join(str(name.value) for name in san)
        raise CSRRejectedError(
            f"The CSR's subject alternative name ({claimed}) claims another identity than "
            f"{identity.uri}; request no SAN, or exactly that URI."
        )


def _load(csr_pem: bytes) -> x509.CertificateSigningRequest:
    """Parse one PEM CSR and check its key and its self-signature."""
    if not isinstance(csr_pem, bytes):
        raise CSRRejectedError("The CSR must be given as PEM bytes.")
    try:
        csr = x509.load_pem_x509_csr(csr_pem)
        # By OID before loading the key: cryptography 51 warns on loading a DSA key.
        if getattr(csr, "public_key_algorithm_oid", None) == _DSA:
            raise CSRRejectedError(f"The CSR's public key is DSA; {_ALLOWED}.")
        key = csr.public_key()
    except (ValueError, UnsupportedAlgorithm) as exc:
        raise CSRRejectedError(
            "The CSR is not a readable PEM certificate signing request (-----BEGIN CERTIFICATE "
            "REQUEST-----); generate one with `openssl req -new` or pybaetyl."
        ) from exc
    _check_key(key)
    try:
        signature_ok = csr.is_signature_valid
    except (ValueError, UnsupportedAlgorithm) as exc:
        raise CSRRejectedError(
            f"The CSR's signature cannot be checked ({exc}); sign it again with SHA-256."
        ) from exc
    if not signature_ok:
        raise CSRRejectedError(
            "The CSR's signature does not verify with its own public key, so it proves no "
            "possession of the key; generate the CSR again with the matching private key."
        )
    return csr


def validate_csr(csr_pem: bytes, identity: Identity) -> x509.CertificateSigningRequest:
    """Parse `csr_pem` and check it may be certified as `identity`, or raise CSRRejectedError.

    Checked: it is one PEM CSR; its key is EC P-256/P-384 or RSA 2048..4096; its self-signature
    verifies; its subject is empty or exactly ``CN=<identity.common_name>``; any SAN it requests is
    exactly the identity's URI. Other requested extensions are ignored (never copied).
    """
    csr = _load(csr_pem)
    _check_subject(csr, identity)
    _check_extensions(csr, identity)
    return csr


def validate_server_csr(
    csr_pem: bytes, common_names: Sequence[str], names: Sequence[x509.GeneralName]
) -> x509.CertificateSigningRequest:
    """Check a CSR for a server certificate whose names the caller decided (a node broker's).

    The key and self-signature as for `validate_csr`; the subject empty or exactly one CN among
    `common_names`; any SAN it requests among `names`. Nothing is copied from it but its key.
    """
    csr = _load(csr_pem)
    attributes = list(csr.subject)
    if attributes and not (
        len(attributes) == 1
        and attributes[0].oid == NameOID.COMMON_NAME
        and attributes[0].value in common_names
    ):
        raise CSRRejectedError(
            f"The CSR's subject {csr.subject.rfc4514_string()!r} is not this server's; leave it "
            f"empty or set only CN={common_names[0]}."
        )
    try:
        san = csr.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return csr
    except ValueError as exc:
        raise CSRRejectedError(
            f"The CSR's requested extensions cannot be parsed ({exc}); request none."
        ) from exc
    extra = [name for name in san if name not in names]
    if extra:
        claimed = ", ".join(str(name.value) for name in extra)
        raise CSRRejectedError(
            f"The CSR's subject alternative name asks for {claimed}, which are not among the "
            "hosts requested; request no SAN (the hosts decide them) or only those hosts."
        )
    return csr
