"""The management API's records: namespaces, API tokens, resources, activation tokens used.

They live in the same ``Database`` as the shadows (``shadow.server``), in tables of their own
created by the ``management`` component's migrations. Every resource kind (node, app, config,
secret, registry, certificate, batch, device, route) shares one table keyed by (namespace, kind,
name): a resource is its labels and its body (JSON, with secret values already encrypted by the
caller) and a version that every write bumps. An update can be made conditional on the version read.

Every failure is a ``StoreError`` (from ``shadow``): ``ResourceMissing`` and ``ResourceConflict``
for what the caller can fix, the plain ``StoreError`` when the database failed or cannot be
reached (the API answers it 503, retry later); no driver exception leaves this module.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from enum import StrEnum
from typing import Any

from management.errors import Conflict, NotFound
from shadow import StoreError
from shadow.server import MIGRATIONS, Database, Migration

__all__ = [
    "MANAGEMENT_MIGRATIONS",
    "ApiTokenRecord",
    "Kind",
    "Resource",
    "ResourceConflict",
    "ResourceMissing",
    "ResourceStore",
    "all_migrations",
]


class Kind(StrEnum):
    NODE = "node"
    APP = "app"
    CONFIG = "config"
    SECRET = "secret"  # noqa: S105 # a resource kind, not a password
    REGISTRY = "registry"
    CERTIFICATE = "certificate"
    BATCH = "batch"
    DEVICE = "device"
    ROUTE = "route"


MANAGEMENT_MIGRATIONS: tuple[Migration, ...] = (
    Migration(
        1,
        "create namespaces, api tokens, resources, activations",
        sqlite=(
            """CREATE TABLE namespaces (
                name VARCHAR(63) NOT NULL PRIMARY KEY,
                created_at BIGINT NOT NULL
            )""",
            """CREATE TABLE api_tokens (
                id VARCHAR(32) NOT NULL PRIMARY KEY,
                namespace VARCHAR(63) NOT NULL,
                name VARCHAR(253) NOT NULL,
                secret_hash CHAR(64) NOT NULL,
                created_at BIGINT NOT NULL,
                expires_at BIGINT NULL
            )""",
            """CREATE TABLE resources (
                namespace VARCHAR(63) NOT NULL,
                kind VARCHAR(32) NOT NULL,
                name VARCHAR(253) NOT NULL,
                version BIGINT NOT NULL,
                labels TEXT NOT NULL,
                body TEXT NOT NULL,
                created_at BIGINT NOT NULL,
                updated_at BIGINT NOT NULL,
                PRIMARY KEY (namespace, kind, name)
            )""",
            """CREATE TABLE activations (
                jti VARCHAR(64) NOT NULL PRIMARY KEY,
                namespace VARCHAR(63) NOT NULL,
                node VARCHAR(253) NOT NULL,
                expires_at BIGINT NOT NULL,
                used_at BIGINT NOT NULL
            )""",
        ),
        mysql=(
            """CREATE TABLE namespaces (
                name VARCHAR(63) CHARACTER SET ascii COLLATE ascii_bin NOT NULL PRIMARY KEY,
                created_at BIGINT NOT NULL
            ) ENGINE=InnoDB""",
            """CREATE TABLE api_tokens (
                id VARCHAR(32) CHARACTER SET ascii COLLATE ascii_bin NOT NULL PRIMARY KEY,
                namespace VARCHAR(63) CHARACTER SET ascii COLLATE ascii_bin NOT NULL,
                name VARCHAR(253) NOT NULL,
                secret_hash CHAR(64) CHARACTER SET ascii NOT NULL,
                created_at BIGINT NOT NULL,
                expires_at BIGINT NULL
            ) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4""",
            """CREATE TABLE resources (
                namespace VARCHAR(63) CHARACTER SET ascii COLLATE ascii_bin NOT NULL,
                kind VARCHAR(32) CHARACTER SET ascii COLLATE ascii_bin NOT NULL,
                name VARCHAR(253) CHARACTER SET ascii COLLATE ascii_bin NOT NULL,
                version BIGINT NOT NULL,
                labels MEDIUMTEXT NOT NULL,
                body MEDIUMTEXT NOT NULL,
                created_at BIGINT NOT NULL,
                updated_at BIGINT NOT NULL,
                PRIMARY KEY (namespace, kind, name)
            ) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin""",
            """CREATE TABLE activations (
                jti VARCHAR(64) CHARACTER SET ascii COLLATE ascii_bin NOT NULL PRIMARY KEY,
                namespace VARCHAR(63) CHARACTER SET ascii NOT NULL,
                node VARCHAR(253) CHARACTER SET ascii NOT NULL,
                expires_at BIGINT NOT NULL,
                used_at BIGINT NOT NULL
            ) ENGINE=InnoDB""",
        ),
        component="management",
    ),
)


def all_migrations() -> tuple[Migration, ...]:
    """The shadow's migrations, then the management API's."""
    return (*MIGRATIONS, *MANAGEMENT_MIGRATIONS)


class ResourceMissing(StoreError, NotFound):
    """No such resource in the namespace."""


class ResourceConflict(StoreError, Conflict):
    """The resource exists already, or changed since it was read."""


class _AppRaced(ResourceConflict):
    """An app to bump changed between reading and writing it (another writer); start again."""


@dataclass(frozen=True, slots=True)
class Resource:
    """One stored resource: its labels, its body (JSON) and the version every write bumps."""

    namespace: str
    kind: Kind
    name: str
    version: int = 0
    labels: dict[str, str] = field(default_factory=dict)
    body: dict[str, Any] = field(default_factory=dict)
    created_at: int = 0
    updated_at: int = 0


@dataclass(frozen=True, slots=True)
class ApiTokenRecord:
    id: str
    namespace: str
    name: str
    secret_hash: str
    created_at: int
    expires_at: int | None


_Apps = list[Resource]  # outside ResourceStore, whose ``list`` method hides the builtin there


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


def _dumps(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False, sort_keys=True)


_COLUMNS = "namespace, kind, name, version, labels, body, created_at, updated_at"


def _resource(row: Sequence[Any]) -> Resource:
    return Resource(
        namespace=str(row[0]),
        kind=Kind(str(row[1])),
        name=str(row[2]),
        version=int(row[3]),
        labels=json.loads(row[4]),
        body=json.loads(row[5]),
        created_at=int(row[6]),
        updated_at=int(row[7]),
    )


def _token(row: Sequence[Any]) -> ApiTokenRecord:
    expires = None if row[5] is None else int(row[5])
    return ApiTokenRecord(str(row[0]), str(row[1]), str(row[2]), str(row[3]), int(row[4]), expires)


class ResourceStore:
    """Namespaces, tokens and resources on an open ``Database`` (management migrations)."""

    def __init__(self, db: Database) -> None:
        self.db = db

    # -- namespaces ----------------------------------------------------------------------------

    async def ensure_namespace(self, name: str) -> bool:
        """Create the namespace if it does not exist; whether it was created."""
        rows = await self.db.select("SELECT name FROM namespaces WHERE name = ?", (name,))
        if rows:
            return False
        async with self.db.transaction() as tx:
            if await tx.select("SELECT name FROM namespaces WHERE name = ?", (name,)):
                return False
            await tx.execute(
                "INSERT INTO namespaces (name, created_at) VALUES (?, ?)", (name, _now_ms())
            )
        return True

    async def namespaces(self) -> list[str]:
        rows = await self.db.select("SELECT name FROM namespaces ORDER BY name")
        return [str(row[0]) for row in rows]

    # -- API tokens ------------------------------------------------------------------------------

    async def add_token(self, record: ApiTokenRecord) -> None:
        async with self.db.transaction() as tx:
            await tx.execute(
                "INSERT INTO api_tokens (id, namespace, name, secret_hash, created_at, expires_at) "
                "VALUES (?, ?, ?, ?, ?, ?)",
                (
                    record.id,
                    record.namespace,
                    record.name,
                    record.secret_hash,
                    record.created_at,
                    record.expires_at,
                ),
            )

    async def token(self, token_id: str) -> ApiTokenRecord | None:
        rows = await self.db.select(
            "SELECT id, namespace, name, secret_hash, created_at, expires_at "
            "FROM api_tokens WHERE id = ?",
            (token_id,),
        )
        return _token(rows[0]) if rows else None

    async def tokens(self, namespace: str) -> list[ApiTokenRecord]:
        rows = await self.db.select(
            "SELECT id, namespace, name, secret_hash, created_at, expires_at "
            "FROM api_tokens WHERE namespace = ? ORDER BY created_at, id",
            (namespace,),
        )
        return [_token(row) for row in rows]

    async def revoke_token(self, namespace: str, token_id: str) -> bool:
        async with self.db.transaction() as tx:
            deleted = await tx.execute(
                "DELETE FROM api_tokens WHERE id = ? AND namespace = ?", (token_id, namespace)
            )
        return deleted > 0

    # -- resources -------------------------------------------------------------------------------

    async def get(self, namespace: str, kind: Kind, name: str) -> Resource:
        rows = await self.db.select(
            f"SELECT {_COLUMNS} FROM resources "  # noqa: S608 # constant column list
            "WHERE namespace = ? AND kind = ? AND name = ?",
            (namespace, kind.value, name),
        )
        if not rows:
            raise ResourceMissing(f"There is no {kind} named {name!r} in this namespace.")
        return _resource(rows[0])

    async def find(self, namespace: str, kind: Kind, name: str) -> Resource | None:
        try:
            return await self.get(namespace, kind, name)
        except ResourceMissing:
            return None

    async def list(self, namespace: str, kind: Kind) -> list[Resource]:
        """Every resource of ``kind`` in ``namespace``, by name."""
        rows = await self.db.select(
            f"SELECT {_COLUMNS} FROM resources "  # noqa: S608 # constant column list
            "WHERE namespace = ? AND kind = ? ORDER BY name",
            (namespace, kind.value),
        )
        return [_resource(row) for row in rows]

    async def create(self, resource: Resource) -> Resource:
        """Insert a new resource at version 1; ``ResourceConflict`` if the name is taken."""
        now = _now_ms()
        taken_message = (
            f"A {resource.kind} named {resource.name!r} exists already; choose another name, or "
            "update it with PUT."
        )
        try:
            async with self.db.transaction() as tx:
                taken = await tx.select(
                    "SELECT version FROM resources WHERE namespace = ? AND kind = ? AND name = ?",
                    (resource.namespace, resource.kind.value, resource.name),
                )
                if taken:
                    raise ResourceConflict(taken_message)
                await tx.execute(
                    f"INSERT INTO resources ({_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",  # noqa: S608
                    (
                        resource.namespace,
                        resource.kind.value,
                        resource.name,
                        1,
                        _dumps(resource.labels),
                        _dumps(resource.body),
                        now,
                        now,
                    ),
                )
        except ResourceConflict:
            raise
        except StoreError:
            # Two creates at once (InnoDB): both saw no row, the second INSERT hit the primary key.
            # Otherwise the database failed: find() raises its StoreError, or this one is raised.
            if await self.find(resource.namespace, resource.kind, resource.name) is not None:
                raise ResourceConflict(taken_message) from None
            raise
        return Resource(
            resource.namespace,
            resource.kind,
            resource.name,
            1,
            resource.labels,
            resource.body,
            now,
            now,
        )

    async def update(self, resource: Resource, *, expected_version: int | None = None) -> Resource:
        """Write new labels and body, bumping the version.

        With ``expected_version``, the write happens only if the stored version is still that one
        (``ResourceConflict`` otherwise); without it the last writer wins (a write that races
        another is retried). ``ResourceMissing`` if it does not exist.
        """
        updated, _users = await self.update_used(
            resource, expected_version=expected_version, users=None
        )
        return updated

    async def update_used(
        self,
        resource: Resource,
        *,
        expected_version: int | None = None,
        users: Callable[[Resource], bool] | None,
    ) -> tuple[Resource, _Apps]:
        """``update``, and in the same transaction a new version for every app of the namespace
        that ``users`` selects (the apps using a config, secret, certificate or registry): both
        happen or neither.

        A node runs an app at a version; only a new version makes it fetch the spec again, with
        what it mounts. Bumped apart, a crash between the two writes left an app at its old
        version for good. Returns the updated resource and the apps at their new versions. An
        app written meanwhile by another writer makes the whole transaction start again.
        """
        for _attempt in range(4):
            try:
                return await self._update_once(resource, expected_version, users)
            except _AppRaced:
                continue
            except ResourceConflict:
                if expected_version is not None:
                    raise
        try:
            return await self._update_once(resource, expected_version, users)
        except _AppRaced as exc:
            raise ResourceConflict(str(exc)) from None

    async def _update_once(
        self,
        resource: Resource,
        expected_version: int | None,
        users: Callable[[Resource], bool] | None,
    ) -> tuple[Resource, _Apps]:
        now = _now_ms()
        bumped: _Apps = []
        async with self.db.transaction() as tx:
            rows = await tx.select(
                "SELECT version, created_at FROM resources "
                "WHERE namespace = ? AND kind = ? AND name = ?",
                (resource.namespace, resource.kind.value, resource.name),
            )
            if not rows:
                raise ResourceMissing(
                    f"There is no {resource.kind} named {resource.name!r} in this namespace."
                )
            current, created_at = int(rows[0][0]), int(rows[0][1])
            if expected_version is not None and expected_version != current:
                raise ResourceConflict(
                    f"The {resource.kind} {resource.name!r} is at version {current}, not "
                    f"{expected_version}; read it again and reapply your change."
                )
            changed = await tx.execute(
                "UPDATE resources SET version = ?, labels = ?, body = ?, updated_at = ? "
                "WHERE namespace = ? AND kind = ? AND name = ? AND version = ?",
                (
                    current + 1,
                    _dumps(resource.labels),
                    _dumps(resource.body),
                    now,
                    resource.namespace,
                    resource.kind.value,
                    resource.name,
                    current,
                ),
            )
            if changed != 1:
                raise ResourceConflict(
                    f"The {resource.kind} {resource.name!r} changed while it was written; retry."
                )
            if users is not None:
                # A locking read: an app written (or created) after this transaction's first
                # read is seen, and one written from now on waits until this commits; its own
                # push then finds the new version of what it mounts.
                apps = await tx.select_for_update(
                    f"SELECT {_COLUMNS} FROM resources "  # noqa: S608 # constant column list
                    "WHERE namespace = ? AND kind = ? ORDER BY name",
                    (resource.namespace, Kind.APP.value),
                )
                for app in map(_resource, apps):
                    if not users(app):
                        continue
                    changed = await tx.execute(
                        "UPDATE resources SET version = ?, updated_at = ? "
                        "WHERE namespace = ? AND kind = ? AND name = ? AND version = ?",
                        (app.version + 1, now, app.namespace, app.kind.value, app.name,
                         app.version),
                    )  # fmt: skip
                    if changed != 1:
                        raise _AppRaced(
                            f"The app {app.name!r} changed while the {resource.kind} "
                            f"{resource.name!r} it mounts was written; retry."
                        )
                    bumped.append(replace(app, version=app.version + 1, updated_at=now))
        updated = Resource(
            resource.namespace,
            resource.kind,
            resource.name,
            current + 1,
            resource.labels,
            resource.body,
            created_at,
            now,
        )
        return updated, bumped

    async def delete(self, namespace: str, kind: Kind, name: str) -> Resource:
        """Remove the resource; what it was (``ResourceMissing`` if there was none)."""
        async with self.db.transaction() as tx:
            rows = await tx.select(
                f"SELECT {_COLUMNS} FROM resources "  # noqa: S608 # constant column list
                "WHERE namespace = ? AND kind = ? AND name = ?",
                (namespace, kind.value, name),
            )
            if not rows:
                raise ResourceMissing(f"There is no {kind} named {name!r} in this namespace.")
            await tx.execute(
                "DELETE FROM resources WHERE namespace = ? AND kind = ? AND name = ?",
                (namespace, kind.value, name),
            )
        return _resource(rows[0])

    # -- activation tokens used (single use) -----------------------------------------------------

    async def use_activation(self, jti: str, namespace: str, node: str, expires_at: int) -> bool:
        """Record a token's single use; False if it was used before."""
        try:
            async with self.db.transaction() as tx:
                if await tx.select("SELECT jti FROM activations WHERE jti = ?", (jti,)):
                    return False
                await tx.execute(
                    "INSERT INTO activations (jti, namespace, node, expires_at, used_at) "
                    "VALUES (?, ?, ?, ?, ?)",
                    (jti, namespace, node, expires_at, _now_ms()),
                )
        except StoreError:
            # Two uses at once (InnoDB): both saw no row, the second INSERT hit the primary key.
            if await self.db.select("SELECT jti FROM activations WHERE jti = ?", (jti,)):
                return False
            raise
        return True
