"""The management REST API (``/v1``): nodes, apps, configs, secrets, registries, certificates.

``create_app(context)`` builds the aiohttp application; ``ApiContext`` is what it runs on;
``create_activation_app`` is the activation endpoint nodes call with their install token.

=================  =========================================================================
``app.py``         the context, the error and auth middlewares, health, ``create_app``
``routes.py``      the collections and the node extras
``activation.py``  the activation endpoint (its own HTTPS server)
``views.py``       what is stored from a write, what a read shows
``openapi.py``     ``/v1/openapi.json`` and ``/docs``
=================  =========================================================================

The batch routes (``/v1/batches``) are ``management/batches.py``, added beside these by
``create_app``. The schemas the API validates with live in ``management.schemas`` (the
``baetyl`` command uses them too, without loading this package); the errors in
``management.errors``.
"""

from management.api.activation import create_activation_app
from management.api.app import ApiContext, create_app

__all__ = ["ApiContext", "create_activation_app", "create_app"]
