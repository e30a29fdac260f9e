"""An agent's own telemetry besides frame records: run metadata, health samples, clock offsets.

Each goes to the agent's run directory (``run.json``, ``health.jsonl``, ``clocks.jsonl``
and every point again in ``telemetry.lp``) so ``cascade report`` needs no server,
and, when ``telemetry.influx`` is configured, to InfluxDB through the same sink as the
frame records (schema: docs/telemetry.md).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import threading
import time
from pathlib import Path
from typing import Any

import orjson

from agents.config import DeploymentConfig
from agents.telemetry.bandwidth import BandwidthEstimate
from agents.telemetry.clock import ClockEstimate
from agents.telemetry.influx import InfluxSink, influx_sink
from agents.telemetry.lineproto import point

log = logging.getLogger(__name__)


def config_digest(cfg: DeploymentConfig) -> str:
    """First 16 hex of the SHA-256 of the validated config (comments and key order do not change it)."""
    return hashlib.sha256(cfg.model_dump_json().encode()).hexdigest()[:16]


def _rss_mb() -> float | None:
    """Resident memory of this process (Linux ``/proc``; None elsewhere)."""
    try:
        pages = int(Path("/proc/self/statm").read_text().split()[1])
    except (OSError, IndexError, ValueError):
        return None
    return round(pages * os.sysconf("SC_PAGE_SIZE") / 2**20, 1)


def health_fields(health: dict[str, Any]) -> dict[str, bool | int | float]:
    """The numeric part of a health report, counters flattened beside the rest (strings are tags or metadata)."""
    out: dict[str, bool | int | float] = {}
    for key, value in health.items():
        if key == "counters" and isinstance(value, dict):
            out.update({k: v for k, v in value.items() if isinstance(v, int | float)})
        elif isinstance(value, bool | int | float):
            out[key] = value
    return out


class AgentTelemetry:
    """Writes one agent's run metadata, health samples and clock estimates; owns the InfluxDB sink, if any."""

    def __init__(self, cfg: DeploymentConfig, agent_id: str, role: str, run_id: str) -> None:
        self.deployment = cfg.deployment
        self.agent = agent_id
        self.role = role
        self.run_id = run_id
        self.health_s = cfg.telemetry.health_s
        self.dir = cfg.run_dir / agent_id
        self.dir.mkdir(parents=True, exist_ok=True)
        influx = cfg.telemetry.influx
        self.sink: InfluxSink | None = influx_sink(influx, self.dir / "influx-spool") if influx else None
        self._lock = threading.Lock()
        self._files = {
            name: (self.dir / name).open("ab")
            for name in ("health.jsonl", "clocks.jsonl", "bandwidth.jsonl", "telemetry.lp")
        }
        self._cpu_mark = (time.monotonic(), time.process_time())
        self._next_health = 0.0
        self.errors = 0

    def _tags(self, **extra: str | None) -> dict[str, str | None]:
        return {"deployment": self.deployment, "agent": self.agent, "role": self.role, **extra}

    def _emit(self, jsonl: str | None, record: dict[str, Any] | None, line: str | None) -> None:
        """Append to the run directory and hand the line to InfluxDB; a failed write is counted, not raised."""
        try:
            with self._lock:
                if jsonl is not None and record is not None:
                    self._files[jsonl].write(orjson.dumps(record, option=orjson.OPT_APPEND_NEWLINE))
                    self._files[jsonl].flush()
                if line is not None:
                    self._files["telemetry.lp"].write((line + "\n").encode())
                    self._files["telemetry.lp"].flush()
        except (OSError, TypeError, ValueError, orjson.JSONEncodeError) as exc:  # ValueError: after close()
            self.errors += 1
            log.error("telemetry of %s in %s not written: %s [%d errors]", self.agent, self.dir, exc, self.errors)
        if line is not None and self.sink is not None:
            self.sink.submit([line])

    def run_started(self, meta: dict[str, Any]) -> None:
        """Record what this run is: config digest, models and their digests, thresholds, split (``runs`` points)."""
        now = time.time_ns()
        record = {"time_ns": now, "deployment": self.deployment, "agent": self.agent, "role": self.role}
        record |= {"run": self.run_id, **meta}
        try:
            (self.dir / "run.json").write_text(json.dumps(record, indent=2) + "\n")
        except OSError as exc:
            self.errors += 1
            log.error("run metadata of %s not written: %s", self.agent, exc)
        # All as strings: the same key holds a float for one agent and a list for another (thresholds), and
        # InfluxDB refuses a field whose type differs from the one it first stored.
        fields = {k: v if isinstance(v, str) else json.dumps(v) for k, v in meta.items() if v is not None}
        self._emit(None, None, point("runs", self._tags(run=self.run_id), fields, now))

    def cpu_memory(self) -> dict[str, float]:
        """CPU use of this process since the last call (percent of one core) and resident memory."""
        now, cpu = time.monotonic(), time.process_time()
        t0, c0 = self._cpu_mark
        self._cpu_mark = (now, cpu)
        out = {"cpu_percent": round(100.0 * (cpu - c0) / (now - t0), 1) if now > t0 else 0.0}
        if (rss := _rss_mb()) is not None:
            out["rss_mb"] = rss
        return out

    def due(self) -> bool:
        """Whether ``health_s`` has passed since the last health sample."""
        return time.monotonic() >= self._next_health

    def health(self, health: dict[str, Any]) -> None:
        """Record one health sample (``health`` points)."""
        self._next_health = time.monotonic() + self.health_s
        now = time.time_ns()
        fields = health_fields(health)
        self._emit("health.jsonl", {"time_ns": now, **health}, point("health", self._tags(), fields, now))

    def clock(self, est: ClockEstimate) -> None:
        """Record one clock estimate (``clocks`` points)."""
        fields: dict[str, bool | int | float | str | None] = {
            "offset_ms": est.offset_ns / 1e6,
            "rtt_ms": est.rtt_ns / 1e6,
            "offset_ns": est.offset_ns,
            "rtt_ns": est.rtt_ns,
            "samples": est.samples,
        }
        line = point("clocks", self._tags(peer=est.peer, peer_role=est.peer_role), fields, est.time_ns)
        self._emit("clocks.jsonl", {"agent": self.agent, **est.as_dict()}, line)

    def bandwidth(self, est: BandwidthEstimate) -> None:
        """Record one uplink estimate (``bandwidth`` points)."""
        fields: dict[str, bool | int | float | str | None] = {
            "mbit_s": est.mbit_s,
            "bytes": est.bytes,
            "seconds": est.seconds,
            "messages": est.messages,
        }
        line = point("bandwidth", self._tags(peer=est.peer, peer_role=est.peer_role), fields, est.time_ns)
        self._emit("bandwidth.jsonl", {"agent": self.agent, **est.as_dict()}, line)

    def close(self) -> None:
        """Close the files and the sink (what InfluxDB did not take stays in the spool for the next start)."""
        with self._lock:
            for f in self._files.values():
                f.close()
        if self.sink is not None:
            self.sink.close()
