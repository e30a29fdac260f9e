"""The offline cascade curve: for each confidence threshold, where images leave and how accurate the answers are.

This is the oracle the online system is checked against, so the exit rule here is
the one the device applies: take the first exit whose calibrated top-1 probability
reaches the threshold; the last exit of the last model answers whatever is left.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

DEFAULT_THRESHOLDS: tuple[float, ...] = (
    *(round(float(t), 2) for t in np.linspace(0.0, 0.95, 20)),
    0.97,
    0.98,
    0.99,
    0.995,
    0.999,
    1.0,
)


@dataclass(frozen=True)
class CurvePoint:
    """One threshold: the share of images answered at each exit (in order) and the resulting accuracy."""

    threshold: float
    exit_fraction: list[float]
    accuracy: float


def calibrated_probs(logits: list[Tensor], temperatures: Tensor) -> list[Tensor]:
    """Softmax of each exit's logits divided by that exit's temperature (each finite and > 0)."""
    temps = [float(t) for t in temperatures]
    # Zero gives NaN probabilities that no threshold ever passes: a silent 10 % accuracy, not an error.
    if not all(math.isfinite(t) and t > 0 for t in temps):
        raise ValueError(f"temperatures must be finite and > 0, got {temps}")
    return [(lg / t).softmax(dim=1) for lg, t in zip(logits, temps, strict=True)]


def exit_choice(probs: list[Tensor], threshold: float) -> Tensor:
    """Index of the exit each image leaves at: the first confident one, else the last."""
    n = probs[0].shape[0]
    chosen = torch.full((n,), len(probs) - 1, dtype=torch.long)
    pending = torch.ones(n, dtype=torch.bool)
    for i, p in enumerate(probs[:-1]):
        take = pending & (p.max(dim=1).values >= threshold)
        chosen[take] = i
        pending &= ~take
    return chosen


def cascade_curve(
    probs: list[Tensor], labels: Tensor, thresholds: tuple[float, ...] = DEFAULT_THRESHOLDS
) -> list[CurvePoint]:
    """The curve over ``thresholds`` for exits ``probs`` (a second model's final exit may be appended last)."""
    preds = torch.stack([p.argmax(dim=1) for p in probs])
    n = labels.shape[0]
    points = []
    for t in thresholds:
        chosen = exit_choice(probs, t)
        answer = preds[chosen, torch.arange(n)]
        fractions = torch.bincount(chosen, minlength=len(probs)).float() / n
        points.append(
            CurvePoint(
                threshold=float(t),
                exit_fraction=[round(float(f), 6) for f in fractions],
                accuracy=round(float((answer == labels).float().mean()), 6),
            )
        )
    return points
