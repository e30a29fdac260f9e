"""Batch-1 latency of the shipped models on one core, and the device model against its 3 ms budget.

Run: ``make bench`` or ``.venv/bin/python benchmarks/model_latency.py``. Prints the
median whole-model latency (all exits computed) at batch 1 with one torch thread, and
each model's cost relative to ``device-small`` measured in the same run.
"""

from __future__ import annotations

import torch

from agents.evaluation.latency import whole_model_latency
from agents.models.checkpoint import load_checkpoint

DEVICE_BUDGET_MS = 3.0


def main() -> None:
    torch.set_num_threads(1)
    results = {}
    for name in ("device-small", "edge-medium", "cloud-large"):
        model, _ = load_checkpoint(name)
        results[name] = whole_model_latency(model, batch=1, reps=200, warmup=20)
    base = results["device-small"]
    print("model_latency (batch 1, 1 torch thread, median of 200)")
    for name, ms in results.items():
        print(f"  {name:<13} {ms:7.3f} ms   {ms / base:5.2f}x device-small")
    verdict = "PASS" if base <= DEVICE_BUDGET_MS else "FAIL"
    print(f"  device-small / 3 ms budget = {base / DEVICE_BUDGET_MS:.2f}  {verdict}")


if __name__ == "__main__":
    main()
