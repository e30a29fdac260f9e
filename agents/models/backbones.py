"""torchvision backbones adapted to 32×32 inputs and cut into stages with exits.

The usual CIFAR adaptation: the first convolution becomes 3×3 stride 1 and the
early down-sampling (max-pool, first strided block) is removed, so a 32×32 image
is not reduced to 1×1 before the classifier.
"""

from __future__ import annotations

from torch import nn
from torchvision import models as tvm

from agents.models.blocks import PoolHead
from agents.models.staged import StagedModel


def _final_head(features: int, classifier: nn.Module, pre: nn.Module | None = None) -> nn.Sequential:
    layers: list[nn.Module] = [pre] if pre is not None else []
    return nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten(1), classifier)


def resnet18(num_classes: int = 10) -> StagedModel:
    """ResNet-18: stem, four residual layers; exits after layers 2 and 3 and the final one."""
    m = tvm.resnet18(weights=None, num_classes=num_classes)
    stem = nn.Sequential(nn.Conv2d(3, 64, 3, padding=1, bias=False), m.bn1, m.relu)
    stages: list[nn.Module] = [stem, m.layer1, m.layer2, m.layer3, m.layer4]
    heads: dict[int, nn.Module] = {
        2: PoolHead(128, num_classes, hidden=128, stride=2),
        3: PoolHead(256, num_classes),
        4: _final_head(512, m.fc),
    }
    return StagedModel("resnet18", stages, heads, num_classes)


def mobilenet_v2(num_classes: int = 10) -> StagedModel:
    """MobileNetV2: inverted-residual blocks grouped by resolution; exits after 32 and 96 channels."""
    m = tvm.mobilenet_v2(weights=None, num_classes=num_classes)
    f = m.features
    f[0][0].stride = (1, 1)  # stem conv: keep 32×32
    f[2].conv[1][0].stride = (1, 1)  # first strided depthwise conv
    stages: list[nn.Module] = [f[0:2], f[2:4], f[4:7], f[7:14], f[14:19]]
    heads: dict[int, nn.Module] = {
        2: PoolHead(32, num_classes, hidden=64, stride=2),
        3: PoolHead(96, num_classes),
        4: _final_head(1280, m.classifier),
    }
    return StagedModel("mobilenet_v2", stages, heads, num_classes)


def densenet121(num_classes: int = 10) -> StagedModel:
    """DenseNet-121: stem, then each dense block with its transition; exits after blocks 2 and 3."""
    m = tvm.densenet121(weights=None, num_classes=num_classes)
    f = m.features
    stem = nn.Sequential(nn.Conv2d(3, 64, 3, padding=1, bias=False), f.norm0, f.relu0)
    stages: list[nn.Module] = [
        stem,
        nn.Sequential(f.denseblock1, f.transition1),
        nn.Sequential(f.denseblock2, f.transition2),
        nn.Sequential(f.denseblock3, f.transition3),
        nn.Sequential(f.denseblock4, f.norm5),
    ]
    heads: dict[int, nn.Module] = {
        2: PoolHead(256, num_classes, hidden=128),
        3: PoolHead(512, num_classes),
        4: _final_head(1024, m.classifier, pre=nn.ReLU()),
    }
    return StagedModel("densenet121", stages, heads, num_classes)
