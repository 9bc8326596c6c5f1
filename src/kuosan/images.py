"""Image helpers: grids and PNG files (Pillow)."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch

from kuosan import pnginfo

__all__ = ["to_uint8_nhwc", "make_grid", "encode_png", "save_png", "save_images"]


def to_uint8_nhwc(x: torch.Tensor) -> np.ndarray:
    """Float images in [-1, 1], [N, C, H, W] -> uint8 numpy [N, H, W, C]."""
    x = ((x.detach().float().cpu() + 1) * 127.5).round().clamp(0, 255).to(torch.uint8)
    return x.permute(0, 2, 3, 1).numpy()


def make_grid(images: np.ndarray, nrow: int | None = None, pad: int = 2, value: int = 255) -> np.ndarray:
    """uint8 [N, H, W, C] -> one uint8 [rows·(H+pad)+pad, cols·(W+pad)+pad, C] image, row-major."""
    n, h, w, c = images.shape
    cols = nrow or math.ceil(math.sqrt(n))
    rows = math.ceil(n / cols)
    grid = np.full((rows * (h + pad) + pad, cols * (w + pad) + pad, c), value, dtype=np.uint8)
    for i in range(n):
        r, col = divmod(i, cols)
        y, x = pad + r * (h + pad), pad + col * (w + pad)
        grid[y:y + h, x:x + w] = images[i]
    return grid


def encode_png(image: np.ndarray, scale: int = 1, params: dict | None = None) -> bytes:
    """A uint8 [H, W, C] (C = 1 or 3) image as PNG bytes, optionally enlarged ``scale`` times; ``params`` (how
    it was made) go into its text chunks (:func:`kuosan.pnginfo.encode_png`)."""
    import io

    if params is not None:
        return pnginfo.encode_png(image, params, scale=scale)

    from PIL import Image

    arr = image[..., 0] if image.shape[-1] == 1 else image
    img = Image.fromarray(arr)
    if scale > 1:
        img = img.resize((img.width * scale, img.height * scale), Image.NEAREST)
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def save_png(image: np.ndarray, path: str | Path, scale: int = 1) -> Path:
    """Save a uint8 [H, W, C] (C = 1 or 3) image as PNG, optionally enlarged ``scale`` times.

    Atomic: written to a temporary file beside ``path`` and renamed over it, so an interrupt or a crash at
    any moment leaves the old file or the new one, never part of a PNG. A failed write (a full disk, a
    read-only file system) removes the temporary file and raises a one-line KuosanError."""
    from kuosan.checkpoint import atomic_write_bytes, write_failure
    from kuosan.errors import KuosanError

    path = Path(path)
    data = encode_png(image, scale)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(path, data, durable=False)
    except OSError as e:
        what, fix = write_failure(e)
        raise KuosanError(f"{what} while writing {path}: nothing partial was left there; {fix} and run "
                          "again") from None
    return path


def save_images(images: np.ndarray, out_dir: str | Path, names: list[str]) -> list[Path]:
    return [save_png(img, Path(out_dir) / name) for img, name in zip(images, names)]
