"""Age of Information, rebuilt exactly from a device's frame records.

``AoI(t) = t − capture time of the newest frame answered by time t``: it grows with slope
one between answers and drops at an answer only when that answer's frame is newer than
every frame answered before (an older frame answered late, e.g. a remote answer overtaken
by local ones, changes nothing). Defined from the first answer to the last; both stamps
come from the device's clock (``stamps.capture`` and ``stamps.answer``, ns).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class AoISeries:
    """The sawtooth's corners (time ns, AoI ms), drawn by joining them in order, and its time-average and peak."""

    t_ns: list[int]
    aoi_ms: list[float]
    mean_ms: float | None
    peak_ms: float | None
    answers: int

    @property
    def empty(self) -> bool:
        """No answered frame with both stamps."""
        return not self.t_ns


def _stamps(r: dict[str, Any]) -> tuple[int, int] | None:
    s = r.get("stamps")
    if not isinstance(s, dict):
        return None
    capture, answer = s.get("capture"), s.get("answer")
    if type(capture) is int and type(answer) is int:  # not bool, not float
        return answer, capture
    return None


def age_of_information(records: Iterable[dict[str, Any]]) -> AoISeries:
    """The AoI sawtooth of one device's records: a corner at each answer, two where it drops.

    The mean is the time-average over [first answer, last answer] (the exact integral of
    the sawtooth divided by its length; with a single answer, the age after it), the peak
    the largest value reached, which is always just before a drop or at the last answer.
    """
    events = sorted(e for e in map(_stamps, records) if e is not None)
    if not events:
        return AoISeries([], [], None, None, 0)
    t_ns: list[int] = []
    aoi: list[float] = []

    def corner(t: int, age_ns: int) -> None:
        if not t_ns or (t_ns[-1], aoi[-1]) != (t, age_ns / 1e6):
            t_ns.append(t)
            aoi.append(age_ns / 1e6)

    area2 = 0  # twice the area under the sawtooth, ns·ns (integers: exact, ns stamps overflow float precision)
    newest = events[0][1]
    prev_t = events[0][0]
    corner(prev_t, prev_t - newest)
    for answer, capture in events[1:]:
        # The segment (prev_t, answer] at slope one, from prev_t − newest to answer − newest.
        area2 += (answer - prev_t) * ((prev_t - newest) + (answer - newest))
        corner(answer, answer - newest)
        if capture > newest:
            newest = capture
            corner(answer, answer - newest)
        prev_t = answer
    span = events[-1][0] - events[0][0]
    mean = area2 / (2 * span) / 1e6 if span > 0 else aoi[-1]
    return AoISeries(t_ns, aoi, mean, max(aoi), len(events))
