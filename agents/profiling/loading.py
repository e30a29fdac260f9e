"""Which model a ``--model`` name means: a shipped (or given) checkpoint first, else an untrained zoo model."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from agents.errors import CheckpointError, UserError
from agents.models.checkpoint import SHIPPED_DIR, load_checkpoint, resolve_checkpoint
from agents.models.staged import StagedModel
from agents.models.zoo import ZOO, build_model


@dataclass
class ModelToProfile:
    """A model in eval mode, and where its weights came from."""

    model: StagedModel
    name: str
    trained: bool
    checkpoint: str | None

    @property
    def source(self) -> str:
        """``checkpoint`` or ``zoo (untrained)``, for reports."""
        return "checkpoint" if self.trained else "zoo (untrained)"


def load_model(name: str) -> ModelToProfile:
    """The model ``name`` means: a shipped checkpoint, a checkpoint directory or .json, else a zoo architecture.

    A zoo model has untrained weights, which cost the same time as trained ones: fine for latency,
    meaningless for accuracy. Anything else is a :class:`UserError` listing what would have worked.
    """
    try:
        path = resolve_checkpoint(name)
    except CheckpointError:
        path = None
    if path is not None:
        model, meta = load_checkpoint(path)
        return ModelToProfile(model.eval(), model.name, True, str(meta.get("_path", path)))
    if name in ZOO:
        # Channels-last weights, as load_checkpoint gives the agents: a profile measures what they would run
        # (default-layout weights are copied on every call: resnet18 13.0 ms against 8.4 ms at batch 1 here).
        model = build_model(name).eval().to(memory_format=torch.channels_last)
        return ModelToProfile(model, name, False, None)
    shipped = sorted(d.name for d in SHIPPED_DIR.iterdir() if d.is_dir()) if SHIPPED_DIR.is_dir() else []
    hint = " (no such file)" if Path(name).suffix == ".json" else ""
    raise UserError(
        f"unknown model {name!r}{hint}: expected a shipped checkpoint ({', '.join(shipped) or 'none shipped'}), "
        f"a zoo architecture ({', '.join(ZOO)}), a checkpoint directory or a checkpoint .json"
    )
