"""Side-by-side tables, the JSON file, its published summary and the plot of a benchmark run.

A run's full JSON goes to ``bench/results/`` (ignored by git: it can hold per-node samples). The
summary that a figure in bench/RESULTS.md or bench/FAULTS.md is traced to goes to
``bench/published/<same name>.json``, committed with the figures: the same document with every
list longer than ``MAX_SAMPLES`` items (bulk samples) replaced by its length.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

__all__ = ["MAX_SAMPLES", "PUBLISHED", "format_table", "plot", "publish", "summary", "write_json"]

PUBLISHED = Path(__file__).resolve().parent / "published"
MAX_SAMPLES = 20  # a longer list is samples, not a figure: the summary keeps only its length

Run = dict[str, Any]
Cell = float | str | None


def _connect(run: Run) -> Cell:
    if run.get("connect_s") is not None:
        return float(run["connect_s"])
    if run.get("connect_ok") is None:
        return None
    return f"timeout {run['connect_ok']}/{run['nodes']} in {run['connect_elapsed_s']:.0f}"


def _fanout(run: Run) -> Cell:
    if run.get("fanout_s") is not None:
        return float(run["fanout_s"])
    if run.get("fanout_received") is None:
        return None
    return f"timeout {run['fanout_received']}/{run['fanout_wanted']}"


def _get(key: str, scale: float = 1.0) -> Callable[[Run], Cell]:
    def get(run: Run) -> Cell:
        value = run.get(key)
        return None if value is None else float(value) * scale

    return get


def _cpu(phase: str) -> Callable[[Run], Cell]:
    def get(run: Run) -> Cell:
        value = run.get("cpu_s", {}).get(phase)
        return None if value is None else float(value)

    return get


def _loadgen(phase: str) -> Callable[[Run], Cell]:
    def get(run: Run) -> Cell:
        value = run.get("loadgen_cpu_s", {}).get(phase)
        return None if value is None else float(value)

    return get


def _idle(phase: str) -> Callable[[Run], Cell]:
    def get(run: Run) -> Cell:
        value = run.get("machine_idle_pct", {}).get(phase)
        return None if value is None else float(value)

    return get


def _other(phase: str) -> Callable[[Run], Cell]:
    """Kernel (loopback TCP), the main process, and anything else running on the machine."""

    def get(run: Run) -> Cell:
        busy = run.get("machine_busy_s", {}).get(phase)
        if busy is None:
            return None
        ours = run.get("cpu_s", {}).get(phase, 0.0) + run.get("loadgen_cpu_s", {}).get(phase, 0.0)
        return float(busy) - float(ours)

    return get


ROWS: list[tuple[str, Callable[[Run], Cell]]] = [
    ("connect all (s)", _connect),
    ("fan-out, 1 QoS1 msg per node (s)", _fanout),
    ("fan-out, all PUBACKs to publisher (s)", _get("fanout_acked_s")),
    ("fan-in, node PUBACKs (msg/s)", _get("fanin_msgs_per_s")),
    ("fan-in, delivered to service (msg/s)", _get("fanin_service_msgs_per_s")),
    ("fan-in, not at the service 2 s after (msgs)", _get("fanin_service_backlog")),
    ("RSS per idle connection (KiB)", _get("rss_per_conn_kib")),
    ("broker RSS, N idle (MiB)", _get("rss_idle_kib", 1 / 1024)),
    ("broker CPU, connect (s)", _cpu("connect")),
    ("broker CPU, fan-out (s)", _cpu("fanout")),
    ("broker CPU, fan-in (s)", _cpu("fanin")),
    ("broker CPU per fan-in msg (us)", _get("fanin_cpu_us_per_msg")),
    ("load generator CPU, connect (s)", _loadgen("connect")),
    ("machine CPU idle during connect (%)", _idle("connect")),
    ("CPU of everything else during connect (s)", _other("connect")),
]


def _fmt(cell: Cell) -> str:
    if cell is None:
        return "-"
    if isinstance(cell, str):
        return cell
    if cell >= 100:
        return f"{cell:,.0f}"
    if cell >= 10:
        return f"{cell:.1f}"
    return f"{cell:.3g}" if cell < 1 else f"{cell:.2f}"


def format_table(nodes: int, runs: Sequence[Run], names: Sequence[str]) -> str:
    """A Markdown table: metric | one column per broker | ratio of the first to the second."""
    by_name = {run["broker"]: run for run in runs if run["nodes"] == nodes}
    present = [n for n in names if n in by_name]
    header = ["metric", *present]
    if len(present) == 2:
        header.append(f"ratio {present[0]}/{present[1]}")
    lines = [
        f"N = {nodes:,}",
        "",
        "| " + " | ".join(header) + " |",
        "|" + "|".join("---" for _ in header) + "|",
    ]
    for label, get in ROWS:
        cells = [get(by_name[n]) for n in present]
        row = [label, *(_fmt(c) for c in cells)]
        if len(present) == 2:
            a, b = cells
            ok = isinstance(a, float) and isinstance(b, float) and b > 0
            row.append(f"{a / b:.2f}" if ok else "-")  # type: ignore[operator]
        lines.append("| " + " | ".join(row) + " |")
    notes = [
        f"{n}: {by_name[n]['sanity']}; connect retries {by_name[n].get('connect_retries', '-')}, "
        f"listen queue overflows {by_name[n].get('connect_listen_overflows', '-')}"
        for n in present
    ]
    return "\n".join([*lines, "", *notes])


def write_json(path: Path, document: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(document, indent=2, default=str) + "\n")


def summary(value: Any) -> Any:
    """``value`` with every list of more than ``MAX_SAMPLES`` items replaced by its length."""
    if isinstance(value, dict):
        return {key: summary(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        if len(value) > MAX_SAMPLES:
            return {"omitted_samples": len(value)}
        return [summary(item) for item in value]
    return value


def publish(document: dict[str, Any], name: str, directory: Path = PUBLISHED) -> Path:
    """Write the summary of a run's JSON ``name`` to ``directory/name``; returns the path.

    Commit it with the figures taken from it, and name ``bench/published/<name>`` next to them.
    """
    if "/" in name or not name.endswith(".json"):
        raise ValueError(f"{name!r} is not a run's JSON file name (<bench>-<UTC time>.json).")
    path = directory / name
    write_json(path, {**summary(document), "raw": f"bench/results/{name} (not in git)"})
    return path


def plot(path: Path, runs: Sequence[Run], names: Sequence[str]) -> str:
    """Render time vs N (connect, fan-out) and memory per connection; returns what happened."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        from matplotlib.ticker import FuncFormatter
    except ImportError:
        return "plot skipped: matplotlib is not installed (.venv/bin/pip install matplotlib)"
    # (title, key, lower bound key when the phase timed out, unit, target in multiples of Mosquitto)
    panels = [
        ("connect all N nodes", "connect_s", "connect_elapsed_s", "seconds", 3.0),
        ("fan-out: 1 QoS 1 message to each node", "fanout_s", "fanout_elapsed_s", "seconds", 3.0),
        ("broker RSS per idle connection", "rss_per_conn_kib", "", "KiB", 2.0),
    ]
    fig, axes = plt.subplots(1, len(panels), figsize=(15, 4.6))
    styles = {
        "ours": ("tab:red", "o", "pybaetyl (amqtt, hardened)"),
        "mosquitto": ("tab:blue", "s", "Mosquitto"),
    }
    for ax, (title, key, bound, unit, target) in zip(axes, panels, strict=True):
        for name in names:
            mine = [r for r in runs if r["broker"] == name]
            # Fan-out goes to the nodes that did connect: plot it at that count.
            points = sorted(
                (r.get("fanout_wanted", r["nodes"]) if key == "fanout_s" else r["nodes"], r[key])
                for r in mine
                if r.get(key) is not None
            )
            partial = sorted(
                (r["nodes"], r[bound])
                for r in mine
                if bound and r.get(key) is None and r.get(bound) is not None
            )
            color, marker, label = styles.get(name, ("gray", "^", name))
            if points:
                ax.plot(*zip(*points, strict=True), marker=marker, color=color, label=label)
            if partial:
                ax.plot(
                    *zip(*partial, strict=True),
                    marker=marker,
                    color=color,
                    linestyle="none",
                    markerfacecolor="none",
                    label=f"{label}: timed out (more than shown)",
                )
            for x, y, prefix in [(x, y, "") for x, y in points] + [(x, y, ">") for x, y in partial]:
                ax.annotate(
                    f"{prefix}{y:.3g}",
                    (x, y),
                    textcoords="offset points",
                    xytext=(4, 4),
                    fontsize=8,
                )
            if name == "mosquitto" and points:
                xs, ys = zip(*points, strict=True)
                ax.plot(
                    xs,
                    [y * target for y in ys],
                    linestyle="--",
                    color="gray",
                    linewidth=1,
                    label=f"target: {target:g}x Mosquitto",
                )
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("nodes (mTLS, a certificate each)")
        ax.set_ylabel(unit)
        ax.grid(True, which="both", alpha=0.3)
        ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _pos: f"{v:g}"))
        ax.yaxis.set_minor_formatter(FuncFormatter(lambda v, _pos: ""))
        ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _pos: f"{v:,.0f}"))
        ax.legend(fontsize=8, loc="upper left" if unit == "seconds" else "center right")
    fig.suptitle("pybaetyl broker vs Mosquitto on loopback (lower is better)")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return f"plot written to {path}"
