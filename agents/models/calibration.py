"""Temperature scaling and expected calibration error (Guo et al., 2017)."""

from __future__ import annotations

import itertools

import numpy as np
import torch
from torch import Tensor


def expected_calibration_error(probs: Tensor, labels: Tensor, bins: int = 15) -> float:
    """ECE with equal-width confidence bins: Σ |accuracy − confidence| weighted by bin share, 0–1."""
    conf, pred = probs.max(dim=1)
    correct = (pred == labels).float()
    edges = torch.linspace(0, 1, bins + 1)
    ece = torch.zeros(())
    for lo, hi in itertools.pairwise(edges):
        mask = (conf > lo) & (conf <= hi)
        if mask.any():
            ece += mask.float().mean() * (correct[mask].mean() - conf[mask].mean()).abs()
    return float(ece)


def fit_temperature(logits: Tensor, labels: Tensor) -> float:
    """The temperature T minimising the NLL of ``softmax(logits / T)``.

    A dense log-spaced grid then a golden-section refinement: NLL is unimodal in
    log T, and this never diverges the way LBFGS can on over-confident logits.
    """

    def nll(log_t: float) -> float:
        return float(torch.nn.functional.cross_entropy(logits / float(np.exp(log_t)), labels))

    grid = np.linspace(np.log(0.05), np.log(20.0), 120)
    best = int(np.argmin([nll(v) for v in grid]))
    lo, hi = grid[max(best - 1, 0)], grid[min(best + 1, len(grid) - 1)]
    ratio = (np.sqrt(5) - 1) / 2
    for _ in range(40):
        a, b = hi - ratio * (hi - lo), lo + ratio * (hi - lo)
        if nll(a) < nll(b):
            hi = b
        else:
            lo = a
    return float(np.exp((lo + hi) / 2))
