"""Labelled image sets held in memory as uint8 arrays (ImageFolder tars and folders, CIFAR roots)."""

from pathlib import Path

from agents.datasets.loading import ImageSet, load_image_set

SAMPLE_TAR = Path(__file__).resolve().parent / "sample" / "cifar10-val-1000.tar"
"""1,000 CIFAR-10 validation images shipped with the package (see sample/README.md)."""

__all__ = ["SAMPLE_TAR", "ImageSet", "load_image_set"]
