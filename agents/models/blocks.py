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

    ``identity_init`` starts each convolution as (part of) an identity map and
    ``fixed_scale`` keeps the batch-norm scales at one, learning only shifts: two
    changes from the fast-CIFAR training literature that let a net reach a given
    accuracy in fewer epochs. Neither changes the parameter names or shapes.
    """

    def __init__(self, cin: int, cout: int, identity_init: bool = False, fixed_scale: bool = False) -> None:
        super().__init__(
            nn.Conv2d(cin, cout, 3, padding=1, bias=False),
            nn.MaxPool2d(2),
            nn.BatchNorm2d(cout),
            nn.GELU(),
            nn.Conv2d(cout, cout, 3, padding=1, bias=False),
            nn.BatchNorm2d(cout),
            nn.GELU(),
        )
        for layer in self:
            if identity_init and isinstance(layer, nn.Conv2d):
                # The first min(cin, cout) filters pass their input channel through unchanged.
                with torch.no_grad():
                    nn.init.dirac_(layer.weight[: layer.in_channels])
            if fixed_scale and isinstance(layer, nn.BatchNorm2d):
                layer.weight.requires_grad_(False)


class PatchWhitening(nn.Module):
    """A frozen ``k``×``k`` convolution that whitens image patches, then GELU.

    Its filters are the eigenvectors of the training patches' covariance divided by
    the square roots of their eigenvalues, each also negated (so GELU keeps both
    signs): the first layer starts out decorrelating pixels instead of having to
    learn to. :meth:`fit` sets them from training images before training; only
    the bias is learned.
    """

    def __init__(self, cin: int = 3, kernel: int = 2) -> None:
        super().__init__()
        self.conv = nn.Conv2d(cin, 2 * cin * kernel * kernel, kernel, padding=0, bias=True)
        self.conv.weight.requires_grad_(False)
        assert self.conv.bias is not None  # built with bias=True: the only learned part
        nn.init.zeros_(self.conv.bias)
        self.act = nn.GELU()

    @torch.no_grad()
    def fit(self, images: Tensor, eps: float = 5e-4) -> None:
        """Set the filters from normalised ``(N, C, H, W)`` training images."""
        cin, k = self.conv.in_channels, self.conv.kernel_size[0]
        patches = images.float().unfold(2, k, 1).unfold(3, k, 1)  # N, C, H', W', k, k
        flat = patches.permute(0, 2, 3, 1, 4, 5).reshape(-1, cin * k * k)
        covariance = flat.T @ flat / len(flat)
        eigenvalues, eigenvectors = torch.linalg.eigh(covariance)
        filters = (eigenvectors.T / torch.sqrt(eigenvalues.clamp_min(0) + eps)[:, None]).reshape(-1, cin, k, k)
        self.conv.weight.copy_(torch.cat([filters, -filters]))

    def forward(self, x: Tensor) -> Tensor:
        """Whitened, rectified patches: one pixel smaller per side than ``x`` minus one."""
        out: Tensor = self.act(self.conv(x))
        return out


class MaxPoolHead(nn.Module):
    """Final exit: global max pooling, a bias-free linear layer, logits scaled down by ``scale``.

    The small scale keeps early-training logits soft, which suits the high learning
    rates of the fast recipe; calibration later fits the temperature anyway.
    """

    def __init__(self, cin: int, num_classes: int, scale: float = 1 / 9) -> None:
        super().__init__()
        self.fc = nn.Linear(cin, num_classes, bias=False)
        self.scale = scale

    def forward(self, x: Tensor) -> Tensor:
        """Class logits for a feature map."""
        logits: Tensor = self.fc(torch.amax(x, dim=(2, 3))) * self.scale
        return logits


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
