"""The message envelope: a small versioned JSON header plus raw payload bytes.

Layout (all integers big-endian)::

    b"CSC"  schema version (1 byte)  header length (uint32)  header (UTF-8 JSON)  payload

The header carries everything the protocol needs (request id, reply topic,
deadline, per-hop timestamps, model/exit/split), so the protocol works on any MQTT
3.1.1 or 5 broker. The payload is an encoded image or a C-order tensor whose dtype
and shape are in the header. Nothing is ever unpickled: decoding checks sizes,
dtype and shape *before* allocating, and every failure is a :class:`MessageError`
with a ``kind`` the agents count by.
"""

from __future__ import annotations

import math
import struct
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import orjson

MAGIC = b"CSC"
SCHEMA_VERSION = 1
_PREFIX = struct.Struct(">3sBI")
MAX_HEADER_BYTES = 64 * 1024
DEFAULT_MAX_PAYLOAD = 16 * 1024 * 1024
TENSOR_DTYPES = ("float32", "float16", "uint8", "int8")
IMAGE_ENCODINGS = ("jpeg", "png", "raw")
ENCODINGS = (*IMAGE_ENCODINGS, "tensor", "activation", "none")


# Every kind a message can be rejected for (``rejected_<kind>`` counters): agents report each from
# the start, at zero, so dashboards show 0 rather than no data (tests/test_envelope.py keeps it complete).
REJECT_KINDS = (
    "chunk",
    "codec",
    "digest",
    "dtype",
    "encoding",
    "garbage",
    "header",
    "image",
    "incomplete_chunks",
    "model",
    "oversized",
    "payload",
    "shape",
    "split",
    "truncated",
    "unexpected",
    "unknown_id",
    "version",
)


class MessageError(ValueError):
    """A message that cannot be accepted; ``kind`` names the failure for counters."""

    def __init__(self, kind: str, detail: str) -> None:
        super().__init__(f"{kind}: {detail}")
        self.kind = kind
        self.detail = detail


# A payload is the message's own bytes or a view into them: decoding slices no copy out of
# the received message, and an encoder may hand over a view of an array's memory. One
# copy then happens where it must, when :func:`encode` joins the wire message.
Payload = bytes | memoryview


@dataclass
class Envelope:
    """One message: header fields plus payload bytes."""

    header: dict[str, Any]
    payload: Payload = b""
    stamps: list[tuple[str, int]] = field(default_factory=list)

    @property
    def id(self) -> str:
        """The request (frame) id."""
        return str(self.header["id"])

    def stamp(self, name: str, ns: int) -> None:
        """Record a wall-clock timestamp (``time.time_ns()``) for a point in the frame's life."""
        self.stamps.append((name, ns))


def encode(envelope: Envelope) -> bytes:
    """Serialise an envelope to wire bytes."""
    header = dict(envelope.header)
    header["stamps"] = [[n, t] for n, t in envelope.stamps]
    header.setdefault("encoding", "none")
    header["nbytes"] = len(envelope.payload)
    try:
        raw = orjson.dumps(header)
    except TypeError as exc:
        raise MessageError("header", f"header cannot be encoded ({exc})") from None
    if len(raw) > MAX_HEADER_BYTES:
        raise MessageError("oversized", f"header of {len(raw)} bytes exceeds {MAX_HEADER_BYTES}")
    return b"".join((_PREFIX.pack(MAGIC, SCHEMA_VERSION, len(raw)), raw, envelope.payload))


def _require(header: dict[str, Any], key: str, kind: type | tuple[type, ...]) -> Any:
    value = header.get(key)
    if not isinstance(value, kind) or (isinstance(value, bool) and kind is not bool):
        raise MessageError("header", f"field {key!r} missing or of the wrong type ({value!r})")
    return value


def decode(data: bytes, max_payload: int = DEFAULT_MAX_PAYLOAD) -> Envelope:
    """Parse and validate wire bytes; raise :class:`MessageError` on anything malformed."""
    if len(data) < _PREFIX.size:
        raise MessageError("truncated", f"{len(data)} bytes is shorter than the {_PREFIX.size}-byte prefix")
    magic, version, header_len = _PREFIX.unpack_from(data)
    if magic != MAGIC:
        raise MessageError("garbage", "not a cascade envelope (bad magic)")
    if version != SCHEMA_VERSION:
        raise MessageError("version", f"schema version {version}, this agent speaks {SCHEMA_VERSION}")
    if header_len > MAX_HEADER_BYTES:
        raise MessageError("oversized", f"header of {header_len} bytes exceeds {MAX_HEADER_BYTES}")
    body_start = _PREFIX.size + header_len
    if body_start > len(data):
        raise MessageError("truncated", f"header says {header_len} bytes, {len(data) - _PREFIX.size} present")
    try:
        header = orjson.loads(memoryview(data)[_PREFIX.size : body_start])
    except orjson.JSONDecodeError as exc:
        raise MessageError("header", f"header is not JSON ({exc})") from None
    if not isinstance(header, dict):
        raise MessageError("header", "header is not a JSON object")
    request_id = _require(header, "id", str)
    if not 0 < len(request_id) <= 128:
        raise MessageError("header", "field 'id' must be 1–128 characters")
    nbytes = _require(header, "nbytes", int)
    if nbytes > max_payload:
        raise MessageError("oversized", f"payload of {nbytes} bytes exceeds the limit of {max_payload}")
    if len(data) - body_start != nbytes:
        kind = "truncated" if len(data) - body_start < nbytes else "header"
        raise MessageError(kind, f"header announces {nbytes} payload bytes, {len(data) - body_start} present")
    encoding = header.get("encoding", "none")
    if encoding not in ENCODINGS:
        raise MessageError("encoding", f"unknown encoding {encoding!r}, expected one of {', '.join(ENCODINGS)}")
    raw_stamps = header.pop("stamps", [])
    if not isinstance(raw_stamps, list) or not all(
        isinstance(s, list) and len(s) == 2 and isinstance(s[0], str) and isinstance(s[1], int) for s in raw_stamps
    ):
        raise MessageError("header", "field 'stamps' must be a list of [name, ns] pairs")
    return Envelope(header, memoryview(data)[body_start:], [(s[0], s[1]) for s in raw_stamps])


def tensor_header(array: np.ndarray) -> dict[str, Any]:
    """Header fields describing a C-order tensor payload."""
    return {"encoding": "tensor", "dtype": str(array.dtype), "shape": list(array.shape)}


def tensor_payload(envelope: Envelope, expected_shape: tuple[int, ...] | None = None) -> np.ndarray:
    """The payload as a read-only numpy view, checked against the header's dtype and shape (and ``expected_shape``)."""
    header = envelope.header
    if header.get("encoding") != "tensor":
        raise MessageError("encoding", f"expected a tensor payload, got {header.get('encoding')!r}")
    dtype = header.get("dtype")
    if dtype not in TENSOR_DTYPES:
        raise MessageError("dtype", f"tensor dtype {dtype!r} not one of {', '.join(TENSOR_DTYPES)}")
    shape = header.get("shape")
    if not isinstance(shape, list) or not shape or not all(isinstance(d, int) and d > 0 for d in shape):
        raise MessageError("shape", f"tensor shape {shape!r} must be a list of positive integers")
    if expected_shape is not None and tuple(shape) != expected_shape:
        raise MessageError("shape", f"tensor shape {tuple(shape)} where {expected_shape} was expected")
    itemsize = np.dtype(dtype).itemsize
    # Python integers: a hostile shape cannot overflow the size check.
    needed = math.prod(shape) * itemsize
    if needed != len(envelope.payload):
        raise MessageError("shape", f"shape {shape} of {dtype} needs {needed} bytes, got {len(envelope.payload)}")
    return np.frombuffer(envelope.payload, dtype=dtype).reshape(shape)
