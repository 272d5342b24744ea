"""Application engines behind one interface: ``native`` (processes) and ``kube`` (Kubernetes).

``NativeEngine`` (``edge.engines.native``) and ``KubeEngine`` (``edge.engines.kube``) are
imported from their modules: the kube engine loads the Kubernetes client, which a node
running only processes does not need.
"""

from edge.engines.base import (
    AppSpec,
    AppStatus,
    Engine,
    InstanceState,
    InstanceStatus,
    Reference,
    references,
)

__all__ = [
    "AppSpec",
    "AppStatus",
    "Engine",
    "InstanceState",
    "InstanceStatus",
    "Reference",
    "references",
]
