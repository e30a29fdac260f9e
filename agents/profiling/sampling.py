"""Synthetic layers to fit the predictor on: random shapes per layer type, each timed on this node.

Shapes are drawn around what the zoo's models hold (CIFAR-sized maps of 1–32
pixels, 3–1280 channels, 1×1 and 3×3 kernels, batches 1–32), with a cap on the
work per layer so a fit stays within minutes on two cores. 4-D inputs are
channels-last, as in :mod:`agents.evaluation.latency`. Each layer is recorded by
:func:`agents.profiling.recording.capture_one`, so its features come from the same
code that reads a model's layers.
"""

from __future__ import annotations

import math
import random
import statistics
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor

from agents.evaluation.latency import quiet_level, time_call, timed_calls
from agents.profiling.dryrun import identity_call
from agents.profiling.layers import ALIASED_ROWS, TYPES, Layer, conv_path
from agents.profiling.recording import capture_one

Call = Callable[[], object]

_MAX_MACS = 2.5e8  # per synthetic conv / linear call
_MAX_ELEMS = 4e6  # per activation tensor
_SPATIAL = (1, 2, 4, 4, 8, 8, 16, 16, 32, 32, 31)
_BATCHES = (1, 1, 1, 1, 1, 2, 4, 8, 16, 32)


def _map(rng: random.Random, b: int, c: int, h: int) -> Tensor:
    return torch.randn(b, c, h, h, generator=torch.Generator().manual_seed(rng.randrange(2**31))).contiguous(
        memory_format=torch.channels_last
    )


def _channels(rng: random.Random, low: int = 8, high: int = 1024) -> int:
    """Log-uniform channel count, a multiple of 8 above 8 (as in real nets)."""
    value = round(2 ** rng.uniform(low.bit_length() - 1, high.bit_length() - 1))
    return max(low, min(high, value if value < 16 else 8 * round(value / 8)))


def _batch_spatial_channels(rng: random.Random, cmax: int = 1024) -> tuple[int, int, int]:
    """A batch, map size and channel count with at most :data:`_MAX_ELEMS` elements."""
    while True:
        b, h, c = rng.choice(_BATCHES), rng.choice(_SPATIAL), _channels(rng, 8, cmax)
        if b * h * h * c <= _MAX_ELEMS:
            return b, c, h


def _conv_channels(rng: random.Random, h: int) -> tuple[int, int]:
    """Input and output channels of a convolution on an ``h``-pixel map.

    Mostly as CNNs hold them (about 64 channels at 32 pixels, doubling each time the map halves,
    output 1/4 to 4 times the input), sometimes anything in 8–1024, sometimes an RGB input.
    """
    if rng.random() < 0.08:
        return 3, _channels(rng, 8, 1024)
    if rng.random() < 0.3:
        return _channels(rng, 8, 1024), _channels(rng, 8, 1024)
    centre = 64 * 32 / max(h, 1)
    cin = max(8, min(1024, 8 * round(centre * 2 ** rng.uniform(-2, 2) / 8)))
    cout = max(8, min(1024, 8 * round(cin * rng.choice((0.25, 0.5, 1, 1, 2, 4)) / 8)))
    return cin, cout


#: Share of synthetic convolutions with channels-last weights, as every model the agents and
#: ``cascade profile`` load has them; the rest keep the default layout, which PyTorch copies into
#: channels-last on every call, so the fit can tell that copy (``weight_copy``) from the rest of a
#: weight's cost. With default-layout weights only, the two were the same column for every kernel
#: larger than 1×1 and a channels-last model was priced by extrapolation.
CHANNELS_LAST_WEIGHTS = 0.75


#: Share of synthetic matrix products (im2col convolutions, linear layers) drawn so that their rows
#: alias in the L1 cache (see :func:`agents.profiling.layers.aliased_macs`): random shapes almost
#: never do, so without them the fit could not price the slowdown.
ALIASED_SHARE = 0.2


def _aliased_outputs(rng: random.Random) -> int:
    """Output channels or features around the aliasing window: multiples of 64 in 256–1024."""
    return 64 * rng.randint(4, 16)


def _conv(im2col: bool) -> Callable[[random.Random], Call]:
    """Convolutions that PyTorch runs through its im2col path (``im2col``) or through oneDNN (not)."""

    def make(rng: random.Random) -> Call:
        while True:
            b = 1 if im2col else rng.choice(_BATCHES)
            h = rng.choice((2, 4, 8, 8, 16, 16, 32, 32, 31))
            cin, cout = _conv_channels(rng, h)
            k = rng.choice((1, 1, 3, 3, 3, 2)) if h > 2 else 1
            if im2col and rng.random() < ALIASED_SHARE:
                # rows 2 or 4 KiB apart (k·k·cin floats a multiple of 512), 16-36 of them (4×4 to 6×6 maps)
                h, k = rng.choice((4, 4, 5, 6)), rng.choice((1, 3, 3))
                cin, cout = rng.choice((512, 1024)), _aliased_outputs(rng)
            stride = 2 if rng.random() < 0.15 and h >= 4 else 1
            pad = k // 2 if k != 2 else 0
            out_h = (h + 2 * pad - k) // stride + 1
            if b * out_h * out_h * cout * cin * k * k > _MAX_MACS or b * h * h * max(cin, cout) > _MAX_ELEMS:
                continue
            x = _map(rng, b, cin, h)
            w = torch.randn(cout, cin, k, k) * 0.05
            if rng.random() < CHANNELS_LAST_WEIGHTS:
                w = w.contiguous(memory_format=torch.channels_last)
            if (conv_path(x, w, None, stride, pad, 1, 1) == "conv.im2col") == im2col:
                break
        bias = torch.zeros(cout) if rng.random() < 0.3 else None
        return lambda: F.conv2d(x, w, bias, stride, pad, 1, 1)

    return make


def _dwconv(rng: random.Random) -> Call:
    b, c, h = _batch_spatial_channels(rng, 1280)
    h = max(h, 2)
    x = _map(rng, b, c, h)
    w = torch.randn(c, 1, 3, 3) * 0.1
    stride = 2 if rng.random() < 0.2 and h >= 4 else 1
    return lambda: F.conv2d(x, w, None, stride, 1, 1, c)


def _linear(rng: random.Random) -> Call:
    while True:
        b = rng.choice(_BATCHES)
        fin = _channels(rng, 16, 2560)
        fout = rng.choice((10, 10, 100)) if rng.random() < 0.4 else _channels(rng, 16, 1280)
        if rng.random() < ALIASED_SHARE:  # rows 2 or 4 KiB apart, a batch that the BLAS does not pack
            b, fin, fout = rng.randrange(*ALIASED_ROWS), 512 * rng.randint(1, 5), _aliased_outputs(rng)
        if b * fin * fout <= _MAX_MACS:
            break
    x = torch.randn(b, fin)
    w = torch.randn(fout, fin) * 0.05
    bias = torch.zeros(fout) if rng.random() < 0.7 else None
    return lambda: F.linear(x, w, bias)


def _norm(rng: random.Random) -> Call:
    b, c, h = _batch_spatial_channels(rng, 1024)
    x = _map(rng, b, c, h)
    mean, var, weight, bias = torch.zeros(c), torch.ones(c), torch.ones(c), torch.zeros(c)
    return lambda: F.batch_norm(x, mean, var, weight, bias, False, 0.1, 1e-5)


def _act(fn: str) -> Callable[[random.Random], Call]:
    def make(rng: random.Random) -> Call:
        b, c, h = _batch_spatial_channels(rng, 1280)
        x = _map(rng, b, c, max(h, 2))
        inplace = fn != "gelu" and rng.random() < 0.5
        if fn == "relu":
            return lambda: F.relu(x, inplace=inplace)
        if fn == "hardtanh":
            return lambda: F.hardtanh(x, 0.0, 6.0, inplace=inplace)
        if fn == "gelu":
            return lambda: F.gelu(x)
        other = rng.choice((F.silu, F.hardswish, torch.sigmoid, F.leaky_relu))
        return lambda: other(x)

    return make


def _pool(kind: str) -> Callable[[random.Random], Call]:
    def make(rng: random.Random) -> Call:
        b, c, h = _batch_spatial_channels(rng, 1024)
        h = max(h, 2)
        x = _map(rng, b, c, h)
        if kind == "max":
            k, s, p = rng.choice(((2, 2, 0), (2, 2, 0), (3, 2, 1), (3, 1, 1)))
            return lambda: F.max_pool2d(x, k, s, p)
        return lambda: F.avg_pool2d(x, 2, 2)

    return make


def _gpool(kind: str) -> Callable[[random.Random], Call]:
    def make(rng: random.Random) -> Call:
        b, c, h = _batch_spatial_channels(rng, 1280)
        x = _map(rng, b, c, h)
        if kind == "amax":
            return lambda: torch.amax(x, dim=(2, 3))
        if kind == "mean":
            return lambda: torch.mean(x, dim=(2, 3))
        return lambda: F.adaptive_avg_pool2d(x, 1)

    return make


def _eltwise(rng: random.Random) -> Call:
    b, c, h = _batch_spatial_channels(rng, 1024)
    x, y = _map(rng, b, c, h), _map(rng, b, c, h)
    choice = rng.randrange(4)
    if choice == 0:
        return lambda: x + y
    if choice == 1:
        return lambda: x.add_(y)
    if choice == 2:
        flat = x.flatten(1)
        return lambda: flat * 0.5
    return lambda: x * y


def _concat(rng: random.Random) -> Call:
    while True:
        b, h, n = rng.choice(_BATCHES), rng.choice(_SPATIAL), rng.choice((2, 2, 2, 3, 4, 6, 8, 12, 16, 24, 32))
        widths = [_channels(rng, 8, 256) if rng.random() < 0.5 else 32 for _ in range(n)]
        if b * h * h * sum(widths) <= _MAX_ELEMS:
            break
    parts = [_map(rng, b, w, h) for w in widths]
    return lambda: torch.cat(parts, 1)


def _view(rng: random.Random) -> Call:
    b, c, _ = _batch_spatial_channels(rng, 1280)
    x = _map(rng, b, c, 1)
    if rng.random() < 0.5:
        return lambda: torch.flatten(x, 1)
    flat = x.flatten(1)
    return lambda: F.dropout(flat, 0.2, training=False)


GENERATORS: dict[str, Callable[[random.Random], Call]] = {
    "conv": _conv(im2col=False),
    "conv.im2col": _conv(im2col=True),
    "dwconv": _dwconv,
    "linear": _linear,
    "norm": _norm,
    "act.relu": _act("relu"),
    "act.hardtanh": _act("hardtanh"),
    "act.gelu": _act("gelu"),
    "act.other": _act("other"),
    "pool.max": _pool("max"),
    "pool.avg": _pool("avg"),
    "gpool.amax": _gpool("amax"),
    "gpool.mean": _gpool("mean"),
    "gpool.adaptive": _gpool("adaptive"),
    "eltwise": _eltwise,
    "concat": _concat,
    "view": _view,
}
assert set(GENERATORS) | {"module"} == set(TYPES)

#: Relative number of shapes per type: convolutions vary most and matter most; concatenations
#: and global max pooling have the most shape-dependent cost of the cheap types; and the types
#: whose cross-validated error moved by several points between fits and draws of shapes (GELU,
#: element-wise, windowed pooling: 6.9–16.4 % for average pooling over fourteen fits with 60
#: shapes) get more, so that one fit's figure is nearer their typical error.
WEIGHTS: dict[str, float] = {
    "conv": 3.0,
    "conv.im2col": 2.0,
    "dwconv": 1.5,
    "linear": 1.5,
    "concat": 3.0,
    "act.hardtanh": 1.5,
    "act.gelu": 2.0,
    "pool.max": 2.0,
    "pool.avg": 2.0,
    "gpool.amax": 3.0,
    "eltwise": 2.0,
    "view": 1.5,
    "module": 0.25,
}


#: Types timed without a cache flush: they touch no tensor data, only the interpreter and
#: dispatcher, which stay as warm in a model's forward pass as in a loop.
HOT = frozenset({"module", "view"})


@dataclass(frozen=True)
class Sample:
    """One synthetic layer and its measured median milliseconds on this node (over every pass's calls)."""

    layer: Layer
    median_ms: float
    calls_ms: tuple[float, ...] = field(default=(), compare=False, repr=False)
    pass_medians_ms: tuple[float, ...] = field(default=(), compare=False, repr=False)

    @property
    def quiet_ms(self) -> float:
        """The time the fit uses: :func:`~agents.evaluation.latency.quiet_level` of the pass medians.

        The mean of the two quietest passes: noise from a virtual machine's host only ever adds
        time, and in a noisy spell a pass can be slow throughout.
        """
        return quiet_level(self.pass_medians_ms) if self.pass_medians_ms else self.median_ms


def plan(samples_per_type: int, seed: int = 0) -> list[tuple[str, int]]:
    """Which (type, seed) pairs to measure, shuffled so slow drift of the machine spreads over every type."""
    rng = random.Random(seed)
    jobs = []
    for kind in TYPES:
        count = max(4, round(samples_per_type * WEIGHTS.get(kind, 1.0)))
        jobs += [(kind, rng.randrange(2**31)) for _ in range(count)]
    rng.shuffle(jobs)
    return jobs


def _module_call() -> tuple[Layer, Call]:
    return Layer("module", {}, "nn.Module call (Identity)"), identity_call()


class CacheFlush:
    """Evicts the CPU caches by writing a buffer larger than them (``mib`` MiB), on every torch thread.

    Timing a layer over and over keeps its weights and input in cache; inside a model the layers
    before it have evicted them. Flushing before each timed call makes the two agree (measured
    here: a model's stages took 5–30 % longer than the sum of their layers timed hot, and within
    a few percent of the sum timed after a flush).
    """

    def __init__(self, mib: int = 8) -> None:
        self.buffer = torch.zeros(mib * 1024 * 1024 // 4)

    def __call__(self) -> None:
        """Touch the whole buffer once."""
        self.buffer.add_(1.0)

    def then_warm(self, output: Tensor) -> Callable[[], None]:
        """The flush, then a block of ``output``'s size written and freed, for the layer's output to land in.

        Inside a model a layer writes its output into memory the allocator has just had back
        from an activation the layers before it freed: memory in cache. After the flush alone
        the block the output gets is cold, and writing it costs as much as the layer's arithmetic
        for small layers (measured here, each call of a model replayed: mobilenet_v2's layers
        summed to 5.97 ms after the flush, 5.28 ms with this block warm, 5.26 ms inside the model;
        resnet18's 8.21, 7.96 and 8.23 ms; device-small's 0.95, 0.86 and 0.84 ms).
        """
        numel, dtype = output.numel(), output.dtype

        def between() -> None:
            self()
            torch.empty(numel, dtype=dtype).fill_(1)  # freed at once: the allocator hands it to the output

        return between


def before_each_call(kind: str, call: Call, flush: CacheFlush | None) -> Callable[[], object] | None:
    """What the fit runs untimed before each timed call of a layer of ``kind``.

    Nothing for :data:`HOT` types or without ``flush``; otherwise the flush, then a warm block for
    the output when the layer returns a tensor (:meth:`CacheFlush.then_warm`).
    """
    if flush is None or kind in HOT:
        return None
    with torch.inference_mode():
        out = call()
    return flush.then_warm(out) if isinstance(out, Tensor) else flush


def measure(
    kind: str,
    seed: int,
    reps: int = 15,
    warmup: int = 3,
    budget_s: float = 0.05,
    flush: CacheFlush | None = None,
) -> Sample:
    """Build one random layer of ``kind`` from ``seed`` and time it (median after warm-up).

    Fast layers get more repetitions, up to what fits in ``budget_s`` (never fewer than ``reps``,
    never more than ``3 * reps``). ``flush`` runs untimed before every timed call, then warms a block for
    the output (see :meth:`CacheFlush.then_warm`).
    """
    rng = random.Random(seed)
    if kind == "module":
        layer, call = _module_call()
    else:
        call = GENERATORS[kind](rng)
        with torch.inference_mode():
            layer = capture_one(call)
        if layer.type != kind:
            raise AssertionError(f"generator for {kind} made a {layer.type} ({layer.label})")
    between = before_each_call(kind, call, flush)
    with torch.inference_mode():
        first = time_call(call, reps=3, warmup=warmup)
        n = int(min(3 * reps, max(reps, budget_s * 1e3 / max(first.median_ms, 1e-6))))
        calls = timed_calls(call, reps=n, warmup=0, between=between)
    return Sample(layer, statistics.median(calls), tuple(calls))


#: Each layer is timed in at least this many passes over the whole plan (every other one in reverse
#: order), each with a share of the repetitions. A few timings of a 5 µs layer span well under a
#: millisecond, so one burst of noise on the host can shift them all; spread over passes seconds
#: apart, it shifts one pass, and the fit keeps the two quietest (:attr:`Sample.quiet_ms`).
PASSES = 2

#: While the passes disagree by more than :data:`NOISY_PASSES` (:func:`pass_spread`), more are
#: timed, up to this many in all: in a noisy spell both of two passes can be slow.
MAX_PASSES = 6

#: Above this :func:`pass_spread`, the fit times another pass, and warns if it still disagrees after
#: :data:`MAX_PASSES`. Fifteen fits in a quiet spell of the VM here: 3.7–4.8 %; one at 5.4 % put
#: `conv.im2col` and `pool.avg` at 15.2 and 15.6 % (12.5–13.7 % the worst type in the seven others of
#: its batch), and fits at 5.0–5.4 % in a noisier spell had a type over 15 % in two of six; in a noisy
#: spell a fit put `view` (normally under 5 %) and `concat` at 17–18 %.
NOISY_PASSES = 0.05


def pass_spread(samples: list[Sample]) -> float:
    """The median over layers of how far apart their two quietest passes are (second lowest / lowest − 1).

    0 with one pass. Other processes show in the busy meter, but a virtual machine's host can slow
    it for seconds without any: the passes, seconds to a minute apart, then disagree. With two
    passes this is how far they differ; with more, whether the quietest two agree on the layer's time.
    """
    return _spread([s.pass_medians_ms for s in samples])


def _spread(pass_medians: Sequence[Sequence[float]]) -> float:
    apart = [sorted(m)[1] / min(m) - 1 for m in pass_medians if len(m) > 1]
    return statistics.median(apart) if apart else 0.0


def measure_all(
    jobs: list[tuple[str, int]],
    reps: int = 15,
    on_sample: Callable[[], object] | None = None,
    passes: int = PASSES,
    max_passes: int = MAX_PASSES,
    on_more: Callable[[int], object] | None = None,
    check: Callable[[], object] | None = None,
    checks_per_pass: int = 3,
) -> list[Sample]:
    """Measure every planned layer, each timed after a cache flush, in passes: one sample per job, in order.

    ``passes`` passes at least; then, while :func:`pass_spread` is over :data:`NOISY_PASSES`, one
    more, up to ``max_passes``. ``on_more(p)`` is called before each extra pass (``p`` counts the
    passes so far), ``on_sample`` after each layer of each pass. ``check`` (a round of the
    whole-model check) runs ``checks_per_pass`` times in each pass, evenly spaced, so a slow spell
    of the host falls on the layers and on the models alike.
    """
    flush = CacheFlush()
    passes = max(1, passes)
    share = max(1, math.ceil(reps / passes))
    calls: list[list[float]] = [[] for _ in jobs]
    pass_medians: list[list[float]] = [[] for _ in jobs]
    layers: list[Layer | None] = [None] * len(jobs)
    p = 0
    while p < passes or (p < max_passes and _spread(pass_medians) > NOISY_PASSES):
        if p >= passes and on_more is not None:
            on_more(p)
        order = range(len(jobs)) if p % 2 == 0 else range(len(jobs) - 1, -1, -1)
        stops = {n * len(jobs) // max(1, checks_per_pass) for n in range(checks_per_pass)} if check else set()
        for position, i in enumerate(order):
            if position in stops and check is not None:
                check()
            kind, seed = jobs[i]
            sample = measure(kind, seed, share, budget_s=0.05 / passes, flush=flush)
            layers[i] = sample.layer
            calls[i] += sample.calls_ms
            pass_medians[i].append(sample.median_ms)
            if on_sample is not None:
                on_sample()
        p += 1
    return [
        Sample(layer, statistics.median(c), tuple(c), tuple(m))
        for layer, c, m in zip(layers, calls, pass_medians, strict=True)
        if layer
    ]
