"""Frames on the wire: PNG (lossless), JPEG or raw uint8, decoded with size checks before any pixel is allocated."""

from __future__ import annotations

import io
from typing import Any

import numpy as np
from PIL import Image

from agents.transport.envelope import Envelope, MessageError

MAX_PIXELS = 4096 * 4096


def encode_image(image: np.ndarray, encoding: str, jpeg_quality: int = 90) -> tuple[dict[str, Any], bytes]:
    """Header fields and payload bytes for an ``(H, W, 3)`` uint8 frame."""
    if encoding == "raw":
        return {"encoding": "raw", "dtype": "uint8", "shape": list(image.shape)}, np.ascontiguousarray(image).tobytes()
    buf = io.BytesIO()
    pil = Image.fromarray(image)
    if encoding == "jpeg":
        pil.save(buf, format="JPEG", quality=jpeg_quality)
    elif encoding == "png":
        pil.save(buf, format="PNG", compress_level=1)  # level 1: CIFAR frames gain little from more, latency does
    else:
        raise ValueError(f"unknown image encoding {encoding!r}")
    return {"encoding": encoding}, buf.getvalue()


def decode_frame(envelope: Envelope, expected_hw: tuple[int, int] | None = None) -> np.ndarray:
    """The frame in an envelope as ``(H, W, 3)`` uint8; :class:`MessageError` if it is not a valid image."""
    header = envelope.header
    encoding = header.get("encoding")
    image: np.ndarray[Any, np.dtype[np.uint8]]
    if encoding == "raw":
        shape = header.get("shape")
        if (
            header.get("dtype") != "uint8"
            or not isinstance(shape, list)
            or len(shape) != 3
            or shape[2] != 3
            or not all(isinstance(d, int) and 0 < d <= 4096 for d in shape)
        ):
            raise MessageError("shape", f"raw frame must be uint8 [H, W, 3], got {header.get('dtype')} {shape}")
        if shape[0] * shape[1] * 3 != len(envelope.payload):
            raise MessageError(
                "shape", f"raw frame {shape} needs {shape[0] * shape[1] * 3} bytes, got {len(envelope.payload)}"
            )
        image = np.frombuffer(envelope.payload, dtype=np.uint8).reshape(shape)
    elif encoding in ("png", "jpeg"):
        try:
            with Image.open(io.BytesIO(envelope.payload)) as pil:
                if pil.format is None or pil.format.lower() not in (encoding, "jpeg" if encoding == "jpeg" else "png"):
                    raise MessageError("image", f"payload is {pil.format}, header says {encoding}")
                w, h = pil.size
                if w * h > MAX_PIXELS:
                    raise MessageError("oversized", f"image of {w}×{h} pixels exceeds {MAX_PIXELS}")
                image = np.asarray(pil.convert("RGB"), dtype=np.uint8)
        except MessageError:
            raise
        except Exception as exc:  # Pillow's decoders raise many kinds on corrupt data (SyntaxError for a PNG)
            raise MessageError("image", f"cannot decode {encoding} payload ({type(exc).__name__}: {exc})") from None
    else:
        raise MessageError("encoding", f"expected an image (png, jpeg, raw), got {encoding!r}")
    if expected_hw is not None and (image.shape[0], image.shape[1]) != expected_hw:
        raise MessageError(
            "shape", f"frame is {image.shape[0]}×{image.shape[1]}, the model takes {expected_hw[0]}×{expected_hw[1]}"
        )
    return image
