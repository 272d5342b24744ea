"""One parse of an app spec for both engines: what it keeps, and what it refuses with a reason."""

from __future__ import annotations

import re
from typing import Any

import pytest

from edge.engines import AppSpec
from edge.engines.manifests import ManifestError, render
from edge.engines.plan import Plan
from edge.engines.spec import AppModel, Handler, Mount, Port, SpecError, VolumeKind, Workload

WEB: dict[str, Any] = {
    "services": [
        {
            "name": "web",
            "image": "nginx:1.27",
            "args": ["-g", "daemon off;"],
            "env": [{"name": "MODE", "value": "edge"}],
            "ports": [
                {"containerPort": 80, "hostPort": 8080},
                {"containerPort": 53, "protocol": "UDP"},
            ],
            "volumeMounts": [{"name": "conf", "mountPath": "/etc/nginx/conf.d", "readOnly": True}],
            "resources": {"limits": {"cpu": "500m", "memory": "128Mi"}},
        }
    ],
    "volumes": [{"name": "conf", "config": {"name": "nginx", "version": "3"}}],
    "registries": [{"name": "company", "version": "1"}],
    "workload": "daemonset",
    "replicas": 4,
    "hostNetwork": True,
}


def test_a_container_spec_parses_into_typed_values() -> None:
    app = AppModel.parse(WEB)
    assert (app.type, app.workload, app.replicas, app.host_network) == (
        "container", Workload.DAEMONSET, 4, True,
    )  # fmt: skip
    assert app.registries == ("company",)
    assert [(v.name, v.kind, v.source) for v in app.volumes] == [
        ("conf", VolumeKind.CONFIG, "nginx")
    ]
    (web,) = app.services
    assert (web.image, web.command, web.args) == ("nginx:1.27", (), ("-g", "daemon off;"))
    assert web.env == (("MODE", "edge"),)
    assert web.ports == (Port(80, 8080, "TCP"), Port(53, None, "UDP"))
    assert web.mounts == (Mount("conf", "/etc/nginx/conf.d", True),)
    assert web.limits == (("cpu", "500m"), ("memory", "128Mi"))
    assert web.requests == ()


def test_the_native_plan_is_made_from_the_same_parse() -> None:
    spec = {
        "type": "function",
        "services": [
            {"name": "f", "handlers": [{"name": "up", "handler": "m.up", "codeConfig": "code"}]}
        ],
        "volumes": [{"name": "code", "config": {"name": "code", "version": "1"}}],
        "workload": "daemonset",
        "replicas": 3,
    }
    app = AppModel.parse(spec)
    assert app.services[0].handlers == (Handler("up", "m.up", "code"),)
    plan = Plan.of(app)
    assert plan == Plan.parse(spec)
    assert plan.replicas == 1  # a daemonset runs once on this node
    assert plan.services[0].functions == ("up",)
    assert plan.services[0].mounts == ("code",)


def _service(**fields: Any) -> dict[str, Any]:
    return {"services": [{"name": "web", "image": "nginx:1.27", **fields}]}


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ({"services": [{"name": "web"}]}, "The service 'web' needs an image"),
        (_service(ports=[{"containerPort": 0}]), "containerPort of a port of service 'web' must"),
        (_service(ports=[{"containerPort": "80"}]), "must be a number from 1 to 65535, not '80'"),
        (_service(ports=[{"containerPort": 80, "hostPort": True}]), "hostPort of a port"),
        (_service(ports=[{"containerPort": 80, "protocol": "tcp"}]), "use TCP, UDP or SCTP"),
        (_service(volumeMounts=[{"name": "v"}]), "volume 'v' in service 'web' needs a mountPath"),
        (_service(resources={"limits": ["cpu"]}), "resources.limits of service 'web' must map"),
        (_service(env=[{"name": "A", "value": 1}]), "must be a list of {name, value} strings"),
        (_service(command="run"), "The command of service 'web' must be a list of strings"),
        ({**_service(), "hostNetwork": "yes"}, "hostNetwork must be true or false"),
        ({**_service(), "registries": [{"version": "1"}]}, "registries must be a list of"),
        ({**_service(), "replicas": -1}, "replicas must be a whole number of at least 0"),
    ],
)
def test_a_spec_either_engine_cannot_use_is_refused_with_what_to_change(
    spec: dict[str, Any], message: str
) -> None:
    """The parse says what is wrong; the kube renderer refuses it as a ManifestError, the
    app's failed status, instead of failing on a missing key."""
    with pytest.raises(SpecError, match=re.escape(message)):
        AppModel.parse(spec)
    with pytest.raises(ManifestError, match=re.escape(message)):
        render(AppSpec("web", "1", spec), namespace="edge")
