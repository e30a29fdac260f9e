"""The options of ``cascade profile`` (standard library only: building the parser must not import torch)."""

from __future__ import annotations

import argparse
from collections.abc import Sequence

from agents.errors import UserError

#: Targets from the issue, printed beside the figures.
TYPE_MAPE_TARGET = 0.15
MODEL_ERROR_TARGET = 0.10
REPEAT_TARGET = 0.10
#: Cores other processes may keep busy before the figures get a warning.
BUSY_WARNING = 0.2


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The options of ``cascade profile``."""
    p.add_argument("--model", help="shipped checkpoint, checkpoint dir/.json, or zoo architecture (e.g. resnet18)")
    p.add_argument("--json", help="write the profile (or with --fit, the fitted predictor) to this JSON file")
    p.add_argument("--threads", type=int, help="torch threads (default: torch's default, all usable cores)")
    p.add_argument("--batch", help="comma-separated batch sizes (default 1,8,32; with --fit and --predict, 1)")
    p.add_argument("--reps", type=int, help="least timed calls per measurement (default 30; with --fit, 15 per layer)")
    p.add_argument("--warmup", type=int, default=5, help="least untimed calls before timing (default 5)")
    p.add_argument("--warmup-s", type=float, default=0.2, help="least seconds of warm-up per measurement (0.2)")
    p.add_argument("--measure-s", type=float, default=0.3, help="least seconds of timing per measurement (0.3)")
    p.add_argument("--node", help="node name for InfluxDB tags (default: the hostname)")
    p.add_argument("--influx-url", help="also write the profile to this InfluxDB (v1 API), measurement 'profile'")
    p.add_argument("--influx-db", default="cascade", help="database for --influx-url, created if missing (cascade)")
    p.add_argument("--fit", action="store_true", help="time many synthetic layer shapes and fit the latency predictor")
    p.add_argument("--samples", type=int, default=60, help="with --fit: layer shapes per type (default 60)")
    p.add_argument("--seed", type=int, default=0, help="with --fit: seed of the shapes and the held-out split")
    p.add_argument("--predict", action="store_true", help="predicted vs measured latency per stage of --model")
    p.add_argument("--fit-file", help="with --predict: the predictor written by --fit")
    p.add_argument("--profile", help="with --predict: compare with this profile file's medians instead of measuring")


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
