"""Image-set readers: tar and folder give the same images and labels; the cache is faithful."""

from __future__ import annotations

import tarfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from agents.datasets import ImageSet, load_image_set, loading
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


def test_loaders_writing_the_cold_cache_at_once(
    tmp_path: Path, sample_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Agents started together on one host each decode the same tar and write the cache. The
    # write is slowed down so that every loader is between writing and renaming at once.
    monkeypatch.setenv("CASCADE_CACHE", str(tmp_path / "cache"))
    savez = np.savez

    def slow_savez(*args: Any, **kwargs: Any) -> None:
        savez(*args, **kwargs)
        time.sleep(0.3)

    monkeypatch.setattr(np, "savez", slow_savez)  # the module the loader calls it through
    results: list[int] = []
    errors: list[BaseException] = []

    def load() -> None:
        try:
            results.append(len(load_image_set(sample_path).images))
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=load) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors, errors
    assert results == [1000] * 3
    assert [f.name for f in (tmp_path / "cache").iterdir()] == [
        f"{sample_path.name}-{loading._cache_key(sample_path)}.npz"
    ]
