"""``cascade eval``: per-exit accuracy and ECE, per-stage latency, the offline cascade curve; table, JSON, plot."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import numpy as np
import torch

from agents.datasets import ImageSet, load_image_set
from agents.errors import UserError
from agents.evaluation.curve import CurvePoint, calibrated_probs, cascade_curve
from agents.evaluation.latency import stage_latency
from agents.models.calibration import expected_calibration_error
from agents.models.checkpoint import load_checkpoint, temperatures
from agents.models.inference import exit_logits
from agents.models.staged import StagedModel
from agents.models.stats import model_stats


def limit_images(data: ImageSet, limit: int | None, seed: int = 0) -> ImageSet:
    """The first ``limit`` images of a seeded shuffle (all of them, in order, without a limit)."""
    if limit is not None and limit < 1:
        # A negative count would slice from the end: --limit -5 evaluated all but five images.
        raise UserError(f"--limit must be a positive integer, got {limit}")
    if limit is None or limit >= len(data):
        return data
    pick = np.random.default_rng(seed).permutation(len(data))[:limit]
    return data.subset(np.sort(pick))


def _load(ref: str, data: ImageSet) -> tuple[StagedModel, dict[str, Any], list[torch.Tensor]]:
    model, meta = load_checkpoint(ref)
    if tuple(meta["classes"]) != data.classes:
        raise UserError(
            f"{data.source}: classes {list(data.classes)} differ from checkpoint {ref!r}'s {meta['classes']}"
        )
    probs = calibrated_probs(exit_logits(model, data.images), temperatures(meta, model.num_exits))
    return model, meta, probs


def evaluate(model_ref: str, data: ImageSet, cascade_ref: str | None = None, latency: bool = True) -> dict[str, Any]:
    """Everything ``cascade eval`` reports, as a JSON-ready dict."""
    model, meta, probs = _load(model_ref, data)
    labels = torch.as_tensor(data.labels)
    exits = []
    for i, p in enumerate(probs):
        exits.append(
            {
                "index": i,
                "stage": model.exit_after[i],
                "accuracy": round(float((p.argmax(1) == labels).float().mean()), 6),
                "ece": round(expected_calibration_error(p, labels), 6),
            }
        )
    stats = model_stats(model)
    result: dict[str, Any] = {
        "model": model.name,
        "checkpoint": meta["_path"],
        "images": len(data),
        "data": data.source,
        "exits": exits,
        "stages": [
            {"stage": k, "macs": stats.stage_macs[k], "output_bytes": stats.split_bytes[k + 1]}
            for k in range(model.num_stages)
        ],
    }
    curve_probs = probs
    if cascade_ref:
        second, _, second_probs = _load(cascade_ref, data)
        curve_probs = [*probs, second_probs[-1]]
        result["cascade"] = {"first": model.name, "second": second.name}
        result["second_accuracy"] = round(float((second_probs[-1].argmax(1) == labels).float().mean()), 6)
    result["curve"] = [vars(p) for p in cascade_curve(curve_probs, labels)]
    if latency:
        result["latency_ms"] = {
            f"batch_{b}": [
                {"stage": s.stage, "median": round(s.median_ms, 4), "p95": round(s.p95_ms, 4)}
                for s in stage_latency(model, b)
            ]
            for b in (1, 32)
        }
        result["latency_threads"] = torch.get_num_threads()
    return result


def format_table(result: dict[str, Any]) -> str:
    """A terminal table of exits, stages and the cascade curve."""
    lines = [f"model {result['model']} on {result['images']} images ({result['data']})", ""]
    lines.append("exit  stage  accuracy    ECE")
    for e in result["exits"]:
        lines.append(f"{e['index']:>4}  {e['stage']:>5}  {100 * e['accuracy']:7.2f}%  {100 * e['ece']:5.2f}%")
    if "latency_ms" in result:
        lines += [
            "",
            f"stage      MACs  out bytes  batch-1 ms  batch-32 ms   (torch threads {result['latency_threads']})",
        ]
        b1, b32 = result["latency_ms"]["batch_1"], result["latency_ms"]["batch_32"]
        for s, l1, l32 in zip(result["stages"], b1, b32, strict=True):
            cost = f"{s['stage']:>5} {s['macs'] / 1e6:8.2f}M {s['output_bytes']:>10}"
            lines.append(f"{cost} {l1['median']:11.3f} {l32['median']:12.3f}")
        lines.append(f"whole  batch 1: {sum(x['median'] for x in b1):.3f} ms")
    header = "  ".join(f"exit{i}" for i in range(len(result["curve"][0]["exit_fraction"])))
    if "cascade" in result:
        header += "  (last = " + result["cascade"]["second"] + ")"
    lines += ["", f"threshold  accuracy  {header}"]
    for p in result["curve"]:
        fr = "  ".join(f"{100 * f:5.1f}" for f in p["exit_fraction"])
        lines.append(f"{p['threshold']:9.3f}  {100 * p['accuracy']:7.2f}%  {fr}")
    return "\n".join(lines)


def plot_curve(result: dict[str, Any], path: Path) -> None:
    """PNG: accuracy against the share of images that leave before the last exit."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    pts = [CurvePoint(**p) for p in result["curve"]]
    early = [1 - p.exit_fraction[-1] for p in pts]
    acc = [100 * p.accuracy for p in pts]
    fig, ax = plt.subplots(figsize=(6, 4.2), dpi=120)
    ax.plot(early, acc, marker="o", ms=3)
    for p, x, y in zip(pts, early, acc, strict=True):
        if p.threshold in (0.5, 0.8, 0.9, 0.95, 0.99):
            ax.annotate(f"t={p.threshold}", (x, y), textcoords="offset points", xytext=(4, -10), fontsize=7)
    if "cascade" in result:
        c = result["cascade"]
        ax.axhline(100 * result["second_accuracy"], color="grey", ls="--", lw=1, label=f"{c['second']} alone")
        ax.set_xlabel(f"fraction answered by {c['first']}")
        ax.set_title(f"cascade {c['first']} → {c['second']} ({result['images']} images)")
        ax.legend(loc="lower left")
    else:
        ax.set_xlabel("fraction leaving at an early exit")
        ax.set_title(f"{result['model']} early exits ({result['images']} images)")
    ax.set_ylabel("top-1 accuracy (%)")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def run_eval(args: argparse.Namespace) -> int:
    """The ``cascade eval`` command."""
    # Checked before the data loads: a bad flag should not cost a decode of 50,000 images first.
    for flag, value in (("--limit", args.limit), ("--threads", args.threads)):
        if value is not None and value < 1:
            raise UserError(f"{flag} must be a positive integer, got {value}")
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    data = limit_images(load_image_set(args.data), args.limit)
    if args.split:
        return _run_split(args, data)
    first, second = args.model, None
    if args.cascade:
        parts = [p.strip() for p in args.cascade.split(",")]
        if len(parts) != 2 or not all(parts):
            raise UserError(f"--cascade {args.cascade!r}: expected two checkpoints, 'FIRST,SECOND'")
        first, second = parts
    if not first:
        raise UserError("give --model NAME or --cascade FIRST,SECOND")
    result = evaluate(first, data, second, latency=not args.no_latency)
    print(format_table(result))
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
        print(f"\nJSON written: {args.json}")
    plot = args.plot or (str(Path(args.json).with_suffix(".png")) if args.json else None)
    if plot:
        plot_curve(result, Path(plot))
        print(f"plot written: {plot}")
    return 0


def _run_split(args: argparse.Namespace, data: ImageSet) -> int:
    from agents.evaluation.split import format_split_table, split_report

    if not args.model or args.cascade:
        raise UserError("--split takes one model: --model NAME (not --cascade)")
    codecs = [c.strip() for c in args.codecs.split(",")] if args.codecs else None
    result = split_report(args.model, data, codecs)
    print(format_split_table(result))
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
        print(f"\nJSON written: {args.json}")
    return 0
