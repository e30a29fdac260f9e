"""glibc malloc settings: a batch whose activations cross the mmap threshold stops page-faulting every call."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from agents import cli
from agents.allocator import ENV, is_glibc, keep_freed_memory

REPO = Path(__file__).resolve().parent.parent

# device-small at batch 32: its activations (up to 4 MiB a tensor) cross glibc's default thresholds.
_FAULTS_PER_CALL = """
import resource, statistics, sys, torch
from agents.allocator import keep_freed_memory
print("tuned", keep_freed_memory())
from agents.models.checkpoint import load_checkpoint, resolve_checkpoint
model, _ = load_checkpoint(resolve_checkpoint("device-small"))
x = model.example_input(32).contiguous(memory_format=torch.channels_last)
faults = []
with torch.inference_mode():
    for _ in range(5):
        model(x)
    for _ in range(15):
        before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        model(x)
        faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
print("faults", statistics.median(faults))
"""
# The median call: now and then the heap grows once or twice in the timed calls (60–500 faults in all,
# seen in 5 of 14 tuned runs), which is not the every-call faulting this is about.

glibc_only = pytest.mark.skipif(not is_glibc(), reason="mallopt thresholds are glibc's")


def _faults(malloc: str | None) -> tuple[bool, float]:
    env = {k: v for k, v in os.environ.items() if k != ENV} | {"PYTHONPATH": str(REPO)}
    if malloc is not None:
        env[ENV] = malloc
    out = subprocess.run(
        [sys.executable, "-c", _FAULTS_PER_CALL], env=env, capture_output=True, text=True, timeout=120, check=True
    ).stdout
    values = dict(line.split(" ", 1) for line in out.splitlines() if line.startswith(("tuned", "faults")))
    return values["tuned"] == "True", float(values["faults"])


@glibc_only
def test_batched_inference_stops_page_faulting_on_every_call() -> None:
    tuned, faults = _faults(None)
    # glibc's own thresholds: freed activations go back to the kernel and fault in again, about 2,400 a
    # call here. Its threshold moves with what was freed, so now and then a process settles before the
    # timed calls (1 of 8 here): up to three processes, to see the faulting the setting removes.
    for _ in range(3):
        default_tuned, default_faults = _faults("default")
        if default_faults > 500:
            break
    assert tuned and not default_tuned
    assert default_faults > 500, default_faults
    assert faults < 20, faults


@glibc_only
def test_opt_out_leaves_glibc_alone(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(ENV, "default")
    assert keep_freed_memory() is False
    monkeypatch.setenv(ENV, "")
    assert keep_freed_memory() is True


def test_every_cascade_command_sets_it_first(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[str] = []

    def record() -> bool:
        calls.append("malloc")
        return True

    monkeypatch.setattr(cli, "keep_freed_memory", record)
    assert cli.main(["check-config", "/nonexistent/cascade.yaml"]) == 2
    assert calls == ["malloc"]
