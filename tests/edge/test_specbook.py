"""The spec book: specs filed by (kind, name, version), asked for again only after a back-off."""

from __future__ import annotations

from edge.specbook import SpecBook, SpecRef
from shadow import ResourceKind


def test_a_ref_files_under_its_key_and_parses_back() -> None:
    """``<kind>/<name>/<version>`` both ways; a key of no resource kind, or short, is none."""
    ref = SpecRef(ResourceKind.CERTIFICATE, "plc", "3")
    assert ref.key == "certificate/plc/3"
    assert SpecRef.parse(ref.key) == ref
    assert SpecRef.parse("app/web/v/2") == SpecRef.app("web", "v/2")
    for bad in ("pod/web/1", "app/web", "app//1", "app/web/", ""):
        assert SpecRef.parse(bad) is None


def test_a_book_from_agent_json_keeps_only_specs_it_can_file() -> None:
    """What an edited or damaged agent.json holds besides specs is dropped, not carried."""
    book = SpecBook({"app/web/1": {"services": []}, "pod/x/1": {}, "config/c/1": "text"})
    assert book.to_json() == {"app/web/1": {"services": []}}


def test_a_missing_spec_is_asked_for_again_only_after_its_back_off() -> None:
    """5 to 7.5 s after the first ask, 10 to 15 s after the second; a new session asks at once."""
    book = SpecBook()
    ref = SpecRef(ResourceKind.CONFIG, "c", "1")
    assert book.to_ask([ref], now=0.0) == [ref]
    assert book.to_ask([ref], now=4.9) == []
    assert book.to_ask([ref], now=7.6) == [ref]
    assert book.to_ask([ref], now=17.0) == []
    book.forget_requests()
    assert book.to_ask([ref], now=17.0) == [ref]


def test_an_app_lacks_what_it_uses_until_it_is_here() -> None:
    """The app is assembled with its config's data once both are held; prune keeps just those."""
    book = SpecBook()
    spec = {"volumes": [{"name": "v", "config": {"name": "c", "version": "2"}}]}
    assert book.app("web", "1") == (None, [SpecRef.app("web", "1")])
    book.put(SpecRef.app("web", "1"), spec)
    assert book.app("web", "1") == (None, [SpecRef(ResourceKind.CONFIG, "c", "2")])
    book.put(SpecRef(ResourceKind.CONFIG, "c", "2"), {"data": {"k": "v"}})
    book.put(SpecRef(ResourceKind.CONFIG, "c", "1"), {"data": {"k": "old"}})
    app, lacking = book.app("web", "1")
    assert lacking == []
    assert app is not None
    assert app.configs == {"c": {"k": "v"}}
    book.prune([("web", "1")])
    assert set(book.to_json()) == {"app/web/1", "config/c/2"}
