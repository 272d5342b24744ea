"""The spec book: the app, config, secret, certificate and registry specs the agent holds.

A spec is filed by its ``SpecRef`` (kind, name, version): desired apps name their versions, an
app names the versions of what it uses (``edge.engines.references``), and a version's spec never
changes, so a spec once fetched is good until no applied app uses it. The book assembles an app
with everything it uses (``AppSpec``), or says what it lacks; it remembers which specs were asked
for and when, so an unanswered ``resource/get`` is sent again after a jittered back-off, not at
every turn of the loop.
"""

from __future__ import annotations

import random
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from edge.engines import AppSpec, Reference, references
from shadow import JSONObject, ResourceKind, ResourceRequest

__all__ = ["SpecBook", "SpecRef", "retry_delay"]


@dataclass(frozen=True, slots=True)
class SpecRef:
    """One spec by kind, name and version, as ``resource/get`` asks for it."""

    kind: ResourceKind
    name: str
    version: str

    @classmethod
    def app(cls, name: str, version: str) -> SpecRef:
        return cls(ResourceKind.APP, name, version)

    @classmethod
    def of(cls, reference: Reference) -> SpecRef:
        """What an app spec uses (its kinds are all resource kinds)."""
        return cls(ResourceKind(reference.kind), reference.name, reference.version)

    @classmethod
    def parse(cls, key: str) -> SpecRef | None:
        """The ref of a ``<kind>/<name>/<version>`` key in ``agent.json``; None if it is none."""
        kind, _, rest = key.partition("/")
        name, _, version = rest.partition("/")
        if kind not in tuple(ResourceKind) or not name or not version:
            return None
        return cls(ResourceKind(kind), name, version)

    @property
    def key(self) -> str:
        """``<kind>/<name>/<version>``: how ``agent.json`` files the spec."""
        return f"{self.kind.value}/{self.name}/{self.version}"

    def request(self, client_token: str) -> ResourceRequest:
        return ResourceRequest(self.kind, self.name, self.version, client_token)


def retry_delay(attempts: int) -> float:
    """Seconds before asking again for a spec asked for ``attempts`` times already, unanswered.

    5 s, then doubling to at most a minute, jittered by up to half again, so that a fleet whose
    answers failed together (a database outage: 500) does not ask again together.
    """
    return min(5.0 * 2.0**attempts, 60.0) * (1.0 + random.random() / 2)  # noqa: S311


class SpecBook:
    """The specs held, and the ones asked for (see the module docstring)."""

    def __init__(self, specs: Mapping[str, Any] | None = None) -> None:
        self._specs: dict[SpecRef, Any] = {}
        for key, spec in (specs or {}).items():
            ref = SpecRef.parse(str(key))
            if ref is not None and isinstance(spec, dict):
                self._specs[ref] = spec
        # spec -> (attempts, monotonic time before which it is not asked for again)
        self._requested: dict[SpecRef, tuple[int, float]] = {}

    def to_json(self) -> dict[str, Any]:
        """The specs by ``<kind>/<name>/<version>``, as ``agent.json`` keeps them."""
        return {ref.key: spec for ref, spec in self._specs.items()}

    def put(self, ref: SpecRef, spec: JSONObject) -> None:
        self._specs[ref] = spec

    def get(self, ref: SpecRef) -> dict[str, Any] | None:
        """The spec held for ``ref`` (a device or route spec, say), or None."""
        spec = self._specs.get(ref)
        return spec if isinstance(spec, dict) else None

    def app(self, name: str, version: str) -> tuple[AppSpec | None, list[SpecRef]]:
        """The app at ``version`` with what it uses (configs, secrets, certificates,
        registries), or None and what it lacks."""
        spec = self._specs.get(SpecRef.app(name, version))
        if spec is None:
            return None, [SpecRef.app(name, version)]
        lacking: list[SpecRef] = []
        used: dict[str, dict[str, dict[str, str]]] = {
            "config": {}, "secret": {}, "certificate": {}, "registry": {}
        }  # fmt: skip
        for reference in references(spec):
            data = self._specs.get(SpecRef.of(reference))
            if data is None:
                lacking.append(SpecRef.of(reference))
            else:
                used[reference.kind][reference.name] = dict(data.get("data", {}))
        if lacking:
            return None, lacking
        return AppSpec(name, version, spec, used["config"], used["secret"],
                       used["certificate"], used["registry"]), []  # fmt: skip

    def to_ask(self, missing: Iterable[SpecRef], now: float) -> list[SpecRef]:
        """The missing specs not asked for too recently, counted as asked for at ``now``."""
        asking = []
        for ref in missing:
            attempts, not_before = self._requested.get(ref, (0, 0.0))
            if now >= not_before:
                self._requested[ref] = (attempts + 1, now + retry_delay(attempts))
                asking.append(ref)
        return asking

    def forget_requests(self) -> None:
        """Ask for every missing spec at once next time (a new session; nothing missing)."""
        self._requested.clear()

    def prune(self, apps: Iterable[tuple[str, str]], also: Iterable[SpecRef] = ()) -> None:
        """Forget every spec the apps ``(name, version)`` do not use (old secrets included),
        but those in ``also`` (the desired devices and routes)."""
        keep = {SpecRef.app(name, version) for name, version in apps} | set(also)
        for ref in list(keep):
            keep.update(SpecRef.of(used) for used in references(self._specs.get(ref) or {}))
        for ref in list(self._specs):
            if ref not in keep:
                del self._specs[ref]
