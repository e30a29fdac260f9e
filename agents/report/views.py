"""The report's views, one PNG each: the panels of the Grafana dashboards, drawn with matplotlib's Agg canvas.

Each function takes what the run directory held and a PNG path and returns a :class:`View`:
the PNG written, or no PNG and a note saying what was missing. Figures are made with
:class:`matplotlib.figure.Figure` on an Agg canvas, never pyplot, so nothing global changes.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.colors import LogNorm
from matplotlib.figure import Figure
from matplotlib.ticker import FuncFormatter, MaxNLocator

from agents.report.aoi import AoISeries
from agents.report.frames import BREAKDOWN, FrameTable, ordered
from agents.report.rundir import RunData, flat_health
from agents.report.series import Bins, width_label

DPI = 110
TIME_AXIS = "time since run start (s)"
ROLLING_BINS = 5
QUANTILES = (50, 95, 99)
_QUANTILE_STYLE = {50: "-", 95: "--", 99: ":"}
_PATH_COLORS = {"device": "#4c72b0", "edge": "#dd8452", "cloud": "#55a868", "timeout": "#c44e52"}
_OTHER_COLORS = ("#8172b3", "#937860", "#da8bc3", "#8c8c8c", "#ccb974", "#64b5cd")
_PART_COLORS = ("#4c72b0", "#64b5cd", "#ccb974", "#dd8452", "#55a868", "#8172b3", "#c8c8c8")
AGENT_METRICS = (
    ("queue_depth", "queue depth (requests waiting)", "requests"),
    ("in_flight", "in flight (awaiting an answer)", "requests"),
    ("fps", "answers/s (last 5 s)", "frames/s"),
    ("cpu_percent", "CPU (100 = one core)", "%"),
    ("rss_mb", "resident memory", "MB"),
    ("mean_batch", "mean batch size", "requests"),
)

CAPTIONS = {
    "overview": "Answers per second by the tier that answered (by answer time); the share of answers that "
    "left the device and the accuracy over a rolling window; answers given locally at the deadline; "
    "messages each agent rejected, by kind.",
    "latency": "End-to-end latency (capture → answer, device clock) percentiles per bin of capture time, per "
    "path; the mean time of each stage per path (a stage a frame did not go through counts 0; "
    "'other' is the rest of the mean end-to-end time: waits between stages); the distribution "
    "of end-to-end latency over time.",
    "devices": "Each device's answers/s by tier, end-to-end latency percentiles and offload fraction and accuracy.",
    "agents": "Every agent's health samples (health.jsonl, every telemetry.health_s seconds and at stop).",
    "clocks": "Each agent's estimate of its peers' clocks (clocks.jsonl): the offset with an error bar "
    "of half the round trip (its bound), and the round trip of the sample kept.",
    "aoi": "Age of Information: at time t, t minus the capture time of the newest frame answered by t, "
    "rebuilt exactly from the records' capture and answer stamps (device clock); the dashed line is "
    "its time-average, the marker its peak; circles are the device's own aoi_ms health samples.",
}


@dataclass(frozen=True)
class View:
    """One section of the report: its PNG, or why there is none."""

    key: str
    title: str
    caption: str
    png: Path | None = None
    note: str | None = None


def color(name: str) -> str:
    """A stable colour per tier or path (device, edge, cloud, timeout; others by name)."""
    if name in _PATH_COLORS:
        return _PATH_COLORS[name]
    return _OTHER_COLORS[sum(map(ord, name)) % len(_OTHER_COLORS)]


def _figure(width: float, height: float) -> Figure:
    fig = Figure(figsize=(width, height), dpi=DPI, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _save(fig: Figure, path: Path) -> Path:
    fig.savefig(path, format="png")
    return path


def _empty(ax: Axes, text: str) -> None:
    ax.text(0.5, 0.5, text, ha="center", va="center", transform=ax.transAxes, color="#666666", wrap=True)
    ax.set_xticks([])
    ax.set_yticks([])


def _finite(*arrays: np.ndarray) -> np.ndarray:
    mask = np.ones(arrays[0].shape, bool)
    for a in arrays:
        mask &= np.isfinite(a)
    return mask


def _time_axis(ax: Axes, title: str, ylabel: str) -> None:
    ax.set_title(title, fontsize=10)
    ax.set_xlabel(TIME_AXIS)
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)


def _answers_by_tier(ax: Axes, table: FrameTable, bins: Bins) -> None:
    ok = _finite(table.answer_s)
    tiers = table.tiers()
    rates = [bins.rate(table.answer_s[ok & (table.tier == t)]) for t in tiers]
    ax.stackplot(bins.centers, *rates, labels=tiers, colors=[color(t) for t in tiers], step="mid", alpha=0.85)
    ax.legend(loc="upper right", fontsize=8, title="answered by", title_fontsize=8)
    _time_axis(ax, f"answers/s by tier ({width_label(bins.width)} bins)", "answers/s")


def _offload_accuracy(ax: Axes, table: FrameTable, bins: Bins) -> None:
    ok = _finite(table.answer_s)
    t = table.answer_s[ok]
    ax.plot(bins.centers, 100 * bins.rolling_mean(t, table.offloaded[ok], ROLLING_BINS), label="offloaded", lw=1.5)
    labelled = ok & np.isfinite(table.correct)
    if labelled.any():
        acc = bins.rolling_mean(table.answer_s[labelled], table.correct[labelled], ROLLING_BINS)
        ax.plot(bins.centers, 100 * acc, label="accuracy", lw=1.5)
    ax.set_ylim(-2, 102)
    ax.legend(loc="lower right", fontsize=8)
    window = width_label(bins.width * ROLLING_BINS)
    _time_axis(ax, f"offload fraction and accuracy (rolling {window})", "% of answers")


def _latency_quantiles(ax: Axes, table: FrameTable, bins: Bins, by_path: bool) -> None:
    ok = _finite(table.capture_s, table.e2e_ms)
    groups = ordered(set(table.path[ok].tolist())) if by_path else ["all"]
    for group in groups:
        mask = ok & (table.path == group) if by_path else ok
        q = bins.percentiles(table.capture_s[mask], table.e2e_ms[mask], QUANTILES)
        for row, quantile in zip(q, QUANTILES, strict=True):
            # Bins without frames of this path are left out and their neighbours joined.
            has = np.isfinite(row)
            style = _QUANTILE_STYLE[quantile]
            c = color(group) if by_path else "#333333"
            ax.plot(
                bins.centers[has], row[has], ls=style, marker=".", ms=3, color=c, lw=1.2, label=f"{group} p{quantile}"
            )
    values = table.e2e_ms[ok]
    if values.size and values.min() > 0 and values.max() / values.min() > 30:
        ax.set_yscale("log")
    if by_path:  # a full-width panel: the legend beside it, off the lines
        ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.005, 1.0))
    else:
        ax.legend(fontsize=7, loc="upper right")
    what = "per path (who answered)" if by_path else "all frames"
    _time_axis(ax, f"end-to-end latency p50/p95/p99, {what}, by capture time", "e2e latency (ms)")


def overview(run: RunData, table: FrameTable, bins: Bins, path: Path) -> View:
    """Answers/s by tier, offload fraction and accuracy, timeouts, rejected messages by kind."""
    fig = _figure(12, 7.5)
    (a, b), (c, d) = fig.subplots(2, 2)
    _answers_by_tier(a, table, bins)
    _offload_accuracy(b, table, bins)
    timeouts = table.answer_s[(table.outcome == "timeout") & _finite(table.answer_s)]
    c.bar(bins.edges[:-1], bins.counts(timeouts), width=bins.width, align="edge", color=color("timeout"))
    c.yaxis.set_major_locator(MaxNLocator(integer=True))
    if not timeouts.size:
        c.set_ylim(0, 1)
        c.text(0.5, 0.5, "no timeouts", ha="center", va="center", transform=c.transAxes, color="#666666")
    late = sum(agent.late_replies for agent in run.agents.values())
    _time_axis(
        c,
        f"timeouts per {width_label(bins.width)} (answered locally at the deadline): "
        f"{timeouts.size} in all; {late} late replies",
        "timeouts",
    )
    _rejected(d, run)
    fig.suptitle(f"Overview — {run.name}: {len(table)} answered frames", fontsize=12)
    return View("overview", "Overview", CAPTIONS["overview"], _save(fig, path))


def rejected_totals(run: RunData) -> dict[str, dict[str, int]]:
    """Per agent, messages rejected by kind (``rejected_<kind>`` counters; the last sample of each run, summed)."""
    out: dict[str, dict[str, int]] = {}
    for name, agent in run.agents.items():
        last: dict[str, dict[str, float]] = {}
        for row in agent.health:
            last[str(row.get("run", ""))] = flat_health(row)
        totals: dict[str, int] = defaultdict(int)
        for sample in last.values():
            for key, value in sample.items():
                if key.startswith("rejected_"):
                    totals[key.removeprefix("rejected_")] += int(value)
        if agent.health:
            out[name] = dict(totals)
    return out


def _rejected(ax: Axes, run: RunData) -> None:
    totals = rejected_totals(run)
    ax.set_title("messages rejected, by kind (health counters)", fontsize=10)
    if not totals:
        _empty(ax, "no health.jsonl in the run directory:\nrejected-message counts unknown")
        return
    kinds = sorted({k for t in totals.values() for k, v in t.items() if v})
    if not kinds:
        _empty(ax, f"no message rejected ({len(totals)} agents reporting)")
        return
    bottom = np.zeros(len(kinds))
    for i, (agent, t) in enumerate(sorted(totals.items())):
        values = np.array([t.get(k, 0) for k in kinds], dtype=float)
        if values.any():
            ax.bar(kinds, values, bottom=bottom, label=agent, color=_OTHER_COLORS[i % len(_OTHER_COLORS)])
            bottom += values
    ax.set_ylabel("messages")
    ax.yaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("kind")
    ax.tick_params(axis="x", labelrotation=30)
    ax.legend(fontsize=8, title="agent", title_fontsize=8)
    ax.grid(alpha=0.3, axis="y")


def breakdown(table: FrameTable) -> dict[str, dict[str, float]]:
    """Per path, the mean of each stage (absent = 0, so the stages add up) and ``other`` up to the mean e2e."""
    out: dict[str, dict[str, float]] = {}
    for group in ordered(set(table.path.tolist())):
        mask = table.path == group
        parts = {
            k.removesuffix("_ms"): max(0.0, float(np.nan_to_num(v[mask]).mean())) for k, v in table.durations.items()
        }
        e2e = table.e2e_ms[mask]
        mean_e2e = float(np.nanmean(e2e)) if np.isfinite(e2e).any() else float("nan")
        parts["other"] = max(0.0, mean_e2e - sum(parts.values())) if np.isfinite(mean_e2e) else 0.0
        out[group] = {**parts, "e2e": mean_e2e, "frames": float(mask.sum())}
    return out


def _breakdown_bars(ax: Axes, table: FrameTable) -> None:
    parts = breakdown(table)
    names = [*(k.removesuffix("_ms") for k in BREAKDOWN), "other"]
    groups = list(parts)
    left = np.zeros(len(groups))
    for name, c in zip(names, _PART_COLORS, strict=True):
        values = np.array([parts[g][name] for g in groups])
        if values.any():
            ax.barh(groups, values, left=left, color=c, label=name.replace("_", " "))
            left += values
    for i, g in enumerate(groups):
        ax.annotate(f" {parts[g]['e2e']:.1f} ms", (left[i], i), va="center", fontsize=8)
    ax.set_yticks(range(len(groups)), [f"{g} ({int(parts[g]['frames'])})" for g in groups])
    ax.invert_yaxis()
    ax.set_xlim(0, max(1e-3, float(left.max())) * 1.25)
    ax.set_xlabel("mean time per frame (ms)")
    ax.set_title("where the time goes: mean of each stage, by path (frames)", fontsize=10)
    ax.legend(fontsize=7, loc="upper right")  # the top bar is the device's own, the shortest as a rule
    ax.grid(alpha=0.3, axis="x")


def _heatmap(ax: Axes, table: FrameTable, bins: Bins) -> None:
    ok = _finite(table.capture_s, table.e2e_ms) & (table.e2e_ms > 0)
    ax.set_title("end-to-end latency distribution over time (frames per cell)", fontsize=10)
    if not ok.any():
        _empty(ax, "no positive e2e_ms values")
        return
    e2e = table.e2e_ms[ok]
    lo, hi = float(e2e.min()), float(e2e.max())
    if hi <= lo * 1.01:
        lo, hi = lo / 1.5, hi * 1.5
    ybins = np.geomspace(lo, hi, 41)
    counts, _, _ = np.histogram2d(table.capture_s[ok], e2e, bins=[bins.edges, ybins])
    cells = np.ma.masked_equal(counts.T, 0)  # empty cells stay white
    mesh = ax.pcolormesh(bins.edges, ybins, cells, norm=LogNorm(vmin=1, vmax=max(2.0, counts.max())), cmap="viridis")
    ax.set_yscale("log")
    bar = ax.figure.colorbar(mesh, ax=ax, label="frames")
    plain = FuncFormatter(lambda v, _pos: f"{v:g}")
    bar.ax.yaxis.set_major_formatter(plain)
    bar.ax.yaxis.set_minor_formatter(plain)
    _time_axis(ax, ax.get_title(), "e2e latency (ms, log)")


def latency(run: RunData, table: FrameTable, bins: Bins, path: Path) -> View:
    """E2e percentiles over time per path, the mean stage breakdown, and the latency heatmap."""
    if not np.isfinite(table.e2e_ms).any():
        return View(
            "latency", "Latency", CAPTIONS["latency"], note="no frame record has e2e_ms (capture and answer stamps)"
        )
    fig = _figure(12, 8)
    # Each row laid out on its own, so the top panel's legend does not squeeze the bottom row.
    rows = fig.subfigures(2, 1)
    assert isinstance(rows, np.ndarray)
    top, bottom = rows
    _latency_quantiles(top.subplots(), table, bins, by_path=True)
    left, right = bottom.subplots(1, 2)
    _breakdown_bars(left, table)
    _heatmap(right, table, bins)
    fig.suptitle(f"Latency — {run.name}", fontsize=12)
    return View("latency", "Latency", CAPTIONS["latency"], _save(fig, path))


def devices(run: RunData, table: FrameTable, bins: Bins, path: Path, limit: int = 16) -> View:
    """Per device: answers/s by tier, e2e percentiles, offload fraction and accuracy."""
    names = sorted(set(table.device.tolist()))
    shown = names[:limit]
    fig = _figure(15, 3.3 * len(shown) + 0.6)
    axes = fig.subplots(len(shown), 3, squeeze=False)
    for row, name in zip(axes, shown, strict=True):
        sub = table.subset(table.device == name)
        _answers_by_tier(row[0], sub, bins)
        _latency_quantiles(row[1], sub, bins, by_path=False)
        _offload_accuracy(row[2], sub, bins)
        for ax in row:
            ax.set_title(f"{name}: {ax.get_title()}", fontsize=9)
    more = f" (first {limit} of {len(names)})" if len(names) > limit else ""
    fig.suptitle(f"Devices — {len(names)} device(s){more}", fontsize=12)
    note = f"{len(names) - limit} more devices not drawn" if more else None
    return View("devices", "Devices", CAPTIONS["devices"], _save(fig, path), note)


def agents(run: RunData, path: Path, t0_ns: int) -> View:
    """Each agent's health over time: queue depth, in flight, fps, CPU, memory, mean batch."""
    with_health = {n: a for n, a in sorted(run.agents.items()) if a.health}
    if not with_health:
        return View(
            "agents", "Agents", CAPTIONS["agents"], note="no health.jsonl in the run directory: no agent health to show"
        )
    fig = _figure(13, 9.5)
    axes = fig.subplots(3, 2).ravel()
    for ax, (metric, title, unit) in zip(axes, AGENT_METRICS, strict=True):
        drawn = 0
        seen: list[float] = []
        for i, (name, agent) in enumerate(with_health.items()):
            points = [(row["time_ns"], flat_health(row).get(metric)) for row in agent.health]
            xs = [(t - t0_ns) / 1e9 for t, v in points if v is not None]
            ys = [v for _, v in points if v is not None]
            if xs:
                seen += ys
                label = f"{name} ({agent.role})"
                ax.plot(xs, ys, marker="o", ms=3, lw=1.2, label=label, color=_OTHER_COLORS[i % len(_OTHER_COLORS)])
                drawn += 1
        if drawn:
            _time_axis(ax, title, unit)
            ax.legend(fontsize=7)
            if min(seen) >= 0:  # counts, rates, memory: from zero (and 0..1 when all are zero)
                ax.set_ylim(0, ax.get_ylim()[1] if max(seen) > 0 else 1)
        else:
            ax.set_title(title, fontsize=10)
            _empty(ax, f"no agent reported {metric}")
    samples = sum(len(a.health) for a in with_health.values())
    fig.suptitle(f"Agents — health of {len(with_health)} agents ({samples} samples)", fontsize=12)
    return View("agents", "Agents", CAPTIONS["agents"], _save(fig, path))


def clocks(run: RunData, path: Path, t0_ns: int) -> View:
    """Each agent's clock offset to each peer (± half the round trip) and the round trip."""
    pairs: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for name, agent in sorted(run.agents.items()):
        for row in agent.clocks:
            pairs[f"{name}→{row['peer']}"].append(row)
    pairs = {k: v for k, v in pairs.items() if any(isinstance(r.get("offset_ms"), int | float) for r in v)}
    if not pairs:
        return View(
            "clocks",
            "Clocks",
            CAPTIONS["clocks"],
            note="no clock estimates (clocks.jsonl): no agent sent work to another tier, "
            "or the run ended before the first clock round",
        )
    fig = _figure(12, 4.2)
    off_ax, rtt_ax = fig.subplots(1, 2)
    for i, (pair, rows) in enumerate(sorted(pairs.items())):
        rows = [r for r in rows if isinstance(r.get("offset_ms"), int | float)]
        t = np.array([(r["time_ns"] - t0_ns) / 1e9 for r in rows])
        off = np.array([float(r["offset_ms"]) for r in rows])
        rtt = np.array([float(r.get("rtt_ms", np.nan)) for r in rows])
        c = _OTHER_COLORS[i % len(_OTHER_COLORS)]
        off_ax.errorbar(t, off, yerr=np.nan_to_num(rtt / 2), marker="o", ms=4, capsize=3, lw=1.2, color=c, label=pair)
        rtt_ax.plot(t, rtt, marker="o", ms=4, lw=1.2, color=c, label=pair)
    _time_axis(off_ax, "clock offset, peer − agent (bars: ± half the round trip)", "offset (ms)")
    _time_axis(rtt_ax, "round trip of the sample kept", "round trip (ms)")
    off_ax.axhline(0, color="#999999", lw=0.8)
    for ax in (off_ax, rtt_ax):
        ax.legend(fontsize=8, title="agent→peer", title_fontsize=8)
    fig.suptitle(f"Clocks — {len(pairs)} agent→peer pairs", fontsize=12)
    return View("clocks", "Clocks", CAPTIONS["clocks"], _save(fig, path))


def age_of_information(run: RunData, series: dict[str, AoISeries], path: Path, t0_ns: int, limit: int = 16) -> View:
    """Per device, the AoI sawtooth from the records, its time-average and peak, and the health samples' aoi_ms."""
    names = [n for n in sorted(series) if not series[n].empty]
    if not names:
        return View("aoi", "Age of Information", CAPTIONS["aoi"], note="no record has both capture and answer stamps")
    shown = names[:limit]
    fig = _figure(12, 3.0 * len(shown) + 0.6)
    axes = fig.subplots(len(shown), 1, squeeze=False)[:, 0]
    for ax, name in zip(axes, shown, strict=True):
        s = series[name]
        t = (np.array(s.t_ns, dtype=np.int64) - t0_ns) / 1e9
        ax.plot(t, s.aoi_ms, lw=1.0, color=color("device"), label="AoI from the records")
        if s.mean_ms is not None:
            ax.axhline(s.mean_ms, color="#555555", ls="--", lw=1, label=f"time-average {s.mean_ms:.2f} ms")
        if s.peak_ms is not None:
            k = int(np.argmax(s.aoi_ms))
            ax.plot([t[k]], [s.peak_ms], "v", color=color("timeout"), label=f"peak {s.peak_ms:.2f} ms")
        _health_aoi(ax, run, name, t0_ns)
        _time_axis(ax, f"{name}: Age of Information ({s.answers} answers)", "AoI (ms)")
        ax.set_ylim(bottom=0)
        ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.005, 1.0))
    more = f" (first {limit} of {len(names)})" if len(names) > limit else ""
    fig.suptitle(f"Age of Information — now − capture time of the newest answered frame{more}", fontsize=12)
    return View("aoi", "Age of Information", CAPTIONS["aoi"], _save(fig, path))


def _health_aoi(ax: Axes, run: RunData, device: str, t0_ns: int) -> None:
    agent = run.agents.get(device)
    points = [(r["time_ns"], flat_health(r).get("aoi_ms")) for r in agent.health] if agent else []
    got = [((t - t0_ns) / 1e9, v) for t, v in points if v is not None]
    if got:
        xs, ys = zip(*got, strict=True)
        ax.plot(xs, ys, "o", ms=4, mfc="none", color="#333333", label="aoi_ms in health samples")
