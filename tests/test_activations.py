"""Activation codecs on real activations of the shipped device model: exactness, error bounds, bad input."""

from __future__ import annotations

import zlib

import numpy as np
import pytest
import torch

from agents.datasets import SAMPLE_TAR, load_image_set
from agents.models.checkpoint import load_checkpoint
from agents.models.inputs import to_input
from agents.transport.activations import decode_activation, encode_activation, warm_up
from agents.transport.codecs import all_codecs, parse_codec
from agents.transport.envelope import Envelope, MessageError, decode, encode


@pytest.fixture(scope="module")
def activation() -> torch.Tensor:
    model, _ = load_checkpoint("device-small")
    images = load_image_set(SAMPLE_TAR).images[:1]
    with torch.inference_mode():
        return model.run(to_input(images), end=2, exits=False).activation.clone()


def _roundtrip(x: torch.Tensor, codec: str) -> tuple[torch.Tensor, int]:
    header, payload = encode_activation(x, codec)
    env = decode(encode(Envelope({"id": "r1", **header}, payload)))  # through the real envelope
    return decode_activation(env, tuple(x.shape)), len(payload)


@pytest.mark.parametrize("codec", all_codecs())
def test_roundtrip_error_bounds(activation: torch.Tensor, codec: str) -> None:
    y, nbytes = _roundtrip(activation, codec)
    err = float((y - activation).abs().max())
    span = float(activation.max() - torch.clamp(activation.min(), max=0))
    if codec.startswith("fp32"):
        assert torch.equal(y, activation)
    elif codec.startswith("fp16"):
        assert err <= float(activation.abs().max()) * 2**-10
    else:
        assert err <= span / 254 * 0.5 + 1e-6  # half a quantisation step (the range spans 254 of them)
    raw = activation.numel() * {"fp32": 4, "fp16": 2, "int8": 1, "int8-channel": 1}[parse_codec(codec).format]
    assert (nbytes < raw) if "+zlib" in codec else (nbytes == raw)


@pytest.mark.parametrize("codec", ["int8", "int8-channel"])
@pytest.mark.parametrize("channels_last", [True, False])
def test_int8_per_channel_bounds_in_either_layout(activation: torch.Tensor, codec: str, channels_last: bool) -> None:
    # Channel c of sample n scaled by c + 1 and shifted below zero: every channel gets its own range,
    # so a per-channel parameter applied to the wrong channel shows as an error far above half a step.
    c = activation.shape[1]
    x = (activation * torch.arange(1, c + 1).reshape(1, -1, 1, 1) - torch.arange(c).reshape(1, -1, 1, 1)).repeat(
        2, 1, 1, 1
    )
    x = x.contiguous(memory_format=torch.channels_last) if channels_last else x.contiguous()
    header, payload = encode_activation(x, codec)
    assert ("layout" in header) == channels_last
    y = decode_activation(Envelope({"id": "r", **header}, payload), tuple(x.shape))
    assert y.shape == x.shape and y.dtype == torch.float32
    steps = torch.tensor(header["scale"]).reshape(1, -1, 1, 1)  # one scale, or one per channel
    assert bool(((y - x).abs() <= steps / 2 + 1e-5).all())
    q = torch.frombuffer(bytearray(payload), dtype=torch.int8)
    assert int(q.min()) == -128 and int(q.max()) >= 126  # the range is used, end to end


def test_per_channel_is_finer_than_per_tensor(activation: torch.Tensor) -> None:
    tensor_err = float((_roundtrip(activation, "int8")[0] - activation).abs().mean())
    channel_err = float((_roundtrip(activation, "int8-channel")[0] - activation).abs().mean())
    assert channel_err < tensor_err


def test_bad_activations_are_rejected(activation: torch.Tensor) -> None:
    shape = tuple(activation.shape)
    header, payload = encode_activation(activation, "int8")
    cases = {
        "shape": ({**header, "shape": [1, 16, 16, 32]}, payload),
        "codec": ({**header, "codec": "int4"}, payload),
        "payload": ({**header}, payload[:-1]),
    }
    for kind, (h, p) in cases.items():
        with pytest.raises(MessageError) as info:
            decode_activation(Envelope({"id": "r", **h}, p), shape)
        assert info.value.kind == kind
    for bad in (
        {"scale": [0.0]},
        {"scale": [1.0, 2.0]},
        {"zero_point": [300]},
        {"scale": ["x"]},
        {"scale": [float("nan")]},
        {"scale": [float("inf")]},
        {"scale": [3e38]},  # finite, but (q - zero) * scale overflows float32: the model would see NaN
    ):
        with pytest.raises(MessageError, match="int8"):
            decode_activation(Envelope({"id": "r", **header, **bad}, payload), shape)
    # Per channel, a NaN where min and max would not look: anywhere in the list.
    ch_header, ch_payload = encode_activation(activation, "int8-channel")
    for i in (0, 5):
        scales = list(ch_header["scale"])
        scales[i] = float("nan")
        with pytest.raises(MessageError, match="int8"):
            decode_activation(Envelope({"id": "r", **ch_header, "scale": scales}, ch_payload), shape)
    # A zlib bomb: a small payload that inflates past what the shape allows is cut at the bound.
    zh, _ = encode_activation(activation, "fp32+zlib")
    bomb = zlib.compress(b"\0" * (activation.numel() * 4 * 50))
    with pytest.raises(MessageError, match="does not end"):
        decode_activation(Envelope({"id": "r", **zh}, bomb), shape)
    with pytest.raises(MessageError, match="corrupt"):
        decode_activation(Envelope({"id": "r", **zh}, b"not zlib at all"), shape)
    with pytest.raises(ValueError, match="expected one of fp32"):
        parse_codec("fp8")


@pytest.mark.parametrize("codec", ["int8", "int8-channel"])
@pytest.mark.parametrize("shape", [(3, 5, 7, 3), (2, 37), (2, 6, 11), (1, 1, 1, 1)])
def test_int8_bounds_on_odd_shapes(codec: str, shape: tuple[int, ...]) -> None:
    # Sizes that are not a multiple of the kernels' 16 lanes, other ranks, and a single value.
    x = torch.randn(shape, generator=torch.Generator().manual_seed(1)) * 3 + 1
    header, payload = encode_activation(x, codec)
    y = decode_activation(Envelope({"id": "r", **header}, bytes(payload)), shape)
    assert y.shape == x.shape
    steps = torch.tensor(header["scale"]).reshape(1, -1, *([1] * (len(shape) - 2)))
    assert bool(((y - x).abs() <= steps / 2 + 1e-5).all())


@pytest.mark.parametrize("codec", ["int8", "int8-channel"])
@pytest.mark.parametrize("channels_last", [True, False])
@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf")])
def test_int8_refuses_non_finite_activations(
    activation: torch.Tensor, codec: str, channels_last: bool, bad: float
) -> None:
    # First, last and a middle element, in either memory order: the compiled range check sees them all.
    n = activation.numel()
    for index in (0, n // 2 + 3, n - 1):
        x = activation.clone().reshape(-1)
        x[index] = bad
        x = x.reshape(activation.shape)
        x = x.contiguous(memory_format=torch.channels_last) if channels_last else x.contiguous()
        with pytest.raises(ValueError, match="NaN or infinite"):
            encode_activation(x, codec)


def test_fp32_decoding_wraps_the_received_bytes(activation: torch.Tensor) -> None:
    header, payload = encode_activation(activation, "fp32")
    received = bytes(payload)
    y = decode_activation(Envelope({"id": "r", **header}, memoryview(received)), tuple(activation.shape))
    assert torch.equal(y, activation)
    assert y.is_contiguous(memory_format=torch.channels_last)  # the layout the model prefers, no transposing copy
    # No copy: the tensor reads the message's memory (decoding a 96 KB activation is a few µs).
    assert y.data_ptr() == np.frombuffer(received, dtype=np.uint8).ctypes.data


@pytest.mark.parametrize("codec", all_codecs())
def test_warm_up_compiles_every_codec(codec: str) -> None:
    warm_up(codec)  # no error; for int8 the kernels are compiled (or loaded from numba's cache)
