"""``bench.dataplane`` runs end to end on a tiny load: a Mosquitto bridge between two brokers it
starts, device clients and a cloud subscriber in child processes, every one of them ended.

Figures are not asserted (no timed assertions; the benchmark is run by hand): only that every
message the node acknowledged reached the cloud, and that the run's JSON says so.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent.parent
MOSQUITTO = "/usr/sbin/mosquitto"  # bench.brokers.MOSQUITTO (not imported: it pulls the load
# generator into mypy's strict check of the tests)


@pytest.mark.skipif(not Path(MOSQUITTO).exists(), reason="needs Mosquitto (.ci/run installs it)")
def test_a_tiny_run_through_a_mosquitto_bridge_loses_nothing(tmp_path: Path) -> None:
    out = tmp_path / "out"
    # TMPDIR: the stacks' directories land under tmp_path, where the process guard looks.
    env = {**os.environ, "TMPDIR": str(tmp_path)}
    done = subprocess.run(
        [sys.executable, "-m", "bench.dataplane", "--stack", "mosquitto-unbounded",
         "--devices", "2", "--duration", "1", "--phases", "sustained", "--out-dir", str(out),
         "--connect-timeout", "20"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    assert "| sustained: received at the cloud (msg/s) |" in done.stdout
    [written] = out.glob("dataplane-*.json")
    document = json.loads(written.read_text())
    assert {"date", "command"} <= set(document)
    [result] = document["results"]
    assert "error" not in result, result["error"]
    sustained = result["sustained"]
    assert sustained["acked"] > 0
    assert sustained["received"] == sustained["acked"]
    assert sustained["lost"] == 0
    assert sustained["duplicates"] == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]  # its work directory removed
