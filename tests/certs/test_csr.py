"""The CA certifies only sound CSRs that claim nothing but the identity the caller chose."""

from __future__ import annotations

import base64
import warnings
from collections.abc import Callable

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.x509.oid import NameOID

from certs import CertificateAuthority, CSRRejectedError, Identity, KeyType, generate_private_key
from tests.certs.helpers import cn, custom_csr, new_csr

NODE = Identity.node("acme", "gw-1")


def _reject(ca: CertificateAuthority, csr_pem: bytes, match: str) -> None:
    with pytest.raises(CSRRejectedError, match=match):
        ca.issue_from_csr(csr_pem, NODE)
    assert ca.records() == []


def test_rsa_1024_is_refused(ca: CertificateAuthority) -> None:
    """An RSA key under 2048 bits is refused with the key named."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=1024)  # noqa: S505 - on purpose
    _reject(ca, custom_csr(key), r"RSA-1024; use an EC P-256/P-384 key or RSA of at least 2048")


def test_secp256k1_is_refused(ca: CertificateAuthority) -> None:
    """An EC key on a curve other than P-256/P-384 is refused."""
    _reject(ca, custom_csr(ec.generate_private_key(ec.SECP256K1())), "EC secp256k1")


def test_p521_is_refused(ca: CertificateAuthority) -> None:
    """P-521 is outside the allowed curves too."""
    _reject(ca, custom_csr(ec.generate_private_key(ec.SECP521R1())), "EC secp521r1")


def test_ed25519_is_refused(ca: CertificateAuthority) -> None:
    """Ed25519 keys are refused (not supported by every MQTT client's TLS stack)."""
    _reject(ca, custom_csr(ed25519.Ed25519PrivateKey.generate()), "Ed25519")


def test_dsa_is_refused_without_a_warning(ca: CertificateAuthority) -> None:
    """A DSA key is refused; checking it warns of nothing (cryptography 51 deprecates DSA, and
    the tests make warnings errors)."""
    with warnings.catch_warnings():  # only making the key and its CSR may warn
        warnings.simplefilter("ignore")
        from cryptography.hazmat.primitives.asymmetric import dsa

        csr = custom_csr(dsa.generate_private_key(2048))
    _reject(ca, csr, "public key is DSA; use an EC")


def test_bad_signature_is_refused(ca: CertificateAuthority) -> None:
    """A CSR whose self-signature does not verify proves no key possession and is refused."""
    _, csr_pem = new_csr()
    der = bytearray(x509.load_pem_x509_csr(csr_pem).public_bytes(serialization.Encoding.DER))
    der[-1] ^= 0x01  # the last byte belongs to the signature
    tampered = (
        b"-----BEGIN CERTIFICATE REQUEST-----\n"
        + base64.encodebytes(bytes(der))
        + b"-----END CERTIFICATE REQUEST-----\n"
    )
    _reject(ca, tampered, "signature does not verify")


def test_signature_from_another_key_is_refused(ca: CertificateAuthority) -> None:
    """A CSR body carrying one key but signed by another is refused."""
    victim = x509.load_pem_x509_csr(new_csr()[1])
    attacker = x509.load_pem_x509_csr(new_csr()[1])
    # Same key type and empty subject: both request bodies have the same length, so the DER
    # stays well-formed with the victim's body and the attacker's signature.
    assert len(victim.tbs_certrequest_bytes) == len(attacker.tbs_certrequest_bytes)
    der = attacker.public_bytes(serialization.Encoding.DER).replace(
        attacker.tbs_certrequest_bytes, victim.tbs_certrequest_bytes
    )
    pem = (
        b"-----BEGIN CERTIFICATE REQUEST-----\n"
        + base64.encodebytes(der)
        + b"-----END CERTIFICATE REQUEST-----\n"
    )
    _reject(ca, pem, "signature does not verify")


def test_cn_of_another_node_is_refused(ca: CertificateAuthority) -> None:
    """A CSR naming another node in its CN claims another identity."""
    _reject(ca, new_csr("acme.other")[1], "claims another identity")


def test_cn_of_another_tenant_is_refused(ca: CertificateAuthority) -> None:
    """The same node name in another namespace is another identity."""
    _reject(ca, new_csr("evil.gw-1")[1], "claims another identity")


def test_extra_subject_attribute_is_refused(ca: CertificateAuthority) -> None:
    """Any attribute besides the exact CN (here O=acme) is refused."""
    organization = x509.NameAttribute(NameOID.ORGANIZATION_NAME, "acme")
    _reject(ca, custom_csr(generate_private_key(), [cn(NODE.common_name), organization]), "claims")


def test_san_of_another_identity_is_refused(ca: CertificateAuthority) -> None:
    """A requested URI SAN other than the identity's is refused."""
    other = x509.UniformResourceIdentifier("spiffe://pybaetyl/ns/acme/node/other")
    _reject(ca, custom_csr(generate_private_key(), sans=[other]), "subject alternative name")


def test_extra_san_is_refused(ca: CertificateAuthority) -> None:
    """The identity's URI plus a DNS name is more than the identity and is refused."""
    sans: list[x509.GeneralName] = [
        x509.UniformResourceIdentifier(NODE.uri),
        x509.DNSName("broker.example.com"),
    ]
    _reject(ca, custom_csr(generate_private_key(), sans=sans), "subject alternative name")


@pytest.mark.parametrize(
    "garbage",
    [
        b"",
        b"hello",
        b"-----BEGIN CERTIFICATE REQUEST-----\nAAAA\n-----END CERTIFICATE REQUEST-----\n",
    ],
)
def test_garbage_pem_is_refused(ca: CertificateAuthority, garbage: bytes) -> None:
    """Bytes that are not a PEM CSR are refused with a hint on how to make one."""
    _reject(ca, garbage, "not a readable PEM")


def test_certificate_instead_of_csr_is_refused(ca: CertificateAuthority) -> None:
    """A certificate pasted where a CSR belongs is refused."""
    _reject(ca, ca.certificate_pem, "not a readable PEM")


@pytest.mark.parametrize(
    "csr_pem",
    [
        pytest.param(lambda: new_csr()[1], id="empty-subject"),
        pytest.param(lambda: new_csr("acme.gw-1")[1], id="exact-cn"),
        pytest.param(
            lambda: custom_csr(
                generate_private_key(),
                [cn("acme.gw-1")],
                [x509.UniformResourceIdentifier(NODE.uri)],
            ),
            id="exact-san",
        ),
        pytest.param(lambda: custom_csr(generate_private_key(KeyType.RSA_2048)), id="rsa-2048"),
        pytest.param(lambda: custom_csr(generate_private_key(KeyType.EC_P384)), id="p-384"),
    ],
)
def test_sound_csrs_are_accepted(ca: CertificateAuthority, csr_pem: Callable[[], bytes]) -> None:
    """Empty subject, the exact CN, the exact URI SAN, RSA-2048 and P-384 are all certified."""
    issued = ca.issue_from_csr(csr_pem(), NODE)
    assert Identity.from_certificate(issued.certificate) == NODE
