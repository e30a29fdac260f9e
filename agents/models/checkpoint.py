"""Checkpoints: ``<name>.safetensors`` weights plus ``<name>.json`` metadata, never pickle.

Shipped checkpoints live in ``agents/models/checkpoints/`` and load by name, offline.
"""

from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load as load_bytes
from safetensors.torch import save_file

from agents.errors import CheckpointError
from agents.models.staged import StagedModel
from agents.models.zoo import ZOO, build_model

SHIPPED_DIR = Path(__file__).resolve().parent / "checkpoints"
FORMAT_VERSION = 1


def file_digest(path: Path) -> str:
    """SHA-256 of a file, hex."""
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def save_checkpoint(model: StagedModel, meta: dict[str, Any], directory: Path) -> Path:
    """Write ``model``'s weights and ``meta`` (plus architecture, digest) into ``directory``; return the JSON path."""
    directory.mkdir(parents=True, exist_ok=True)
    weights = directory / f"{model.name}.safetensors"
    state = {k: v.detach().contiguous().clone() for k, v in model.state_dict().items()}
    save_file(state, str(weights), metadata={"architecture": model.name})
    full = {
        "format": FORMAT_VERSION,
        "architecture": model.name,
        "weights": weights.name,
        "sha256": file_digest(weights),
        "parameters": sum(p.numel() for p in model.parameters()),
        **meta,
    }
    meta_path = directory / f"{model.name}.json"
    meta_path.write_text(json.dumps(full, indent=2) + "\n")
    return meta_path


def resolve_checkpoint(ref: str | Path) -> Path:
    """The metadata JSON for ``ref``: a shipped model name, a checkpoint directory, or a JSON path."""
    p = Path(ref)
    if p.suffix == ".json" and p.is_file():
        return p
    if p.is_dir():
        found = sorted(p.glob("*.json"))
        found = [f for f in found if (f.with_suffix(".safetensors")).exists()]
        if len(found) == 1:
            return found[0]
        raise CheckpointError(f"{p}: expected one <name>.json beside <name>.safetensors, found {len(found)}")
    shipped = SHIPPED_DIR / str(ref) / f"{ref}.json"
    if shipped.is_file():
        return shipped
    names = sorted(d.name for d in SHIPPED_DIR.iterdir() if d.is_dir()) if SHIPPED_DIR.is_dir() else []
    raise CheckpointError(
        f"no checkpoint {str(ref)!r}: expected a shipped model ({', '.join(names) or 'none shipped'}), "
        "a checkpoint directory or a .json metadata file"
    )


#: Largest side a checkpoint may declare in ``input_shape``: loading runs one forward pass at that size
#: to prove the architecture accepts it, and this bounds that pass's memory (the zoo trains at 32).
MAX_INPUT_SIDE = 1024


def _show(value: Any) -> str:
    """``repr`` of a metadata value, cut short: an error message stays one readable line."""
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _is_int(value: Any) -> bool:
    # JSON true/false arrive as bool, which Python counts as int: never a count or a size.
    return isinstance(value, int) and not isinstance(value, bool)


def _is_positive_number(value: Any) -> bool:
    # json.loads accepts NaN and Infinity; neither is a temperature.
    return (_is_int(value) or isinstance(value, float)) and math.isfinite(value) and value > 0


def _check_fields(meta: dict[str, Any], path: Path) -> None:
    """Every field loading reads, by type; a :class:`CheckpointError` naming the file and field otherwise.

    What needs the built model (exit count, channels) is checked in :func:`load_checkpoint`.
    """

    def bad(field: str, expected: str) -> CheckpointError:
        return CheckpointError(f"{path}: {field} must be {expected}, got {_show(meta[field])}")

    if "format" in meta and meta["format"] != FORMAT_VERSION:
        raise bad("format", f"{FORMAT_VERSION} (the metadata format this version reads)")
    arch = meta["architecture"]
    if not isinstance(arch, str) or arch not in ZOO:
        raise bad("architecture", f"a zoo architecture ({', '.join(ZOO)})")
    weights = meta["weights"]
    # The weights sit beside the JSON (save_checkpoint writes a bare name): a path could reach any file.
    plain_name = isinstance(weights, str) and Path(weights).name == weights and "\\" not in weights
    if not plain_name or weights in ("", ".", ".."):
        raise bad("weights", "the name of a file beside the metadata")
    classes = meta["classes"]
    if not isinstance(classes, list) or not classes or not all(isinstance(c, str) for c in classes):
        raise bad("classes", "a non-empty list of class names")
    if len(set(classes)) != len(classes):
        raise bad("classes", "a list of distinct class names")
    if "sha256" in meta:
        digest = meta["sha256"]
        if not isinstance(digest, str) or len(digest) != 64 or set(digest) - set("0123456789abcdef"):
            raise bad("sha256", "64 lower-case hex digits")
    if "input_shape" in meta:
        shape = meta["input_shape"]
        if not isinstance(shape, list) or len(shape) != 3 or not all(_is_int(d) and d > 0 for d in shape):
            raise bad("input_shape", "three positive integers [channels, height, width]")
        if max(shape[1:]) > MAX_INPUT_SIDE:
            raise bad("input_shape", f"at most {MAX_INPUT_SIDE} pixels a side")
    if "exit_after_stage" in meta:
        stages = meta["exit_after_stage"]
        if not isinstance(stages, list) or not all(_is_int(k) for k in stages):
            raise bad("exit_after_stage", "a list of stage numbers")
    if "exits" in meta:
        exits = meta["exits"]
        if not isinstance(exits, list) or not all(isinstance(e, dict) for e in exits):
            raise bad("exits", "a list of objects, one per exit")
        for i, e in enumerate(exits):
            if "temperature" in e and not _is_positive_number(e["temperature"]):
                raise CheckpointError(
                    f"{path}: exits[{i}].temperature must be a finite number > 0, got {_show(e['temperature'])}"
                )
            if "stage" in e and not _is_int(e["stage"]):
                raise CheckpointError(f"{path}: exits[{i}].stage must be a stage number, got {_show(e['stage'])}")


def read_metadata(ref: str | Path) -> dict[str, Any]:
    """The metadata dict of a checkpoint, every field loading reads validated (see :func:`_check_fields`)."""
    path = resolve_checkpoint(ref)
    try:
        meta = json.loads(path.read_text())
    # ValueError covers bad JSON and bytes that are not UTF-8; RecursionError, absurdly nested arrays.
    except (OSError, ValueError, RecursionError) as exc:
        raise CheckpointError(f"{path}: unreadable metadata ({exc})") from exc
    if not isinstance(meta, dict):
        raise CheckpointError(f"{path}: metadata must be a JSON object")
    for key in ("architecture", "weights", "classes"):
        if key not in meta:
            raise CheckpointError(f"{path}: metadata lacks {key!r}")
    _check_fields(meta, path)
    meta["_path"] = str(path)
    return meta


def _check_against_model(meta: dict[str, Any], path: Path, model: StagedModel) -> None:
    """The fields that must agree with the architecture built: exit count and stages, input channels and size."""
    arch = meta["architecture"]
    if "exit_after_stage" in meta and meta["exit_after_stage"] != model.exit_after:
        raise CheckpointError(
            f"{path}: exit_after_stage {_show(meta['exit_after_stage'])} differs from {arch!r}'s exits "
            f"after stages {model.exit_after}"
        )
    exits = meta.get("exits")
    if exits is not None:
        if len(exits) != model.num_exits:
            raise CheckpointError(f"{path}: exits lists {len(exits)} exit(s), but {arch!r} has {model.num_exits}")
        for i, e in enumerate(exits):
            if "stage" in e and e["stage"] != model.exit_after[i]:
                raise CheckpointError(
                    f"{path}: exits[{i}].stage is {e['stage']}, but {arch!r}'s exit {i} is after stage "
                    f"{model.exit_after[i]}"
                )
    if "input_shape" in meta:
        shape = tuple(meta["input_shape"])
        if shape[0] != model.input_shape[0]:
            raise CheckpointError(f"{path}: input_shape {list(shape)}: {arch!r} takes {model.input_shape[0]} channels")
        if shape != model.input_shape:
            # Too small a size pools down to nothing somewhere inside: find out now, not on the first image.
            try:
                with torch.inference_mode():
                    model(torch.zeros((1, *shape)))
            except RuntimeError:
                raise CheckpointError(f"{path}: input_shape {list(shape)} is too small for {arch!r}") from None


def load_checkpoint(ref: str | Path) -> tuple[StagedModel, dict[str, Any]]:
    """Build the architecture the metadata names and load its weights; eval mode.

    Refuses metadata that does not fit that architecture, a weights file whose SHA-256
    differs from the one recorded, and weights whose tensor names or shapes differ from
    the architecture, naming what differs, rather than loading a model that would
    silently misbehave.
    """
    meta = read_metadata(ref)
    path = Path(meta["_path"])
    model = build_model(meta["architecture"], num_classes=len(meta["classes"]))
    model.eval()
    _check_against_model(meta, path, model)
    weights = path.parent / meta["weights"]
    try:
        # Read once: the bytes hashed are the bytes loaded.
        raw = weights.read_bytes()
    except OSError as exc:
        raise CheckpointError(f"{weights}: unreadable safetensors file ({exc})") from exc
    digest = hashlib.sha256(raw).hexdigest()
    meta["_weights_sha256"] = digest  # of the bytes loaded, for the agents' run records
    if "sha256" in meta and digest != meta["sha256"]:
        raise CheckpointError(
            f"{weights}: SHA-256 {digest[:16]}... differs from the sha256 recorded in {path.name} "
            f"({meta['sha256'][:16]}...): the weights were changed or corrupted"
        )
    try:
        state = load_bytes(raw)
    except (SafetensorError, ValueError) as exc:
        raise CheckpointError(f"{weights}: unreadable safetensors file ({exc})") from exc
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    found = {k: tuple(v.shape) for k, v in state.items()}
    if expected != found:
        missing = sorted(set(expected) - set(found))[:3]
        extra = sorted(set(found) - set(expected))[:3]
        shapes = [k for k in expected if k in found and expected[k] != found[k]][:3]
        raise CheckpointError(
            f"{weights}: weights do not match architecture {meta['architecture']!r} named in {path.name} "
            f"(missing {missing}, unexpected {extra}, wrong shape {shapes})"
        )
    model.load_state_dict(state)
    # Inputs are channels-last (agents.models.inputs.to_input); with default-layout weights PyTorch
    # converts every 3x3 weight on every batch-1 call. Once here instead: device-small 1.17 -> 1.02 ms,
    # edge-medium 1.75 -> 1.43 ms at batch 1 on one thread (batch 32 unchanged), measured on this host.
    model.to(memory_format=torch.channels_last)
    if "input_shape" in meta:  # the zoo's nets are fully convolutional: a checkpoint may declare another size
        c, h, w = meta["input_shape"]
        model.input_shape = (c, h, w)
    return model, meta


def temperatures(meta: dict[str, Any], num_exits: int) -> torch.Tensor:
    """Per-exit calibration temperatures from metadata (1.0 where a checkpoint is uncalibrated).

    ``meta`` from :func:`load_checkpoint` has passed these checks already; they stay here because
    every caller divides logits by the result, and a zero, a NaN or a missing exit must never get there.
    """
    where = meta.get("_path", "checkpoint metadata")
    exits = meta.get("exits")
    if exits is None:
        return torch.ones(num_exits)
    if not isinstance(exits, list) or len(exits) != num_exits or not all(isinstance(e, dict) for e in exits):
        raise CheckpointError(f"{where}: exits must be a list of {num_exits} objects, one per exit, got {_show(exits)}")
    temps = [e.get("temperature", 1.0) for e in exits]
    for i, t in enumerate(temps):
        if not _is_positive_number(t):
            raise CheckpointError(f"{where}: exits[{i}].temperature must be a finite number > 0, got {_show(t)}")
    return torch.tensor([float(t) for t in temps])
