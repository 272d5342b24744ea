"""The subscription index: which subscriptions match a topic, without scanning them all.

Exact filters (no wildcard: the common case, one ``$baetyl/node/<id>/desire`` per node) sit in a
dict keyed by the topic; wildcard filters sit in a trie keyed by level, with ``+`` and ``#``
children. Matching a topic costs one dict lookup plus a walk of the trie along the topic's
levels, whatever the number of subscriptions. Each subscriber's own filters are indexed too, so
dropping a session touches only its own subscriptions.

The values stored are opaque to the index (the broker stores its session objects); subscribers
are told apart by a hashable key (the client id).

Storage is linear in a filter's length: a trie node keeps its children by level and nothing of
the path above it, and each subscription holds the one filter string it was added with (the
same object the per-subscriber index keys on). Nodes once kept their full path, so a filter of
n levels stored n prefixes of itself: a 64 KiB filter of one-letter levels cost about 1 GB.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Iterator
from dataclasses import dataclass, field
from typing import Generic, TypeVar

__all__ = ["Subscription", "SubscriptionIndex"]

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


@dataclass(slots=True)
class Subscription(Generic[K, V]):
    """One subscriber's subscription to one filter."""

    key: K
    value: V
    qos: int
    topic_filter: str
    # Which topics this subscriber may receive, for the few whose filter may reach more than
    # their role allows (operators: no secrets); None: every topic the filter matches.
    accepts: Callable[[str], bool] | None = None


@dataclass(slots=True)
class _Node(Generic[K, V]):
    children: dict[str, _Node[K, V]] = field(default_factory=dict)
    # Filters ending here, and ending "/#" here; None until the first (most nodes of a deep
    # filter hold neither, and an empty dict costs 64 bytes a level).
    here: dict[K, Subscription[K, V]] | None = None
    hash: dict[K, Subscription[K, V]] | None = None


WILDCARD_CACHE_SIZE = 65536
WILDCARD_CACHE_CHARS = 16 * 1024 * 1024


def _has_wildcard(topic_filter: str) -> bool:
    return "+" in topic_filter or "#" in topic_filter


class SubscriptionIndex(Generic[K, V]):
    """Subscriptions by filter, matched per topic in time independent of their number."""

    def __init__(self) -> None:
        self._exact: dict[str, dict[K, Subscription[K, V]]] = {}
        self._root: _Node[K, V] = _Node()
        self._by_key: dict[K, dict[str, Subscription[K, V]]] = {}
        # Wildcard matches per topic, remembered until a wildcard subscription changes: most
        # topics are published again and again (a node's report, its desire), and wildcard
        # subscriptions change rarely (the cloud's own services, operators).
        self._wild_cache: dict[str, tuple[tuple[str, Subscription[K, V]], ...]] = {}
        self._cache_chars = 0  # characters of the topics it holds, bounded as their number is

    def __len__(self) -> int:
        return sum(len(filters) for filters in self._by_key.values())

    def add(
        self,
        topic_filter: str,
        key: K,
        value: V,
        qos: int,
        accepts: Callable[[str], bool] | None = None,
    ) -> bool:
        """Add or replace ``key``'s subscription to ``topic_filter``; True if it is new."""
        subscription = Subscription(key, value, qos, topic_filter, accepts)
        if _has_wildcard(topic_filter):
            self._wild_cache.clear()
            self._cache_chars = 0
            node = self._root
            levels = topic_filter.split("/")
            for level in levels[:-1]:
                node = self._child(node, level)
            last = levels[-1]
            if last == "#":
                if node.hash is None:
                    node.hash = {}
                bucket = node.hash
            else:
                node = self._child(node, last)
                if node.here is None:
                    node.here = {}
                bucket = node.here
        else:
            bucket = self._exact.setdefault(topic_filter, {})
        new = key not in bucket
        bucket[key] = subscription
        self._by_key.setdefault(key, {})[topic_filter] = subscription
        return new

    @staticmethod
    def _child(node: _Node[K, V], level: str) -> _Node[K, V]:
        child = node.children.get(level)
        if child is None:
            child = node.children[level] = _Node()
        return child

    def count(self, key: K) -> int:
        """How many subscriptions ``key`` holds."""
        return len(self._by_key.get(key, ()))

    def holds(self, key: K, topic_filter: str) -> bool:
        """Whether ``key`` is subscribed to ``topic_filter``."""
        return topic_filter in self._by_key.get(key, ())

    def remove(self, topic_filter: str, key: K) -> bool:
        """Remove ``key``'s subscription to ``topic_filter``; True if there was one."""
        filters = self._by_key.get(key)
        if filters is None or filters.pop(topic_filter, None) is None:
            return False
        if not filters:
            del self._by_key[key]
        if not _has_wildcard(topic_filter):
            bucket = self._exact[topic_filter]
            del bucket[key]
            if not bucket:
                del self._exact[topic_filter]
            return True
        self._wild_cache.clear()
        self._cache_chars = 0
        self._remove_wildcard(topic_filter.split("/"), key)
        return True

    def _remove_wildcard(self, levels: list[str], key: K) -> None:
        path: list[tuple[_Node[K, V], str]] = []
        node = self._root
        for level in levels[:-1]:
            path.append((node, level))
            node = node.children[level]
        if levels[-1] == "#":
            assert node.hash is not None
            del node.hash[key]
        else:
            path.append((node, levels[-1]))
            node = node.children[levels[-1]]
            assert node.here is not None
            del node.here[key]
        # Prune empty branches so a churn of unique filters does not leak nodes.
        for parent, level in reversed(path):
            child = parent.children[level]
            if child.children or child.here or child.hash:
                break
            del parent.children[level]

    def remove_all(self, key: K) -> int:
        """Remove every subscription of ``key``; returns how many there were."""
        filters = list(self._by_key.get(key, {}))
        for topic_filter in filters:
            self.remove(topic_filter, key)
        return len(filters)

    def filters_of(self, key: K) -> dict[str, Subscription[K, V]]:
        """``key``'s subscriptions by filter (a copy)."""
        return dict(self._by_key.get(key, {}))

    def match(self, topic: str) -> Iterator[tuple[str, Subscription[K, V]]]:
        """Every (filter, subscription) matching ``topic``; one per matching subscription."""
        exact = self._exact.get(topic)
        if exact:
            for subscription in exact.values():
                yield subscription.topic_filter, subscription
        if not self._root.children and not self._root.hash:
            return
        cached = self._wild_cache.get(topic)
        if cached is None:
            levels = topic.split("/")
            # [MQTT-4.7.2-1] a filter starting with a wildcard never matches a $ topic.
            dollar = topic.startswith("$")
            cached = tuple(self._walk(self._root, levels, 0, dollar))
            if (
                len(self._wild_cache) >= WILDCARD_CACHE_SIZE
                or self._cache_chars > WILDCARD_CACHE_CHARS
            ):
                # Bounded: a flood of unique (or long) topics cannot grow it.
                self._wild_cache.clear()
                self._cache_chars = 0
            self._wild_cache[topic] = cached
            self._cache_chars += len(topic)
        yield from cached

    def _walk(
        self, node: _Node[K, V], levels: list[str], depth: int, dollar: bool
    ) -> Iterator[tuple[str, Subscription[K, V]]]:
        wildcard_allowed = not (dollar and depth == 0)
        if node.hash and wildcard_allowed:
            # "a/#" matches "a" itself as well as everything below it [MQTT-4.7.1-2].
            for subscription in node.hash.values():
                yield subscription.topic_filter, subscription
        if depth == len(levels):
            if not node.here:
                return
            for subscription in node.here.values():
                yield subscription.topic_filter, subscription
            return
        child = node.children.get(levels[depth])
        if child is not None:
            yield from self._walk(child, levels, depth + 1, dollar)
        if wildcard_allowed:
            plus = node.children.get("+")
            if plus is not None:
                yield from self._walk(plus, levels, depth + 1, dollar)
