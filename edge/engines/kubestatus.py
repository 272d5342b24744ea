"""What the kube engine reads back: a pod as an instance, a workload and its pods as an app.

The kube engine's ``status()`` answers from these, computed at its last poll: a pod's phase,
restarts and the first reason it is not running (a container waiting for something that will not
come, one that exited with an error, a pod that cannot be scheduled); an app's state is the worst
of its pods'. They read the kubernetes client's models by attribute, so this module does not
import the client.
"""

from __future__ import annotations

from typing import Any, Final

from edge.engines.base import AppStatus, InstanceState, InstanceStatus

__all__ = ["app_status", "pod_status"]

# Container waiting reasons that mean the container will not start without a change.
_FAILING_REASONS: Final = frozenset(
    {
        "CrashLoopBackOff",
        "ErrImagePull",
        "ImagePullBackOff",
        "InvalidImageName",
        "CreateContainerConfigError",
        "CreateContainerError",
        "RunContainerError",
    }
)
_PHASES: Final = {
    "Pending": InstanceState.PENDING,
    "Running": InstanceState.RUNNING,
    "Succeeded": InstanceState.SUCCEEDED,
    "Failed": InstanceState.FAILED,
}
# Worst first: an app's state is the worst of its instances'.
_SEVERITY: Final = (
    InstanceState.FAILED,
    InstanceState.UNKNOWN,
    InstanceState.PENDING,
    InstanceState.RUNNING,
    InstanceState.SUCCEEDED,
)


def pod_status(pod: Any) -> InstanceStatus:
    """A pod as an instance: its phase, restarts and why it is not running."""
    status = pod.status
    state = _PHASES.get(status.phase or "", InstanceState.UNKNOWN)
    restarts = 0
    cause: str | None = None
    for container in status.container_statuses or ():
        restarts += container.restart_count or 0
        current = container.state
        waiting = current.waiting if current is not None else None
        terminated = current.terminated if current is not None else None
        if waiting is not None and waiting.reason not in (None, "ContainerCreating"):
            cause = cause or _describe(container.name, waiting.reason, waiting.message)
            if waiting.reason in _FAILING_REASONS:
                state = InstanceState.FAILED
            last = container.last_state.terminated if container.last_state else None
            if last is not None and cause is not None and "exited" not in cause:
                cause = f"{cause}; it last exited with code {last.exit_code}"
        elif terminated is not None and terminated.exit_code != 0:
            cause = cause or (
                f"{container.name}: {terminated.reason or 'Error'}, "
                f"exited with code {terminated.exit_code}"
            )
    if cause is None and status.reason:
        cause = _describe(None, status.reason, status.message)
    if cause is None and state is InstanceState.PENDING:
        for condition in status.conditions or ():
            if condition.type == "PodScheduled" and condition.status == "False":
                cause = _describe(None, condition.reason or "Unschedulable", condition.message)
    started = status.start_time.timestamp() if status.start_time is not None else None
    return InstanceStatus(
        name=pod.metadata.name, state=state, restarts=restarts, cause=cause, started_at=started
    )


def _describe(container: str | None, reason: str, message: str | None) -> str:
    text = f"{container}: {reason}" if container else reason
    return f"{text} ({message})" if message else text


def app_status(
    name: str, version: str, kind: str, workload: Any, instances: tuple[InstanceStatus, ...]
) -> AppStatus:
    """A workload and its pods as an app: the worst of its pods, or why it has none."""
    if not instances:
        if kind == "Deployment" and workload.spec.replicas == 0:
            return AppStatus(name, version, InstanceState.RUNNING)
        return AppStatus(
            name,
            version,
            InstanceState.PENDING,
            cause="Kubernetes has not started a pod for it yet.",
        )
    worst = min(instances, key=lambda i: _SEVERITY.index(i.state))
    return AppStatus(name, version, worst.state, instances, worst.cause)
