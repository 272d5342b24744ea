"""The API's gate: bearer tokens, namespaces that never see each other, and JSON for every error."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from typing import Any

from multidict import CIMultiDict

from management.tokens import parse_api_token
from tests.management.api_samples import COLLECTIONS, assert_schema, sample
from tests.support.cloud import Api, RunningCloud

ApiFor = Callable[[str], Awaitable[Api]]


async def _raw(
    api: Api, method: str, path: str, headers: dict[str, str] | None = None, body: Any = None
) -> tuple[int, Any, CIMultiDict[str]]:
    """``(status, JSON or text, headers)`` of a request sent with exactly ``headers``."""
    async with api.session.request(
        method, api.base + path, headers=headers or {}, json=body
    ) as response:
        if response.content_type == "application/json":
            payload: Any = await response.json()
        else:
            payload = await response.text()
        return response.status, payload, response.headers.copy()


def _assert_error(status: int, body: Any, headers: CIMultiDict[str], want: int, code: str) -> None:
    assert status == want, body
    assert_schema("Error", body)
    assert body["code"] == code
    assert body["message"]
    assert body["requestId"]
    assert headers["X-Request-Id"] == body["requestId"]


# --- authentication -----------------------------------------------------------------------------


_BAD_AUTHORIZATIONS = [
    None,
    "Basic dXNlcjpwYXNz",
    "Bearer",
    "Bearer   ",
    "Bearer not-a-token",
    "Bearer bt_0123456789ab_short",
    "Bearer bt_0123456789ab_" + "A" * 43,  # well formed, but unknown
]


async def test_bad_credentials_are_401(api: Api) -> None:
    """A missing, foreign-scheme, malformed or unknown token is 401 with an error body."""
    for authorization in _BAD_AUTHORIZATIONS:
        headers = {} if authorization is None else {"Authorization": authorization}
        status, body, response_headers = await _raw(api, "GET", "/v1/nodes", headers)
        _assert_error(status, body, response_headers, 401, "Unauthorized")


async def test_wrong_secret_for_a_known_token_id_is_401(api: Api) -> None:
    """A token whose id exists but whose secret is wrong is refused."""
    token_id, secret = parse_api_token(api.token)
    forged = f"bt_{token_id}_{'B' * 43 if secret != 'B' * 43 else 'C' * 43}"
    status, body, headers = await _raw(
        api, "GET", "/v1/nodes", {"Authorization": f"Bearer {forged}"}
    )
    _assert_error(status, body, headers, 401, "Unauthorized")


async def test_bearer_scheme_is_case_insensitive(api: Api) -> None:
    """``bearer <token>`` is accepted like ``Bearer <token>``."""
    status, body, _ = await _raw(api, "GET", "/v1/nodes", {"Authorization": f"bearer {api.token}"})
    assert status == 200, body


async def test_expired_token_is_401(cloud: RunningCloud, api: Api) -> None:
    """A token past its expiry is refused; one expiring later is accepted."""
    past = await cloud.token("default", expires_at=int(time.time() * 1000) - 1000)
    status, body, headers = await _raw(api, "GET", "/v1/nodes", {"Authorization": f"Bearer {past}"})
    _assert_error(status, body, headers, 401, "Unauthorized")
    future = await cloud.token("default", expires_at=int(time.time() * 1000) + 60_000)
    status, body, _ = await _raw(api, "GET", "/v1/nodes", {"Authorization": f"Bearer {future}"})
    assert status == 200, body


async def test_revoked_token_is_401(cloud: RunningCloud, api: Api) -> None:
    """A token works until it is revoked, then it is refused."""
    status, _ = await api.call("GET", "/nodes")
    assert status == 200
    token_id, _secret = parse_api_token(api.token)
    assert await cloud.context.store.revoke_token("default", token_id)
    status, body = await api.call("GET", "/nodes")
    assert status == 401
    assert body["code"] == "Unauthorized"


async def test_unauthenticated_unknown_route_is_401(api: Api) -> None:
    """Without a token, even a route that does not exist is 401: nothing is revealed."""
    status, body, headers = await _raw(api, "GET", "/v1/no-such-thing")
    _assert_error(status, body, headers, 401, "Unauthorized")


async def test_open_paths_need_no_token(api: Api) -> None:
    """Health, readiness, the OpenAPI document and the docs page answer without a token."""
    status, body, headers = await _raw(api, "GET", "/healthz")
    assert (status, body) == (200, {"status": "ok"})
    assert headers["X-Request-Id"]
    status, body, _ = await _raw(api, "GET", "/readyz")
    assert (status, body) == (200, {"status": "ready"})
    status, body, _ = await _raw(api, "GET", "/v1/openapi.json")
    assert status == 200
    assert body["openapi"].startswith("3.1")
    assert "/v1/nodes/{name}" in body["paths"]
    status, body, headers = await _raw(api, "GET", "/docs")
    assert status == 200
    assert headers["Content-Type"].startswith("text/html")
    assert "/v1/openapi.json" in body


# --- routes and methods -------------------------------------------------------------------------


async def test_unknown_route_is_404_json(api: Api) -> None:
    """A route that does not exist is a JSON 404."""
    for path in ("/v1/no-such-thing", "/v1/nodes/a/b/c", "/nowhere"):
        status, body, headers = await _raw(api, "GET", path, api.headers())
        _assert_error(status, body, headers, 404, "NotFound")


async def test_wrong_method_is_405_json(api: Api) -> None:
    """A known route with a method it does not have is a JSON 405 that lists the allowed ones."""
    for method, path in [
        ("PATCH", "/v1/nodes/x"),
        ("DELETE", "/v1/nodes"),
        ("POST", "/v1/nodes/x/init"),
    ]:
        status, body, headers = await _raw(api, method, path, api.headers())
        _assert_error(status, body, headers, 405, "MethodNotAllowed")
        assert "GET" in headers["Allow"], (method, path)


# --- namespaces ---------------------------------------------------------------------------------


async def test_namespaces_do_not_see_each_other(api_for: ApiFor) -> None:
    """A resource of namespace a is 404 from b by name, absent from b's lists, and b may reuse
    the name; b's PUT and DELETE of it are 404 and leave a's resource as it was."""
    a, b = await api_for("tenant-a"), await api_for("tenant-b")
    for collection in COLLECTIONS:
        await _isolated(a, b, collection)


async def _isolated(a: Api, b: Api, collection: str) -> None:
    if collection == "apps":  # an app's selector may match nodes only in its own namespace
        await a.call("POST", "/nodes", sample("nodes", "shared"))
    status, created = await a.call("POST", f"/{collection}", sample(collection, "shared"))
    assert status == 201, created
    assert created["namespace"] == "tenant-a"

    status, body = await b.call("GET", f"/{collection}/shared")
    assert status == 404, body
    assert body["code"] == "NotFound"
    status, listed = await b.call("GET", f"/{collection}")
    assert status == 200
    assert listed["total"] == 0
    assert listed["items"] == []
    status, body = await b.call("PUT", f"/{collection}/shared", sample(collection, "shared"))
    assert status == 404, body
    status, body = await b.call("DELETE", f"/{collection}/shared")
    assert status == 404, body

    status, own = await b.call("POST", f"/{collection}", sample(collection, "shared"))
    assert status == 201, own
    assert own["namespace"] == "tenant-b"
    assert own["version"] == "1"
    status, body = await b.call("DELETE", f"/{collection}/shared")
    assert status == 204
    status, still = await a.call("GET", f"/{collection}/shared")
    assert status == 200
    assert still["version"] == "1"


async def test_node_extras_are_namespaced(api_for: ApiFor) -> None:
    """Another namespace gets 404 from a node's apps, stats, properties and install command."""
    a, b = await api_for("tenant-a"), await api_for("tenant-b")
    await a.call("POST", "/nodes", sample("nodes", "gw"))
    await a.call("POST", "/configs", sample("configs", "conf"))
    for path in ("/nodes/gw/apps", "/nodes/gw/stats", "/nodes/gw/properties", "/nodes/gw/init"):
        status, body = await b.call("GET", path)
        assert status == 404, (path, body)
    status, body = await b.call("PUT", "/nodes/gw/properties", {"desire": {"x": 1}})
    assert status == 404, body
    status, body = await b.call("GET", "/configs/conf/apps")
    assert status == 404, body


async def test_app_cannot_mount_another_namespaces_config(api_for: ApiFor) -> None:
    """An app's volume naming a config that exists only in another namespace is refused."""
    a, b = await api_for("tenant-a"), await api_for("tenant-b")
    await a.call("POST", "/configs", sample("configs", "conf"))
    app = sample("apps", "web", volumes=[{"name": "conf", "config": {"name": "conf"}}])
    status, body = await b.call("POST", "/apps", app)
    assert status == 400, body
    assert body["field"] == "volumes[0].config.name"
