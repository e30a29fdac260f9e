"""A frame source yields ``(image, label)`` pairs; :func:`paced` turns it into timed, numbered frames."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import numpy as np

from agents.config import SourceConfig
from agents.datasets import load_image_set
from agents.errors import UserError


@dataclass
class Frame:
    """One captured frame: ``(H, W, 3)`` uint8 RGB, its ground-truth label when known."""

    index: int
    image: np.ndarray
    label: int | None
    capture_ns: int


def label_map(names: Sequence[str], classes: Sequence[str] | None, source: str) -> list[int] | None:
    """For a set whose labels index ``names``: each label's index in ``classes`` (None: keep them as they are).

    A set's label numbers come from the class folders it holds, in sorted order: one without
    ``airplane`` numbers ``cat`` 2, not 3. Compared with a model's predictions they must be
    numbered as the model's classes are, by name. A name the model lacks is a UserError.
    """
    if classes is None:
        return None
    unknown = [n for n in names if n not in classes]
    if unknown:
        raise UserError(f"{source}: classes {unknown} are not among the model's {list(classes)}")
    return [list(classes).index(n) for n in names]


def _image_set_frames(cfg: SourceConfig, classes: Sequence[str] | None) -> Iterator[tuple[np.ndarray, int | None]]:
    data = load_image_set(str(cfg.path))
    mapping = label_map(data.classes, classes, str(cfg.path))
    rng = np.random.default_rng(cfg.seed)
    while True:
        order = rng.permutation(len(data)) if cfg.shuffle else np.arange(len(data))
        for i in order:
            label = int(data.labels[i])
            yield data.images[i], label if mapping is None else mapping[label]
        if not cfg.loop:
            return


def _torchvision_frames(cfg: SourceConfig, classes: Sequence[str] | None) -> Iterator[tuple[np.ndarray, int | None]]:
    from torchvision import datasets

    cls = getattr(datasets, str(cfg.dataset), None)
    if cls is None:
        raise UserError(f"torchvision has no dataset {cfg.dataset!r} (e.g. CIFAR10, SVHN, MNIST)")
    try:
        ds = cls(root=cfg.root or "data", train=cfg.train, download=cfg.download)
    except (RuntimeError, OSError) as exc:
        raise UserError(f"torchvision {cfg.dataset} at {cfg.root or 'data'}: {exc} (set download: true?)") from None
    names = getattr(ds, "classes", None)  # not every dataset names its classes (SVHN): then numbers as they are
    mapping = label_map([str(n) for n in names], classes, str(cfg.dataset)) if names else None
    rng = np.random.default_rng(cfg.seed)
    while True:
        order = rng.permutation(len(ds)) if cfg.shuffle else np.arange(len(ds))
        for i in order:
            image, label = ds[int(i)]
            yield np.asarray(image.convert("RGB"), dtype=np.uint8), int(label) if mapping is None else mapping[label]
        if not cfg.loop:
            return


def _opencv_frames(cfg: SourceConfig, stop: threading.Event | None = None) -> Iterator[tuple[np.ndarray, int | None]]:
    try:
        import cv2
    except ImportError:
        raise UserError("video and camera sources need OpenCV: pip install 'cascade-agents[video]'") from None
    target = cfg.path if cfg.kind == "video" else cfg.camera
    while stop is None or not stop.is_set():
        cap = cv2.VideoCapture(target)
        if not cap.isOpened():
            raise UserError(f"cannot open {cfg.kind} {target!r}")
        frames = 0
        try:
            while True:
                ok, bgr = cap.read()
                if not ok:
                    break
                frames += 1
                yield np.ascontiguousarray(bgr[:, :, ::-1]), None
        finally:
            cap.release()
        if frames == 0:
            # OpenCV opens some files it cannot read (no frames, a header only, a codec it lacks);
            # looping over such a file re-opened it forever without yielding once.
            raise UserError(f"{cfg.kind} {target!r} opens but gives no frame (empty, or a codec OpenCV cannot read)")
        if not cfg.loop or cfg.kind == "camera":
            return


def open_source(
    cfg: SourceConfig, stop: threading.Event | None = None, classes: Sequence[str] | None = None
) -> Iterator[tuple[np.ndarray, int | None]]:
    """The raw ``(image, label)`` stream a source config describes (sensor sources are MQTT subscriptions).

    ``stop``, when given, ends a looping video between passes: the stream itself checks it,
    since re-opening a file happens inside it, where :func:`paced` cannot see. ``classes``,
    when given, numbers the labels as those class names are numbered (:func:`label_map`).
    """
    if cfg.kind == "imagefolder":
        stream = _image_set_frames(cfg, classes)
    elif cfg.kind == "torchvision":
        stream = _torchvision_frames(cfg, classes)
    elif cfg.kind in ("video", "camera"):
        stream = _opencv_frames(cfg, stop)
    else:
        raise UserError(f"a {cfg.kind} source is not a local stream")
    return stream if cfg.limit is None else _limited(stream, cfg.limit)


def _limited(
    stream: Iterator[tuple[np.ndarray, int | None]], limit: int | None
) -> Iterator[tuple[np.ndarray, int | None]]:
    for n, item in enumerate(stream):
        if limit is not None and n >= limit:
            return
        yield item


def paced(
    stream: Iterator[tuple[np.ndarray, int | None]],
    cfg: SourceConfig,
    stop: threading.Event,
    limit: int | None = None,
    wait: Callable[[float], bool] | None = None,
) -> Iterator[Frame]:
    """Number and timestamp frames, releasing each at the configured rate; ends early when ``stop`` is set.

    ``fixed`` releases one frame every 1/fps seconds on a schedule (late frames do not
    shift later ones); ``poisson`` draws exponential gaps with mean 1/fps; ``max`` does not wait.
    ``wait(seconds)`` spends the time between frames (default ``stop.wait``; a device
    handles its replies there) and returns True to stop.
    """
    wait = wait or stop.wait
    if cfg.rate == "max" or not cfg.fps:
        # The replay and throughput case: every Python step here is paid once per frame.
        for index, (image, label) in enumerate(stream):
            if stop.is_set() or (limit is not None and index >= limit):
                return
            yield Frame(index, image, label, time.time_ns())
        return
    rng = np.random.default_rng(cfg.seed + 1)
    next_at: float | None = None
    for index, (image, label) in enumerate(stream):
        if stop.is_set() or (limit is not None and index >= limit):
            return
        if next_at is None:
            # The schedule starts when the first frame arrives, not before it is asked for: the
            # first next(stream) is where an image set is loaded (seconds on a cold cache), and
            # counting those seconds made the first frames "overdue" and sent them in a burst.
            next_at = time.monotonic()
        gap = 1.0 / cfg.fps if cfg.rate == "fixed" else float(rng.exponential(1.0 / cfg.fps))
        next_at += gap
        if wait(max(0.0, next_at - time.monotonic())):
            return
        yield Frame(index, image, label, time.time_ns())
