"""One record per frame: every timestamp of its life and its outcome, written to the run directory.

Records go to ``frames.jsonl`` (one JSON object per frame) and ``frames.lp``
(InfluxDB line protocol), so nothing depends on a server being there; an InfluxDB
sink only has to ship the same lines.
"""

from __future__ import annotations

import json
import re
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

# Stamp names in the order a frame lives them (wall-clock ns, time.time_ns()).
STAMP_ORDER = (
    "capture",
    "device_start",
    "device_end",
    "publish",
    "edge_receive",
    "edge_queue_exit",
    "edge_start",
    "edge_end",
    "edge_forward",
    "cloud_receive",
    "cloud_queue_exit",
    "cloud_start",
    "cloud_end",
    "reply_publish",
    "device_receive",
    "answer",
)


@dataclass
class FrameRecord:
    """What happened to one frame, from capture to the device's answer."""

    deployment: str
    run: str
    device: str
    frame: int
    request_id: str
    label: int | None
    prediction: int
    confidence: float
    tier: str
    exit: int
    model: str
    outcome: str  # local | remote | timeout
    bytes_up: int = 0
    bytes_down: int = 0
    split: int | None = None
    late_reply: bool = False
    stamps: dict[str, int] = field(default_factory=dict)

    @property
    def correct(self) -> bool | None:
        """Whether the answer matches the label, when the label is known."""
        return None if self.label is None else self.prediction == self.label

    def durations_ms(self) -> dict[str, float]:
        """Derived durations: end to end, device compute, and each remote hop that happened."""
        s = self.stamps
        out: dict[str, float] = {}

        def span(name: str, a: str, b: str) -> None:
            if a in s and b in s:
                out[name] = (s[b] - s[a]) / 1e6

        span("e2e_ms", "capture", "answer")
        span("device_compute_ms", "device_start", "device_end")
        span("uplink_ms", "publish", "edge_receive")
        span("edge_queue_ms", "edge_receive", "edge_queue_exit")
        span("edge_compute_ms", "edge_start", "edge_end")
        span("cloud_hop_ms", "edge_forward", "cloud_end")
        span("cloud_compute_ms", "cloud_start", "cloud_end")
        span("downlink_ms", "reply_publish", "device_receive")
        span("round_trip_ms", "publish", "device_receive")
        return out

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict with the derived fields."""
        # A shallow copy of the fields: dataclasses.asdict deep-copies and costs 0.2 ms a frame.
        d = dict(self.__dict__)
        d["stamps"] = dict(self.stamps)
        d["correct"] = self.correct
        d.update(self.durations_ms())
        return d

    def to_line_protocol(self, measurement: str = "frames") -> str:
        """One InfluxDB line: low-cardinality tags, ns timestamps as integer fields, durations in ms."""
        tags = {
            "deployment": self.deployment,
            "run": self.run,
            "device": self.device,
            "tier": self.tier,
            "model": self.model,
            "exit": str(self.exit),
            "outcome": self.outcome,
        }
        if self.split is not None:
            tags["split"] = str(self.split)
        fields: dict[str, Any] = {
            "frame": self.frame,
            "prediction": self.prediction,
            "confidence": float(self.confidence),
            "bytes_up": self.bytes_up,
            "bytes_down": self.bytes_down,
            "late_reply": self.late_reply,
        }
        if self.label is not None:
            fields["label"] = self.label
            fields["correct"] = bool(self.correct)
        fields.update({f"{k}_ns": v for k, v in self.stamps.items()})
        fields.update(self.durations_ms())
        tag_text = ",".join(f"{_escape_key(k)}={_escape_key(v)}" for k, v in tags.items() if v != "")
        field_text = ",".join(f"{_escape_key(k)}={_field(v)}" for k, v in fields.items())
        ts = self.stamps.get("capture", 0)
        return f"{_escape_key(measurement)},{tag_text} {field_text} {ts}"


_NEEDS_ESCAPE = re.compile(r"[\\, =]")


def _escape_key(text: str) -> str:
    if not _NEEDS_ESCAPE.search(text):
        return text
    return text.replace("\\", "\\\\").replace(",", "\\,").replace("=", "\\=").replace(" ", "\\ ")


def _field(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return f"{value}i"
    if isinstance(value, float):
        return repr(value)
    return '"' + str(value).replace("\\", "\\\\").replace('"', '\\"') + '"'


class RecordWriter:
    """Appends records to ``frames.jsonl`` and ``frames.lp`` in a run directory; thread-safe."""

    def __init__(self, run_dir: Path) -> None:
        run_dir.mkdir(parents=True, exist_ok=True)
        self.run_dir = run_dir
        self._lock = threading.Lock()
        self._jsonl: TextIO = (run_dir / "frames.jsonl").open("a", buffering=1 << 16)
        self._lp: TextIO = (run_dir / "frames.lp").open("a", buffering=1 << 16)
        self._late: TextIO | None = None
        self.count = 0

    def write(self, record: FrameRecord) -> None:
        """Append one record (buffered; :meth:`flush` or :meth:`close` makes it durable)."""
        with self._lock:
            self._jsonl.write(json.dumps(record.to_dict(), separators=(",", ":")) + "\n")
            self._lp.write(record.to_line_protocol() + "\n")
            self.count += 1

    def write_late(self, request_id: str, tier: str, prediction: int, after_deadline_ms: float) -> None:
        """Note a reply that came after its frame was answered locally (the answer stays as it was)."""
        line = {
            "request_id": request_id,
            "tier": tier,
            "prediction": prediction,
            "after_deadline_ms": round(after_deadline_ms, 3),
        }
        with self._lock:
            if self._late is None:
                self._late = (self.run_dir / "late_replies.jsonl").open("a")
            self._late.write(json.dumps(line) + "\n")

    def flush(self) -> None:
        """Push buffered records to the files."""
        with self._lock:
            self._jsonl.flush()
            self._lp.flush()

    def close(self) -> None:
        """Flush and close both files."""
        with self._lock:
            self._jsonl.close()
            self._lp.close()
            if self._late is not None:
                self._late.close()


def read_records(run_dir: Path) -> list[dict[str, Any]]:
    """Every record of a run directory's ``frames.jsonl`` (files of several devices are all read)."""
    out: list[dict[str, Any]] = []
    for path in sorted(run_dir.rglob("frames.jsonl")):
        with path.open() as f:
            out.extend(json.loads(line) for line in f if line.strip())
    return out
