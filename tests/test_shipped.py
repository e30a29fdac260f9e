"""The shipped checkpoints load by name, offline, and reach their recorded accuracy on the committed sample."""

from __future__ import annotations

import pytest
import torch

from agents.datasets import ImageSet
from agents.models.checkpoint import SHIPPED_DIR, load_checkpoint
from agents.models.inference import exit_logits

SHIPPED = ["device-small", "edge-medium", "cloud-large"]


def test_the_three_models_are_shipped() -> None:
    assert sorted(d.name for d in SHIPPED_DIR.iterdir() if d.is_dir()) == sorted(SHIPPED)


@pytest.mark.parametrize("name", SHIPPED)
def test_recorded_accuracy_holds_on_the_sample(name: str, sample: ImageSet) -> None:
    model, meta = load_checkpoint(name)
    assert meta["architecture"] == name
    assert tuple(meta["classes"]) == sample.classes
    assert "command" in meta["training"] and "seed" in meta["training"]
    labels = torch.as_tensor(sample.labels)
    recorded = [e["accuracy"] for e in meta["exits"]]
    assert len(recorded) == model.num_exits
    for i, logits in enumerate(exit_logits(model, sample.images)):
        measured = float((logits.argmax(1) == labels).float().mean())
        assert abs(measured - recorded[i]) <= 0.02, f"{name} exit {i}: {measured:.4f} vs recorded {recorded[i]:.4f}"


@pytest.mark.parametrize("name", SHIPPED)
def test_exits_are_calibrated_on_val(name: str) -> None:
    _, meta = load_checkpoint(name)
    for e in meta["exits"]:
        assert e["temperature"] > 0
        assert e["ece"] <= e["ece_before"] + 1e-9
