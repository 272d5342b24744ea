"""The management REST API (``/v1``): nodes, apps, configs, secrets, registries, certificates.

``create_app(context)`` builds the aiohttp application; ``ApiContext`` is what it runs on. They
are loaded on first use, so that the CLI can use ``schemas`` without the server stack.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from management.api.app import ApiContext, create_app
    from management.api.errors import ApiError

__all__ = ["ApiContext", "ApiError", "create_app"]


def __getattr__(name: str) -> Any:
    if name in ("ApiContext", "create_app"):
        from management.api import app

        return getattr(app, name)
    if name == "ApiError":
        from management.api.errors import ApiError

        return ApiError
    raise AttributeError(name)
