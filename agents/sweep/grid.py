"""The grid file of ``cascade sweep``: lists of device settings whose cartesian product is the sweep's points.

```yaml
frames: 500            # frames per point (``--frames`` overrides)
grid:
  threshold: [0.5, 0.7, 0.9]
  split: [null, 2]     # null: the device sends the frame; k: the activation after stage k
  codec: [fp32]        # activation codec (only meaningful with a split)
  link: [null, {rate_mbit: 10, delay_ms: 8, jitter_ms: 3}]   # null: straight to the broker
  cpu_quota: [0.5]     # the device's CPU quota in cores; null: none
```

An axis left out takes the deployment's own value. Unknown keys and impossible values
(a negative rate or delay, a threshold outside [0, 1], a split outside the device
model's range, an unknown codec, a CPU quota below 0.01 or above the cores this
process may use) are errors naming the key path, raised before anything starts. Numbers
must be written as numbers: ``true`` or ``'0.5'`` where one is expected is an error, not 1.0 or 0.5.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

from pydantic import BeforeValidator, Field, ValidationError, ValidationInfo, field_validator

from agents.config import DeploymentConfig, DeviceConfig, Strict, format_errors, read_yaml_mapping
from agents.cpulimit import MIN_QUOTA, usable_cores
from agents.errors import UserError
from agents.transport.codecs import parse_codec


@dataclass(frozen=True)
class GridContext:
    """What a grid's values are checked against: the device model's stages and the cores a quota may use."""

    model: str
    stages: int
    cores: int


#: An exponent without a dot (1e-3): YAML 1.1, which PyYAML reads, takes it for text.
_EXPONENT = re.compile(r"([-+]?[0-9]+)([eE][-+]?[0-9]+)")


def _no_bool_or_text(value: Any) -> Any:
    """Refuse what a lax number field would convert: ``true`` is 1, ``'0.5'`` is 0.5, silently."""
    if isinstance(value, bool):
        raise ValueError("expected a number, not a boolean")
    if isinstance(value, str):
        m = _EXPONENT.fullmatch(value)
        hint = f": YAML reads an exponent without a dot as text, write {m[1]}.0{m[2]}" if m else ""
        raise ValueError(f"expected a number, not text{hint}")
    return value


# Strict, unlike the deployment's own fields, where a grid's `true` would run as 1.0 (or split 1) and `'0.5'`
# as 0.5: what a sweep measures must be what its file says. An int is still a number; 2.0 is not a count.
Number = Annotated[float, BeforeValidator(_no_bool_or_text), Field(strict=True)]
Count = Annotated[int, BeforeValidator(_no_bool_or_text), Field(strict=True)]


class LinkSpec(Strict):
    """One setting of the emulated device ↔ broker link (``cascade link``), both directions."""

    rate_mbit: Number | None = Field(None, gt=0, description="bandwidth in Mbit/s; none: not limited")
    delay_ms: Number = Field(0.0, ge=0, description="added one-way delay, ms")
    jitter_ms: Number = Field(0.0, ge=0, description="delay jitter, ms")
    loss: Number = Field(0.0, ge=0, lt=1, description="probability per segment of a loss (TCP recovers: a delay)")

    def cli_args(self) -> list[str]:
        """The ``cascade link`` options for this setting (those left at their neutral value omitted)."""
        # A fixed seed makes a link process's draws repeatable from its start; a link process kept across
        # points does not restart them per point (docs/experiment.md, "How far to trust the figures").
        args: list[str] = ["--seed", "0"]
        if self.delay_ms:
            args += ["--delay", f"{self.delay_ms:g}"]
        if self.jitter_ms:
            args += ["--jitter", f"{self.jitter_ms:g}"]
        if self.loss:
            args += ["--loss", f"{self.loss:g}"]
        if self.rate_mbit is not None:
            args += ["--rate", f"{self.rate_mbit:g}"]
        return args

    def label(self) -> str:
        """Short text for plots and logs, e.g. ``10 Mbit/s 8±3 ms``."""
        rate = "∞" if self.rate_mbit is None else f"{self.rate_mbit:g}"
        loss = f" loss {self.loss:g}" if self.loss else ""
        return f"{rate} Mbit/s {self.delay_ms:g}±{self.jitter_ms:g} ms{loss}"


Threshold = Annotated[Number, Field(ge=0.0, le=1.0)]
Quota = Annotated[Number, Field(ge=MIN_QUOTA)]
SplitPoint = Annotated[Count, Field(ge=1)]


def _no_duplicates(values: list[Any]) -> list[Any]:
    seen: list[Any] = []
    for v in values:
        if v in seen:
            raise ValueError(f"{v!r} appears twice")
        seen.append(v)
    return values


class GridAxes(Strict):
    """The lists whose product is the sweep; an axis left out is the deployment's own value."""

    threshold: list[Threshold] | None = Field(None, min_length=1, description="device exit threshold")
    split: list[SplitPoint | None] | None = Field(None, min_length=1, description="split point; null: the frame")
    codec: list[str] | None = Field(None, min_length=1, description="activation codec with a split")
    link: list[LinkSpec | None] | None = Field(None, min_length=1, description="emulated link; null: none")
    cpu_quota: list[Quota | None] | None = Field(None, min_length=1, description="device CPU quota, cores")

    @field_validator("threshold", "split", "codec", "link", "cpu_quota")
    @classmethod
    def _unique(cls, values: list[Any] | None) -> list[Any] | None:
        return None if values is None else _no_duplicates(values)

    @field_validator("codec")
    @classmethod
    def _known_codecs(cls, values: list[str] | None) -> list[str] | None:
        for v in values or []:
            parse_codec(v)
        return values

    @field_validator("split")
    @classmethod
    def _split_in_range(cls, values: list[int | None] | None, info: ValidationInfo) -> list[int | None] | None:
        ctx = info.context
        if isinstance(ctx, GridContext):
            for v in values or []:
                if v is not None and not 1 <= v < ctx.stages:
                    raise ValueError(
                        f"split {v} is outside {ctx.model}'s range: 1..{ctx.stages - 1} send an activation "
                        f"({ctx.stages} stages), null sends the frame"
                    )
        return values

    @field_validator("cpu_quota")
    @classmethod
    def _quota_fits(cls, values: list[float | None] | None, info: ValidationInfo) -> list[float | None] | None:
        ctx = info.context
        if isinstance(ctx, GridContext):
            for v in values or []:
                if v is not None and v > ctx.cores:
                    raise ValueError(f"CPU quota {v:g} is more than the {ctx.cores} core(s) the device may use")
        return values


class GridFile(Strict):
    """A grid file: frames per point and the axes."""

    frames: Count = Field(500, ge=1, description="frames per point")
    grid: GridAxes = GridAxes()


class Point(Strict):
    """One point of the sweep: the device settings it runs with (defaults already filled in from the deployment)."""

    threshold: float | list[float]
    split: int | None
    codec: str | None  # None without a split: the frame goes as it is
    link: LinkSpec | None
    cpu_quota: float | None

    def params(self) -> dict[str, Any]:
        """Flat parameters, for results, CSV columns and plot axes."""
        link = self.link
        return {
            "threshold": self.threshold,
            "split": self.split,
            "codec": self.codec,
            "rate_mbit": None if link is None else link.rate_mbit,
            "delay_ms": None if link is None else link.delay_ms,
            "jitter_ms": None if link is None else link.jitter_ms,
            "loss": None if link is None else link.loss,
            "cpu_quota": self.cpu_quota,
        }

    def key(self, frames: int, config_digest: str) -> str:
        """Identity of this point's measurement: its settings, the frames and the deployment it runs on."""
        blob = json.dumps(
            {"point": self.model_dump(mode="json"), "frames": frames, "config": config_digest}, sort_keys=True
        )
        return hashlib.sha256(blob.encode()).hexdigest()[:16]

    def label(self) -> str:
        """Short text, e.g. ``t=0.8 split=2/int8 link=10 Mbit/s 8±3 ms cpu=0.5``."""
        parts = [f"t={self.threshold}"]
        parts.append("frame" if self.split is None else f"split={self.split}/{self.codec}")
        if self.link is not None:
            parts.append(f"link={self.link.label()}")
        if self.cpu_quota is not None:
            parts.append(f"cpu={self.cpu_quota:g}")
        return " ".join(parts)


def grid_context(cfg: DeploymentConfig) -> GridContext:
    """The context a grid is validated in: the first device's model and the cores it may use."""
    if not cfg.devices:
        raise UserError("the deployment has no device to sweep: add one under 'devices'")
    from agents.models.checkpoint import read_metadata
    from agents.models.zoo import build_model

    device = cfg.devices[0]
    meta = read_metadata(device.model)
    stages = build_model(str(meta["architecture"]), num_classes=len(meta["classes"])).num_stages
    cores = len(device.cpu.cores) if device.cpu.cores else usable_cores()
    return GridContext(model=str(meta["architecture"]), stages=stages, cores=cores)


def load_grid(path: str | Path, ctx: GridContext) -> GridFile:
    """Read and validate a grid file; any problem becomes a :class:`UserError` naming the key path."""
    p = Path(path)
    raw = read_yaml_mapping(p, "the grid")
    try:
        return GridFile.model_validate(raw, context=ctx)
    except ValidationError as exc:
        raise UserError(format_errors(p, exc)) from None


def grid_points(grid: GridAxes, device: DeviceConfig) -> list[Point]:
    """The product of the axes, the link outermost and the threshold innermost; duplicates dropped.

    Without a split the codec does not matter: such points get codec None, so a grid
    with several codecs runs the frame path once.
    """
    thresholds: list[float | list[float]] = [*grid.threshold] if grid.threshold else [device.threshold]
    axes = (
        grid.link or [None],
        grid.split or [device.split],
        grid.codec or [device.codec],
        grid.cpu_quota or [device.cpu.quota],
        thresholds,
    )
    points: list[Point] = []
    for link, split, codec, quota, threshold in itertools.product(*axes):
        point = Point(
            threshold=threshold, split=split, codec=codec if split is not None else None, link=link, cpu_quota=quota
        )
        if point not in points:
            points.append(point)
    return points
