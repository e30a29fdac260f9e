"""``cascade profile``: measure a model per stage, fit the per-layer latency predictor, or check its predictions."""

from __future__ import annotations

import argparse
import math
import socket
from pathlib import Path
from typing import Any

import torch

from agents.errors import UserError
from agents.profiling.export import profile_points, write_points
from agents.profiling.fit_command import run_fit
from agents.profiling.loading import load_model
from agents.profiling.node import node_identity
from agents.profiling.options import BUSY_WARNING, REPEAT_TARGET, parse_batches
from agents.profiling.predict_command import run_predict
from agents.profiling.settings import effort_of, progress_bar
from agents.profiling.stages import profile_model, profile_steps, save_profile
from agents.profiling.steadiness import unsteady


def _positive(value: int | None, flag: str) -> None:
    if value is not None and value < 1:
        raise UserError(f"{flag} {value}: expected a positive integer")


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
        return run_fit(args)
    if args.predict:
        return run_predict(args)
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
    with progress_bar(profile_steps(target.model, batches), f"profile {target.name}") as bar:
        profile = profile_model(target, node, batches, effort_of(args), args.command_line, lambda: bar.update())
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
