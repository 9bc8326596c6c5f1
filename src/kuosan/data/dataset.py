"""The in-memory image data set every source produces, and the uint8 <-> [-1, 1] scalings.

Images stay uint8 in memory (a quarter of float32) and are scaled to the model range per batch
with :func:`to_model_range`; samples go back with :func:`to_uint8`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch


class ImageShape:
    """Shape facts shared by every in-memory set whose ``images`` are [N, C, H, H] (images or latents)."""

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def resolution(self) -> int:
        return self.images.shape[-1]

    @property
    def channels(self) -> int:
        return self.images.shape[1]

    def __len__(self) -> int:
        return self.images.shape[0]


@dataclass
class ImageDataset(ImageShape):
    """A labelled set of square images held in memory.

    ``images`` is uint8 ``[N, C, H, W]`` (contiguous, ``C`` in {1, 3}, ``H == W``); ``labels`` is int64
    ``[N]`` with values in ``[0, len(class_names))``; ``name`` says where it came from
    (``"fashion-mnist:train"``).
    """

    images: torch.Tensor
    labels: torch.Tensor
    class_names: list[str]
    name: str

    def __post_init__(self):
        x, y = self.images, self.labels
        if x.dtype != torch.uint8 or x.dim() != 4 or x.shape[1] not in (1, 3) or x.shape[2] != x.shape[3]:
            raise ValueError(f"images must be uint8 [N, C, H, H] with C in {{1, 3}}, got {x.dtype} {list(x.shape)}")
        if y.dtype != torch.int64 or y.shape != (x.shape[0],):
            raise ValueError(f"labels must be int64 [{x.shape[0]}], got {y.dtype} {list(y.shape)}")
        if len(y) and (int(y.min()) < 0 or int(y.max()) >= len(self.class_names)):
            raise ValueError(f"labels must lie in [0, {len(self.class_names)}), got [{int(y.min())}, {int(y.max())}]")
        self.images = x.contiguous()
        self.class_names = list(self.class_names)

    def subset(self, idx) -> "ImageDataset":
        """The images at ``idx`` (indices, a boolean mask or a slice), with the same classes and name."""
        if not isinstance(idx, slice):
            idx = torch.as_tensor(idx)
            idx = idx if idx.dtype == torch.bool else idx.long()
        return ImageDataset(self.images[idx].contiguous(), self.labels[idx], self.class_names, self.name)

    def __repr__(self) -> str:
        return (f"ImageDataset({self.name!r}, {len(self)} images, {self.channels}x{self.resolution}x{self.resolution}, "
                f"{self.num_classes} classes)")


def to_model_range(images_uint8: torch.Tensor) -> torch.Tensor:
    """uint8 pixels ``[0, 255]`` -> float32 ``[-1, 1]`` (``x / 127.5 - 1``)."""
    return images_uint8.to(torch.float32) / 127.5 - 1.0


def to_uint8(images: torch.Tensor) -> torch.Tensor:
    """float images in ``[-1, 1]`` -> uint8 ``[0, 255]``, clamped and rounded (inverse of :func:`to_model_range`)."""
    return ((images.detach().to(torch.float32) + 1.0) * 127.5).round().clamp(0, 255).to(torch.uint8)


def stratified_order(labels: np.ndarray, seed: int = 0) -> np.ndarray:
    """A deterministic order of all indices in which every prefix keeps the class proportions.

    Each class is shuffled (``seed``); its ``r``-th item gets the key ``(r + 0.5) / count``, and indices
    are sorted by key, so the first ``n`` hold ``≈ n * count / N`` of each class.
    """
    labels = np.asarray(labels)
    perm = np.random.default_rng(seed).permutation(len(labels))
    key = np.empty(len(labels), dtype=np.float64)
    for c in np.unique(labels):
        members = perm[labels[perm] == c]                    # this class, shuffled
        key[members] = (np.arange(len(members)) + 0.5) / len(members)
    return perm[np.argsort(key[perm], kind="stable")]


def take_stratified(labels, n: int | None, seed: int = 0) -> np.ndarray:
    """Indices of ``n`` items chosen by :func:`stratified_order`, in ascending order (all when ``n`` is None)."""
    labels = np.asarray(labels)
    if n is None or n >= len(labels):
        return np.arange(len(labels))
    return np.sort(stratified_order(labels, seed)[:n])
