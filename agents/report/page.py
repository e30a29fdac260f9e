"""The report's HTML page: one self-contained file, PNGs embedded as ``data:`` URIs, no external assets."""

from __future__ import annotations

import base64
import datetime as dt
import html
import json
from collections.abc import Iterable, Sequence
from typing import Any

from agents.report.aoi import AoISeries
from agents.report.rundir import RunData
from agents.report.views import View

_STYLE = """
body { font-family: system-ui, sans-serif; margin: 1.5em auto; max-width: 1400px; color: #222; padding: 0 1em; }
h1 { font-size: 1.5em; } h2 { border-bottom: 1px solid #ccc; padding-bottom: .2em; margin-top: 1.6em; }
table { border-collapse: collapse; margin: .6em 0; font-size: .92em; }
th, td { border: 1px solid #ddd; padding: .25em .6em; text-align: left; vertical-align: top; }
th { background: #f3f3f3; } td.num { text-align: right; font-variant-numeric: tabular-nums; }
img { max-width: 100%; border: 1px solid #eee; } .caption { color: #555; max-width: 70em; }
.missing { color: #8a4b00; background: #fff6e5; padding: .5em .8em; border-left: 4px solid #e0a040; }
nav a { margin-right: 1em; } .meta { display: flex; flex-wrap: wrap; gap: 1.5em; } code { font-size: .95em; }
"""


def _ms(value: float | None) -> str:
    return "–" if value is None else f"{value:.3f}"


def _pct(value: float | None) -> str:
    return "n/a" if value is None else f"{100 * value:.2f}%"


def summary_cells(summary: dict[str, Any]) -> list[tuple[str, str, str]]:
    """The summary table's rows as (key, label, text); ``key`` names the :func:`agents.summary.summarize` figure."""
    n = summary["answered"]
    rows = [
        ("frames", "frames", str(summary["frames"])),
        ("answered", "answered", str(n)),
        ("lost", "lost (no answer)", str(summary["lost"])),
        ("duplicates", "duplicate answers", str(summary["duplicates"])),
        ("timeouts", "timeouts (answered locally at the deadline)", str(summary["timeouts"])),
        ("accuracy", "accuracy", _pct(summary["accuracy"])),
        ("offload_fraction", "offloaded", _pct(summary["offload_fraction"])),
    ]
    for tier, share in summary["by_tier"].items():
        rows.append((f"by_tier.{tier}", f"answered by {tier}", f"{round(share * n)} ({_pct(share)})"))
    for key, label in (("latency_ms", "e2e latency, all (ms)"), ("remote_latency_ms", "e2e latency, offloaded (ms)")):
        for q in ("p50", "p95", "p99"):
            rows.append((f"{key}.{q}", f"{label} {q}", _ms(summary[key][q])))
    rows.append(("bytes_up_per_offload", "bytes up per offload", f"{summary['bytes_up_per_offload']:.1f}"))
    return rows


def _table(header: Sequence[str], rows: Iterable[Sequence[str]], numeric_from: int = 1) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = []
    for row in rows:
        cells = "".join(
            f'<td class="num">{html.escape(c)}</td>' if i >= numeric_from else f"<td>{html.escape(c)}</td>"
            for i, c in enumerate(row)
        )
        body.append(f"<tr>{cells}</tr>")
    return f"<table><tr>{head}</tr>{''.join(body)}</table>"


def _when(ns: object) -> str:
    if not isinstance(ns, int):
        return "?"
    return dt.datetime.fromtimestamp(ns / 1e9, tz=dt.timezone.utc).isoformat(timespec="milliseconds")


def _summary_section(
    summary: dict[str, Any], devices: dict[str, dict[str, Any]], aoi: dict[str, AoISeries], run: RunData
) -> str:
    cells = "".join(
        f'<tr><th>{html.escape(label)}</th><td class="num" data-key="{key}">{html.escape(text)}</td></tr>'
        for key, label, text in summary_cells(summary)
    )
    rows = []
    for name, s in devices.items():
        a = aoi.get(name)
        lat = s["latency_ms"]
        rows.append(
            [
                name,
                str(s["frames"]),
                str(s["answered"]),
                str(s["lost"]),
                str(s["timeouts"]),
                _pct(s["accuracy"]),
                _pct(s["offload_fraction"]),
                _ms(lat["p50"]),
                _ms(lat["p95"]),
                _ms(lat["p99"]),
                _ms(a.mean_ms if a else None),
                _ms(a.peak_ms if a else None),
            ]
        )
    header = ["device", "frames", "answered", "lost", "timeouts", "accuracy", "offloaded"]
    header += ["e2e p50 ms", "e2e p95 ms", "e2e p99 ms", "AoI mean ms", "AoI peak ms"]
    if run.skipped:
        skipped = _table(["file", "lines skipped"], [(k, str(v)) for k, v in sorted(run.skipped.items())])
        input_note = f"<p>{run.skipped_total} malformed lines skipped (not JSON objects, or incomplete records):</p>"
        input_note += skipped
    else:
        input_note = "<p>No malformed line: every line of every JSON-lines file was read.</p>"
    notes = "".join(f'<p class="missing">{html.escape(n)}</p>' for n in run.notes)
    return (
        '<section id="summary"><h2>Summary</h2>'
        '<p class="caption">The figures of <code>agents.summary.summarize</code> (what <code>cascade demo</code> '
        "prints) over every frame record in the run directory, one answer per request id.</p>"
        f'<table class="summary">{cells}</table>'
        f"<h3>Per device</h3>{_table(header, rows)}"
        f"<h3>Input</h3>{input_note}{notes}</section>"
    )


def _metadata_section(run: RunData) -> str:
    blocks = []
    for name, agent in sorted(run.agents.items()):
        if agent.meta is None:
            body = '<p class="missing">no run.json</p>'
        else:
            rows = []
            for key, value in agent.meta.items():
                text = value if isinstance(value, str) else json.dumps(value)
                if key == "time_ns":
                    text = f"{value} ({_when(value)})"
                rows.append((key, text))
            body = _table(["field", "value"], rows, numeric_from=2)
        counts = f"health samples: {len(agent.health)}; clock estimates: {len(agent.clocks)}"
        blocks.append(
            f"<div><h3>{html.escape(name)} <small>({html.escape(agent.role)})</small></h3>"
            f"<p>{html.escape(counts)}</p>{body}</div>"
        )
    if not blocks:
        blocks.append('<p class="missing">No run.json, health.jsonl or clocks.jsonl in the run directory.</p>')
    return f'<section id="metadata"><h2>Run metadata</h2><div class="meta">{"".join(blocks)}</div></section>'


def _view_section(view: View) -> str:
    parts = [f'<section id="{view.key}"><h2>{html.escape(view.title)}</h2>']
    parts.append(f'<p class="caption">{html.escape(view.caption)}</p>')
    if view.png is not None:
        data = base64.b64encode(view.png.read_bytes()).decode("ascii")
        parts.append(f'<img src="data:image/png;base64,{data}" alt="{html.escape(view.title)}">')
    if view.note:
        prefix = "" if view.png is not None else "Not drawn: "
        parts.append(f'<p class="missing">{html.escape(prefix + view.note)}</p>')
    parts.append("</section>")
    return "".join(parts)


def render(
    run: RunData,
    summary: dict[str, Any],
    devices: dict[str, dict[str, Any]],
    aoi: dict[str, AoISeries],
    views: list[View],
    t0_ns: int,
) -> str:
    """The whole page: header, summary, run metadata, one section per view, the summary as embedded JSON."""
    title = f"cascade report — {run.name}"
    nav = "".join(
        f'<a href="#{key}">{html.escape(label)}</a>'
        for key, label in [("summary", "Summary"), ("metadata", "Run metadata"), *((v.key, v.title) for v in views)]
    )
    generated = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
    data = json.dumps({"summary": summary, "devices": devices}, sort_keys=True).replace("</", "<\\/")
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f"<title>{html.escape(title)}</title><style>{_STYLE}</style></head><body>"
        f"<h1>{html.escape(title)}</h1>"
        f"<p>Run directory <code>{html.escape(str(run.run_dir))}</code>; "
        f"time zero of the plots (t = 0 s) is {_when(t0_ns)}; generated {generated} by <code>cascade report</code>."
        f"</p><nav>{nav}</nav>"
        f"{_summary_section(summary, devices, aoi, run)}{_metadata_section(run)}"
        f"{''.join(_view_section(v) for v in views)}"
        f'<script type="application/json" id="summary-json">{data}</script>'
        "</body></html>\n"
    )
