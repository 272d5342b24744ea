"""Who a certificate speaks for: a node of a namespace, an operator, a cloud service, or a device.

The identity is in two places of every client certificate the CA issues, and both must agree:

* the subject common name, e.g. ``acme.gateway-1`` for node ``gateway-1`` of namespace ``acme``;
* exactly one URI subject alternative name, e.g. ``spiffe://pybaetyl/ns/acme/node/gateway-1``.

A node's common name is its *node id*: one MQTT topic segment (``$baetyl/node/<node id>/...``) and
its MQTT client id. It is unique across namespaces because labels contain no dots.

A device is bound to one node of its namespace: ``spiffe://pybaetyl/ns/acme/node/gw-1/device/t-1``,
CN ``acme.gw-1.t-1``. Device certificates are signed by the device CA (never trusted by the cloud's
broker), and only a node broker of that node accepts them.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import StrEnum
from typing import Self

from cryptography import x509
from cryptography.x509.oid import NameOID

from certs.errors import InvalidIdentityError

__all__ = ["TRUST_DOMAIN", "Identity", "Kind"]

TRUST_DOMAIN = "pybaetyl"
"""The SPIFFE trust domain of every identity URI."""

_LABEL = r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?"
_LABEL_RE = re.compile(_LABEL)
_URI_RE = re.compile(
    rf"spiffe://{TRUST_DOMAIN}/(?:"
    rf"ns/(?P<namespace>{_LABEL})/node/(?P<node>{_LABEL})(?:/device/(?P<device>{_LABEL}))?"
    rf"|operator/(?P<operator>{_LABEL})"
    rf"|service/(?P<service>{_LABEL}))"
)
_URI_PREFIX = f"spiffe://{TRUST_DOMAIN}/"


class Kind(StrEnum):
    """The kinds of principal a client certificate can name."""

    NODE = "node"
    OPERATOR = "operator"
    SERVICE = "service"
    DEVICE = "device"


def _check_label(what: str, value: str) -> None:
    if not isinstance(value, str) or _LABEL_RE.fullmatch(value) is None:
        raise InvalidIdentityError(
            f"The {what} {value!r} is not a DNS label; use 1 to 63 characters of a-z, 0-9 and '-', "
            "starting and ending with a letter or digit."
        )


@dataclass(frozen=True, slots=True)
class Identity:
    """A validated identity; build it with `node`, `operator`, `service`, `device` or the
    `from_*` parsers."""

    kind: Kind
    name: str
    namespace: str | None = None
    host: str | None = None  # a device's node (its name in the namespace); None for other kinds

    def __post_init__(self) -> None:
        if not isinstance(self.kind, Kind):
            raise InvalidIdentityError(
                f"The identity kind {self.kind!r} is unknown; use one of: "
                f"{', '.join(k.value for k in Kind)}."
            )
        _check_label(f"{self.kind} name", self.name)
        if self.kind is Kind.DEVICE:
            if self.namespace is None or self.host is None:
                raise InvalidIdentityError(
                    f"The device {self.name!r} needs a namespace and a node; every device is "
                    "bound to one node of its namespace."
                )
            _check_label("namespace", self.namespace)
            _check_label("node name", self.host)
            return
        if self.host is not None:
            raise InvalidIdentityError(
                f"The {self.kind} {self.name!r} was given node {self.host!r}; only devices are "
                "bound to a node, so pass none."
            )
        if self.kind is Kind.NODE:
            if self.namespace is None:
                raise InvalidIdentityError(
                    f"The node {self.name!r} has no namespace; every node belongs to a namespace."
                )
            _check_label("namespace", self.namespace)
        elif self.namespace is not None:
            raise InvalidIdentityError(
                f"The {self.kind} {self.name!r} was given namespace {self.namespace!r}; only nodes "
                "belong to a namespace, so pass none."
            )

    @classmethod
    def node(cls, namespace: str, name: str) -> Self:
        """Return the identity of node `name` in `namespace`."""
        return cls(Kind.NODE, name, namespace)

    @classmethod
    def operator(cls, name: str) -> Self:
        """Return the identity of a human operator (for debugging with ``mosquitto_sub``)."""
        return cls(Kind.OPERATOR, name)

    @classmethod
    def service(cls, name: str) -> Self:
        """Return the identity of a cloud service (e.g. a shadow replica on an external broker)."""
        return cls(Kind.SERVICE, name)

    @classmethod
    def device(cls, namespace: str, node: str, name: str) -> Self:
        """Return the identity of device `name`, bound to node `node` of `namespace`."""
        return cls(Kind.DEVICE, name, namespace, node)

    @property
    def common_name(self) -> str:
        """The subject CN: ``<namespace>.<name>`` for a node, ``<namespace>.<node>.<name>`` for a
        device, ``<kind>:<name>`` otherwise."""
        if self.kind is Kind.NODE:
            return f"{self.namespace}.{self.name}"
        if self.kind is Kind.DEVICE:
            return f"{self.namespace}.{self.host}.{self.name}"
        return f"{self.kind}:{self.name}"

    @property
    def device_node_id(self) -> str | None:
        """The node id (``<namespace>.<node>``) a device is bound to; None for any other kind."""
        return f"{self.namespace}.{self.host}" if self.kind is Kind.DEVICE else None

    @property
    def node_id(self) -> str | None:
        """The node id (MQTT client id and topic segment) of a node; None for any other kind."""
        return self.common_name if self.kind is Kind.NODE else None

    @property
    def uri(self) -> str:
        """The SPIFFE URI put in the certificate's subject alternative name."""
        if self.kind is Kind.NODE:
            return f"{_URI_PREFIX}ns/{self.namespace}/node/{self.name}"
        if self.kind is Kind.DEVICE:
            return f"{_URI_PREFIX}ns/{self.namespace}/node/{self.host}/device/{self.name}"
        return f"{_URI_PREFIX}{self.kind}/{self.name}"

    def __str__(self) -> str:
        return self.uri

    @classmethod
    def from_uri(cls, uri: str) -> Self:
        """Parse a ``spiffe://pybaetyl/...`` URI exactly as `uri` renders it; refuse the rest."""
        match = _URI_RE.fullmatch(uri) if isinstance(uri, str) else None
        if match is None:
            raise InvalidIdentityError(
                f"The URI {uri!r} is not a pybaetyl identity; expected "
                f"{_URI_PREFIX}ns/<namespace>/node/<name>, "
                f"{_URI_PREFIX}ns/<namespace>/node/<node>/device/<name>, "
                f"{_URI_PREFIX}operator/<name> or {_URI_PREFIX}service/<name>."
            )
        if (device := match["device"]) is not None:
            return cls(Kind.DEVICE, device, match["namespace"], match["node"])
        if (node := match["node"]) is not None:
            return cls(Kind.NODE, node, match["namespace"])
        if (operator := match["operator"]) is not None:
            return cls(Kind.OPERATOR, operator)
        return cls(Kind.SERVICE, match["service"])

    @classmethod
    def from_certificate(cls, certificate: x509.Certificate) -> Self:
        """Read the identity of a (verified) client certificate.

        The certificate must carry a subject alternative name extension holding exactly one entry, a
        pybaetyl URI, and a subject made of exactly one common name equal to that identity's
        `common_name`. This does not verify the chain: call it on a peer certificate TLS verified.
        """
        try:
            san = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        except x509.ExtensionNotFound:
            raise InvalidIdentityError(
                "The certificate has no subject alternative name, so it names no pybaetyl "
                "identity; issue it with the pybaetyl CA."
            ) from None
        except ValueError as exc:
            raise InvalidIdentityError(
                f"The certificate's extensions cannot be parsed ({exc}); issue it with the "
                "pybaetyl CA."
            ) from exc
        names = list(san)
        if len(names) != 1 or not isinstance(names[0], x509.UniformResourceIdentifier):
            raise InvalidIdentityError(
                "The certificate's subject alternative name must hold exactly one pybaetyl URI and "
                f"nothing else, but it holds {len(names)} entries; issue it with the pybaetyl CA."
            )
        identity = cls.from_uri(names[0].value)
        attributes = list(certificate.subject)
        if (
            len(attributes) != 1
            or attributes[0].oid != NameOID.COMMON_NAME
            or attributes[0].value != identity.common_name
        ):
            raise InvalidIdentityError(
                f"The certificate's subject {certificate.subject.rfc4514_string()!r} does not "
                f"agree with its URI {identity.uri!r}; expected only CN={identity.common_name}."
            )
        return identity
