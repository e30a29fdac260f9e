"""``cascade sweep``: run the real pipeline at every point of a grid; JSON, CSV and plots of what was measured.

Outputs, from ``--json FILE``: ``FILE`` (the sweep and every point), ``FILE`` with
``.jsonl`` (one line per point as soon as it is measured: what ``--resume`` reads),
``.csv`` (one row per point, nested figures flattened with ``_``), the run
directories under ``<FILE stem>-runs/`` (``--run-dir``) and the PNGs in ``--plots``.
Exit status: 0 when every point was measured, 1 when some failed (each failure is
recorded with its reason), 2 for a bad config, grid or path.
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import json
import logging
import math
import time
from pathlib import Path
from typing import Any

from tqdm import tqdm

from agents.config import load_config
from agents.demo import DEMO_CONFIG
from agents.errors import UserError
from agents.profiling.steadiness import SpeedMeter, unsteady
from agents.report.rundir import read_jsonl
from agents.signals import sigterm_exits
from agents.sweep.grid import Point, grid_context, grid_points, load_grid
from agents.sweep.plots import draw_plots
from agents.sweep.runner import SweepSession, SweepSettings

log = logging.getLogger(__name__)


#: Seconds of the host-speed meter (all cores) before the first point and after each one.
PROBE_S = 0.2


def flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested dicts as one level, keys joined with ``_`` (lists as JSON text)."""
    out: dict[str, Any] = {}
    for k, v in d.items():
        name = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(flatten(v, f"{name}_"))
        elif isinstance(v, list):
            out[name] = json.dumps(v)
        else:
            out[name] = v
    return out


def csv_row(result: dict[str, Any]) -> dict[str, Any]:
    """One CSV row: the point, its parameters as plain columns, then the figures."""
    head = {k: result.get(k) for k in ("point", "status", "reason")}
    rest = {k: v for k, v in result.items() if k not in ("point", "status", "reason", "params", "key", "label")}
    return {**head, **flatten(result["params"]), **flatten(rest)}


def write_csv(results: list[dict[str, Any]], path: Path) -> None:
    """Every result as a row; the columns are the union, in order of first appearance."""
    rows = [csv_row(r) for r in results]
    columns: list[str] = []
    for row in rows:
        columns += [c for c in row if c not in columns]
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)


def _fmt(v: Any, spec: str) -> str:
    return "-" if v is None else format(v, spec)


def format_table(results: list[dict[str, Any]]) -> str:
    """The measured points as a terminal (and Markdown) table."""
    head = (
        "| point | threshold | split | link | cpu | accuracy | offloaded | p50 ms | p95 ms | p99 ms "
        "| bytes/frame | AoI mean ms | timeouts | wall s | status |"
    )
    lines = [head, "|" + " --- |" * (head.count("|") - 1)]
    for r in results:
        p = r["params"]
        lat = r.get("latency_ms") or {}
        link = (
            "-"
            if p["rate_mbit"] is None and p["delay_ms"] is None
            else (
                f"{'∞' if p['rate_mbit'] is None else format(p['rate_mbit'], 'g')} Mbit/s "
                f"{p['delay_ms']:g}±{p['jitter_ms']:g} ms"
            )
        )
        acc = r.get("accuracy")
        off = r.get("offload_fraction")
        status = r["status"] if r["status"] == "ok" else f"failed: {r.get('reason')}"
        split = "frame" if p["split"] is None else f"{p['split']}/{p['codec']}"
        lines.append(
            f"| {r.get('point', '')} | {p['threshold']} | {split} "
            f"| {link} | {_fmt(p['cpu_quota'], 'g')} | {'-' if acc is None else f'{100 * acc:.2f}%'} "
            f"| {'-' if off is None else f'{100 * off:.1f}%'} | {_fmt(lat.get('p50'), '.2f')} "
            f"| {_fmt(lat.get('p95'), '.2f')} | {_fmt(lat.get('p99'), '.2f')} "
            f"| {_fmt(r.get('bytes_up_per_frame'), '.0f')} | {_fmt((r.get('aoi_ms') or {}).get('mean'), '.2f')} "
            f"| {_fmt(r.get('timeouts'), 'd')} | {_fmt(r.get('wall_s'), '.1f')} | {status} |"
        )
    return "\n".join(lines)


def _config_digest(cfg_text: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(cfg_text, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _outputs(args: argparse.Namespace) -> tuple[Path, Path, Path, Path]:
    """Every output path checked, and its directories made, before the first point: not after an hour of them."""
    out = Path(args.json)
    if out.suffix.lower() != ".json":
        raise UserError(f"--json {out}: expected a file name ending in .json (the .jsonl and .csv go beside it)")
    jsonl, csv_path = out.with_suffix(".jsonl"), out.with_suffix(".csv")
    for f in (out, jsonl, csv_path):
        if f.is_dir():
            raise UserError(f"--json {out}: {f} is a directory, not a file the sweep can write")
    root = Path(args.run_dir) if args.run_dir else out.with_name(f"{out.stem}-runs")
    dirs = [(out.parent, "--json"), *([(Path(args.plots), "--plots")] if args.plots else []), (root, "--run-dir")]
    for d, option in dirs:
        if d.exists() and not d.is_dir():
            raise UserError(f"{option} {d}: is a file; the sweep needs a directory there")
    for d, option in dirs:
        try:
            d.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise UserError(f"{option} {d}: cannot create the output directory ({exc.strerror})") from None
    return out, jsonl, csv_path, root.resolve()


def _done(jsonl: Path) -> dict[str, dict[str, Any]]:
    """The last result per point key in the results file."""
    rows, skipped = read_jsonl(jsonl)
    if skipped:
        log.warning("%s: %d line(s) that are not results skipped", jsonl, skipped)
    return {r["key"]: r for r in rows if isinstance(r.get("key"), str)}


def run_sweep(args: argparse.Namespace) -> int:
    """The ``cascade sweep`` command (SIGTERM stops its broker, link and agents, like Ctrl-C)."""
    with sigterm_exits():
        return _run_sweep(args)


def _run_sweep(args: argparse.Namespace) -> int:
    base = Path(args.config) if args.config else DEMO_CONFIG
    cfg = load_config(base)
    grid = load_grid(args.grid, grid_context(cfg))
    frames = args.frames if args.frames is not None else grid.frames
    if frames < 1:
        raise UserError(f"--frames {frames}: must be at least 1")
    if args.source and not Path(args.source).exists():
        raise UserError(f"--source {args.source}: no such file or directory")
    if not (math.isfinite(args.point_timeout) and args.point_timeout > 0):  # nan passes `<= 0`; inf never ends
        raise UserError(f"--point-timeout {args.point_timeout:g}: must be a positive number of seconds")
    points = grid_points(grid.grid, cfg.devices[0])
    out, jsonl, csv_path, root = _outputs(args)
    digest = _config_digest(
        {"config": cfg.model_dump(mode="json", exclude={"broker", "run_dir"}), "source": args.source}
    )
    keys = [p.key(frames, digest) for p in points]
    done = _done(jsonl) if args.resume else {}
    if not args.resume:
        jsonl.write_text("")
    todo = [i for i, k in enumerate(keys) if done.get(k, {}).get("status") != "ok"]
    print(
        f"sweep: {len(points)} point(s) × {frames} frames from {args.grid} on {base}; "
        f"{len(points) - len(todo)} already done, {len(todo)} to run; runs in {root}",
        flush=True,
    )
    t0 = time.monotonic()
    settings = SweepSettings(
        base=base.resolve(),
        root=root,
        frames=frames,
        source=str(Path(args.source).resolve()) if args.source else None,
        any_split=any(p.split is not None for p in points),
        point_timeout_s=args.point_timeout,
    )
    session = SweepSession(settings)
    # Between points only, never during one: how steadily the host ran this machine's cores.
    speed = SpeedMeter()
    speed.probe(PROBE_S)
    bar = tqdm(total=len(points), initial=len(points) - len(todo), unit="point", desc="sweep", disable=None)
    try:
        for i in todo:
            point = points[i]
            result = _run_one(session, point, i, keys[i], root, bar)
            done[keys[i]] = result
            with jsonl.open("a") as f:
                f.write(json.dumps(result) + "\n")
            speed.probe(PROBE_S)
            bar.update(1)
            if result["status"] != "ok":
                tqdm.write(f"point {result['point']} ({point.label()}) failed: {result['reason']}")
    finally:
        bar.close()
        session.close()
    # Named by the current grid's order: after the grid file changed, results measured under
    # an earlier grid carry the name of their place there (their run directories keep it).
    results = [{**done[k], "point": _name(i)} for i, k in enumerate(keys)]
    plots = draw_plots(results, Path(args.plots)) if args.plots else {}
    write_csv(results, csv_path)
    failed = [r for r in results if r["status"] != "ok"]
    summary = {
        "grid": str(args.grid),
        "config": str(base),
        "source": args.source,
        "frames": frames,
        "points": len(points),
        "ok": len(points) - len(failed),
        "failed": len(failed),
        "run_now": len(todo),
        "wall_s": round(time.monotonic() - t0, 3),
        "setup_s": round(session.setup_s, 3),
        "tier_starts": session.tier_starts,
        "link_starts": session.link_starts,
        "run_dir": str(root),
        "jsonl": str(jsonl),
        "csv": str(csv_path),
        "plots": plots,
        "host_speed": [core.to_json() for core in speed.cores()],
        "results": results,
    }
    out.write_text(json.dumps(summary, indent=2) + "\n")
    print(format_table(results))
    host = unsteady(speed.cores())
    if host:
        print(f"warning: {host}")
    for name, where in plots.items():
        if where.startswith("skipped"):
            print(f"plot {name} {where}")
    print(
        f"{len(todo)} point(s) run in {summary['wall_s']:.1f} s (setup {summary['setup_s']:.1f} s, "
        f"tiers started {session.tier_starts}×); {len(failed)} failed. JSON {out}, CSV {csv_path}, results {jsonl}"
        + (f", plots in {args.plots}" if args.plots else "")
    )
    return 1 if failed else 0


def _name(index: int) -> str:
    """A point's name: its place in the grid, p000 first."""
    return f"p{index:03d}"


def _run_one(session: SweepSession, point: Point, index: int, key: str, root: Path, bar: tqdm[Any]) -> dict[str, Any]:
    name = _name(index)
    bar.set_postfix_str(f"{name} {point.label()}", refresh=True)

    def progress(answered: int) -> None:
        bar.set_postfix_str(f"{name} {point.label()} {answered}/{session.s.frames}", refresh=True)

    result = session.run_point(point, root / f"{name}-{key[:8]}", progress)
    return {"point": name, "key": key, **result}
