"""Checkpoints: safetensors + JSON round trip, mismatches refused with a clear message."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file

from agents.errors import CheckpointError
from agents.models.checkpoint import SHIPPED_DIR, load_checkpoint, save_checkpoint, temperatures
from agents.models.zoo import build_model


def test_round_trip_without_pickle(tmp_path: Path) -> None:
    torch.manual_seed(1)
    model = build_model("edge-medium").eval()
    meta_path = save_checkpoint(model, {"classes": [str(i) for i in range(10)]}, tmp_path)
    weights = tmp_path / "edge-medium.safetensors"
    # The weights file is plain safetensors: readable with no Python object loading at all.
    assert set(load_file(str(weights))) == set(model.state_dict())
    meta = json.loads(meta_path.read_text())
    assert meta["architecture"] == "edge-medium" and len(meta["sha256"]) == 64
    loaded, _ = load_checkpoint(tmp_path)
    x = torch.randn(2, 3, 32, 32)
    for name, value in model.state_dict().items():
        assert torch.equal(value, loaded.state_dict()[name]), name  # bit for bit
    with torch.inference_mode():
        # Loaded weights are channels-last (faster with the agents' inputs): another summation order.
        for a, b in zip(model(x), loaded(x), strict=True):
            torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


def test_architecture_mismatch_is_refused(tmp_path: Path) -> None:
    save_checkpoint(build_model("device-small"), {"classes": [str(i) for i in range(10)]}, tmp_path)
    meta_path = tmp_path / "device-small.json"
    meta = json.loads(meta_path.read_text())
    meta["architecture"] = "edge-medium"
    meta_path.write_text(json.dumps(meta))
    with pytest.raises(CheckpointError, match="do not match architecture 'edge-medium'"):
        load_checkpoint(meta_path)


def test_unknown_checkpoint_name_lists_what_exists() -> None:
    with pytest.raises(CheckpointError, match="no checkpoint 'nope'"):
        load_checkpoint("nope")


def _edited_copy(tmp_path: Path, **changes: Any) -> Path:
    """The shipped device-small checkpoint copied into ``tmp_path`` with ``changes`` made to its metadata."""
    src = SHIPPED_DIR / "device-small"
    shutil.copy(src / "device-small.safetensors", tmp_path / "device-small.safetensors")
    meta = json.loads((src / "device-small.json").read_text())
    meta.update(changes)
    meta_path = tmp_path / "device-small.json"
    meta_path.write_text(json.dumps(meta))
    return meta_path


def _exits(**fields: Any) -> list[dict[str, Any]]:
    return [{"index": i, "stage": i + 1, **fields} for i in range(3)]


BAD_METADATA: dict[str, tuple[dict[str, Any], str]] = {
    "classes not a list": ({"classes": 10}, "classes must be a non-empty list"),
    "classes repeated": ({"classes": ["cat"] * 10}, "classes must be a list of distinct"),
    "architecture a list": ({"architecture": ["device-small"]}, "architecture must be a zoo architecture"),
    "input_shape of two": ({"input_shape": [3, 32]}, "input_shape must be three positive integers"),
    "input_shape negative": ({"input_shape": [3, -1, 32]}, "input_shape must be three positive integers"),
    "input_shape of floats": ({"input_shape": [3, 32.5, 32]}, "input_shape must be three positive integers"),
    "input_shape one channel": ({"input_shape": [1, 32, 32]}, "takes 3 channels"),
    "input_shape too small": ({"input_shape": [3, 4, 4]}, "input_shape [3, 4, 4] is too small"),
    "input_shape huge": ({"input_shape": [3, 10**6, 10**6]}, "at most 1024 pixels"),
    "exits of strings": ({"exits": ["a", "b", "c"]}, "exits must be a list of objects"),
    "temperature a string": ({"exits": _exits(temperature="hot")}, "exits[0].temperature must be a finite number > 0"),
    "temperature zero": ({"exits": _exits(temperature=0)}, "exits[0].temperature must be a finite number > 0"),
    "temperature negative": ({"exits": _exits(temperature=-0.5)}, "exits[0].temperature must be a finite number"),
    "temperature NaN": ({"exits": _exits(temperature=float("nan"))}, "exits[0].temperature must be a finite"),
    "temperature true": ({"exits": _exits(temperature=True)}, "exits[0].temperature must be a finite"),
    "one exit for three": ({"exits": [{"temperature": 1.0}]}, "exits lists 1 exit(s), but 'device-small' has 3"),
    "exit at another stage": ({"exits": [{"stage": 3}] * 3}, "exits[0].stage is 3"),
    "exit_after_stage other": ({"exit_after_stage": [2, 3]}, "exit_after_stage [2, 3] differs"),
    "weights a number": ({"weights": 5}, "weights must be the name of a file beside the metadata"),
    "weights a directory": ({"weights": "."}, "weights must be the name of a file"),
    "weights elsewhere": ({"weights": "../x.safetensors"}, "weights must be the name of a file"),
    "sha256 not hex": ({"sha256": "abc"}, "sha256 must be 64 lower-case hex digits"),
    "sha256 of other bytes": ({"sha256": "0" * 64}, "differs from the sha256 recorded in device-small.json"),
    "format from the future": ({"format": 2}, "format must be 1"),
}


@pytest.mark.parametrize("case", BAD_METADATA)
def test_bad_metadata_is_one_line_naming_file_and_field(case: str, tmp_path: Path) -> None:
    changes, message = BAD_METADATA[case]
    meta_path = _edited_copy(tmp_path, **changes)
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(meta_path)
    text = str(info.value)
    assert message in text and str(tmp_path) in text and "\n" not in text, text


def test_weights_changed_after_saving_are_refused(tmp_path: Path) -> None:
    meta_path = _edited_copy(tmp_path)
    load_checkpoint(meta_path)  # the shipped sha256 matches the shipped weights
    weights = tmp_path / "device-small.safetensors"
    raw = bytearray(weights.read_bytes())
    raw[-1] ^= 0x01  # one bit of one weight: still a valid safetensors file, silently another model
    weights.write_bytes(bytes(raw))
    with pytest.raises(CheckpointError, match=r"device-small.safetensors: SHA-256 .* differs from the sha256"):
        load_checkpoint(meta_path)


def test_metadata_that_is_not_text_is_refused(tmp_path: Path) -> None:
    meta_path = _edited_copy(tmp_path)
    meta_path.write_bytes(b"\xff\xfe\x00garbage")
    with pytest.raises(CheckpointError, match="unreadable metadata"):
        load_checkpoint(meta_path)


def test_temperatures_refuse_what_would_divide_by_zero() -> None:
    assert temperatures({"exits": _exits(temperature=0.5)}, 3).tolist() == [0.5] * 3
    assert temperatures({}, 2).tolist() == [1.0, 1.0]
    with pytest.raises(CheckpointError, match="exits must be a list of 3"):
        temperatures({"exits": _exits()[:2]}, 3)
    with pytest.raises(CheckpointError, match=r"exits\[1\].temperature"):
        temperatures({"exits": [{"temperature": 1.0}, {"temperature": 0.0}]}, 2)
