"""``cascade profile --predict``: a model's latency as the fitted predictor prices it, against what it measures."""

from __future__ import annotations

import argparse
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from agents.errors import UserError
from agents.models.staged import StagedModel
from agents.profiling.inside import by_type, layer_times
from agents.profiling.loading import load_model
from agents.profiling.node import NodeIdentity, node_identity
from agents.profiling.options import parse_batches
from agents.profiling.predictor import Predictor, load_fit
from agents.profiling.recording import record_stages
from agents.profiling.settings import effort_of
from agents.profiling.stages import Effort, load_profile
from agents.profiling.steadiness import CoreSpeed, SpeedMeter, unsteady


def run_predict(args: argparse.Namespace) -> int:
    """``cascade profile --predict``: prints (and with ``--json`` writes) predicted against measured latency."""
    if not args.model:
        raise UserError("cascade profile --predict needs --model NAME")
    if not args.fit_file:
        raise UserError("cascade profile --predict needs --fit-file FILE (written by cascade profile --fit)")
    predictor, _ = load_fit(Path(args.fit_file))
    profile = load_profile(Path(args.profile)) if args.profile else None
    target = load_model(args.model)
    if profile is not None:
        if profile["model"]["name"] != target.name:
            raise UserError(f"profile {args.profile}: measures {profile['model']['name']!r}, not {target.name!r}")
        measured_batches = [int(b) for b in profile["settings"]["batches"]]
        batches = parse_batches(args.batch, measured_batches)
        missing = sorted(set(batches) - set(measured_batches))
        if missing:
            raise UserError(f"profile {args.profile}: no measurement at batch {missing} (it has {measured_batches})")
        node = NodeIdentity.from_json(profile["node"])
    else:
        batches = parse_batches(args.batch, (1,))
        node = node_identity()
    notes = node.differences(predictor.node) if predictor.node else ["the fit file names no node"]
    speed = SpeedMeter()
    if profile is None:
        speed.probe()
    results = []
    for batch in batches:
        if profile is not None:
            measured = measured_from_profile(profile, batch)
            results.append(predict_stages(predictor, target.model, batch, measured))
        else:
            measured = measure_now(target.model, batch, effort_of(args))
            result = predict_stages(predictor, target.model, batch, measured)
            outside = result["python"]["predicted_ms"]
            result["inside"] = types_inside(predictor, target.model, batch, measured.whole, outside)
            results.append(result)
            speed.probe()
    host_speed = speed.cores() if profile is None else profile["settings"].get("host_speed", [])
    source = "profile " + args.profile if args.profile else "measured now"
    print(format_predict(target.name, results, notes, source, unsteady(host_speed)))
    if args.json:
        path = Path(args.json)
        path.parent.mkdir(parents=True, exist_ok=True)
        payload = {
            "model": target.name,
            "node": node.to_json(),
            "fit_file": args.fit_file,
            "profile": args.profile,
            "host_speed": [c.to_json() if isinstance(c, CoreSpeed) else c for c in host_speed],
            "batches": results,
        }
        path.write_text(json.dumps(payload, indent=2) + "\n")
        print(f"predictions written: {path}")
    return 0


@dataclass
class Measured:
    """Median milliseconds of each stage, each exit head (by stage) and the whole model at one batch size.

    ``in_pass_stages`` and ``in_pass_heads``: the same parts timed inside whole passes (None when not
    measured, as in profiles written before 2026-11-30).
    """

    stages: list[float]
    heads: dict[int, float]
    whole: float
    in_pass_stages: list[float] | None = None
    in_pass_heads: dict[int, float] | None = None


def measure_now(model: StagedModel, batch: int, effort: Effort | None = None) -> Measured:
    """Measure stages, heads and the whole model on this node now, and the parts again inside whole passes."""
    effort = effort or Effort()
    in_pass = effort.in_pass(model, batch)
    return Measured(
        [s.median_ms for s in effort.stages(model, batch)],
        {k: s.median_ms for k, s in effort.exits(model, batch).items()},
        effort.whole(model, batch).median_ms,
        [t.median_ms for t in in_pass.stages],
        {k: t.median_ms for k, t in in_pass.heads.items()},
    )


def measured_from_profile(profile: dict[str, Any], batch: int) -> Measured:
    """The medians a profile file holds for ``batch`` (the in-pass ones when every part has one)."""

    def entry(entries: list[dict[str, Any]]) -> dict[str, Any]:
        return next(e for e in entries if int(e["batch"]) == batch)

    stage_entries = [entry(s["latency"]) for s in profile["stages"]]
    head_entries = {int(s["stage"]): entry(s["exit"]["latency"]) for s in profile["stages"] if s.get("exit")}
    complete = all("in_pass_median_ms" in e for e in [*stage_entries, *head_entries.values()])
    return Measured(
        [float(e["median_ms"]) for e in stage_entries],
        {k: float(e["median_ms"]) for k, e in head_entries.items()},
        float(entry(profile["whole_model"])["median_ms"]),
        [float(e["in_pass_median_ms"]) for e in stage_entries] if complete else None,
        {k: float(e["in_pass_median_ms"]) for k, e in head_entries.items()} if complete else None,
    )


#: The row of ``--predict`` that sums the stages and exit heads, each timed alone. The whole model can take
#: longer than that sum: a part timed over and over keeps its weights and activations in cache, while in a
#: whole pass the other parts evict them (densenet121 at batch 1 here: 20.1 ms summed, 22.9 ms whole).
PARTS_SUMMED = "parts summed"


def predict_stages(predictor: Predictor, model: StagedModel, batch: int, measured: Measured) -> dict[str, Any]:
    """Per stage and exit head, their sum, and the whole model: predicted against measured milliseconds at ``batch``."""
    stages, heads, whole = record_stages(model, batch)
    if len(stages) != len(measured.stages) or set(heads) != set(measured.heads):
        raise UserError(f"the measurements describe other stages or exits than {model.name!r} has")
    rows: list[dict[str, Any]] = []

    def add(part: str, predicted: float, measured_ms: float, in_pass_ms: float | None = None) -> None:
        row = {
            "part": part,
            "predicted_ms": predicted,
            "measured_ms": measured_ms,
            "error": _error(predicted, measured_ms),
        }
        if in_pass_ms is not None:
            row |= {"in_pass_ms": in_pass_ms, "in_pass_error": _error(predicted, in_pass_ms)}
        rows.append(row)

    in_stages, in_heads = measured.in_pass_stages, measured.in_pass_heads
    for k, rec in enumerate(stages):
        add(f"stage {k}", predictor.predict(rec).total_ms, measured.stages[k], in_stages[k] if in_stages else None)
        if k in heads:
            in_head = in_heads.get(k) if in_heads else None
            add(f"exit after {k}", predictor.predict(heads[k]).total_ms, measured.heads[k], in_head)
    parts = list(rows)
    in_pass_sum = math.fsum(r["in_pass_ms"] for r in parts) if all("in_pass_ms" in r for r in parts) else None
    add(
        PARTS_SUMMED,
        math.fsum(r["predicted_ms"] for r in parts),
        math.fsum(r["measured_ms"] for r in parts),
        in_pass_sum,
    )
    prediction = predictor.predict(whole)
    add("whole model", prediction.total_ms, measured.whole)
    python = {
        "module_calls": whole.module_calls,
        "python_calls": None if whole.python_calls is None else round(whole.python_calls, 1),
        "predicted_ms": round(prediction.by_type.get("module", 0.0), 4),
    }
    return {"batch": batch, "rows": rows, "unpriced": prediction.unknown, "python": python}


def _error(predicted: float, measured: float) -> float:
    """Predicted over measured, less one (NaN when nothing was measured)."""
    return predicted / measured - 1 if measured > 0 else math.nan


#: Timed passes of the model for the per-type table of ``--predict`` (each layer's median over them).
INSIDE_PASSES = 20


def types_inside(
    predictor: Predictor,
    model: StagedModel,
    batch: int,
    whole_ms: float,
    outside_ms: float,
    passes: int = INSIDE_PASSES,
) -> dict[str, Any]:
    """Per layer type, predicted against measured milliseconds with every call timed inside the model.

    The rest of the whole model's ``whole_ms`` (module calls, Python, unpriced functions) is
    ``outside``: measured as the whole less the layers, predicted as ``outside_ms`` (the Python's price).
    """
    x = model.example_input(batch).contiguous(memory_format=torch.channels_last)
    try:
        times = layer_times(lambda: model(x), passes)
    except ValueError as exc:
        raise UserError(f"cannot time {model.name!r} layer by layer: {exc}") from None
    rows = by_type(predictor, times)
    outside = whole_ms - math.fsum(ms for _, ms in times)
    return {
        "passes": passes,
        "types": [r.to_json() for r in rows],
        "outside": {"predicted_ms": round(outside_ms, 4), "measured_ms": round(outside, 4)},
    }


def format_predict(
    name: str, results: list[dict[str, Any]], notes: list[str], source: str, host: str | None = None
) -> str:
    """A terminal table of predicted against measured latency (``host``: the measurement's unsteady-host warning)."""
    lines = [f"{name}: predicted vs measured (median, {source}) latency"]
    for note in notes:
        lines.append(f"  note: the fit's node and the measured one differ: {note}")
    if host:
        lines.append(f"  warning: {host}")
    for result in results:
        in_pass = any("in_pass_ms" in row for row in result["rows"])
        head = f"batch {result['batch']}: {'part':<14} {'predicted':>10} {'alone':>10} {'error':>8}"
        lines += ["", head + (f" {'in pass':>10} {'error':>8}" if in_pass else "")]
        for row in result["rows"]:
            line = (
                f"         {row['part']:<14} {row['predicted_ms']:8.3f}ms {row['measured_ms']:8.3f}ms"
                f" {100 * row['error']:+7.1f}%"
            )
            if "in_pass_ms" in row:
                line += f" {row['in_pass_ms']:8.3f}ms {100 * row['in_pass_error']:+7.1f}%"
            lines.append(line)
        if in_pass:
            lines.append(
                "         (alone: each part timed by itself over and over, the whole model as a whole;"
                " in pass: each part timed inside whole passes)"
            )
        if result["unpriced"]:
            lines.append(f"  not priced (no fitted type): {result['unpriced']}")
        python = result.get("python")
        if python:
            counted = python["python_calls"]
            lines.append(
                f"  the Python around the layers: {python['predicted_ms']:.3f}ms predicted,"
                f" {python['module_calls']} module calls"
                + (f" worth {counted:.0f} plain ones (dry run)" if counted is not None else ", one price each")
            )
        inside = result.get("inside")
        if inside:
            lines += [
                "",
                f"batch {result['batch']}, per layer type, each call timed inside the model"
                f" ({inside['passes']} passes):",
                f"         {'type':<14} {'calls':>5} {'predicted':>10} {'measured':>10} {'error':>8}",
            ]
            for row in inside["types"]:
                lines.append(
                    f"         {row['type']:<14} {row['calls']:>5} {row['predicted_ms']:8.3f}ms"
                    f" {row['measured_ms']:8.3f}ms {100 * row['error']:+7.1f}%"
                )
            out = inside["outside"]
            lines.append(
                f"         {'outside layers':<14} {'':>5} {out['predicted_ms']:8.3f}ms {out['measured_ms']:8.3f}ms"
                "   (the Python around the layers; measured: the whole model less its layers)"
            )
    return "\n".join(lines)
