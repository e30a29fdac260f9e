"""Envelope codec: round trips, and every malformed input rejected with its kind before allocation."""

from __future__ import annotations

import json
import struct

import numpy as np
import pytest

from agents.transport.envelope import (
    MAGIC,
    SCHEMA_VERSION,
    Envelope,
    MessageError,
    decode,
    encode,
    tensor_header,
    tensor_payload,
)


def _frame(payload: bytes = b"\xff\xd8jpeg") -> Envelope:
    env = Envelope({"id": "dev1-000001", "kind": "request", "encoding": "jpeg", "reply_to": "r/t"}, payload)
    env.stamp("capture", 1_700_000_000_000_000_000)
    return env


def test_round_trip_keeps_header_payload_and_stamps() -> None:
    env = _frame()
    back = decode(encode(env))
    assert back.id == "dev1-000001" and back.payload == env.payload
    assert back.header["reply_to"] == "r/t" and back.stamps == env.stamps


def test_tensor_round_trip_is_exact() -> None:
    act = np.random.default_rng(0).standard_normal((1, 32, 16, 16)).astype(np.float32)
    env = Envelope({"id": "x", **tensor_header(act)}, act.tobytes())
    got = tensor_payload(decode(encode(env)), expected_shape=(1, 32, 16, 16))
    assert got.dtype == np.float32 and np.array_equal(got, act)


def _raw(header: dict[str, object], payload: bytes = b"", version: int = SCHEMA_VERSION) -> bytes:
    body = json.dumps(header).encode()
    return struct.pack(">3sBI", MAGIC, version, len(body)) + body + payload


@pytest.mark.parametrize(
    ("data", "kind"),
    [
        (b"", "truncated"),
        (b"\x00\x01garbage-bytes-here", "garbage"),
        (_raw({"id": "a", "nbytes": 0}, version=9), "version"),
        (_raw({"id": "a", "nbytes": 0})[:-3], "truncated"),
        (_raw({"id": "a", "nbytes": 10}, b"abc"), "truncated"),
        (_raw({"id": "a", "nbytes": 1}, b"abc"), "header"),
        (_raw({"id": "a", "nbytes": 1 << 40}), "oversized"),
        (struct.pack(">3sBI", MAGIC, SCHEMA_VERSION, 1 << 30), "oversized"),
        (struct.pack(">3sBI", MAGIC, SCHEMA_VERSION, 4) + b"\xff\xfe{]", "header"),
        (_raw({"nbytes": 0}), "header"),
        (_raw({"id": 5, "nbytes": 0}), "header"),
        (_raw({"id": "a", "nbytes": 0, "encoding": "gif"}), "encoding"),
        (_raw({"id": "a", "nbytes": 0, "stamps": [["x", "late"]]}), "header"),
    ],
)
def test_malformed_messages_are_rejected_by_kind(data: bytes, kind: str) -> None:
    with pytest.raises(MessageError) as info:
        decode(data)
    assert info.value.kind == kind


@pytest.mark.parametrize(
    ("header", "payload", "kind"),
    [
        ({"dtype": "float64", "shape": [2]}, b"\0" * 16, "dtype"),
        ({"dtype": "object", "shape": [2]}, b"\0" * 16, "dtype"),
        ({"dtype": "float32", "shape": [2, 0]}, b"", "shape"),
        ({"dtype": "float32", "shape": "2x2"}, b"\0" * 16, "shape"),
        ({"dtype": "float32", "shape": [3]}, b"\0" * 8, "shape"),
        ({"dtype": "float32", "shape": [1 << 40, 1 << 40]}, b"\0" * 8, "shape"),
    ],
)
def test_bad_tensors_are_rejected(header: dict[str, object], payload: bytes, kind: str) -> None:
    env = decode(encode(Envelope({"id": "t", "encoding": "tensor", **header}, payload)))
    with pytest.raises(MessageError) as info:
        tensor_payload(env)
    assert info.value.kind == kind


def test_wrong_shape_for_the_receiver() -> None:
    act = np.zeros((1, 8, 4, 4), np.float32)
    env = decode(encode(Envelope({"id": "t", **tensor_header(act)}, act.tobytes())))
    with pytest.raises(MessageError, match="shape"):
        tensor_payload(env, expected_shape=(1, 16, 4, 4))


def test_payload_limit_is_enforced() -> None:
    with pytest.raises(MessageError) as info:
        decode(encode(_frame(b"x" * 2000)), max_payload=1000)
    assert info.value.kind == "oversized"


def test_every_rejection_kind_in_the_code_is_listed() -> None:
    """Agents report every ``rejected_<kind>`` counter from the start only if REJECT_KINDS names them all."""
    import re
    from pathlib import Path

    from agents.transport.envelope import REJECT_KINDS

    root = Path(__file__).resolve().parents[1] / "agents"
    kinds: set[str] = set()
    for path in root.rglob("*.py"):
        text = path.read_text()
        kinds |= set(re.findall(r'MessageError\(\s*"([a-z_]+)"', text))
        kinds |= set(re.findall(r'reject\(\s*"([a-z_]+)"', text))
    kinds |= {"truncated", "header"}  # envelope.decode's computed kind
    assert kinds and kinds <= set(REJECT_KINDS), sorted(kinds - set(REJECT_KINDS))
