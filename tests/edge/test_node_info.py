"""What the node reports about itself: fixed shapes, plain types, JSON that the cloud accepts."""

from __future__ import annotations

import json
import math
import platform
from pathlib import Path
from typing import Any

from edge.node import NodeInfo, NodeStats, node_info, node_stats

INFO_KEYS = {
    "hostname",
    "address",
    "arch",
    "kernelVersion",
    "os",
    "osImage",
    "machineID",
    "bootID",
    "systemUUID",
    "agentVersion",
}


def _leaves(value: Any) -> list[Any]:
    if isinstance(value, dict):
        return [leaf for item in value.values() for leaf in _leaves(item)]
    return [value]


def _shape(value: Any) -> Any:
    if isinstance(value, dict):
        return {key: _shape(item) for key, item in value.items()}
    return type(value)


def _fake_root(tmp_path: Path) -> Path:
    (tmp_path / "etc").mkdir()
    (tmp_path / "etc/os-release").write_text(
        'NAME="Debian GNU/Linux"\nPRETTY_NAME="Debian GNU/Linux 12 (bookworm)"\nID=debian\n'
    )
    (tmp_path / "etc/machine-id").write_text("3d1219c7c4c5404aaa1f6d2a48adfda4\n")
    boot = tmp_path / "proc/sys/kernel/random"
    boot.mkdir(parents=True)
    (boot / "boot_id").write_text("104b2fb9-16f9-4e4e-80df-69c26f319883\n")
    return tmp_path


def test_node_info_has_every_key_as_a_string() -> None:
    """node_info has exactly the documented keys, all strings, and survives a JSON round trip."""
    info = node_info()
    assert set(info) == INFO_KEYS
    assert all(isinstance(value, str) for value in info.values())
    assert json.loads(json.dumps(info, allow_nan=False)) == info
    assert info["hostname"]
    assert info["os"] == platform.system().lower()
    assert info["agentVersion"]


def test_node_info_reads_identity_files_under_root(tmp_path: Path) -> None:
    """os-release is unquoted, machine and boot ids are stripped, and a missing uuid is empty."""
    info: NodeInfo = node_info(root=_fake_root(tmp_path))
    assert info["osImage"] == "Debian GNU/Linux 12 (bookworm)"
    assert info["machineID"] == "3d1219c7c4c5404aaa1f6d2a48adfda4"
    assert info["bootID"] == "104b2fb9-16f9-4e4e-80df-69c26f319883"
    assert info["systemUUID"] == ""


def test_node_info_falls_back_to_usr_lib_os_release(tmp_path: Path) -> None:
    """Without /etc/os-release the image name comes from /usr/lib/os-release."""
    (tmp_path / "usr/lib").mkdir(parents=True)
    (tmp_path / "usr/lib/os-release").write_text("PRETTY_NAME='Alpine Linux v3.20'\n")
    assert node_info(root=tmp_path)["osImage"] == "Alpine Linux v3.20"


def test_unreadable_system_uuid_is_empty(tmp_path: Path) -> None:
    """A product_uuid the agent may not read (a directory here, root-only on hosts) gives ""."""
    (tmp_path / "sys/class/dmi/id/product_uuid").mkdir(parents=True)
    assert node_info(root=tmp_path)["systemUUID"] == ""


def test_node_info_with_nothing_under_root_is_still_complete(tmp_path: Path) -> None:
    """An empty root still gives every key, the unreadable ones as empty strings."""
    info = node_info(root=tmp_path)
    assert set(info) == INFO_KEYS
    assert info["osImage"] == info["machineID"] == info["bootID"] == ""


def test_node_stats_shape_is_stable_and_json_safe() -> None:
    """Two samples have the same keys and types, only finite numbers, floats to two decimals."""
    first: NodeStats = node_stats()
    second = node_stats()
    assert _shape(first) == _shape(second)
    assert set(first) == {"cpu", "memory", "disk", "net", "load", "pressure", "ready"}
    assert _shape(first)["memory"] == {"total": int, "used": int, "percent": float}
    assert _shape(first)["net"] == {"bytesSent": int, "bytesRecv": int}
    json.dumps(first, allow_nan=False)
    for leaf in _leaves(first):
        assert isinstance(leaf, int | float)
        if isinstance(leaf, float):
            assert math.isfinite(leaf)
            assert round(leaf, 2) == leaf


def test_node_stats_values_are_plausible() -> None:
    """Percentages are within 0 to 100, use is within capacity and there is at least one CPU."""
    stats = node_stats()
    assert stats["cpu"]["count"] >= 1
    for part in (stats["memory"], stats["disk"]):
        assert 0 <= part["percent"] <= 100
        assert 0 <= part["used"] <= part["total"]
    assert 0 <= stats["cpu"]["percent"] <= 100
    assert stats["ready"] is True
    assert stats["pressure"]["memory"] == (stats["memory"]["percent"] >= 90)


def test_node_stats_of_a_missing_filesystem_reports_zero(tmp_path: Path) -> None:
    """A root that does not exist gives a zero disk, not an error or a changed shape."""
    stats = node_stats(root=tmp_path / "absent")
    assert stats["disk"] == {"total": 0, "used": 0, "percent": 0.0}
