"""Keeping the denoised image in the data range, as a denoiser-to-denoiser transform.

A model that predicts ε (or v) can propose a denoised image D(x, σ) far outside [-1, 1] at large σ,
where D = x − σ·ε multiplies the network's error by σ; the sampler then carries that overshoot into
the image (speckles, saturated pixels). Two remedies, both on D:
  * static clipping: D' = clip(D, −1, 1) (the DDPM reference code; diffusers' ``clip_sample``);
  * dynamic thresholding (Saharia et al. 2022, "Imagen", §2.3): per image, s = max(1, the p-th quantile
    of |D|), then D' = clip(D, −s, s) / s, which pulls saturated images back rather than flattening them.

Both assume pixel data in [-1, 1]; a latent model's latents have another range (the pipeline refuses).
"""

from __future__ import annotations

from typing import Callable

import torch

from kuosan.errors import KuosanError

__all__ = ["threshold_denoiser", "parse_threshold"]


def threshold_denoiser(denoiser: Callable, threshold: float | str | None) -> Callable:
    """Return ``denoiser`` with its output clipped: ``"clip"`` (static, to [-1, 1]), a quantile
    ``p`` in (0, 1) (dynamic thresholding), or None (unchanged)."""
    threshold = parse_threshold(threshold)
    if threshold is None:
        return denoiser

    def clipped(x: torch.Tensor, sigma, **kw) -> torch.Tensor:
        d = denoiser(x, sigma, **kw)
        if threshold == "clip":
            return d.clamp(-1.0, 1.0)
        s = torch.quantile(d.detach().abs().flatten(1).float(), threshold, dim=1).clamp(min=1.0)
        s = s.to(d.dtype).view(-1, *([1] * (d.ndim - 1)))
        return torch.maximum(torch.minimum(d, s), -s) / s

    return clipped


def parse_threshold(value) -> float | str | None:
    """``None``/"none" → None, "clip" → "clip", a number in (0, 1) → that quantile; else a KuosanError."""
    if value is None or (isinstance(value, str) and value.strip().lower() in ("", "none")):
        return None
    if isinstance(value, str) and value.strip().lower() == "clip":
        return "clip"
    try:
        p = float(value)
    except (TypeError, ValueError):
        raise KuosanError(f"threshold must be 'clip', 'none' or a quantile in (0, 1) such as 0.995, got {value!r}") \
            from None
    if not 0 < p < 1:
        raise KuosanError(f"a dynamic-threshold quantile must be in (0, 1), such as 0.995, got {value!r}")
    return p
