"""Image-set readers: tar and folder give the same images and labels; the cache is faithful."""

from __future__ import annotations

import tarfile
from pathlib import Path

import numpy as np
import pytest

from agents.datasets import ImageSet, load_image_set
from agents.datasets.loading import CIFAR10_CLASSES
from agents.errors import DataError


def test_sample_is_cifar10_in_imagefolder_order(sample: ImageSet) -> None:
    assert len(sample) == 1000
    assert sample.classes == CIFAR10_CLASSES
    assert sample.images.shape == (1000, 32, 32, 3) and sample.images.dtype == np.uint8
    assert np.bincount(sample.labels).tolist() == [100] * 10


def test_folder_and_tar_agree(tmp_path: Path, sample_path: Path, sample: ImageSet) -> None:
    with tarfile.open(sample_path) as tar:
        tar.extractall(tmp_path, filter="data")
    folder = load_image_set(tmp_path / "val")
    assert folder.classes == sample.classes
    assert np.array_equal(folder.labels, sample.labels)
    assert np.array_equal(folder.images, sample.images)


def test_cache_returns_the_same_arrays(sample_path: Path, sample: ImageSet) -> None:
    first = load_image_set(sample_path)
    second = load_image_set(sample_path)
    assert np.array_equal(first.images, sample.images) and np.array_equal(second.images, sample.images)
    assert second.classes == sample.classes


def test_not_a_tar(tmp_path: Path) -> None:
    bogus = tmp_path / "x.tar"
    bogus.write_bytes(b"not a tar at all" * 10)
    with pytest.raises(DataError, match=r"x\.tar"):
        load_image_set(bogus)
