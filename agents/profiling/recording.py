"""Recording forward passes: every torch function a call runs, classified into layers, counted, timed or kept to replay.

A forward pass is recorded, not parsed: every torch function the model calls passes
through a :class:`~torch.overrides.TorchFunctionMode` while the mode is on (and not the
functions those call: the mode is off inside each call). :func:`record` classifies each
into a layer (:func:`agents.profiling.layers.classify`) and counts the ``nn.Module``
calls; :func:`record_timed` times each layer where it runs; :func:`record_calls` keeps
a call that runs each layer again alone, for replaying it under chosen conditions.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from functools import partial
from typing import Any

import torch
from torch import Tensor, nn
from torch.overrides import TorchFunctionMode

from agents.models.staged import StagedModel
from agents.profiling.dryrun import python_calls
from agents.profiling.layers import Layer, Recording, classify


class _Recorder(TorchFunctionMode):
    """Records the top-level torch functions called while active (the mode is off inside each call).

    With ``is_layer``, whether each call (every one, in order) was a layer; with ``calls``, each
    layer also gets a call that runs it again on copies of its arguments.
    """

    def __init__(
        self,
        recording: Recording,
        is_layer: list[bool] | None = None,
        calls: list[Callable[[], Any]] | None = None,
    ) -> None:
        super().__init__()
        self.recording = recording
        self.is_layer = is_layer
        self.calls = calls

    def __torch_function__(
        self,
        func: Callable[..., Any],
        types: Any,
        args: Sequence[Any] = (),
        kwargs: dict[str, Any] | None = None,
    ) -> Any:
        kwargs = kwargs or {}
        # Copies taken before the call: an in-place layer changes its input.
        replay = partial(func, *_copy(args), **_copy(kwargs)) if self.calls is not None else None
        out = func(*args, **kwargs)
        found = classify(func, args, kwargs, out)
        if self.is_layer is not None:
            self.is_layer.append(isinstance(found, Layer))
        if isinstance(found, Layer):
            self.recording.layers.append(found)
            if self.calls is not None and replay is not None:
                self.calls.append(replay)
        elif found is not None:
            self.recording.unknown[found] = self.recording.unknown.get(found, 0) + 1
        return out


class _Timer(TorchFunctionMode):
    """Times every top-level torch function (milliseconds, in call order), and does nothing else.

    Classifying a call runs tens of µs of Python (its shape features, the convolution's path),
    which leaves the caches colder for the next layer: timed inside :class:`_Recorder`,
    mobilenet_v2's pass took 18.3 ms against 11.0 ms plain on the AMD EPYC guest of 2026-11-30, and
    its layers summed to 10.4 ms; with this timer alone the pass took 13.3 ms and every call 9.6.
    """

    def __init__(self) -> None:
        super().__init__()
        self.ms: list[float] = []

    def __torch_function__(
        self,
        func: Callable[..., Any],
        types: Any,
        args: Sequence[Any] = (),
        kwargs: dict[str, Any] | None = None,
    ) -> Any:
        start = time.perf_counter_ns()
        out = func(*args, **(kwargs or {}))
        self.ms.append((time.perf_counter_ns() - start) / 1e6)
        return out


@contextmanager
def recording() -> Iterator[Recording]:
    """Record every layer run and every nn.Module called inside the ``with`` block."""
    rec = Recording()

    def count(module: nn.Module, inputs: Any) -> None:
        rec.module_calls += 1

    handle = nn.modules.module.register_module_forward_pre_hook(count)
    try:
        with torch.inference_mode(), _Recorder(rec):
            yield rec
    finally:
        handle.remove()


def record(fn: Callable[[], object]) -> Recording:
    """The layers and module calls of one call of ``fn``."""
    with recording() as rec:
        fn()
    return rec


def record_timed(fn: Callable[[], object], passes: int = 1) -> tuple[Recording, list[list[float]]]:
    """The layers of a call of ``fn`` (no module calls counted), and each layer's milliseconds in ``passes`` more calls.

    One call is recorded; the timed ones only read a clock around each torch function
    (:class:`_Timer`), which adds a few µs of Python between the calls, not inside them. ValueError
    when a timed pass runs another number of torch functions than the recorded one (a forward pass
    that branches on its data cannot be timed layer by layer).
    """
    rec, is_layer = Recording(), list[bool]()
    with torch.inference_mode(), _Recorder(rec, is_layer=is_layer):
        fn()
    runs: list[list[float]] = []
    for _ in range(max(1, passes)):
        timer = _Timer()
        with torch.inference_mode(), timer:
            fn()
        if len(timer.ms) != len(is_layer):
            raise ValueError(
                f"the passes ran different numbers of torch functions ({len(is_layer)} recorded, {len(timer.ms)} timed)"
            )
        runs.append([ms for ms, layer in zip(timer.ms, is_layer, strict=True) if layer])
    return rec, runs


def _copy(value: Any) -> Any:
    """Tensors (also inside lists, tuples and dicts) cloned in their memory format; anything else as is."""
    if isinstance(value, Tensor):
        return value.detach().clone(memory_format=torch.preserve_format)
    if isinstance(value, (list, tuple)):
        return type(value)(_copy(v) for v in value)
    if isinstance(value, dict):
        return {k: _copy(v) for k, v in value.items()}
    return value


def record_calls(fn: Callable[[], object]) -> tuple[Recording, list[Callable[[], Any]]]:
    """The layers of one call of ``fn`` and, for each, a call that runs it again alone on copies of its arguments."""
    rec, calls = Recording(), list[Callable[[], Any]]()
    with torch.inference_mode(), _Recorder(rec, calls=calls):
        fn()
    return rec, calls


def capture_one(fn: Callable[[], object]) -> Layer:
    """The single layer ``fn`` runs (a synthetic layer for fitting); ValueError unless it runs exactly one."""
    rec = record(fn)
    if len(rec.layers) != 1 or rec.unknown:
        raise ValueError(f"expected one layer, recorded {[x.label for x in rec.layers]} and unknown {rec.unknown}")
    return rec.layers[0]


def record_stages(model: StagedModel, batch: int) -> tuple[list[Recording], dict[int, Recording], Recording]:
    """Recordings of each stage alone, each exit head alone (by stage), and the whole model (every exit).

    Inputs are channels-last zeros, as :mod:`agents.evaluation.latency` times them.
    """
    model.eval()
    x = model.example_input(batch).contiguous(memory_format=torch.channels_last)
    stages: list[Recording] = []
    heads: dict[int, Recording] = {}
    whole = record_priced(partial(model, x))
    with torch.inference_mode():
        for k in range(model.num_stages):
            stage = model.stages[k]
            stages.append(record_priced(partial(stage, x)))
            x = stage(x)
            index = model.exit_at_stage(k)
            if index is not None:
                heads[k] = record_priced(partial(model.heads[index], x))
    return stages, heads, whole


def record_priced(fn: Callable[[], object]) -> Recording:
    """:func:`record`, with the Python around the layers measured by a dry run (``python_calls``)."""
    rec = record(fn)
    rec.python_calls = python_calls(fn)
    return rec
