"""A node's profile of one model: latency per stage and per exit head, output bytes and MACs, in a JSON file.

The measurement itself is :mod:`agents.evaluation.latency` (the one ``cascade eval`` uses):
warm-up calls, then repetitions timed one by one, each stage on the real activation
of the stage before, channels-last input. The file's layout is documented in
``docs/profiling.md``; :func:`load_profile` checks it before anything reads it.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from agents.errors import UserError
from agents.evaluation.latency import (
    PassLatency,
    RoundTimer,
    StageLatency,
    Timing,
    exit_latency,
    in_pass_latency,
    stage_latency,
    whole_model_call,
    whole_model_timing,
)
from agents.models.staged import StagedModel
from agents.models.stats import model_stats
from agents.profiling.loading import ModelToProfile
from agents.profiling.node import NodeIdentity, OtherLoad, other_load_now
from agents.profiling.steadiness import SpeedMeter

PROFILE_SCHEMA = "cascade-profile/1"
#: Seconds of host-speed spells (all cores) after each batch size; a fuller probe comes first. Spread
#: through the profile, they catch a host that slows only now and then.
PROBE_BETWEEN_S = 0.2


@dataclass(frozen=True)
class Effort:
    """How long each latency is measured: the least timed calls and warm-up calls, and the least seconds of each.

    The seconds matter for fast stages: 5 calls of a 50 µs stage do not settle it, and the median
    of 30 calls spans 1.5 ms, short enough for one burst of noise on the host to move it
    (``benchmarks/profile_repeatability.py``). Stages are timed in ``rounds`` that take turns
    (:func:`agents.evaluation.latency.stage_latency`): their median of round medians outvotes a
    burst that spoils one round.
    """

    reps: int = 30
    warmup: int = 5
    warmup_s: float = 0.2
    measure_s: float = 0.3
    rounds: int = 3

    def stages(
        self, model: StagedModel, batch: int, on_stage: Callable[[], object] | None = None
    ) -> list[StageLatency]:
        """Each stage alone (no exit heads), on the real activation of the one before, in rounds taking turns."""
        return stage_latency(
            model,
            batch,
            self.reps,
            self.warmup,
            False,
            on_stage,
            warmup_s=self.warmup_s,
            min_s=self.measure_s,
            rounds=self.rounds,
        )

    def exits(
        self, model: StagedModel, batch: int, on_exit: Callable[[], object] | None = None
    ) -> dict[int, StageLatency]:
        """Each exit head alone, by the stage it reads."""
        return exit_latency(model, batch, self.reps, self.warmup, on_exit, warmup_s=self.warmup_s, min_s=self.measure_s)

    def whole(self, model: StagedModel, batch: int) -> Timing:
        """The whole model, every exit computed."""
        return whole_model_timing(model, batch, self.reps, self.warmup, warmup_s=self.warmup_s, min_s=self.measure_s)

    def in_pass(self, model: StagedModel, batch: int) -> PassLatency:
        """Every stage and exit head timed inside whole passes, where it runs (as much timing as :meth:`whole`)."""
        return in_pass_latency(model, batch, self.reps, self.warmup, warmup_s=self.warmup_s, min_s=self.measure_s)

    def whole_rounds(self, runs: Sequence[tuple[StagedModel, int]]) -> RoundTimer:
        """Whole models (model, batch), every exit computed, timed a round at a time when the caller says.

        Each round has a ``rounds``-th of this effort's calls and seconds; run :meth:`RoundTimer.round`
        under ``torch.inference_mode()``. Timed one after another for a third of a second each,
        mobilenet_v2's median moved by 6–10 % within a minute here, mostly in single slow or fast
        windows: rounds spread over the fit's layer timing see the same windows the layers do.
        """
        calls = [whole_model_call(model, batch) for model, batch in runs]
        rounds = max(1, self.rounds)
        return RoundTimer(calls, math.ceil(self.reps / rounds), self.warmup, self.warmup_s, self.measure_s / rounds)


def _ms(value: float) -> float:
    return round(value, 4)


def profile_steps(model: StagedModel, batches: Sequence[int]) -> int:
    """How many timed items :func:`profile_model` measures (for a progress bar)."""
    return len(batches) * (2 * model.num_stages + model.num_exits + 2)


def profile_model(
    target: ModelToProfile,
    node: NodeIdentity,
    batches: Sequence[int],
    effort: Effort | None = None,
    command: str = "",
    on_step: Callable[[], object] | None = None,
) -> dict[str, Any]:
    """Measure every stage and exit head of ``target`` at every batch size: the profile as a JSON-ready dict.

    MACs and output bytes are per image (fp32 activations); latencies are per call of ``batch`` images.
    """
    effort = effort or Effort()
    model = target.model
    model.eval()
    stats = model_stats(model)
    tick = on_step or (lambda: None)
    before = other_load_now()
    during = OtherLoad()
    speed = SpeedMeter()
    speed.probe()
    stages: list[dict[str, Any]] = []
    for k in range(model.num_stages):
        index = model.exit_at_stage(k)
        stages.append(
            {
                "stage": k,
                "macs": stats.stage_macs[k],
                "output_shape": list(stats.split_shapes[k + 1]),
                "output_bytes": stats.split_bytes[k + 1],
                "latency": [],
                "exit": None if index is None else {"index": index, "macs": stats.exit_macs[index], "latency": []},
            }
        )
    whole: list[dict[str, Any]] = []
    for batch in batches:
        for s in effort.stages(model, batch, tick):
            stages[s.stage]["latency"].append({"batch": batch, "median_ms": _ms(s.median_ms), "p95_ms": _ms(s.p95_ms)})
        for k, s in effort.exits(model, batch, tick).items():
            stages[k]["exit"]["latency"].append(
                {"batch": batch, "median_ms": _ms(s.median_ms), "p95_ms": _ms(s.p95_ms)}
            )
        # Stages again: a second measurement in the same run, so a reader sees how repeatable this node is.
        again = effort.stages(model, batch, tick)
        for s in again:
            entry = stages[s.stage]["latency"][-1]
            entry["repeat_median_ms"] = _ms(s.median_ms)
        t = effort.whole(model, batch)
        whole.append({"batch": batch, "median_ms": _ms(t.median_ms), "p95_ms": _ms(t.p95_ms)})
        tick()
        # Each part again, inside whole passes: what it costs where it runs, for plans that add stages up.
        in_pass = effort.in_pass(model, batch)
        for k, timing in enumerate(in_pass.stages):
            stages[k]["latency"][-1]["in_pass_median_ms"] = _ms(timing.median_ms)
        for k, timing in in_pass.heads.items():
            stages[k]["exit"]["latency"][-1]["in_pass_median_ms"] = _ms(timing.median_ms)
        whole[-1]["in_pass_median_ms"] = _ms(in_pass.passes.median_ms)
        speed.probe(PROBE_BETWEEN_S)
        tick()
    return {
        "schema": PROFILE_SCHEMA,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "command": command,
        "node": node.to_json(),
        "model": {
            "name": target.name,
            "trained": target.trained,
            "source": target.source,
            "checkpoint": target.checkpoint,
            "parameters": stats.parameters,
            "input_shape": list(model.input_shape),
            "input_bytes": stats.split_bytes[0],
            "num_stages": model.num_stages,
            "exit_after": list(model.exit_after),
        },
        "settings": {
            "batches": list(batches),
            "reps": effort.reps,
            "warmup": effort.warmup,
            "warmup_s": effort.warmup_s,
            "measure_s": effort.measure_s,
            "rounds": effort.rounds,
            "dtype": "float32",
            "memory_format": "channels_last",
            "other_cores_before": before,
            "other_cores_during": during.cores(),
            "host_speed": [core.to_json() for core in speed.cores()],
        },
        "stages": stages,
        "whole_model": whole,
        "time_ns": time.time_ns(),
    }


def save_profile(profile: dict[str, Any], path: Path) -> None:
    """Write ``profile`` as indented JSON (parents created)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(profile, indent=2) + "\n")


def _check(cond: bool, path: Path, what: str) -> None:
    if not cond:
        raise UserError(f"profile {path}: {what}")


def load_profile(path: Path) -> dict[str, Any]:
    """A profile written by :func:`save_profile`, its schema and layout checked; UserError otherwise."""
    try:
        data = json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise UserError(f"profile {path}: no such file") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise UserError(f"profile {path}: unreadable ({exc})") from None
    _check(isinstance(data, dict), path, "expected a JSON object")
    found = data.get("schema")
    _check(found == PROFILE_SCHEMA, path, f"schema {found!r}, expected {PROFILE_SCHEMA!r}")
    for key in ("node", "model", "settings", "stages", "whole_model"):
        _check(key in data, path, f"lacks {key!r}")
    _check(isinstance(data["stages"], list) and bool(data["stages"]), path, "'stages' must be a non-empty list")
    for i, stage in enumerate(data["stages"]):
        ok = isinstance(stage, dict) and all(k in stage for k in ("stage", "macs", "output_bytes", "latency"))
        _check(ok, path, f"stage entry {i} lacks stage/macs/output_bytes/latency")
        for entry in stage["latency"]:
            ok = isinstance(entry, dict) and all(isinstance(entry.get(k), (int, float)) for k in ("batch", "median_ms"))
            _check(ok, path, f"stage {i}: latency entries need numeric batch and median_ms")
    try:
        NodeIdentity.from_json(data["node"])
    except (KeyError, TypeError) as exc:
        raise UserError(f"profile {path}: node identity incomplete ({exc})") from None
    return dict(data)


def stage_median(profile: dict[str, Any], stage: int, batch: int) -> float:
    """A stage's median milliseconds at ``batch`` from a loaded profile (KeyError when not measured)."""
    for entry in profile["stages"][stage]["latency"]:
        if int(entry["batch"]) == batch:
            return float(entry["median_ms"])
    raise KeyError(f"stage {stage} was not measured at batch {batch}")
