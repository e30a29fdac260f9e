"""Checkpoints: safetensors + JSON round trip, mismatches refused with a clear message."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from agents.errors import CheckpointError
from agents.models.checkpoint import load_checkpoint, save_checkpoint
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
