"""Management: the composition root of the cloud, its REST API and the ``baetyl`` command.

``cloud.py`` composes what ``baetyl up`` runs (the database, the broker, the shadow service, the
API); ``store.py`` keeps namespaces, tokens and resources in the shadow's ``Database``;
``matching.py`` turns resources into each node's desired state; ``api/`` serves ``/v1`` and the
activation endpoint; ``cli/`` is the ``baetyl`` command. ARCHITECTURE.md names every module.

This file imports nothing: the ``baetyl`` command imports per command (``cli/__init__.py``), so
importing the package loads no server code.

Exceptions (``management.errors``; each carries the HTTP ``status`` and ``code`` the API answers
with)::

    ManagementError                 500 InternalError
    ├── BadRequest 400, Unauthorized 401, Forbidden 403, NotFound 404, Conflict 409,
    │   PayloadTooLarge 413, Unavailable 503
    ├── ValidationFailed            400 (field)
    │   └── SelectorError           (also a ValueError)
    ├── ResourceMissing 404, ResourceConflict 409   (also the shadow's StoreError)
    ├── TokenError                  401 (TokenKeyError 500)
    └── CryptoError, ConfigError    500

The command's API client errors (``cli/apiclient.py``'s ``ClientError``) stand apart: they are
raised client-side and loaded with every command, the edge agent's included.
"""
