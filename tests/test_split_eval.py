"""``cascade eval --split`` on the shipped device model and real sample images, as a user runs it."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path


def test_eval_split_json(tmp_path: Path) -> None:
    out = tmp_path / "split.json"
    args = ["eval", "--split", "--model", "device-small", "--limit", "100", "--codecs", "fp32,int8+zlib", "--json"]
    proc = subprocess.run(
        [sys.executable, "-m", "agents.cli", *args, str(out)], capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stderr
    assert "unsplit accuracy" in proc.stdout
    result = json.loads(out.read_text())
    assert {"model", "images", "unsplit_accuracy", "points"} <= set(result) and result["images"] == 100
    points = {(p["split"], p["codec"]): p for p in result["points"]}
    assert set(points) == {(k, c) for k in (1, 2, 3) for c in ("fp32", "int8+zlib")}
    for k in (1, 2, 3):
        fp32, small = points[(k, "fp32")], points[(k, "int8+zlib")]
        assert {"device_macs", "remaining_macs", "bytes", "accuracy"} <= set(fp32)
        assert fp32["agreement"] == 1.0 and fp32["accuracy"] == result["unsplit_accuracy"]  # fp32 is exact
        assert small["bytes"] < fp32["bytes"] / 4  # int8 is a quarter; zlib takes more off
        assert fp32["device_macs"] > 0 and fp32["remaining_macs"] > 0
    assert points[(1, "fp32")]["device_macs"] < points[(3, "fp32")]["device_macs"]
