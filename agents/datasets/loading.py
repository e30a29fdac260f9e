"""Read ImageFolder tars, ImageFolder folders and CIFAR-10 binary batches into memory.

CIFAR-sized sets fit in memory many times over (50,000 images are 150 MB as uint8),
so every reader decodes once into one ``(N, H, W, 3)`` uint8 array. Decoded arrays
are cached as ``.npz`` keyed by the source's path, size and modification time, so a
second training run does not decode 50,000 JPEGs again. The cache is only a cache:
an entry that cannot be read is deleted and the source decoded again, and a cache
that cannot be written is done without.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import logging
import os
import tarfile
import threading
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from agents.errors import DataError

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp")
CIFAR10_ROW = 1 + 3 * 32 * 32
"""One record of a CIFAR-10 binary batch: a label byte, then 32x32 red, green and blue planes."""
CIFAR10_CLASSES = (
    "airplane",
    "automobile",
    "bird",
    "cat",
    "deer",
    "dog",
    "frog",
    "horse",
    "ship",
    "truck",
)


@dataclass(frozen=True)
class ImageSet:
    """Images as ``(N, H, W, 3)`` uint8, integer labels and the class names they index."""

    images: np.ndarray
    labels: np.ndarray
    classes: tuple[str, ...]
    source: str

    def __len__(self) -> int:
        return int(self.images.shape[0])

    def subset(self, index: np.ndarray) -> ImageSet:
        """The images at ``index``, same classes."""
        return ImageSet(self.images[index], self.labels[index], self.classes, self.source)


def decode_image(data: bytes, size: tuple[int, int] | None = None) -> np.ndarray:
    """Decode encoded image bytes to an ``(H, W, 3)`` uint8 RGB array, resized to ``size`` if given."""
    with Image.open(io.BytesIO(data)) as im:
        rgb = im.convert("RGB")
        if size is not None and rgb.size != (size[1], size[0]):
            rgb = rgb.resize((size[1], size[0]), Image.Resampling.BILINEAR)
        return np.asarray(rgb, dtype=np.uint8)


def _class_of(member_path: str) -> tuple[str, str] | None:
    """Split ``[root/]<class>/<file>`` into (class, file); None for anything not an image."""
    parts = [p for p in member_path.split("/") if p and p != "."]
    if len(parts) < 2 or not parts[-1].lower().endswith(IMAGE_SUFFIXES):
        return None
    return parts[-2], parts[-1]


def iter_tar(path: Path) -> Iterator[tuple[str, str, bytes]]:
    """Yield (class name, member name, bytes) for each image in an ImageFolder tar, in archive order."""
    try:
        with tarfile.open(path, "r:*") as tar:
            for member in tar:
                if not member.isfile():
                    continue
                found = _class_of(member.name)
                if found is None:
                    continue
                handle = tar.extractfile(member)
                if handle is None:
                    continue
                yield found[0], member.name, handle.read()
    except tarfile.TarError as exc:
        raise DataError(f"{path}: not a readable tar archive ({exc})") from exc


def iter_folder(path: Path) -> Iterator[tuple[str, str, bytes]]:
    """Yield (class name, relative path, bytes) for each image under an ImageFolder directory."""
    for file in sorted(path.rglob("*")):
        if file.is_file() and file.suffix.lower() in IMAGE_SUFFIXES:
            yield file.parent.name, str(file.relative_to(path)), file.read_bytes()


def _decode_record(data: bytes, name: str, source: str, size: tuple[int, int] | None = None) -> np.ndarray:
    """Decode one member to ``(H, W, 3)`` uint8; a one-line DataError for anything unreadable or of another size.

    ``size`` is the first image's ``(H, W)``. Images of another size are refused rather than
    resized to it: a CIFAR-style set is one size throughout, and resizing to whatever came
    first let one large first image blow every image up to its size.
    """
    try:
        with Image.open(io.BytesIO(data)) as im:
            # Checked on the header, before the pixels are decoded.
            if size is not None and im.size != (size[1], size[0]):
                raise DataError(
                    f"{source}: {name} is {im.size[0]}x{im.size[1]} but the first image is {size[1]}x{size[0]}; "
                    "every image of a set must be the same size"
                )
            return np.asarray(im.convert("RGB"), dtype=np.uint8)
    except UnidentifiedImageError:
        raise DataError(f"{source}: cannot decode {name} (not an image PIL can read)") from None
    # DecompressionBombError (a header claiming a huge image) is not an OSError; PIL reports
    # some malformed files as SyntaxError or ValueError.
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
        raise DataError(f"{source}: cannot decode {name} ({exc})") from exc


def _decode_all(items: Iterator[tuple[str, str, bytes]], source: str) -> ImageSet:
    records = sorted(items, key=lambda r: (r[0], r[1]))
    if not records:
        raise DataError(f"{source}: no images found (expected <class>/<image>.jpg entries, ImageFolder layout)")
    classes = tuple(sorted({r[0] for r in records}))
    index = {c: i for i, c in enumerate(classes)}
    first = _decode_record(records[0][2], records[0][1], source)
    size = (first.shape[0], first.shape[1])
    images = np.empty((len(records), size[0], size[1], 3), dtype=np.uint8)
    labels = np.empty(len(records), dtype=np.int64)
    images[0], labels[0] = first, index[records[0][0]]
    for i, (cls, name, data) in enumerate(records[1:], start=1):
        images[i] = _decode_record(data, name, source, size)
        labels[i] = index[cls]
    return ImageSet(images, labels, classes, source)


def _read_cifar_batches(files: list[Path], source: str) -> ImageSet:
    """CIFAR-10 binary batch files (``<label byte><3072 pixel bytes>`` records) as one set."""
    rows = []
    for f in files:
        raw = np.fromfile(f, dtype=np.uint8)
        if raw.size == 0 or raw.size % CIFAR10_ROW:
            raise DataError(
                f"{f}: {raw.size} bytes is not a whole number of CIFAR-10 binary records ({CIFAR10_ROW} bytes each)"
            )
        rows.append(raw.reshape(-1, CIFAR10_ROW))
    table = np.concatenate(rows)
    if int(table[:, 0].max()) >= len(CIFAR10_CLASSES):
        raise DataError(f"{source}: label {int(table[:, 0].max())} out of range; not a CIFAR-10 binary batch")
    images = table[:, 1:].reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1).copy()
    return ImageSet(images, table[:, 0].astype(np.int64), CIFAR10_CLASSES, source)


def _load_cifar_root(path: Path) -> ImageSet | None:
    """The training batches of a CIFAR-10 binary root (``cifar-10-batches-bin`` or the folder above it).

    Only ``data_batch_*.bin``: ``test_batch.bin`` sits in the same folder, and reading it
    too would train and calibrate on the test set. It is read only when named itself
    (``load_image_set(".../test_batch.bin")``). torchvision's pickled batches
    (``cifar-10-batches-py``) are refused: cascade never unpickles.
    """
    binary = path / "cifar-10-batches-bin" if (path / "cifar-10-batches-bin").is_dir() else path
    files = sorted(binary.glob("data_batch_*.bin"))
    if not files:
        if (binary / "test_batch.bin").is_file():
            raise DataError(
                f"{path}: only test_batch.bin is here, and a CIFAR-10 root means its training batches; "
                f"to read the test batch, name it: {binary / 'test_batch.bin'}"
            )
        if (path / "cifar-10-batches-py").is_dir():
            raise DataError(
                f"{path}: only the pickled CIFAR-10 batches are here; cascade never unpickles. "
                "Download the binary version (cifar-10-binary.tar.gz) or use an ImageFolder tree"
            )
        return None
    return _read_cifar_batches(files, str(path))


def cache_dir() -> Path:
    """Where decoded arrays are cached (``$CASCADE_CACHE`` or ``~/.cache/cascade``)."""
    return Path(os.environ.get("CASCADE_CACHE", Path.home() / ".cache" / "cascade"))


def _cache_key(path: Path) -> str:
    st = path.stat()
    raw = f"{path.resolve()}|{st.st_size}|{st.st_mtime_ns}".encode()
    return hashlib.sha256(raw).hexdigest()[:20]


def _read_cache(cached: Path, source: str) -> ImageSet | None:
    """The cached arrays, or None when there are none or they cannot be read (the entry is then deleted)."""
    if not cached.is_file():
        return None
    try:
        with np.load(cached, allow_pickle=False) as z:
            images, labels = z["images"], z["labels"]
            classes = tuple(str(c) for c in z["classes"])
        if images.ndim != 4 or images.dtype != np.uint8 or labels.shape != (len(images),):
            raise ValueError(f"arrays of shapes {images.shape} and {labels.shape}")
    # A truncated or corrupt entry (a full disk, a killed writer) would otherwise fail every
    # later run until someone found and deleted it by hand.
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as exc:
        log.warning("%s: decode cache entry %s is unreadable (%s); deleting it and decoding again", source, cached, exc)
        with contextlib.suppress(OSError):
            cached.unlink(missing_ok=True)
        return None
    return ImageSet(images, labels, classes, source)


def _write_cache(cached: Path, result: ImageSet) -> None:
    """Store ``result`` at ``cached``; a cache that cannot be written is warned about and done without."""
    # A name of its own per process: agents started together on a cold cache each decode
    # and write, and a shared temporary name made all but the first rename fail.
    tmp = cached.with_name(f"{cached.stem}.{os.getpid()}-{threading.get_ident()}.tmp.npz")
    try:
        cached.parent.mkdir(parents=True, exist_ok=True)
        np.savez(tmp, images=result.images, labels=result.labels, classes=np.array(result.classes))
        tmp.replace(cached)
    except OSError as exc:
        # The images decoded fine; a read-only or full cache only costs the next run a decode.
        log.warning("cannot write the decode cache in %s (%s); going on without it", cached.parent, exc)
        with contextlib.suppress(OSError):
            tmp.unlink(missing_ok=True)


def load_image_set(path: str | Path, use_cache: bool = True) -> ImageSet:
    """Load an ImageFolder tar, an ImageFolder folder, a CIFAR-10 binary root or one CIFAR-10 batch file.

    A CIFAR-10 binary root (``cifar-10-batches-bin`` or the folder holding it) gives its
    five training batches only; a ``.bin`` file (``test_batch.bin``, ``data_batch_1.bin``)
    gives just that batch. Tars are decoded once and cached in :func:`cache_dir`.
    """
    p = Path(path)
    if not p.exists():
        raise DataError(f"{p}: no such file or directory (expected an ImageFolder tar or folder)")
    if p.is_file() and p.suffix.lower() == ".bin":
        # Raw bytes, nothing to decode, so nothing to cache.
        return _read_cifar_batches([p], str(p))
    cached = cache_dir() / f"{p.name}-{_cache_key(p)}.npz" if p.is_file() and use_cache else None
    if cached is not None and (hit := _read_cache(cached, str(p))) is not None:
        return hit
    if p.is_file():
        result = _decode_all(iter_tar(p), str(p))
    else:
        result = _load_cifar_root(p) or _decode_all(iter_folder(p), str(p))
    if cached is not None:
        _write_cache(cached, result)
    return result
