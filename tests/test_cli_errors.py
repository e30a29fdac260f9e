"""User errors: one clear line naming the thing and what was expected, non-zero exit, no traceback."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

from agents.cli import main
from agents.models.checkpoint import SHIPPED_DIR, save_checkpoint
from agents.models.zoo import build_model


def cascade(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "agents.cli", *args], capture_output=True, text=True, timeout=300)


def assert_one_line_error(proc: subprocess.CompletedProcess[str], *needles: str) -> None:
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.startswith("cascade: error:")]
    assert len(lines) == 1, proc.stderr
    for needle in needles:
        assert needle in lines[0]


def test_unknown_model(tmp_path: Path, sample_path: Path) -> None:
    proc = cascade("train", "--model", "huge-net", "--data", str(sample_path), "--out", str(tmp_path))
    assert_one_line_error(proc, "huge-net", "device-small")


def test_missing_data_path(tmp_path: Path) -> None:
    proc = cascade("train", "--model", "device-small", "--data", str(tmp_path / "nothing.tar"))
    assert_one_line_error(proc, "nothing.tar", "no such file")


def test_tar_without_images(tmp_path: Path) -> None:
    empty = tmp_path / "empty.tar"
    readme = tmp_path / "README.txt"
    readme.write_text("no images here")
    with tarfile.open(empty, "w") as tar:
        tar.add(readme, arcname="val/README.txt")
    proc = cascade("eval", "--model", "device-small", "--data", str(empty), "--no-latency")
    assert_one_line_error(proc, "empty.tar", "no images")


def test_checkpoint_whose_architecture_does_not_match(tmp_path: Path, sample_path: Path) -> None:
    meta_path = save_checkpoint(build_model("device-small"), {"classes": [str(i) for i in range(10)]}, tmp_path)
    meta = json.loads(meta_path.read_text())
    meta["architecture"] = "cloud-large"
    meta_path.write_text(json.dumps(meta))
    proc = cascade("eval", "--model", str(meta_path), "--data", str(sample_path), "--no-latency")
    assert_one_line_error(proc, "cloud-large", "do not match")


@pytest.mark.parametrize("spec", ["device-small", "a,b,c", ",cloud-large"])
def test_bad_cascade_spec(spec: str, sample_path: Path) -> None:
    proc = cascade("eval", "--cascade", spec, "--data", str(sample_path), "--no-latency")
    assert_one_line_error(proc, "--cascade")


def test_split_activation_above_the_payload_limit(tmp_path: Path, sample_path: Path) -> None:
    cfg = {
        "deployment": "t",
        "broker": {"max_payload_bytes": 65536, "chunk_bytes": 32768},
        "devices": [
            {"id": "d1", "split": 1, "codec": "fp32", "source": {"kind": "imagefolder", "path": str(sample_path)}}
        ],
        "tiers": {"edge": {"model": "edge-medium", "split_models": {"device-small": {}}}},
    }
    path = tmp_path / "d.yaml"
    path.write_text(json.dumps(cfg))  # JSON is YAML
    proc = cascade("device", "--config", str(path), "--id", "d1")
    assert_one_line_error(proc, "devices.d1", "98304 bytes", "max_payload_bytes")
    cfg["devices"][0]["codec"] = "int8"  # type: ignore[index]
    path.write_text(json.dumps(cfg))
    proc = cascade("check-config", str(path))
    assert proc.returncode == 0, proc.stderr
    cfg["devices"][0]["codec"] = "int4"  # type: ignore[index]
    path.write_text(json.dumps(cfg))
    assert_one_line_error(cascade("check-config", str(path)), "codec", "int4", "fp32")


def test_acl_workers_must_name_a_tier(tmp_path: Path) -> None:
    cfg = tmp_path / "d.yaml"
    cfg.write_text("deployment: t\ntiers: {edge: {model: edge-medium}}\n")
    assert_one_line_error(cascade("acl", "--config", str(cfg), "--workers", "fog=fog-1"), "no tier 'fog'", "edge")
    assert_one_line_error(cascade("acl", "--config", str(cfg), "--workers", "edge"), "TIER=ID")
    out = tmp_path / "cascade.acl"
    ok = cascade("acl", "--config", str(cfg), "--workers", "edge=edge-1,edge-2", "-o", str(out))
    assert ok.returncode == 0 and "3 accounts" in ok.stdout
    assert [line for line in out.read_text().splitlines() if line.startswith("user ")] == [
        "user edge-1",
        "user edge-2",
        "user monitor",
    ]
    assert not [line for line in out.read_text().splitlines() if line.startswith("pattern ")]


def cascade_here(capsys: pytest.CaptureFixture[str], *args: str) -> subprocess.CompletedProcess[str]:
    """``cascade`` run in this process (no second torch import): an exception escaping main fails the test."""
    code = main(list(args))
    out, err = capsys.readouterr()
    return subprocess.CompletedProcess(["cascade", *args], code, out, err)


@pytest.mark.parametrize(
    ("flags", "needle"),
    [
        # Without the checks: 16 epochs for --epochs 0, 10 images for --limit -990, 995 for --limit -5,
        # and a RuntimeError traceback for --threads -1.
        (["train", "--epochs", "0"], "--epochs must be a positive integer, got 0"),
        (["train", "--epochs", "1", "--limit", "-990"], "--limit must be a positive integer, got -990"),
        (["eval", "--limit", "-5"], "--limit must be a positive integer, got -5"),
        (["eval", "--threads", "-1"], "--threads must be a positive integer, got -1"),
    ],
)
def test_counts_that_are_not_positive(
    flags: list[str], needle: str, tmp_path: Path, sample_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    command, *rest = flags
    if command == "train":  # should the check fail, a tiny run rather than the recipe's 16 epochs
        rest += ["--out", str(tmp_path / "out"), "--val", "", "--batch-size", "16"]
    else:
        rest += ["--no-latency"]
    proc = cascade_here(capsys, command, "--model", "device-small", "--data", str(sample_path), *rest)
    assert_one_line_error(proc, needle)
    assert not (tmp_path / "out").exists()


def test_hand_edited_checkpoint_metadata(tmp_path: Path, sample_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    src = SHIPPED_DIR / "device-small"
    shutil.copy(src / "device-small.safetensors", tmp_path / "device-small.safetensors")
    meta = json.loads((src / "device-small.json").read_text())
    for e in meta["exits"]:
        e["temperature"] = 0  # used to run, with NaN probabilities: 12 % accuracy
    (tmp_path / "device-small.json").write_text(json.dumps(meta))
    proc = cascade_here(capsys, "eval", "--model", str(tmp_path), "--data", str(sample_path), "--no-latency")
    assert_one_line_error(proc, "device-small.json", "exits[0].temperature", "> 0")


def test_garbage_training_state(tmp_path: Path, sample_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "train_state.pt").write_bytes(b"not a state")
    args = ["--data", str(sample_path), "--out", str(tmp_path), "--val", "", "--epochs", "1", "--limit", "16"]
    proc = cascade_here(capsys, "train", "--model", "device-small", *args)
    assert_one_line_error(proc, "train_state.pt", "not a training state this version of cascade wrote")
