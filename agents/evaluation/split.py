"""``cascade eval --split``: for every split point and activation codec, bytes per frame and accuracy.

The device side runs stages ``0..k-1``; each frame's activation is encoded alone
(as the device sends it, so per-tensor int8 ranges are per frame), decoded, and the
remaining stages run to the final exit. Accuracy is the final exit's, compared with
the unsplit model on the same images; ``agreement`` is the share of images whose
prediction is unchanged by the codec.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from agents.datasets import ImageSet
from agents.errors import UserError
from agents.models.checkpoint import load_checkpoint
from agents.models.inputs import to_input
from agents.models.staged import StagedModel
from agents.models.stats import model_stats
from agents.transport.activations import decode_activation, encode_activation
from agents.transport.codecs import all_codecs, parse_codec
from agents.transport.envelope import Envelope
from agents.transport.images import encode_image


def split_macs(model: StagedModel, split: int) -> tuple[int, int]:
    """MACs per image on each side of ``split``: device (stages, exit heads before it), rest (stages, final head)."""
    stats = model_stats(model)
    device = sum(stats.stage_macs[:split]) + sum(
        m for i, m in enumerate(stats.exit_macs) if model.exit_after[i] < split
    )
    return device, sum(stats.stage_macs[split:]) + stats.exit_macs[-1]


@torch.inference_mode()
def split_report(
    model_ref: str, data: ImageSet, codecs: list[str] | None = None, batch_size: int = 250
) -> dict[str, Any]:
    """Everything ``cascade eval --split`` reports, as a JSON-ready dict."""
    codecs = codecs or all_codecs()
    for c in codecs:
        try:
            parse_codec(c)
        except ValueError as exc:
            raise UserError(str(exc)) from None
    model, meta = load_checkpoint(model_ref)
    if tuple(meta["classes"]) != data.classes:
        raise UserError(f"{data.source}: classes differ from checkpoint {model_ref!r}'s {meta['classes']}")
    labels = torch.as_tensor(data.labels)
    last = model.num_exits - 1
    unsplit = torch.cat(
        [model(to_input(data.images[s : s + batch_size]))[last].argmax(1) for s in range(0, len(data), batch_size)]
    )
    frame_bytes = float(np.mean([len(encode_image(im, "png")[1]) for im in data.images]))
    points: list[dict[str, Any]] = []
    splits = list(range(1, model.num_stages))
    progress = tqdm(total=len(splits) * len(codecs) * len(data), desc=f"split {model.name}", unit="img", leave=False)
    for k in splits:
        device_macs, remaining_macs = split_macs(model, k)
        shape = (1, *model_stats(model).split_shapes[k])
        preds: dict[str, list[torch.Tensor]] = {c: [] for c in codecs}
        nbytes = dict.fromkeys(codecs, 0)
        for s in range(0, len(data), batch_size):
            # The device side once per batch; every codec then encodes the same activations.
            acts = model.run(to_input(data.images[s : s + batch_size]), end=k, exits=False).activation
            for codec in codecs:
                decoded = []
                for i in range(acts.shape[0]):
                    header, payload = encode_activation(acts[i : i + 1], codec)
                    nbytes[codec] += len(payload)
                    decoded.append(decode_activation(Envelope({"id": "eval", **header}, payload), shape))
                rest = model.run(torch.cat(decoded), start=k, exits=False).activation
                preds[codec].append(model.heads[last](rest).argmax(1))
                progress.update(acts.shape[0])
        for codec in codecs:
            pred = torch.cat(preds[codec])
            points.append(
                {
                    "split": k,
                    "activation_shape": list(shape[1:]),
                    "device_macs": device_macs,
                    "remaining_macs": remaining_macs,
                    "codec": codec,
                    "bytes": round(nbytes[codec] / len(data), 1),
                    "accuracy": round(float((pred == labels).float().mean()), 6),
                    "agreement": round(float((pred == unsplit).float().mean()), 6),
                }
            )
    progress.close()
    return {
        "model": model.name,
        "checkpoint": meta["_path"],
        "images": len(data),
        "unsplit_accuracy": round(float((unsplit == labels).float().mean()), 6),
        "frame_png_bytes": round(frame_bytes, 1),
        "points": points,
    }


def format_split_table(result: dict[str, Any]) -> str:
    """A text table: one row per split point and codec."""
    lines = [
        f"{result['model']} on {result['images']} images: unsplit accuracy {100 * result['unsplit_accuracy']:.2f}%, "
        f"PNG frame {result['frame_png_bytes']:.0f} B",
        f"{'split':>5} {'shape':>12} {'device MMACs':>12} {'rest MMACs':>10} {'codec':>18} {'bytes':>9} "
        f"{'vs fp32':>7} {'accuracy':>9} {'agree':>7}",
    ]
    fp32 = {p["split"]: p["bytes"] for p in result["points"] if p["codec"] == "fp32"}
    for p in result["points"]:
        ratio = fp32.get(p["split"], math.nan) / p["bytes"]
        lines.append(
            f"{p['split']:>5} {'×'.join(map(str, p['activation_shape'])):>12} {p['device_macs'] / 1e6:>12.2f} "
            f"{p['remaining_macs'] / 1e6:>10.2f} {p['codec']:>18} {p['bytes']:>9.0f} {ratio:>6.2f}× "
            f"{100 * p['accuracy']:>8.2f}% {100 * p['agreement']:>6.2f}%"
        )
    return "\n".join(lines)
