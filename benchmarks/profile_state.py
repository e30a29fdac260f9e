"""How faithful the fit's measurement state is: each layer of a model timed inside it, and alone.

Run: ``make bench`` or ``.venv/bin/python -m benchmarks.profile_state [MODEL ...]``. Every layer
call of a model's forward pass (batch 1, channels-last, every exit computed) is timed three ways:
inside the model (a timer around each call, 20 passes, median per call: the baseline), alone after
the fit's 8 MiB cache flush, and alone after the flush with a block of the output's size written
and freed (what ``cascade profile --fit`` does, :meth:`CacheFlush.then_warm`). Printed per model:
the three sums and each alone-sum over the in-model sum (timed before and after the layers alone,
the mean kept; both are printed, and when they differ by more than a few percent the host was
not quiet). The fit prices a model as the sum of its layers timed alone, so the closer that
ratio is to 1, the less a model's prediction inherits from the measurement.
"""

from __future__ import annotations

import statistics
import sys
from functools import partial

import torch

from agents.allocator import keep_freed_memory
from agents.evaluation.latency import timed_calls
from agents.profiling.inside import layer_times
from agents.profiling.loading import load_model
from agents.profiling.node import OtherLoad
from agents.profiling.recording import record_calls
from agents.profiling.sampling import HOT, CacheFlush, before_each_call

MODELS = ("device-small", "mobilenet_v2", "resnet18")
REPS = 15


def main(names: list[str]) -> None:
    keep_freed_memory()  # as the cascade command does at start
    others = OtherLoad()
    flush = CacheFlush()
    print("profile_state (batch 1): sum of a model's layers, timed inside it and alone; alone / inside")
    print(f"  {'model':<14} {'layers':>6} {'inside':>9} {'flush':>9} {'ratio':>6} {'+warm out':>10} {'ratio':>6}")
    for name in names:
        model = load_model(name).model
        x = model.example_input(1).contiguous(memory_format=torch.channels_last)
        forward = partial(model, x)
        before = sum(ms for _, ms in layer_times(forward))
        rec, calls = record_calls(forward)
        cold = warm = 0.0
        with torch.inference_mode():
            for layer, call in zip(rec.layers, calls, strict=True):
                hot = layer.type in HOT  # timed without a flush, as the fit times them
                cold += statistics.median(timed_calls(call, REPS, 2, between=None if hot else flush))
                between = before_each_call(layer.type, call, flush)  # as the fit times it
                warm += statistics.median(timed_calls(call, REPS, 2, between=between))
        after = sum(ms for _, ms in layer_times(forward))
        inside = (before + after) / 2  # timed before and after the layers alone: slow drift of the host cancels
        print(
            f"  {name:<14} {len(calls):>6} {inside:7.3f}ms {cold:7.3f}ms {cold / inside:6.2f}"
            f" {warm:8.3f}ms {warm / inside:6.2f}   (inside: {before:.3f} before, {after:.3f} after)"
        )
    print(f"  other processes kept {others.cores() or 0.0:.2f} cores busy meanwhile")


if __name__ == "__main__":
    main(sys.argv[1:] or list(MODELS))
