"""Read ImageFolder tars, ImageFolder folders and torchvision CIFAR-10 roots into memory.

CIFAR-sized sets fit in memory many times over (50,000 images are 150 MB as uint8),
so every reader decodes once into one ``(N, H, W, 3)`` uint8 array. Decoded arrays
are cached as ``.npz`` keyed by the source's path, size and modification time, so a
second training run does not decode 50,000 JPEGs again.
"""

from __future__ import annotations

import hashlib
import io
import os
import tarfile
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from agents.errors import DataError

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp")
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


def _decode_all(items: Iterator[tuple[str, str, bytes]], source: str) -> ImageSet:
    records = sorted(items, key=lambda r: (r[0], r[1]))
    if not records:
        raise DataError(f"{source}: no images found (expected <class>/<image>.jpg entries, ImageFolder layout)")
    classes = tuple(sorted({r[0] for r in records}))
    index = {c: i for i, c in enumerate(classes)}
    first = decode_image(records[0][2])
    size = (first.shape[0], first.shape[1])
    images = np.empty((len(records), size[0], size[1], 3), dtype=np.uint8)
    labels = np.empty(len(records), dtype=np.int64)
    for i, (cls, _name, data) in enumerate(records):
        try:
            images[i] = decode_image(data, size)
        except OSError as exc:
            raise DataError(f"{source}: cannot decode {_name} ({exc})") from exc
        labels[i] = index[cls]
    return ImageSet(images, labels, classes, source)


def _load_cifar_root(path: Path) -> ImageSet | None:
    """A torchvision CIFAR-10 root (``cifar-10-batches-py``), read without unpickling.

    torchvision's own reader unpickles the batch files; we never unpickle, so a root
    is accepted only if it also holds the binary version (``cifar-10-batches-bin``).
    """
    binary = path / "cifar-10-batches-bin" if (path / "cifar-10-batches-bin").is_dir() else path
    files = sorted(binary.glob("data_batch_*.bin")) + sorted(binary.glob("test_batch.bin"))
    if not files:
        if (path / "cifar-10-batches-py").is_dir():
            raise DataError(
                f"{path}: only the pickled CIFAR-10 batches are here; cascade never unpickles. "
                "Download the binary version (cifar-10-binary.tar.gz) or use an ImageFolder tree"
            )
        return None
    rows = np.concatenate([np.fromfile(f, dtype=np.uint8).reshape(-1, 3073) for f in files])
    images = rows[:, 1:].reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1).copy()
    return ImageSet(images, rows[:, 0].astype(np.int64), CIFAR10_CLASSES, str(path))


def cache_dir() -> Path:
    """Where decoded arrays are cached (``$CASCADE_CACHE`` or ``~/.cache/cascade``)."""
    return Path(os.environ.get("CASCADE_CACHE", Path.home() / ".cache" / "cascade"))


def _cache_key(path: Path) -> str:
    st = path.stat()
    raw = f"{path.resolve()}|{st.st_size}|{st.st_mtime_ns}".encode()
    return hashlib.sha256(raw).hexdigest()[:20]


def load_image_set(path: str | Path, use_cache: bool = True) -> ImageSet:
    """Load an ImageFolder tar, an ImageFolder folder or a CIFAR-10 binary root into memory."""
    p = Path(path)
    if not p.exists():
        raise DataError(f"{p}: no such file or directory (expected an ImageFolder tar or folder)")
    cached = cache_dir() / f"{p.name}-{_cache_key(p)}.npz" if p.is_file() and use_cache else None
    if cached is not None and cached.exists():
        with np.load(cached, allow_pickle=False) as z:
            return ImageSet(z["images"], z["labels"], tuple(str(c) for c in z["classes"]), str(p))
    if p.is_file():
        result = _decode_all(iter_tar(p), str(p))
    else:
        result = _load_cifar_root(p) or _decode_all(iter_folder(p), str(p))
    if cached is not None:
        cached.parent.mkdir(parents=True, exist_ok=True)
        # A name of its own per process: agents started together on a cold cache each decode
        # and write, and a shared temporary name made all but the first rename fail.
        tmp = cached.with_name(f"{cached.stem}.{os.getpid()}-{threading.get_ident()}.tmp.npz")
        np.savez(tmp, images=result.images, labels=result.labels, classes=np.array(result.classes))
        tmp.replace(cached)
    return result
