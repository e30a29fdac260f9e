"""How repeatable ``cascade profile`` is: every stage of the shipped models measured twice in one run.

Run: ``make bench`` or ``.venv/bin/python benchmarks/profile_repeatability.py``. With the
profiler's own settings (at least 30 timed repetitions and 0.3 s of timing after at least 5
warm-up calls and 0.2 s of warm-up, split into 3 rounds that take turns across a model's
stages, the median of the round medians kept; channels-last input, batch 1), each model's
stages are timed once, then all of them again; printed is the ratio of the two medians per
stage, with one torch thread and with all cores. The target from the issue: the two medians
within 10 % of each other on a quiet machine. How many cores other processes kept busy is
printed too, and the host-speed meter's verdict between the models: other work on the machine, or
on the host's other guests, moves the figures more than anything in the measurement. On a host
that is not steady the verdict is printed, and a FAIL then says that the machine was not quiet.
"""

from __future__ import annotations

import torch

from agents.models.checkpoint import load_checkpoint
from agents.profiling.node import OtherLoad
from agents.profiling.stages import Effort
from agents.profiling.steadiness import SpeedMeter, unsteady

TARGET = 0.10
MODELS = ("device-small", "edge-medium", "cloud-large")


def main() -> None:
    others = OtherLoad()
    speed = SpeedMeter()
    speed.probe()
    effort = Effort()
    default_threads = torch.get_num_threads()
    models = {name: load_checkpoint(name)[0] for name in MODELS}
    deviations: list[float] = []
    print(
        f"profile_repeatability (batch 1, median of >= {effort.reps} calls and {effort.measure_s} s,"
        f" in {effort.rounds} rounds)"
    )
    print("  stage medians, first/second measurement, and their ratio")
    for threads in sorted({1, default_threads}):
        torch.set_num_threads(threads)
        for name, model in models.items():
            first, second = effort.stages(model, 1), effort.stages(model, 1)
            ratios = [b.median_ms / a.median_ms for a, b in zip(first, second, strict=True)]
            deviations += [abs(r - 1) for r in ratios]
            cells = "  ".join(
                f"{a.median_ms:.3f}/{b.median_ms:.3f} {r:4.2f}x" for a, b, r in zip(first, second, ratios, strict=True)
            )
            print(f"  {threads} thread{'s' if threads > 1 else ' '} {name:<13} {cells}")
            speed.probe(0.2)
    torch.set_num_threads(default_threads)
    print(f"  other processes kept {others.cores()} cores busy on average during the run")
    host = unsteady(speed.cores())
    print(f"  warning: {host}" if host else "  the host ran the cores at a steady speed (host-speed meter)")
    worst = max(deviations)
    within = sum(d <= TARGET for d in deviations)
    typical = sorted(deviations)[len(deviations) // 2]
    verdict = "PASS" if worst <= TARGET else "FAIL"
    print(
        f"  {within} of {len(deviations)} stages within {100 * TARGET:.0f}%; typical (median) difference "
        f"{100 * typical:.1f}%, worst {100 * worst:.1f}%  {verdict}"
    )


if __name__ == "__main__":
    main()
