"""Identities: names, URIs, and reading them back from certificates."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtensionOID
from hypothesis import given
from hypothesis import strategies as st

from certs import Identity, InvalidIdentityError, Kind
from tests.certs.helpers import cn

LABEL = st.from_regex(r"[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?", fullmatch=True)
IDENTITIES = st.one_of(
    st.builds(Identity.node, LABEL, LABEL),
    st.builds(Identity.operator, LABEL),
    st.builds(Identity.service, LABEL),
    st.builds(Identity.device, LABEL, LABEL, LABEL),
)


def test_node_names() -> None:
    """A node's common name and node id are <namespace>.<name>; its URI names both."""
    node = Identity.node("acme", "gateway-1")
    assert node.kind is Kind.NODE
    assert node.common_name == "acme.gateway-1"
    assert node.node_id == "acme.gateway-1"
    assert node.uri == "spiffe://pybaetyl/ns/acme/node/gateway-1"
    assert str(node) == node.uri


def test_device_names() -> None:
    """A device names its namespace and node (``host``): CN <namespace>.<node>.<name>."""
    device = Identity.device("acme", "gw-1", "thermo-1")
    assert device.kind is Kind.DEVICE
    assert device.common_name == "acme.gw-1.thermo-1"
    assert device.uri == "spiffe://pybaetyl/ns/acme/node/gw-1/device/thermo-1"
    assert device.host == "gw-1"
    assert device.device_node_id == "acme.gw-1"
    assert device.node_id is None  # a device is not a node: it never gets a node's topics
    assert Identity.from_uri(device.uri) == device
    with pytest.raises(InvalidIdentityError, match="needs a namespace and a node"):
        Identity(Kind.DEVICE, "thermo-1", "acme")
    with pytest.raises(InvalidIdentityError, match="only devices are bound to a node"):
        Identity(Kind.NODE, "gw-1", "acme", "gw-2")


def test_operator_and_service_names() -> None:
    """Operators and services have prefixed common names, no namespace, and no node id."""
    operator, service = Identity.operator("alice"), Identity.service("shadow-0")
    assert (operator.common_name, operator.uri) == (
        "operator:alice",
        "spiffe://pybaetyl/operator/alice",
    )
    assert (service.common_name, service.uri) == (
        "service:shadow-0",
        "spiffe://pybaetyl/service/shadow-0",
    )
    assert operator.node_id is None
    assert service.namespace is None


@pytest.mark.parametrize(
    "name",
    ["Gateway", "a.b", "", "-a", "a-", "a_b", "a" * 64, "a b", "é", "a\n"],
)
def test_bad_labels_are_refused(name: str) -> None:
    """Uppercase, dots, empty, edge dashes, over 63 characters and the like are refused."""
    with pytest.raises(InvalidIdentityError, match="DNS label"):
        Identity.node("acme", name)
    with pytest.raises(InvalidIdentityError, match="DNS label"):
        Identity.node(name, "gw")
    with pytest.raises(InvalidIdentityError, match="DNS label"):
        Identity.operator(name)


def test_longest_label_is_accepted() -> None:
    """A 63-character label is a valid name."""
    assert Identity.service("a" * 63).name == "a" * 63


def test_node_needs_namespace_and_others_refuse_one() -> None:
    """A node without namespace, or an operator with one, is not an identity."""
    with pytest.raises(InvalidIdentityError, match="namespace"):
        Identity(Kind.NODE, "gw", None)
    with pytest.raises(InvalidIdentityError, match="only nodes"):
        Identity(Kind.OPERATOR, "alice", "acme")


@pytest.mark.parametrize(
    "uri",
    [
        "spiffe://pybaetyl/ns/acme/node/gw/",
        "spiffe://pybaetyl/ns/acme/node/gw/extra",
        "spiffe://other/ns/acme/node/gw",
        "SPIFFE://pybaetyl/operator/alice",
        "spiffe://pybaetyl/operator/Alice",
        "spiffe://pybaetyl/operator/alice\n",
        "spiffe://pybaetyl/operator/",
        "spiffe://pybaetyl/node/gw",
        "spiffe://pybaetyl/service/a?b",
        "https://pybaetyl/service/a",
        "",
    ],
)
def test_from_uri_is_strict(uri: str) -> None:
    """Only the exact URI forms parse; anything near them is refused."""
    with pytest.raises(InvalidIdentityError):
        Identity.from_uri(uri)


@given(IDENTITIES)
def test_uri_round_trips(identity: Identity) -> None:
    """Every identity parses back from its URI unchanged."""
    assert Identity.from_uri(identity.uri) == identity


@given(st.one_of(st.text(), st.text().map(lambda t: "spiffe://pybaetyl/" + t)))
def test_random_strings_never_yield_a_different_uri(text: str) -> None:
    """A string either is refused or parses to an identity whose URI is exactly that string."""
    try:
        identity = Identity.from_uri(text)
    except InvalidIdentityError:
        return
    assert identity.uri == text


def _certificate(
    subject: list[x509.NameAttribute[str]], sans: list[x509.GeneralName] | None
) -> x509.Certificate:
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.now(UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name(subject))
        .issuer_name(x509.Name([cn("test")]))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now)
        .not_valid_after(now + timedelta(days=1))
    )
    if sans == []:  # an empty SAN, which cryptography 51 no longer builds: its DER by hand
        empty = x509.UnrecognizedExtension(ExtensionOID.SUBJECT_ALTERNATIVE_NAME, b"\x30\x00")
        builder = builder.add_extension(empty, critical=False)
    elif sans is not None:
        builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
    return builder.sign(key, hashes.SHA256())


def test_from_certificate_reads_the_uri() -> None:
    """A certificate with CN and URI that agree yields the identity."""
    node = Identity.node("acme", "gw")
    cert = _certificate([cn(node.common_name)], [x509.UniformResourceIdentifier(node.uri)])
    assert Identity.from_certificate(cert) == node


@pytest.mark.parametrize(
    ("subject", "sans", "match"),
    [
        ([cn("acme.gw")], None, "no subject alternative name"),
        # Older cryptography parses an empty SAN; 51 refuses to, and so do we, either way.
        ([cn("acme.gw")], [], "exactly one|extensions cannot be parsed"),
        ([cn("acme.other")], ["spiffe://pybaetyl/ns/acme/node/gw"], "does not agree"),
        ([], ["spiffe://pybaetyl/ns/acme/node/gw"], "does not agree"),
        (
            [cn("acme.gw"), x509.NameAttribute(x509.NameOID.ORGANIZATION_NAME, "acme")],
            ["spiffe://pybaetyl/ns/acme/node/gw"],
            "does not agree",
        ),
        (
            [cn("acme.gw")],
            ["spiffe://pybaetyl/ns/acme/node/gw", "spiffe://pybaetyl/ns/acme/node/gw2"],
            "exactly one",
        ),
        ([cn("acme.gw")], ["https://example.com/"], "not a pybaetyl identity"),
    ],
)
def test_from_certificate_is_strict(
    subject: list[x509.NameAttribute[str]], sans: list[str] | None, match: str
) -> None:
    """Missing or extra SANs, a foreign URI, or a subject that disagrees are all refused."""
    general: list[x509.GeneralName] | None = None
    if sans is not None:
        general = [x509.UniformResourceIdentifier(u) for u in sans]
    with pytest.raises(InvalidIdentityError, match=match):
        Identity.from_certificate(_certificate(subject, general))


def test_from_certificate_refuses_dns_alongside_uri() -> None:
    """A DNS name next to the identity URI makes the SAN ambiguous and is refused."""
    node = Identity.node("acme", "gw")
    sans: list[x509.GeneralName] = [
        x509.UniformResourceIdentifier(node.uri),
        x509.DNSName("gw.example.com"),
    ]
    with pytest.raises(InvalidIdentityError, match="exactly one"):
        Identity.from_certificate(_certificate([cn(node.common_name)], sans))
