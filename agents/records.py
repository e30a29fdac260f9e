"""One record per frame: every timestamp of its life and its outcome, written to the run directory.

Records go to ``frames.jsonl`` (one JSON object per frame) and ``frames.lp``
(InfluxDB line protocol), so nothing depends on a server being there; an InfluxDB
sink only has to ship the same lines.
"""

from __future__ import annotations

import functools
import json
import logging
import math
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO, Protocol

import orjson

from agents.telemetry.lineproto import escape_key

log = logging.getLogger(__name__)

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
    uplink_mbit: float | None = None  # the latest uplink estimate when the frame was sent (offloaded frames)
    stamps: dict[str, int] = field(default_factory=dict)
    # Per tier, that tier's clock minus the device's (ns), from clock sync: stamps stay as each
    # clock took them, and durations that cross clocks are computed on the device's clock.
    offsets_ns: dict[str, int] = field(default_factory=dict)

    @property
    def correct(self) -> bool | None:
        """Whether the answer matches the label, when the label is known."""
        return None if self.label is None else self.prediction == self.label

    def durations_ms(self) -> dict[str, float]:
        """Derived durations: end to end, device compute, and each remote hop that happened."""
        s = self.stamps if not self.offsets_ns else self.device_clock_stamps()
        return {name: (s[b] - s[a]) / 1e6 for name, a, b in _SPANS if a in s and b in s}

    def device_clock_stamps(self) -> dict[str, int]:
        """The stamps on the device's clock: ``<tier>_*`` less that tier's offset, ``reply_publish`` the replier's."""
        out = dict(self.stamps)
        for name, ns in self.stamps.items():
            owner = self.tier if name == "reply_publish" else name.split("_", 1)[0]
            offset = self.offsets_ns.get(owner)
            if offset is not None:
                out[name] = ns - offset
        return out

    def to_dict(self, durations: dict[str, float] | None = None) -> dict[str, Any]:
        """JSON-ready dict with the derived fields (``durations``: :meth:`durations_ms`, if already computed)."""
        # A shallow copy of the fields: dataclasses.asdict deep-copies and costs 0.2 ms a frame.
        d = dict(self.__dict__)
        d["stamps"] = dict(self.stamps)
        d["offsets_ns"] = dict(self.offsets_ns)
        d["correct"] = self.correct
        d.update(self.durations_ms() if durations is None else durations)
        return d

    def to_line_protocol(self, measurement: str = "frames", durations: dict[str, float] | None = None) -> str:
        """One InfluxDB line: low-cardinality tags, ns timestamps as integer fields, durations in ms."""
        tags = _tag_prefix(
            measurement,
            self.deployment,
            self.run,
            self.device,
            self.tier,
            self.model,
            self.exit,
            self.outcome,
            self.split,
        )
        label = (
            ""
            if self.label is None
            else f",label={self.label}i,correct={'1' if self.prediction == self.label else '0'}i"
        )
        stamps = ",".join([f"{_stamp_field(k)}={v}i" for k, v in self.stamps.items()])
        spans = ",".join([f"{k}={v!r}" for k, v in (self.durations_ms() if durations is None else durations).items()])
        # InfluxDB refuses NaN and infinity, and with them the whole point: such a value is left out.
        confidence = float(self.confidence)
        uplink = None if self.uplink_mbit is None else float(self.uplink_mbit)
        return (
            f"{tags} frame={self.frame}i,prediction={self.prediction}i,"
            f"{f'confidence={confidence!r},' if math.isfinite(confidence) else ''}"
            f"bytes_up={self.bytes_up}i,bytes_down={self.bytes_down}i,"
            f"offloaded={'0' if self.outcome == 'local' else '1'}i{label}"
            f"{f',uplink_mbit={uplink!r}' if uplink is not None and math.isfinite(uplink) else ''}"
            f"{',' if stamps else ''}{stamps}{',' if spans else ''}{spans} {self.stamps.get('capture', 0)}"
        )


# Derived durations: (field, from stamp, to stamp).
_SPANS = (
    ("e2e_ms", "capture", "answer"),
    ("device_compute_ms", "device_start", "device_end"),
    ("uplink_ms", "publish", "edge_receive"),
    ("edge_queue_ms", "edge_receive", "edge_queue_exit"),
    ("edge_compute_ms", "edge_start", "edge_end"),
    ("cloud_hop_ms", "edge_forward", "cloud_end"),
    ("cloud_compute_ms", "cloud_start", "cloud_end"),
    ("downlink_ms", "reply_publish", "device_receive"),
    ("round_trip_ms", "publish", "device_receive"),
)


@functools.lru_cache(maxsize=1024)
def _tag_prefix(measurement: str, *values: object) -> str:
    """Measurement and tag set, escaped once per distinct combination (a handful per run)."""
    names = ("deployment", "run", "device", "tier", "model", "exit", "outcome", "split")
    tags = ",".join(
        f"{n}={escape_key(str(v))}" for n, v in zip(names, values, strict=True) if v is not None and v != ""
    )
    return f"{escape_key(measurement)},{tags}"


@functools.lru_cache(maxsize=256)
def _stamp_field(name: str) -> str:
    """The line-protocol field name of a stamp (a handful of distinct names per run)."""
    return f"{escape_key(name)}_ns"


class LineSink(Protocol):
    """Anything that takes line-protocol lines without blocking (see :class:`agents.telemetry.influx.InfluxSink`)."""

    def submit(self, lines: list[str]) -> None:
        """Queue lines; never blocks."""


class RecordWriter:
    """Appends records to ``frames.jsonl`` and ``frames.lp`` in a run directory; thread-safe.

    Records are held in memory and serialised in batches, on the caller's thread, at
    least every ``flush_s`` seconds while records arrive, every ``batch`` records, and on
    :meth:`flush` and :meth:`close`. Why: serialising one record between two model runs
    costs the worker about three times what the same work costs in a tight batch (the
    model's weights and the serialiser evict each other from the caches), and a writer
    thread would contend for the GIL with the model loop (both measured with
    ``benchmarks/device_throughput``). What a crash can lose is the same as with buffered
    file writes: at most ``flush_s`` seconds of records. A record that cannot be written
    (full disk, unserialisable value) is counted in ``errors`` and logged; the writer
    goes on.
    """

    def __init__(self, run_dir: Path, flush_s: float = 1.0, batch: int = 256, sink: LineSink | None = None) -> None:
        run_dir.mkdir(parents=True, exist_ok=True)
        self.run_dir = run_dir
        self.flush_s = flush_s
        self.batch = batch
        self._held: list[FrameRecord] = []
        self.sink = sink  # also gets every line-protocol line (e.g. an InfluxDB sink), off the hot path
        self._lock = threading.Lock()
        self._jsonl: BinaryIO = (run_dir / "frames.jsonl").open("ab", buffering=1 << 16)
        self._lp: BinaryIO = (run_dir / "frames.lp").open("ab", buffering=1 << 16)
        self._late: BinaryIO | None = None
        self._next_flush = time.monotonic() + flush_s
        self.count = 0
        self.errors = 0

    def write(self, record: FrameRecord) -> None:
        """Take one record (serialised and written within ``flush_s`` or ``batch`` records, or on :meth:`flush`).

        The record must not change after this call.
        """
        with self._lock:
            self.count += 1
            self._held.append(record)
            if len(self._held) >= self.batch or time.monotonic() >= self._next_flush:
                try:
                    self._flush_locked()
                except OSError as exc:
                    self._error(str(exc))

    def _write_held(self) -> None:
        held, self._held = self._held, []
        js: list[bytes] = []
        lp: list[str] = []
        for record in held:
            try:
                # Serialise both before writing either, so the two files stay line for line alike.
                durations = record.durations_ms()
                j = orjson.dumps(record.to_dict(durations), option=orjson.OPT_APPEND_NEWLINE)
                line = record.to_line_protocol(durations=durations)
            except (TypeError, ValueError, orjson.JSONEncodeError) as exc:
                self._error(f"record {record.request_id} cannot be serialised ({exc})")
                continue
            js.append(j)
            lp.append(line)
        if js:
            try:
                self._jsonl.write(b"".join(js))
                self._lp.write(("\n".join(lp) + "\n").encode())
            except OSError as exc:
                self._error(f"{len(js)} records not written ({exc})", len(js))
            if self.sink is not None:
                self.sink.submit(lp)

    def write_late(self, request_id: str, tier: str, prediction: int, after_deadline_ms: float) -> None:
        """Note a reply that came after its frame was answered locally (the answer stays as it was)."""
        line = {
            "request_id": request_id,
            "tier": tier,
            "prediction": prediction,
            "after_deadline_ms": round(after_deadline_ms, 3),
        }
        with self._lock:
            try:
                if self._late is None:
                    self._late = (self.run_dir / "late_replies.jsonl").open("ab")
                self._late.write(orjson.dumps(line, option=orjson.OPT_APPEND_NEWLINE))
            except OSError as exc:
                self._error(str(exc))

    def flush(self) -> None:
        """Serialise the records held and push everything buffered to the files."""
        with self._lock:
            try:
                self._flush_locked()
            except OSError as exc:
                self._error(str(exc))

    def close(self) -> None:
        """Flush and close the files."""
        self.flush()
        with self._lock:
            for f in (self._jsonl, self._lp, self._late):
                if f is not None:
                    f.close()

    def _flush_locked(self) -> None:
        self._next_flush = time.monotonic() + self.flush_s
        self._write_held()
        for f in (self._jsonl, self._lp, self._late):
            if f is not None:
                f.flush()

    def _error(self, detail: str, n: int = 1) -> None:
        first = self.errors == 0
        self.errors += n
        if first or self.errors // 1000 != (self.errors - n) // 1000:
            log.error("records in %s: %s [%d errors so far]", self.run_dir, detail, self.errors)


def read_records(run_dir: Path) -> list[dict[str, Any]]:
    """Every record of a run directory's ``frames.jsonl`` (files of several devices are all read)."""
    out: list[dict[str, Any]] = []
    for path in sorted(run_dir.rglob("frames.jsonl")):
        with path.open() as f:
            out.extend(json.loads(line) for line in f if line.strip())
    return out
