"""Samplers: plain functions of a denoiser, a starting noise and a σ grid.

Every sampler has the signature

    sample_<name>(denoiser, x, sigmas, *, extra_args=None, callback=None, generator=None, **options) -> x

where ``denoiser(x, sigma, **extra_args) -> x0_hat`` is any callable (a preconditioned network, a
guided one, an analytic one in a test), ``sigmas`` is a decreasing 1-D tensor ending in 0 (see
``schedules.get_sigmas``) and ``x`` starts as ``sigmas[0] * noise``. ``callback`` receives a dict
``{"i", "x", "sigma", "sigma_next", "denoised"}`` after every step. Noise is drawn only by the
samplers that use it, and only from ``generator`` (see :mod:`kuosan.rng`).
"""

from __future__ import annotations

import math
from typing import Callable

import torch

from kuosan.rng import randn_like

__all__ = ["SAMPLERS", "get_sampler", "to_d", "ancestral_step",
           "sample_euler", "sample_heun", "sample_ddim", "sample_ddpm"]


def to_d(x: torch.Tensor, sigma: torch.Tensor, denoised: torch.Tensor) -> torch.Tensor:
    """dx/dσ of the probability-flow ODE: (x − D(x; σ)) / σ (EDM, eq. 3 with σ(t) = t)."""
    return (x - denoised) / sigma


def ancestral_step(sigma: torch.Tensor, sigma_next: torch.Tensor, eta: float = 1.0):
    """Split the step σ → σ_next into a deterministic part down to ``sigma_down`` and fresh noise
    of size ``sigma_up``, with σ_down² + σ_up² = σ_next². η = 1 is the DDPM posterior
    (Ho et al. 2020, eq. 7) and η = 0 the deterministic DDIM step (Song et al. 2021, eq. 12 and 16),
    written in the σ view."""
    if eta == 0 or sigma_next == 0:
        return sigma_next, sigma_next * 0
    sigma_up = torch.minimum(sigma_next, eta * (sigma_next ** 2 * (sigma ** 2 - sigma_next ** 2) / sigma ** 2).sqrt())
    sigma_down = (sigma_next ** 2 - sigma_up ** 2).sqrt()
    return sigma_down, sigma_up


def _call(callback, i, x, sigma, sigma_next, denoised):
    if callback is not None:
        callback({"i": i, "x": x, "sigma": sigma, "sigma_next": sigma_next, "denoised": denoised})


@torch.no_grad()
def sample_euler(denoiser, x, sigmas, *, extra_args=None, callback=None, generator=None):
    """Euler's method on the probability-flow ODE (EDM, Algorithm 1 with first-order steps)."""
    extra_args = extra_args or {}
    for i in range(len(sigmas) - 1):
        sigma, sigma_next = sigmas[i], sigmas[i + 1]
        denoised = denoiser(x, sigma, **extra_args)
        x = x + to_d(x, sigma, denoised) * (sigma_next - sigma)
        _call(callback, i, x, sigma, sigma_next, denoised)
    return x


@torch.no_grad()
def sample_heun(denoiser, x, sigmas, *, extra_args=None, callback=None, generator=None,
                s_churn: float = 0.0, s_tmin: float = 0.0, s_tmax: float = float("inf"),
                s_noise: float = 1.0):
    """Heun's 2nd-order method with optional stochastic churn (EDM, Karras et al. 2022, Algorithm 2).
    The last step to σ = 0 is a plain Euler step, as in the paper."""
    extra_args = extra_args or {}
    n = len(sigmas) - 1
    for i in range(n):
        sigma, sigma_next = sigmas[i], sigmas[i + 1]
        gamma = min(s_churn / n, math.sqrt(2) - 1) if s_tmin <= sigma <= s_tmax else 0.0
        sigma_hat = sigma * (1 + gamma)
        if gamma > 0:  # lines 5-6: raise the noise level to σ̂ by adding fresh noise
            x = x + randn_like(x, generator) * s_noise * (sigma_hat ** 2 - sigma ** 2).sqrt()
        denoised = denoiser(x, sigma_hat, **extra_args)
        d = to_d(x, sigma_hat, denoised)
        x_next = x + d * (sigma_next - sigma_hat)  # line 8: Euler step
        if sigma_next != 0:  # lines 9-11: second-order correction
            d_next = to_d(x_next, sigma_next, denoiser(x_next, sigma_next, **extra_args))
            x_next = x + (d + d_next) / 2 * (sigma_next - sigma_hat)
        x = x_next
        _call(callback, i, x, sigma, sigma_next, denoised)
    return x


@torch.no_grad()
def sample_ddim(denoiser, x, sigmas, *, extra_args=None, callback=None, generator=None, eta: float = 0.0):
    """DDIM (Song et al. 2021, eq. 12) in the σ view: x_next = x0 + σ_down·ε̂ + σ_up·z with
    ε̂ = (x − x0)/σ. η = 0 is deterministic (and equals Euler on the ODE); η = 1 is DDPM."""
    extra_args = extra_args or {}
    for i in range(len(sigmas) - 1):
        sigma, sigma_next = sigmas[i], sigmas[i + 1]
        denoised = denoiser(x, sigma, **extra_args)
        sigma_down, sigma_up = ancestral_step(sigma, sigma_next, eta)
        x = denoised + to_d(x, sigma, denoised) * sigma_down
        if sigma_up > 0:
            x = x + randn_like(x, generator) * sigma_up
        _call(callback, i, x, sigma, sigma_next, denoised)
    return x


def sample_ddpm(denoiser, x, sigmas, *, extra_args=None, callback=None, generator=None):
    """Ancestral sampling with the DDPM posterior (Ho et al. 2020, Algorithm 2): DDIM with η = 1."""
    return sample_ddim(denoiser, x, sigmas, extra_args=extra_args, callback=callback,
                       generator=generator, eta=1.0)


SAMPLERS: dict[str, Callable] = {
    "euler": sample_euler,
    "heun": sample_heun,
    "ddim": sample_ddim,
    "ddpm": sample_ddpm,
}

# Network evaluations per step; the last step of a second-order sampler costs one.
_EVALS_PER_STEP = {"heun": 2}


def nfe(name: str, steps: int) -> int:
    """Denoiser evaluations a sampler makes for ``steps`` steps (without guidance)."""
    per = _EVALS_PER_STEP.get(name, 1)
    return per * steps - (per - 1)


def get_sampler(name: str) -> Callable:
    try:
        return SAMPLERS[name]
    except KeyError:
        from kuosan.errors import KuosanError

        raise KuosanError(f"unknown sampler {name!r}; choose one of {', '.join(sorted(SAMPLERS))}") from None
