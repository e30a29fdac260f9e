"""One sweep point's figures from its device's frame records.

The shared part (answered, lost, timeouts, accuracy, offload share, latency
percentiles, bytes per offload) is :func:`agents.summary.summarize`; added here are the
latency per path, bytes per frame, Age of Information
(:func:`agents.report.aoi.age_of_information`) and the mean latency breakdown.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from agents.report.aoi import age_of_information
from agents.summary import summarize

# Components of a frame's latency, in the order it lives them (docs/telemetry.md).
BREAKDOWN = ("device_compute", "uplink", "edge_queue", "edge_compute", "cloud_hop", "downlink")
PATHS = ("device", "edge", "cloud", "timeout")


def _pct(values: list[float]) -> dict[str, float | None]:
    if not values:
        return {"p50": None, "p95": None, "p99": None, "mean": None}
    a = np.asarray(values, dtype=float)
    out: dict[str, float | None] = {f"p{q}": round(float(np.percentile(a, q)), 3) for q in (50, 95, 99)}
    out["mean"] = round(float(a.mean()), 3)
    return out


def _mean(values: list[float]) -> float | None:
    return round(float(np.mean(values)), 3) if values else None


def point_metrics(records: list[dict[str, Any]], frames: int) -> dict[str, Any]:
    """Everything a sweep point reports about its frames.

    Paths: ``device`` (answered locally at a confident exit), ``edge`` and ``cloud`` (the
    tier that answered), ``timeout`` (answered locally at the deadline). The breakdown
    is the mean per answered frame of each component, a component a frame did not go
    through counting as 0, so the bars stack to about the mean end-to-end latency;
    ``other`` is what the components leave of that mean (waiting on the device, answer
    handling), never below 0.
    """
    by_id = {r["request_id"]: r for r in records}
    answered = list(by_id.values())
    s = summarize(records, frames)
    paths: dict[str, list[float]] = {p: [] for p in PATHS}
    for r in answered:
        path = "timeout" if r["outcome"] == "timeout" else str(r["tier"])
        if "e2e_ms" in r:
            paths.setdefault(path, []).append(float(r["e2e_ms"]))
    e2e = [float(r["e2e_ms"]) for r in answered if "e2e_ms" in r]
    n = len(answered)
    breakdown: dict[str, float | None] = {
        c: round(sum(float(r.get(f"{c}_ms", 0.0)) for r in answered) / n, 3) if n else None for c in BREAKDOWN
    }
    mean_e2e = _mean(e2e)
    if mean_e2e is not None:
        breakdown["other"] = round(max(0.0, mean_e2e - sum(v or 0.0 for v in breakdown.values())), 3)
    aoi = age_of_information(answered)
    offloaded = [r for r in answered if r["outcome"] != "local"]
    captures = [r["stamps"]["capture"] for r in answered if isinstance(r.get("stamps", {}).get("capture"), int)]
    answers = [r["stamps"]["answer"] for r in answered if isinstance(r.get("stamps", {}).get("answer"), int)]
    return {
        "frames": frames,
        "answered": s["answered"],
        "lost": s["lost"],
        "duplicates": s["duplicates"],
        "timeouts": s["timeouts"],
        "accuracy": s["accuracy"],
        "offload_fraction": s["offload_fraction"],
        "by_tier": s["by_tier"],
        "latency_ms": _pct(e2e),
        "latency_by_path_ms": {p: {"n": len(v), **_pct(v)} for p, v in paths.items()},
        "bytes_up_per_frame": round(sum(int(r["bytes_up"]) for r in answered) / n, 1) if n else None,
        "bytes_up_per_offload": round(sum(int(r["bytes_up"]) for r in offloaded) / len(offloaded), 1)
        if offloaded
        else None,
        "aoi_ms": {
            "mean": None if aoi.mean_ms is None else round(aoi.mean_ms, 3),
            "peak": None if aoi.peak_ms is None else round(aoi.peak_ms, 3),
        },
        "breakdown_ms": breakdown,
        # First capture to last answer: the time the frames took, without the processes' start.
        "run_s": round((max(answers) - min(captures)) / 1e9, 3) if captures and answers else None,
    }
