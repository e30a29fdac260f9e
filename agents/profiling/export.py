"""A profile as InfluxDB points: measurement ``profile``, one point per stage and batch, plus the whole model.

Tags stay few and low-cardinality (node, model, stage, batch, threads); everything else
is a field. The exit head after a stage rides on that stage's point (``exit_*`` fields).
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

from agents.errors import UserError
from agents.telemetry.influx import InfluxSink, InfluxTarget, create_database
from agents.telemetry.lineproto import point

MEASUREMENT = "profile"


def profile_points(profile: dict[str, Any], node_name: str) -> list[str]:
    """Line protocol for a profile (all points stamped with the profile's ``time_ns``)."""
    t = int(profile["time_ns"])
    model = str(profile["model"]["name"])
    threads = str(profile["node"]["torch_threads"])
    common: dict[str, bool | int | float | str | None] = {
        "cpu_model": str(profile["node"]["cpu_model"]),
        "torch_version": str(profile["node"]["torch_version"]),
        "trained": bool(profile["model"]["trained"]),
        "reps": int(profile["settings"]["reps"]),
    }
    lines: list[str] = []

    def add(stage: str, batch: int, fields: dict[str, bool | int | float | str | None]) -> None:
        tags = {"node": node_name, "model": model, "stage": stage, "batch": str(batch), "threads": threads}
        line = point(MEASUREMENT, tags, {**fields, **common}, t)
        if line is not None:
            lines.append(line)

    for stage in profile["stages"]:
        head = stage.get("exit")
        head_by_batch = {int(e["batch"]): e for e in head["latency"]} if head else {}
        for entry in stage["latency"]:
            batch = int(entry["batch"])
            fields: dict[str, bool | int | float | str | None] = {
                "median_ms": float(entry["median_ms"]),
                "p95_ms": float(entry["p95_ms"]),
                "macs": int(stage["macs"]),
                "output_bytes": int(stage["output_bytes"]),
            }
            if "in_pass_median_ms" in entry:
                fields["in_pass_median_ms"] = float(entry["in_pass_median_ms"])
            if batch in head_by_batch:
                head_entry = head_by_batch[batch]
                fields |= {
                    "exit_index": int(head["index"]),
                    "exit_median_ms": float(head_entry["median_ms"]),
                    "exit_p95_ms": float(head_entry["p95_ms"]),
                    "exit_macs": int(head["macs"]),
                }
                if "in_pass_median_ms" in head_entry:
                    fields["exit_in_pass_median_ms"] = float(head_entry["in_pass_median_ms"])
            add(str(stage["stage"]), batch, fields)
    for entry in profile["whole_model"]:
        fields = {"median_ms": float(entry["median_ms"]), "p95_ms": float(entry["p95_ms"])}
        if "in_pass_median_ms" in entry:
            fields["in_pass_median_ms"] = float(entry["in_pass_median_ms"])
        add("all", int(entry["batch"]), fields)
    return lines


def write_points(url: str, database: str, lines: list[str], timeout_s: float = 10.0) -> int:
    """Create ``database`` if needed and write ``lines`` to the InfluxDB (v1 API) at ``url``; points written.

    Raises :class:`UserError` when the database cannot be reached or refuses the points.
    """
    target = InfluxTarget(url, database)
    try:
        create_database(target)
    except (OSError, ValueError) as exc:
        raise UserError(
            f"InfluxDB at {url}: cannot create database {database!r} ({exc}); is influxd running?"
        ) from None
    with tempfile.TemporaryDirectory(prefix="cascade-profile-spool-") as spool:
        sink = InfluxSink(target, Path(spool), flush_s=0.1, max_backoff_s=1.0)
        sink.submit(lines)
        sink.close(timeout_s)
        if sink.written < len(lines):
            raise UserError(
                f"InfluxDB at {url}: wrote {sink.written} of {len(lines)} profile points "
                f"({sink.dropped} refused, {sink.errors} failed attempts); the JSON file has them all"
            )
    return sink.written
