"""Activation encode + decode per frame against the device stage time it accompanies, per split point and codec.

Baseline (same run): the device's own work before it sends an activation at split
point k — the input conversion, stages 0..k-1 and the exit heads on the way — for
``device-small``, batch 1, one torch thread, on real sample images. Measured: the
activation of the same frames encoded with each codec and decoded as the edge does
(checks included). Target: encode + decode ≤ 10% of the device stage time.
"""

from __future__ import annotations

import time

import torch

from agents.datasets import SAMPLE_TAR, load_image_set
from agents.models.checkpoint import load_checkpoint
from agents.models.inputs import to_input
from agents.transport.activations import decode_activation, encode_activation
from agents.transport.codecs import all_codecs
from agents.transport.envelope import Envelope

FRAMES = 300
ROUNDS = 3


def main() -> None:
    torch.set_num_threads(1)
    model, _ = load_checkpoint("device-small")
    images = load_image_set(SAMPLE_TAR).images[:FRAMES]
    print(f"split_codec (device-small, {FRAMES} frames, batch 1, 1 torch thread; best of {ROUNDS})")
    print(f"  {'split':>5} {'device stage':>12} {'codec':>18} {'enc+dec':>9} {'ratio':>6}")
    with torch.inference_mode():
        for split in range(1, model.num_stages):

            def device_stage(split: int = split) -> list[torch.Tensor]:
                out = []
                for image in images:
                    run = model.run(to_input(image[None]), end=split)  # exits on the way, as the device runs them
                    out.append(run.activation)
                return out

            stage_s = min(_timed(device_stage)[0] for _ in range(ROUNDS))
            acts = device_stage()
            shape = tuple(acts[0].shape)
            for codec in all_codecs():

                def roundtrip(
                    codec: str = codec, acts: list[torch.Tensor] = acts, shape: tuple[int, ...] = shape
                ) -> None:
                    for act in acts:
                        header, payload = encode_activation(act, codec)
                        decode_activation(Envelope({"id": "b", **header}, payload), shape)

                codec_s = min(_timed(roundtrip)[0] for _ in range(ROUNDS))
                ratio = codec_s / stage_s
                print(
                    f"  {split:>5} {1e6 * stage_s / FRAMES:>9.0f} µs {codec:>18} {1e6 * codec_s / FRAMES:>6.0f} µs "
                    f"{ratio:>6.2f}  {'PASS' if ratio <= 0.10 else 'FAIL'} (target <= 0.10)"
                )


def _timed(fn: object) -> tuple[float, object]:
    assert callable(fn)
    t0 = time.perf_counter()
    result = fn()
    return time.perf_counter() - t0, result


if __name__ == "__main__":
    main()
