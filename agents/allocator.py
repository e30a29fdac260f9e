"""glibc malloc settings for inference: freed activations stay in the process instead of going back to the OS.

glibc serves a block above its mmap threshold with a fresh ``mmap`` and unmaps
it on ``free``, and gives the top of the heap back to the OS once more than
``M_TRIM_THRESHOLD`` of it is free. Both thresholds start small (128 KiB) and
move with what the process frees. A model whose activations cross them — a
batch of 32 on the edge, a wide layer at full resolution — then gets pages the
kernel has to zero and map on first touch, every call. Measured here:
edge-medium at batch 32 on two threads took 3,200 minor page faults per call,
16.1–16.7 ms against 12.5–12.8 ms with the thresholds fixed, at the same peak
memory; under load (``benchmarks/edge_batching``) the batched edge answered
15–20 % more requests a second.

:func:`keep_freed_memory` fixes the mmap threshold at glibc's documented 64-bit
maximum (32 MiB) and never trims the heap, so freed activations are reused by the next
call. The process's memory then stays at its peak (which it reaches on every
call anyway) instead of being returned between calls. Every ``cascade``
command calls it at start; ``CASCADE_MALLOC=default`` leaves glibc as it is.
Elsewhere than glibc (musl, macOS) it does nothing.
"""

from __future__ import annotations

import ctypes
import logging
import os

log = logging.getLogger(__name__)

#: ``mallopt`` parameters (glibc's malloc.h).
M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
#: glibc's documented upper limit on 64-bit systems (DEFAULT_MMAP_THRESHOLD_MAX). Larger blocks still
#: get their own mmap; the shipped models at batch 32 peak at about 8 MiB a tensor.
MMAP_THRESHOLD = 32 * 1024 * 1024
#: The largest trim threshold ``mallopt`` takes (its value is a C int): 2 GiB of free heap, which an
#: agent's heap never holds, so free memory stays in the process.
TRIM_THRESHOLD = 2**31 - 1
#: ``CASCADE_MALLOC=default`` keeps glibc's own behaviour.
ENV = "CASCADE_MALLOC"


def is_glibc() -> bool:
    """Whether this process runs on glibc, whose ``mallopt`` thresholds this module sets."""
    try:
        return os.confstr("CS_GNU_LIBC_VERSION").startswith("glibc")  # type: ignore[union-attr]
    except (AttributeError, ValueError, OSError):
        return False  # no confstr, or a C library that does not know the name: not glibc


def keep_freed_memory() -> bool:
    """Fix glibc's mmap and trim thresholds (see the module docstring); True when both were set."""
    if os.environ.get(ENV, "").strip().lower() == "default":
        log.debug("%s=default: glibc malloc thresholds left as they are", ENV)
        return False
    if not is_glibc():
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    ok = bool(mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and bool(mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD))
    if not ok:
        log.debug("mallopt refused the thresholds; glibc malloc left as it is")
    return ok
