"""The one error tree of the edge agent.

::

    EdgeError                   the root; every message says what to do
    ├── KeyFileError            the node's key or CSR files cannot be written or read safely
    ├── ActivationError         activation failed
    │   ├── CaMismatchError     the endpoint's CA is not the one the install command pins
    │   └── ActivationRefused   the cloud refused the activation (its own message)
    ├── RenewalError            a renewal failed and nothing was swapped
    │   └── RenewalRefused      the cloud refused the renewal (its own message)
    ├── BrokerCertificateError  the node broker's certificate could not be had
    ├── ManifestError           an app cannot be expressed as Kubernetes objects
    ├── KubeEngineError         the Kubernetes API cannot be reached or configured
    └── DataPlaneError          the node's data plane (``edge.dataplane``)
        ├── RouteSpecError      a route or device definition the agent cannot run (a ValueError)
        └── PublishFailed       a publish lost with its connection before it was acknowledged

They are defined here, so that catching one loads nothing else (activation and renewal load
``cryptography``, the kube engine the Kubernetes client), and re-exported by the modules that
raise them (``edge.activation``, ``edge.renewal``, ``edge.engines.manifests``,
``edge.engines.kube``, ``edge.dataplane.routes``, ``edge.dataplane.publisher``). Three errors
stay outside the tree on purpose: ``PropertyError``
(``edge.properties``) carries the HTTP status of the node's local endpoint, where it is
answered; ``SpecError`` (``edge.engines.spec``) is a ``ValueError`` the native engine turns into
an app's failed status (the kube renderer into a ``ManifestError``); ``RuntimeConfigError``
(``edge.functions.runtime``) belongs to the function runtime, which runs in the app's process on
the standard library alone.
"""

__all__ = [
    "ActivationError",
    "ActivationRefused",
    "BrokerCertificateError",
    "CaMismatchError",
    "DataPlaneError",
    "EdgeError",
    "KeyFileError",
    "KubeEngineError",
    "ManifestError",
    "PublishFailed",
    "RenewalError",
    "RenewalRefused",
    "RouteSpecError",
]


class EdgeError(Exception):
    """Root of the edge agent's errors; the message says what to do."""


class KeyFileError(EdgeError):
    """The node's key or CSR files cannot be written or read safely."""


class ActivationError(EdgeError):
    """Activation failed; the message says what to check."""


class CaMismatchError(ActivationError):
    """The endpoint's CA is not the one whose SHA-256 the install command names."""


class ActivationRefused(ActivationError):
    """The cloud refused the activation; the message is the cloud's own."""

    def __init__(self, message: str, *, status: int, code: str, request_id: str | None) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.request_id = request_id


class RenewalError(EdgeError):
    """Renewal failed and nothing was swapped; the message says why and what to do."""


class RenewalRefused(RenewalError):
    """The cloud refused the renewal; the message is the cloud's own."""

    def __init__(self, message: str, *, status: int, code: str, request_id: str | None) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.request_id = request_id


class BrokerCertificateError(EdgeError):
    """The node broker's server certificate could not be requested or stored; nothing changed."""


class ManifestError(EdgeError):
    """An app cannot be expressed as Kubernetes objects; the message says what to change."""


class KubeEngineError(EdgeError):
    """The Kubernetes API cannot be reached or configured; the message says what to check."""


class DataPlaneError(EdgeError):
    """The node's data plane (routes, the spool, publishing) failed; the message says why."""


class RouteSpecError(DataPlaneError, ValueError):
    """A route or device definition the agent cannot run; the message says what to change."""


class PublishFailed(DataPlaneError):
    """A publish was lost with its connection before the broker acknowledged it: send it again
    once connected (nothing was acknowledged, so the spool still holds it)."""
