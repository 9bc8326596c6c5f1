"""Classifier-free guidance as a denoiser-to-denoiser transform (Ho & Salimans 2022, eq. 6),
written on denoised images: D_w = D_u + w · (D_c − D_u).

The conditional and unconditional passes run as one forward of double batch. Options:
  * ``interval=(sigma_lo, sigma_hi)``: guide only where sigma_lo < σ <= sigma_hi, else return the
    conditional prediction (Kynkäänniemi et al. 2024, "Applying guidance in a limited interval");
    outside the interval the unconditional half is not computed at all.
  * ``rescale=φ``: rescale the guided prediction to the conditional one's standard deviation and mix
    with weight φ (Lin et al. 2024, "Common diffusion noise schedules…", eq. 15–16). The paper applies
    it to its network's output (v-prediction); here it acts on the denoised image D, the one quantity
    every parameterisation shares, which is what the over-exposure it corrects is about.

Guiding D is the same as guiding ε or v with the same weight (D is affine in the network output with
class-independent coefficients), and D_w is the denoiser of p_u^{1−w}·p_c^w: by Tweedie's formula
D = x + σ² ∇log p_σ, so its score is (1 − w)∇log p_u + w∇log p_c (tests/test_guidance.py checks both).
"""

from __future__ import annotations

from typing import Callable

import torch

__all__ = ["classifier_free_guidance"]


def classifier_free_guidance(denoiser: Callable, scale: float, null_label: int, *,
                             interval: tuple[float, float] | None = None,
                             rescale: float = 0.0) -> Callable:
    """Return ``D(x, sigma, class_labels=None)`` guided with weight ``scale`` (1 = no guidance).

    ``null_label`` is the class index the network was trained to read as "no class".
    """

    def guided(x: torch.Tensor, sigma, class_labels: torch.Tensor | None = None, **kw) -> torch.Tensor:
        if class_labels is None or scale == 1.0:
            return denoiser(x, sigma, class_labels=class_labels, **kw)
        sigma_t = torch.as_tensor(sigma, device=x.device)
        if sigma_t.ndim == 0:
            sigma_t = sigma_t.expand(x.shape[0])
        active = torch.ones_like(sigma_t, dtype=torch.bool)
        if interval is not None:
            active = (sigma_t > interval[0]) & (sigma_t <= interval[1])
        if not bool(active.any()):
            return denoiser(x, sigma, class_labels=class_labels, **kw)
        null = torch.full_like(class_labels, null_label)
        both = denoiser(torch.cat([x, x]), torch.cat([sigma_t, sigma_t]),
                        class_labels=torch.cat([class_labels, null]), **kw)
        d_cond, d_uncond = both.chunk(2)
        d = d_uncond + scale * (d_cond - d_uncond)
        if rescale > 0:
            dims = tuple(range(1, x.ndim))
            ratio = d_cond.std(dim=dims, keepdim=True) / d.std(dim=dims, keepdim=True).clamp(min=1e-8)
            d = rescale * (d * ratio) + (1 - rescale) * d
        mask = active.reshape(-1, *([1] * (x.ndim - 1)))
        return torch.where(mask, d, d_cond)

    return guided
