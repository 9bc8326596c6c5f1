"""Pixel transforms shared by every source: colour modes, channel counts, resize + centre crop.

Resizing uses Pillow: LANCZOS when shrinking, BICUBIC when enlarging; the shorter side goes to the
target resolution and the centre square is kept. Grey -> RGB repeats the channel; RGB -> grey uses
Pillow's ITU-R 601-2 luma (``L = (19595 R + 38470 G + 7471 B + 2**15) >> 16``), the same numbers
whether the image came from a file or a tensor.
"""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image

_ALPHA_MODES = {"RGBA", "LA", "PA", "RGBa", "La"}
_SIXTEEN_BIT_MODES = {"I;16", "I;16B", "I;16L", "I;16N", "I"}


def to_l_or_rgb(im: Image.Image) -> Image.Image:
    """Any Pillow mode -> ``"L"`` or ``"RGB"``: alpha composited on white, 16-bit/float rescaled, CMYK converted."""
    if im.mode in ("L", "RGB"):
        return im
    if im.mode == "P":                                   # palette: transparency makes it an alpha image
        im = im.convert("RGBA" if "transparency" in im.info else "RGB")
        return to_l_or_rgb(im)
    if im.mode in _ALPHA_MODES:
        white = Image.new("RGBA", im.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, im.convert("RGBA")).convert("RGB")
    if im.mode in _SIXTEEN_BIT_MODES:                    # 16-bit grey (PNG, TIFF): 0..65535 -> 0..255
        a = np.asarray(im).astype(np.float64)
        return Image.fromarray(np.clip(np.round(a / 257.0), 0, 255).astype(np.uint8), "L")
    if im.mode == "F":                                   # float grey: [0, 1] if it fits, else already 0..255
        a = np.asarray(im).astype(np.float64)
        a = a * 255.0 if a.size and np.nanmax(a) <= 1.0 else a
        return Image.fromarray(np.clip(np.round(np.nan_to_num(a)), 0, 255).astype(np.uint8), "L")
    if im.mode == "1":
        return im.convert("L")
    return im.convert("RGB")                             # CMYK, YCbCr, LAB, HSV, ...


def resize_center_crop(im: Image.Image, resolution: int) -> Image.Image:
    """Scale so the shorter side is ``resolution``, then keep the centred ``resolution`` square."""
    w, h = im.size
    scale = resolution / min(w, h)
    nw, nh = max(resolution, round(w * scale)), max(resolution, round(h * scale))
    if (nw, nh) != (w, h):
        resample = Image.Resampling.LANCZOS if scale < 1 else Image.Resampling.BICUBIC
        im = im.resize((nw, nh), resample, reducing_gap=3.0 if scale < 1 / 3 else None)
    left, top = (nw - resolution) // 2, (nh - resolution) // 2
    if (nw, nh) != (resolution, resolution):
        im = im.crop((left, top, left + resolution, top + resolution))
    return im


def pil_to_chw(im: Image.Image, channels: int) -> np.ndarray:
    """A Pillow image in mode L or RGB -> uint8 ``[C, H, W]`` with ``channels`` channels."""
    target = "L" if channels == 1 else "RGB"
    im = im if im.mode == target else im.convert(target)
    a = np.asarray(im, dtype=np.uint8)
    return a[None] if a.ndim == 2 else a.transpose(2, 0, 1)


def convert_channels(images: torch.Tensor, channels: int) -> torch.Tensor:
    """uint8 ``[N, C, H, W]`` -> ``channels`` channels (1 -> 3 repeats; 3 -> 1 is Pillow's luma)."""
    c = images.shape[1]
    if c == channels:
        return images
    if c == 1 and channels == 3:
        return images.repeat(1, 3, 1, 1)
    if c == 3 and channels == 1:
        r, g, b = images.to(torch.int64).unbind(1)
        luma = (19595 * r + 38470 * g + 7471 * b + 32768) >> 16
        return luma.to(torch.uint8).unsqueeze(1)
    raise ValueError(f"cannot convert {c} channels to {channels}")


def resize_images(images: torch.Tensor, resolution: int) -> torch.Tensor:
    """uint8 ``[N, C, H, W]`` -> ``[N, C, resolution, resolution]`` with :func:`resize_center_crop` per image."""
    n, c, h, w = images.shape
    if h == w == resolution:
        return images
    mode = "L" if c == 1 else "RGB"
    out = np.empty((n, c, resolution, resolution), dtype=np.uint8)
    for i, a in enumerate(images.numpy()):
        im = Image.fromarray(a[0] if c == 1 else a.transpose(1, 2, 0), mode)
        out[i] = pil_to_chw(resize_center_crop(im, resolution), c)
    return torch.from_numpy(out)


def fit_images(images: torch.Tensor, resolution: int | None, channels: int | None) -> torch.Tensor:
    """Apply the requested channel count and resolution (None keeps what is there); cheaper order first."""
    channels = channels or images.shape[1]
    if channels < images.shape[1]:
        images = convert_channels(images, channels)
    if resolution is not None:
        images = resize_images(images, resolution)
    return convert_channels(images, channels).contiguous()
