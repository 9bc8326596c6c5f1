"""StackedMNIST: three MNIST digits stacked as the R, G and B channels of one 28×28 image, so 10³ = 1,000 modes.

The standard mode-collapse test of GANs (Metz et al. 2017, "Unrolled Generative Adversarial Networks", §3.3;
Srivastava et al. 2017, VEEGAN; Lin et al. 2018, PacGAN, Table 2): a generator that covers the data makes
all 1,000 digit triples about equally often. Built here from the MNIST subset kuosan reads offline
(:func:`kuosan.data.builtin.read_mnist`: 4,500 train and 500 test digits): each stacked image draws its three
digits independently and uniformly from the split, with a generator seeded per split, so the set is the same
on every machine. Its label is the mode ``100·r + 10·g + b`` of the three digit classes.

Spec: ``stacked-mnist`` (``:train``, 60,000 images; ``:test``, 10,000; ``:all``, both). The mode counter,
which classifies each channel of generated images, lives in :mod:`kuosan.training.gan_modes`.
"""

from __future__ import annotations

import torch

from kuosan.data import builtin

__all__ = ["MODES", "SIZES", "SEEDS", "stack_digits", "mode_of", "mode_names", "read_stacked_mnist"]

MODES = 1000                               # digit triples
SIZES = {"train": 60_000, "test": 10_000}  # stacked images per split (MNIST's own split sizes)
SEEDS = {"train": 0, "test": 1}            # one generator per split: the set is a function of the digits


def mode_of(r: torch.Tensor, g: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """The mode (0..999) of digit classes r, g, b."""
    return 100 * r + 10 * g + b


def mode_names() -> list[str]:
    """``"000"`` .. ``"999"``: the digits of the R, G and B channels."""
    return [f"{m:03d}" for m in range(MODES)]


def stack_digits(images: torch.Tensor, labels: torch.Tensor, n: int, seed: int):
    """``n`` stacked images from single-channel digits ``images`` [N, 1, H, W] (uint8) with ``labels`` [N]:
    returns (uint8 [n, 3, H, W], modes int64 [n]); channel c of image k is digit ``idx[k, c]``, drawn
    uniformly with replacement by a generator seeded with ``seed``."""
    gen = torch.Generator().manual_seed(seed)
    idx = torch.randint(len(images), (n, 3), generator=gen)          # [n, 3]: R, G, B digit of each image
    stacked = images[idx.flatten(), 0].reshape(n, 3, *images.shape[-2:])
    digits = labels[idx]                                              # [n, 3]
    return stacked.contiguous(), mode_of(digits[:, 0], digits[:, 1], digits[:, 2])


def read_stacked_mnist(split: str, root: str | None = None):
    """StackedMNIST ``split`` as ``(images uint8 [N, 3, 28, 28], modes, mode names)``; ``root`` as for ``mnist``."""
    if split == "all":
        (xa, ya, names), (xb, yb, _) = read_stacked_mnist("train", root), read_stacked_mnist("test", root)
        return torch.cat([xa, xb]), torch.cat([ya, yb]), names
    digits, labels, _ = builtin.read_mnist(split, root)
    images, modes = stack_digits(digits, labels, SIZES[split], SEEDS[split])
    return images, modes, mode_names()
