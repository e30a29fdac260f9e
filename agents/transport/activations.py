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

The int8 arithmetic runs in numpy, a few whole-array passes per side: at these sizes
(6–25 k values a frame) each torch call's fixed cost is as large as its work, and
numpy's reductions are vectorised (``benchmarks/split_codec`` times it).
"""

from __future__ import annotations

import math
import zlib
from typing import Any, TypeVar

import numpy as np
import torch
from torch import Tensor

from agents.transport.codecs import WIRE_DTYPE, Codec, parse_codec
from agents.transport.envelope import Envelope, MessageError, Payload

_TORCH_DTYPE = {"fp32": torch.float32, "fp16": torch.float16, "int8": torch.int8, "int8-channel": torch.int8}
MAX_ACTIVATION_ELEMENTS = 64 * 1024 * 1024  # 256 MB of fp32: far above any split point, bounds allocation


_Params = TypeVar("_Params", float, np.ndarray)


def _affine(lo: _Params, hi: _Params) -> tuple[_Params, _Params]:
    """Scale and zero point mapping ``[lo, hi]``, which holds 0, into -128..127: per tensor (floats) or per channel.

    0 is exactly representable. The range spans 254 steps, not 255: rounding the zero
    point moves values by at most half a step, so ``x / scale + zero_point`` stays within
    -128.5..126.5 and the encoder needs no clamping pass. The zero point lands in -128..126.
    Written with operators so Python floats stay floats: numpy's 0-d arithmetic would cost
    more than the per-tensor encoding itself.
    """
    span = hi - lo  # NaN or infinite when either end is
    if not np.isfinite(span).all():
        raise ValueError("the activation holds NaN or infinite values, which int8 cannot encode")
    scale = span / 254.0 + 1e-12  # > 0 for a constant-zero activation too
    return scale, np.rint(-128.0 - lo / scale)


def _to_int8(values: np.ndarray, inv_scale: np.ndarray | np.float32, zero: np.ndarray | np.float32) -> np.ndarray:
    """``round(values * inv_scale + zero)`` as int8, in four vectorised passes.

    The sum plus 128.5 lies in 0..255 (see :func:`_affine`): truncating it to uint8
    rounds it, and flipping the top bit maps 0..255 onto the int8 values -128..127.
    """
    u = values * inv_scale
    u += zero + np.float32(128.5)
    q = u.astype(np.uint8)
    q ^= 0x80
    return q.view(np.int8)


def _channel_rows(a: np.ndarray, channels_last: bool) -> tuple[np.ndarray, int]:
    """``a`` viewed so per-channel work runs along long contiguous rows, and the channel repeat per row.

    numpy is fast along long inner loops and slow along a 24-element one. Channels last:
    rows of ``k`` pixels × C channels (``k`` a power of two dividing the pixel count, at
    most 64), so C parameters tiled ``k`` times line up with every row. Channels first:
    ``(N, C, pixels)``, the parameters as a ``(C, 1)`` column (``k`` is 0).
    """
    if channels_last:
        c = a.shape[-1]
        k = math.gcd(a.size // c, 64)
        return a.reshape(-1, k * c), k
    return a.reshape(a.shape[0], a.shape[1], -1), 0


def _spread(per_channel: np.ndarray, k: int) -> np.ndarray:
    """Per-channel parameters shaped to broadcast against :func:`_channel_rows`' view."""
    return per_channel[None].repeat(k, 0).reshape(-1) if k else per_channel.reshape(-1, 1)


def _quantize(a: np.ndarray, channels_last: bool | None) -> tuple[np.ndarray, list[float], list[int]]:
    """Affine int8 per tensor (``channels_last`` None) or per channel (the last axis, or axis 1)."""
    # initial=0: the range always holds zero, at no extra pass.
    if channels_last is None:
        s, z = _affine(float(a.min(initial=0.0)), float(a.max(initial=0.0)))
        return _to_int8(a, np.float32(1.0 / s), np.float32(z)), [s], [int(z)]
    rows, k = _channel_rows(a, channels_last)
    if k:  # fold the k pixels of each row after reducing down the rows
        c = a.shape[-1]
        lo = np.minimum.reduce(rows, axis=0, initial=0.0).reshape(k, c).min(axis=0)
        hi = np.maximum.reduce(rows, axis=0, initial=0.0).reshape(k, c).max(axis=0)
    else:
        lo, hi = rows.min(axis=(0, 2), initial=0.0), rows.max(axis=(0, 2), initial=0.0)
    scale, zero = _affine(lo, hi)  # float32, as the receiver applies them
    q = _to_int8(rows, _spread(1.0 / scale, k), _spread(zero, k))
    return q, scale.tolist(), [int(z) for z in zero.tolist()]


def encode_activation(x: Tensor, codec: str | Codec) -> tuple[dict[str, Any], Payload]:
    """Header fields and payload bytes for an activation ``x`` (float, shape ``(N, C, ...)``).

    ``shape`` in the header is always the logical ``(N, C, H, W)``. A channels-last
    activation (what the models compute) is sent in that memory order, a C-order
    ``(N, H, W, C)`` array marked ``layout: nhwc``, which saves a transposing copy on
    both sides; anything else is sent C-order as ``(N, C, ...)``.
    """
    c = parse_codec(codec) if isinstance(codec, str) else codec
    x = x.detach().float()
    header: dict[str, Any] = {"encoding": "activation", "codec": c.name, "shape": list(x.shape)}
    if x.dim() == 4 and not x.is_contiguous() and x.is_contiguous(memory_format=torch.channels_last):
        wire, channels_last = x.permute(0, 2, 3, 1), True  # contiguous: a view, no copy
        header["layout"] = "nhwc"
    else:
        wire, channels_last = x.contiguous(), False
    if c.format == "fp32":
        values = wire.numpy()
    elif c.format == "fp16":
        values = wire.half().numpy()
    else:
        values, scale, zero = _quantize(wire.numpy(), channels_last if c.format == "int8-channel" else None)
        header["scale"] = scale
        header["zero_point"] = zero
    # A byte view of the array, not a copy: the envelope's encoder makes the one copy into the message.
    raw = values.reshape(-1).view(np.uint8).data
    # zlib level 1: most of the gain for a fraction of the time.
    data: Payload = zlib.compress(raw, 1) if c.compress == "zlib" else raw
    header["raw_nbytes"] = len(raw)
    return header, data


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
    """The float32 activation in ``envelope``, checked against ``expected_shape`` (the split point's)."""
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
    if c.format in ("fp32", "fp16"):
        # bytearray: a writable copy torch can wrap; torch converts fp16 in hardware, numpy does not.
        flat = torch.frombuffer(bytearray(raw), dtype=_TORCH_DTYPE[c.format]).float()
    else:
        flat = torch.from_numpy(_dequantize(h, np.frombuffer(raw, dtype=np.int8), shape, layout, c.format))
    if layout == "nhwc":  # back to logical NCHW as a channels-last view: no copy, and what the model prefers
        n, ch, hh, ww = shape
        return flat.reshape(n, hh, ww, ch).permute(0, 3, 1, 2)
    return flat.reshape(shape)


def _dequantize(h: dict[str, Any], q: np.ndarray, shape: list[int], layout: str, fmt: str) -> np.ndarray:
    """``(q - zero_point) * scale`` as float32 in wire order, the header's parameters checked first."""
    channels = shape[1] if fmt == "int8-channel" and len(shape) > 1 else 1
    scale = _params(h, "scale", channels)
    zero = _params(h, "zero_point", channels)
    # Plain Python over the lists: numpy's fixed cost per call would exceed the check. A NaN or
    # an infinity makes the sum non-finite, whatever the order min and max see it in.
    if not (math.isfinite(sum(scale) + sum(zero)) and min(scale) > 0 and min(zero) >= -128 and max(zero) <= 127):
        raise MessageError("payload", "int8 scale must be finite and positive, zero point within -128..127")
    if channels == 1:
        out = q.astype(np.float32)
        out -= np.float32(zero[0])
        out *= np.float32(scale[0])
        return out
    wire_shape = (shape[0], shape[2], shape[3], shape[1]) if layout == "nhwc" else tuple(shape)
    rows, k = _channel_rows(q.reshape(wire_shape), layout == "nhwc")
    out = rows.astype(np.float32)
    out -= _spread(np.array(zero, dtype=np.float32), k)
    out *= _spread(np.array(scale, dtype=np.float32), k)
    return out.reshape(-1)


def _params(header: dict[str, Any], key: str, n: int) -> list[float]:
    value = header.get(key)
    if (
        not isinstance(value, list)
        or len(value) != n
        or not set(map(type, value)) <= {int, float}  # bool is not a number here
    ):
        raise MessageError("payload", f"int8 activation needs {n} numeric {key} value(s), got {value!r}")
    return value
