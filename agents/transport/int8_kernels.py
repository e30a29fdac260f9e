"""Compiled int8 kernels for the activation codecs: range, scale, zero point and quantization in one call.

Why compiled: the numpy version took about ten whole-array calls a side, and
per channel it needed a reshaping trick to keep its inner loops long. Measured on
the shipped ``device-small`` (``benchmarks/split_codec``), per-channel encode +
decode went from 92 to 50 µs at split 1 and from 68 to 35 µs at split 2; per
tensor the two are about even alone (51 and 48 µs at split 1). Inside the device
loop, where every call finds its caches evicted by the model, it added 226 µs
per channel and 162 µs per tensor at split 2 before, and 109 and 123 µs after
(encode and decode only, one run each). numba compiles these loops once per
machine and caches the result (``NUMBA_CACHE_DIR``, else next to this file or in
the user's cache).

Arrays are seen as ``(outer, channels, inner)``: a channels-last activation is
``(pixels, C, 1)``, a C-order one ``(N, C, pixels)``, a per-tensor one
``(n / 16, 16, 1)`` (16 lanes). With ``inner`` 1 the loops run across the channels,
elementwise, so they vectorise without fast-math assumptions about NaN: a NaN or an
infinity turns a per-channel ``v * 0`` sum into NaN, and the encoder refuses the
activation.

The affine range spans 254 steps, not 255, and holds 0: rounding the zero point moves
values by at most half a step, so ``x / scale + zero_point`` stays within
-128.5..126.5 and needs no clamping. Adding 128.5 and truncating rounds it into
0..255; subtracting 128 gives the int8 value.
"""

from __future__ import annotations

from typing import Any

import numba
import numpy as np

# Everything but "nnan" and "ninf": the NaN check below must survive compilation.
_FAST = {"nsz", "arcp", "contract", "reassoc"}


def _jit(fn: Any) -> Any:
    """Numba's compiler with an on-disk cache, or without one where no cache directory is writable."""
    try:
        return numba.njit(cache=True, nogil=True, fastmath=_FAST)(fn)
    except RuntimeError:  # "cannot cache function …: no locator available" (read-only install, no home)
        return numba.njit(nogil=True, fastmath=_FAST)(fn)


@_jit
def _ranges(a: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> bool:  # pragma: no cover - compiled
    """Per-channel min and max of ``a`` (outer, C, inner) into ``lo``/``hi`` (start at 0); False on NaN/inf."""
    outer, channels, inner = a.shape
    bad = np.zeros(channels, np.float32)
    for o in range(outer):
        if inner == 1:  # channels last: the channel loop is the long contiguous one, vectorised
            for c in range(channels):
                v = a[o, c, 0]
                lo[c] = min(lo[c], v)
                hi[c] = max(hi[c], v)
                bad[c] += v * np.float32(0.0)
        else:
            for c in range(channels):
                lo_c, hi_c, bad_c = lo[c], hi[c], bad[c]
                for i in range(inner):
                    v = a[o, c, i]
                    lo_c = min(lo_c, v)
                    hi_c = max(hi_c, v)
                    bad_c += v * np.float32(0.0)
                lo[c], hi[c], bad[c] = lo_c, hi_c, bad_c
    return bool(np.isfinite(bad.sum()))


@_jit
def quantize(  # pragma: no cover - compiled
    a: np.ndarray, out: np.ndarray, scale: np.ndarray, zero: np.ndarray, per_tensor: bool
) -> bool:
    """int8 of ``a`` (outer, C, inner float32) into ``out``; ``scale``/``zero`` (float32, one per C) filled in.

    ``per_tensor``: one range for the whole array; the C "channels" are then only lanes
    that let the range loop vectorise. Returns False, leaving ``out`` unwritten, when
    ``a`` holds NaN or an infinity.
    """
    outer, channels, inner = a.shape
    lo = np.zeros(channels, np.float32)
    hi = np.zeros(channels, np.float32)
    if not _ranges(a, lo, hi):
        return False
    if per_tensor:
        lo[:] = lo.min()
        hi[:] = hi.max()
    inv = np.empty(channels, np.float32)
    shift = np.empty(channels, np.float32)
    for c in range(channels):
        s = (hi[c] - lo[c]) / np.float32(254.0) + np.float32(1e-12)  # > 0 for a constant-zero channel too
        z = np.float32(np.rint(np.float32(-128.0) - lo[c] / s))
        scale[c] = s
        zero[c] = z
        inv[c] = np.float32(1.0) / s
        shift[c] = z + np.float32(128.5)
    for o in range(outer):
        if inner == 1:
            for c in range(channels):
                out[o, c, 0] = np.int8(np.int32(a[o, c, 0] * inv[c] + shift[c]) - 128)
        else:
            for c in range(channels):
                inv_c, shift_c = inv[c], shift[c]
                for i in range(inner):
                    out[o, c, i] = np.int8(np.int32(a[o, c, i] * inv_c + shift_c) - 128)
    return True


@_jit
def dequantize(q: np.ndarray, scale: np.ndarray, zero: np.ndarray, out: np.ndarray) -> None:  # pragma: no cover
    """``(q - zero) * scale`` per channel, ``q`` (outer, C, inner) int8, into float32 ``out`` of the same shape."""
    outer, channels, inner = q.shape
    for o in range(outer):
        if inner == 1:
            for c in range(channels):
                out[o, c, 0] = (np.float32(q[o, c, 0]) - zero[c]) * scale[c]
        else:
            for c in range(channels):
                s, z = scale[c], zero[c]
                for i in range(inner):
                    out[o, c, i] = (np.float32(q[o, c, i]) - z) * s
