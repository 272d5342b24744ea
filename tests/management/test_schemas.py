"""The management API's JSON schemas: examples accepted, bad bodies refused with the right field."""

from __future__ import annotations

import copy
import json
from collections.abc import Iterator
from typing import Any

import pytest
from jsonschema import Draft202012Validator

from management.schemas import (
    COMPONENTS,
    EXAMPLES,
    READ_SCHEMAS,
    WRITE_SCHEMAS,
    ValidationFailed,
    ref,
    validate,
)

_KEY_PEM = "-----BEGIN PRIVATE KEY-----\nTOPSECRETKEYMATERIAL\n-----END PRIVATE KEY-----\n"


def _example(schema: str, /, **changes: Any) -> dict[str, Any]:
    body = copy.deepcopy(EXAMPLES[schema])
    body.update(changes)
    return body


def _app(*, service: dict[str, Any] | None = None, **changes: Any) -> dict[str, Any]:
    """The example app with its one service replaced by ``service`` when given; an app of
    another type than container drops the example's registries unless they are given."""
    body = _example("AppWrite", **changes)
    if body.get("type", "container") != "container" and "registries" not in changes:
        del body["registries"]
    if service is not None:
        body["services"] = [service]
    return body


def _refused(schema: str, body: object) -> ValidationFailed:
    with pytest.raises(ValidationFailed) as caught:
        validate(schema, body)
    failure = caught.value
    assert failure.message.endswith("."), failure.message
    assert failure.message == str(failure)
    return failure


def _refs(node: object) -> Iterator[str]:
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "$ref":
                yield value
            else:
                yield from _refs(value)
    elif isinstance(node, list):
        for item in node:
            yield from _refs(item)


# --- the schemas themselves ---------------------------------------------------------------------


def test_components_are_valid_json_schemas() -> None:
    """Every component passes the JSON Schema 2020-12 meta-schema."""
    for schema in COMPONENTS.values():
        Draft202012Validator.check_schema(schema)
    Draft202012Validator.check_schema({"$defs": COMPONENTS})


def test_every_ref_resolves() -> None:
    """Every $ref in the components points at a component that exists."""
    prefix = "#/components/schemas/"
    refs = set(_refs(COMPONENTS))
    assert refs, "the components should share parts through $ref"
    for target in refs:
        assert target.startswith(prefix), target
        assert target.removeprefix(prefix) in COMPONENTS, target


def test_ref_builds_a_component_reference() -> None:
    """ref() names a component the way an OpenAPI document does."""
    assert ref("Node") == {"$ref": "#/components/schemas/Node"}


def test_components_serialise_as_json() -> None:
    """The components go into the OpenAPI document as plain JSON."""
    assert json.loads(json.dumps(COMPONENTS)) == COMPONENTS


def test_expected_schemas_are_defined() -> None:
    """The resource, envelope and helper schemas users of the API rely on all exist."""
    expected = {
        "NodeWrite", "Node", "AppWrite", "App", "ConfigWrite", "Config", "SecretWrite", "Secret",
        "SecretSummary", "RegistryWrite", "Registry", "CertificateWrite", "Certificate", "Error",
        "InstallCommand", "ActivationRequest", "ActivationResponse", "BatchWrite", "Batch",
        "BatchCreated", "BatchActivationRequest", "ApiTokenWrite", "ApiToken", "ApiTokenCreated",
        "NodeList", "AppList", "SecretList",
    }  # fmt: skip
    assert expected <= set(COMPONENTS)
    assert set(WRITE_SCHEMAS) | set(READ_SCHEMAS) == set(COMPONENTS)


@pytest.mark.parametrize("name", WRITE_SCHEMAS)
def test_write_schemas_refuse_unknown_fields(name: str) -> None:
    """Write schemas are closed objects."""
    assert COMPONENTS[name]["additionalProperties"] is False


def test_responses_leave_out_write_only_fields() -> None:
    """Passwords, keys, secret data and batch secrets are not part of the read shapes."""
    assert COMPONENTS["RegistryWrite"]["properties"]["password"]["writeOnly"] is True
    assert "password" not in COMPONENTS["Registry"]["properties"]
    assert "key" not in COMPONENTS["Certificate"]["properties"]["data"]["properties"]
    assert "data" not in COMPONENTS["SecretSummary"]["properties"]
    assert "data" in COMPONENTS["Secret"]["properties"]
    assert "secret" not in COMPONENTS["Batch"]["properties"]
    assert "secret" in COMPONENTS["BatchCreated"]["properties"]
    assert "token" not in COMPONENTS["ApiToken"]["properties"]
    assert "token" in COMPONENTS["ApiTokenCreated"]["required"]
    summary = COMPONENTS["SecretSummary"]["properties"]
    assert summary.keys() >= {"namespace", "version", "createTime", "updateTime"}


def test_list_envelopes_point_at_their_items() -> None:
    """A list response is {total, pageNo, pageSize, items}; secrets list summaries."""
    secrets = COMPONENTS["SecretList"]
    assert secrets["required"] == ["total", "pageNo", "pageSize", "items"]
    assert secrets["properties"]["items"]["items"] == ref("SecretSummary")
    assert COMPONENTS["NodeList"]["properties"]["items"]["items"] == ref("Node")


# --- examples -----------------------------------------------------------------------------------


@pytest.mark.parametrize("name", WRITE_SCHEMAS)
def test_write_schema_accepts_its_example(name: str) -> None:
    """Each request schema has a realistic example, and accepts it."""
    assert validate(name, EXAMPLES[name])


@pytest.mark.parametrize("name", sorted(EXAMPLES))
def test_every_example_matches_its_schema(name: str) -> None:
    """The examples served in the OpenAPI document are valid, responses included."""
    assert name in COMPONENTS
    validate(name, EXAMPLES[name])


def test_validate_fills_top_level_defaults_without_touching_the_body() -> None:
    """Absent top-level fields with a default come back filled; the caller's body is unchanged."""
    body = {"name": "cam", "services": [{"name": "main", "image": "nginx:1.27"}]}
    before = copy.deepcopy(body)
    result = validate("AppWrite", body)
    assert body == before
    assert result["type"] == "container"
    assert result["replicas"] == 1
    assert result["workload"] == "deployment"
    assert result["hostNetwork"] is False
    assert "protocol" not in result["services"][0]
    assert validate("NodeWrite", {"name": "edge-01"}) == {"name": "edge-01", "mode": "native"}


@pytest.mark.parametrize(
    ("kind", "service"),
    [
        ("native", {"name": "sensor", "command": ["/usr/bin/python3", "-m", "sensor"]}),
        (
            "function",
            {"name": "rules", "handlers": [{"name": "f", "handler": "rules.on_message"}]},
        ),
    ],
)
def test_native_and_function_apps_are_accepted(kind: str, service: dict[str, Any]) -> None:
    """The other two app types validate with their own service shapes."""
    validate("AppWrite", _app(type=kind, service=service, volumes=[]))


@pytest.mark.parametrize(
    ("kind", "service"),
    [
        ("native", {"name": "sensor", "command": ["/usr/bin/python3", "-m", "sensor"]}),
        ("function", {"name": "rules", "handlers": [{"name": "f", "handler": "rules.f"}]}),
    ],
)
def test_registries_belong_to_container_apps_only(kind: str, service: dict[str, Any]) -> None:
    """A native or function app pulls no images: naming registries is refused on the field (an
    empty list names none); a container app may name them."""
    body = _app(type=kind, service=service, volumes=[], registries=[{"name": "company"}])
    failure = _refused("AppWrite", body)
    assert failure.field == "registries"
    assert "registries apply only to container apps" in failure.message
    validate("AppWrite", {**body, "registries": []})
    validate("AppWrite", _app(registries=[{"name": "company"}]))


# --- refusals -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "field"),
    [(name, field) for name in WRITE_SCHEMAS for field in COMPONENTS[name]["required"]],
)
def test_missing_required_field_is_named(name: str, field: str) -> None:
    """Leaving out any required field fails on that field."""
    body = _example(name)
    del body[field]
    failure = _refused(name, body)
    assert failure.field == field
    assert "is required" in failure.message


@pytest.mark.parametrize(
    ("schema", "body", "field"),
    [
        ("AppWrite", _app(replicas="1"), "replicas"),
        ("AppWrite", _app(hostNetwork="yes"), "hostNetwork"),
        ("AppWrite", _app(services={"name": "x"}), "services"),
        ("NodeWrite", _example("NodeWrite", properties=[1]), "properties"),
        ("NodeWrite", _example("NodeWrite", labels={"site": 7}), "labels.site"),
        ("ConfigWrite", _example("ConfigWrite", data={"a.yaml": 1}), 'data["a.yaml"]'),
        ("RegistryWrite", _example("RegistryWrite", username=3), "username"),
        ("ApiTokenWrite", _example("ApiTokenWrite", expiresInDays=1.5), "expiresInDays"),
        ("NodeWrite", _example("NodeWrite", name=None), "name"),
    ],
)
def test_wrong_type_is_named(schema: str, body: dict[str, Any], field: str) -> None:
    """A value of the wrong JSON type fails on its field, saying which type is wanted."""
    failure = _refused(schema, body)
    assert failure.field == field
    assert "must be" in failure.message


@pytest.mark.parametrize("name", WRITE_SCHEMAS)
def test_unknown_top_level_field_is_refused(name: str) -> None:
    """An unknown field fails on its own name and lists the known ones."""
    failure = _refused(name, _example(name, colour="blue"))
    assert failure.field == "colour"
    assert "not a known field" in failure.message
    assert ", ".join(COMPONENTS[name]["properties"]) in failure.message


def test_unknown_nested_field_is_refused() -> None:
    """A field of another service kind is unknown in a container service."""
    service = {"name": "main", "image": "nginx:1.27", "runtime": "python3"}
    failure = _refused("AppWrite", _app(service=service))
    assert failure.field == "services[0].runtime"


def test_read_only_field_in_a_body_is_explained() -> None:
    """Sending back a server-set field (as after a GET) says the server sets it."""
    failure = _refused("ConfigWrite", _example("ConfigWrite", version="8f3a1c2e"))
    assert failure.field == "version"
    assert failure.message == "version is set by the server; leave it out."


@pytest.mark.parametrize(
    "name", ["Web", "-web", "web-", "web_app", "", "web..app", "a" * 254, "web app"]
)
def test_bad_resource_name_is_refused(name: str) -> None:
    """Resource names must be DNS-1123 subdomains."""
    failure = _refused("ConfigWrite", _example("ConfigWrite", name=name))
    assert failure.field == "name"


@pytest.mark.parametrize("name", ["site.edge-01", "a" * 64, "Edge"])
def test_bad_node_name_is_refused(name: str) -> None:
    """Node names are DNS-1123 labels: no dots, at most 63 characters."""
    failure = _refused("NodeWrite", {"name": name})
    assert failure.field == "name"


def test_good_names_are_accepted() -> None:
    """Dotted names are fine for resources, and 63-character labels for nodes."""
    validate("ConfigWrite", _example("ConfigWrite", name="a.b-c.d1"))
    validate("NodeWrite", {"name": "a" * 63})


def test_container_service_needs_an_image() -> None:
    """A container app's service without an image fails on services[0].image, saying why."""
    failure = _refused("AppWrite", _app(service={"name": "main"}))
    assert failure.field == "services[0].image"
    assert failure.message == (
        "services[0].image is required for a container app; give the image to run, e.g. nginx:1.27."
    )


def test_app_without_type_is_a_container_app() -> None:
    """With no type given the services are container services and need an image."""
    body = _app(service={"name": "main"})
    del body["type"]
    assert _refused("AppWrite", body).field == "services[0].image"


def test_native_service_needs_a_command() -> None:
    """A native app's service without a command fails on services[0].command."""
    failure = _refused("AppWrite", _app(type="native", service={"name": "main"}, volumes=[]))
    assert failure.field == "services[0].command"
    assert "native app" in failure.message


def test_native_service_command_is_not_empty() -> None:
    """An empty command line is refused."""
    service = {"name": "main", "command": []}
    failure = _refused("AppWrite", _app(type="native", service=service, volumes=[]))
    assert failure.field == "services[0].command"
    assert "at least 1 item" in failure.message


def test_function_handler_must_name_module_and_function() -> None:
    """A handler is module.function."""
    service = {"name": "rules", "handlers": [{"name": "f", "handler": "on_message"}]}
    failure = _refused("AppWrite", _app(type="function", service=service, volumes=[]))
    assert failure.field == "services[0].handlers[0].handler"
    assert "module.function" in failure.message


@pytest.mark.parametrize(
    "volume",
    [
        {"name": "conf", "config": {"name": "a"}, "secret": {"name": "b"}},
        {"name": "conf", "config": {"name": "a"}, "hostPath": {"path": "/data"}},
        {"name": "conf"},
    ],
)
def test_volume_needs_exactly_one_source(volume: dict[str, Any]) -> None:
    """Two sources, or none, fail on the volume itself."""
    failure = _refused("AppWrite", _app(volumes=[volume]))
    assert failure.field == "volumes[0]"
    assert "exactly one source" in failure.message


def test_host_path_must_be_absolute() -> None:
    """A relative host path is refused."""
    failure = _refused("AppWrite", _app(volumes=[{"name": "d", "hostPath": {"path": "data"}}]))
    assert failure.field == "volumes[0].hostPath.path"


@pytest.mark.parametrize(
    ("key", "port"), [("containerPort", 0), ("containerPort", 65536), ("hostPort", 70000)]
)
def test_port_out_of_range_is_refused(key: str, port: int) -> None:
    """Ports are 1..65535."""
    service = copy.deepcopy(EXAMPLES["AppWrite"]["services"][0])
    service["ports"] = [{"containerPort": 80, key: port}]
    failure = _refused("AppWrite", _app(service=service))
    assert failure.field == f"services[0].ports[0].{key}"
    assert str(port) in failure.message


def test_port_protocol_is_tcp_or_udp() -> None:
    """Only TCP and UDP are known protocols."""
    service = {
        "name": "m",
        "image": "nginx:1.27",
        "ports": [{"containerPort": 80, "protocol": "SCTP"}],
    }
    failure = _refused("AppWrite", _app(service=service, volumes=[]))
    assert failure.field == "services[0].ports[0].protocol"
    assert '"TCP", "UDP"' in failure.message


def test_duplicate_service_names_are_refused() -> None:
    """Two services with one name fail on the second one's name."""
    first = {"name": "main", "image": "nginx:1.27"}
    failure = _refused("AppWrite", _app(services=[first, dict(first)], volumes=[]))
    assert failure.field == "services[1].name"
    assert "services[0]" in failure.message


def test_services_must_not_be_empty() -> None:
    """An app runs at least one service."""
    assert _refused("AppWrite", _app(services=[])).field == "services"


def test_replicas_are_bounded() -> None:
    """Replicas are 0..1000."""
    assert _refused("AppWrite", _app(replicas=1001)).field == "replicas"
    assert validate("AppWrite", _app(replicas=0))["replicas"] == 0


def test_bad_quantity_is_refused() -> None:
    """CPU and memory are Kubernetes quantity strings."""
    service = {"name": "m", "image": "nginx:1.27", "resources": {"limits": {"memory": "lots"}}}
    failure = _refused("AppWrite", _app(service=service, volumes=[]))
    assert failure.field == "services[0].resources.limits.memory"
    assert "128Mi" in failure.message


def test_label_keys_with_dots_are_quoted_in_the_field() -> None:
    """A label key that is not an identifier is shown in brackets."""
    body = _example("NodeWrite", labels={"app.kubernetes.io/name": 3})
    assert _refused("NodeWrite", body).field == 'labels["app.kubernetes.io/name"]'


def test_too_many_labels_are_refused() -> None:
    """At most 64 labels."""
    labels = {f"k{i}": "v" for i in range(65)}
    failure = _refused("NodeWrite", _example("NodeWrite", labels=labels))
    assert failure.field == "labels"
    assert "64" in failure.message


def test_config_data_key_must_be_a_file_name() -> None:
    """Config keys become file names when mounted."""
    failure = _refused("ConfigWrite", _example("ConfigWrite", data={"../etc/passwd": "x"}))
    assert failure.field == 'data["../etc/passwd"]'
    assert "not a valid key" in failure.message


def test_registry_address_has_no_scheme() -> None:
    """A registry address is host[:port][/path]."""
    failure = _refused("RegistryWrite", _example("RegistryWrite", address="https://r.example.com"))
    assert failure.field == "address"


def test_private_key_is_not_echoed_in_errors() -> None:
    """A malformed private key is refused without repeating it."""
    body = _example("CertificateWrite")
    body["data"]["key"] = "TOPSECRETKEYMATERIAL"
    failure = _refused("CertificateWrite", body)
    assert failure.field == "data.key"
    assert "TOPSECRET" not in failure.message


def test_certificate_must_be_pem() -> None:
    """The certificate is a PEM block."""
    body = _example("CertificateWrite")
    body["data"] = {"certificate": "MIIB...", "key": _KEY_PEM}
    failure = _refused("CertificateWrite", body)
    assert failure.field == "data.certificate"
    assert "BEGIN CERTIFICATE" in failure.message


def test_batch_fingerprint_kind_is_an_enum() -> None:
    """Batches fingerprint devices one of four ways."""
    failure = _refused("BatchWrite", _example("BatchWrite", fingerprintKind="mac"))
    assert failure.field == "fingerprintKind"


def test_body_must_be_an_object() -> None:
    """A body that is not a JSON object fails on the body itself."""
    failure = _refused("NodeWrite", ["edge-01"])
    assert failure.field == ""
    assert failure.message == "The request body must be an object, not an array."


def test_response_timestamps_are_checked() -> None:
    """Read schemas check date-time formats."""
    node = _example("Node", createTime="yesterday")
    assert _refused("Node", node).field == "createTime"
    validate("Node", _example("Node", lastSeen=None))


def test_unknown_schema_name_is_a_key_error() -> None:
    """Asking for a schema that does not exist is a programming error."""
    with pytest.raises(KeyError, match="NodeWrite"):
        validate("Nodes", {})
