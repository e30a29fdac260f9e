"""Per-stage latency of a staged model on this machine (warm-up, then the median of repetitions).

The timing primitive, :func:`time_call`, also times single layers for the latency
predictor (:mod:`agents.profiling`), so stages and layers are measured alike.
"""

from __future__ import annotations

import math
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch

from agents.models.staged import StagedModel


@dataclass(frozen=True)
class StageLatency:
    """Median and p95 milliseconds of one stage (its exit head included) at one batch size."""

    stage: int
    batch: int
    median_ms: float
    p95_ms: float


@dataclass(frozen=True)
class Timing:
    """Median and p95 milliseconds of repeated calls, and how many were timed.

    Timed in rounds (:func:`time_in_rounds`), ``rounds_ms`` holds each round's median.
    """

    median_ms: float
    p95_ms: float
    reps: int
    rounds_ms: tuple[float, ...] = field(default=(), compare=False)

    @property
    def quiet_ms(self) -> float:
        """:func:`quiet_level` of the round medians (the median without rounds)."""
        return quiet_level(self.rounds_ms) if self.rounds_ms else self.median_ms


def quiet_level(medians: Sequence[float]) -> float:
    """The mean of the two lowest of ``medians`` (of rounds or passes): what a call costs when the host leaves it alone.

    Noise from a virtual machine's host only ever adds time, and a slow spell can last longer
    than a round, so the median of the rounds can be a slow one; the two quietest rounds agree
    on the undisturbed level. Their mean, not the lowest alone, which a single lucky round
    drags down. ValueError when empty.
    """
    if not medians:
        raise ValueError("no medians to take the quiet level of")
    low = sorted(medians)[:2]
    return sum(low) / len(low)


def _time_ms(
    fn: Callable[[], object], reps: int, between: Callable[[], object] | None = None, min_s: float = 0.0
) -> list[float]:
    out: list[float] = []
    start = time.perf_counter()
    while len(out) < reps or (len(out) < MAX_REPS and time.perf_counter() - start < min_s):
        if between is not None:
            between()
        t0 = time.perf_counter_ns()
        fn()
        out.append((time.perf_counter_ns() - t0) / 1e6)
    return out


MAX_REPS = 20000


def p95(samples: list[float]) -> float:
    """The 95th percentile (nearest rank below) of ``samples``."""
    ordered = sorted(samples)
    return ordered[int(0.95 * (len(ordered) - 1))]


def time_call(
    fn: Callable[[], object],
    reps: int = 30,
    warmup: int = 5,
    between: Callable[[], object] | None = None,
    warmup_s: float = 0.0,
    min_s: float = 0.0,
) -> Timing:
    """Call ``fn`` ``warmup`` times untimed, then time ``reps`` calls one by one: their median and p95.

    With ``warmup_s``, warm-up goes on until that many seconds have passed too (at most 1000 calls):
    a fixed count warms a 50 µs stage for a fraction of a millisecond, too short to settle. With
    ``min_s``, timing goes on until that many seconds have passed too (at most :data:`MAX_REPS`
    calls): the median of 30 calls of a 50 µs stage spans 1.5 ms, short enough for one burst of
    noise on the host to move it; spread over a third of a second, it does not.
    ``between``, when given, runs untimed before each timed call (to evict caches, say, so a layer
    is timed as cold as it runs inside a model rather than hot from its own previous call).
    """
    return timing_of(timed_calls(fn, reps, warmup, between, warmup_s, min_s))


def timing_of(samples: Sequence[float]) -> Timing:
    """The median and p95 of timed calls' milliseconds, and how many there were."""
    return Timing(statistics.median(samples), p95(list(samples)), len(samples))


def timed_calls(
    fn: Callable[[], object],
    reps: int,
    warmup: int,
    between: Callable[[], object] | None = None,
    warmup_s: float = 0.0,
    min_s: float = 0.0,
) -> list[float]:
    """The milliseconds of each timed call of :func:`time_call` (same arguments), in order."""
    start = time.perf_counter()
    calls = 0
    while calls < warmup or (calls < 1000 and time.perf_counter() - start < warmup_s):
        fn()
        calls += 1
    return _time_ms(fn, max(1, reps), between, min_s)


#: A round of :func:`stage_latency` is measured again (at most :data:`ROUND_RETRIES` times) when other
#: processes kept more than this many cores busy during it (``/proc/stat``, steal time included).
BUSY_CORES = 0.5
ROUND_RETRIES = 2


def _busy_meter() -> Callable[[], float | None]:
    """Starts a window; the callable gives how many cores other processes used in it (None off Linux)."""
    from agents.profiling.node import OtherLoad  # the profiler's own meter; imported late (no cycle at import)

    meter = OtherLoad()
    return meter.cores


@torch.inference_mode()
def stage_latency(
    model: StagedModel,
    batch: int,
    reps: int = 30,
    warmup: int = 5,
    exits: bool = True,
    on_stage: Callable[[], object] | None = None,
    warmup_s: float = 0.0,
    min_s: float = 0.0,
    rounds: int = 1,
) -> list[StageLatency]:
    """Time every stage, each on the real activation of the previous one; with ``exits``, exit heads included.

    ``on_stage`` is called after each stage is timed (a progress bar's update).

    With ``rounds`` > 1 (the profiler's way; ``cascade eval`` uses one), the stages are timed by
    :func:`time_in_rounds`: in that many rounds that take turns with the other stages, each stage's
    median the median of its rounds' medians.
    """
    model.eval()
    x = model.example_input(batch).contiguous(memory_format=torch.channels_last)
    steps: list[Callable[[], torch.Tensor]] = []
    result = []
    for k in range(model.num_stages):

        def step(k: int = k, x: torch.Tensor = x) -> torch.Tensor:
            return model.run(x, k, k + 1, exits=exits).activation

        steps.append(step)
        if rounds <= 1:
            t = time_call(step, reps, warmup, warmup_s=warmup_s, min_s=min_s)
            result.append(StageLatency(k, batch, t.median_ms, t.p95_ms))
            if on_stage is not None:
                on_stage()
        x = step()
    if rounds <= 1:
        return result
    timings = time_in_rounds(steps, rounds, reps, warmup, warmup_s, min_s, on_stage)
    return [StageLatency(k, batch, t.median_ms, t.p95_ms) for k, t in enumerate(timings)]


class RoundTimer:
    """Times ``calls`` one round at a time, taking turns (1, 2, …), so rounds can be spread over other work.

    Each round of a call has ``reps`` timed calls and ``min_s`` seconds after ``warmup`` calls (the
    first round also ``warmup_s`` seconds, later ones a quarter of it). A round during which other
    processes kept more than :data:`BUSY_CORES` cores busy is timed again (at most
    :data:`ROUND_RETRIES` times). ``on_round`` is called after each call's round.
    """

    def __init__(
        self,
        calls: Sequence[Callable[[], object]],
        reps: int,
        warmup: int = 5,
        warmup_s: float = 0.0,
        min_s: float = 0.0,
        on_round: Callable[[], object] | None = None,
    ) -> None:
        self.calls = list(calls)
        self.reps, self.warmup, self.warmup_s, self.min_s = reps, warmup, warmup_s, min_s
        self.on_round = on_round
        self.medians: list[list[float]] = [[] for _ in self.calls]
        self.pooled: list[list[float]] = [[] for _ in self.calls]

    def round(self) -> None:
        """Time every call once more, in turn."""
        first = not self.medians or not self.medians[0]
        for k, call in enumerate(self.calls):
            for attempt in range(ROUND_RETRIES + 1):
                busy = _busy_meter()
                samples = timed_calls(
                    call,
                    self.reps,
                    self.warmup,
                    warmup_s=self.warmup_s if first else self.warmup_s / 4,
                    min_s=self.min_s,
                )
                others = busy()
                if others is None or others <= BUSY_CORES or attempt == ROUND_RETRIES:
                    break
            self.medians[k].append(statistics.median(samples))
            self.pooled[k] += samples
            if self.on_round is not None:
                self.on_round()

    def timings(self) -> list[Timing]:
        """Each call's median of round medians, p95 over all its timed calls, and each round's median."""
        return [
            Timing(statistics.median(m), p95(s), len(s), tuple(m))
            for m, s in zip(self.medians, self.pooled, strict=True)
        ]


def time_in_rounds(
    calls: Sequence[Callable[[], object]],
    rounds: int,
    reps: int = 30,
    warmup: int = 5,
    warmup_s: float = 0.0,
    min_s: float = 0.0,
    on_done: Callable[[], object] | None = None,
) -> list[Timing]:
    """Time ``calls`` in ``rounds`` rounds taking turns (1, 2, …, then 1, 2, …): each one's median of round medians.

    Each round of a call has a ``rounds``-th of ``reps`` and ``min_s`` (see :class:`RoundTimer`). A
    burst of noise on the host then spoils one round rather than the whole measurement, and is
    outvoted. The p95 is over all timed calls of the kept rounds. ``on_done`` is called once per
    call, after its last round.
    """
    rounds = max(1, rounds)
    done = [0]

    def counted() -> None:
        done[0] += 1
        if on_done is not None and done[0] > (rounds - 1) * len(calls):
            on_done()

    timer = RoundTimer(calls, math.ceil(reps / rounds), warmup, warmup_s, min_s / rounds, counted)
    for _ in range(rounds):
        timer.round()
    return timer.timings()


@torch.inference_mode()
def exit_latency(
    model: StagedModel,
    batch: int,
    reps: int = 30,
    warmup: int = 5,
    on_exit: Callable[[], object] | None = None,
    warmup_s: float = 0.0,
    min_s: float = 0.0,
) -> dict[int, StageLatency]:
    """Time every exit head alone on the real output of its stage: stage index → latency of the head there."""
    model.eval()
    x = model.example_input(batch).contiguous(memory_format=torch.channels_last)
    result: dict[int, StageLatency] = {}
    for k in range(model.num_stages):
        x = model.run(x, k, k + 1, exits=False).activation
        index = model.exit_at_stage(k)
        if index is None:
            continue
        head = model.heads[index]

        def call(head: torch.nn.Module = head, x: torch.Tensor = x) -> torch.Tensor:
            out: torch.Tensor = head(x)
            return out

        t = time_call(call, reps, warmup, warmup_s=warmup_s, min_s=min_s)
        result[k] = StageLatency(k, batch, t.median_ms, t.p95_ms)
        if on_exit is not None:
            on_exit()
    return result


@torch.inference_mode()
def whole_model_latency(model: StagedModel, batch: int = 1, reps: int = 50, warmup: int = 10) -> float:
    """Median milliseconds of the whole model, every exit computed, at ``batch``."""
    return whole_model_timing(model, batch, reps, warmup).median_ms


def whole_model_call(model: StagedModel, batch: int = 1) -> Callable[[], object]:
    """One forward pass of the whole model (every exit computed) at ``batch``, on channels-last zeros, to time."""
    model.eval()
    x = model.example_input(batch).contiguous(memory_format=torch.channels_last)
    return lambda: model(x)


@torch.inference_mode()
def whole_model_timing(
    model: StagedModel, batch: int = 1, reps: int = 50, warmup: int = 10, warmup_s: float = 0.0, min_s: float = 0.0
) -> Timing:
    """Median and p95 milliseconds of the whole model, every exit computed, at ``batch``."""
    return time_call(whole_model_call(model, batch), reps, warmup, warmup_s=warmup_s, min_s=min_s)


@dataclass(frozen=True)
class PassLatency:
    """Each stage and exit head of a model timed where it runs, inside whole passes (every exit computed).

    ``heads`` is keyed by the stage an exit head reads; ``passes`` are the whole passes, each
    timed as the sum of its parts.
    """

    stages: list[Timing]
    heads: dict[int, Timing]
    passes: Timing


@torch.inference_mode()
def in_pass_latency(
    model: StagedModel, batch: int = 1, reps: int = 30, warmup: int = 5, warmup_s: float = 0.0, min_s: float = 0.0
) -> PassLatency:
    """Time every stage and exit head inside whole passes, a clock read between each part and the next.

    A part timed alone over and over keeps its weights and activations in cache; inside a pass
    the other parts have evicted them since its last call, as on a node that runs the model. Here
    every zoo model took 6–21 % longer whole than its stages and heads timed alone, summed, at
    batch 1 (docs/profiling.md). Warm-up and repetitions are as :func:`time_call`'s, counted in passes.
    """
    model.eval()
    x = model.example_input(batch).contiguous(memory_format=torch.channels_last)
    heads = {k: model.heads[i] for k in range(model.num_stages) if (i := model.exit_at_stage(k)) is not None}
    stage_ms: list[list[float]] = [[] for _ in range(model.num_stages)]
    head_ms: dict[int, list[float]] = {k: [] for k in heads}

    def one_pass() -> None:
        h = x
        clock = time.perf_counter_ns()
        for k, stage in enumerate(model.stages):
            h = stage(h)
            now = time.perf_counter_ns()
            stage_ms[k].append((now - clock) / 1e6)
            clock = now
            if k in heads:
                heads[k](h)
                now = time.perf_counter_ns()
                head_ms[k].append((now - clock) / 1e6)
                clock = now

    passes = timed_calls(one_pass, reps, warmup, warmup_s=warmup_s, min_s=min_s)
    n = len(passes)  # the parts' lists also hold the warm-up passes: keep the timed ones
    return PassLatency(
        [timing_of(ms[-n:]) for ms in stage_ms],
        {k: timing_of(ms[-n:]) for k, ms in head_ms.items()},
        timing_of(passes),
    )
