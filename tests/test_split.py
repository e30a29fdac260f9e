"""Split computing end to end: device and edge as processes on a real broker, shipped models, sample images."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from safetensors.torch import load_file, save_file

from agents.datasets import SAMPLE_TAR, load_image_set
from agents.models.checkpoint import file_digest, load_checkpoint, save_checkpoint
from agents.models.inference import exit_logits
from agents.models.inputs import to_input
from agents.models.zoo import build_model
from agents.runtime import CalibratedModel
from agents.transport.activations import encode_activation
from agents.transport.broker import BrokerProcess
from agents.transport.chunks import split_message
from agents.transport.envelope import Envelope, encode
from tests.harness import Watcher, edge_workers, records, spawn, write_config

FRAMES = 60


def _broker_section(broker: BrokerProcess) -> dict[str, object]:
    """Room for fp32 activations (up to 96 KB here), sent in 64 KiB chunks."""
    return {"host": broker.host, "port": broker.port, "max_payload_bytes": 1 << 20, "chunk_bytes": 1 << 16}


def _source(limit: int = FRAMES, path: Path = SAMPLE_TAR) -> dict[str, object]:
    return {"kind": "imagefolder", "path": str(path), "limit": limit}  # in order: frame i is image i


def _device(dev_id: str, split: int, codec: str = "fp32", **extra: object) -> dict[str, object]:
    return {
        "id": dev_id,
        "model": "device-small",
        "threshold": 1.0,  # every frame goes to the edge
        "threads": 1,
        "deadline_ms": 20000,
        "window": 8,
        "split": split,
        "codec": codec,
        "source": _source(),
        **extra,
    }


def _run_devices(tmp: Path, cfg: Path, ids: list[str]) -> None:
    procs = [spawn(tmp, "device", "--config", str(cfg), "--id", i, name=i) for i in ids]
    assert [p.wait(300) for p in procs] == [0] * len(ids)


def _altered_copy(tmp: Path, name: str, alter: Callable[[dict[str, torch.Tensor]], None]) -> Path:
    """A copy of device-small's checkpoint directory in ``tmp/name``, its weights changed in place by ``alter``."""
    copy = tmp / name
    shutil.copytree(Path(CalibratedModel("device-small").meta["_path"]).parent, copy)
    weights = copy / "device-small.safetensors"
    state = load_file(str(weights))
    alter(state)
    save_file(state, str(weights), metadata={"architecture": "device-small"})
    meta_path = copy / "device-small.json"  # the weights changed on purpose: record their new digest
    meta = json.loads(meta_path.read_text())
    meta_path.write_text(json.dumps({**meta, "sha256": file_digest(weights)}, indent=2))
    return copy


def _unsplit_predictions(ref: str, images: np.ndarray) -> list[int]:
    model, _ = load_checkpoint(ref)
    return [int(v) for v in exit_logits(model, images)[-1].argmax(1)]


def test_split_answers_match_the_unsplit_model(tmp_path: Path, broker: BrokerProcess, watcher: Watcher) -> None:
    devices = [_device(f"fp32s{k}", k) for k in (1, 2, 3)] + [
        _device("int8s2", 2, "int8"),
        _device("zs3", 3, "int8+zlib"),
    ]
    cfg = write_config(
        tmp_path,
        broker,
        broker=_broker_section(broker),
        devices=devices,
        tiers={"edge": {"model": "edge-medium", "threads": 1, "max_batch": 16, "split_models": {"device-small": {}}}},
    )
    with edge_workers(tmp_path, cfg, watcher):
        _run_devices(tmp_path, cfg, [str(d["id"]) for d in devices])
    expected = _unsplit_predictions("device-small", load_image_set(SAMPLE_TAR).images[:FRAMES])
    by_device: dict[str, list[dict[str, object]]] = {}
    for r in records(tmp_path):
        by_device.setdefault(str(r["device"]), []).append(r)
    for dev_id, recs in by_device.items():
        assert len(recs) == FRAMES, dev_id
        remote = [r for r in recs if r["outcome"] == "remote"]
        assert len(remote) >= FRAMES - 2, (dev_id, len(remote))  # threshold 1.0: essentially all go out
        assert all(r["model"] == "device-small" and r["tier"] == "edge" and r["split"] is not None for r in remote)
        agree = sum(r["prediction"] == expected[int(str(r["frame"]))] for r in remote) / len(remote)
        if dev_id.startswith("fp32"):
            assert agree == 1.0, dev_id  # exact: the same prediction on every image
        else:
            assert agree >= 0.95, (dev_id, agree)
    fp32_bytes = {r["bytes_up"] for r in by_device["fp32s2"]}
    int8_bytes = {r["bytes_up"] for r in by_device["int8s2"]}
    assert fp32_bytes == {32 * 16 * 16 * 4} and int8_bytes == {32 * 16 * 16}


def _wide_checkpoint(tmp: Path) -> Path:
    """ResNet-18 (random weights: this checks exactness of transport, not accuracy) declared for 96×96 inputs."""
    torch.manual_seed(0)
    model = build_model("resnet18")
    meta = save_checkpoint(
        model, {"classes": list(load_image_set(SAMPLE_TAR).classes), "input_shape": [3, 96, 96]}, tmp / "wide"
    )
    return meta


def _big_images(tmp: Path, n: int) -> tuple[Path, np.ndarray]:
    data = load_image_set(SAMPLE_TAR)
    root = tmp / "big"
    for i in range(n):
        big = Image.fromarray(data.images[i]).resize((96, 96), Image.Resampling.BILINEAR)
        (root / data.classes[int(data.labels[i])]).mkdir(parents=True, exist_ok=True)
        big.save(root / data.classes[int(data.labels[i])] / f"{i:04d}.png")
    loaded = load_image_set(root)
    return root, loaded.images


def test_chunked_activation_over_2mb(tmp_path: Path, broker: BrokerProcess, watcher: Watcher) -> None:
    ckpt = str(_wide_checkpoint(tmp_path))
    root, images = _big_images(tmp_path, 6)
    cfg = write_config(
        tmp_path,
        broker,
        broker={"host": broker.host, "port": broker.port, "max_payload_bytes": 8 << 20, "chunk_bytes": 256 << 10},
        devices=[{**_device("big", 1), "model": ckpt, "source": _source(6, root)}],
        tiers={"edge": {"model": "edge-medium", "threads": 1, "split_models": {ckpt: {}}}},
    )
    with edge_workers(tmp_path, cfg, watcher):
        _run_devices(tmp_path, cfg, ["big"])
    recs = sorted(records(tmp_path), key=lambda r: int(r["frame"]))
    assert [r["outcome"] for r in recs] == ["remote"] * 6
    assert all(r["bytes_up"] >= 2 * 1024 * 1024 for r in recs)  # 64×96×96 fp32 = 2.36 MB, 10 chunks each
    assert [r["prediction"] for r in recs] == _unsplit_predictions(ckpt, images)
    watcher.wait_for(
        lambda w: w.health.get("big", {}).get("counters", {}).get("chunked_messages", 0) == 6, 30, "chunks"
    )


def test_bad_split_input_is_rejected_and_the_device_falls_back(
    tmp_path: Path, broker: BrokerProcess, watcher: Watcher
) -> None:
    # The edge holds a copy of device-small with one weight changed: same name, other digest.
    def nudge(state: dict[str, torch.Tensor]) -> None:
        first = next(iter(state))
        state[first] = state[first] + 0.01

    copy = _altered_copy(tmp_path, "other", nudge)
    edge_tiers = {"edge": {"model": "edge-medium", "threads": 1, "split_models": {str(copy): {}}}}
    broker_cfg = {"host": broker.host, "port": broker.port, "max_payload_bytes": 1 << 20, "reassembly_timeout_s": 1.0}
    edge_cfg = write_config(tmp_path, broker, broker=broker_cfg, devices=[], tiers=edge_tiers)
    edge_cfg = edge_cfg.rename(tmp_path / "edge.yaml")
    dev = {**_device("dev1", 2), "deadline_ms": 1500, "source": _source(5)}
    dev_tiers = {"edge": {"model": "edge-medium", "split_models": {"device-small": {}}}}
    dev_cfg = write_config(tmp_path, broker, broker=broker_cfg, devices=[dev], tiers=dev_tiers)

    good = CalibratedModel("device-small")
    image = load_image_set(SAMPLE_TAR).images[:1]
    with torch.inference_mode():
        act = good.model.run(to_input(image), end=2, exits=False).activation
    header, payload = encode_activation(act, "fp32")
    base = {
        "id": "bad",
        "kind": "request",
        "reply_to": "cascade/t/device/x/results",
        "model": "device-small",
        "split": 2,
    }
    held = CalibratedModel(str(copy)).digest
    bad = [
        encode(Envelope({**base, **header, "model_digest": held, "shape": [1, 32, 8, 8]}, payload)),  # shape
        encode(Envelope({**base, **header, "model_digest": held, "codec": "int4"}, payload)),  # codec
        encode(Envelope({**base, **header, "model_digest": good.digest}, payload)),  # digest
        encode(Envelope({**base, **header, "model_digest": held, "split": 9}, payload)),  # split point
    ]
    chunks = split_message(encode(Envelope({**base, **header, "model_digest": held}, payload)), "c1", 4096)
    corrupt = split_message(encode(Envelope({**base, **header, "id": "c2", "model_digest": held}, payload)), "c2", 4096)
    tampered = bytearray(corrupt[3])
    tampered[-1] ^= 0xFF
    with edge_workers(tmp_path, edge_cfg, watcher) as (edge,):
        for msg in [*bad, *chunks[:-1], *corrupt[:3], bytes(tampered), *corrupt[4:]]:
            watcher.link.publish("cascade/t/edge/requests", msg, qos=1)
        _run_devices(tmp_path, dev_cfg, ["dev1"])
        assert edge.poll() is None, "the edge died on bad input"

        def counters(w: Watcher) -> dict[str, int]:
            return dict(w.health.get("edge-1", {}).get("counters", {}))

        kinds = ("shape", "codec", "digest", "split", "chunk", "incomplete_chunks")
        watcher.wait_for(lambda w: all(counters(w).get(f"rejected_{k}", 0) >= 1 for k in kinds), 30, str(kinds))
        # One crafted message and the device's five frames, all computed with other weights than the edge holds.
        watcher.wait_for(lambda w: counters(w).get("rejected_digest", 0) >= 6, 30, "six digest rejections")
    recs = records(tmp_path)
    assert len(recs) == 5 and {r["outcome"] for r in recs} == {"timeout"}
    # Fallback at the deadline: the device finished its own model from the activation.
    assert [r["prediction"] for r in sorted(recs, key=lambda r: int(r["frame"]))] == _unsplit_predictions(
        "device-small", load_image_set(SAMPLE_TAR).images[:5]
    )
    assert {r["exit"] for r in recs} == {good.model.num_exits - 1}


def _by_frame(tmp: Path) -> dict[int, dict[str, object]]:
    recs = records(tmp)
    assert len(recs) == FRAMES and len({r["frame"] for r in recs}) == FRAMES  # one answer per frame
    return {int(str(r["frame"])): r for r in recs}


def test_edge_stops_at_until_and_the_cloud_finishes_the_activation(
    tmp_path: Path, broker: BrokerProcess, watcher: Watcher
) -> None:
    tiers = {
        "edge": {
            "model": "edge-medium",
            "threshold": 0.9,
            "forward_to": "cloud",
            "threads": 1,
            "split_models": {"device-small": {"until": 3}},  # stages 1-2 (exits 0, 1) here, the rest in the cloud
        },
        "cloud": {"model": "cloud-large", "threads": 1, "split_models": {"device-small": {}}},
    }
    cfg = write_config(tmp_path, broker, broker=_broker_section(broker), devices=[_device("dev1", 1)], tiers=tiers)
    cloud = spawn(tmp_path, "cloud", "--config", str(cfg), "--id", "cloud-1", name="cloud")
    try:
        watcher.wait_status("cloud-1", b"online")
        with edge_workers(tmp_path, cfg, watcher):
            _run_devices(tmp_path, cfg, ["dev1"])
    finally:
        assert cloud.poll() is None
        cloud.terminate()
        assert cloud.wait(10) == 0
    model, _ = load_checkpoint("device-small")
    logits = exit_logits(model, load_image_set(SAMPLE_TAR).images[:FRAMES])
    tiers_seen = set()
    for frame, r in _by_frame(tmp_path).items():
        assert r["outcome"] == "remote" and r["model"] == "device-small", r
        tiers_seen.add(r["tier"])
        # Every answer, at the edge's exits or the cloud's final one, is exactly what the whole model gives there.
        assert r["prediction"] == int(logits[int(str(r["exit"]))][frame].argmax())
        assert (r["tier"] == "cloud") == (r["exit"] == model.num_exits - 1)
    assert tiers_seen == {"edge", "cloud"}


def test_forward_frame_sends_the_original_frame_to_the_cloud_model(
    tmp_path: Path, broker: BrokerProcess, watcher: Watcher
) -> None:
    tiers = {
        "edge": {
            "model": "edge-medium",
            "threshold": 0.9,
            "forward_to": "cloud",
            "threads": 1,
            "split_models": {"device-small": {"forward": "frame"}},  # MEANet: hard frames go whole to the cloud
        },
        "cloud": {"model": "cloud-large", "threads": 1},
    }
    cfg = write_config(tmp_path, broker, broker=_broker_section(broker), devices=[_device("dev1", 2)], tiers=tiers)
    cloud = spawn(tmp_path, "cloud", "--config", str(cfg), "--id", "cloud-1", name="cloud")
    try:
        watcher.wait_status("cloud-1", b"online")
        with edge_workers(tmp_path, cfg, watcher):
            _run_devices(tmp_path, cfg, ["dev1"])
    finally:
        cloud.terminate()
        assert cloud.wait(10) == 0
    images = load_image_set(SAMPLE_TAR).images[:FRAMES]
    device_final = _unsplit_predictions("device-small", images)
    cloud_final = _unsplit_predictions("cloud-large", images)
    by_frame = _by_frame(tmp_path)
    at_cloud = [f for f, r in by_frame.items() if r["tier"] == "cloud"]
    assert at_cloud and len(at_cloud) < FRAMES
    for frame, r in by_frame.items():
        if r["tier"] == "cloud":
            assert r["model"] == "cloud-large" and r["prediction"] == cloud_final[frame]
        else:
            assert r["model"] == "device-small" and r["prediction"] == device_final[frame]
    assert all(int(str(r["bytes_up"])) > 8192 for r in by_frame.values())  # the fp32 activation plus the PNG


def test_an_activation_int8_cannot_carry_is_answered_on_the_device(
    tmp_path: Path, broker: BrokerProcess, watcher: Watcher
) -> None:
    # A checkpoint whose first convolution holds a NaN: every activation does too, and int8 has no code for it.
    def poison(state: dict[str, torch.Tensor]) -> None:
        conv = next(k for k, v in state.items() if k.startswith("stages.0.") and v.dim() == 4)
        state[conv][0, 0, 0, 0] = float("nan")

    broken = _altered_copy(tmp_path, "broken", poison)
    dev = {**_device("dev1", 1, "int8"), "model": str(broken), "source": _source(5)}
    tiers = {"edge": {"model": "edge-medium", "split_models": {str(broken): {}}}}
    cfg = write_config(tmp_path, broker, broker=_broker_section(broker), devices=[dev], tiers=tiers)
    _run_devices(tmp_path, cfg, ["dev1"])  # exits 0: the device kept going
    recs = records(tmp_path)
    assert len(recs) == 5 and {r["outcome"] for r in recs} == {"local"}
    final = CalibratedModel("device-small").model.num_exits - 1  # the device ran its model to the end
    assert {r["tier"] for r in recs} == {"device"} and {r["exit"] for r in recs} == {final}
    log = (tmp_path / "dev1.log").read_text()
    assert "rejected a message (payload)" in log and "NaN or infinite" in log and "answered on the device" in log
