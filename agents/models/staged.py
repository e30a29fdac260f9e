"""A model as an ordered list of stages with exit heads after chosen stages.

Every stage boundary is a split point: split point ``k`` means the first ``k`` stages
run on one side and the rest on the other (``0`` sends the input itself, ``len(stages)``
keeps everything local). Exits are numbered in the order they are reached; the final
exit, after the last stage, is always the last one.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn


@dataclass
class StageRun:
    """What running a range of stages produced: the activation at the end and the exits on the way."""

    activation: Tensor
    logits: dict[int, Tensor] = field(default_factory=dict)


class StagedModel(nn.Module):
    """Stages run in order; ``exit_after[i]`` is the stage whose output exit ``i`` reads."""

    def __init__(
        self,
        name: str,
        stages: list[nn.Module],
        heads: dict[int, nn.Module],
        num_classes: int = 10,
        input_shape: tuple[int, int, int] = (3, 32, 32),
    ) -> None:
        super().__init__()
        if not stages:
            raise ValueError("a staged model needs at least one stage")
        last = len(stages) - 1
        if last not in heads:
            raise ValueError("the last stage must carry the final exit head")
        if any(not 0 <= k <= last for k in heads):
            raise ValueError(f"exit heads must sit after stages 0..{last}, got {sorted(heads)}")
        self.name = name
        self.num_classes = num_classes
        self.input_shape = input_shape
        self.stages = nn.ModuleList(stages)
        self.exit_after: list[int] = sorted(heads)
        self.heads = nn.ModuleList([heads[k] for k in self.exit_after])
        self._exit_at_stage = {stage: i for i, stage in enumerate(self.exit_after)}

    @property
    def num_stages(self) -> int:
        """How many stages the model has."""
        return len(self.stages)

    @property
    def num_exits(self) -> int:
        """How many exits, the final one included."""
        return len(self.heads)

    @property
    def split_points(self) -> list[int]:
        """Every stage boundary: 0 (nothing local) to ``num_stages`` (everything local)."""
        return list(range(self.num_stages + 1))

    def exit_at_stage(self, stage: int) -> int | None:
        """The exit index whose head reads stage ``stage``'s output, if any."""
        return self._exit_at_stage.get(stage)

    def run(self, x: Tensor, start: int = 0, end: int | None = None, exits: bool = True) -> StageRun:
        """Run stages ``start`` to ``end`` (exclusive) on ``x``; with ``exits``, every head on the way too."""
        stop = self.num_stages if end is None else end
        if not 0 <= start <= stop <= self.num_stages:
            raise ValueError(f"stage range {start}..{stop} outside 0..{self.num_stages}")
        out = StageRun(x)
        for k in range(start, stop):
            x = self.stages[k](x)
            exit_index = self._exit_at_stage.get(k)
            if exits and exit_index is not None:
                out.logits[exit_index] = self.heads[exit_index](x)
        out.activation = x
        return out

    def iter_exits(
        self, x: Tensor, start: int = 0, end: int | None = None
    ) -> Iterator[tuple[int, int, Tensor, Tensor]]:
        """Yield ``(exit index, stage, logits, activation)`` at each exit, lazily, so callers can stop early."""
        stop = self.num_stages if end is None else end
        for k in range(start, stop):
            x = self.stages[k](x)
            exit_index = self._exit_at_stage.get(k)
            if exit_index is not None:
                yield exit_index, k, self.heads[exit_index](x), x

    def forward(self, x: Tensor) -> list[Tensor]:
        """Logits of every exit, in exit order (the final exit last)."""
        logits = self.run(x).logits
        return [logits[i] for i in range(self.num_exits)]

    def example_input(self, batch: int = 1) -> Tensor:
        """A zero tensor of the model's input shape (for shape and cost probes, never for accuracy)."""
        return torch.zeros((batch, *self.input_shape))
