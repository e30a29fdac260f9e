"""Batch augmentation on tensors: random crops from a reflect-padded copy, horizontal flips."""

from __future__ import annotations

import torch
from torch import Tensor


def pad_reflect(x: Tensor, pad: int) -> Tensor:
    """Reflect-pad an ``(N, C, H, W)`` tensor by ``pad`` pixels on each side (done once, before training)."""
    return torch.nn.functional.pad(x, (pad, pad, pad, pad), mode="reflect")


def random_crop_flip(padded: Tensor, size: int, generator: torch.Generator, flip: Tensor | None = None) -> Tensor:
    """One random ``size``×``size`` crop per image of a padded batch, mirrored where ``flip`` (default: at random)."""
    n = padded.shape[0]
    room = padded.shape[-1] - size + 1
    dy = torch.randint(0, room, (n,), generator=generator)
    dx = torch.randint(0, room, (n,), generator=generator)
    base = torch.arange(size)
    rows = (dy[:, None] + base)[:, None, :, None]
    cols = (dx[:, None] + base)[:, None, None, :]
    if flip is None:
        flip = torch.rand(n, generator=generator) < 0.5
    cols = torch.where(flip[:, None, None, None], cols.flip(-1), cols)
    batch = torch.arange(n)[:, None, None, None]
    channels = torch.arange(padded.shape[1])[None, :, None, None]
    return padded[batch, channels, rows, cols].contiguous(memory_format=torch.channels_last)
