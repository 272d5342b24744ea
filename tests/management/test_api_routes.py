"""The six resource collections over HTTP: create, read, list, replace, delete, on both stores."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from tests.management.api_samples import COLLECTIONS, READ_SCHEMA, assert_schema, sample
from tests.support.cloud import Api, RunningCloud


def _changed(collection: str, name: str) -> dict[str, Any]:
    """A second valid body for the resource: new labels and description, same name."""
    body = sample(collection, name, labels={"site": "lyon", "tier": "2"}, description="changed")
    if collection in ("configs", "secrets"):
        body["data"] = {"other.txt": "second"}
    return body


@pytest.mark.parametrize("collection", COLLECTIONS)
async def test_crud_lifecycle(api: Api, collection: str) -> None:
    """Create is 201 at version "1", a second create 409, get 200, PUT bumps the version, an
    If-Match with the current version passes and a stale one is 409, delete 204 then 404."""
    one, item, many = READ_SCHEMA[collection]
    status, created = await api.call("POST", f"/{collection}", sample(collection, "res-1"))
    assert status == 201, created
    assert_schema(one, created)
    assert created["name"] == "res-1"
    assert created["namespace"] == "default"
    assert created["version"] == "1"
    assert created["createTime"] == created["updateTime"]

    status, body = await api.call("POST", f"/{collection}", sample(collection, "res-1"))
    assert status == 409, body
    assert body["code"] == "Conflict"
    assert_schema("Error", body)

    status, got = await api.call("GET", f"/{collection}/res-1")
    assert status == 200, got
    assert_schema(one, got)
    assert got == created

    status, listed = await api.call("GET", f"/{collection}")
    assert status == 200
    assert_schema(many, listed)
    assert [i["name"] for i in listed["items"]] == ["res-1"]
    assert_schema(item, listed["items"][0])

    status, updated = await api.call("PUT", f"/{collection}/res-1", _changed(collection, "res-1"))
    assert status == 200, updated
    assert_schema(one, updated)
    assert updated["version"] == "2"
    assert updated["labels"] == {"site": "lyon", "tier": "2"}
    assert updated["description"] == "changed"
    assert updated["createTime"] == created["createTime"]
    assert updated["updateTime"] >= created["updateTime"]

    stale = {"If-Match": '"1"'}
    status, body = await api.call(
        "PUT", f"/{collection}/res-1", sample(collection, "res-1"), headers=stale
    )
    assert status == 409, body
    assert body["code"] == "Conflict"
    status, got = await api.call("GET", f"/{collection}/res-1")
    assert got["version"] == "2", "a refused write changes nothing"

    current = {"If-Match": '"2"'}
    status, updated = await api.call(
        "PUT", f"/{collection}/res-1", sample(collection, "res-1"), headers=current
    )
    assert status == 200, updated
    assert updated["version"] == "3"

    status, body = await api.call("DELETE", f"/{collection}/res-1")
    assert status == 204, body
    assert body is None
    status, body = await api.call("GET", f"/{collection}/res-1")
    assert status == 404, body
    assert body["code"] == "NotFound"
    status, body = await api.call("DELETE", f"/{collection}/res-1")
    assert status == 404, body
    status, body = await api.call("PUT", f"/{collection}/res-1", sample(collection, "res-1"))
    assert status == 404, body


async def test_put_name_must_match_the_url(api: Api) -> None:
    """A PUT body naming another resource is 400 on field name; a body without a name takes
    the one in the URL."""
    await api.call("POST", "/configs", sample("configs", "conf"))
    status, body = await api.call("PUT", "/configs/conf", sample("configs", "other"))
    assert status == 400, body
    assert body["field"] == "name"
    without_name = sample("configs", "conf", description="no name")
    del without_name["name"]
    status, body = await api.call("PUT", "/configs/conf", without_name)
    assert status == 200, body
    assert body["name"] == "conf"
    assert body["description"] == "no name"


async def test_if_match_forms(api: Api) -> None:
    """If-Match accepts "2", 2 and W/"2"; anything else is 400."""
    await api.call("POST", "/configs", sample("configs", "conf"))
    for version, header in enumerate(['"1"', "2", 'W/"3"'], start=1):
        status, body = await api.call(
            "PUT", "/configs/conf", sample("configs", "conf"), headers={"If-Match": header}
        )
        assert status == 200, (header, body)
        assert body["version"] == str(version + 1)
    for header in ("*", "x", '"-1"', "\u00b2", "\u0663"):  # superscript two, Arabic-Indic three
        async with api.session.put(
            api.base + "/v1/configs/conf",
            json=sample("configs", "conf"),
            headers=api.headers({"If-Match": header}),
        ) as response:
            body = await response.json()
        assert response.status == 400, (header, body)
        assert body["code"] == "BadRequest"
    status, body = await api.call("GET", "/configs/conf")
    assert body["version"] == "4"


async def test_pagination(api: Api) -> None:
    """Pages are cut from the name-ordered list; total counts every match; past the end is
    an empty page."""
    names = [f"conf-{i:02}" for i in range(7)]
    for name in reversed(names):
        status, body = await api.call("POST", "/configs", sample("configs", name))
        assert status == 201, body
    status, page = await api.call("GET", "/configs")
    assert (page["total"], page["pageNo"], page["pageSize"]) == (7, 1, 20)
    assert [i["name"] for i in page["items"]] == names
    pages = []
    for page_no in (1, 2, 3, 4):
        status, page = await api.call(
            "GET", "/configs", params={"pageNo": str(page_no), "pageSize": "3"}
        )
        assert status == 200, page
        assert_schema("ConfigList", page)
        assert (page["total"], page["pageNo"], page["pageSize"]) == (7, page_no, 3)
        pages.append([i["name"] for i in page["items"]])
    assert pages == [names[0:3], names[3:6], names[6:7], []]
    status, page = await api.call("GET", "/configs", params={"pageSize": "200"})
    assert status == 200
    assert len(page["items"]) == 7


async def test_page_parameters_out_of_bounds_are_400(api: Api) -> None:
    """A page number or size that is not a whole number in range is 400 naming the param."""
    for param, value in [
        ("pageNo", "0"),
        ("pageNo", "-1"),
        ("pageNo", "x"),
        ("pageNo", "1.5"),
        ("pageNo", "1000001"),
        ("pageSize", "0"),
        ("pageSize", "201"),
        ("pageSize", ""),
    ]:
        status, body = await api.call("GET", "/nodes", params={param: value})
        assert status == 400, (param, value, body)
        assert body["field"] == param
        assert param in body["message"]
        assert_schema("Error", body)


async def test_name_filter_is_a_substring_match(api: Api) -> None:
    """``name`` keeps the resources whose name contains it; total counts only those."""
    for name in ("edge-paris-1", "edge-paris-2", "edge-lyon-1", "core"):
        await api.call("POST", "/nodes", sample("nodes", name))
    status, page = await api.call("GET", "/nodes", params={"name": "paris"})
    assert status == 200
    assert_schema("NodeList", page)
    assert page["total"] == 2
    assert [n["name"] for n in page["items"]] == ["edge-paris-1", "edge-paris-2"]
    status, page = await api.call("GET", "/nodes", params={"name": "edge", "pageSize": "1"})
    assert page["total"] == 3
    assert [n["name"] for n in page["items"]] == ["edge-lyon-1"]
    status, page = await api.call("GET", "/nodes", params={"name": "nothing"})
    assert (page["total"], page["items"]) == (0, [])


async def test_selector_filters_on_labels(api: Api) -> None:
    """``selector`` keeps the resources whose labels match it (equality, sets, existence)."""
    labels = {
        "a": {"site": "paris", "tier": "1"},
        "b": {"site": "lyon", "tier": "2"},
        "c": {"site": "paris"},
        "d": {},
    }
    for name, node_labels in labels.items():
        status, body = await api.call("POST", "/apps", sample("apps", name, labels=node_labels))
        assert status == 201, body
    expectations = {
        "site=paris": ["a", "c"],
        "site!=paris": ["b", "d"],
        "site in (paris,lyon),tier": ["a", "b"],
        "!tier": ["c", "d"],
        "tier notin (1)": ["b", "c", "d"],
        "": ["a", "b", "c", "d"],
    }
    for selector, expected in expectations.items():
        status, page = await api.call("GET", "/apps", params={"selector": selector})
        assert status == 200, (selector, page)
        assert_schema("AppList", page)
        assert [i["name"] for i in page["items"]] == expected, selector
        assert page["total"] == len(expected)
    status, page = await api.call("GET", "/apps", params={"selector": "site=paris", "name": "c"})
    assert [i["name"] for i in page["items"]] == ["c"]


async def test_bad_selector_is_400(api: Api) -> None:
    """A list selector that does not parse is 400 on field selector."""
    for selector in ("site in (paris", "=x", "a==b==c", "Bad Key=1"):
        status, body = await api.call("GET", "/nodes", params={"selector": selector})
        assert status == 400, (selector, body)
        assert body["code"] == "ValidationFailed"
        assert body["field"] == "selector"


async def test_concurrent_creates_of_one_name(api: Api) -> None:
    """Of several simultaneous creates of one name, exactly one is 201 and the rest are 409."""
    results = await asyncio.gather(
        *(api.call("POST", "/configs", sample("configs", "race")) for _ in range(8))
    )
    statuses = sorted(status for status, _ in results)
    assert statuses == [201] + [409] * 7, results


async def test_concurrent_conditional_updates(api: Api) -> None:
    """Of several simultaneous PUTs with the same If-Match, exactly one wins; the rest are 409."""
    await api.call("POST", "/configs", sample("configs", "race"))
    results = await asyncio.gather(
        *(
            api.call(
                "PUT",
                "/configs/race",
                sample("configs", "race", description=f"writer {i}"),
                headers={"If-Match": '"1"'},
            )
            for i in range(8)
        )
    )
    statuses = sorted(status for status, _ in results)
    assert statuses == [200] + [409] * 7, results
    _, body = await api.call("GET", "/configs/race")
    assert body["version"] == "2"


# A database that takes reads but refuses writes of resources, as a failing disk or a read-only
# replica would: the reads before the write (the token, the current version) still work.
_REFUSE_WRITES = {
    "sqlite": [
        f"CREATE TRIGGER refuse_{op.lower()} BEFORE {op} ON resources "
        "BEGIN SELECT RAISE(ABORT, 'the disk is gone (test)'); END"
        for op in ("UPDATE", "DELETE")
    ],
    "mysql": [
        f"CREATE TRIGGER refuse_{op.lower()} BEFORE {op} ON resources FOR EACH ROW "
        "SIGNAL SQLSTATE '45000' SET MESSAGE_TEXT = 'the disk is gone (test)'"
        for op in ("UPDATE", "DELETE")
    ],
}


async def test_a_write_the_database_refuses_is_503_and_changes_nothing(
    api: Api, cloud: RunningCloud
) -> None:
    """A PUT or DELETE whose statement the database refuses is answered 503 Unavailable saying
    to retry (it was 500: the driver's error escaped the store), and the resource is unchanged."""
    assert (await api.call("POST", "/configs", sample("configs", "stuck")))[0] == 201
    for statement in _REFUSE_WRITES[cloud.database.dialect]:
        cloud.database.execute(statement)
    for method, body in (("PUT", sample("configs", "stuck", description="new")), ("DELETE", None)):
        status, answer = await api.call(method, "/configs/stuck", body)
        assert status == 503, (method, answer)
        assert answer["code"] == "Unavailable"
        assert "retry" in answer["message"].lower()
        assert "disk" not in answer["message"]  # the database's words stay in the log
    status, kept = await api.call("GET", "/configs/stuck")
    assert (status, kept["version"]) == (200, "1")
    assert kept.get("description") != "new"
