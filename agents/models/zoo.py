"""The model zoo: every architecture cascade can build, by name.

Each entry is a function returning an untrained :class:`StagedModel` plus the
training recipe that fits it to this project's budget (every shipped model
trains in under two hours on two CPU cores).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from torch import nn

from agents.errors import UserError
from agents.models.backbones import densenet121, mobilenet_v2, resnet18
from agents.models.blocks import ConvGroup, MaxPoolHead, PatchWhitening, PoolHead, conv_bn
from agents.models.staged import StagedModel


@dataclass(frozen=True)
class Recipe:
    """Training defaults for one architecture; ``cascade train`` flags override them."""

    epochs: int = 15
    batch_size: int = 512
    lr: float = 0.4
    weight_decay: float = 5e-4
    label_smoothing: float = 0.1
    exit_weights: tuple[float, ...] = field(default_factory=tuple)
    momentum: float = 0.9
    #: Batch-norm parameters learn this many times faster than the rest (their decay per step is unchanged).
    norm_lr_scale: float = 1.0
    #: Weight-decay batch-norm parameters too (decay per step ``lr * weight_decay``, as for weights).
    decay_norms: bool = False
    #: Random translation, in pixels, from a reflect-padded copy.
    translate: int = 4
    #: Mirror a fixed random half of the images on even epochs and the other half on odd ones,
    #: instead of flipping at random each time: every image is seen both ways within two epochs.
    alternate_flip: bool = False
    #: Share of the steps spent warming up linearly to the peak learning rate (then linear decay to zero).
    warmup: float = 0.15
    #: Learning rate at step 0 as a share of the peak.
    warmup_start: float = 0.1


@dataclass(frozen=True)
class ZooEntry:
    """A buildable architecture, what it is for, and how to train it."""

    name: str
    build: Callable[[int], StagedModel]
    summary: str
    recipe: Recipe


def _fast_cifar_net(
    name: str, widths: tuple[int, int, int, int], heads: dict[int, tuple[int, int]], num_classes: int
) -> StagedModel:
    """Stem conv then three pooling conv groups; ``heads`` maps stage → (hidden width, stride) of its exit."""
    w0, w1, w2, w3 = widths
    stages: list[nn.Module] = [conv_bn(3, w0), ConvGroup(w0, w1), ConvGroup(w1, w2), ConvGroup(w2, w3)]
    cins = [w0, w1, w2, w3]
    exit_heads: dict[int, nn.Module] = {
        stage: PoolHead(cins[stage], num_classes, hidden=hidden, stride=stride)
        for stage, (hidden, stride) in heads.items()
    }
    return StagedModel(name, stages, exit_heads, num_classes)


def device_small(num_classes: int = 10) -> StagedModel:
    """Raspberry-Pi-class device model: about 20 M MACs, three exits."""
    return _fast_cifar_net("device-small", (24, 32, 64, 128), {1: (64, 2), 2: (0, 1), 3: (0, 1)}, num_classes)


def edge_medium(num_classes: int = 10) -> StagedModel:
    """Edge model: one intermediate exit plus the final one."""
    return _fast_cifar_net("edge-medium", (24, 48, 96, 192), {2: (0, 1), 3: (0, 1)}, num_classes)


def cloud_large(num_classes: int = 10) -> StagedModel:
    """Cloud model, the most accurate: a patch-whitening stem, three wide conv groups, final exit only.

    Shaped and initialised after the fastest published CIFAR-10 training nets
    (whitened first layer, identity-initialised convolutions, batch norm without
    learned scales), which reach a far higher accuracy per epoch than the plain
    stem of the smaller models.
    """
    stages: list[nn.Module] = [
        PatchWhitening(3, 2),
        ConvGroup(24, 64, identity_init=True, fixed_scale=True),
        ConvGroup(64, 256, identity_init=True, fixed_scale=True),
        ConvGroup(256, 256, identity_init=True, fixed_scale=True),
    ]
    return StagedModel("cloud-large", stages, {3: MaxPoolHead(256, num_classes)}, num_classes)


# The fast-CIFAR schedule: large batches, a short triangular learning rate with a high peak,
# batch-norm shifts learning 64x faster, strong label smoothing, 2-pixel translations and
# alternating flips. lr and weight_decay are for a mean loss over a 1000-image batch.
CLOUD_RECIPE = Recipe(
    epochs=24,
    batch_size=1000,
    lr=1.27,
    weight_decay=1.5e-3,
    label_smoothing=0.2,
    exit_weights=(1.0,),
    momentum=0.85,
    norm_lr_scale=64.0,
    decay_norms=True,
    translate=2,
    alternate_flip=True,
    warmup=0.2,
    warmup_start=0.2,
)

ZOO: dict[str, ZooEntry] = {
    e.name: e
    for e in [
        ZooEntry(
            "device-small", device_small, "small device model, 3 exits", Recipe(epochs=16, exit_weights=(0.6, 0.8, 1.0))
        ),
        ZooEntry("edge-medium", edge_medium, "edge model, 2 exits", Recipe(epochs=10, exit_weights=(0.6, 1.0))),
        ZooEntry("cloud-large", cloud_large, "cloud model, final exit only", CLOUD_RECIPE),
        ZooEntry("mobilenet_v2", mobilenet_v2, "torchvision MobileNetV2 for 32×32, 3 exits", Recipe(epochs=30, lr=0.2)),
        ZooEntry("resnet18", resnet18, "torchvision ResNet-18 for 32×32, 3 exits", Recipe(epochs=30, lr=0.2)),
        ZooEntry("densenet121", densenet121, "torchvision DenseNet-121 for 32×32, 3 exits", Recipe(epochs=30, lr=0.2)),
    ]
}


def zoo_entry(name: str) -> ZooEntry:
    """The zoo entry called ``name``, or a :class:`UserError` listing the names there are."""
    try:
        return ZOO[name]
    except KeyError:
        raise UserError(f"unknown model {name!r}: expected one of {', '.join(ZOO)}") from None


def build_model(name: str, num_classes: int = 10) -> StagedModel:
    """An untrained model of architecture ``name``."""
    return zoo_entry(name).build(num_classes)
