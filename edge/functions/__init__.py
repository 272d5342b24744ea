"""Function apps on the node: the Python runtime the native engine runs, and the local proxy.

``edge.functions.runtime`` is the program serving one function service (standard library only);
:class:`FunctionProxy` is the node's single address for calling any of them,
``POST /<app>/<function>``.
"""

from edge.functions.proxy import DEFAULT_PORT, FunctionLocator, FunctionProxy
from edge.functions.runtime import (
    FUNCTIONS_ENV,
    INVOKE_ID_HEADER,
    PORT_FILE_ENV,
    TIMEOUT_ENV,
    RuntimeConfigError,
    runtime_command,
    startup_error_file,
)

__all__ = [
    "DEFAULT_PORT",
    "FUNCTIONS_ENV",
    "INVOKE_ID_HEADER",
    "PORT_FILE_ENV",
    "TIMEOUT_ENV",
    "FunctionLocator",
    "FunctionProxy",
    "RuntimeConfigError",
    "runtime_command",
    "startup_error_file",
]
