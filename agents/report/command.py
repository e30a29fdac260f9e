"""``cascade report --run DIR``: every view as a PNG and one self-contained HTML page, from a run directory."""

from __future__ import annotations

import argparse
import json
import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from agents.errors import UserError
from agents.report import views
from agents.report.aoi import AoISeries, age_of_information
from agents.report.frames import FrameTable
from agents.report.page import render
from agents.report.rundir import RunData, load_run
from agents.report.series import Bins
from agents.summary import summarize

log = logging.getLogger(__name__)
HTML_NAME = "report.html"


@dataclass
class Report:
    """What :func:`build_report` wrote and the figures it shows."""

    run: RunData
    out_dir: Path
    html: Path
    views: list[views.View]
    summary: dict[str, Any]
    devices: dict[str, dict[str, Any]]
    aoi: dict[str, AoISeries]

    def as_json(self) -> dict[str, Any]:
        """JSON-ready: the summary, per device summaries and AoI, the files written and what was not drawn."""
        return {
            "run_dir": str(self.run.run_dir),
            "html": str(self.html),
            "pngs": {v.key: str(v.png) for v in self.views if v.png is not None},
            "not_drawn": {v.key: v.note for v in self.views if v.png is None},
            "summary": self.summary,
            "devices": self.devices,
            "aoi_ms": {d: {"mean": a.mean_ms, "peak": a.peak_ms, "answers": a.answers} for d, a in self.aoi.items()},
            "skipped_lines": self.run.skipped,
            "notes": self.run.notes,
        }


def _draw(key: str, title: str, draw: Callable[[Path], views.View], path: Path) -> views.View:
    """One view; a view that fails on odd data is stated in the page instead of ending the report."""
    path.unlink(missing_ok=True)  # never leave a previous report's PNG beside a view not drawn this time
    try:
        return draw(path)
    except (ValueError, TypeError, KeyError, IndexError, ArithmeticError) as exc:
        log.warning("view %s not drawn", key, exc_info=True)
        path.unlink(missing_ok=True)
        return views.View(key, title, views.CAPTIONS[key], note=f"could not be drawn ({type(exc).__name__}: {exc})")


def build_report(run_dir: Path, out_dir: Path | None = None) -> Report:
    """Read ``run_dir``, write one PNG per view and ``report.html`` to ``out_dir`` (default ``run_dir/report``)."""
    run = load_run(run_dir)
    out = out_dir if out_dir is not None else run_dir / "report"
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UserError(f"report directory {out} cannot be created ({exc.strerror or exc})") from exc
    t0 = run.start_ns()
    table = FrameTable.of(run.records, t0)
    times = np.concatenate([table.capture_s, table.answer_s])
    bins = Bins.covering(times[np.isfinite(times)])
    by_device = run.by_device()
    summary = summarize(run.records, run.frames())
    devices = {name: summarize(records, run.frames(name)) for name, records in by_device.items()}
    aoi = {name: age_of_information(records) for name, records in by_device.items()}
    drawn = [
        _draw("overview", "Overview", lambda p: views.overview(run, table, bins, p), out / "overview.png"),
        _draw("latency", "Latency", lambda p: views.latency(run, table, bins, p), out / "latency.png"),
        _draw("devices", "Devices", lambda p: views.devices(run, table, bins, p), out / "devices.png"),
        _draw("agents", "Agents", lambda p: views.agents(run, p, t0), out / "agents.png"),
        _draw("clocks", "Clocks", lambda p: views.clocks(run, p, t0), out / "clocks.png"),
        _draw("aoi", "Age of Information", lambda p: views.age_of_information(run, aoi, p, t0), out / "aoi.png"),
    ]
    html_path = out / HTML_NAME
    try:
        html_path.write_text(render(run, summary, devices, aoi, drawn, t0), encoding="utf-8")
    except OSError as exc:
        raise UserError(f"{html_path} cannot be written ({exc.strerror or exc})") from exc
    return Report(run, out, html_path, drawn, summary, devices, aoi)


def run_report(args: argparse.Namespace) -> int:
    """The ``cascade report`` command: build the report, print where each file went."""
    run_dir = Path(args.run)
    report = build_report(run_dir, Path(args.out) if args.out else None)
    run = report.run
    n_dev = len(report.devices)
    print(
        f"run {run_dir}: {len(run.records)} frame records from {n_dev} device{'s' if n_dev != 1 else ''}, "
        f"{len(run.agents)} agents; {run.skipped_total} malformed lines skipped"
    )
    width = max(len(v.key) for v in report.views)
    for v in report.views:
        where = str(v.png) if v.png is not None else f"not drawn: {v.note}"
        print(f"  {v.key:<{width}}  {where}")
    print(f"HTML report: {report.html}")
    if args.json:
        path = Path(args.json)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps(report.as_json(), indent=2) + "\n")
        except OSError as exc:
            raise UserError(f"{path} cannot be written ({exc.strerror or exc})") from exc
        print(f"JSON written: {path}")
    return 0
