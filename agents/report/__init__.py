"""``cascade report``: a run directory's telemetry as PNG plots and one self-contained HTML page, no server needed.

- :mod:`agents.report.rundir`: reading a run directory (frame records, health, clocks, run metadata),
  malformed lines skipped and counted;
- :mod:`agents.report.series`: time bins, rates, rolling fractions and per-bin percentiles;
- :mod:`agents.report.aoi`: the Age of Information sawtooth, rebuilt exactly from the frame records;
- :mod:`agents.report.views`: one PNG per view (the Grafana dashboards' panels, with matplotlib's Agg);
- :mod:`agents.report.page`: the HTML page (summary table, run metadata, PNGs as data URIs);
- :mod:`agents.report.command`: :func:`build_report` and the ``cascade report`` command.
"""

from __future__ import annotations

from agents.report.command import Report, build_report, run_report

__all__ = ["Report", "build_report", "run_report"]
