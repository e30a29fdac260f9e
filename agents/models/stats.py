"""Costs computed from the model itself: parameters, MACs per stage and exit, activation bytes per split point."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from agents.models.staged import StagedModel


@dataclass(frozen=True)
class ModelStats:
    """Per-image costs of a staged model (batch 1, fp32)."""

    parameters: int
    stage_macs: list[int]
    exit_macs: list[int]
    split_bytes: list[int]
    split_shapes: list[tuple[int, ...]]

    @property
    def total_macs(self) -> int:
        """MACs of every stage and every exit head."""
        return sum(self.stage_macs) + sum(self.exit_macs)


def _count_macs(module: nn.Module, x: Tensor) -> tuple[int, Tensor]:
    """MACs of convolutions and linear layers in one forward pass of ``module`` on ``x``."""
    total = 0

    def hook(layer: nn.Module, inputs: tuple[Tensor, ...], output: Tensor) -> None:
        nonlocal total
        if isinstance(layer, nn.Conv2d):
            per_out = (layer.in_channels // layer.groups) * layer.kernel_size[0] * layer.kernel_size[1]
            total += output[0].numel() * per_out
        elif isinstance(layer, nn.Linear):
            total += output[0].numel() * layer.in_features

    handles = [m.register_forward_hook(hook) for m in module.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    try:
        with torch.inference_mode():
            out = module(x)
    finally:
        for h in handles:
            h.remove()
    return total, out


def model_stats(model: StagedModel) -> ModelStats:
    """Measure ``model`` with one probe image: MACs by hooks, activation sizes by shape."""
    was_training = model.training
    model.eval()
    x = model.example_input(1)
    stage_macs: list[int] = []
    exit_macs: list[int] = [0] * model.num_exits
    shapes: list[tuple[int, ...]] = [tuple(x.shape[1:])]
    for k, stage in enumerate(model.stages):
        macs, x = _count_macs(stage, x)
        stage_macs.append(macs)
        shapes.append(tuple(x.shape[1:]))
        exit_index = model.exit_at_stage(k)
        if exit_index is not None:
            exit_macs[exit_index], _ = _count_macs(model.heads[exit_index], x)
    model.train(was_training)
    element = 4  # fp32 bytes; codecs of the split-computing layer shrink this
    sizes = [element * int(torch.Size(s).numel()) for s in shapes]
    return ModelStats(sum(p.numel() for p in model.parameters()), stage_macs, exit_macs, sizes, shapes)
