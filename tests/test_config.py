"""Deployment config: the examples validate; every bad file names the key path and exits non-zero."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from agents.config import load_config
from agents.errors import UserError

CONFIG_DIR = Path(__file__).resolve().parents[1] / "config"
GOOD = (CONFIG_DIR / "demo.yaml").read_text()


@pytest.mark.parametrize("name", ["demo.yaml", "lab.yaml"])
def test_examples_validate(name: str) -> None:
    cfg = load_config(CONFIG_DIR / name)
    assert cfg.devices and "edge" in cfg.tiers


def _write(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "deploy.yaml"
    p.write_text(text)
    return p


@pytest.mark.parametrize(
    ("edit", "needles"),
    [
        (("threshold: 0.8               #", "threshold: 1.5               #"), ["devices.0.threshold", "1.5"]),
        (("  port: 1883", "  port: 1883\n  colour: blue"), ["broker.colour", "Extra inputs"]),
        (("  port: 1883", "  port: 1883\n  password: hunter2"), ["broker", "password_env"]),
        (("offload_to: edge", "offload_to: fog"), ["fog", "not under 'tiers'"]),
        (("kind: imagefolder", "kind: carrier-pigeon"), ["devices.0.source.kind", "carrier-pigeon"]),
        (("rate: max", "rate: fixed"), ["needs 'fps'"]),
        (("deployment: demo", "deployment: 'has space'"), ["deployment", "has space"]),
        (("deadline_ms: 2000", "deadline_ms: .inf"), ["devices.0.deadline_ms", "finite number"]),
        (("max_wait_ms: 5", "max_wait_ms: .nan"), ["tiers.edge.max_wait_ms", "finite number"]),
        (("offload_to: edge", "offload_to: edge\n    via: 127.0.0.1:99999"), ["devices.0.via", "1-65535"]),
    ],
)
def test_bad_values_name_the_key_path(tmp_path: Path, edit: tuple[str, str], needles: list[str]) -> None:
    assert edit[0] in GOOD
    path = _write(tmp_path, GOOD.replace(edit[0], edit[1], 1))
    with pytest.raises(UserError) as info:
        load_config(path)
    message = str(info.value)
    assert str(path) in message
    for needle in needles:
        assert needle in message


def test_yaml_tags_cannot_run_code(tmp_path: Path) -> None:
    path = _write(tmp_path, "deployment: !!python/object/apply:os.system ['echo hi']\n")
    with pytest.raises(UserError, match="not valid YAML"):
        load_config(path)


def test_check_config_command(tmp_path: Path) -> None:
    ok = subprocess.run(
        [sys.executable, "-m", "agents.cli", "check-config", str(CONFIG_DIR / "demo.yaml")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert ok.returncode == 0 and "ok" in ok.stdout
    bad = _write(tmp_path, GOOD.replace("max_batch: 32", "max_batch: -3", 1))
    proc = subprocess.run(
        [sys.executable, "-m", "agents.cli", "check-config", str(bad)], capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "tiers.edge.max_batch" in proc.stderr and "-3" in proc.stderr
    missing = subprocess.run(
        [sys.executable, "-m", "agents.cli", "check-config", str(tmp_path / "nope.yaml")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert missing.returncode == 2 and "nope.yaml" in missing.stderr


def test_a_secret_put_in_the_yaml_is_not_repeated_in_the_error(tmp_path: Path) -> None:
    path = _write(tmp_path, GOOD.replace("  port: 1883", "  port: 1883\n  password: hunter2-SECRET", 1))
    with pytest.raises(UserError) as info:
        load_config(path)
    assert "password_env" in str(info.value) and "hunter2-SECRET" not in str(info.value)
    assert "'password': '***'" in str(info.value)
