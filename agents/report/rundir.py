"""Reading a run directory for the report: frame records, every agent's health, clocks and run metadata.

The layout is ``<run_dir>/<agent_id>/{frames.jsonl,health.jsonl,clocks.jsonl,run.json}``
(docs/telemetry.md). Nothing here is fatal except a directory without a single frame
record: a missing file is an empty list, and a line that is not a JSON object (a
half-written last line, a disk hiccup) or a frame record without the fields the summary
needs is skipped and counted in :attr:`RunData.skipped`.
"""

from __future__ import annotations

import json
import math
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from agents.errors import UserError

_RECORD_FILE = "frames.jsonl"
_AGENT_FILES = ("run.json", "health.jsonl", "clocks.jsonl", "late_replies.jsonl", _RECORD_FILE)


def read_jsonl(path: Path) -> tuple[list[dict[str, Any]], int]:
    """The JSON objects of a JSON-lines file, and how many non-blank lines were not one (missing file: none)."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return [], 0
    except OSError as exc:
        raise UserError(f"{path}: cannot be read ({exc.strerror or exc})") from exc
    rows: list[dict[str, Any]] = []
    skipped = 0
    for line in data.splitlines():
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except ValueError:  # JSONDecodeError and UnicodeDecodeError
            skipped += 1
            continue
        if isinstance(obj, dict):
            rows.append(obj)
        else:
            skipped += 1
    return rows, skipped


def _number(value: object) -> bool:
    """A finite int or float (not a bool): run files are JSON that Python reads ``Infinity`` and ``NaN`` from."""
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def is_frame_record(row: dict[str, Any]) -> bool:
    """Whether a JSON object has what :func:`agents.summary.summarize` and the views read from a frame record."""
    if not all(isinstance(row.get(k), str) for k in ("request_id", "tier", "outcome")):
        return False
    if not _number(row.get("bytes_up")) or not isinstance(row.get("stamps", {}), dict):
        return False
    if row.get("label") is not None and "correct" not in row:
        return False
    return all(_number(v) for k, v in row.items() if k.endswith("_ms"))


def flat_health(row: dict[str, Any]) -> dict[str, float]:
    """A health sample's numbers, ``counters`` flattened beside the rest (booleans and strings left out)."""
    out: dict[str, float] = {}
    for key, value in row.items():
        if key == "counters" and isinstance(value, dict):
            out.update({k: float(v) for k, v in value.items() if _number(v)})
        elif _number(value):
            out[key] = float(value)
    return out


@dataclass
class AgentData:
    """One agent's directory: run metadata, health samples and clock estimates (any may be missing)."""

    name: str
    meta: dict[str, Any] | None = None
    health: list[dict[str, Any]] = field(default_factory=list)
    clocks: list[dict[str, Any]] = field(default_factory=list)
    late_replies: int = 0

    @property
    def role(self) -> str:
        """``device`` or the tier name, from run.json or a health sample (``?`` when neither says)."""
        for row in [self.meta or {}, *self.health]:
            if isinstance(row.get("role"), str):
                return str(row["role"])
        return "?"


@dataclass
class RunData:
    """Everything the report reads from one run directory."""

    run_dir: Path
    records: list[dict[str, Any]]
    agents: dict[str, AgentData]
    skipped: dict[str, int]  # file, relative to the run directory -> lines skipped
    notes: list[str] = field(default_factory=list)

    @property
    def name(self) -> str:
        """The run directory's own name (of the absolute path, so ``.`` has one too)."""
        return self.run_dir.resolve().name

    @property
    def skipped_total(self) -> int:
        """Malformed lines skipped in all files."""
        return sum(self.skipped.values())

    def by_device(self) -> dict[str, list[dict[str, Any]]]:
        """The frame records of each device, in file order."""
        out: dict[str, list[dict[str, Any]]] = defaultdict(list)
        for r in self.records:
            out[str(r.get("device") or "?")].append(r)
        return dict(sorted(out.items()))

    def frames(self, device: str | None = None) -> int:
        """Frames the device(s) took: health samples' ``frames`` (largest per run, summed) or, if more, the answers."""
        devices = self.by_device()
        total = 0
        for name, records in devices.items():
            if device is not None and name != device:
                continue
            answered = len({r["request_id"] for r in records})
            agent = self.agents.get(name)
            per_run: dict[str, float] = {}
            for row in agent.health if agent else []:
                frames = flat_health(row).get("frames")
                if frames is not None:
                    run = str(row.get("run", ""))
                    per_run[run] = max(per_run.get(run, 0.0), frames)
            total += max(answered, int(sum(per_run.values())))
        return total

    def start_ns(self) -> int:
        """The run's time zero: the earliest agent start, health or clock sample, or frame capture."""
        times: list[int] = [int(r["stamps"]["capture"]) for r in self.records if _number(_capture(r))]
        for agent in self.agents.values():
            for row in [*([agent.meta] if agent.meta else []), *agent.health, *agent.clocks]:
                if _number(row.get("time_ns")):
                    times.append(int(row["time_ns"]))
        return min(times) if times else 0


def _capture(r: dict[str, Any]) -> object:
    stamps = r.get("stamps")
    return stamps.get("capture") if isinstance(stamps, dict) else None


def load_run(run_dir: Path) -> RunData:
    """Read a run directory; a missing or record-less directory is a :class:`UserError`."""
    if not run_dir.exists():
        raise UserError(f"run directory {run_dir} does not exist (cascade demo --run-dir ... makes one)")
    if not run_dir.is_dir():
        raise UserError(f"{run_dir} is not a directory: --run takes a run directory (cascade demo --run-dir ...)")
    skipped: dict[str, int] = {}
    records: list[dict[str, Any]] = []
    agents: dict[str, AgentData] = {}
    notes: list[str] = []

    def rows(path: Path, keep: Callable[[dict[str, Any]], bool]) -> list[dict[str, Any]]:
        """The rows of one file that ``keep`` accepts; the others and the malformed lines counted as skipped."""
        got, bad = read_jsonl(path)
        kept = [r for r in got if keep(r)]
        bad += len(got) - len(kept)
        if bad:
            skipped[path.relative_to(run_dir).as_posix()] = bad
        return kept

    # Records in the order agents.records.read_records reads them, so summaries match the demo's.
    for path in sorted(run_dir.rglob(_RECORD_FILE)):
        records += rows(path, is_frame_record)
    dirs = sorted({p.parent for name in _AGENT_FILES for p in run_dir.rglob(name) if p.is_file()})
    for d in dirs:
        rel = d.relative_to(run_dir).as_posix()
        agent = AgentData(name=rel)
        agent.health = rows(d / "health.jsonl", lambda r: _number(r.get("time_ns")))
        agent.clocks = rows(d / "clocks.jsonl", lambda r: _number(r.get("time_ns")) and isinstance(r.get("peer"), str))
        agent.late_replies = len(rows(d / "late_replies.jsonl", lambda r: True))
        meta_path = d / "run.json"
        if meta_path.is_file():
            try:
                meta = json.loads(meta_path.read_text())
            except (OSError, ValueError) as exc:
                notes.append(f"{rel}/run.json unreadable ({exc}); its metadata is left out")
            else:
                if isinstance(meta, dict):
                    agent.meta = meta
                else:
                    notes.append(f"{rel}/run.json is not a JSON object; its metadata is left out")
        if agent.meta or agent.health or agent.clocks or (d / _RECORD_FILE).exists():
            # Frame records name the device; an agent directory is usually named after it too.
            named = agent.meta.get("agent") if agent.meta else None
            if isinstance(named, str) and named not in agents:
                agent.name = named
            agents[agent.name] = agent
    if not records:
        bad = sum(v for k, v in skipped.items() if k.endswith(_RECORD_FILE))
        why = f" ({bad} malformed lines skipped)" if bad else ""
        raise UserError(f"no frame records under {run_dir}{why}: is this a run directory? (cascade demo --run-dir ...)")
    return RunData(run_dir=run_dir, records=records, agents=agents, skipped=skipped, notes=notes)
