"""Activation codecs for split computing: a tensor at a split point to header fields plus bytes, and back.

A codec is named ``<number format>[+<compressor>]``:

- ``fp32``: the float32 values, exact;
- ``fp16``: half precision (values beyond ±65504 saturate);
- ``int8``: affine, one scale and zero point for the whole tensor;
- ``int8-channel``: affine, one scale and zero point per channel (dimension 1);
- ``+zlib`` compresses the bytes of any of them losslessly (level 1).

lz4 was measured as a second compressor and left out: on ``device-small``'s
activations it saved 1–15% of the bytes (zlib: 10–35%), not worth a dependency.

Scale and zero point travel in the header (``q = round(x / scale) + zero_point``,
``x ≈ (q - zero_point) * scale``). Decoding checks the codec, dtype, shape, scale
and zero point and the byte counts before allocating anything, and decompresses
with a bound equal to the announced size, so a hostile payload cannot make the
receiver allocate more than the shape allows. Every failure is a
:class:`~agents.transport.envelope.MessageError`.

Between two model calls every numpy or torch call costs several times what it costs
in a tight loop (the model has just evicted the caches it needs), so the codecs make
as few of them as they can: fp32 sends a byte view of the activation and the
receiver wraps the received bytes; the int8 codecs run one compiled call a side
(:mod:`.int8_kernels`). ``benchmarks/split_codec`` measures them between model calls.
"""

from __future__ import annotations

import math
import warnings
import zlib
from typing import Any

import numpy as np
import torch
from torch import Tensor

from agents.transport.codecs import WIRE_DTYPE, Codec, parse_codec
from agents.transport.envelope import Envelope, MessageError, Payload

# decode_activation wraps received bytes, which are read-only, without copying them; torch
# warns once per process that it cannot mark the tensor read-only. Nothing writes to it.
warnings.filterwarnings("ignore", message="The given NumPy array is not writable", category=UserWarning)

MAX_ACTIVATION_ELEMENTS = 64 * 1024 * 1024  # 256 MB of fp32: far above any split point, bounds allocation


#: The largest int8 scale a frame may carry: (q - zero_point) spans at most 255 steps, so anything
#: larger overflows float32 to infinity and the model computes NaN.
MAX_INT8_SCALE = float(np.finfo(np.float32).max) / 256


def encode_activation(x: Tensor, codec: str | Codec) -> tuple[dict[str, Any], Payload]:
    """Header fields and payload bytes for an activation ``x`` (float, shape ``(N, C, ...)``).

    ``shape`` in the header is always the logical ``(N, C, H, W)``. A channels-last
    activation (what the models compute) is sent in that memory order, a C-order
    ``(N, H, W, C)`` array marked ``layout: nhwc``, which saves a transposing copy on
    both sides; anything else is sent C-order as ``(N, C, ...)``.
    """
    # Few torch calls, each only when needed: between two model calls every call pays for
    # the caches the model evicted (benchmarks/split_codec measures the codec there).
    c = parse_codec(codec) if isinstance(codec, str) else codec
    if x.requires_grad:
        x = x.detach()
    if x.dtype != torch.float32:
        x = x.float()
    shape = list(x.shape)
    header: dict[str, Any] = {"encoding": "activation", "codec": c.name, "shape": shape}
    nhwc = len(shape) == 4 and not x.is_contiguous() and x.is_contiguous(memory_format=torch.channels_last)
    if nhwc:
        header["layout"] = "nhwc"
    elif not x.is_contiguous():
        x = x.contiguous()
    if c.format == "fp16":
        x = x.half()
    wire = x.numpy()  # NCHW strides over NHWC memory when nhwc: transposing below is a view
    if nhwc:
        wire = wire.transpose(0, 2, 3, 1)
    if c.format in ("int8", "int8-channel"):
        wire, scale, zero = _quantize(wire, nhwc, per_channel=c.format == "int8-channel")
        header["scale"] = scale
        header["zero_point"] = zero
    # A byte view of the array, not a copy: the envelope's encoder makes the one copy into the message.
    raw = np.ascontiguousarray(wire).data.cast("B")
    # zlib level 1: most of the gain for a fraction of the time.
    data: Payload = zlib.compress(raw, 1) if c.compress == "zlib" else raw
    header["raw_nbytes"] = len(raw)
    return header, data


_LANES = 16  # a per-tensor range is kept in 16 lanes: one vector register of floats


def _channel_view(a: np.ndarray, nhwc: bool, per_channel: bool) -> np.ndarray:
    """``a`` (C-order, wire order) as the kernels' ``(outer, channels, inner)``: see :mod:`.int8_kernels`."""
    if not per_channel or a.ndim < 2:
        return a.reshape(-1, _LANES, 1) if a.size % _LANES == 0 else a.reshape(1, 1, -1)
    if nhwc:
        return a.reshape(-1, a.shape[-1], 1)
    return a.reshape(a.shape[0], a.shape[1], -1)


def _quantize(a: np.ndarray, nhwc: bool, per_channel: bool) -> tuple[np.ndarray, list[float], list[int]]:
    """Affine int8 of ``a`` (float32, C-order): the values, and the scales and zero points for the header."""
    from agents.transport import int8_kernels  # compiled on first use: fp32 and fp16 users never load numba

    view = _channel_view(a, nhwc, per_channel)
    q = np.empty(view.shape, np.int8)
    scale = np.empty(view.shape[1], np.float32)
    zero = np.empty(view.shape[1], np.float32)
    if not int8_kernels.quantize(view, q, scale, zero, not per_channel):
        raise ValueError("the activation holds NaN or infinite values, which int8 cannot encode")
    if not per_channel:  # every lane holds the same parameters
        return q, scale[:1].tolist(), [int(zero[0])]
    return q, scale.tolist(), [int(z) for z in zero.tolist()]


def warm_up(codec: str | Codec) -> None:
    """Compile (or load from numba's cache) what ``codec`` runs, so the first frame does not wait for it."""
    c = parse_codec(codec) if isinstance(codec, str) else codec
    if not c.format.startswith("int8"):
        return  # nothing to compile
    for channels_last in (True, False):
        x = torch.zeros(1, 2, 4, 4)
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        header, payload = encode_activation(x, c)
        # bytes, as received: numba compiles read-only arrays separately
        decode_activation(Envelope({"id": "warm-up", **header}, bytes(payload)), (1, 2, 4, 4))


def _decompress(data: Payload, compress: str | None, expected: int) -> Payload:
    raw = data
    if compress == "zlib":
        try:
            d = zlib.decompressobj()
            raw = d.decompress(data, expected)  # bounded: never more than the shape allows
        except zlib.error as exc:
            raise MessageError("payload", f"corrupt zlib payload ({exc})") from None
        if d.unconsumed_tail or not d.eof:
            raise MessageError("payload", f"zlib stream does not end at the announced {expected} bytes")
    if len(raw) != expected:
        raise MessageError("payload", f"payload holds {len(raw)} bytes, the shape needs {expected}")
    return raw


def decode_activation(envelope: Envelope, expected_shape: tuple[int, ...]) -> Tensor:
    """The float32 activation in ``envelope``, checked against ``expected_shape`` (the split point's).

    An fp32 activation shares memory with the payload rather than copying it (a copy costs
    as much as the rest of the decoding at an early split point): treat the tensor as
    read-only. The receivers stack their batch with ``torch.cat``, which copies.
    """
    h = envelope.header
    if h.get("encoding") != "activation":
        raise MessageError("encoding", f"expected an activation payload, got {h.get('encoding')!r}")
    try:
        c = parse_codec(str(h.get("codec")))
    except ValueError as exc:
        raise MessageError("codec", str(exc)) from None
    shape = h.get("shape")
    if not isinstance(shape, list) or not all(isinstance(d, int) and not isinstance(d, bool) for d in shape):
        raise MessageError("shape", f"activation shape {shape!r} must be a list of integers")
    if tuple(shape) != tuple(expected_shape):
        raise MessageError("shape", f"activation of shape {tuple(shape)} where the split point gives {expected_shape}")
    count = math.prod(shape)
    if count > MAX_ACTIVATION_ELEMENTS:
        raise MessageError("oversized", f"activation of {count} elements exceeds {MAX_ACTIVATION_ELEMENTS}")
    wire = np.dtype(WIRE_DTYPE[c.format])
    expected_bytes = count * wire.itemsize
    if h.get("raw_nbytes", expected_bytes) != expected_bytes:
        raise MessageError(
            "payload", f"header announces {h.get('raw_nbytes')} raw bytes, the shape needs {expected_bytes}"
        )
    layout = h.get("layout", "nchw")
    if layout not in ("nchw", "nhwc") or (layout == "nhwc" and len(shape) != 4):
        raise MessageError("shape", f"activation layout {layout!r} must be nchw, or nhwc for 4-d activations")
    raw = _decompress(envelope.payload, c.compress, expected_bytes)
    wire_shape = (shape[0], shape[2], shape[3], shape[1]) if layout == "nhwc" else tuple(shape)
    if c.format == "fp32":  # the received bytes themselves, read-only (see above)
        values = np.frombuffer(raw, dtype=np.float32).reshape(wire_shape)
    elif c.format == "fp16":  # widened by torch, which converts fp16 in hardware
        values = np.frombuffer(raw, dtype=np.float16).reshape(wire_shape)
    else:
        values = _dequantize(h, np.frombuffer(raw, dtype=np.int8).reshape(wire_shape), layout, c.format)
    if layout == "nhwc":  # back to logical NCHW as a channels-last view: no copy, and what the model prefers
        values = values.transpose(0, 3, 1, 2)
    out = torch.from_numpy(values)
    return out.float() if c.format == "fp16" else out


def _dequantize(h: dict[str, Any], q: np.ndarray, layout: str, fmt: str) -> np.ndarray:
    """``(q - zero_point) * scale`` as float32 in wire order, the header's parameters checked first."""
    per_channel = fmt == "int8-channel" and q.ndim > 1
    view = _channel_view(q, layout == "nhwc", per_channel)
    channels = view.shape[1] if per_channel else 1
    scale = _params(h, "scale", channels)
    zero = _params(h, "zero_point", channels)
    # Plain Python over the lists: numpy's fixed cost per call would exceed the check. A NaN or
    # an infinity makes the sum non-finite, whatever the order min and max see it in.
    if not (
        math.isfinite(sum(scale) + sum(zero))
        and min(scale) > 0
        and max(scale) <= MAX_INT8_SCALE
        and min(zero) >= -128
        and max(zero) <= 127
    ):
        raise MessageError(
            "payload", f"int8 scale must be positive and at most {MAX_INT8_SCALE:.3g}, zero point within -128..127"
        )
    from agents.transport import int8_kernels

    if not per_channel:  # one scale for every lane
        scale, zero = scale * view.shape[1], zero * view.shape[1]
    out = np.empty(view.shape, np.float32)
    int8_kernels.dequantize(view, np.array(scale, dtype=np.float32), np.array(zero, dtype=np.float32), out)
    return out.reshape(q.shape)


def _params(header: dict[str, Any], key: str, n: int) -> list[float]:
    value = header.get(key)
    if (
        not isinstance(value, list)
        or len(value) != n
        or not set(map(type, value)) <= {int, float}  # bool is not a number here
    ):
        raise MessageError("payload", f"int8 activation needs {n} numeric {key} value(s), got {value!r}")
    return value
