"""Summaries of a run directory's frame records (the demo's table and JSON)."""

from __future__ import annotations

from typing import Any

import numpy as np


def summarize(records: list[dict[str, Any]], frames: int) -> dict[str, Any]:
    """Frames, answers, losses, accuracy, offload share, answers by tier and end-to-end latency percentiles."""
    by_id: dict[str, dict[str, Any]] = {}
    duplicates = 0
    for r in records:
        if r["request_id"] in by_id:
            duplicates += 1
        by_id[r["request_id"]] = r
    answered = list(by_id.values())
    n = len(answered)
    labelled = [r for r in answered if r.get("label") is not None]
    tiers = {"device": 0, "edge": 0, "cloud": 0}
    for r in answered:
        tiers[r["tier"]] = tiers.get(r["tier"], 0) + 1
    e2e = np.array([r["e2e_ms"] for r in answered if "e2e_ms" in r], dtype=float)
    remote = np.array([r["e2e_ms"] for r in answered if r["outcome"] == "remote" and "e2e_ms" in r], dtype=float)

    def pct(values: np.ndarray) -> dict[str, float | None]:
        if values.size == 0:
            return {"p50": None, "p95": None, "p99": None}
        return {f"p{q}": round(float(np.percentile(values, q)), 3) for q in (50, 95, 99)}

    return {
        "frames": frames,
        "answered": n,
        "lost": max(0, frames - n),
        "duplicates": duplicates,
        "timeouts": sum(1 for r in answered if r["outcome"] == "timeout"),
        "accuracy": round(sum(bool(r["correct"]) for r in labelled) / len(labelled), 6) if labelled else None,
        "offload_fraction": round(sum(1 for r in answered if r["outcome"] != "local") / n, 6) if n else 0.0,
        "by_tier": {k: round(v / n, 6) if n else 0.0 for k, v in tiers.items()},
        "latency_ms": pct(e2e),
        "remote_latency_ms": pct(remote),
        "bytes_up_per_offload": round(float(np.mean([r["bytes_up"] for r in answered if r["outcome"] != "local"])), 1)
        if any(r["outcome"] != "local" for r in answered)
        else 0.0,
    }


def format_summary(s: dict[str, Any]) -> str:
    """The summary as a terminal table."""
    acc = "n/a" if s["accuracy"] is None else f"{100 * s['accuracy']:.2f}%"
    lat = s["latency_ms"]
    rlat = s["remote_latency_ms"]

    def ms(v: float | None) -> str:
        return "-" if v is None else f"{v:.2f}"

    rows = [
        ("frames", str(s["frames"])),
        ("answered", str(s["answered"])),
        ("lost", str(s["lost"])),
        ("timeouts", str(s["timeouts"])),
        ("accuracy", acc),
        ("offloaded", f"{100 * s['offload_fraction']:.1f}%"),
        ("answered by", "  ".join(f"{k} {100 * v:.1f}%" for k, v in s["by_tier"].items())),
        ("latency ms (all)", f"p50 {ms(lat['p50'])}  p95 {ms(lat['p95'])}  p99 {ms(lat['p99'])}"),
        ("latency ms (offloaded)", f"p50 {ms(rlat['p50'])}  p95 {ms(rlat['p95'])}  p99 {ms(rlat['p99'])}"),
        ("bytes per offload", f"{s['bytes_up_per_offload']:.0f}"),
    ]
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"  {k:<{width}}  {v}" for k, v in rows)
