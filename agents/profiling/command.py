"""``cascade profile``: measure a model per stage, fit the per-layer latency predictor, or check its predictions."""

from __future__ import annotations

import argparse
import json
import math
import socket
import statistics
from collections.abc import Sequence
from dataclasses import dataclass, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from agents.errors import UserError
from agents.models.staged import StagedModel
from agents.models.zoo import ZOO
from agents.profiling import sampling
from agents.profiling.export import profile_points, write_points
from agents.profiling.inside import by_type, layer_times
from agents.profiling.layers import Layer, record_stages
from agents.profiling.loading import load_model
from agents.profiling.memory import SIZES_MIB, measure_memory
from agents.profiling.node import NodeIdentity, OtherLoad, node_identity, other_load_now
from agents.profiling.predictor import FOLDS, Predictor, fit, fold_of, load_fit, save_fit
from agents.profiling.stages import Effort, load_profile, profile_model, profile_steps, save_profile
from agents.profiling.steadiness import CoreSpeed, SpeedMeter, unsteady

#: Targets from the issue, printed beside the figures.
TYPE_MAPE_TARGET = 0.15
MODEL_ERROR_TARGET = 0.10
REPEAT_TARGET = 0.10
#: Cores other processes may keep busy before the figures get a warning.
BUSY_WARNING = 0.2


def parse_batches(text: str | None, default: Sequence[int]) -> list[int]:
    """``"1,8,32"`` → ``[1, 8, 32]``; UserError for anything but distinct positive integers."""
    if text is None:
        return list(default)
    parts = [p.strip() for p in text.split(",")]
    try:
        values = [int(p) for p in parts]
    except ValueError:
        values = []
    if not values or any(v < 1 for v in values) or len(set(values)) != len(values):
        raise UserError(f"--batch {text!r}: expected distinct positive integers separated by commas, e.g. 1,8,32")
    return values


def _effort(args: argparse.Namespace) -> Effort:
    """The measurement effort the options ask for (``--reps`` here means stages and models, not --fit's layers)."""
    default = Effort()
    return Effort(args.reps or default.reps, args.warmup, args.warmup_s, args.measure_s)


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
    effort = _effort(args)
    return replace(effort, rounds=CHECK_ROUNDS, measure_s=effort.measure_s * CHECK_TIME)


def _positive(value: int | None, flag: str) -> None:
    if value is not None and value < 1:
        raise UserError(f"{flag} {value}: expected a positive integer")


def _bar(total: int, desc: str) -> tqdm[Any]:
    return tqdm(total=total, desc=desc, unit="step", leave=False, disable=None)


def run_profile(args: argparse.Namespace) -> int:
    """Entry point of ``cascade profile`` (one of three modes: profile, --fit, --predict)."""
    if args.fit and args.predict:
        raise UserError("--fit and --predict are separate steps: fit first, then --predict --fit-file FILE")
    for flag in ("threads", "reps", "samples"):
        _positive(getattr(args, flag), f"--{flag}")
    if args.warmup < 0 or args.warmup_s < 0 or args.measure_s < 0:
        raise UserError("--warmup, --warmup-s and --measure-s: expected zero or more")
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.fit:
        return _fit(args)
    if args.predict:
        return _predict(args)
    return _profile(args)


# --- profile -----------------------------------------------------------------------------------


def _profile(args: argparse.Namespace) -> int:
    if not args.model:
        raise UserError("cascade profile needs --model NAME (or --fit to fit the latency predictor)")
    if not args.json:
        raise UserError("cascade profile needs --json FILE for the profile")
    batches = parse_batches(args.batch, (1, 8, 32))
    target = load_model(args.model)
    node = node_identity()
    out = Path(args.json)
    with _bar(profile_steps(target.model, batches), f"profile {target.name}") as bar:
        profile = profile_model(target, node, batches, _effort(args), args.command_line, lambda: bar.update())
    save_profile(profile, out)
    print(format_profile(profile))
    print(f"profile written: {out}")
    if args.influx_url:
        node_name = args.node or socket.gethostname()
        written = write_points(args.influx_url, args.influx_db, profile_points(profile, node_name))
        print(f"InfluxDB {args.influx_url} database {args.influx_db}: {written} points (measurement 'profile')")
    return 0


def _in_pass(entry: dict[str, Any]) -> str:
    """An entry's ``in_pass_median_ms`` in a 9-wide column (blank in profiles written before it was measured)."""
    value = entry.get("in_pass_median_ms")
    return f"{value:9.3f}" if isinstance(value, (int, float)) else " " * 9


def format_profile(profile: dict[str, Any]) -> str:
    """A terminal table of a profile."""
    node, model, settings = profile["node"], profile["model"], profile["settings"]
    lines = [
        f"{model['name']} ({model['source']}) on {node['hostname']}: {node['cpu_model']}, "
        f"{node['cores']} cores, torch {node['torch_version']} with {node['torch_threads']} threads",
    ]
    if not model["trained"]:
        lines.append("  untrained weights: latency as trained, accuracy meaningless (no shipped checkpoint)")
    busy = max((v for v in (settings.get("other_cores_before"), settings.get("other_cores_during")) if v), default=0)
    if busy > BUSY_WARNING:
        lines.append(f"  warning: other processes kept {busy:.2f} cores busy: figures may be high and noisy")
    host = unsteady(settings.get("host_speed", []))
    if host:
        lines.append(f"  warning: {host}")
    ratios = []
    for b_index, batch in enumerate(settings["batches"]):
        lines += [
            "",
            f"batch {batch}: stage     MACs/img  out bytes/img   median ms    p95 ms   in pass"
            "   exit median   in pass   repeat",
        ]
        for stage in profile["stages"]:
            lat = stage["latency"][b_index]
            head = stage["exit"]
            head_lat = head["latency"][b_index] if head else {}
            exit_text = f"{head_lat['median_ms']:10.3f} {_in_pass(head_lat)}" if head else " " * 20
            ratio = lat["repeat_median_ms"] / lat["median_ms"] if lat["median_ms"] > 0 else math.nan
            ratios.append(ratio)
            lines.append(
                f"         {stage['stage']:>5} {stage['macs'] / 1e6:11.2f}M {stage['output_bytes']:>13} "
                f"{lat['median_ms']:11.3f} {lat['p95_ms']:9.3f} {_in_pass(lat)}    {exit_text}   {ratio:5.2f}x"
            )
        whole = profile["whole_model"][b_index]
        lines.append(
            f"         whole model (every exit)          {whole['median_ms']:11.3f} {whole['p95_ms']:9.3f}"
            f" {_in_pass(whole)}"
        )
    lines.append("\nin pass: each part timed inside whole passes, where it runs; the median alone keeps more in cache")
    worst = max((abs(r - 1) for r in ratios if math.isfinite(r)), default=0.0)
    verdict = "within" if worst <= REPEAT_TARGET else "OUTSIDE"
    lines.append(
        f"\nrepeat: each stage measured twice; medians differ by at most {100 * worst:.1f}% "
        f"({verdict} the {100 * REPEAT_TARGET:.0f}% target)"
    )
    return "\n".join(lines)


# --- fit ---------------------------------------------------------------------------------------


def _validation_models(args: argparse.Namespace) -> list[str]:
    if not args.model:
        return list(ZOO)
    names = [n.strip() for n in args.model.split(",") if n.strip()]
    if not names:
        raise UserError(f"--model {args.model!r}: expected one or more model names separated by commas")
    return names


def _fit(args: argparse.Namespace) -> int:
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

    with _bar(len(jobs) * sampling.PASSES, "time layer shapes and models") as bar:

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
    with _bar(len(SIZES_MIB), "time memory reads") as bar:
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


# --- predict -----------------------------------------------------------------------------------


def _predict(args: argparse.Namespace) -> int:
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
            measured = measure_now(target.model, batch, _effort(args))
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
