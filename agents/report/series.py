"""Time bins for the report's plots: counts, rates, rolling fractions and percentiles per bin.

Times are seconds since the run's time zero. Bins are 1 s wide, as the dashboards
aggregate; a run shorter than ``MIN_BINS`` seconds gets finer bins (so a 10-second demo
still has a curve) and a very long one coarser bins (at most ``MAX_BINS``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

MIN_BINS = 30
MAX_BINS = 2000
_WIDTHS = (0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0, 3600.0)


def bin_width(span_s: float) -> float:
    """1 s, or the nearest 1-2-5 width that gives between ``MIN_BINS`` and ``MAX_BINS`` bins over ``span_s``."""
    if span_s / 1.0 < MIN_BINS:
        fine = [w for w in _WIDTHS if w <= 1.0 and span_s / w >= MIN_BINS]
        return fine[-1] if fine else _WIDTHS[0]
    if span_s / 1.0 > MAX_BINS:
        coarse = [w for w in _WIDTHS if w >= 1.0 and span_s / w <= MAX_BINS]
        return coarse[0] if coarse else _WIDTHS[-1]
    return 1.0


def width_label(width_s: float) -> str:
    """A bin width for titles and axis labels: ``1 s``, ``20 ms``."""
    return f"{width_s:g} s" if width_s >= 1 else f"{width_s * 1000:g} ms"


@dataclass(frozen=True)
class Bins:
    """Equal-width time bins ``[start + i * width, start + (i + 1) * width)``, ``count`` of them."""

    start: float
    width: float
    count: int

    @classmethod
    def covering(cls, times: Sequence[float] | np.ndarray, width: float | None = None) -> Bins:
        """Bins from the first time to the last (width: :func:`bin_width` of the span, unless given)."""
        t = np.asarray(times, dtype=float)
        if t.size == 0:
            return cls(0.0, width or 1.0, 1)
        lo, hi = float(t.min()), float(t.max())
        w = width or bin_width(hi - lo)
        start = np.floor(lo / w) * w
        return cls(float(start), w, int(np.floor((hi - start) / w)) + 1)

    @property
    def edges(self) -> np.ndarray:
        """The ``count + 1`` bin edges."""
        return self.start + self.width * np.arange(self.count + 1)

    @property
    def centers(self) -> np.ndarray:
        """The middle of each bin."""
        return self.start + self.width * (np.arange(self.count) + 0.5)

    def index(self, times: Sequence[float] | np.ndarray) -> np.ndarray:
        """The bin of each time (clipped into range)."""
        t = np.asarray(times, dtype=float)
        idx: np.ndarray = np.clip(np.floor((t - self.start) / self.width).astype(int), 0, self.count - 1)
        return idx

    def counts(self, times: Sequence[float] | np.ndarray) -> np.ndarray:
        """How many times fall in each bin."""
        return np.bincount(self.index(times), minlength=self.count) if len(times) else np.zeros(self.count, int)

    def rate(self, times: Sequence[float] | np.ndarray) -> np.ndarray:
        """Events per second in each bin."""
        return self.counts(times) / self.width

    def rolling_mean(
        self, times: Sequence[float] | np.ndarray, values: Sequence[float] | np.ndarray, window: int
    ) -> np.ndarray:
        """Mean of ``values`` over each bin and the ``window - 1`` before it (NaN where there are none)."""
        idx = self.index(times) if len(times) else np.zeros(0, int)
        sums = np.bincount(idx, weights=np.asarray(values, dtype=float), minlength=self.count)
        counts = np.bincount(idx, minlength=self.count).astype(float)
        kernel = np.ones(max(1, window))
        s = np.convolve(sums, kernel)[: self.count]
        n = np.convolve(counts, kernel)[: self.count]
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(n > 0, s / np.where(n > 0, n, 1), np.nan)

    def percentiles(
        self, times: Sequence[float] | np.ndarray, values: Sequence[float] | np.ndarray, qs: Sequence[float]
    ) -> np.ndarray:
        """Shape ``(len(qs), count)``: each percentile of ``values`` in each bin (NaN where a bin is empty)."""
        out = np.full((len(qs), self.count), np.nan)
        if not len(times):
            return out
        idx = self.index(times)
        v = np.asarray(values, dtype=float)
        order = np.argsort(idx, kind="stable")
        idx, v = idx[order], v[order]
        bounds = np.flatnonzero(np.diff(idx)) + 1
        for chunk_idx, chunk in zip(np.split(idx, bounds), np.split(v, bounds), strict=True):
            out[:, chunk_idx[0]] = np.percentile(chunk, qs)
        return out
