"""The management REST API (``/v1``): nodes, apps, configs, secrets, registries, certificates.

``create_app(context)`` builds the aiohttp application; ``ApiContext`` is what it runs on.
"""

from management.api.app import ApiContext, create_app
from management.api.errors import ApiError

__all__ = ["ApiContext", "ApiError", "create_app"]
