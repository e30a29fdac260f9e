"""Turning uint8 images into model input: the one place normalisation happens."""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2470, 0.2435, 0.2616)


def to_input(
    images: np.ndarray | Tensor,
    mean: tuple[float, ...] = CIFAR10_MEAN,
    std: tuple[float, ...] = CIFAR10_STD,
) -> Tensor:
    """``(N, H, W, 3)`` uint8 images to a normalised float ``(N, 3, H, W)`` tensor in channels-last memory."""
    x = torch.as_tensor(images)
    if x.dtype != torch.uint8 or x.ndim != 4 or x.shape[-1] != 3:
        raise ValueError(f"expected (N, H, W, 3) uint8 images, got {tuple(x.shape)} {x.dtype}")
    # NHWC uint8 viewed as NCHW is already channels-last: no copy until the arithmetic.
    x = x.permute(0, 3, 1, 2).float().div_(255.0)
    m = torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1)
    s = torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1)
    return ((x - m) / s).contiguous(memory_format=torch.channels_last)
