"""Turning uint8 images into model input: the one place normalisation happens."""

from __future__ import annotations

import functools

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
    x = np.asarray(images)
    if x.dtype != np.uint8 or x.ndim != 4 or x.shape[-1] != 3:
        raise ValueError(f"expected (N, H, W, 3) uint8 images, got {tuple(x.shape)} {x.dtype}")
    scale, shift = _affine(mean, std)
    # (x / 255 - mean) / std as one multiply-add, in NHWC; NHWC viewed as NCHW is channels-last already.
    y = x * scale + shift
    return torch.from_numpy(y).permute(0, 3, 1, 2)


@functools.cache
def _affine(mean: tuple[float, ...], std: tuple[float, ...]) -> tuple[np.ndarray, np.ndarray]:
    m = np.asarray(mean, dtype=np.float32)
    s = np.asarray(std, dtype=np.float32)
    return (1.0 / (255.0 * s)).astype(np.float32), (-m / s).astype(np.float32)
