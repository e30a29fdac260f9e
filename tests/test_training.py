"""A few epochs of real training on real images make the loss go down; the run resumes."""

from __future__ import annotations

import io
import json
import pickle
import re
from pathlib import Path
from typing import Any

import pytest
import torch

from agents.errors import UserError
from agents.models.checkpoint import load_checkpoint
from agents.training.trainer import LOG_FILE, STATE_FILE, TrainConfig, train


def test_loss_goes_down_and_a_calibrated_checkpoint_is_written(tmp_path: Path, sample_path: Path) -> None:
    cfg = TrainConfig(
        model="device-small",
        data=str(sample_path),
        val=str(sample_path),
        out=str(tmp_path),
        epochs=4,
        batch_size=64,
        lr=0.05,
        limit=512,
        seed=3,
    )
    meta_path = train(cfg)
    log = [json.loads(line) for line in (tmp_path / LOG_FILE).read_text().splitlines()]
    assert [r["epoch"] for r in log] == [1, 2, 3, 4]
    assert log[-1]["train_loss"][-1] < log[0]["train_loss"][-1]
    _, meta = load_checkpoint(meta_path)
    assert [e["index"] for e in meta["exits"]] == [0, 1, 2]
    assert all(e["temperature"] > 0 for e in meta["exits"])
    assert meta["training"]["seed"] == 3


def test_rerun_resumes_from_the_saved_epoch(tmp_path: Path, sample_path: Path) -> None:
    base = {
        "model": "device-small",
        "data": str(sample_path),
        "val": None,
        "out": str(tmp_path),
        "batch_size": 64,
        "limit": 128,
    }
    train(TrainConfig(**base, epochs=1))  # type: ignore[arg-type]
    meta_path = train(TrainConfig(**base, epochs=2, command="second"))  # type: ignore[arg-type]
    log = [json.loads(line) for line in (tmp_path / LOG_FILE).read_text().splitlines()]
    assert [r["epoch"] for r in log] == [1, 2]
    invocations = json.loads(meta_path.read_text())["training"]["invocations"]
    assert [(i["from_epoch"], i["to_epoch"]) for i in invocations] == [(0, 1), (1, 2)]
    assert invocations[-1]["command"] == "second"


@pytest.mark.parametrize("name", ["mobilenet_v2", "resnet18", "densenet121"])
def test_torchvision_backbones_train_with_the_same_command(name: str, tmp_path: Path, sample_path: Path) -> None:
    meta_path = train(
        TrainConfig(model=name, data=str(sample_path), val=None, out=str(tmp_path), epochs=1, batch_size=16, limit=32)
    )
    model, meta = load_checkpoint(meta_path)
    assert model.name == name and meta["training"]["images"] == 32


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"epochs": 0}, "--epochs must be a positive integer, got 0"),
        ({"epochs": -3}, "--epochs must be a positive integer, got -3"),
        ({"batch_size": 0}, "--batch-size must be a positive integer"),
        ({"limit": -990}, "--limit must be a positive integer, got -990"),
        ({"limit": 0}, "--limit must be a positive integer, got 0"),
        ({"threads": -1}, "--threads must be a positive integer, got -1"),
        ({"lr": 0.0}, "--lr must be a finite number > 0"),
        ({"lr": float("nan")}, "--lr must be a finite number > 0"),
        ({"seed": -1}, "--seed must be 0 or more"),
    ],
)
def test_settings_no_run_could_use_are_refused_before_anything_is_written(
    change: dict[str, Any], message: str, tmp_path: Path, sample_path: Path
) -> None:
    # 0 used to fall back to the recipe (`cfg.epochs or recipe.epochs`: 16 epochs for --epochs 0)
    # and a negative --limit sliced from the end (-990 of 1,000 images trained on 10).
    out = tmp_path / "out"
    cfg = TrainConfig(model="device-small", data=str(sample_path), val=None, out=str(out), **change)
    with pytest.raises(UserError, match=re.escape(message)):
        train(cfg)
    assert not out.exists()


def _state_bytes(obj: object) -> bytes:
    buf = io.BytesIO()
    torch.save(obj, buf)
    return buf.getvalue()


GARBAGE_STATES: dict[str, bytes] = {
    "text": b"hello, not a state\n",
    "empty": b"",
    "truncated zip": _state_bytes({"model_name": "device-small", "model": {"w": torch.zeros(64)}})[:200],
    # A plain pickle that would run a command if unpickled: weights_only refuses it.
    "hostile pickle": pickle.dumps(print, protocol=2),
    "a list": _state_bytes([1, 2, 3]),
    "keys missing": _state_bytes({"model_name": "device-small"}),
    "wrong types": _state_bytes(
        {"model_name": "device-small", "model": {}, "optimizer": {}, "epoch": "one", "wall": 0.0}
    ),
    "weights of another net": _state_bytes(
        {"model_name": "device-small", "model": {"w": torch.zeros(3)}, "optimizer": {}, "epoch": 1, "wall": 0.0}
    ),
}


@pytest.mark.parametrize("case", GARBAGE_STATES)
def test_a_garbage_training_state_is_a_one_line_error(case: str, tmp_path: Path, sample_path: Path) -> None:
    (tmp_path / STATE_FILE).write_bytes(GARBAGE_STATES[case])
    cfg = TrainConfig(model="device-small", data=str(sample_path), val=None, out=str(tmp_path), epochs=1, limit=16)
    with pytest.raises(UserError) as info:
        train(cfg)
    text = str(info.value)
    assert text.startswith(f"{tmp_path / STATE_FILE}: ") and "\n" not in text, text
    assert "not a training state this version of cascade wrote" in text or "do not fit" in text, text
    assert not (tmp_path / "device-small.json").exists()


def test_resuming_with_fewer_epochs_than_already_trained_is_refused(tmp_path: Path, sample_path: Path) -> None:
    base = {"model": "device-small", "data": str(sample_path), "val": None, "out": str(tmp_path), "limit": 16}
    train(TrainConfig(**base, epochs=2, batch_size=16))  # type: ignore[arg-type]
    with pytest.raises(UserError, match="already trained 2 epochs, more than --epochs 1"):
        train(TrainConfig(**base, epochs=1, batch_size=16))  # type: ignore[arg-type]
