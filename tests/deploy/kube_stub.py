"""Run the CA hook Job's Python script with the Kubernetes API replaced by a file.

::

    python -m tests.deploy.kube_stub OUT created|exists < script

``load_incluster_config`` does nothing. ``CoreV1Api.create_namespaced_secret`` writes the namespace
and the Secret, serialized as the API server would receive it, to OUT as JSON (``created``), or
answers 409 Conflict (``exists``), as the API server does for a Secret that is already there.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import kubernetes.client
import kubernetes.config
from kubernetes.client.exceptions import ApiException


def main() -> None:
    out, outcome = Path(sys.argv[1]), sys.argv[2]

    def create_namespaced_secret(_api: Any, namespace: str, body: Any, **_kwargs: Any) -> Any:
        if outcome == "exists":
            raise ApiException(status=409, reason="Conflict")
        with kubernetes.client.ApiClient() as client:
            secret = client.sanitize_for_serialization(body)
        out.write_text(json.dumps({"namespace": namespace, "secret": secret}), encoding="utf-8")
        return body

    kubernetes.config.load_incluster_config = lambda *args, **kwargs: None
    kubernetes.client.CoreV1Api.create_namespaced_secret = create_namespaced_secret  # type: ignore[method-assign,assignment]
    script = sys.stdin.read()
    exec(compile(script, "ca-init-job", "exec"), {"__name__": "__main__"})  # noqa: S102 # the chart's script


if __name__ == "__main__":
    main()
