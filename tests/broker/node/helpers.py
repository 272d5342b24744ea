"""The node broker as the tests run it: a real process, certificates made here, a config file.

``NodePki`` holds a cloud CA (the agent's node certificate) and a device CA (the broker's server
certificate and devices' certificates); ``NodeBrokerProcess`` writes config.json, starts
``python -m broker.node`` and reads the bound ports from its log. Stop it (or use ``with``).
"""

from __future__ import annotations

import base64
import hashlib
import ipaddress
import json
import os
import queue
import re
import signal
import subprocess
import sys
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from certs import (
    CertificateAuthority,
    Identity,
    build_csr,
    generate_private_key,
    write_private_file,
    write_public_file,
)
from certs.keys import private_key_pem
from tests.broker.helpers import HOST, Creds

NODE = "acme.gw-1"
STARTUP = 20.0


def password_hash(password: str, salt: bytes = b"0123456789abcdef") -> str:
    """The management API's format: scrypt$N$r$p$salt$hash (standard base64)."""
    digest = hashlib.scrypt(password.encode(), salt=salt, n=16384, r=8, p=1, dklen=32)
    return f"scrypt$16384$8$1${base64.b64encode(salt).decode()}${base64.b64encode(digest).decode()}"


@dataclass(slots=True)
class NodePki:
    root: Path
    cloud_ca: CertificateAuthority
    device_ca: CertificateAuthority
    server_cert: Path
    server_key: Path
    agent: Creds
    _count: list[int] = field(default_factory=lambda: [0])

    @classmethod
    def build(cls, root: Path) -> NodePki:
        cloud_ca = CertificateAuthority.init(root / "ca", common_name="pybaetyl CA")
        device_ca = CertificateAuthority.init(root / "device-ca", common_name="pybaetyl device CA")
        server = device_ca.issue_server(
            "broker.acme.gw-1", dns_names=["localhost"], ip_addresses=[ipaddress.ip_address(HOST)]
        )
        assert server.private_key_pem is not None
        (root / "files").mkdir()
        write_private_file(root / "files" / "server.key", server.private_key_pem)
        write_public_file(root / "files" / "server.crt", server.chain_pem)
        agent = cls._issue(cloud_ca, root / "clients", Identity.node("acme", "gw-1"))
        return cls(
            root,
            cloud_ca,
            device_ca,
            root / "files" / "server.crt",
            root / "files" / "server.key",
            agent,
        )

    @staticmethod
    def _issue(ca: CertificateAuthority, directory: Path, identity: Identity) -> Creds:
        directory.mkdir(exist_ok=True)
        key = generate_private_key()
        issued = ca.issue_from_csr(build_csr(key), identity)
        # The serial makes the name unique: two certificates of one identity do not collide.
        name = f"{identity.common_name.replace(':', '_')}-{issued.certificate.serial_number:x}"
        cert, key_path = directory / f"{name}.crt", directory / f"{name}.key"
        write_public_file(cert, issued.chain_pem)
        write_private_file(key_path, private_key_pem(key))
        return Creds(identity.name, cert, key_path, issued.certificate.serial_number)

    def issue(self, ca: CertificateAuthority, identity: Identity) -> Creds:
        """Any identity from either CA (for the refusals)."""
        return self._issue(ca, self.root / "clients", identity)

    def device(self, name: str, node: str = "gw-1", namespace: str = "acme") -> Creds:
        """A device certificate from the device CA (client id: the device's name)."""
        return self._issue(
            self.device_ca, self.root / "clients", Identity.device(namespace, node, name)
        )

    def cloud_node(self, namespace: str, name: str) -> Creds:
        creds = self._issue(self.cloud_ca, self.root / "clients", Identity.node(namespace, name))
        return Creds(f"{namespace}.{name}", creds.cert, creds.key, creds.serial)

    def cloud_operator(self, name: str) -> Creds:
        return self._issue(self.cloud_ca, self.root / "clients", Identity.operator(name))

    @property
    def ca_file(self) -> Path:
        """What devices and the agent verify the node broker with."""
        return self.device_ca.ca_path


def device_entry(
    name: str,
    *,
    publish: list[str] | None = None,
    subscribe: list[str] | None = None,
    password: str | None = None,
    certificates: list[int] = (),  # type: ignore[assignment]
) -> dict[str, Any]:
    return {
        "name": name,
        "publish": publish if publish is not None else [f"devices/{name}/#"],
        "subscribe": subscribe if subscribe is not None else [f"devices/{name}/#"],
        "passwordHash": password_hash(password) if password else None,
        "certificates": [format(serial, "x") for serial in certificates],
    }


def base_config(
    pki: NodePki, directory: Path, devices: list[dict[str, Any]], **over: Any
) -> dict[str, Any]:
    config: dict[str, Any] = {
        "node": NODE,
        "listen": {"host": HOST, "port": 0},
        "local": {"host": HOST, "port": 0},
        "tls": {
            "cert": str(pki.server_cert),
            "key": str(pki.server_key),
            "deviceCa": str(pki.device_ca.ca_path),
            "cloudCa": str(pki.cloud_ca.ca_path),
        },
        "devices": devices,
        "spool": {
            "path": "spool.db",
            "routes": {"telemetry-up": "devices/+/telemetry"},
            "maxBytes": 256 * 1024 * 1024,
            "maxAgeSeconds": 604800,
        },
        "status": "status.json",
        "maxQueuedPerSession": 1000,
    }
    config.update(over)
    return config


def write_config(path: Path, config: dict[str, Any]) -> None:
    """Atomically, as the agent writes it."""
    temporary = path.with_name(path.name + ".tmp")
    temporary.write_text(json.dumps(config))
    os.replace(temporary, path)


_PORTS = re.compile(r"listening on (\{.*\})")


class NodeBrokerProcess:
    """``python -m broker.node --config PATH`` with its log collected; always stop it."""

    def __init__(self, directory: Path, config: dict[str, Any]) -> None:
        self.directory = directory
        self.config_path = directory / "config.json"
        write_config(self.config_path, config)
        self.config = config
        self.log: list[str] = []
        self._lines: queue.Queue[str | None] = queue.Queue()
        self.process = subprocess.Popen(
            [sys.executable, "-m", "broker.node", "--config", str(self.config_path)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
            cwd=directory,
        )
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        self.ports: dict[str, int] = {}

    def _read(self) -> None:
        assert self.process.stderr is not None
        for line in self.process.stderr:
            self.log.append(line.rstrip("\n"))
            self._lines.put(line)
        self._lines.put(None)

    def started(self) -> NodeBrokerProcess:
        while True:
            try:
                line = self._lines.get(timeout=STARTUP)
            except queue.Empty:
                self.stop()
                raise AssertionError(
                    "the node broker did not start:\n" + "\n".join(self.log)
                ) from None
            if line is None:
                self.stop()
                raise AssertionError("the node broker exited:\n" + "\n".join(self.log))
            found = _PORTS.search(line)
            if found:
                self.ports = json.loads(found[1].replace("'", '"'))
                return self

    @property
    def port(self) -> int:
        return self.ports["mqtts"]

    @property
    def local_port(self) -> int:
        return self.ports["local"]

    def reconfigure(self, config: dict[str, Any]) -> None:
        self.config = config
        write_config(self.config_path, config)

    def status(self) -> dict[str, Any] | None:
        try:
            loaded: dict[str, Any] = json.loads((self.directory / "status.json").read_text())
        except (OSError, ValueError):
            return None
        return loaded

    def terminate(self, timeout: float = 10.0) -> int:
        self.process.send_signal(signal.SIGTERM)
        return self.process.wait(timeout)

    def kill(self) -> None:
        self.process.kill()
        self.process.wait(10)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait(10)
        if self.process.stderr is not None:
            self._reader.join(5)
            self.process.stderr.close()

    def __enter__(self) -> NodeBrokerProcess:
        return self.started()

    def __exit__(self, *_: object) -> None:
        self.stop()
