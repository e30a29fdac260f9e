"""Frame sources: order, shuffle, loop, limit and pacing."""

from __future__ import annotations

import sys
import threading
import time
import types
from collections.abc import Iterator
from pathlib import Path
from typing import ClassVar

import numpy as np
import pytest

from agents.config import SourceConfig
from agents.datasets import ImageSet
from agents.errors import UserError
from agents.sources import open_source, paced
from agents.transport.broker import BrokerProcess
from tests.harness import records, spawn, write_config


def _cfg(sample_path: Path, **kw: object) -> SourceConfig:
    return SourceConfig.model_validate({"kind": "imagefolder", "path": str(sample_path), **kw})


def test_in_order_with_labels(sample_path: Path, sample: ImageSet) -> None:
    frames = list(paced(open_source(_cfg(sample_path)), _cfg(sample_path), threading.Event(), limit=5))
    assert [f.index for f in frames] == [0, 1, 2, 3, 4]
    assert all(np.array_equal(f.image, sample.images[i]) and f.label == sample.labels[i] for i, f in enumerate(frames))


def test_seeded_shuffle_matches_eval_limit_selection(sample_path: Path, sample: ImageSet) -> None:
    from agents.evaluation.report import limit_images

    cfg = _cfg(sample_path, shuffle=True, seed=0)
    labels = [int(f.label or 0) for f in paced(open_source(cfg), cfg, threading.Event(), limit=300)]
    chosen = limit_images(sample, 300)
    # Same images as `cascade eval --limit 300` (in another order): the online/offline comparison rests on it.
    assert sorted(labels) == sorted(int(x) for x in chosen.labels)
    again = [int(f.label or 0) for f in paced(open_source(cfg), cfg, threading.Event(), limit=300)]
    assert labels == again


def test_loop_and_limit(sample_path: Path) -> None:
    cfg = _cfg(sample_path, loop=True, limit=1500)
    assert sum(1 for _ in open_source(cfg)) == 1500


def test_fixed_rate_paces_and_stop_ends_it(sample_path: Path) -> None:
    cfg = _cfg(sample_path, rate="fixed", fps=100)
    t0 = time.monotonic()
    n = sum(1 for _ in paced(open_source(cfg), cfg, threading.Event(), limit=20))
    assert n == 20 and time.monotonic() - t0 >= 0.19
    stop = threading.Event()
    stop.set()
    assert list(paced(open_source(cfg), cfg, stop)) == []


def test_poisson_gaps_average_one_over_fps(sample_path: Path) -> None:
    cfg = _cfg(sample_path, rate="poisson", fps=400, seed=3)
    stamps = [f.capture_ns for f in paced(open_source(cfg), cfg, threading.Event(), limit=200)]
    gaps = np.diff(stamps) / 1e9
    # Never faster than the schedule; a busy machine may only make it slower.
    assert gaps.mean() > 0.5 / 400 and gaps.mean() < 10 / 400
    # Exponential gaps vary (coefficient of variation near 1); a fixed rate's would not.
    assert gaps.std() / gaps.mean() > 0.5


def test_video_without_opencv_says_what_to_install(tmp_path: Path) -> None:
    cfg = SourceConfig.model_validate({"kind": "video", "path": str(tmp_path / "x.mp4")})
    try:
        import cv2  # noqa: F401
    except ImportError:
        with pytest.raises(UserError, match="OpenCV"):
            next(open_source(cfg))
    else:
        with pytest.raises(UserError, match="cannot open"):
            next(open_source(cfg))


def test_the_schedule_starts_at_the_first_frame(sample_path: Path) -> None:
    # The first next() of a source loads its image set: seconds on a cold cache. Those
    # seconds must not make the first frames overdue and send them in a burst.
    cfg = _cfg(sample_path, rate="fixed", fps=20)

    def slow_to_start() -> Iterator[tuple[np.ndarray, int | None]]:
        time.sleep(0.4)
        yield from open_source(cfg)

    stamps = [f.capture_ns for f in paced(slow_to_start(), cfg, threading.Event(), limit=5)]
    gaps = np.diff(stamps) / 1e9
    assert gaps.min() >= 0.8 / 20, gaps


class _FakeCapture:
    """Stands in for cv2.VideoCapture (OpenCV is optional): a file of ``frames`` real images per pass."""

    frames: ClassVar[list[np.ndarray]] = []
    opens: ClassVar[int] = 0

    def __init__(self, target: object) -> None:
        type(self).opens += 1
        if type(self).opens > 50:
            raise RuntimeError("re-opened the video 50 times without yielding a frame")
        self.left = list(self.frames)

    def isOpened(self) -> bool:
        return True

    def read(self) -> tuple[bool, np.ndarray | None]:
        return (True, self.left.pop(0)) if self.left else (False, None)

    def release(self) -> None:
        pass


def _fake_cv2(monkeypatch: pytest.MonkeyPatch, frames: list[np.ndarray]) -> type[_FakeCapture]:
    capture = type("Capture", (_FakeCapture,), {"frames": frames, "opens": 0})
    monkeypatch.setitem(sys.modules, "cv2", types.SimpleNamespace(VideoCapture=capture))
    return capture


def test_a_looping_video_without_frames_is_an_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    capture = _fake_cv2(monkeypatch, [])  # a 0-frame or header-only file that OpenCV still opens
    cfg = SourceConfig.model_validate({"kind": "video", "path": str(tmp_path / "empty.mp4"), "loop": True})
    with pytest.raises(UserError, match="gives no frame"):
        next(open_source(cfg))
    assert capture.opens == 1


def test_a_looping_video_stops_between_passes(
    tmp_path: Path, sample: ImageSet, monkeypatch: pytest.MonkeyPatch
) -> None:
    bgr = [np.ascontiguousarray(image[:, :, ::-1]) for image in sample.images[:3]]
    capture = _fake_cv2(monkeypatch, bgr)
    cfg = SourceConfig.model_validate({"kind": "video", "path": str(tmp_path / "clip.mp4"), "loop": True})
    stop = threading.Event()
    stream = open_source(cfg, stop)
    two_passes = [next(stream)[0] for _ in range(6)]
    assert all(np.array_equal(image, sample.images[i % 3]) for i, image in enumerate(two_passes))
    stop.set()
    assert list(stream) == [] and capture.opens == 2  # the second pass ends; no third opens


def _two_classes(tmp_path: Path, sample: ImageSet) -> Path:
    """An ImageFolder of the sample's cats and dogs only: its own numbering is cat 0, dog 1."""
    from PIL import Image

    root = tmp_path / "catdog"
    for name in ("cat", "dog"):
        (root / name).mkdir(parents=True)
        index = sample.classes.index(name)
        for k, image in enumerate(sample.images[sample.labels == index][:10]):
            Image.fromarray(image).save(root / name / f"{k:03d}.png")
    return root


def test_labels_are_numbered_as_the_models_classes(tmp_path: Path, sample: ImageSet) -> None:
    from agents.datasets.loading import CIFAR10_CLASSES

    cfg = _cfg(_two_classes(tmp_path, sample))
    own = {int(f.label or 0) for f in paced(open_source(cfg), cfg, threading.Event(), limit=20)}
    assert own == {0, 1}
    stream = open_source(cfg, classes=CIFAR10_CLASSES)
    labels = {int(f.label or 0) for f in paced(stream, cfg, threading.Event(), limit=20)}
    assert labels == {CIFAR10_CLASSES.index("cat"), CIFAR10_CLASSES.index("dog")} == {3, 5}
    with pytest.raises(UserError, match=r"classes \['dog'\] are not among the model's"):
        next(open_source(cfg, classes=("airplane", "cat")))


def test_a_device_scores_a_set_that_lacks_classes_by_name(
    tmp_path: Path, sample: ImageSet, broker: BrokerProcess
) -> None:
    # The device's own records: labels as the model numbers its classes, so the accuracy is real.
    root = _two_classes(tmp_path, sample)
    source = {"kind": "imagefolder", "path": str(root)}
    cfg = write_config(tmp_path, broker, devices=[{"id": "dev1", "threshold": 0.0, "threads": 1, "source": source}])
    device = spawn(tmp_path, "device", "--config", str(cfg), "--id", "dev1", "--frames", "20", name="device")
    assert device.wait(120) == 0
    got = records(tmp_path)
    assert len(got) == 20 and {r["label"] for r in got} == {3, 5}
    assert sum(r["correct"] for r in got) >= 10  # device-small gets most right; numbered 0 and 1, almost none
