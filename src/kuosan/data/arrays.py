"""``.npz`` image files: the format ``kuosan sample`` writes.

Keys: ``images`` (uint8, ``[N, H, W, C]`` or ``[N, C, H, W]`` with C in {1, 3}, or ``[N, H, W]``),
optional ``labels`` (integers, ``[N]``; all negative means unlabelled) and optional ``class_names``.
Files are read with ``allow_pickle=False``: loading never runs code from the file.
"""

from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np
import torch

from kuosan.errors import KuosanError


def _layout_to_nchw(images: np.ndarray, path: Path) -> np.ndarray:
    """``[N, H, W]``, NHWC or NCHW -> NCHW; NHWC wins when both read as possible (our own format)."""
    if images.ndim == 3:
        return images[:, None]
    if images.ndim == 4 and images.shape[3] in (1, 3):
        return images.transpose(0, 3, 1, 2)
    if images.ndim == 4 and images.shape[1] in (1, 3):
        return images
    raise KuosanError(f"{path}: 'images' has shape {list(images.shape)}; expected [N, H, W, C] or [N, C, H, W] "
                      "with 1 or 3 channels")


def _labels(data, n: int, path: Path) -> tuple[np.ndarray, list[str]]:
    """Labels and class names from the file, or one class named after the file when there are none."""
    if "labels" not in data.files or (len(data["labels"]) and (np.asarray(data["labels"]) < 0).all()):
        return np.zeros(n, dtype=np.int64), [path.stem]
    labels = np.asarray(data["labels"])
    if labels.shape != (n,) or not np.issubdtype(labels.dtype, np.integer) or (n and labels.min() < 0):
        raise KuosanError(f"{path}: 'labels' must be {n} non-negative integers, got {labels.dtype} "
                          f"{list(labels.shape)}")
    top = int(labels.max()) + 1 if n else 1
    names = [str(c) for c in data["class_names"]] if "class_names" in data.files else [str(c) for c in range(top)]
    if len(names) < top:
        raise KuosanError(f"{path}: labels go up to {top - 1} but 'class_names' lists only {len(names)} classes")
    return labels.astype(np.int64), names


def read_npz(path: str | Path):
    """``(images uint8 [N, C, H, W], labels int64 [N], class_names)`` from a ``.npz`` file."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise KuosanError(f"{path} not found; check the path")
    try:
        with np.load(path, allow_pickle=False) as data:
            if "images" not in data.files:
                raise KuosanError(f"{path} has no 'images' array (it has: {', '.join(data.files) or 'nothing'})")
            images = data["images"]
            labels, names = _labels(data, len(images), path)
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as e:
        raise KuosanError(f"{path} is not a readable .npz file ({e})") from None
    if images.dtype != np.uint8:
        raise KuosanError(f"{path}: 'images' must be uint8 0..255, got {images.dtype}; "
                          "convert with kuosan.data.to_uint8 before saving")
    images = np.ascontiguousarray(_layout_to_nchw(images, path))
    return torch.from_numpy(images), torch.from_numpy(labels), names


def npz_image_shape(path: str | Path) -> tuple[int, int, int]:
    """``(C, H, W)`` of the images in a ``.npz`` file, from the array header only (no pixels read)."""
    path = Path(path).expanduser()
    try:
        with zipfile.ZipFile(path) as zf, zf.open("images.npy") as f:
            major, _ = np.lib.format.read_magic(f)
            read_header = np.lib.format.read_array_header_1_0 if major == 1 else np.lib.format.read_array_header_2_0
            shape, _, _ = read_header(f)
    except (OSError, KeyError, ValueError, zipfile.BadZipFile) as e:
        raise KuosanError(f"{path} is not a readable .npz file with an 'images' array ({e})") from None
    probe = np.empty((1, *shape[1:]), dtype=np.uint8)  # reuse the layout rules on a one-image array
    return tuple(_layout_to_nchw(probe, path).shape[1:])
