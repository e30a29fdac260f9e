"""``cascade train``: all exits trained jointly, seeded, resumable, logged per epoch.

Loss: a weighted sum of the exits' cross-entropies (BranchyNet). We chose this over
distillation from the final exit because it needs no extra teacher pass per batch,
which matters on two CPU cores, and because the early exits then learn the labels
rather than the final exit's mistakes; calibration afterwards fixes confidence.
"""

from __future__ import annotations

import json
import logging
import math
import platform
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from agents.datasets import ImageSet, load_image_set
from agents.errors import UserError
from agents.models.blocks import PatchWhitening
from agents.models.calibration import expected_calibration_error, fit_temperature
from agents.models.checkpoint import save_checkpoint
from agents.models.inference import exit_logits
from agents.models.inputs import CIFAR10_MEAN, CIFAR10_STD, to_input
from agents.models.staged import StagedModel
from agents.models.zoo import Recipe, build_model, zoo_entry
from agents.training.augment import pad_reflect, random_crop_flip

log = logging.getLogger(__name__)
STATE_FILE = "train_state.pt"
LOG_FILE = "train_log.jsonl"


@dataclass
class TrainConfig:
    """Everything that determines a training run (recorded in the checkpoint)."""

    model: str
    data: str
    out: str
    val: str | None = None
    epochs: int | None = None
    batch_size: int | None = None
    lr: float | None = None
    seed: int = 0
    threads: int | None = None
    limit: int | None = None
    command: str = ""


def default_val_path(data: str) -> str | None:
    """``val.tar`` beside a ``train.tar`` (the layout of the shared CIFAR-10 set), else None."""
    p = Path(data)
    for name in ("val.tar", "val"):
        candidate = p.with_name(name)
        if candidate != p and candidate.exists():
            return str(candidate)
    return None


def _lr_at(step: int, total: int, peak: float, warmup: float, start: float = 0.1) -> float:
    """Linear warm-up from ``start * peak`` to ``peak`` over the first ``warmup`` share of steps, then down to zero."""
    up = max(1, int(total * warmup))
    if step < up:
        return peak * (start + (1 - start) * step / up)
    return peak * max(0.0, (total - step) / max(1, total - up))


def _param_groups(model: nn.Module, recipe: Recipe, lr: float) -> list[dict[str, Any]]:
    """Optimizer groups: conv/linear weights decayed; batch-norm parameters at ``norm_lr_scale`` times the rate.

    Each group carries ``lr_scale`` so the schedule can set its rate. With ``decay_norms`` the
    batch-norm parameters decay by the same amount per step as the weights, however fast they learn.
    """
    norm_ids = {
        id(p) for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) for p in m.parameters()
    }
    trainable = [p for p in model.parameters() if p.requires_grad]
    norms = [p for p in trainable if id(p) in norm_ids]
    weights = [p for p in trainable if id(p) not in norm_ids and p.ndim > 1]
    others = [p for p in trainable if id(p) not in norm_ids and p.ndim <= 1]
    norm_decay = recipe.weight_decay / recipe.norm_lr_scale if recipe.decay_norms else 0.0
    groups = [
        (weights, recipe.weight_decay, 1.0),
        (norms, norm_decay, recipe.norm_lr_scale),
        (others, 0.0, 1.0),
    ]
    return [
        {"params": params, "weight_decay": decay, "lr_scale": scale, "lr": lr * scale}
        for params, decay, scale in groups
        if params
    ]


def _fit_whitening(model: nn.Module, images: torch.Tensor, limit: int = 5000) -> None:
    """Fit every patch-whitening layer of ``model`` on (up to ``limit`` of) the training images."""
    for module in model.modules():
        if isinstance(module, PatchWhitening):
            module.fit(images[:limit])


def _evaluate(model: StagedModel, data: ImageSet) -> list[float]:
    logits = exit_logits(model, data.images)
    labels = torch.as_tensor(data.labels)
    return [float((lg.argmax(1) == labels).float().mean()) for lg in logits]


def calibrate(model: StagedModel, val: ImageSet) -> list[dict[str, Any]]:
    """Fit a temperature per exit on ``val``; accuracy and ECE before and after, per exit."""
    labels = torch.as_tensor(val.labels)
    result = []
    for i, logits in enumerate(exit_logits(model, val.images)):
        t = fit_temperature(logits, labels)
        result.append(
            {
                "index": i,
                "stage": model.exit_after[i],
                "accuracy": float((logits.argmax(1) == labels).float().mean()),
                "temperature": t,
                "ece_before": expected_calibration_error(logits.softmax(1), labels),
                "ece": expected_calibration_error((logits / t).softmax(1), labels),
            }
        )
    return result


def _history_from_checkpoint(out: Path, model: str) -> list[dict[str, Any]]:
    """Invocations recorded in a finished checkpoint in ``out`` (state files written before history existed)."""
    meta_path = out / f"{model}.json"
    if not meta_path.exists():
        return []
    try:
        training = json.loads(meta_path.read_text()).get("training", {})
    except (OSError, ValueError, RecursionError, AttributeError):
        return []  # history is a record, not something training needs: an unreadable one starts afresh
    if not isinstance(training, dict):
        return []
    if isinstance(training.get("invocations"), list):
        return list(training["invocations"])
    return [{"command": training.get("command", ""), "from_epoch": 0, "to_epoch": training.get("epochs")}]


def check_config(cfg: TrainConfig) -> None:
    """A :class:`UserError` for any setting no run could use, before anything is loaded or written.

    ``None`` means "the recipe's value" (or "all images", "all cores"); anything else is taken
    as given, so 0 is refused rather than quietly read as "not set".
    """
    for flag, value in (
        ("--epochs", cfg.epochs),
        ("--batch-size", cfg.batch_size),
        ("--limit", cfg.limit),
        ("--threads", cfg.threads),
    ):
        if value is not None and value < 1:
            raise UserError(f"{flag} must be a positive integer, got {value}")
    if cfg.lr is not None and not (math.isfinite(cfg.lr) and cfg.lr > 0):
        raise UserError(f"--lr must be a finite number > 0, got {cfg.lr}")
    if cfg.seed < 0:  # numpy's generators take no negative seed
        raise UserError(f"--seed must be 0 or more, got {cfg.seed}")


def _load_state(state_path: Path, model_name: str) -> dict[str, Any]:
    """The training state saved in ``state_path``, checked to be one this version wrote for ``model_name``."""
    not_ours = f"{state_path}: not a training state this version of cascade wrote"
    try:
        # weights_only refuses anything but tensors and plain containers: never unpickle arbitrary bytes.
        loaded = torch.load(state_path, weights_only=True)
    # Bad bytes surface as any of a dozen exception types (UnpicklingError, RuntimeError from the zip
    # reader, EOFError, KeyError, ...); all of them mean the same thing here.
    # Only the exception's type is shown: torch's texts run to paragraphs, and its weights_only one
    # suggests loading with weights_only=False, which is exactly what must not happen to this file.
    except Exception as exc:
        raise UserError(f"{not_ours} ({type(exc).__name__}); delete it to start afresh or use another --out") from None
    if not isinstance(loaded, dict):
        raise UserError(f"{not_ours} (not a dict); delete it to start afresh or use another --out")
    state: dict[str, Any] = loaded
    shape_ok = (
        isinstance(state.get("model_name"), str)
        and isinstance(state.get("model"), dict)
        and isinstance(state.get("optimizer"), dict)
        and isinstance(state.get("epoch"), int)
        and not isinstance(state["epoch"], bool)
        and state["epoch"] >= 0
        and isinstance(state.get("wall"), (int, float))
        and isinstance(state.get("history", []), list)
    )
    if not shape_ok:
        raise UserError(f"{not_ours} (unexpected contents); delete it to start afresh or use another --out")
    if state["model_name"] != model_name:
        raise UserError(f"{state_path}: holds a run of {state['model_name']!r}, not {model_name!r}; use another --out")
    return state


def train(cfg: TrainConfig) -> Path:
    """Train ``cfg.model`` on ``cfg.data``; calibrate on ``cfg.val``; write a checkpoint into ``cfg.out``."""
    entry = zoo_entry(cfg.model)
    check_config(cfg)
    recipe = entry.recipe
    # "is None", not "or": an explicit value is never replaced by the recipe's (check_config refused 0).
    epochs = recipe.epochs if cfg.epochs is None else cfg.epochs
    batch_size = recipe.batch_size if cfg.batch_size is None else cfg.batch_size
    peak_lr = recipe.lr if cfg.lr is None else cfg.lr
    if cfg.threads is not None:
        torch.set_num_threads(cfg.threads)
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(cfg.seed)

    train_set = load_image_set(cfg.data)
    if cfg.limit is not None:
        pick = np.random.default_rng(cfg.seed).permutation(len(train_set))[: cfg.limit]
        train_set = train_set.subset(np.sort(pick))
    val_set = load_image_set(cfg.val) if cfg.val else None
    if val_set is not None and val_set.classes != train_set.classes:
        raise UserError(f"{cfg.val}: classes {val_set.classes} differ from the training set's {train_set.classes}")

    model = build_model(cfg.model, num_classes=len(train_set.classes)).to(memory_format=torch.channels_last)
    weights = list(recipe.exit_weights) or [1.0] * model.num_exits
    if len(weights) != model.num_exits:
        weights = [1.0] * model.num_exits
    optimizer = torch.optim.SGD(
        _param_groups(model, recipe, peak_lr), lr=peak_lr, momentum=recipe.momentum, nesterov=True
    )
    criterion = nn.CrossEntropyLoss(label_smoothing=recipe.label_smoothing)

    inputs = to_input(train_set.images).contiguous()
    _fit_whitening(model, inputs)  # overwritten by the saved weights when resuming
    padded = pad_reflect(inputs, recipe.translate) if recipe.translate else inputs
    del inputs
    # With alternate flips, this fixed half of the images is mirrored on even epochs, the rest on odd ones.
    flip_half = torch.rand(len(train_set), generator=torch.Generator().manual_seed(cfg.seed)) < 0.5
    labels = torch.as_tensor(train_set.labels)
    steps_per_epoch = max(1, len(train_set) // batch_size)
    total_steps = epochs * steps_per_epoch
    start_epoch, wall = 0, 0.0
    # Every invocation that shaped these weights, in order: a resumed run lists each command.
    history: list[dict[str, Any]] = []
    state_path = out / STATE_FILE
    if state_path.exists():
        state = _load_state(state_path, cfg.model)
        try:
            model.load_state_dict(state["model"])
            optimizer.load_state_dict(state["optimizer"])
            history = [json.loads(h) for h in state.get("history", [])]
        # A state of the same architecture can still not fit: other classes, another optimizer layout.
        except (RuntimeError, ValueError, KeyError, TypeError):
            raise UserError(
                f"{state_path}: its weights or optimizer state do not fit this run of {cfg.model!r} "
                f"with {len(train_set.classes)} classes; use another --out"
            ) from None
        if not all(isinstance(h, dict) for h in history):
            raise UserError(f"{state_path}: not a training state this version of cascade wrote (history)")
        history = history or _history_from_checkpoint(out, cfg.model)
        start_epoch, wall = state["epoch"], float(state["wall"])
        if start_epoch > epochs:
            raise UserError(
                f"{state_path}: this run already trained {start_epoch} epochs, more than --epochs {epochs}; "
                f"give --epochs {start_epoch} or more, or another --out"
            )
        log.info("resuming %s from epoch %d in %s", cfg.model, start_epoch, out)

    history.append({"command": cfg.command, "from_epoch": start_epoch, "to_epoch": epochs})
    for epoch in range(start_epoch, epochs):
        model.train()
        t0 = time.perf_counter()
        gen = torch.Generator().manual_seed(cfg.seed * 1000 + epoch)
        order = torch.randperm(len(train_set), generator=gen)
        sums = np.zeros(model.num_exits)
        correct = np.zeros(model.num_exits)
        seen = 0
        bar = tqdm(
            range(steps_per_epoch),
            desc=f"{cfg.model} epoch {epoch + 1}/{epochs}",
            unit="batch",
            leave=False,
            mininterval=1 if sys.stderr.isatty() else 30,
        )
        for i in bar:
            step = epoch * steps_per_epoch + i
            lr = _lr_at(step, total_steps, peak_lr, recipe.warmup, recipe.warmup_start)
            for group in optimizer.param_groups:
                group["lr"] = lr * group["lr_scale"]
            idx = order[i * batch_size : (i + 1) * batch_size]
            flip = flip_half[idx] ^ bool(epoch % 2) if recipe.alternate_flip else None
            x = random_crop_flip(padded[idx], 32, gen, flip)
            y = labels[idx]
            outputs = model(x)
            losses = [criterion(o, y) for o in outputs]
            loss = sum(w * lo for w, lo in zip(weights, losses, strict=True))
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            seen += len(y)
            for k, (o, lo) in enumerate(zip(outputs, losses, strict=True)):
                sums[k] += lo.item() * len(y)
                correct[k] += float((o.argmax(1) == y).sum())
            bar.set_postfix(loss=f"{sums[-1] / seen:.3f}", acc=f"{correct[-1] / seen:.3f}", refresh=False)
        wall += time.perf_counter() - t0
        record: dict[str, Any] = {
            "epoch": epoch + 1,
            "train_loss": [round(s / seen, 4) for s in sums],
            "train_accuracy": [round(c / seen, 4) for c in correct],
            "seconds": round(time.perf_counter() - t0, 1),
        }
        if val_set is not None:
            record["val_accuracy"] = [round(a, 4) for a in _evaluate(model, val_set)]
        with (out / LOG_FILE).open("a") as f:
            f.write(json.dumps(record) + "\n")
        tqdm.write(f"{cfg.model} epoch {epoch + 1}/{epochs}: " + json.dumps(record))
        torch.save(
            {
                "model_name": cfg.model,
                "model": model.state_dict(),
                "optimizer": optimizer.state_dict(),
                "epoch": epoch + 1,
                "wall": wall,
                "history": [json.dumps(h) for h in history],
            },
            state_path.with_suffix(".tmp"),
        )
        state_path.with_suffix(".tmp").replace(state_path)

    model.eval()
    meta: dict[str, Any] = {
        "classes": list(train_set.classes),
        "input_shape": list(model.input_shape),
        "normalisation": {"mean": list(CIFAR10_MEAN), "std": list(CIFAR10_STD)},
        "exit_after_stage": model.exit_after,
        "training": {
            **asdict(cfg),
            "epochs": epochs,
            "batch_size": batch_size,
            "lr": peak_lr,
            "exit_weights": weights,
            "recipe": asdict(recipe),
            "images": len(train_set),
            "train_seconds": round(wall, 1),
            "invocations": history,
            "torch": torch.__version__,
            "threads": torch.get_num_threads(),
            "cpu": platform.processor() or platform.machine(),
        },
    }
    if val_set is not None:
        meta["exits"] = calibrate(model, val_set)
        meta["calibration_set"] = {"path": cfg.val, "images": len(val_set)}
    return save_checkpoint(model, meta, out)
