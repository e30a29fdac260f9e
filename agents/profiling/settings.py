"""What the options of ``cascade profile`` turn into, shared by its three modes: the effort and the progress bars."""

from __future__ import annotations

import argparse
from typing import Any

from tqdm import tqdm

from agents.profiling.stages import Effort


def effort_of(args: argparse.Namespace) -> Effort:
    """The measurement effort the options ask for (``--reps`` here means stages and models, not --fit's layers)."""
    return Effort(args.reps or Effort().reps, args.warmup, args.warmup_s, args.measure_s)


def progress_bar(total: int, desc: str) -> tqdm[Any]:
    """A progress bar of ``total`` steps that leaves nothing behind when done (and stays off without a terminal)."""
    return tqdm(total=total, desc=desc, unit="step", leave=False, disable=None)
