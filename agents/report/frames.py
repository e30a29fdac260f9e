"""Frame records as columns (numpy arrays) for the plots, one answer per request id as in the summary."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

# Durations stacked in the latency breakdown, in the order a frame lives them. cloud_compute_ms is
# part of cloud_hop_ms (edge forward → cloud end) and round_trip_ms spans several; neither is stacked.
BREAKDOWN = ("device_compute_ms", "uplink_ms", "edge_queue_ms", "edge_compute_ms", "cloud_hop_ms", "downlink_ms")


def answered(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One record per request id, the last one written (what :func:`agents.summary.summarize` counts)."""
    return list({r["request_id"]: r for r in records}.values())


def _stamp_s(r: dict[str, Any], name: str, t0_ns: int) -> float:
    value = r.get("stamps", {}).get(name)
    return (value - t0_ns) / 1e9 if isinstance(value, int | float) else np.nan


@dataclass
class FrameTable:
    """Columns of the answered frames: times in seconds since the run's time zero, NaN where absent."""

    capture_s: np.ndarray
    answer_s: np.ndarray
    device: np.ndarray
    tier: np.ndarray
    outcome: np.ndarray
    correct: np.ndarray  # 1.0, 0.0, NaN when the label is unknown
    e2e_ms: np.ndarray
    durations: dict[str, np.ndarray]

    @classmethod
    def of(cls, records: list[dict[str, Any]], t0_ns: int) -> FrameTable:
        """The table of ``records`` (deduplicated by request id) with times relative to ``t0_ns``."""
        rows = answered(records)

        def num(key: str) -> np.ndarray:
            return np.array([float(r[key]) if key in r else np.nan for r in rows], dtype=float)

        return cls(
            capture_s=np.array([_stamp_s(r, "capture", t0_ns) for r in rows], dtype=float),
            answer_s=np.array([_stamp_s(r, "answer", t0_ns) for r in rows], dtype=float),
            device=np.array([str(r.get("device") or "?") for r in rows], dtype=object),
            tier=np.array([r["tier"] for r in rows], dtype=object),
            outcome=np.array([r["outcome"] for r in rows], dtype=object),
            correct=np.array([np.nan if r.get("label") is None else float(bool(r["correct"])) for r in rows]),
            e2e_ms=num("e2e_ms"),
            durations={k: num(k) for k in BREAKDOWN},
        )

    def __len__(self) -> int:
        return int(self.tier.size)

    def subset(self, mask: np.ndarray) -> FrameTable:
        """The rows where ``mask`` holds."""
        return FrameTable(
            capture_s=self.capture_s[mask],
            answer_s=self.answer_s[mask],
            device=self.device[mask],
            tier=self.tier[mask],
            outcome=self.outcome[mask],
            correct=self.correct[mask],
            e2e_ms=self.e2e_ms[mask],
            durations={k: v[mask] for k, v in self.durations.items()},
        )

    @property
    def offloaded(self) -> np.ndarray:
        """1.0 where the frame left the device (outcome remote or timeout), as the summary counts it."""
        out: np.ndarray = (self.outcome != "local").astype(float)
        return out

    @property
    def path(self) -> np.ndarray:
        """Who answered, with answers at the deadline apart: ``device``, ``edge``, ``cloud``, ``timeout``."""
        return np.where(self.outcome == "timeout", "timeout", self.tier).astype(object)

    def tiers(self) -> list[str]:
        """The answering tiers present, device first, then edge, cloud and any other in name order."""
        return ordered(set(self.tier.tolist()))


def ordered(names: set[str]) -> list[str]:
    """Tier or path names in the order a frame meets them (unknown ones after, by name)."""
    known = ["device", "edge", "cloud", "timeout"]
    return [n for n in known if n in names] + sorted(names - set(known))
