"""The fast recipe's parts: a whitening stem fitted on real images, optimizer groups, alternating flips."""

from __future__ import annotations

import torch
from torch import nn

from agents.datasets import ImageSet
from agents.models.blocks import PatchWhitening
from agents.models.inputs import to_input
from agents.models.zoo import ZOO, build_model
from agents.training.augment import random_crop_flip
from agents.training.trainer import _param_groups


def test_patch_whitening_decorrelates_real_image_patches(sample: ImageSet) -> None:
    x = to_input(sample.images).contiguous()
    layer = PatchWhitening(3, 2)
    layer.fit(x)
    with torch.no_grad():
        out = nn.functional.conv2d(x, layer.conv.weight)  # before bias and GELU
    half = out[:, :12].permute(0, 2, 3, 1).reshape(-1, 12)
    cov = half.T @ half / len(half)
    off_diagonal = cov - torch.diag(torch.diag(cov))
    assert off_diagonal.abs().max() < 0.05
    # Unit variance along each eigen-direction, damped where the variance is near eps (fine JPEG detail).
    assert torch.all(torch.diag(cov) > 0.05) and torch.all(torch.diag(cov) < 1.01) and torch.diag(cov).max() > 0.99
    # The second half is the first negated, so GELU keeps both signs of each direction.
    assert torch.equal(layer.conv.weight[12:], -layer.conv.weight[:12])
    assert layer.conv.bias is not None
    assert not layer.conv.weight.requires_grad and layer.conv.bias.requires_grad


def test_cloud_recipe_groups_fast_norms_with_the_same_decay_per_step() -> None:
    recipe = ZOO["cloud-large"].recipe
    model = build_model("cloud-large")
    groups = _param_groups(model, recipe, lr=1.0)
    weights, norms = groups[0], groups[1]
    assert norms["lr"] == recipe.norm_lr_scale * weights["lr"]
    assert norms["lr"] * norms["weight_decay"] == weights["lr"] * weights["weight_decay"]
    grouped = {id(p) for g in groups for p in g["params"]}
    frozen = [n for n, p in model.named_parameters() if id(p) not in grouped]
    # Frozen: the whitening filters and every batch-norm scale; nothing trainable is left out.
    assert frozen and all(n.endswith("conv.weight") or n.endswith(".weight") for n in frozen)
    assert all(not p.requires_grad for n, p in model.named_parameters() if n in frozen)
    assert sum(p.requires_grad for p in model.parameters()) == len(grouped)


def test_identity_init_passes_channels_through() -> None:
    group = build_model("cloud-large").stages[1]
    first = group[0].weight  # type: ignore[index]
    assert torch.equal(first[0, 0], torch.tensor([[0.0, 0, 0], [0, 1, 0], [0, 0, 0]]))


def test_given_flips_are_applied_exactly(sample: ImageSet) -> None:
    x = to_input(sample.images[:4]).contiguous()
    flip = torch.tensor([True, False, True, False])
    out = random_crop_flip(x, 32, torch.Generator().manual_seed(0), flip)  # no padding: the crop is the image
    assert torch.equal(out[0], x[0].flip(-1)) and torch.equal(out[1], x[1])
