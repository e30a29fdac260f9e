"""Latency prediction per layer type (after Edgent): a non-negative linear model of each type's shape features.

For each layer type, ``latency_ms ≈ c0 + Σ c_i · feature_i`` with every ``c ≥ 0``
(a layer never gets cheaper by growing), fitted to minimise the *relative*
squared error, so a 20 µs activation counts as much as a 20 ms convolution.
The non-negative least-squares problem is small (at most a handful of
coefficients), so it is solved exactly by trying every subset of free
coefficients. A model's latency is the sum of its layers' predictions.
"""

from __future__ import annotations

import itertools
import json
import math
import random
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from agents.errors import UserError
from agents.profiling.layers import TYPES, Layer, Recording
from agents.profiling.memory import MemoryCurve
from agents.profiling.node import NodeIdentity

FIT_SCHEMA = "cascade-latency-fit/1"

Matrix = npt.NDArray[np.float64]


def nnls(a: Matrix, b: Matrix) -> Matrix:
    """Solve min ‖a·x − b‖² subject to x ≥ 0, exactly, by least squares on every subset of columns.

    Fine for the few columns of a per-type latency model (2^columns small solves); columns are
    rescaled internally so features in MACs and in elements are equally well conditioned.
    """
    n = a.shape[1]
    scale = np.abs(a).max(axis=0)
    scale[scale == 0] = 1.0
    scaled = a / scale
    best: Matrix = np.zeros(n)
    best_loss = float(np.sum(b**2))
    for size in range(1, n + 1):
        for cols in itertools.combinations(range(n), size):
            sub = scaled[:, cols]
            coef, *_ = np.linalg.lstsq(sub, b, rcond=None)
            if np.any(coef < 0):
                continue
            loss = float(np.sum((sub @ coef - b) ** 2))
            if loss < best_loss - 1e-15:
                best_loss = loss
                best = np.zeros(n)
                best[list(cols)] = coef
    result: Matrix = best / scale
    return result


def fit_relative(rows: Matrix, latency: Matrix) -> Matrix:
    """Non-negative coefficients minimising Σ((rows·c − latency) / latency)²."""
    weights = 1.0 / np.maximum(latency, 1e-9)
    return nnls(rows * weights[:, None], np.ones_like(latency))


def mape(predicted: Sequence[float], measured: Sequence[float]) -> float:
    """Mean absolute percentage error, as a fraction (0.1 = 10 %)."""
    if not measured:
        return math.nan
    return float(np.mean([abs(p - m) / m for p, m in zip(predicted, measured, strict=True)]))


@dataclass(frozen=True)
class TypeModel:
    """The fitted latency model of one layer type (on all its shapes), with its cross-validated error.

    ``mape`` and ``max_ape`` are over every shape, each predicted by the model fitted on the
    ``folds`` − 1 folds that leave it out.
    """

    type: str
    features: tuple[str, ...]
    coef: tuple[float, ...]
    shapes: int = 0
    folds: int = 0
    mape: float = math.nan
    max_ape: float = math.nan

    def predict(self, layer: Layer) -> float:
        """Predicted milliseconds of ``layer`` (of this type)."""
        row = [1.0, *(float(layer.features.get(name, 0.0)) for name in self.features)]
        return float(sum(c * v for c, v in zip(self.coef, row, strict=True)))

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready dict."""
        return {
            "features": ["intercept", *self.features],
            "coef_ms": list(self.coef),
            "shapes": self.shapes,
            "folds": self.folds,
            "mape": None if math.isnan(self.mape) else self.mape,
            "max_ape": None if math.isnan(self.max_ape) else self.max_ape,
        }


@dataclass
class Prediction:
    """A predicted latency, per layer type, and the torch functions it could not price.

    ``memory_bound`` counts the layers priced by reading their weights rather than by their
    type's regression (see :meth:`Predictor.predict`).
    """

    total_ms: float
    by_type: dict[str, float] = field(default_factory=dict)
    unknown: dict[str, int] = field(default_factory=dict)
    memory_bound: int = 0


#: Layer types whose ``weight_elems`` are read from memory on every call (float32 weights).
WEIGHTED = ("conv", "conv.im2col", "linear")


def weight_bytes(layer: Layer) -> float:
    """Bytes of weights ``layer`` reads (float32), 0 for a type without weights worth streaming."""
    return 4.0 * layer.features.get("weight_elems", 0.0) if layer.type in WEIGHTED else 0.0


@dataclass(frozen=True)
class Predictor:
    """Per-type latency models fitted on one node, and the node's memory read speed (``memory``, when measured)."""

    types: dict[str, TypeModel]
    node: NodeIdentity | None = None
    memory: MemoryCurve | None = None

    def predict_layer(self, layer: Layer) -> float:
        """Milliseconds of one layer by its type's regression (0 for a type the fit did not cover).

        Alone, without the network around it: :meth:`predict` adds the floor of reading the weights.
        """
        model = self.types.get(layer.type)
        return model.predict(layer) if model is not None else 0.0

    def predict(self, rec: Recording) -> Prediction:
        """Milliseconds of a recorded forward pass: the sum over its layers, and the Python around them.

        The Python is the fitted ``module`` price (an ``nn.Identity`` call) times
        :attr:`Recording.module_units`: the dry run's count when the recording has one, else one per
        module call (the zoo models' Python measured 3–6 module prices a module call here).

        With a memory curve, a weighted layer takes at least its weights' bytes over the read
        speed at the size of all the recording's weights: past the cache, a network's weights
        stream from memory on every pass (vgg11 at 32×32, 491 MiB of weights: −39 % without this
        floor, +2 to +7 % with it in two fits here; the zoo models, 1–44 MiB, did not move).
        """
        out = Prediction(0.0, unknown=dict(rec.unknown))
        gbs = self.memory.bandwidth_gbs(sum(map(weight_bytes, rec.layers)) / 2**20) if self.memory else None
        for layer in rec.layers:
            if layer.type not in self.types:
                out.unknown[layer.type] = out.unknown.get(layer.type, 0) + 1
                continue
            ms = self.predict_layer(layer)
            if gbs is not None:
                streamed_ms = weight_bytes(layer) / (gbs * 1e6)
                if streamed_ms > ms:
                    ms = streamed_ms
                    out.memory_bound += 1
            out.by_type[layer.type] = out.by_type.get(layer.type, 0.0) + ms
            out.total_ms += ms
        if rec.module_calls:
            if "module" not in self.types:
                out.unknown["module"] = out.unknown.get("module", 0) + rec.module_calls
            else:
                ms = self.predict_layer(Layer("module")) * rec.module_units
                out.by_type["module"] = ms
                out.total_ms += ms
        return out


#: Folds of the cross-validation that scores each type: every shape is held out once, so a type's
#: error is over all its shapes rather than a quarter of them. With a quarter held out (15–45
#: shapes), the error moved by several points with the draw of shapes: resampling 480 timed im2col
#: convolutions here, 90 fitted and 30 held out put it over 15 % in 23 % of draws, around a median
#: of 13.5 %; 270 and 90, in 3 %.
FOLDS = 5


def fold_of(n: int, folds: int, seed: int) -> list[int]:
    """The fold (0 … ``folds`` − 1) each of ``n`` shapes is held out in: a shuffle by ``seed``, dealt round."""
    order = list(range(n))
    random.Random(seed).shuffle(order)
    fold = [0] * n
    for position, index in enumerate(order):
        fold[index] = position % folds
    return fold


def fit_type(
    kind: str, layers: Sequence[Layer], latency_ms: Sequence[float], folds: int = FOLDS, seed: int = 0
) -> TypeModel:
    """Fit one type on all its shapes, and score it by ``folds``-fold cross-validation (MAPE and worst error).

    Below two shapes a fold, there is no score (NaN).
    """
    features = TYPES[kind]
    rows = np.array([layer.vector() for layer in layers], dtype=np.float64)
    y = np.array(latency_ms, dtype=np.float64)
    coef = fit_relative(rows, y)
    errors: list[float] = []
    if folds >= 2 and len(layers) >= 2 * folds:
        fold = np.array(fold_of(len(layers), folds, seed))
        for k in range(folds):
            held, kept = fold == k, fold != k
            c = fit_relative(rows[kept], y[kept])
            errors += [float(e) for e in np.abs(rows[held] @ c - y[held]) / y[held]]
    return TypeModel(
        kind,
        features,
        tuple(float(c) for c in coef),
        shapes=len(layers),
        folds=folds if errors else 0,
        mape=float(np.mean(errors)) if errors else math.nan,
        max_ape=float(np.max(errors)) if errors else math.nan,
    )


def fit(
    samples: Sequence[tuple[Layer, float]],
    folds: int = FOLDS,
    seed: int = 0,
    node: NodeIdentity | None = None,
    memory: MemoryCurve | None = None,
) -> Predictor:
    """A predictor from ``(layer, measured ms)`` samples: one model per type present, and the node's ``memory``."""
    by_type: dict[str, list[tuple[Layer, float]]] = {}
    for layer, ms in samples:
        by_type.setdefault(layer.type, []).append((layer, ms))
    models = {}
    for kind in TYPES:
        if kind in by_type:
            pairs = by_type[kind]
            models[kind] = fit_type(kind, [p[0] for p in pairs], [p[1] for p in pairs], folds, seed)
    return Predictor(models, node, memory)


def save_fit(path: Path, predictor: Predictor, extra: dict[str, Any]) -> None:
    """Write the fitted coefficients, the node identity and ``extra`` (settings, validation, samples) to ``path``."""
    data = {
        "schema": FIT_SCHEMA,
        **({"node": predictor.node.to_json()} if predictor.node else {}),
        "types": {k: m.to_json() for k, m in predictor.types.items()},
        **({"memory": predictor.memory.to_json()} if predictor.memory else {}),
        **extra,
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2) + "\n")


def load_fit(path: Path) -> tuple[Predictor, dict[str, Any]]:
    """The predictor a fit file holds, and the file's whole content; UserError for anything wrong with it."""
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise UserError(f"fit file {path}: no such file (write one with cascade profile --fit --json FILE)") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise UserError(f"fit file {path}: unreadable ({exc})") from None
    if not isinstance(data, dict) or data.get("schema") != FIT_SCHEMA:
        found = data.get("schema") if isinstance(data, dict) else type(data).__name__
        raise UserError(f"fit file {path}: schema {found!r}, expected {FIT_SCHEMA!r}")
    try:
        types = {}
        for kind, entry in data["types"].items():
            if kind not in TYPES:
                continue  # a type a newer version fits; this one never records it
            names = tuple(entry["features"][1:])
            coef = tuple(float(c) for c in entry["coef_ms"])
            if names != TYPES[kind]:
                raise UserError(
                    f"fit file {path}: type {kind!r} was fitted on features {list(names)}, this version prices it"
                    f" with {list(TYPES[kind])}: fit again with cascade profile --fit --json FILE"
                )
            if len(coef) != len(names) + 1 or any(not math.isfinite(c) for c in coef):
                raise ValueError(f"type {kind!r}: {len(coef)} coefficients for {len(names)} features and an intercept")
            mape_value = entry.get("mape")
            max_value = entry.get("max_ape")
            types[kind] = TypeModel(
                kind,
                names,
                coef,
                int(entry.get("shapes", 0)),
                int(entry.get("folds", 0)),
                math.nan if mape_value is None else float(mape_value),
                math.nan if max_value is None else float(max_value),
            )
        node = NodeIdentity.from_json(data["node"]) if "node" in data else None
        memory = MemoryCurve.from_json(data["memory"]) if "memory" in data else None  # none before 2026-11-30
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise UserError(f"fit file {path}: malformed ({exc})") from None
    return Predictor(types, node, memory), data
