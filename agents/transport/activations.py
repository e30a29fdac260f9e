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
"""

from __future__ import annotations

import math
import zlib
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor

from agents.transport.envelope import Envelope, MessageError

FORMATS = ("fp32", "fp16", "int8", "int8-channel")
COMPRESSORS = ("zlib",)
_WIRE_DTYPE = {"fp32": "float32", "fp16": "float16", "int8": "int8", "int8-channel": "int8"}
_TORCH_DTYPE = {"fp32": torch.float32, "fp16": torch.float16, "int8": torch.int8, "int8-channel": torch.int8}
MAX_ACTIVATION_ELEMENTS = 64 * 1024 * 1024  # 256 MB of fp32: far above any split point, bounds allocation


@dataclass(frozen=True)
class Codec:
    """A parsed codec name."""

    format: str
    compress: str | None = None

    @property
    def name(self) -> str:
        """The codec's name as written in configs, headers and reports."""
        return self.format + (f"+{self.compress}" if self.compress else "")


def parse_codec(name: str) -> Codec:
    """``"int8+zlib"`` to a :class:`Codec`; ``ValueError`` naming the valid choices otherwise."""
    fmt, _, comp = name.partition("+")
    if fmt not in FORMATS or (comp and comp not in COMPRESSORS):
        raise ValueError(
            f"unknown activation codec {name!r}: expected one of {', '.join(FORMATS)}, "
            f"optionally followed by +{' or +'.join(COMPRESSORS)} (e.g. int8+zlib)"
        )
    return Codec(fmt, comp or None)


def all_codecs() -> list[str]:
    """Every codec name, uncompressed ones first."""
    return [*FORMATS, *(f"{f}+{c}" for c in COMPRESSORS for f in FORMATS)]


def _affine(lo: float, hi: float) -> tuple[float, int]:
    """Scale and zero point mapping ``[min(lo, 0), max(hi, 0)]`` onto -128..127 (zero exactly representable)."""
    lo, hi = min(lo, 0.0), max(hi, 0.0)
    scale = max((hi - lo) / 255.0, 1e-12)
    return scale, int(min(127, max(-128, round(-128.0 - lo / scale))))


def activation_bytes(shape: tuple[int, ...], codec: str | Codec) -> int:
    """Payload bytes of one activation of ``shape`` (without batch) before compression: the most a codec sends."""
    c = parse_codec(codec) if isinstance(codec, str) else codec
    return math.prod(shape) * np.dtype(_WIRE_DTYPE[c.format]).itemsize


def _quantize(x: Tensor, channel_dim: int | None) -> tuple[Tensor, list[float], list[int]]:
    """Affine int8 per tensor (``channel_dim`` None) or per channel along ``channel_dim``."""
    if channel_dim is None:
        lo, hi = torch.aminmax(x)
        scale, zero = _affine(float(lo), float(hi))
        # Python scalars: each 1-element tensor op would cost as much as the whole chain.
        q = (x * (1.0 / scale)).round_().add_(zero)
        return q.clamp_(-128, 127).to(torch.int8), [scale], [zero]
    # Channels as the last axis of a 2-d view: one reduction pass, then the same affine map as vectors.
    c = x.shape[channel_dim]
    rows = x.reshape(-1, c) if channel_dim == x.dim() - 1 else x.transpose(channel_dim, -1).reshape(-1, c)
    lo_c, hi_c = torch.aminmax(rows, dim=0)
    lo_c, hi_c = lo_c.clamp(max=0.0), hi_c.clamp(min=0.0)
    scales = ((hi_c - lo_c) / 255.0).clamp_(min=1e-12)
    zeros = (-128.0 - lo_c / scales).round_().clamp_(-128, 127)
    view = [1] * x.dim()
    view[channel_dim] = -1
    q = (x / scales.reshape(view)).round_().add_(zeros.reshape(view))
    return q.clamp_(-128, 127).to(torch.int8), scales.tolist(), [int(z) for z in zeros.tolist()]


def encode_activation(x: Tensor, codec: str | Codec) -> tuple[dict[str, Any], bytes]:
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
        wire, channel_dim = x.permute(0, 2, 3, 1), 3  # contiguous: a view, no copy
        header["layout"] = "nhwc"
    else:
        wire, channel_dim = x.contiguous(), 1
    if c.format == "fp32":
        raw = wire.numpy().tobytes()
    elif c.format == "fp16":
        raw = wire.half().numpy().tobytes()
    else:
        q, scale, zero = _quantize(wire, channel_dim if c.format == "int8-channel" else None)
        raw = q.numpy().tobytes()
        header["scale"] = scale
        header["zero_point"] = zero
    # zlib level 1: most of the gain for a fraction of the time.
    data = zlib.compress(raw, 1) if c.compress == "zlib" else raw
    header["raw_nbytes"] = len(raw)
    return header, data


def _decompress(data: bytes, compress: str | None, expected: int) -> bytes:
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
    wire = np.dtype(_WIRE_DTYPE[c.format])
    expected_bytes = count * wire.itemsize
    if h.get("raw_nbytes", expected_bytes) != expected_bytes:
        raise MessageError(
            "payload", f"header announces {h.get('raw_nbytes')} raw bytes, the shape needs {expected_bytes}"
        )
    layout = h.get("layout", "nchw")
    if layout not in ("nchw", "nhwc") or (layout == "nhwc" and len(shape) != 4):
        raise MessageError("shape", f"activation layout {layout!r} must be nchw, or nhwc for 4-d activations")
    raw = _decompress(envelope.payload, c.compress, expected_bytes)
    # bytearray: a writable copy torch can wrap; torch converts fp16 in hardware, numpy does not.
    flat = torch.frombuffer(bytearray(raw), dtype=_TORCH_DTYPE[c.format])
    if layout == "nhwc":  # back to logical NCHW as a channels-last view: no copy, and what the model prefers
        n, ch, hh, ww = shape
        values = flat.reshape(n, hh, ww, ch).permute(0, 3, 1, 2)
    else:
        values = flat.reshape(shape)
    if c.format in ("fp32", "fp16"):
        return values.float()
    channels = shape[1] if c.format == "int8-channel" and len(shape) > 1 else 1
    scale = _params(h, "scale", channels)
    zero = _params(h, "zero_point", channels)
    bad = "int8 scale must be finite and positive, zero point within -128..127"
    if channels == 1:  # Python scalars: a handful of 1-element tensor ops would cost more than the data
        s0, z0 = float(scale[0]), float(zero[0])
        if not (math.isfinite(s0) and s0 > 0 and -128 <= z0 <= 127):
            raise MessageError("payload", bad)
        return values.float().sub_(z0).mul_(s0)
    st, zt = torch.tensor(scale, dtype=torch.float32), torch.tensor(zero, dtype=torch.float32)
    if not (torch.isfinite(st).all() and (st > 0).all() and (zt >= -128).all() and (zt <= 127).all()):
        raise MessageError("payload", bad)
    view = (1, -1, *([1] * (len(shape) - 2)))
    return values.float().sub_(zt.reshape(view)).mul_(st.reshape(view))


def _params(header: dict[str, Any], key: str, n: int) -> list[float]:
    value = header.get(key)
    if (
        not isinstance(value, list)
        or len(value) != n
        or not all(type(v) in (int, float) for v in value)  # bool is not a number here
    ):
        raise MessageError("payload", f"int8 activation needs {n} numeric {key} value(s), got {value!r}")
    return value
