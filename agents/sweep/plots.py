"""The sweep's PNG plots (matplotlib, Agg), from the points measured ok.

Each plot needs variation along its axis; without it the plot is skipped and the
reason returned instead of a path. Points that differ in more than the plotted
axis are drawn as separate series, labelled by what differs.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

from agents.sweep.metrics import BREAKDOWN

PARAMS = ("threshold", "split", "codec", "rate_mbit", "delay_ms", "jitter_ms", "loss", "cpu_quota")
_SHORT = {
    "threshold": "t",
    "split": "split",
    "codec": "codec",
    "rate_mbit": "Mbit/s",
    "delay_ms": "delay",
    "jitter_ms": "jitter",
    "loss": "loss",
    "cpu_quota": "cpu",
}


def _key(value: Any) -> str:
    return "none" if value is None else repr(value)


def varying(results: list[dict[str, Any]]) -> list[str]:
    """The parameters that take more than one value over ``results``.

    The codec counts only when the split points use more than one (frames have none), and
    the split label carries it then.
    """
    out = [p for p in PARAMS if len({_key(r["params"][p]) for r in results}) > 1]
    codecs = {r["params"]["codec"] for r in results if r["params"]["codec"] is not None}
    return [p for p in out if p != "codec" or len(codecs) > 1]


def short_label(params: dict[str, Any], names: list[str]) -> str:
    """``split=2/int8 cpu=0.5``-style text of ``names`` (``frame`` for split None)."""
    parts = []
    for n in names:
        v = params[n]
        if n == "split":
            codec = f"/{params['codec']}" if "codec" in names else ""
            parts.append("frame" if v is None else f"split={v}{codec}")
        elif n == "codec":
            if "split" not in names:
                parts.append(f"codec={v or '-'}")
        elif n == "rate_mbit":
            parts.append("no link" if v is None else f"{v:g} Mbit/s")
        else:
            parts.append(f"{_SHORT[n]}={'-' if v is None else v}")
    return " ".join(parts)


def _series(results: list[dict[str, Any]], x: str, exclude: tuple[str, ...] = ()) -> dict[str, list[dict[str, Any]]]:
    """Points grouped by every varying parameter except ``x`` (and ``exclude``), each group sorted along ``x``."""
    others = [p for p in varying(results) if p != x and p not in exclude]
    groups: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for r in results:
        groups[short_label(r["params"], others) or "all"].append(r)
    for g in groups.values():
        g.sort(key=lambda r: float(r["params"][x]))
    return dict(groups)


def _save(fig: Any, path: Path) -> str:
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    import matplotlib.pyplot as plt

    plt.close(fig)
    return str(path)


def _scalar(results: list[dict[str, Any]], name: str) -> list[dict[str, Any]]:
    return [
        r for r in results if isinstance(r["params"][name], int | float) and not isinstance(r["params"][name], bool)
    ]


def _latency_vs_threshold(results: list[dict[str, Any]], path: Path) -> str:
    import matplotlib.pyplot as plt

    pts = _scalar(results, "threshold")
    if len({r["params"]["threshold"] for r in pts}) < 2:
        return "skipped: the grid has one threshold"
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for i, (name, group) in enumerate(_series(pts, "threshold").items()):
        xs = [r["params"]["threshold"] for r in group]
        color = f"C{i}"
        for q, style in (("p50", "-"), ("p95", "--"), ("p99", ":")):
            ys = [r["latency_ms"][q] for r in group]
            ax.plot(xs, ys, style, marker="o", color=color, label=f"{name} {q}")
        ax.plot(xs, [r["latency_ms"]["mean"] for r in group], "-.", marker="x", color=color, label=f"{name} mean")
    ax.set_yscale("log")
    ax.set_xlabel("device exit threshold")
    ax.set_ylabel("end-to-end latency, ms (log)")
    ax.set_title("Latency against threshold")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7)
    return _save(fig, path)


def _accuracy_vs_latency(results: list[dict[str, Any]], path: Path) -> str:
    import matplotlib.pyplot as plt

    results = [r for r in results if r["accuracy"] is not None]
    if len(results) < 2:
        return "skipped: fewer than two points with labelled frames"
    fig, axes = plt.subplots(1, 2, figsize=(10, 4.2), sharey=True)
    if len(_scalar(results, "threshold")) == len(results):
        groups = _series(results, "threshold")  # one line per setting, along the threshold
        annotate = ["threshold"]
    else:
        groups = {"all": sorted(results, key=lambda r: float(r["latency_ms"]["mean"] or 0.0))}
        annotate = varying(results)
    for ax, (q, title) in zip(axes, (("mean", "mean"), ("p95", "95th percentile")), strict=True):
        for i, (name, group) in enumerate(groups.items()):
            xs = [r["latency_ms"][q] for r in group]
            ys = [100 * r["accuracy"] for r in group]
            ax.plot(xs, ys, "-o", color=f"C{i}", label=name)
            for r, x, y in zip(group, xs, ys, strict=True):
                ax.annotate(
                    short_label(r["params"], annotate), (x, y), textcoords="offset points", xytext=(4, 4), fontsize=7
                )
        ax.set_xlabel(f"end-to-end latency, {title}, ms")
        ax.grid(True, alpha=0.3)
    axes[0].set_ylabel("accuracy, %")
    axes[0].legend(fontsize=7)
    fig.suptitle("Accuracy against latency")
    return _save(fig, path)


def _offload_vs_threshold(results: list[dict[str, Any]], path: Path) -> str:
    import matplotlib.pyplot as plt

    pts = _scalar(results, "threshold")
    if len({r["params"]["threshold"] for r in pts}) < 2:
        return "skipped: the grid has one threshold"
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for i, (name, group) in enumerate(_series(pts, "threshold").items()):
        xs = [r["params"]["threshold"] for r in group]
        ax.plot(xs, [100 * r["offload_fraction"] for r in group], "-o", color=f"C{i}", label=f"{name} offloaded")
        cloud = [100 * r["by_tier"].get("cloud", 0.0) for r in group]
        if any(cloud):
            ax.plot(xs, cloud, "--s", color=f"C{i}", label=f"{name} answered by the cloud")
    ax.set_xlabel("device exit threshold")
    ax.set_ylabel("frames, %")
    ax.set_title("Offload fraction against threshold")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=7)
    return _save(fig, path)


def _latency_vs_bandwidth(results: list[dict[str, Any]], path: Path) -> str:
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FormatStrFormatter, NullFormatter

    pts = _scalar(results, "rate_mbit")
    if len({r["params"]["rate_mbit"] for r in pts}) < 2:
        return "skipped: the grid has fewer than two link rates"
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for i, (name, group) in enumerate(_series(pts, "rate_mbit").items()):
        xs = [r["params"]["rate_mbit"] for r in group]
        ax.plot(xs, [r["latency_ms"]["mean"] for r in group], "-o", color=f"C{i}", label=f"{name} mean")
        ax.plot(xs, [r["latency_ms"]["p95"] for r in group], "--o", color=f"C{i}", label=f"{name} p95")
    ax.set_xscale("log")
    ax.set_xticks(sorted({float(r["params"]["rate_mbit"]) for r in pts}))
    ax.xaxis.set_major_formatter(FormatStrFormatter("%g"))
    ax.xaxis.set_minor_formatter(NullFormatter())
    ax.set_xlabel("link rate, Mbit/s (log)")
    ax.set_ylabel("end-to-end latency, ms")
    ax.set_title("Latency against bandwidth, per split point")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7)
    return _save(fig, path)


def _breakdown(results: list[dict[str, Any]], path: Path) -> str:
    import matplotlib.pyplot as plt

    labels = varying(results)
    names = [short_label(r["params"], labels) or r.get("point", "") for r in results]
    parts = [*BREAKDOWN, "other"]
    fig, ax = plt.subplots(figsize=(max(6.0, 0.8 * len(results) + 2), 4.8))
    bottom = [0.0] * len(results)
    for i, part in enumerate(parts):
        values = [float(r["breakdown_ms"].get(part) or 0.0) for r in results]
        label = "other (waiting, deadlines)" if part == "other" else part.replace("_", " ")
        ax.bar(range(len(results)), values, bottom=bottom, color=f"C{i}", label=label)
        bottom = [b + v for b, v in zip(bottom, values, strict=True)]
    ax.set_xticks(range(len(results)), names, rotation=30, ha="right", fontsize=8)
    ax.set_ylabel("mean per frame, ms")
    ax.set_title("Latency breakdown", fontsize=11)
    fig.text(0.01, 0.01, "mean over all frames; a stage a frame did not go through counts 0", fontsize=7)
    ax.legend(fontsize=7)
    ax.grid(True, axis="y", alpha=0.3)
    return _save(fig, path)


PLOTS: dict[str, Callable[[list[dict[str, Any]], Path], str]] = {
    "latency_vs_threshold": _latency_vs_threshold,
    "accuracy_vs_latency": _accuracy_vs_latency,
    "offload_vs_threshold": _offload_vs_threshold,
    "latency_vs_bandwidth": _latency_vs_bandwidth,
    "latency_breakdown": _breakdown,
}


def draw_plots(results: list[dict[str, Any]], out: Path) -> dict[str, str]:
    """Every plot of the points measured ok into ``out``: name → PNG path, or ``skipped: why``."""
    import matplotlib

    matplotlib.use("Agg")
    ok = [r for r in results if r.get("status") == "ok"]
    out.mkdir(parents=True, exist_ok=True)
    if not ok:
        return dict.fromkeys(PLOTS, "skipped: no point was measured")
    return {name: draw(ok, out / f"{name}.png") for name, draw in PLOTS.items()}
