"""The offline cascade curve and calibration maths, on hand-made probabilities."""

from __future__ import annotations

import pytest
import torch

from agents.evaluation.curve import calibrated_probs, cascade_curve, exit_choice
from agents.models.calibration import expected_calibration_error, fit_temperature


def test_first_confident_exit_wins_and_the_last_takes_the_rest() -> None:
    p0 = torch.tensor([[0.9, 0.1], [0.6, 0.4], [0.55, 0.45]])
    p1 = torch.tensor([[0.2, 0.8], [0.05, 0.95], [0.5, 0.5]])
    final = torch.tensor([[0.0, 1.0], [1.0, 0.0], [0.0, 1.0]])
    assert exit_choice([p0, p1, final], 0.8).tolist() == [0, 1, 2]
    assert exit_choice([p0, p1, final], 0.0).tolist() == [0, 0, 0]
    labels = torch.tensor([0, 1, 1])
    points = {p.threshold: p for p in cascade_curve([p0, p1, final], labels, (0.0, 0.8, 1.0))}
    assert points[0.8].exit_fraction == [1 / 3, 1 / 3, 1 / 3] or all(
        abs(a - 1 / 3) < 1e-5 for a in points[0.8].exit_fraction
    )
    assert abs(points[0.8].accuracy - 1.0) < 1e-6
    assert abs(points[0.0].accuracy - 1 / 3) < 1e-6
    assert points[1.0].exit_fraction[-1] == 1.0


def test_temperature_scaling_fixes_overconfidence() -> None:
    gen = torch.Generator().manual_seed(0)
    n = 4000
    labels = torch.randint(0, 10, (n,), generator=gen)
    true_logits = torch.randn(n, 10, generator=gen)
    true_logits[torch.arange(n), labels] += 2.0
    # Sample labels from the true distribution so the true logits are calibrated; then sharpen them 3×.
    sampled = torch.multinomial(true_logits.softmax(1), 1, generator=gen).squeeze(1)
    overconfident = 3.0 * true_logits
    t = fit_temperature(overconfident, sampled)
    assert 2.5 < t < 3.5
    before = expected_calibration_error(overconfident.softmax(1), sampled)
    after = expected_calibration_error((overconfident / t).softmax(1), sampled)
    assert after < before / 3


@pytest.mark.parametrize("bad", [0.0, -1.0, float("nan"), float("inf")])
def test_calibrated_probs_refuses_a_temperature_that_is_not_positive(bad: float) -> None:
    # Dividing by zero gave NaN probabilities, which no threshold passes: a silent 12 % accuracy.
    logits = [torch.randn(4, 10), torch.randn(4, 10)]
    with pytest.raises(ValueError, match="finite and > 0"):
        calibrated_probs(logits, torch.tensor([1.0, bad]))
    assert all(torch.isfinite(p).all() for p in calibrated_probs(logits, torch.tensor([0.5, 2.0])))
