"""Batch inference over a whole image set: every exit's logits at once."""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from agents.models.inputs import to_input
from agents.models.staged import StagedModel


@torch.inference_mode()
def exit_logits(model: StagedModel, images: np.ndarray, batch_size: int = 500) -> list[Tensor]:
    """Logits of every exit for ``(N, H, W, 3)`` uint8 images, one ``(N, classes)`` tensor per exit."""
    was_training = model.training
    model.eval()
    chunks: list[list[Tensor]] = [[] for _ in range(model.num_exits)]
    for start in range(0, len(images), batch_size):
        for i, logits in enumerate(model(to_input(images[start : start + batch_size]))):
            chunks[i].append(logits.float())
    model.train(was_training)
    return [torch.cat(c) for c in chunks]
