"""cascade profile: per-stage profiles, the per-layer latency predictor, its files and its errors."""

from __future__ import annotations

import json
import math
import os
import random
import subprocess
import sys
import time
from collections import Counter
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from agents.cli import main
from agents.errors import UserError
from agents.evaluation.latency import Timing, in_pass_latency, quiet_level, stage_latency, time_in_rounds
from agents.models.staged import StagedModel
from agents.models.zoo import build_model
from agents.profiling import sampling
from agents.profiling.command import format_profile
from agents.profiling.dryrun import python_calls
from agents.profiling.export import profile_points, write_points
from agents.profiling.fit_command import CHECKS_PER_PASS, format_fit
from agents.profiling.inside import TypeTimes, by_type, layer_times
from agents.profiling.layers import TYPES, Layer, Recording, cat_runs, classify
from agents.profiling.loading import load_model
from agents.profiling.memory import MemoryCurve, available_mib, measure_memory
from agents.profiling.node import NodeIdentity, cpu_model, node_identity
from agents.profiling.predict_command import PARTS_SUMMED, measured_from_profile
from agents.profiling.predictor import (
    FIT_SCHEMA,
    Predictor,
    TypeModel,
    fit,
    fit_type,
    fold_of,
    load_fit,
    mape,
    nnls,
    save_fit,
    weight_bytes,
)
from agents.profiling.recording import capture_one, record, record_calls, record_stages
from agents.profiling.sampling import (
    GENERATORS,
    NOISY_PASSES,
    CacheFlush,
    Sample,
    before_each_call,
    measure,
    measure_all,
    pass_spread,
    plan,
)
from agents.profiling.stages import PROFILE_SCHEMA, Effort, load_profile, profile_model, save_profile
from agents.profiling.steadiness import SLOW_FACTOR, SpeedMeter, core_speed, unsteady
from agents.telemetry.influx import InfluxTarget, influx_query
from agents.telemetry.influxd import InfluxServer
from tests.test_cli_errors import assert_one_line_error, cascade


@pytest.fixture(scope="module")
def profile() -> dict[str, Any]:
    """device-small profiled at batch 1 and 8 on one thread (the shipped checkpoint)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return profile_model(load_model("device-small"), node_identity(), [1, 8], Effort(15, 3, 0.0, 0.0), "test")
    finally:
        torch.set_num_threads(threads)


# --- profile -----------------------------------------------------------------------------------


def test_profile_schema(profile: dict[str, Any], tmp_path: Path) -> None:
    assert profile["schema"] == PROFILE_SCHEMA
    assert profile["model"]["name"] == "device-small" and profile["model"]["trained"] is True
    assert profile["node"]["torch_threads"] == 1 and profile["node"]["cpu_model"]
    assert [s["stage"] for s in profile["stages"]] == [0, 1, 2, 3]
    assert [s["exit"]["index"] for s in profile["stages"] if s["exit"]] == [0, 1, 2]
    for stage in profile["stages"]:
        assert [e["batch"] for e in stage["latency"]] == [1, 8]
        for e in stage["latency"]:
            assert 0 < e["median_ms"] <= e["p95_ms"] and e["repeat_median_ms"] > 0
    assert profile["stages"][0]["output_bytes"] == 4 * 24 * 32 * 32
    # Every part timed again inside whole passes, where it runs.
    entries = [e for s in profile["stages"] for e in s["latency"] + (s["exit"]["latency"] if s["exit"] else [])]
    assert all(e["in_pass_median_ms"] > 0 for e in entries + profile["whole_model"])
    # How steadily the host ran each core while it was profiled.
    speeds = profile["settings"]["host_speed"]
    assert [c["core"] for c in speeds] == sorted(os.sched_getaffinity(0))
    assert all(
        c["spells"] > 100 and 0 < c["fastest_us"] <= c["median_us"] and 0 <= c["slow_share"] <= 1 for c in speeds
    )
    path = tmp_path / "p.json"
    save_profile(profile, path)
    assert load_profile(path)["stages"] == profile["stages"]


def test_bigger_stages_and_batches_cost_more(profile: dict[str, Any]) -> None:
    stages = profile["stages"]
    # Stage 1 has 14x the MACs of stage 0 (9.4 M against 0.66 M).
    assert stages[1]["macs"] > 10 * stages[0]["macs"]
    assert stages[1]["latency"][0]["median_ms"] > stages[0]["latency"][0]["median_ms"]
    for stage in stages:
        b1, b8 = stage["latency"]
        assert b8["median_ms"] > b1["median_ms"], stage["stage"]
    whole1, whole8 = profile["whole_model"]
    assert whole8["median_ms"] > whole1["median_ms"]


class _Spin(torch.nn.Module):
    """A part that takes ``ms`` milliseconds of wall time, whatever its input (passed through)."""

    def __init__(self, ms: float) -> None:
        super().__init__()
        self.ms = ms

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        end = time.perf_counter() + self.ms / 1e3
        while time.perf_counter() < end:
            pass
        return x


def test_in_pass_timing_times_each_part_where_it_runs() -> None:
    model = StagedModel("spin", [_Spin(0.5), _Spin(3.0), _Spin(1.0)], {0: _Spin(0.2), 2: _Spin(0.1)})
    timed = in_pass_latency(model, 1, reps=15, warmup=2)
    assert [t.median_ms for t in timed.stages] == pytest.approx([0.5, 3.0, 1.0], abs=0.05)
    assert sorted(timed.heads) == [0, 2] and timed.heads[0].median_ms == pytest.approx(0.2, abs=0.05)
    assert all(t.reps == 15 for t in [*timed.stages, *timed.heads.values(), timed.passes])
    parts = sum(t.median_ms for t in timed.stages) + sum(t.median_ms for t in timed.heads.values())
    assert timed.passes.median_ms == pytest.approx(parts, rel=0.1)  # the clock between parts costs next to nothing


def test_profiles_without_in_pass_figures_still_read(profile: dict[str, Any]) -> None:
    measured = measured_from_profile(profile, 8)
    assert measured.in_pass_stages == [s["latency"][1]["in_pass_median_ms"] for s in profile["stages"]]
    assert measured.in_pass_heads == {
        s["stage"]: s["exit"]["latency"][1]["in_pass_median_ms"] for s in profile["stages"] if s["exit"]
    }
    assert "in pass" in format_profile(profile)
    old = json.loads(json.dumps(profile).replace('"in_pass_median_ms"', '"gone"'))  # as written before 2026-11-30
    measured = measured_from_profile(old, 8)
    assert measured.in_pass_stages is None and measured.in_pass_heads is None
    assert measured.stages == [s["latency"][1]["median_ms"] for s in profile["stages"]]
    assert len(format_profile(old).splitlines()) == len(format_profile(profile).splitlines())


def test_a_host_that_slows_now_and_then_is_told_apart() -> None:
    steady = [100e-6 * (1 + 0.01 * (i % 7)) for i in range(400)]
    mixed = steady[:200] + [1.9 * s for s in steady[200:]]  # half the spells at about half speed
    calm, slowed = core_speed(steady, 0), core_speed(mixed, 1)
    assert calm.slow_share == 0 and calm.slowdown == pytest.approx(1.03, abs=0.01)
    assert slowed.slow_share == pytest.approx(0.5) and slowed.fastest_us == pytest.approx(calm.fastest_us)
    assert unsteady([calm]) is None
    warning = unsteady([calm, slowed.to_json() | {"later_field": 1}])  # as a profile file holds it
    assert warning is not None and "core 1, 50 % of 400 spells" in warning and "when it is steady" in warning
    # One core slowed through every spell is slowed against the fastest core, not steady against itself.
    assert core_speed([2 * s for s in steady], 1, min(steady)).slow_share == 1.0
    with pytest.raises(ValueError):
        core_speed([])


def test_the_speed_meter_times_every_usable_core() -> None:
    before = os.sched_getaffinity(0)
    meter = SpeedMeter()
    meter.probe(0.02)
    first = {c.core: c.spells for c in meter.cores()}
    meter.probe(0.02)
    cores = meter.cores()
    assert [c.core for c in cores] == sorted(before) and os.sched_getaffinity(0) == before  # affinity restored
    assert all(c.spells > first[c.core] >= 1 for c in cores)  # the second probe's spells pooled with the first's
    fastest = {c.fastest_us for c in cores}
    assert len(fastest) == 1 and all(c.median_us >= c.fastest_us for c in cores)


def test_a_profile_from_an_unsteady_host_says_so(profile: dict[str, Any]) -> None:
    flagged = json.loads(json.dumps(profile))
    flagged["settings"]["host_speed"] = [
        {"core": 0, "spells": 900, "fastest_us": 85.0, "median_us": 160.0, "slow_share": 0.8},
        {"core": 1, "spells": 900, "fastest_us": 85.0, "median_us": 86.0, "slow_share": 0.02},
    ]
    text = format_profile(flagged)
    assert f"core 0, 80 % of 900 spells of the same Python loop ran over {SLOW_FACTOR:.2f}x slower" in text
    flagged["settings"]["host_speed"][0]["slow_share"] = 0.05
    assert "not steady" not in format_profile(flagged)
    del flagged["settings"]["host_speed"]  # a profile written before the meter: read as it is
    assert "not steady" not in format_profile(flagged)


def test_untrained_zoo_model_and_unknown_names() -> None:
    target = load_model("resnet18")
    assert not target.trained and target.source == "zoo (untrained)"
    assert load_model("device-small").trained
    # Either way the weights are channels-last, as the agents hold them: no per-call weight copy is profiled.
    for name in ("resnet18", "device-small"):
        convs = [m for m in load_model(name).model.modules() if isinstance(m, torch.nn.Conv2d)]
        assert convs and all(c.weight.is_contiguous(memory_format=torch.channels_last) for c in convs)
    with pytest.raises(UserError, match=r"huge-net.*device-small.*resnet18"):
        load_model("huge-net")


def test_profile_points_for_influx(profile: dict[str, Any]) -> None:
    lines = profile_points(profile, "node a")
    assert len(lines) == 2 * 4 + 2  # 4 stages and the whole model, at 2 batch sizes
    assert lines[0].startswith("profile,batch=1,model=device-small,node=node\\ a,stage=0,threads=1 ")
    assert "exit_median_ms=" in next(line for line in lines if "stage=1," in line)
    assert all("in_pass_median_ms=" in line for line in lines)
    assert "exit_in_pass_median_ms=" in next(line for line in lines if "stage=1," in line)
    assert all(line.split(" ")[-1] == str(profile["time_ns"]) for line in lines)


def test_profile_written_to_influxdb(profile: dict[str, Any], influx: InfluxServer) -> None:
    assert write_points(influx.url, "profiles", profile_points(profile, "n1")) == 10
    answer = influx_query(
        InfluxTarget(influx.url, "profiles"), "SELECT median_ms FROM profile WHERE \"stage\" = 'all'", "profiles"
    )
    assert len(answer["results"][0]["series"][0]["values"]) == 2


def test_node_identity_reads_arm_cpuinfo() -> None:
    pi = "processor\t: 0\nBogoMIPS\t: 108.00\nHardware\t: BCM2835\nModel\t\t: Raspberry Pi 4 Model B Rev 1.4\n"
    assert cpu_model(pi) == "Raspberry Pi 4 Model B Rev 1.4"
    assert cpu_model("model name\t: Intel(R) Xeon(R)\nmodel name\t: other\n") == "Intel(R) Xeon(R)"
    node = node_identity()
    assert NodeIdentity.from_json(node.to_json()) == node
    assert node.differences(node) == []


# --- layers ------------------------------------------------------------------------------------


def test_layers_of_the_zoo_are_all_priced() -> None:
    for name, expect in [("resnet18", {"eltwise": 8}), ("densenet121", {"concat": 64, "pool.avg": 3})]:
        model = build_model(name).eval()
        x = model.example_input(1).contiguous(memory_format=torch.channels_last)
        rec = record(partial(model, x))
        assert rec.unknown == {}
        counts = {t: sum(1 for layer in rec.layers if layer.type == t) for t in expect}
        assert counts == expect, name  # residual adds and dense concatenations are layers too
        assert rec.module_calls > len(rec.layers) / 3


def test_batch_norm_folded_or_not() -> None:
    torch.manual_seed(0)
    conv, bn = nn.Conv2d(16, 32, 3, padding=1, bias=False), nn.BatchNorm2d(32).eval()
    fused = nn.utils.fusion.fuse_conv_bn_eval(conv.eval(), bn)
    x = torch.randn(1, 16, 8, 8).contiguous(memory_format=torch.channels_last)
    plain = record(lambda: bn(conv(x)))
    folded = record(lambda: fused(x))
    assert [layer.type for layer in plain.layers] == ["conv.im2col", "norm"]
    assert [layer.type for layer in folded.layers] == ["conv.im2col"]
    predictor = Predictor({t: TypeModel(t, TYPES[t], (1.0,) + (0.0,) * len(TYPES[t])) for t in TYPES})
    # Every layer and module call priced at 1 ms: folding saves the norm layer and its module call.
    assert predictor.predict(plain).total_ms == pytest.approx(predictor.predict(folded).total_ms + 2.0)


def test_stage_recordings_add_up_to_the_model() -> None:
    model = build_model("device-small").eval()
    stages, heads, whole = record_stages(model, 1)
    assert len(stages) == 4 and sorted(heads) == [1, 2, 3]
    parts = sum(len(r.layers) for r in stages) + sum(len(r.layers) for r in heads.values())
    assert parts == len(whole.layers)


class _Chatty(nn.Module):
    """A convolution behind a pure-Python loop: Python a dry run must count, and a tensor that counts real calls."""

    def __init__(self, loop: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(8, 8, 3, padding=1)
        self.loop = loop
        self.calls = torch.zeros(())
        self.forwards = 0

    def forward(self, x: Tensor) -> Tensor:
        self.forwards += 1
        total = 0
        for i in range(self.loop):
            total += i
        self.calls.add_(1)
        out: Tensor = self.conv(x)
        return out


def test_the_dry_run_counts_the_python_around_the_layers() -> None:
    x = torch.randn(1, 8, 8, 8)
    chatty, plain = _Chatty(loop=3000), _Chatty(loop=0)
    many, few = python_calls(partial(chatty, x), rounds=10), python_calls(partial(plain, x), rounds=10)
    assert many is not None and few is not None
    # 3000 additions are worth dozens of plain module calls, a conv module's own Python a few:
    # a ratio measured in the same rounds, with a margin no host noise reaches.
    assert many > 5 * max(few, 1.0)
    # The dry runs compute nothing: the counter saw the one captured pass, the Python ran every time.
    assert chatty.calls.item() == 1 and chatty.forwards > 10


class _Alternating(nn.Module):
    """Applies its ReLU on every other call: a pass a dry run cannot replay."""

    def __init__(self) -> None:
        super().__init__()
        self.count = 0

    def forward(self, x: Tensor) -> Tensor:
        self.count += 1
        return x.relu() if self.count % 2 else x


def test_a_pass_that_branches_on_python_state_is_not_dry_run() -> None:
    assert python_calls(partial(_Alternating(), torch.randn(4)), rounds=3) is None


def test_the_python_around_the_layers_is_priced_in_module_calls() -> None:
    module = TypeModel("module", TYPES["module"], (0.002,))
    rec = Recording([], module_calls=10)
    assert Predictor({"module": module}).predict(rec).total_ms == pytest.approx(0.02)  # one price per call
    rec.python_calls = 35.0
    priced = Predictor({"module": module}).predict(rec)
    assert priced.total_ms == pytest.approx(0.07) and priced.by_type == {"module": pytest.approx(0.07)}
    assert Predictor({}).predict(rec).unknown == {"module": 10}
    whole = record_stages(build_model("device-small").eval(), 1)[2]
    assert whole.python_calls is not None and whole.python_calls > 0


def test_every_generator_makes_its_type() -> None:
    for kind in GENERATORS:
        sample = measure(kind, seed=7, reps=2, warmup=1, budget_s=0.0)
        assert sample.layer.type == kind and sample.median_ms > 0
    assert measure("module", seed=0, reps=2).layer.type == "module"
    jobs = plan(4, seed=1)
    assert {k for k, _ in jobs} == set(TYPES) and jobs == plan(4, seed=1)


def test_synthetic_convolutions_mostly_have_channels_last_weights() -> None:
    copied = []
    for seed in range(40):
        with torch.inference_mode():
            layer = capture_one(GENERATORS["conv.im2col"](random.Random(seed)))
        if layer.features["cols_elems"] > 0:  # not a plain 1×1, whose two layouts are the same
            copied.append(layer.features["weight_copy"] > 0)
    # as the agents run them (no copy), and a quarter copied so the fit can tell the copy apart
    assert 0 < sum(copied) < len(copied) / 2, copied


def test_convolution_paths_are_told_apart() -> None:
    small = classify(
        torch.conv2d,
        (torch.zeros(1, 16, 8, 8).contiguous(memory_format=torch.channels_last), torch.zeros(32, 16, 3, 3)),
        {},
        torch.zeros(1, 32, 8, 8),
    )
    big = classify(torch.conv2d, (torch.zeros(8, 16, 8, 8), torch.zeros(32, 16, 3, 3)), {}, torch.zeros(8, 32, 8, 8))
    depthwise = classify(
        torch.conv2d,
        (torch.zeros(8, 16, 8, 8), torch.zeros(16, 1, 3, 3), None, 1, 1, 1, 16),
        {},
        torch.zeros(8, 16, 8, 8),
    )
    assert isinstance(small, Layer) and small.type == "conv.im2col" and small.features["weight_copy"] == 16 * 32 * 9
    assert isinstance(big, Layer) and big.type == "conv" and big.features["macs"] == 8 * 32 * 64 * 16 * 9
    assert isinstance(depthwise, Layer) and depthwise.type == "dwconv"
    # few_rows_macs: an im2col product multiplies the output pixels of one image (64 here: full rate)
    assert small.features["few_rows_macs"] == 0.0


def test_matrix_products_of_few_rows() -> None:
    x = torch.zeros(1, 512, 4, 4).contiguous(memory_format=torch.channels_last)
    w = torch.zeros(512, 512, 3, 3).contiguous(memory_format=torch.channels_last)
    conv = classify(torch.conv2d, (x, w, None, 1, 1), {}, F.conv2d(x, w, None, 1, 1))
    assert isinstance(conv, Layer) and conv.type == "conv.im2col"
    assert conv.features["few_rows_macs"] == conv.features["macs"] * (1 - 16 / 64)  # 16 rows of 64
    for batch, share in ((1, 63 / 64), (16, 48 / 64), (64, 0.0), (128, 0.0)):
        u, weight = torch.zeros(batch, 256), torch.zeros(10, 256)
        linear = classify(F.linear, (u, weight), {}, F.linear(u, weight))
        assert isinstance(linear, Layer) and linear.features["few_rows_macs"] == pytest.approx(batch * 2560 * share)


def test_matrix_products_whose_rows_alias_in_the_cache() -> None:
    def conv(cin: int, cout: int, h: int, k: int = 3) -> Layer:
        x = torch.zeros(1, cin, h, h).contiguous(memory_format=torch.channels_last)
        w = torch.zeros(cout, cin, k, k).contiguous(memory_format=torch.channels_last)
        layer = classify(torch.conv2d, (x, w, None, 1, k // 2), {}, F.conv2d(x, w, None, 1, k // 2))
        assert isinstance(layer, Layer) and layer.type == "conv.im2col"
        return layer

    # resnet18's last stage: rows 9·512 floats = 18 KiB apart, two sets; 16 rows weigh 1.5 − 16/64
    assert conv(512, 512, 4).features["aliased_macs"] == conv(512, 512, 4).features["macs"] / 2 * 1.25
    assert conv(1024, 512, 4).features["aliased_macs"] == conv(1024, 512, 4).features["macs"] * 1.25  # one set
    assert conv(1024, 512, 4, k=1).features["aliased_macs"] == conv(1024, 512, 4, k=1).features["macs"] * 1.25
    for layer in (conv(520, 512, 4), conv(256, 512, 4), conv(512, 256, 4), conv(512, 768, 4), conv(512, 512, 2)):
        assert layer.features["aliased_macs"] == 0.0, layer.label  # rows apart by other strides; outside the window

    def linear(batch: int, fin: int, fout: int) -> float:
        u, weight = torch.zeros(batch, fin), torch.zeros(fout, fin)
        layer = classify(F.linear, (u, weight), {}, F.linear(u, weight))
        assert isinstance(layer, Layer)
        return layer.features["aliased_macs"] / layer.features["macs"]

    assert (linear(16, 4096, 512), linear(48, 2560, 704), linear(16, 4104, 512)) == (1.25, 0.375, 0.0)
    assert (linear(1, 4096, 512), linear(64, 4096, 512), linear(16, 4096, 320)) == (0.0, 0.0, 0.0)


def test_synthetic_products_include_aliased_rows() -> None:
    """Random shapes almost never alias; the sampler draws some that do, so the fit can price them."""
    for kind in ("conv.im2col", "linear"):
        with torch.inference_mode():
            layers = [capture_one(GENERATORS[kind](random.Random(seed))) for seed in range(100)]
        aliased = sum(layer.features["aliased_macs"] > 0 for layer in layers)
        assert 4 <= aliased <= 30, (kind, aliased)


def test_features_of_the_cheap_types() -> None:
    def cl(*shape: int) -> torch.Tensor:
        return torch.ones(*shape).contiguous(memory_format=torch.channels_last)

    def one(fn: Any) -> Layer:
        (layer,) = record(fn).layers
        return layer

    m, v = torch.zeros(2, 8, 1, 1), torch.zeros(2, 8)
    flat, drop = one(lambda: torch.flatten(m, 1)), one(lambda: F.dropout(v, 0.2, False))
    assert (flat.type, flat.features["dropout"], drop.type, drop.features["dropout"]) == ("view", 0.0, "view", 1.0)
    x = cl(1, 40, 4, 4)  # 40 channels: one 32-float step and 8 left over, at each of 16 pixels
    amax = one(lambda: torch.amax(x, dim=(2, 3)))
    assert (amax.features["vector_steps"], amax.features["tail_elems"]) == (16.0, 128.0)
    plain = torch.ones(1, 40, 4, 4)
    assert one(lambda: torch.amax(plain, dim=(2, 3))).features["tail_elems"] == 0.0
    y = x.clone()
    relu, relu_, sig = one(lambda: F.relu(x)), one(lambda: F.relu(y, inplace=True)), one(lambda: torch.sigmoid(x))
    assert (relu.features["allocates"], relu_.features["allocates"]) == (1.0, 0.0)
    assert (sig.type, sig.features["exp_per_thread"], relu.features["exp_per_thread"]) == ("act.other", 640.0, 0.0)
    silu = one(lambda: F.silu(x))  # a Python function around the kernel; torch.sigmoid is a builtin
    assert (silu.type, silu.features["python_call"], sig.features["python_call"]) == ("act.other", 1.0, 0.0)
    parts = [cl(1, 8, 2, 2), cl(1, 24, 2, 2)]
    cat = one(lambda: torch.cat(parts, 1))
    # 4 pixels, 2 inputs: one serial loop of 8 runs. Each pixel's 32 floats fill two cache lines; the
    # second input's runs start 32 bytes in, off a line.
    serial = {"inputs": 2.0, "iterators": 0.0, "serial_elems": 128.0, "serial_runs": 8.0, "serial_unaligned": 96.0}
    assert cat.features == {**serial, "per_thread": 0.0, "runs_per_thread": 0.0, "unaligned_per_thread": 0.0}
    same, mixed = [cl(1, 32, 8, 8) for _ in range(16)], [cl(1, 24 if i % 2 else 40, 8, 8) for i in range(16)]
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(2)  # 32768 elements out: a TensorIterator per input, or one for equal shapes
        mixed_cat, same_cat = one(lambda: torch.cat(mixed, 1)), one(lambda: torch.cat(same, 1))
        assert (mixed_cat.features["iterators"], same_cat.features["iterators"]) == (16.0, 1.0)
        # Each input of 2048 elements is copied on one thread, 64 runs (pixels) each.
        assert (same_cat.features["per_thread"], same_cat.features["runs_per_thread"]) == (32768.0, 1024.0)
        # 32 floats are 128 bytes: every run on a line. The 24-wide inputs start 32 bytes off one.
        assert (same_cat.features["unaligned_per_thread"], mixed_cat.features["unaligned_per_thread"]) == (0.0, 12288.0)
        empty = cl(1, 0, 8, 8)  # an empty input is legal in torch.cat and copies nothing
        assert one(lambda: torch.cat([*same, empty], 1)).features["per_thread"] == 32768.0
        torch.set_num_threads(1)  # one thread: the serial loop, whatever the size
        assert one(lambda: torch.cat(mixed, 1)).features["iterators"] == 0.0
    finally:
        torch.set_num_threads(threads)
    # Contiguous along dim 1: a run per batch item of channels × the trailing dims (20 floats, 80
    # bytes); rows of 160 bytes put every other run of the first input on a line, none of the second.
    pieces = [torch.ones(2, 5, 4), torch.ones(2, 5, 4)]
    assert cat_runs(torch.cat(pieces, 1), 1, pieces) == (2, [0.5, 1.0])
    half, add = one(lambda: x * 0.5), one(lambda: x + y)  # a Python number for an operand, or two tensors
    assert (half.features["scalar"], half.features["scalar_elems"], half.features["in_elems"]) == (1.0, 640.0, 640.0)
    assert (add.features["scalar"], add.features["scalar_elems"], add.features["in_elems"]) == (0.0, 0.0, 1280.0)
    u, w, b = torch.ones(2, 8), torch.ones(10, 8), torch.ones(10)
    assert one(lambda: F.linear(u, w)).features["bias"] == 0.0
    assert one(lambda: F.linear(u, w, b)).features["bias"] == 1.0


def test_the_flush_then_warms_a_block_of_the_outputs_size(monkeypatch: pytest.MonkeyPatch) -> None:
    flush = CacheFlush(1)
    between = flush.then_warm(torch.ones(3, 5, dtype=torch.float64))
    written: list[Tensor] = []
    real_empty = torch.empty

    def spy(*args: Any, **kwargs: Any) -> Tensor:
        block = real_empty(*args, **kwargs)
        written.append(block)
        return block

    monkeypatch.setattr(torch, "empty", spy)
    before = flush.buffer[0].item()
    between()
    assert flush.buffer[0].item() == before + 1.0  # the cache flush ran first
    # Then one block of the output's bytes was written (and freed: the allocator's next block of
    # that size, most often the same one, is where the layer's output goes).
    assert [(b.numel(), b.dtype, bool((b == 1).all())) for b in written] == [(15, torch.float64, True)]
    # The fit's choice per layer: no flush for types that touch no tensor data, or without a flush.
    x = torch.ones(4, 4)
    assert before_each_call("view", lambda: x.flatten(), flush) is None
    assert before_each_call("act.relu", lambda: F.relu(x), None) is None
    chosen = before_each_call("act.relu", lambda: F.relu(x), flush)
    assert chosen is not None and chosen is not flush  # the flush, then the output's block


def test_the_fit_says_how_far_its_passes_disagree() -> None:
    layer = Layer("view", {})
    samples = [
        Sample(layer, 1.0, (), (1.0, 1.02)),
        Sample(layer, 1.0, (), (1.1, 1.0)),
        Sample(layer, 1.0, (), (2.0, 2.1)),
    ]
    assert pass_spread(samples) == pytest.approx(0.05)  # the median of 2 %, 10 % and 5 %
    assert pass_spread([Sample(layer, 1.0, (), (1.0,))]) == 0.0  # one pass: nothing to compare
    assert pass_spread([Sample(layer, 1.0, (), (1.3, 1.0, 1.02))]) == pytest.approx(0.02)  # the quietest two
    predictor = Predictor({"view": TypeModel("view", TYPES["view"], (0.001, 0.0, 0.0), 3, 1, 0.02, 0.03)})
    node = node_identity().to_json()
    quiet, noisy = (format_fit(predictor, [], node, 0.0, s) for s in (0.04, NOISY_PASSES + 0.01))
    assert "differed by 4.0 %" in quiet and "warning" not in quiet
    assert "not quiet" in noisy and "fit again" in noisy
    assert "two quietest of 4 passes" in format_fit(predictor, [], node, 0.0, 0.04, 4)
    assert "warning: the host is not steady" in format_fit(predictor, [], node, 0.0, 0.04, 2, "the host is not steady")


def test_a_noisy_fit_times_more_passes(monkeypatch: pytest.MonkeyPatch) -> None:
    jobs = [("view", 1), ("act.relu", 2)]
    more: list[int] = []
    monkeypatch.setattr(sampling, "NOISY_PASSES", 2.0)  # nothing is that noisy: two passes
    quiet = measure_all(jobs, reps=2, passes=2, max_passes=4, on_more=more.append)
    assert [len(s.pass_medians_ms) for s in quiet] == [2, 2] and not more
    monkeypatch.setattr(sampling, "NOISY_PASSES", -1.0)  # everything is: up to the most passes
    noisy = measure_all(jobs, reps=2, passes=2, max_passes=4, on_more=more.append)
    assert [len(s.pass_medians_ms) for s in noisy] == [4, 4] and more == [2, 3]
    assert all(s.quiet_ms == quiet_level(s.pass_medians_ms) for s in quiet + noisy)


def test_stages_in_rounds_and_layers_in_passes() -> None:
    model = build_model("device-small").eval()
    ticks: list[int] = []
    rounds = stage_latency(model, 1, reps=3, warmup=1, exits=False, on_stage=lambda: ticks.append(1), rounds=3)
    assert [s.stage for s in rounds] == [0, 1, 2, 3] and all(s.median_ms > 0 for s in rounds) and len(ticks) == 4
    order: list[str] = []
    timings = time_in_rounds(
        [lambda: order.append("a"), lambda: order.append("b")],
        rounds=3,
        reps=3,
        warmup=1,
        on_done=lambda: ticks.append(1),
    )
    assert [t.reps for t in timings] == [3, 3] and order == ["a", "a", "b", "b"] * 3  # warm-up + 1 timed, turn by turn
    assert len(ticks) == 6  # each call once, after its last round
    assert all(len(t.rounds_ms) == 3 and t.quiet_ms == quiet_level(t.rounds_ms) <= t.median_ms for t in timings)
    calls: list[int] = []
    samples = measure_all([("view", 1), ("act.relu", 2)], 2, lambda: calls.append(1), passes=2, max_passes=2)
    assert [s.layer.type for s in samples] == ["view", "act.relu"] and len(calls) == 4
    assert all(len(s.calls_ms) >= 2 and s.median_ms > 0 and len(s.pass_medians_ms) == 2 for s in samples)


def test_the_fit_takes_the_two_quietest_passes_and_rounds() -> None:
    # The host's noise only adds time: the two lowest pass medians give the layer's time, not the pooled median.
    assert quiet_level([1.3, 1.0, 1.1, 2.0]) == pytest.approx(1.05)
    assert quiet_level([0.9]) == 0.9
    with pytest.raises(ValueError):
        quiet_level([])
    sample = Sample(Layer("view", {}), 1.5, (1.0, 1.1, 2.0, 2.2), (1.05, 2.1, 1.15))
    assert sample.quiet_ms == pytest.approx(1.1)
    assert Sample(Layer("view", {}), 1.5).quiet_ms == 1.5  # no passes recorded: the median
    assert Timing(2.0, 3.0, 9, (2.5, 1.8, 2.0)).quiet_ms == pytest.approx(1.9)
    assert Timing(2.0, 3.0, 9).quiet_ms == 2.0  # one measurement, no rounds


def test_the_check_runs_a_round_at_each_stop_of_every_pass(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sampling, "NOISY_PASSES", 2.0)
    events: list[str] = []
    jobs = [("view", n) for n in range(6)]
    measure_all(
        jobs, 2, lambda: events.append("layer"), passes=2, check=lambda: events.append("check"), checks_per_pass=3
    )
    # Before the first, third and fifth layer of each pass: the rounds spread over the whole timing.
    one_pass = ["check", "layer", "layer"] * 3
    assert events == one_pass * 2
    model = build_model("device-small").eval()
    timer = Effort(reps=5, warmup=1, warmup_s=0.0, measure_s=0.0, rounds=5).whole_rounds([(model, 1)])
    with torch.inference_mode():
        for _ in range(3):
            timer.round()
    (timing,) = timer.timings()
    assert len(timing.rounds_ms) == 3 and timing.reps == 3  # a fifth of the calls a round, rounded up


# --- predictor ---------------------------------------------------------------------------------


def test_nnls_is_exact_and_non_negative() -> None:
    rng = np.random.default_rng(0)
    a = rng.uniform(0, 1, (50, 3))
    b = a @ np.array([2.0, -1.0, 0.5])
    x = nnls(a, b)
    assert (x >= 0).all() and x[1] == 0
    # Against a brute-force grid around the answer: nothing feasible does better.
    loss = float(np.sum((a @ x - b) ** 2))
    for d in rng.normal(0, 0.05, (200, 3)):
        y = np.maximum(x + d, 0)
        assert float(np.sum((a @ y - b) ** 2)) >= loss - 1e-9


def test_predictor_recovers_a_synthetic_linear_truth() -> None:
    rng = random.Random(3)
    truth = (0.02, 8e-9, 3e-7, 1e-7, 6e-8)  # intercept, then macs, in, out, weight (conv features)
    layers, latency = [], []
    for _ in range(200):
        cin, cout, h, k = (
            rng.choice([16, 32, 64, 128, 256]),
            rng.choice([16, 32, 64, 128, 256]),
            rng.choice([4, 8, 16, 32]),
            rng.choice([1, 3]),
        )
        feats = {
            "macs": float(cout * h * h * cin * k * k),
            "in_elems": float(cin * h * h),
            "out_elems": float(cout * h * h),
            "weight_elems": float(cout * cin * k * k),
        }
        layer = Layer("conv", feats)
        ms = sum(c * v for c, v in zip(truth, layer.vector(), strict=True))
        layers.append(layer)
        latency.append(ms * (1 + rng.gauss(0, 0.01)))
    model = fit_type("conv", layers, latency, folds=5, seed=0)
    for got, want in zip(model.coef, truth, strict=True):
        assert got == pytest.approx(want, rel=0.15)
    assert model.mape < 0.02 and (model.shapes, model.folds) == (200, 5)
    # Every shape is scored by a fit that left it out: a shape far off the truth shows in the error
    # even though the final fit, which includes it, hardly moves.
    latency[0] *= 3
    scored = fit_type("conv", layers, latency, folds=5, seed=0)
    in_sample = mape([scored.predict(layer) for layer in layers], latency)
    assert scored.max_ape > 0.5 and scored.mape > in_sample  # scored on the fit itself, the two would agree
    assert math.isnan(fit_type("conv", layers[:9], latency[:9], folds=5).mape)  # under two shapes a fold


def test_fit_file_round_trip(tmp_path: Path) -> None:
    samples = [
        (Layer("norm", {"elems": float(n), "per_thread": n / 2}), 0.01 + 2e-7 * n) for n in range(1000, 40000, 1000)
    ]
    predictor = fit(samples, node=node_identity())
    path = tmp_path / "fit.json"
    save_fit(path, predictor, {"validation": []})
    loaded, data = load_fit(path)
    assert data["schema"] == FIT_SCHEMA
    assert loaded.node == predictor.node
    assert loaded.types["norm"].coef == predictor.types["norm"].coef
    probe = Layer("norm", {"elems": 5000.0, "per_thread": 2500.0})
    assert loaded.predict_layer(probe) == pytest.approx(0.01 + 2e-7 * 5000, rel=1e-6)
    assert loaded.predict_layer(Layer("concat", {})) == 0.0  # a type without samples is not priced
    assert loaded.memory is None  # a fit without a memory curve (as before 2026-11-30) prices no streaming
    curve = MemoryCurve((4.0, 256.0), (60.0, 25.0))
    save_fit(path, fit(samples, node=node_identity(), memory=curve), {})
    assert load_fit(path)[0].memory == curve
    data = json.loads(path.read_text())
    data["memory"]["gbs"] = [60.0, -1.0]
    path.write_text(json.dumps(data))
    with pytest.raises(UserError, match="malformed"):
        load_fit(path)


def test_the_memory_curve(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    curve = MemoryCurve((4.0, 16.0, 256.0), (70.0, 50.0, 26.0))
    assert curve.bandwidth_gbs(1.0) == 70.0 and curve.bandwidth_gbs(4.0) == 70.0  # flat below the smallest
    assert curve.bandwidth_gbs(8.0) == pytest.approx(60.0)  # halfway in log size
    assert curve.bandwidth_gbs(64.0) == pytest.approx(38.0) and curve.bandwidth_gbs(4096.0) == 26.0
    for sizes, gbs in (((4.0, 4.0), (1.0, 1.0)), ((4.0,), (1.0, 2.0)), ((4.0,), (0.0,)), ((), ())):
        with pytest.raises(ValueError):
            MemoryCurve(sizes, gbs)
    meminfo = tmp_path / "meminfo"
    meminfo.write_text("MemTotal:       24683520 kB\nMemFree:          524288 kB\nMemAvailable:   20971520 kB\n")
    assert available_mib(meminfo) == 20480.0  # available, not merely free: page cache counts
    # An older kernel's meminfo has no MemAvailable, and elsewhere there is none: the free pages from sysconf.
    pages = {"SC_AVPHYS_PAGES": 1024, "SC_PAGE_SIZE": 4096}
    monkeypatch.setattr(os, "sysconf", lambda name: pages[name])
    meminfo.write_text("MemTotal:       24683520 kB\nMemFree:          524288 kB\n")
    assert available_mib(meminfo) == 4.0 and available_mib(tmp_path / "absent") == 4.0
    monkeypatch.undo()
    ticks: list[int] = []
    measured = measure_memory((1, 2), reps=2, on_size=lambda: ticks.append(1))
    assert measured.sizes_mib == (1.0, 2.0) and all(g > 0.1 for g in measured.gbs) and len(ticks) == 2


def test_a_network_past_the_cache_streams_its_weights() -> None:
    # Linear layers priced at 1 ms each by their regression; 4 MiB of weights each.
    linear = TypeModel("linear", TYPES["linear"], (1.0, *[0.0] * len(TYPES["linear"])))
    curve = MemoryCurve((16.0, 256.0), (50.0, 2.0))
    big = Layer("linear", {"weight_elems": float(2**20)})
    few, many = Recording(layers=[big] * 2), Recording(layers=[big] * 128)  # 8 MiB and 512 MiB of weights
    priced = Predictor({"linear": linear}, memory=curve)
    assert priced.predict(few).total_ms == pytest.approx(2.0) and priced.predict(few).memory_bound == 0
    streamed = priced.predict(many)  # 4 MiB at 2 GB/s: 2.1 ms a layer, more than the regression's 1 ms
    assert streamed.total_ms == pytest.approx(128 * 4 * 2**20 / 2e6) and streamed.memory_bound == 128
    assert Predictor({"linear": linear}).predict(many).total_ms == pytest.approx(128.0)  # no curve, no floor
    assert weight_bytes(Layer("norm", {"weight_elems": 10.0})) == 0.0  # only weighted types stream


def test_layer_times_inside_a_model() -> None:
    net = nn.Sequential(nn.Conv2d(64, 64, 3, padding=1), nn.ReLU(), nn.Flatten()).eval()
    x = torch.randn(1, 64, 32, 32)
    times = layer_times(lambda: net(x), passes=5, warmup=1)
    assert [layer.type for layer, _ in times] == [layer.type for layer in record(lambda: net(x)).layers]
    assert [layer.type for layer, _ in times][1:] == ["act.relu", "view"]
    (_, conv), (_, relu), (_, flatten) = times
    assert conv > 10 * relu > 0 and flatten > 0  # 38 M MACs against 65 k comparisons


def test_recorded_calls_replay_each_layer_alone() -> None:
    conv = nn.Conv2d(3, 8, 3)
    net = nn.Sequential(conv, nn.ReLU(inplace=True)).eval()
    x = torch.randn(1, 3, 8, 8)
    rec, calls = record_calls(lambda: net(x))
    assert len(calls) == len(rec.layers) == 2 and rec.layers[1].type == "act.relu"
    with torch.inference_mode():
        expected = F.conv2d(x, conv.weight, conv.bias)
        assert torch.allclose(calls[0](), expected)
        # The in-place ReLU replays on a copy of what it got, taken before it ran: negatives included.
        assert bool((expected < 0).any()) and torch.allclose(calls[1](), F.relu(expected))


def test_layer_times_refuse_passes_that_branch() -> None:
    calls = iter(range(100))

    def branching() -> object:
        x = torch.ones(4)
        return F.relu(x) if next(calls) % 2 else x

    with pytest.raises(ValueError, match="different numbers of torch functions"):
        layer_times(branching, passes=4, warmup=0)


def test_per_type_sums_inside_a_model() -> None:
    predictor = Predictor({"norm": TypeModel("norm", TYPES["norm"], (0.5, 0.0, 0.0))})
    times = [(Layer("norm", {}), 0.4), (Layer("conv", {}), 2.0), (Layer("norm", {}), 0.6)]
    rows = by_type(predictor, times)
    assert rows == [TypeTimes("conv", 1, 0.0, 2.0), TypeTimes("norm", 2, 1.0, 1.0)]  # costliest first; conv unpriced
    assert rows[1].error == 0.0 and rows[1].to_json()["calls"] == 2


# --- command line ------------------------------------------------------------------------------


def test_cli_profile_fit_and_predict(tmp_path: Path) -> None:
    fit_file, prof, pred = tmp_path / "fit.json", tmp_path / "profile.json", tmp_path / "pred.json"
    common = ["--threads", "1", "--reps", "3", "--warmup", "1", "--warmup-s", "0", "--measure-s", "0"]
    proc = cascade("profile", "--fit", "--samples", "4", "--model", "device-small", "--json", str(fit_file), *common)
    assert proc.returncode == 0, proc.stderr
    assert "MAPE" in proc.stdout and "device-small" in proc.stdout
    data = json.loads(fit_file.read_text())
    assert data["schema"] == FIT_SCHEMA and set(data["types"]) == set(TYPES)
    assert data["validation"][0]["model"] == "device-small" and data["node"]["torch_threads"] == 1
    assert data["settings"]["check_rounds"] >= 6  # three rounds of the check in each of two passes or more
    assert len(data["settings"]["host_speed"]) == len(os.sched_getaffinity(0))
    # 4 shapes a type (12 for conv): scored by five folds only with two shapes a fold, and said so.
    assert data["types"]["conv"]["folds"] == 5 and data["types"]["norm"]["folds"] == 0
    assert "too few shapes to score (10 needed)" in proc.stdout
    assert {s["fold"] for s in data["samples"] if s["type"] == "conv"} == set(range(5))
    assert "memory reads:" in proc.stdout and len(data["memory"]["gbs"]) == len(data["memory"]["sizes_mib"]) >= 1
    # What was fitted and checked: each shape's two quietest passes, each model's two quietest rounds.
    assert all(s["ms"] == pytest.approx(quiet_level(s["pass_medians_ms"]), rel=1e-3) for s in data["samples"])
    check = data["validation"][0]
    rounds = data["settings"]["passes"] * CHECKS_PER_PASS
    assert data["settings"]["check_rounds"] == rounds and len(check["rounds_ms"]) == rounds
    assert check["measured_ms"] == pytest.approx(quiet_level(check["rounds_ms"]), abs=1e-4)
    # The Python around the layers: the module calls counted, and what the dry run made of them, priced.
    assert check["module_calls"] > 0 and check["python_calls"] > 0
    module_price = data["types"]["module"]["coef_ms"][0]
    assert check["predicted_by_type_ms"]["module"] == pytest.approx(
        module_price * check["python_calls"], rel=0.01, abs=1e-4
    )
    proc = cascade("profile", "--model", "device-small", "--batch", "1,2", "--json", str(prof), *common)
    assert proc.returncode == 0, proc.stderr
    assert load_profile(prof)["settings"]["batches"] == [1, 2]
    proc = cascade(
        "profile", "--predict", "--model", "device-small", "--fit-file", str(fit_file), "--profile", str(prof),
        "--batch", "2", "--json", str(pred),
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    rows = json.loads(pred.read_text())["batches"][0]["rows"]
    assert [r["part"] for r in rows][-2:] == [PARTS_SUMMED, "whole model"] and len(rows) == 4 + 3 + 2
    assert all(r["predicted_ms"] > 0 and math.isfinite(r["error"]) for r in rows)
    # The summed row is the stages and exit heads read from the profile, and their predictions, added up.
    profile = load_profile(prof)
    at2 = [
        next(e["median_ms"] for e in entries if e["batch"] == 2)
        for entries in [s["latency"] for s in profile["stages"]]
        + [s["exit"]["latency"] for s in profile["stages"] if s["exit"]]
    ]
    assert rows[-2]["measured_ms"] == pytest.approx(math.fsum(at2))
    assert rows[-2]["predicted_ms"] == pytest.approx(math.fsum(r["predicted_ms"] for r in rows[:-2]))
    # The profile timed each part inside whole passes too: the rows carry it, and the sum adds it up.
    assert all(r["in_pass_ms"] > 0 and math.isfinite(r["in_pass_error"]) for r in rows[:-1])
    assert rows[-2]["in_pass_ms"] == pytest.approx(math.fsum(r["in_pass_ms"] for r in rows[:-2]))
    assert "in_pass_ms" not in rows[-1] and "in pass" in proc.stdout
    # Measured now (no --profile): the per-type table, every call timed inside the model.
    proc = cascade(
        "profile", "--predict", "--model", "device-small", "--fit-file", str(fit_file), "--json", str(pred), *common
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert "each call timed inside the model" in proc.stdout and "outside layers" in proc.stdout
    measured_now = json.loads(pred.read_text())["batches"][0]
    assert len(json.loads(pred.read_text())["host_speed"]) == len(os.sched_getaffinity(0))
    assert all(r["in_pass_ms"] > 0 for r in measured_now["rows"][:-1])
    inside = measured_now["inside"]
    python = measured_now["python"]
    assert python["module_calls"] > 0 and python["python_calls"] > 0 and "dry run" in proc.stdout
    assert inside["outside"]["predicted_ms"] == python["predicted_ms"] > 0
    layers = record_stages(load_model("device-small").model, 1)[2].layers
    assert sum(t["calls"] for t in inside["types"]) == len(layers)
    assert {t["type"] for t in inside["types"]} == {layer.type for layer in layers}
    assert all(t["measured_ms"] > 0 and t["predicted_ms"] > 0 for t in inside["types"])


def _error_line(capsys: pytest.CaptureFixture[str], *args: str) -> str:
    """Run ``cascade ARGS`` in this process; the single ``cascade: error:`` line it printed (exit code 2)."""
    assert main(list(args)) == 2
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("cascade: error:")]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


def test_cli_errors_exit_2_with_one_line() -> None:
    proc = cascade("profile", "--model", "huge-net", "--json", "x.json")
    assert_one_line_error(proc, "huge-net", "device-small", "zoo architecture")


def test_cli_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = str(tmp_path / "x.json")
    for bad in ("1,x", "0", "1,1", ""):
        assert "--batch" in _error_line(capsys, "profile", "--model", "device-small", "--batch", bad, "--json", out)
    assert "--json" in _error_line(capsys, "profile", "--model", "device-small")
    assert "--fit and --predict" in _error_line(capsys, "profile", "--fit", "--predict", "--json", out)
    assert "--threads" in _error_line(capsys, "profile", "--fit", "--threads", "0", "--json", out)
    predict = ["profile", "--predict", "--model", "device-small", "--fit-file"]
    line = _error_line(capsys, *predict, str(tmp_path / "none.json"))
    assert "none.json" in line and "no such file" in line
    corrupt = tmp_path / "corrupt.json"
    corrupt.write_text("{not json")
    line = _error_line(capsys, *predict, str(corrupt))
    assert "corrupt.json" in line and "unreadable" in line
    wrong = tmp_path / "wrong.json"
    wrong.write_text(json.dumps({"schema": "cascade-profile/1", "types": {}}))
    assert "cascade-latency-fit/1" in _error_line(capsys, *predict, str(wrong))
    malformed = tmp_path / "malformed.json"
    conv = {"features": ["intercept", *TYPES["conv"]], "coef_ms": [1.0]}
    malformed.write_text(json.dumps({"schema": FIT_SCHEMA, "types": {"conv": conv}}))
    assert "malformed" in _error_line(capsys, *predict, str(malformed))
    stale = tmp_path / "stale.json"  # written by a version that priced convolutions with other features
    old_conv = {"features": ["intercept", "macs"], "coef_ms": [0.0, 1.0]}
    stale.write_text(json.dumps({"schema": FIT_SCHEMA, "types": {"conv": old_conv}}))
    line = _error_line(capsys, *predict, str(stale))
    assert "stale.json" in line and "'macs'" in line and "cascade profile --fit" in line
    fit_file = tmp_path / "fit.json"
    save_fit(fit_file, Predictor({}, node_identity()), {})
    profile_file = tmp_path / "profile.json"
    profile_file.write_text(json.dumps({"schema": "cascade-profile/0", "stages": []}))
    line = _error_line(capsys, *predict, str(fit_file), "--profile", str(profile_file))
    assert "profile.json" in line and "cascade-profile/1" in line
    with pytest.raises(UserError, match="lacks 'stages'"):
        profile_file.write_text(json.dumps({"schema": PROFILE_SCHEMA, "node": {}, "model": {}, "settings": {}}))
        load_profile(profile_file)


def test_fit_predictor_matches_the_cli_folds() -> None:
    # The fold the CLI writes for each sample must be the one fit_type held it out in: per type.
    from agents.profiling.fit_command import _folds

    samples = [(Layer("norm", {"elems": float(i)}), 1.0) for i in range(20)] + [
        (Layer("view", {"elems": float(i)}), 1.0) for i in range(8)
    ]
    folds = _folds(samples, 5, 0)
    assert folds[:20] == fold_of(20, 5, 0) and folds[20:] == fold_of(8, 5, 0)
    assert sorted(Counter(folds[:20]).values()) == [4] * 5  # dealt round: every fold the same size


def test_cli_profile_help_does_not_import_torch() -> None:
    code = "import sys; from agents.cli import build_parser; build_parser(); print('torch' in sys.modules)"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.stdout.strip() == "False", proc.stderr
