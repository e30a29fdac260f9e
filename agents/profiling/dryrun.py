"""How much Python a forward pass runs around its torch functions, counted in plain ``nn.Module`` calls.

The latency predictor prices every layer by its type's regression and the rest of a pass (the
``nn.Module`` calls, their ``forward`` bodies, attribute lookups, the containers' loops) as a
number of ``module`` calls, the type the fit prices by timing ``nn.Identity``. Counting each module
call as one such call under-prices real modules: a ``BatchNorm2d.forward`` reads a dozen
attributes and tests its flags before it calls ``F.batch_norm``. Measured on the AMD EPYC guest of
2026-11-30 (one thread): the zoo models' Python was worth 3–6 ``nn.Identity`` calls (1.25 µs each
there) per module call.

:func:`python_calls` measures it by a *dry run*: one real pass is captured (every top-level torch
function and what it returned), then the model's Python is run again with every torch function
answered from that capture without computing anything, and, for comparison, the captured calls
alone are answered the same way. The difference is the model's own Python; divided by an
``nn.Identity`` call timed in the same rounds, it is a count of plain module calls, which the
node's fitted ``module`` price turns into milliseconds. A count rather than a time, so a pass
recorded on one machine can be priced for another node.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn
from torch.overrides import TorchFunctionMode

from agents.evaluation.latency import timed_calls

#: Rounds of the dry run, its captured calls and plain module calls, interleaved so a slow spell of
#: the host falls on all three.
DRY_ROUNDS = 30
#: Plain module calls timed in each round (each is about a microsecond: more of them per round).
IDENTITY_CALLS = 5
#: The percentile kept of each: noise only adds time, and on a host that runs at two speeds the
#: lower tail is the fast one (the median of the three can come from different speeds).
QUANTILE = 0.1


def identity_call() -> Callable[[], Any]:
    """One plain ``nn.Module`` call (an ``nn.Identity`` on a small map): the unit the fit prices as ``module``."""
    module = nn.Identity()
    x = torch.zeros(1, 8, 4, 4)
    return lambda: module(x)


class _Capture(TorchFunctionMode):
    """Runs every top-level torch function as usual and keeps the function, its arguments and its result."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[tuple[Callable[..., Any], Sequence[Any], dict[str, Any], Any]] = []

    def __torch_function__(
        self, func: Callable[..., Any], types: Any, args: Sequence[Any] = (), kwargs: dict[str, Any] | None = None
    ) -> Any:
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        self.calls.append((func, args, kwargs, out))
        return out


class _Answer(TorchFunctionMode):
    """Answers the n-th torch function with the n-th captured result, computing nothing."""

    def __init__(self, results: list[Any]) -> None:
        super().__init__()
        self.results = results
        self.next = 0

    def __torch_function__(
        self, func: Callable[..., Any], types: Any, args: Sequence[Any] = (), kwargs: dict[str, Any] | None = None
    ) -> Any:
        out = self.results[self.next]  # IndexError when a pass runs more functions than the captured one
        self.next += 1
        return out


def _quantile(values: list[float]) -> float:
    return sorted(values)[int(QUANTILE * (len(values) - 1))]


def python_calls(fn: Callable[[], object], rounds: int = DRY_ROUNDS) -> float | None:
    """The Python one call of ``fn`` runs outside its torch functions, in plain ``nn.Module`` calls.

    None when the dry run cannot replay the pass: a ``forward`` that branches on something other
    than its tensors' values (a counter, a random draw) runs other functions the second time.
    The caller then counts each module call as one.
    """
    capture = _Capture()
    with torch.inference_mode():
        with capture:
            fn()
        answer = _Answer([out for *_, out in capture.calls])
        calls = capture.calls
        identity = identity_call()

        def dry() -> None:
            answer.next = 0
            with answer:
                fn()

        def captured_alone() -> None:
            answer.next = 0
            with answer:
                for func, args, kwargs, _ in calls:
                    func(*args, **kwargs)

        times: dict[str, list[float]] = {"dry": [], "alone": [], "identity": []}
        try:
            for _ in range(max(1, rounds)):
                times["dry"] += timed_calls(dry, reps=1, warmup=0)
                if answer.next != len(calls):
                    return None
                times["alone"] += timed_calls(captured_alone, reps=1, warmup=0)
                times["identity"] += timed_calls(identity, reps=IDENTITY_CALLS, warmup=0)
        except (IndexError, RuntimeError, TypeError, ValueError):
            return None  # the pass ran other functions than the captured one and tripped on a result
    own = max(0.0, _quantile(times["dry"]) - _quantile(times["alone"]))
    return own / _quantile(times["identity"])
