"""Authentication at CONNECT on a node broker: device certificates, the agent, device passwords.

``Authenticator.identify`` decides from the verified peer certificate (if any) and the CONNECT's
username and password, against the configuration *now*:

* a certificate signed by the device CA naming a device bound to this node, listed in the
  configuration with this serial → that device;
* a certificate signed by the cloud CA naming this node → the agent;
* no certificate, a username naming a configured device and a password verifying its
  ``passwordHash`` (``scrypt$N$r$p$salt$hash``) → that device.

A scrypt verification costs 16 MiB and tens of milliseconds, on a worker thread. A reconnect
storm of one device would pay that per attempt, so a successful verification is remembered,
keyed by (device, hash, HMAC of the password under a per-process random key): the password
itself is kept nowhere, and a changed hash misses the cache.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import logging
import secrets
import ssl
from collections import OrderedDict
from dataclasses import dataclass
from enum import StrEnum

from cryptography import x509

from broker.node.acl import NodePrincipal, NodeRole
from broker.node.config import NodeConfig
from certs import CertsError, Identity, Kind

__all__ = ["Authenticator", "NodeRefusal", "Verdict", "verify_password"]

log = logging.getLogger(__name__)

CACHE_SIZE = 1024
# scrypt verifications running at once: each takes 16 MiB (N=16384, r=8) and a core for tens of
# milliseconds, so a flood of wrong passwords waits its turn (within the CONNECT timeout)
# instead of taking the memory and every core of a small gateway.
CONCURRENT_VERIFICATIONS = 2


class NodeRefusal(StrEnum):
    """Refusal reasons of the node broker, beside broker.refusals.RefusalReason's."""

    NOT_AUTHORIZED = "not-authorized"  # no credential, or one naming nobody this node knows
    OTHER_NODE = "other-node"  # a device or node certificate of another node
    UNLISTED_CERTIFICATE = "unlisted-certificate"  # a device certificate whose serial is not listed
    # An unknown username, no password set, or a wrong one.
    BAD_PASSWORD = "bad-password"  # noqa: S105 - a reason, not a password
    CLIENT_ID = "client-id"  # not the device's name / the node id
    WILL_TOPIC = "will-topic"


# MQTT 3.1.1 CONNACK return codes.
CONNACK_IDENTIFIER_REJECTED = 2
CONNACK_BAD_CREDENTIALS = 4
CONNACK_NOT_AUTHORIZED = 5


def connack_code(reason: str) -> int:
    if reason == NodeRefusal.BAD_PASSWORD:
        return CONNACK_BAD_CREDENTIALS
    if reason == NodeRefusal.CLIENT_ID:
        return CONNACK_IDENTIFIER_REJECTED
    return CONNACK_NOT_AUTHORIZED


@dataclass(frozen=True, slots=True)
class Verdict:
    principal: NodePrincipal | None
    refusal: tuple[NodeRefusal, str] | None = None


def verify_password(password_hash: str, password: bytes) -> bool:
    """Whether ``password`` verifies ``scrypt$N$r$p$<salt b64>$<hash b64>`` (constant time)."""
    try:
        _scheme, n, r, p, salt_b64, hash_b64 = password_hash.split("$")
        salt, expected = base64.b64decode(salt_b64), base64.b64decode(hash_b64)
        n_, r_, p_ = int(n), int(r), int(p)
    except ValueError:
        return False
    if not expected or n_ > 1 << 20 or r_ * p_ > 64:  # bounds what a hash can make us compute
        return False
    try:
        derived = hashlib.scrypt(
            password, salt=salt, n=n_, r=r_, p=p_, dklen=len(expected), maxmem=256 * 1024 * 1024
        )
    except (ValueError, MemoryError):
        return False
    return hmac.compare_digest(derived, expected)


class Authenticator:
    def __init__(self, config: NodeConfig, device_ca: x509.Certificate, cloud_ca: x509.Certificate):
        self.config = config
        self.device_ca = device_ca
        self.cloud_ca = cloud_ca
        self._key = secrets.token_bytes(32)
        self._verified: OrderedDict[tuple[str, str, bytes], None] = OrderedDict()
        self._verifying = asyncio.Semaphore(CONCURRENT_VERIFICATIONS)

    def update(
        self, config: NodeConfig, device_ca: x509.Certificate, cloud_ca: x509.Certificate
    ) -> None:
        self.config, self.device_ca, self.cloud_ca = config, device_ca, cloud_ca

    async def identify(
        self, ssl_object: ssl.SSLObject | None, username: str | None, password: str | bytes | None
    ) -> Verdict:
        der = ssl_object.getpeercert(binary_form=True) if ssl_object is not None else None
        if der:
            return self._by_certificate(x509.load_der_x509_certificate(der))
        if username:
            return await self._by_password(username, password)
        return Verdict(None, (NodeRefusal.NOT_AUTHORIZED, "no client certificate, no username"))

    def _by_certificate(self, cert: x509.Certificate) -> Verdict:
        # TLS verified the chain against one of the two CAs; which one signed it decides its role.
        try:
            identity = Identity.from_certificate(cert)
        except CertsError as exc:
            return Verdict(None, (NodeRefusal.NOT_AUTHORIZED, f"no pybaetyl identity ({exc})"))
        node = self.config.node
        serial = format(cert.serial_number, "x")  # the contract's serial format
        if identity.kind is Kind.DEVICE and _issued_by(cert, self.device_ca):
            if identity.device_node_id != node:
                return Verdict(
                    None,
                    (
                        NodeRefusal.OTHER_NODE,
                        f"device {identity.common_name} of node "
                        f"{identity.device_node_id}, not {node}",
                    ),
                )
            device = self.config.devices.get(identity.name)
            if device is None:
                return Verdict(
                    None,
                    (NodeRefusal.NOT_AUTHORIZED, f"device {identity.name!r} is not configured"),
                )
            if serial not in device.certificates:
                return Verdict(
                    None,
                    (
                        NodeRefusal.UNLISTED_CERTIFICATE,
                        f"certificate {serial} of device {identity.name!r} is not listed",
                    ),
                )
            return Verdict(
                NodePrincipal(
                    NodeRole.DEVICE,
                    identity.name,
                    serial=serial,
                    not_after=cert.not_valid_after_utc,
                )
            )
        if identity.kind is Kind.NODE and _issued_by(cert, self.cloud_ca):
            if identity.common_name != node:
                return Verdict(
                    None, (NodeRefusal.OTHER_NODE, f"node {identity.common_name}, not {node}")
                )
            return Verdict(
                NodePrincipal(
                    NodeRole.AGENT, node, serial=serial, not_after=cert.not_valid_after_utc
                )
            )
        return Verdict(
            None,
            (
                NodeRefusal.NOT_AUTHORIZED,
                f"a {identity.kind} certificate ({identity.common_name}) is not accepted here",
            ),
        )

    async def _by_password(self, username: str, password: str | bytes | None) -> Verdict:
        refused = Verdict(
            None, (NodeRefusal.BAD_PASSWORD, f"bad username or password for {username[:64]!r}")
        )
        device = self.config.devices.get(username)
        if device is None or device.password_hash is None or password is None:
            return refused
        secret = password.encode() if isinstance(password, str) else bytes(password)
        key = (device.name, device.password_hash, hmac.digest(self._key, secret, "sha256"))
        if key in self._verified:
            self._verified.move_to_end(key)
        else:
            async with self._verifying:
                verified = await asyncio.to_thread(verify_password, device.password_hash, secret)
            if not verified:
                return refused
            self._verified[key] = None
            if len(self._verified) > CACHE_SIZE:
                self._verified.popitem(last=False)
        # The hash may have changed while scrypt ran: the connection carries the one it verified.
        return Verdict(
            NodePrincipal(NodeRole.DEVICE, device.name, password_hash=device.password_hash)
        )


def _issued_by(cert: x509.Certificate, ca: x509.Certificate) -> bool:
    try:
        cert.verify_directly_issued_by(ca)
    except (ValueError, TypeError, Exception):
        return False
    return True
