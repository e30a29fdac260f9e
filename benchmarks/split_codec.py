"""Activation encode + decode per frame against the device stage time it accompanies, per split point and codec.

Baseline (same run): the device's own work before it sends an activation at split
point k — the input conversion, stages 0..k-1 and the exit heads on the way — for
``device-small``, batch 1, one torch thread, on real sample images.

Two measurements per codec:

- **alone**: the activations of the same frames encoded with the codec and decoded
  as the edge does (checks included), one after another in a loop. Target:
  encode + decode ≤ 10% of the device stage time.
- **in the loop**: what the device loop pays more per frame when every stage is
  followed by the whole message path (encode, envelope to bytes and back, decode),
  against the stage alone, both timed the same way. Between two model calls each
  numpy or torch call finds its caches evicted, and the fresh activation is read
  back from memory; this is the cost a node sees, and it is larger.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import numpy as np
import torch

from agents.datasets import SAMPLE_TAR, load_image_set
from agents.models.checkpoint import load_checkpoint
from agents.models.inputs import to_input
from agents.models.staged import StagedModel
from agents.transport.activations import decode_activation, encode_activation
from agents.transport.codecs import all_codecs
from agents.transport.envelope import Envelope, decode, encode

FRAMES = 300
ROUNDS = 3
LOOP_ROUNDS = 5  # the in-loop figure is a difference of two totals: more rounds, steadier minimum


def main() -> None:
    torch.set_num_threads(1)
    model, _ = load_checkpoint("device-small")
    images = load_image_set(SAMPLE_TAR).images[:FRAMES]
    print(
        f"split_codec (device-small, {FRAMES} frames, batch 1, 1 torch thread; "
        f"best of {ROUNDS}, in the loop of {LOOP_ROUNDS})"
    )
    print(
        f"  {'split':>5} {'device stage':>12} {'codec':>18} {'alone':>8} {'ratio':>6} {'':16} {'in the loop':>11} ratio"
    )
    with torch.inference_mode():
        for split in range(1, model.num_stages):

            def device_stage(split: int = split) -> list[torch.Tensor]:
                out = []
                for image in images:
                    run = model.run(to_input(image[None]), end=split)  # exits on the way, as the device runs them
                    out.append(run.activation)
                return out

            stage_s = min(_timed(device_stage) for _ in range(ROUNDS))
            acts = device_stage()
            shape = tuple(acts[0].shape)
            for codec in all_codecs():

                def roundtrip(
                    codec: str = codec, acts: list[torch.Tensor] = acts, shape: tuple[int, ...] = shape
                ) -> None:
                    for act in acts:
                        header, payload = encode_activation(act, codec)
                        decode_activation(Envelope({"id": "b", **header}, payload), shape)

                codec_s = min(_timed(roundtrip) for _ in range(ROUNDS))
                ratio = codec_s / stage_s
                loop_stage_s, loop_codec_s = _in_loop(model, images, split, codec)
                extra = loop_codec_s - loop_stage_s
                print(
                    f"  {split:>5} {1e6 * stage_s / FRAMES:>9.0f} µs {codec:>18} {1e6 * codec_s / FRAMES:>5.0f} µs "
                    f"{ratio:>6.2f}  {'PASS' if ratio <= 0.10 else 'FAIL'} (<= 0.10) "
                    f"{1e6 * extra / FRAMES:>8.0f} µs {extra / loop_stage_s:>6.2f}"
                )


def _in_loop(model: StagedModel, images: np.ndarray, split: int, codec: str) -> tuple[float, float]:
    """Seconds for the frames' device stage alone, and followed by the codec's whole message path (best rounds)."""
    shape: tuple[int, ...] = ()

    def frames(with_codec: bool) -> None:
        for image in images:
            act = model.run(to_input(image[None]), end=split).activation
            if with_codec:
                header, payload = encode_activation(act, codec)
                message = encode(Envelope({"id": "b", **header}, payload))
                decode_activation(decode(message), shape)

    shape = tuple(model.run(to_input(images[0][None]), end=split).activation.shape)
    alone, with_codec = [], []
    for _ in range(LOOP_ROUNDS):  # interleaved, so a slow spell of the host hits both
        alone.append(_timed(lambda: frames(False)))
        with_codec.append(_timed(lambda: frames(True)))
    return min(alone), min(with_codec)


def _timed(fn: Callable[[], object]) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


if __name__ == "__main__":
    main()
