"""A few epochs of real training on real images make the loss go down; the run resumes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from agents.models.checkpoint import load_checkpoint
from agents.training.trainer import LOG_FILE, TrainConfig, train


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
