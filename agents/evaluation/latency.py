"""Per-stage latency of a staged model on this machine (warm-up, then the median of repetitions)."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch

from agents.models.staged import StagedModel


@dataclass(frozen=True)
class StageLatency:
    """Median and p95 milliseconds of one stage (its exit head included) at one batch size."""

    stage: int
    batch: int
    median_ms: float
    p95_ms: float


def _time_ms(fn: Callable[[], object], reps: int) -> list[float]:
    out = []
    for _ in range(reps):
        t0 = time.perf_counter_ns()
        fn()
        out.append((time.perf_counter_ns() - t0) / 1e6)
    return out


@torch.inference_mode()
def stage_latency(model: StagedModel, batch: int, reps: int = 30, warmup: int = 5) -> list[StageLatency]:
    """Time every stage, each on the real activation of the previous one, exit heads included."""
    model.eval()
    x = model.example_input(batch).contiguous(memory_format=torch.channels_last)
    result = []
    for k in range(model.num_stages):

        def step(k: int = k, x: torch.Tensor = x) -> torch.Tensor:
            return model.run(x, k, k + 1).activation

        for _ in range(warmup):
            step()
        samples = sorted(_time_ms(step, reps))
        result.append(StageLatency(k, batch, statistics.median(samples), samples[int(0.95 * (len(samples) - 1))]))
        x = step()
    return result


@torch.inference_mode()
def whole_model_latency(model: StagedModel, batch: int = 1, reps: int = 50, warmup: int = 10) -> float:
    """Median milliseconds of the whole model, every exit computed, at ``batch``."""
    model.eval()
    x = model.example_input(batch).contiguous(memory_format=torch.channels_last)
    for _ in range(warmup):
        model(x)
    return statistics.median(_time_ms(lambda: model(x), reps))
