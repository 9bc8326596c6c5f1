"""Uploaded images: bounded in size, recognised by decoding (never by a name or a declared type), any mode or
size accepted and converted to what the model works on.

The page sends an image as a ``data:`` URL inside the JSON request; :func:`decode_upload` turns it into a Pillow
image, :func:`fit_image` and :func:`fit_mask` into arrays at the model's size.
"""

from __future__ import annotations

import base64
import binascii
import io

import numpy as np

from kuosan.errors import KuosanError

__all__ = ["MAX_UPLOAD", "MAX_PIXELS", "decode_upload", "open_image", "fit_image", "fit_mask"]

MAX_UPLOAD = 8 << 20        # bytes of one uploaded image file
MAX_PIXELS = 40_000_000     # pixels of an uploaded image (a 6300 x 6300 photo); bigger is refused before decoding


def decode_upload(value, name: str) -> bytes:
    """The bytes of an uploaded file given as a ``data:...;base64,`` URL (or bare base64)."""
    if not isinstance(value, str) or not value:
        raise KuosanError(f"{name} must be an image file (a data: URL); none was given")
    text = value.split(",", 1)[1] if value.startswith("data:") and "," in value else value
    if len(text) > MAX_UPLOAD * 4 // 3 + 4:
        raise KuosanError(f"{name} is {len(text) * 3 // 4 / 1e6:.1f} MB; images up to {MAX_UPLOAD / 1e6:.0f} MB "
                          "are accepted")
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise KuosanError(f"{name} is not base64 data: send the file as a data: URL") from None


def open_image(data: bytes, name: str = "the image"):
    """The decoded image in ``data`` (PNG, JPEG, WebP, GIF's first frame, BMP, TIFF…), fully read."""
    from PIL import Image, UnidentifiedImageError

    if len(data) > MAX_UPLOAD:
        raise KuosanError(f"{name} is {len(data) / 1e6:.1f} MB; images up to {MAX_UPLOAD / 1e6:.0f} MB are accepted")
    try:
        im = Image.open(io.BytesIO(data))
        w, h = im.size
        if w * h > MAX_PIXELS:
            raise KuosanError(f"{name} is {w}x{h} pixels; at most {MAX_PIXELS // 1_000_000} million are accepted")
        im.load()
    except KuosanError:
        raise
    except UnidentifiedImageError:
        raise KuosanError(f"{name} is not an image file kuosan can decode (PNG, JPEG, WebP, GIF, BMP, TIFF)") from None
    except (Image.DecompressionBombError, OSError, ValueError, SyntaxError) as e:
        raise KuosanError(f"{name} is not an image kuosan can decode ({type(e).__name__}: "
                          f"{str(e).splitlines()[0][:120] if str(e) else 'unreadable'})") from None
    if w < 1 or h < 1:
        raise KuosanError(f"{name} has no pixels")
    return im


def fit_image(im, channels: int, resolution: int) -> np.ndarray:
    """A Pillow image of any mode and size -> uint8 [C, H, W] at the model's channels and resolution (alpha on
    white, then the shorter side resized to ``resolution`` and the centre square kept)."""
    from kuosan.data.transforms import pil_to_chw, resize_center_crop, to_l_or_rgb

    return pil_to_chw(resize_center_crop(to_l_or_rgb(im), resolution), channels).copy()


def fit_mask(im, resolution: int) -> np.ndarray:
    """A mask image -> float32 [1, H, W]: 1 where to keep (dark), 0 where to regenerate (light), as
    ``kuosan edit inpaint --mask`` reads one (transparency composited on white)."""
    from kuosan.data.transforms import resize_center_crop, to_l_or_rgb

    grey = resize_center_crop(to_l_or_rgb(im).convert("L"), resolution)
    return (np.asarray(grey) < 128).astype(np.float32)[None]
