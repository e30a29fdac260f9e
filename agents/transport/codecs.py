"""Activation codec names: what configs, headers and reports call a codec, without numpy's or torch's weight.

Kept apart from :mod:`agents.transport.activations` (the encoders) so that reading a
deployment file does not import torch.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

FORMATS = ("fp32", "fp16", "int8", "int8-channel")
COMPRESSORS = ("zlib",)
WIRE_DTYPE = {"fp32": "float32", "fp16": "float16", "int8": "int8", "int8-channel": "int8"}
_ITEMSIZE = {"float32": 4, "float16": 2, "int8": 1}


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


def activation_bytes(shape: tuple[int, ...], codec: str | Codec) -> int:
    """Payload bytes of one activation of ``shape`` (without batch) before compression: the most a codec sends."""
    c = parse_codec(codec) if isinstance(codec, str) else codec
    return math.prod(shape) * _ITEMSIZE[WIRE_DTYPE[c.format]]
