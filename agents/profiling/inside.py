"""Each priced layer's time inside a model's forward pass, and the prediction beside it, per layer type.

The fit times every synthetic layer alone after a cache flush; inside a model a layer
finds what the layers before it left in the caches. Timing each call where it runs
shows, per type, whether a model's misprediction comes from the regression or from
that state: ``cascade profile --predict`` prints it when it measures on this node.

A timer around each call (a :class:`~torch.overrides.TorchFunctionMode`) adds a few
microseconds of Python *between* calls, not inside them; what the pass spends outside
its priced layers (``nn.Module`` calls, Python glue, unpriced functions) is the whole
model's time less the layers' sum.
"""

from __future__ import annotations

import statistics
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from agents.profiling.layers import Layer
from agents.profiling.predictor import Predictor
from agents.profiling.recording import record_timed


def layer_times(fn: Callable[[], object], passes: int = 20, warmup: int = 5) -> list[tuple[Layer, float]]:
    """Every priced layer ``fn`` runs, in call order, with its median milliseconds over ``passes`` timed passes.

    ``warmup`` untimed passes come first. ValueError when the passes run different layers
    (a forward pass that branches on its data cannot be timed layer by layer).
    """
    with torch.inference_mode():
        for _ in range(max(0, warmup)):
            fn()
    rec, per_pass = record_timed(fn, passes)
    return [(layer, statistics.median(ms)) for layer, ms in zip(rec.layers, zip(*per_pass, strict=True), strict=True)]


@dataclass(frozen=True)
class TypeTimes:
    """One layer type inside a model: how many calls, predicted and measured milliseconds in all."""

    type: str
    calls: int
    predicted_ms: float
    measured_ms: float

    @property
    def error(self) -> float:
        """Predicted over measured, less one (0.1 = 10 % high)."""
        return self.predicted_ms / self.measured_ms - 1 if self.measured_ms > 0 else float("nan")

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready dict."""
        return {
            "type": self.type,
            "calls": self.calls,
            "predicted_ms": round(self.predicted_ms, 4),
            "measured_ms": round(self.measured_ms, 4),
            "error": round(self.error, 4),
        }


def by_type(predictor: Predictor, times: Sequence[tuple[Layer, float]]) -> list[TypeTimes]:
    """Per layer type, the predicted and the in-model milliseconds summed over its calls, the costliest first."""
    sums: dict[str, list[float]] = {}
    for layer, ms in times:
        entry = sums.setdefault(layer.type, [0.0, 0.0, 0.0])
        entry[0] += 1
        entry[1] += predictor.predict_layer(layer)
        entry[2] += ms
    rows = [TypeTimes(kind, int(n), predicted, measured) for kind, (n, predicted, measured) in sums.items()]
    return sorted(rows, key=lambda r: -r.measured_ms)
