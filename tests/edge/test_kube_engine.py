"""The kube engine against a stand-in API server: apply, replace, garbage, status, failures."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import AbstractAsyncContextManager
from typing import Any

import kubernetes.client
import pytest

from edge.engines.base import AppSpec, InstanceState
from edge.engines.kube import KubeEngine, KubeEngineError
from tests.edge.kube_standin import KubeStandIn

NS = "baetyl-edge"
EngineFactory = Callable[..., AbstractAsyncContextManager[KubeEngine]]


def _app(name: str = "web", version: str = "1", conf: str = "listen 80;", **spec: Any) -> AppSpec:
    return AppSpec(
        name=name,
        version=version,
        spec={
            "services": [
                {
                    "name": "main",
                    "image": "nginx:1.27",
                    "ports": [{"containerPort": 80}],
                    "volumeMounts": [{"name": "conf", "mountPath": "/etc/nginx/conf.d"}],
                }
            ],
            "volumes": [{"name": "conf", "config": {"name": "conf"}}],
            **spec,
        },
        configs={"conf": {"default.conf": conf}},
    )


@pytest.fixture
async def standin() -> AsyncIterator[KubeStandIn]:
    async with KubeStandIn() as server:
        yield server


@pytest.fixture
def engine(standin: KubeStandIn) -> Iterator[EngineFactory]:
    clients: list[kubernetes.client.ApiClient] = []

    def make(**options: Any) -> KubeEngine:
        configuration = kubernetes.client.Configuration(host=standin.host)
        clients.append(kubernetes.client.ApiClient(configuration))
        defaults: dict[str, Any] = {"backoff": 0.01, "poll_interval": 60.0}
        return KubeEngine(NS, api_client=clients[-1], **{**defaults, **options})

    yield make
    for client in clients:  # the engine does not close a client it was given
        client.close()  # type: ignore[no-untyped-call]


async def test_apply_creates_the_namespace_and_every_object(
    standin: KubeStandIn, engine: EngineFactory
) -> None:
    """The first apply creates the namespace, ConfigMap, Service and Deployment, and pods run."""
    async with engine() as kube:
        await kube.apply([_app(replicas=2)])
        assert NS in standin.namespaces
        assert set(standin.stored("configmaps", NS)) == {"web-conf"}
        assert set(standin.stored("services", NS)) == {"web-main"}
        assert set(standin.stored("deployments", NS)) == {"web"}
        (status,) = kube.status()
    assert status.name == "web"
    assert status.version == "1"
    assert status.state is InstanceState.RUNNING
    assert len(status.instances) == 2
    assert all(i.state is InstanceState.RUNNING and i.restarts == 0 for i in status.instances)
    assert all(i.started_at is not None for i in status.instances)


async def test_unchanged_apps_cost_no_writes(standin: KubeStandIn, engine: EngineFactory) -> None:
    """Applying the same apps again only reads: nothing is replaced or restarted."""
    async with engine() as kube:
        await kube.apply([_app()])
        pods = [p["metadata"]["name"] for p in standin.pods(NS)]
        before = len(standin.writes())
        await kube.apply([_app()])
        assert len(standin.writes()) == before
        assert [p["metadata"]["name"] for p in standin.pods(NS)] == pods


async def test_applying_again_brings_back_what_was_deleted_by_hand(
    standin: KubeStandIn, engine: EngineFactory
) -> None:
    """The agent's periodic resync: a Deployment and a ConfigMap deleted through the API (by
    an operator's kubectl, say) are created again by the next apply of the same apps."""
    async with engine() as kube:
        await kube.apply([_app()])
        configuration = kubernetes.client.Configuration(host=standin.host)
        with kubernetes.client.ApiClient(configuration) as client:
            await asyncio.to_thread(
                kubernetes.client.AppsV1Api(client).delete_namespaced_deployment, "web", NS
            )
            await asyncio.to_thread(
                kubernetes.client.CoreV1Api(client).delete_namespaced_config_map, "web-conf", NS
            )
        assert standin.stored("deployments", NS) == {}
        await kube.apply([_app()])
        assert set(standin.stored("deployments", NS)) == {"web"}
        assert set(standin.stored("configmaps", NS)) == {"web-conf"}
        (status,) = kube.status()
    assert (status.version, status.state) == ("1", InstanceState.RUNNING)


async def test_new_version_replaces_objects_and_pods(
    standin: KubeStandIn, engine: EngineFactory
) -> None:
    """A new version with new config data replaces the ConfigMap and Deployment; pods roll."""
    async with engine() as kube:
        await kube.apply([_app()])
        old_pods = {p["metadata"]["name"] for p in standin.pods(NS)}
        await kube.apply([_app(version="2", conf="listen 8080;")])
        config = standin.stored("configmaps", NS)["web-conf"]
        assert config["data"] == {"default.conf": "listen 8080;"}
        assert config["metadata"]["labels"]["baetyl-app-version"] == "2"
        deployment = standin.stored("deployments", NS)["web"]
        assert deployment["metadata"]["generation"] == 2
        new_pods = {p["metadata"]["name"] for p in standin.pods(NS)}
        assert new_pods.isdisjoint(old_pods)
        (status,) = kube.status()
    assert (status.version, status.state) == ("2", InstanceState.RUNNING)
    assert {i.name for i in status.instances} == new_pods


async def test_objects_the_new_version_no_longer_renders_are_deleted(
    standin: KubeStandIn, engine: EngineFactory
) -> None:
    """A version without ports or with another workload leaves no stale Service or Deployment."""
    async with engine() as kube:
        await kube.apply([_app()])
        bare = AppSpec(
            "web", "2", {"workload": "daemonset", "services": [{"name": "m", "image": "i"}]}
        )
        await kube.apply([bare])
    assert standin.stored("services", NS) == {}
    assert standin.stored("configmaps", NS) == {}
    assert standin.stored("deployments", NS) == {}
    assert set(standin.stored("daemonsets", NS)) == {"web"}


async def test_removing_an_app_deletes_its_objects_and_pods(
    standin: KubeStandIn, engine: EngineFactory
) -> None:
    """An app left out of apply is deleted with everything labelled as its own; others stay."""
    async with engine() as kube:
        await kube.apply([_app("web"), _app("api")])
        await kube.apply([_app("api")])
        assert [s.name for s in kube.status()] == ["api"]
    assert set(standin.stored("deployments", NS)) == {"api"}
    assert set(standin.stored("configmaps", NS)) == {"api-conf"}
    assert set(standin.stored("services", NS)) == {"api-main"}
    assert {p["metadata"]["labels"]["baetyl-app-name"] for p in standin.pods(NS)} == {"api"}


async def test_status_reports_restarts_and_crash_loops(
    standin: KubeStandIn, engine: EngineFactory
) -> None:
    """Restarts come from containerStatuses; a CrashLoopBackOff makes the instance Failed."""

    def crash(pod: dict[str, Any]) -> None:
        container = pod["status"]["containerStatuses"][0]
        container.update(
            restartCount=4,
            ready=False,
            state={"waiting": {"reason": "CrashLoopBackOff", "message": "back-off 40s"}},
            lastState={"terminated": {"exitCode": 2, "reason": "Error"}},
        )

    async with engine() as kube:
        await kube.apply([_app()])
        standin.set_pods(NS, "baetyl-app-name=web", crash)
        await kube.refresh()
        (status,) = kube.status()
    (instance,) = status.instances
    assert instance.restarts == 4
    assert instance.state is InstanceState.FAILED
    assert instance.cause == "main: CrashLoopBackOff (back-off 40s); it last exited with code 2"
    assert status.state is InstanceState.FAILED
    assert status.cause == instance.cause
    assert status.to_report()["instances"][instance.name]["restarts"] == 4


async def test_a_failing_call_is_retried(standin: KubeStandIn, engine: EngineFactory) -> None:
    """One HTTP 500 from the API is retried: the apply succeeds and the app runs."""
    standin.fail("POST", "/deployments")
    async with engine() as kube:
        await kube.apply([_app()])
        (status,) = kube.status()
    assert status.state is InstanceState.RUNNING
    posts = [p for m, p in standin.requests if m == "POST" and p.endswith("/deployments")]
    assert len(posts) == 2


async def test_a_persistent_failure_raises_and_deletes_nothing(
    standin: KubeStandIn, engine: EngineFactory
) -> None:
    """An API that keeps failing makes apply raise before any garbage is deleted."""
    async with engine(retries=2) as kube:
        await kube.apply([_app("web"), _app("api")])
        standin.fail("POST", "/deployments", times=10)
        with pytest.raises(KubeEngineError, match=r"HTTP 500.*applies again at its next sync"):
            await kube.apply([_app("new")])
    assert set(standin.stored("deployments", NS)) == {"web", "api"}


async def test_status_is_unknown_while_the_api_cannot_be_read(
    standin: KubeStandIn, engine: EngineFactory
) -> None:
    """When the pods cannot be listed, each app keeps its last instances but is Unknown."""
    async with engine(retries=0) as kube:
        await kube.apply([_app()])
        standin.fail("GET", "/pods")
        await kube.refresh()
        (status,) = kube.status()
        assert status.state is InstanceState.UNKNOWN
        assert status.cause is not None
        assert "cannot be read" in status.cause
        assert len(status.instances) == 1
        await kube.refresh()
        assert kube.status()[0].state is InstanceState.RUNNING


async def test_an_app_kubernetes_cannot_run_fails_alone(
    standin: KubeStandIn, engine: EngineFactory
) -> None:
    """A native app is reported Failed with the reason, while the other apps are applied."""
    native = AppSpec("tool", "3", {"type": "native", "services": [{"name": "t", "command": ["x"]}]})
    async with engine() as kube:
        await kube.apply([native, _app()])
        statuses = {s.name: s for s in kube.status()}
    assert statuses["tool"].state is InstanceState.FAILED
    assert statuses["tool"].version == "3"
    assert statuses["tool"].cause is not None
    assert "native app" in statuses["tool"].cause
    assert statuses["web"].state is InstanceState.RUNNING


async def test_an_object_the_api_rejects_fails_its_app_and_keeps_the_old_one(
    standin: KubeStandIn, engine: EngineFactory
) -> None:
    """A 422 from the API fails only that app, and its previous version keeps running."""
    async with engine() as kube:
        await kube.apply([_app()])
        # A selector is immutable: an object changed under us is refused by the API server.
        standin.stored("deployments", NS)["web"]["spec"]["selector"]["matchLabels"]["x"] = "y"
        await kube.apply([_app(version="2")])
        (status,) = kube.status()
    assert status.state is InstanceState.FAILED
    assert status.cause is not None
    assert "HTTP 422" in status.cause
    assert "immutable" in status.cause
    assert set(standin.stored("deployments", NS)) == {"web"}
    assert len(status.instances) == 1


async def test_a_foreign_object_with_our_name_is_not_taken_over(
    standin: KubeStandIn, engine: EngineFactory
) -> None:
    """An unlabelled ConfigMap with the app's name makes the app fail instead of overwriting it."""
    async with engine() as kube:
        await kube.apply([])
        standin.objects[("configmaps", NS, "web-conf")] = {
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {"name": "web-conf", "namespace": NS, "resourceVersion": "1"},
            "data": {"mine": "yes"},
        }
        await kube.apply([_app()])
        (status,) = kube.status()
    assert status.state is InstanceState.FAILED
    assert status.cause is not None
    assert "not managed by pybaetyl" in status.cause
    assert standin.stored("configmaps", NS)["web-conf"]["data"] == {"mine": "yes"}


async def test_a_new_engine_adopts_running_apps(
    standin: KubeStandIn, engine: EngineFactory
) -> None:
    """Entering reads what a previous agent left, without touching it."""
    async with engine() as kube:
        await kube.apply([_app()])
    writes = len(standin.writes())
    async with engine() as kube:
        (status,) = kube.status()
        assert (status.name, status.state) == ("web", InstanceState.RUNNING)
    assert len(standin.writes()) == writes


async def test_a_changed_job_is_run_anew(standin: KubeStandIn, engine: EngineFactory) -> None:
    """A Job's template cannot change, so a new version deletes and recreates the Job."""
    async with engine() as kube:
        await kube.apply([_app(workload="job")])
        first = standin.stored("jobs", NS)["web"]["metadata"]["uid"]
        await kube.apply([_app(version="2", workload="job")])
        job = standin.stored("jobs", NS)["web"]
        (status,) = kube.status()
    assert job["metadata"]["uid"] != first
    assert (status.version, status.state) == ("2", InstanceState.RUNNING)


async def test_status_polls_in_the_background(standin: KubeStandIn, engine: EngineFactory) -> None:
    """While entered, the engine re-reads pods every poll interval without being asked."""

    def succeed(pod: dict[str, Any]) -> None:
        pod["status"]["phase"] = "Succeeded"

    async with engine(poll_interval=0.05) as kube:
        await kube.apply([_app(workload="job")])
        standin.set_pods(NS, "", succeed)
        for _ in range(100):
            if kube.status()[0].state is InstanceState.SUCCEEDED:
                break
            await asyncio.sleep(0.02)
        assert kube.status()[0].state is InstanceState.SUCCEEDED
