"""Staged models: splitting anywhere equals running whole; exits have the right shapes; costs are computed."""

from __future__ import annotations

import pytest
import torch

from agents.datasets import ImageSet
from agents.errors import UserError
from agents.models.inputs import to_input
from agents.models.stats import model_stats
from agents.models.zoo import ZOO, build_model


@pytest.mark.parametrize("name", list(ZOO))
def test_every_split_point_equals_the_whole_model(name: str, sample: ImageSet) -> None:
    torch.manual_seed(0)
    model = build_model(name).eval()
    x = to_input(sample.images[:4])
    with torch.inference_mode():
        whole = model(x)
        for k in model.split_points:
            head = model.run(x, 0, k)
            tail = model.run(head.activation, k)
            logits = {**head.logits, **tail.logits}
            assert sorted(logits) == list(range(model.num_exits))
            for i, expected in enumerate(whole):
                assert torch.equal(logits[i], expected), f"{name}: split {k}, exit {i} differs"


@pytest.mark.parametrize("name", list(ZOO))
def test_exit_heads_have_the_right_shapes(name: str) -> None:
    model = build_model(name, num_classes=7).eval()
    with torch.inference_mode():
        outputs = model(model.example_input(3))
    assert len(outputs) == model.num_exits >= 1
    assert all(o.shape == (3, 7) for o in outputs)
    assert model.exit_after[-1] == model.num_stages - 1


def test_iter_exits_stops_where_the_caller_stops(sample: ImageSet) -> None:
    model = build_model("device-small").eval()
    x = to_input(sample.images[:1])
    with torch.inference_mode():
        whole = model(x)
        first = next(model.iter_exits(x))
    assert first[0] == 0 and first[1] == model.exit_after[0]
    assert torch.equal(first[2], whole[0])


@pytest.mark.parametrize("name", list(ZOO))
def test_stats_are_computed_from_the_model(name: str) -> None:
    model = build_model(name)
    stats = model_stats(model)
    assert stats.parameters == sum(p.numel() for p in model.parameters())
    assert len(stats.stage_macs) == model.num_stages and all(m > 0 for m in stats.stage_macs)
    assert len(stats.split_bytes) == len(model.split_points)
    assert stats.split_bytes[0] == 3 * 32 * 32 * 4
    with torch.inference_mode():
        for k in model.split_points:
            act = model.run(model.example_input(1), 0, k, exits=False).activation
            assert stats.split_bytes[k] == act.numel() * 4


def test_device_small_is_the_cheapest_and_cloud_large_the_biggest_own_net() -> None:
    macs = {n: model_stats(build_model(n)).total_macs for n in ("device-small", "edge-medium", "cloud-large")}
    assert macs["device-small"] < macs["edge-medium"] < macs["cloud-large"]
    assert len(build_model("device-small").exit_after) >= 2
    assert len(build_model("edge-medium").exit_after) >= 2


def test_unknown_model_name_is_a_user_error() -> None:
    with pytest.raises(UserError, match=r"unknown model 'tiny'.*device-small"):
        build_model("tiny")
