"""Building blocks shared by the project's own nets."""

from __future__ import annotations

import torch
from torch import Tensor, nn


def conv_bn(cin: int, cout: int, stride: int = 1) -> nn.Sequential:
    """3×3 convolution, batch norm, GELU."""
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False),
        nn.BatchNorm2d(cout),
        nn.GELU(),
    )


class ConvGroup(nn.Sequential):
    """Conv → 2×2 max-pool → BN → GELU → conv → BN → GELU.

    The fast CIFAR block: pooling right after the first convolution halves the
    resolution early, so the second convolution costs a quarter as much.
    """

    def __init__(self, cin: int, cout: int) -> None:
        super().__init__(
            nn.Conv2d(cin, cout, 3, padding=1, bias=False),
            nn.MaxPool2d(2),
            nn.BatchNorm2d(cout),
            nn.GELU(),
            nn.Conv2d(cout, cout, 3, padding=1, bias=False),
            nn.BatchNorm2d(cout),
            nn.GELU(),
        )


class PoolHead(nn.Module):
    """Exit head: an optional conv, then global max and average pooling side by side, then a linear layer."""

    def __init__(self, cin: int, num_classes: int, hidden: int = 0, stride: int = 1) -> None:
        super().__init__()
        self.conv: nn.Module = conv_bn(cin, hidden, stride) if hidden else nn.Identity()
        width = hidden or cin
        self.fc = nn.Linear(2 * width, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        """Class logits for a feature map."""
        x = self.conv(x)
        pooled = torch.cat([torch.amax(x, dim=(2, 3)), torch.mean(x, dim=(2, 3))], dim=1)
        logits: Tensor = self.fc(pooled)
        return logits
