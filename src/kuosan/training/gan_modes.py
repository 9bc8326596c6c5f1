"""The StackedMNIST mode counter: which of the 1,000 digit triples a set of images covers, and how evenly.

Each channel of a 28×28 RGB image is classified by the shipped MNIST classifier
(:func:`kuosan.evaluation.classifier.load_classifier`, ``mnist-cnn``); the image's mode is
``100·r + 10·g + b`` (:mod:`kuosan.data.stacked_mnist`). As in the mode-collapse literature (Metz et al. 2017,
§3.3; Srivastava et al. 2017, VEEGAN, Table 2; Lin et al. 2018, PacGAN, Table 2) the report gives the modes
covered (at least one image) out of 1,000 and the KL divergence of the mode histogram p from uniform,
KL(p ‖ U) = Σ_m p_m log(1000 · p_m). A finite sample of a perfect model has KL > 0 (about 999 / (2N)
nats for N images) and misses a few modes; run the counter on the real test set of the same size for that floor.

It works on any images (a GAN's or a diffusion model's ``samples.npz``); the per-channel classifier features,
concatenated, also give StackedMNIST a feature space for Fréchet distance and precision/recall
(:func:`stacked_features`).
"""

from __future__ import annotations

import math

import numpy as np
import torch

from kuosan.data.stacked_mnist import MODES, mode_of
from kuosan.errors import KuosanError

__all__ = ["CLASSIFIER", "channel_digits", "mode_histogram", "kl_to_uniform", "count_modes", "stacked_features"]

CLASSIFIER = "mnist-cnn"   # the shipped classifier every channel is read with


def _as_rgb_uint8(images) -> torch.Tensor:
    """uint8 [N, 3, H, W] from NCHW or NHWC (numpy or torch), or one clear error."""
    x = images if isinstance(images, torch.Tensor) else torch.as_tensor(np.asarray(images))
    if x.dtype != torch.uint8 or x.dim() != 4:
        raise KuosanError(f"the mode counter needs uint8 images [N, 3, H, W] or [N, H, W, 3], got {x.dtype} "
                          f"{list(x.shape)}")
    if x.shape[1] != 3 and x.shape[-1] == 3:
        x = x.permute(0, 3, 1, 2)
    if x.shape[1] != 3:
        raise KuosanError(f"StackedMNIST images have 3 channels (one digit each), these have {x.shape[1]}")
    return x.contiguous()


@torch.inference_mode()
def _per_channel(images, batch: int = 1024) -> tuple[torch.Tensor, torch.Tensor]:
    """(digit classes [N, 3], features [N, 3·D]) of each channel, by the shipped MNIST classifier."""
    from kuosan.evaluation.classifier import load_classifier, prepare

    x = _as_rgb_uint8(images)
    model, _ = load_classifier(CLASSIFIER)
    digits, feats = [], []
    for start in range(0, len(x), batch):
        chunk = x[start:start + batch]                                   # [b, 3, H, W]
        grey = chunk.reshape(-1, 1, *chunk.shape[-2:])                   # [b·3, 1, H, W]: R, G, B of image 0 first
        f = model.features(prepare(grey, 1, model.resolution))           # [b·3, D]
        digits.append(model.head(f).argmax(1).reshape(-1, 3))
        feats.append(f.reshape(len(chunk), -1))
    if not digits:
        return torch.zeros(0, 3, dtype=torch.long), torch.zeros(0, 3 * model.dim)
    return torch.cat(digits), torch.cat(feats)


def channel_digits(images) -> torch.Tensor:
    """The classifier's digit for each channel: int64 [N, 3] (R, G, B)."""
    return _per_channel(images)[0]


def stacked_features(images) -> np.ndarray:
    """float64 [N, 3·128]: the classifier's penultimate features of R, G and B, concatenated."""
    return _per_channel(images)[1].double().numpy()


def mode_histogram(modes) -> np.ndarray:
    """Counts of each of the 1,000 modes."""
    m = torch.as_tensor(modes, dtype=torch.long)
    if len(m) and (int(m.min()) < 0 or int(m.max()) >= MODES):
        raise KuosanError(f"modes must lie in 0..{MODES - 1}")
    return np.bincount(m.numpy(), minlength=MODES)


def kl_to_uniform(counts) -> float:
    """KL(p ‖ uniform) in nats for a histogram of counts: Σ p log(K p) over the non-empty bins."""
    counts = np.asarray(counts, dtype=np.float64)
    p = counts[counts > 0] / counts.sum()
    return float((p * np.log(len(counts) * p)).sum())


def count_modes(images) -> dict:
    """Modes covered out of 1,000, KL of the mode histogram from uniform, and the histogram's extremes."""
    digits = channel_digits(images)
    counts = mode_histogram(mode_of(digits[:, 0], digits[:, 1], digits[:, 2]))
    n = int(counts.sum())
    if n == 0:
        raise KuosanError("no images to count modes of")
    return {"images": n, "modes": MODES, "modes_covered": int((counts > 0).sum()),
            "kl_to_uniform": kl_to_uniform(counts), "expected_kl_floor": (MODES - 1) / (2 * n),
            "max_share": float(counts.max() / n), "top_mode": int(counts.argmax()),
            "entropy_normalized": float(_entropy(counts) / math.log(MODES))}


def _entropy(counts) -> float:
    p = np.asarray(counts, dtype=np.float64)
    p = p[p > 0] / p.sum()
    return float(-(p * np.log(p)).sum())
