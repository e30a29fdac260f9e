"""Layers as the latency predictor sees them: a type and the shape parameters its cost depends on.

Every torch function a model calls is classified here (:func:`classify`): into a layer
type and its shape features (``F.conv2d`` inside an ``nn.Conv2d``, but equally a residual
``out += identity`` or a ``torch.cat`` written inline in ``forward``). Batch norm shows up as
its own layer when it is there and not at all once folded into the convolution before it,
so the same walk serves fused and unfused models. The ``nn.Module`` calls are counted too:
their Python is a cost of its own (type ``module``). :mod:`agents.profiling.recording` runs
a pass and hands each call here.

Synthetic layers for fitting are recorded by the very same code
(:func:`agents.profiling.recording.capture_one`), so a layer's features mean the same in the
fit and in a model.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from types import FunctionType
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

#: Layer types and the shape features a regression per type uses (an intercept is always added).
TYPES: dict[str, tuple[str, ...]] = {
    "conv": ("macs", "in_elems", "out_elems", "weight_elems"),
    "conv.im2col": (
        "macs",
        "in_elems",
        "out_elems",
        "weight_elems",
        "cols_elems",
        "weight_copy",
        "few_rows_macs",
        "aliased_macs",
    ),
    "dwconv": ("macs", "in_elems", "out_elems"),
    "linear": ("macs", "in_elems", "out_elems", "weight_elems", "bias", "few_rows_macs", "aliased_macs"),
    "norm": ("elems", "per_thread"),
    "act.relu": ("elems", "new_elems", "per_thread", "allocates"),
    "act.hardtanh": ("elems", "new_elems", "per_thread", "allocates"),
    "act.gelu": ("elems", "new_elems", "per_thread", "allocates"),
    "act.other": ("elems", "new_elems", "per_thread", "allocates", "exp_per_thread", "python_call"),
    "pool.max": ("in_elems", "out_elems", "window_elems", "window_positions", "per_thread"),
    "pool.avg": ("in_elems", "out_elems", "window_elems", "window_positions", "per_thread"),
    "gpool.amax": ("in_elems", "out_elems", "positions", "per_thread", "tail_elems", "vector_steps"),
    "gpool.mean": ("in_elems", "out_elems", "positions", "per_thread"),
    "gpool.adaptive": ("in_elems", "out_elems", "positions", "per_thread"),
    "eltwise": ("in_elems", "new_elems", "per_thread", "scalar", "scalar_elems"),
    "concat": (
        "inputs",
        "iterators",
        "serial_elems",
        "serial_runs",
        "serial_unaligned",
        "per_thread",
        "runs_per_thread",
        "unaligned_per_thread",
    ),
    "view": ("elems", "dropout"),
    "module": (),
}

#: What each type covers, for reports and docs.
DESCRIPTIONS: dict[str, str] = {
    "conv": "convolution (groups < input channels) through oneDNN or another optimised library",
    "conv.im2col": "convolution through PyTorch's own im2col + GEMM path (chosen for small batch-1 inputs)",
    "dwconv": "depthwise convolution (groups = input channels)",
    "linear": "fully connected",
    "norm": "batch normalisation (absent once folded into a convolution)",
    "act.relu": "ReLU",
    "act.hardtanh": "hardtanh / ReLU6",
    "act.gelu": "GELU",
    "act.other": "other activations (SiLU, sigmoid, tanh, hardswish, leaky ReLU, ELU)",
    "pool.max": "max pooling with a window",
    "pool.avg": "average pooling with a window",
    "gpool.amax": "global max over spatial dims (torch.amax)",
    "gpool.mean": "global mean over spatial dims (torch.mean)",
    "gpool.adaptive": "adaptive average/max pooling",
    "eltwise": "element-wise add / sub / mul (residual adds, scaling)",
    "concat": "concatenation (torch.cat)",
    "view": "flatten / reshape / dropout at inference (no arithmetic)",
    "module": "Python overhead of one nn.Module call",
}

_ACT = {
    "relu": "act.relu",
    "relu_": "act.relu",
    "hardtanh": "act.hardtanh",
    "hardtanh_": "act.hardtanh",
    "relu6": "act.hardtanh",
    "gelu": "act.gelu",
    "silu": "act.other",
    "sigmoid": "act.other",
    "tanh": "act.other",
    "hardswish": "act.other",
    "hardsigmoid": "act.other",
    "leaky_relu": "act.other",
    "elu": "act.other",
    "mish": "act.other",
}
#: Activations that evaluate an exponential per element (several times the cost of a clamp or a select).
_ACT_EXP = {"silu", "sigmoid", "tanh", "elu", "mish", "sigmoid_", "tanh_"}
_ACT_INPLACE = {"relu_", "hardtanh_", "sigmoid_", "tanh_"}
_ELTWISE = {"add", "sub", "mul", "__add__", "__radd__", "__sub__", "__rsub__", "__mul__", "__rmul__"}
_ELTWISE_INPLACE = {"add_", "sub_", "mul_", "__iadd__", "__isub__", "__imul__"}
_VIEW = {"flatten", "view", "reshape", "squeeze", "unsqueeze", "dropout", "alpha_dropout", "identity", "contiguous"}
_GLOBAL = {"amax": "gpool.amax", "mean": "gpool.mean"}
GRAIN_SIZE = 32768
#: Floats a vectorised reduction over a kept, innermost channel dim handles per step; the channels
#: beyond a multiple of it run in a scalar loop. Chosen from timings on an x86 (AVX-512) node:
#: with 32 the cross-validated error of gpool.amax fell from 29 % to 10 % (16: 22 %, 64: 32 %).
REDUCE_STEP = 32


#: Bytes of a cache line: a vector store that starts off such a boundary writes two lines.
CACHE_LINE = 64


def cat_runs(out: Tensor, dim: int, parts: Sequence[Tensor]) -> tuple[int, list[float]]:
    """How :func:`torch.cat` writes ``out``: the runs per input, and each input's share of runs off a cache line.

    Each input is copied run by run, one run per position along the dims before ``dim`` (per
    pixel in channels-last along the channels), each starting where the runs of the inputs before
    it end. A run that starts off a 64-byte boundary is written with stores that each span two
    lines. Measured here (six equal inputs into a channels-last map of 2048 pixels): 64 channels
    each took 10.7 ns a run, 65 took 19.2 and 63 took 17.4; multiples of 8 (half their runs
    aligned) fell in between.
    """
    size = out.element_size()
    channels_last = not out.is_contiguous() and out.dim() == 4 and dim == 1
    inner = 1 if channels_last else math.prod(out.shape[dim + 1 :])
    runs = [p.shape[dim] * inner if p.dim() == out.dim() else 0 for p in parts]
    row = sum(runs) * size  # bytes from one position's first run to the next's
    positions = out.numel() // max(1, sum(runs))
    period = CACHE_LINE // math.gcd(row, CACHE_LINE)  # the pattern of offsets repeats after this many positions
    shares, offset = [], 0
    for run in runs:
        shares.append(sum(1 for k in range(period) if (k * row + offset) % CACHE_LINE) / period)
        offset += run * size
    return positions, shares


def threads_used(elements: float, threads: int | None = None) -> int:
    """Torch threads ATen runs ``elements`` on when it splits them in grains of 32768 (its GRAIN_SIZE)."""
    return min(threads or torch.get_num_threads(), max(1, math.ceil(elements / GRAIN_SIZE)))


def per_thread(elements: float, threads: int | None = None) -> float:
    """Elements each torch thread handles when ATen splits ``elements`` in grains (:func:`threads_used`).

    Element-wise kernels, reductions and batch norm run on one thread below a grain and on up to
    ``threads`` above: their time follows this, not the element count, so it is a feature of theirs.
    """
    return elements / threads_used(elements, threads)


#: Below this many rows a matrix product reuses each weight too few times to reach its full rate.
FEW_ROWS = 64


def few_rows_macs(macs: float, rows: float) -> float:
    """MACs of a matrix product weighted by how far its rows fall short of :data:`FEW_ROWS`.

    The rows are the output pixels of one image for an im2col convolution (its matrix product
    runs image by image) and the batch for a linear layer. A 3×3 convolution 512→512 on a 4×4 map
    multiplies 16 rows and runs at 23 ps a MAC here, against 8–9 ps with 64 rows: a per-MAC
    feature alone prices every product at the many-row rate.
    """
    return macs * max(0.0, 1.0 - rows / FEW_ROWS)


#: Bytes between two addresses that fall in the same L1 data-cache set: sets × line size, 64 × 64 B
#: on x86 cores (a 32 KiB 8-way or a 48 KiB 12-way L1D alike).
CRITICAL_STRIDE = 4096
#: Rows (at least, below) and columns (inclusive) of the matrix products whose speed depends on
#: how their rows align, measured on an x86 node's BLAS: it multiplies 16–63 rows without first
#: packing the operands, and does so for 384–704 columns; below, above and outside those bounds
#: the same products ran at their usual rate.
ALIASED_ROWS = (16, FEW_ROWS)
ALIASED_COLS = (384, 704)


def aliased_macs(macs: float, rows: int, depth: int, cols: int, elem_bytes: int = 4) -> float:
    """MACs of a matrix product whose operand rows all fall in one or two L1 cache sets, weighted by how much it slows.

    A product of ``rows`` × ``depth`` by ``depth`` × ``cols`` reads rows that lie ``depth ·
    elem_bytes`` apart. When that distance is a multiple of 2 KiB they share at most two L1 sets
    and evict each other. Measured here at 16 rows (a 4×4 map, or a batch of 16), 3×3 convolutions
    and linear layers of 384–704 outputs ran 1.5× slower when the rows were 2 KiB-aligned (512
    input channels: 23 ps a MAC against 14 for 504 or 520) and 2–2.3× slower when 4 KiB-aligned
    (1024 channels); resnet18's last stage is three such convolutions. The slowdown shrinks as the
    rows grow (for 4 KiB, 2.25× at 16 rows, 1.9× at 32, 1.6× at 56), about as 1.5 − rows/64, and
    halves for two sets instead of one. Zero outside :data:`ALIASED_ROWS` and :data:`ALIASED_COLS`,
    where the products ran at their usual rate.
    """
    if not (ALIASED_ROWS[0] <= rows < ALIASED_ROWS[1] and ALIASED_COLS[0] <= cols <= ALIASED_COLS[1]):
        return 0.0
    sets = CRITICAL_STRIDE // math.gcd(depth * elem_bytes, CRITICAL_STRIDE)
    return macs / sets * (1.5 - rows / FEW_ROWS) if sets <= 2 else 0.0


@dataclass(frozen=True)
class Layer:
    """One layer of a forward pass: its type, the shape features its cost depends on, and a readable label."""

    type: str
    features: dict[str, float] = field(default_factory=dict)
    label: str = ""

    def vector(self) -> list[float]:
        """The regression row: an intercept, then this type's features in :data:`TYPES` order."""
        return [1.0, *(float(self.features.get(name, 0.0)) for name in TYPES[self.type])]


@dataclass
class Recording:
    """What one forward pass ran: its layers, nn.Module calls, and torch functions no type covers."""

    layers: list[Layer] = field(default_factory=list)
    module_calls: int = 0
    unknown: dict[str, int] = field(default_factory=dict)
    #: The Python the pass runs around its layers, in plain nn.Module calls
    #: (:func:`agents.profiling.dryrun.python_calls`); None when not measured: each module call counts as one.
    python_calls: float | None = None

    @property
    def module_units(self) -> float:
        """How many ``module`` prices the pass's Python costs: ``python_calls`` when measured, else ``module_calls``."""
        return self.module_calls if self.python_calls is None else self.python_calls


def _name(func: Callable[..., Any]) -> str:
    if func is F.max_pool2d or func is F.max_pool2d_with_indices:
        return "max_pool2d"
    if func is F.max_pool1d or func is F.max_pool3d:
        return "max_pool_other"
    if func is F.adaptive_max_pool2d:
        return "adaptive_max_pool2d"
    return str(getattr(func, "__name__", ""))


def _arg(args: Sequence[Any], kwargs: dict[str, Any], index: int, name: str, default: Any = None) -> Any:
    if len(args) > index:
        return args[index]
    return kwargs.get(name, default)


def _pair(value: Any) -> tuple[int, int]:
    if isinstance(value, int):
        return value, value
    a, b = tuple(value)
    return int(a), int(b)


def _copies_weight(x: Tensor, weight: Tensor) -> bool:
    """Whether PyTorch copies the weight into the input's channels-last layout on every call.

    It does when the input is channels-last and the weight is not (a 1×1 weight is both).
    Models whose weights were converted with ``model.to(memory_format=torch.channels_last)`` skip it.
    """
    if x.dim() != 4 or x.is_contiguous() or not x.is_contiguous(memory_format=torch.channels_last):
        return False
    return not weight.is_contiguous(memory_format=torch.channels_last)


def _positions(t: Tensor) -> float:
    """Pixels of a feature map, over the batch (``N·H·W``; elements per channel for other shapes)."""
    if t.dim() == 4:
        return float(t.shape[0] * t.shape[2] * t.shape[3])
    return float(t.numel() / max(1, t.shape[1])) if t.dim() > 1 else float(t.numel())


def _reduce_steps(x: Tensor) -> dict[str, float]:
    """Per-thread work of a global reduction over H, W of a channels-last map, whose inner loop runs over channels.

    ``vector_steps``: pixels × whole :data:`REDUCE_STEP`-float steps; ``tail_elems``: pixels × the
    channels left over, reduced one by one (measured here: a map of 8 channels costs 4 ns per element,
    one of 568 channels 0.23 ns). Zero for other layouts, whose inner loop is the reduced dims.
    """
    if x.dim() != 4 or x.is_contiguous() or not x.is_contiguous(memory_format=torch.channels_last):
        return {"tail_elems": 0.0, "vector_steps": 0.0}
    used = x.numel() / per_thread(x.numel())
    pixels = x.shape[0] * x.shape[2] * x.shape[3]
    c = x.shape[1]
    return {"tail_elems": pixels * (c % REDUCE_STEP) / used, "vector_steps": pixels * (c // REDUCE_STEP) / used}


def _shape(t: Tensor) -> str:
    return "x".join(str(d) for d in t.shape)


def conv_path(
    x: Tensor, weight: Tensor, bias: Tensor | None, stride: Any, padding: Any, dilation: Any, groups: int
) -> str:
    """``conv.im2col`` when PyTorch runs this convolution through its own im2col path, else ``conv``.

    PyTorch picks the implementation per call from the shapes and thread count (at batch 1, small
    inputs skip oneDNN); the two differ several-fold in speed per MAC, so they are fitted apart.
    Asks PyTorch's own selector; where that is unavailable (or the padding is a string), ``conv``.
    """
    select = getattr(torch._C, "_select_conv_backend", None)
    if select is None or isinstance(padding, str):
        return "conv"
    try:
        backend = select(x, weight, bias, _pair(stride), _pair(padding), _pair(dilation), False, [0, 0], groups, None)
    except (RuntimeError, TypeError, ValueError):
        return "conv"
    return "conv.im2col" if str(backend).rsplit(".", 1)[-1].startswith("Slow") else "conv"


def classify(func: Callable[..., Any], args: Sequence[Any], kwargs: dict[str, Any], out: Any) -> Layer | str | None:
    """The layer a torch function call is; the function's name when no type covers it; None when it costs nothing.

    Calls that produce no tensor (``dim``, ``size``) cost nothing measurable and give None.
    """
    if not isinstance(out, Tensor):
        return None
    name = _name(func)
    x = args[0] if args and isinstance(args[0], Tensor) else None
    n_out = float(out.numel())
    if name == "conv2d" and x is not None:
        weight: Tensor = _arg(args, kwargs, 1, "weight")
        groups = int(_arg(args, kwargs, 6, "groups", 1))
        per_out = weight.shape[1] * weight.shape[2] * weight.shape[3]
        cin = x.shape[1]
        stride = _pair(_arg(args, kwargs, 3, "stride", 1))
        padding = _arg(args, kwargs, 4, "padding", 0)
        if groups > 1 and groups == cin:
            kind = "dwconv"
        else:
            dilation = _arg(args, kwargs, 5, "dilation", 1)
            kind = conv_path(x, weight, _arg(args, kwargs, 2, "bias"), stride, padding, dilation, groups)
        # The im2col path unfolds the input into columns unless the convolution is a plain 1×1.
        pointwise = weight.shape[2:] == (1, 1) and stride == (1, 1) and padding in (0, (0, 0), [0, 0], "valid")
        columns = 0 if pointwise else out.shape[0] * out.shape[2] * out.shape[3] * per_out * groups
        features = {
            "macs": n_out * per_out,
            "in_elems": float(x.numel()),
            "out_elems": n_out,
            "weight_elems": float(weight.numel()),
            "cols_elems": float(columns),
            "weight_copy": float(weight.numel()) if _copies_weight(x, weight) else 0.0,
            "few_rows_macs": few_rows_macs(n_out * per_out, out.shape[2] * out.shape[3]),
            "aliased_macs": aliased_macs(
                n_out * per_out, out.shape[2] * out.shape[3], per_out, weight.shape[0] // groups, x.element_size()
            ),
        }
        k = f"{weight.shape[2]}x{weight.shape[3]}"
        label = f"conv2d {k}/{stride[0]} g{groups} {_shape(x)}→{_shape(out)}"
        return Layer(kind, features, label)
    if name == "linear" and x is not None:
        weight = _arg(args, kwargs, 1, "weight")
        rows = round(n_out / max(1, weight.shape[0]))
        features = {
            "macs": n_out * weight.shape[1],
            "in_elems": float(x.numel()),
            "out_elems": n_out,
            "weight_elems": float(weight.numel()),
            "bias": 0.0 if _arg(args, kwargs, 2, "bias") is None else 1.0,  # addmm rather than mm
            "few_rows_macs": few_rows_macs(n_out * weight.shape[1], rows),
            "aliased_macs": aliased_macs(
                n_out * weight.shape[1], rows, weight.shape[1], weight.shape[0], x.element_size()
            ),
        }
        return Layer("linear", features, f"linear {_shape(x)}→{_shape(out)}")
    if name in ("batch_norm", "instance_norm", "layer_norm", "group_norm") and x is not None:
        return Layer("norm", {"elems": n_out, "per_thread": per_thread(n_out)}, f"{name} {_shape(x)}")
    if name in _ACT and x is not None:
        inplace = name in _ACT_INPLACE or bool(kwargs.get("inplace", False)) or out is x
        features = {
            "elems": n_out,
            "new_elems": 0.0 if inplace else n_out,
            "per_thread": per_thread(n_out),
            "allocates": 0.0 if inplace else 1.0,  # an allocation costs a fixed µs or so, whatever its size
            "exp_per_thread": per_thread(n_out) if name in _ACT_EXP else 0.0,
            # F.silu, F.hardswish … are Python functions around the kernel, torch.sigmoid and torch.tanh
            # are not: after a cache flush that extra frame costs about 2 µs, a third of a small call.
            "python_call": 1.0 if isinstance(func, FunctionType) else 0.0,
        }
        return Layer(_ACT[name], features, f"{name}{' inplace' if inplace else ''} {_shape(x)}")
    if name in ("max_pool2d", "avg_pool2d") and x is not None:
        kh, kw = _pair(_arg(args, kwargs, 1, "kernel_size"))
        n_in = float(x.numel())
        features = {
            "in_elems": n_in,
            "out_elems": n_out,
            "window_elems": n_out * kh * kw,
            "window_positions": _positions(out) * kh * kw,
            "per_thread": per_thread(n_in),
        }
        kind = "pool.max" if name == "max_pool2d" else "pool.avg"
        return Layer(kind, features, f"{name} {kh}x{kw} {_shape(x)}→{_shape(out)}")
    if name in ("adaptive_avg_pool2d", "adaptive_max_pool2d") and x is not None:
        features = {
            "in_elems": float(x.numel()),
            "out_elems": n_out,
            "positions": _positions(x),
            "per_thread": per_thread(x.numel()),
        }
        return Layer("gpool.adaptive", features, f"{name} {_shape(x)}→{_shape(out)}")
    if name in _GLOBAL and x is not None:
        features = {
            "in_elems": float(x.numel()),
            "out_elems": n_out,
            "positions": _positions(x),
            "per_thread": per_thread(x.numel()),
        }
        features.update(_reduce_steps(x))
        return Layer(_GLOBAL[name], features, f"{name} {_shape(x)}→{_shape(out)}")
    if name in _ELTWISE or name in _ELTWISE_INPLACE:
        tensors = [a for a in args if isinstance(a, Tensor)]
        inplace = name in _ELTWISE_INPLACE or any(out is a for a in tensors)
        # With a Python number for an operand (x * 0.5) ATen wraps it into a tensor and runs its
        # tensor-scalar kernel: a few µs more per call than two tensors of the same size here, and
        # a rate of its own per element.
        scalar = len(tensors) < 2 and any(isinstance(a, (int, float)) for a in args)
        features = {
            "in_elems": float(sum(a.numel() for a in tensors)),
            "new_elems": 0.0 if inplace else n_out,
            "per_thread": per_thread(n_out),
            "scalar": 1.0 if scalar else 0.0,
            "scalar_elems": n_out if scalar and not inplace else 0.0,
        }
        return Layer("eltwise", features, f"{name} {' '.join(_shape(a) for a in tensors)}")
    if name == "cat":
        parts = args[0] if args else kwargs.get("tensors", [])
        count = len(parts) if isinstance(parts, (list, tuple)) else 1
        dim = int(_arg(args, kwargs, 1, "dim", 0)) % max(1, out.dim())
        tensors = [p for p in parts if isinstance(p, Tensor)] if isinstance(parts, (list, tuple)) else []
        positions, unaligned = cat_runs(out, dim, tensors)
        # ATen copies a small output (under one grain) or any output on one thread in one serial loop;
        # otherwise it builds a TensorIterator per input (one for all when the inputs' shapes agree) and
        # copies each input through it, threaded by that input's size. The two paths have rates of
        # their own. Measured here: 16 inputs into 32768 elements, 10 µs with equal shapes, 23 µs with
        # two alternating widths, 6.5–7 µs on one thread.
        serial = n_out < GRAIN_SIZE or torch.get_num_threads() == 1
        iterators = 0 if serial else 1 if len({tuple(p.shape) for p in tensors}) <= 1 else count
        unaligned_elems = per_thread_elems = runs_per_thread = unaligned_per_thread = 0.0
        for part, share in zip(tensors, unaligned, strict=True):
            threads = 1 if serial else threads_used(part.numel())
            unaligned_elems += part.numel() * share
            per_thread_elems += part.numel() / threads
            runs_per_thread += positions / threads
            unaligned_per_thread += part.numel() * share / threads
        features = {
            "inputs": float(count),
            "iterators": float(iterators),
            "serial_elems": n_out if serial else 0.0,
            "serial_runs": float(positions * count) if serial else 0.0,
            "serial_unaligned": unaligned_elems if serial else 0.0,
            "per_thread": 0.0 if serial else per_thread_elems,
            "runs_per_thread": 0.0 if serial else runs_per_thread,
            "unaligned_per_thread": 0.0 if serial else unaligned_per_thread,
        }
        return Layer("concat", features, f"cat {count}→{_shape(out)}")
    if name in _VIEW:
        # F.dropout is a Python function (argument checks, then the no-op): about twice a flatten's cost.
        dropout = 1.0 if "dropout" in name else 0.0
        return Layer("view", {"elems": n_out, "dropout": dropout}, f"{name} {_shape(out)}")
    return name or repr(func)


def total_elements(layers: Sequence[Layer], kind: str) -> float:
    """Sum of a feature over layers (for summaries: total MACs of a recording, say)."""
    return math.fsum(layer.features.get(kind, 0.0) for layer in layers)
