"""``cascade profile --fit``: time many synthetic layer shapes and the zoo models, fit the predictor, check it."""

from __future__ import annotations

import argparse
import math
import statistics
from dataclasses import replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch

from agents.errors import UserError
from agents.models.staged import StagedModel
from agents.models.zoo import ZOO
from agents.profiling import sampling
from agents.profiling.layers import Layer
from agents.profiling.loading import load_model
from agents.profiling.memory import SIZES_MIB, measure_memory
from agents.profiling.node import OtherLoad, node_identity, other_load_now
from agents.profiling.options import BUSY_WARNING, MODEL_ERROR_TARGET, TYPE_MAPE_TARGET, parse_batches
from agents.profiling.predictor import FOLDS, Predictor, fit, fold_of, save_fit
from agents.profiling.recording import record_stages
from agents.profiling.settings import effort_of, progress_bar
from agents.profiling.stages import Effort
from agents.profiling.steadiness import SpeedMeter, unsteady

#: Each round of the fit's check times a model for a ``CHECK_ROUNDS``-th of ``CHECK_TIME`` times a
#: profile's measurement, with as large a share of its calls (0.1 s by default). Checks in a row here
#: moved a model's figure by up to 8.5 % with three rounds of 0.1 s, by up to 3.5 % with five (slow
#: windows of a second or more came and went).
CHECK_ROUNDS = 5
CHECK_TIME = 5 / 3

#: The check's rounds run this many times in each pass over the layers, spread through it: a slow spell
#: of the host longer than the check (tens of seconds here) then falls on the layers and the models alike,
#: and both keep their two quietest (six rounds with two passes). Timed after the layers, a check that
#: fell wholly in a slow spell put every model 5–9 % slower than the quiet layers priced it.
CHECKS_PER_PASS = 3
#: Seconds of host-speed spells (all cores) after each check round; fuller probes open and close the fit.
PROBE_IN_CHECK_S = 0.1


def _check_effort(args: argparse.Namespace) -> Effort:
    """The effort of the fit's whole-model check: more rounds and time than a profile's, against slow windows."""
    effort = effort_of(args)
    return replace(effort, rounds=CHECK_ROUNDS, measure_s=effort.measure_s * CHECK_TIME)


def _validation_models(args: argparse.Namespace) -> list[str]:
    if not args.model:
        return list(ZOO)
    names = [n.strip() for n in args.model.split(",") if n.strip()]
    if not names:
        raise UserError(f"--model {args.model!r}: expected one or more model names separated by commas")
    return names


def run_fit(args: argparse.Namespace) -> int:
    """``cascade profile --fit``: writes the fit file ``--json`` and prints its errors against the targets."""
    if not args.json:
        raise UserError("cascade profile --fit needs --json FILE for the fitted predictor")
    out = Path(args.json)
    batches = parse_batches(args.batch, (1,))
    names = _validation_models(args)
    targets = [load_model(n) for n in names]  # bad names fail before minutes of measuring
    node = node_identity()
    reps = args.reps or 15
    before = other_load_now()
    during = OtherLoad()
    speed = SpeedMeter()
    speed.probe()
    jobs = sampling.plan(args.samples, args.seed)
    runs = [(target, batch) for target in targets for batch in batches]
    check = _check_effort(args)
    models = check.whole_rounds([(target.model, batch) for target, batch in runs])

    def check_round() -> None:
        with torch.inference_mode():
            models.round()
        speed.probe(PROBE_IN_CHECK_S)

    with progress_bar(len(jobs) * sampling.PASSES, "time layer shapes and models") as bar:

        def another_pass(done: int) -> None:
            bar.total = (bar.total or 0) + len(jobs)
            bar.set_description(f"noisy: pass {done + 1} of up to {sampling.MAX_PASSES}")

        samples = sampling.measure_all(
            jobs,
            reps,
            on_sample=lambda: bar.update(),
            on_more=another_pass,
            check=check_round,
            checks_per_pass=CHECKS_PER_PASS,
        )
    with progress_bar(len(SIZES_MIB), "time memory reads") as bar:
        memory = measure_memory(on_size=bar.update)
    speed.probe()
    passes = len(samples[0].pass_medians_ms) if samples else 0
    measured = [(sample.layer, sample.quiet_ms) for sample in samples]
    spread = sampling.pass_spread(samples)
    predictor = fit(measured, FOLDS, args.seed, node, memory)
    validation = [
        validate_model(predictor, target.model, target.name, batch, timing.quiet_ms)
        | {"median_ms": round(timing.median_ms, 4), "rounds_ms": [round(m, 4) for m in timing.rounds_ms]}
        for (target, batch), timing in zip(runs, models.timings(), strict=True)
    ]
    folds = _folds(measured, FOLDS, args.seed)
    extra = {
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "command": args.command_line,
        "settings": {
            "samples_per_type": args.samples,
            "reps": reps,
            "passes": passes,
            "max_passes": sampling.MAX_PASSES,
            "warmup": 3,
            "folds": FOLDS,
            "seed": args.seed,
            "dtype": "float32",
            "memory_format": "channels_last",
            "check_rounds": passes * CHECKS_PER_PASS,
            "check_measure_s": round(check.measure_s, 3),
            "pass_spread": round(spread, 4),
            "other_cores_before": before,
            "other_cores_during": during.cores(),
            "host_speed": [core.to_json() for core in speed.cores()],
        },
        "validation": validation,
        "samples": [
            {
                "type": layer.type,
                "label": layer.label,
                "features": layer.features,
                "ms": ms,
                "pass_medians_ms": [round(m, 6) for m in sample.pass_medians_ms],
                "fold": fold,
            }
            for sample, (layer, ms), fold in zip(samples, measured, folds, strict=True)
        ],
    }
    save_fit(out, predictor, extra)
    busy = max(before or 0.0, extra["settings"]["other_cores_during"] or 0.0)
    print(format_fit(predictor, validation, node.to_json(), busy, spread, passes, unsteady(speed.cores())))
    print(f"fit written: {out}")
    return 0


def _folds(measured: list[tuple[Layer, float]], folds: int, seed: int) -> list[int]:
    """The fold each sample was held out in by :func:`agents.profiling.predictor.fit` (dealt per type)."""
    positions: dict[str, list[int]] = {}
    for i, (layer, _) in enumerate(measured):
        positions.setdefault(layer.type, []).append(i)
    out = [0] * len(measured)
    for indices in positions.values():
        for index, fold in zip(indices, fold_of(len(indices), folds, seed), strict=True):
            out[index] = fold
    return out


def validate_model(predictor: Predictor, model: StagedModel, name: str, batch: int, measured: float) -> dict[str, Any]:
    """Predicted whole-model milliseconds (every exit computed) at ``batch`` against ``measured``."""
    whole = record_stages(model, batch)[2]
    prediction = predictor.predict(whole)
    return {
        "model": name,
        "batch": batch,
        "predicted_ms": round(prediction.total_ms, 4),
        "measured_ms": round(measured, 4),
        "error": round(prediction.total_ms / measured - 1, 4),
        "predicted_by_type_ms": {k: round(v, 4) for k, v in sorted(prediction.by_type.items())},
        "unpriced": prediction.unknown,
        "memory_bound_layers": prediction.memory_bound,
        "module_calls": whole.module_calls,
        "python_calls": None if whole.python_calls is None else round(whole.python_calls, 1),
    }


def format_fit(
    predictor: Predictor,
    validation: list[dict[str, Any]],
    node: dict[str, Any],
    busy: float,
    spread: float = 0.0,
    passes: int = sampling.PASSES,
    host: str | None = None,
) -> str:
    """The cross-validated error per layer type and the whole-model check, against the issue's targets.

    ``spread`` is :func:`agents.profiling.sampling.pass_spread` of the layers' timings, over ``passes`` passes;
    ``host`` the :func:`~agents.profiling.steadiness.unsteady` warning, if any.
    """
    lines = [
        f"latency predictor for {node['hostname']}: {node['cpu_model']}, {node['torch_threads']} torch threads",
        "",
        f"{'layer type':<15} {'shapes':>6} {'MAPE':>7} {'worst':>7}  target ≤{100 * TYPE_MAPE_TARGET:.0f}%"
        f"  (each shape predicted by a fit without it: {FOLDS}-fold cross-validation)",
    ]
    for kind, m in predictor.types.items():
        if math.isnan(m.mape):
            lines.append(f"{kind:<15} {m.shapes:>6} {'—':>7} {'—':>7}  too few shapes to score ({2 * FOLDS} needed)")
            continue
        ok = "ok" if m.mape <= TYPE_MAPE_TARGET else "MISS"
        lines.append(f"{kind:<15} {m.shapes:>6} {100 * m.mape:6.1f}% {100 * m.max_ape:6.1f}%  {ok}")
    lines += [
        "",
        f"{'model':<14} {'batch':>5} {'predicted':>10} {'measured':>10} {'error':>8}"
        f"  target ±{100 * MODEL_ERROR_TARGET:.0f}%",
    ]
    for v in validation:
        ok = "ok" if abs(v["error"]) <= MODEL_ERROR_TARGET else "MISS"
        lines.append(
            f"{v['model']:<14} {v['batch']:>5} {v['predicted_ms']:8.3f}ms {v['measured_ms']:8.3f}ms "
            f"{100 * v['error']:+7.1f}%  {ok}"
        )
    if validation:
        mean_abs = statistics.mean(abs(v["error"]) for v in validation)
        lines.append(f"mean |error| {100 * mean_abs:.1f}%")
    if busy > BUSY_WARNING:
        lines.append(f"warning: other processes kept {busy:.2f} cores busy: figures may be high and noisy")
    if predictor.memory is not None:
        curve = predictor.memory
        points = ", ".join(f"{g:.0f} GB/s at {s:.0f} MiB" for s, g in zip(curve.sizes_mib, curve.gbs, strict=True))
        lines.append(f"memory reads: {points} (a weighted layer costs at least its weights at its network's size)")
    which = "two passes" if passes <= 2 else f"two quietest of {passes} passes"
    lines.append(f"timing noise: a layer's {which} differed by {100 * spread:.1f} % (median over the layers)")
    if spread > sampling.NOISY_PASSES:
        lines.append(
            f"warning: over {100 * sampling.NOISY_PASSES:.0f} % after {passes} passes: the host was not quiet while"
            " the layers were timed (a virtual machine's host can slow it without any process showing), so the"
            " errors above are partly noise: fit again when it is quiet"
        )
    if host:
        lines.append(f"warning: {host}")
    return "\n".join(lines)
