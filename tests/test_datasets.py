"""Image-set readers: tar and folder give the same images and labels; the cache is faithful."""

from __future__ import annotations

import io
import logging
import struct
import tarfile
import threading
import time
import zlib
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

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


def _sample_members(sample_path: Path, n: int) -> list[tuple[str, bytes]]:
    """The first ``n`` (name, JPEG bytes) of the committed sample, real CIFAR-10 images."""
    out: list[tuple[str, bytes]] = []
    with tarfile.open(sample_path) as tar:
        for member in tar:
            handle = tar.extractfile(member) if member.isfile() else None
            if handle is not None:
                out.append((member.name, handle.read()))
            if len(out) == n:
                break
    return out


def _write_tar(path: Path, members: list[tuple[str, bytes]]) -> Path:
    with tarfile.open(path, "w") as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


def _png_header_claiming(width: int, height: int) -> bytes:
    """A PNG whose header claims ``width`` x ``height``: a decompression bomb as PIL sees it on open."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")


@pytest.mark.parametrize("position", ["first", "second"])
@pytest.mark.parametrize("bad", ["not an image", "bomb"])
def test_a_bad_image_is_one_line_naming_it(tmp_path: Path, sample_path: Path, position: str, bad: str) -> None:
    # Members sort by (class, name): "airplane/0000" is decoded first, before the real images.
    payload = b"this is not a jpeg" if bad == "not an image" else _png_header_claiming(20000, 20000)
    bad_name = "val/airplane/0000.png" if position == "first" else "val/truck/9999.png"
    tar = _write_tar(tmp_path / "bad.tar", [*_sample_members(sample_path, 5), (bad_name, payload)])
    with pytest.raises(DataError, match=f"cannot decode {bad_name}") as info:
        load_image_set(tar)
    assert "\n" not in str(info.value)


def test_an_image_of_another_size_is_refused_not_resized(tmp_path: Path, sample_path: Path) -> None:
    # One large first image made every image in the set that large (a 1,000-image set of
    # 4000x4000 would need 48 GB); CIFAR-style sets are one size throughout.
    members = _sample_members(sample_path, 5)
    big = io.BytesIO()
    Image.open(io.BytesIO(members[0][1])).resize((256, 256)).save(big, "JPEG")
    tar = _write_tar(tmp_path / "mixed.tar", [("val/airplane/0000.jpg", big.getvalue()), *members])
    with pytest.raises(DataError, match=r"mixed\.tar: val/\w+/\d+\.jpg is 32x32 but the first image is 256x256"):
        load_image_set(tar)


def _cifar_batch(path: Path, images: np.ndarray, labels: np.ndarray) -> None:
    rows = np.concatenate([labels.astype(np.uint8)[:, None], images.transpose(0, 3, 1, 2).reshape(len(images), -1)], 1)
    rows.tofile(path)


def test_cifar_binary_root_is_the_training_batches_only(tmp_path: Path, sample: ImageSet) -> None:
    binary = tmp_path / "cifar-10-batches-bin"
    binary.mkdir()
    for b in range(5):  # 10 sample images per training batch, the next 50 are the test batch
        pick = slice(10 * b, 10 * b + 10)
        _cifar_batch(binary / f"data_batch_{b + 1}.bin", sample.images[pick], sample.labels[pick])
    _cifar_batch(binary / "test_batch.bin", sample.images[50:100], sample.labels[50:100])
    for root in (tmp_path, binary):
        train = load_image_set(root)
        assert train.classes == CIFAR10_CLASSES
        assert np.array_equal(train.images, sample.images[:50]) and np.array_equal(train.labels, sample.labels[:50])
    test = load_image_set(binary / "test_batch.bin")
    assert np.array_equal(test.images, sample.images[50:100]) and np.array_equal(test.labels, sample.labels[50:100])
    assert test.classes == CIFAR10_CLASSES
    # A folder with only the test batch is not silently read as training data.
    for b in range(5):
        (binary / f"data_batch_{b + 1}.bin").unlink()
    with pytest.raises(DataError, match="name it"):
        load_image_set(tmp_path)
    (binary / "test_batch.bin").write_bytes(b"\0" * 100)
    with pytest.raises(DataError, match="not a whole number of CIFAR-10 binary records"):
        load_image_set(binary / "test_batch.bin")


def test_an_unreadable_cache_entry_is_replaced(
    tmp_path: Path,
    sample_path: Path,
    sample: ImageSet,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    monkeypatch.setenv("CASCADE_CACHE", str(tmp_path / "cache"))
    load_image_set(sample_path)
    entry = tmp_path / "cache" / f"{sample_path.name}-{loading._cache_key(sample_path)}.npz"
    whole = entry.read_bytes()
    entry.write_bytes(whole[:100_000])  # a writer killed half-way, a full disk
    with caplog.at_level(logging.WARNING, logger="agents.datasets.loading"):
        again = load_image_set(sample_path)
    assert np.array_equal(again.images, sample.images) and np.array_equal(again.labels, sample.labels)
    assert "unreadable" in caplog.text
    assert entry.stat().st_size == len(whole)  # decoded again and written back whole
    caplog.clear()
    assert np.array_equal(load_image_set(sample_path).images, sample.images) and not caplog.text


def test_an_unwritable_cache_is_done_without(
    tmp_path: Path,
    sample_path: Path,
    sample: ImageSet,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_bytes(b"")
    for cache in (blocker, blocker / "cache"):  # FileExistsError, NotADirectoryError
        monkeypatch.setenv("CASCADE_CACHE", str(cache))
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="agents.datasets.loading"):
            loaded = load_image_set(sample_path)
        assert np.array_equal(loaded.images, sample.images)
        assert "going on without it" in caplog.text
    assert blocker.read_bytes() == b""
