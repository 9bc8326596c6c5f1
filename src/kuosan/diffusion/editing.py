"""Editing images with a denoiser: image-to-image (SDEdit), inpainting (with RePaint resampling),
ODE inversion, and interpolation between seeds or classes.

Like the samplers, each function takes a denoiser ``D(x, sigma, **extra_args) -> x0_hat`` and a σ grid
(decreasing, ending in 0; see ``schedules.get_sigmas``); images are in the model's range, [B, C, H, W].
``sampler`` is a name in :data:`~kuosan.diffusion.samplers.SAMPLERS` or a sampler function. Noise comes
only from ``generator`` (one per sample: image k does not depend on the batch).
"""

from __future__ import annotations

import math

import torch

from kuosan.diffusion.samplers import STOCHASTIC, SAMPLERS, add_noise, get_sampler
from kuosan.errors import KuosanError

__all__ = ["start_index", "img2img", "inpaint", "repaint_path", "invert", "psnr", "slerp", "class_mix"]


def _sampler(sampler):
    return get_sampler(sampler) if isinstance(sampler, str) else sampler


def start_index(num_steps: int, strength: float) -> int:
    """Where an edit of ``strength`` ∈ [0, 1] enters a grid of ``num_steps`` steps: it runs the last
    round(strength · num_steps) of them (0: none, the input comes back; 1: all, plain generation)."""
    if not 0 <= strength <= 1:
        raise KuosanError(f"strength must be between 0 and 1, got {strength}")
    return num_steps - round(strength * num_steps)


@torch.no_grad()
def img2img(denoiser, x0: torch.Tensor, sigmas: torch.Tensor, strength: float, *, sampler="heun",
            generator=None, extra_args=None, callback=None, **options) -> torch.Tensor:
    """SDEdit (Meng et al. 2022, §3): perturb the input to the grid's σ at ``strength``,
    x = x0 + σ_start·z, and solve the reverse process from there down to 0. Conditioning in
    ``extra_args`` (another class, guidance through a guided denoiser) steers the edit."""
    k = start_index(len(sigmas) - 1, strength)
    if k == len(sigmas) - 1:
        return x0.clone()
    x = add_noise(x0, generator, sigmas[k])
    return _sampler(sampler)(denoiser, x, sigmas[k:], extra_args=extra_args, callback=callback,
                             generator=generator, **options)


def repaint_path(num_steps: int, resample: int = 1, jump: int = 1) -> list[int]:
    """Grid indices an inpainting run visits: down one step at a time and, each time it arrives at a
    multiple of ``jump``, back up ``jump`` steps, ``resample − 1`` times per segment (RePaint,
    Lugmayr et al. 2022: resampling with jump length j = ``jump`` and U = ``resample``)."""
    if resample < 1 or jump < 1:
        raise KuosanError(f"resample and jump must be at least 1, got {resample} and {jump}")
    jumps_left = {k: resample - 1 for k in range(jump, num_steps + 1, jump)}
    path, i = [0], 0
    while i < num_steps:
        i += 1
        path.append(i)
        if jumps_left.get(i, 0) > 0:
            jumps_left[i] -= 1
            i -= jump
            path.append(i)
    return path


@torch.no_grad()
def inpaint(denoiser, x_known: torch.Tensor, known: torch.Tensor, sigmas: torch.Tensor, *, sampler="ddpm",
            generator=None, extra_args=None, resample: int = 1, jump: int = 1, callback=None,
            **options) -> torch.Tensor:
    """Fill the pixels where ``known`` is 0 (``known`` is 1 where ``x_known`` is to be kept; it
    broadcasts against the images). After every step σ → σ_next the known region is replaced by the
    known image noised to σ_next (RePaint, Lugmayr et al. 2022, Algorithm 1), so at σ = 0 it is
    exactly ``x_known``. With ``resample`` > 1 the state is diffused back up ``jump`` steps,
    x ← x + (σ_up² − σ²)^{1/2}·z, and denoised again (their resampling with jumps), harmonising the
    filled region with the known one. Each step is one call of ``sampler`` on a two-point grid, so a
    multistep sampler runs at its first order here."""
    fn = _sampler(sampler)
    known = known.to(x_known.dtype)

    def impose(x, sigma):
        return known * add_noise(x_known, generator, sigma) + (1 - known) * x

    s = sigmas.tolist()
    x = impose(add_noise(torch.zeros_like(x_known), generator, sigmas[0]), sigmas[0])
    path = repaint_path(len(s) - 1, resample, jump)
    for a, b in zip(path, path[1:]):
        if b == a + 1:
            x = impose(fn(denoiser, x, sigmas[a:b + 1], extra_args=extra_args, generator=generator, **options),
                       sigmas[b])
            if callback is not None:
                callback({"i": a, "x": x, "sigma": sigmas[a], "sigma_next": sigmas[b]})
        else:
            x = add_noise(x, generator, math.sqrt(s[b] ** 2 - s[a] ** 2))
    return x


def _deterministic(sampler) -> None:
    name = sampler if isinstance(sampler, str) else getattr(sampler, "__name__", "").removeprefix("sample_")
    if name in STOCHASTIC:
        raise KuosanError(f"inversion needs a deterministic sampler, not {name!r}; use one of "
                          f"{', '.join(sorted(set(SAMPLERS) - set(STOCHASTIC)))}")


@torch.no_grad()
def invert(denoiser, x0: torch.Tensor, sigmas: torch.Tensor, *, sampler="heun", extra_args=None,
           callback=None, **options) -> torch.Tensor:
    """The noise that ``sampler`` on ``sigmas`` turns into ``x0``: the probability-flow ODE solved
    upward (DDIM inversion, Song et al. 2021, §4.3, with any deterministic solver). The image stands
    for the state at the grid's smallest σ > 0 (σ_min ≈ 0: D(x; σ_min) ≈ x); the upward grid is the
    sampling grid reversed without its 0, since a step starting from σ = 0 would divide by it.
    Generating from the result with the same sampler and grid returns ``x0`` up to the solver's
    error in both directions."""
    _deterministic(sampler)
    up = (sigmas[:-1] if sigmas[-1] == 0 else sigmas).flip(0)
    if len(up) < 2:
        raise KuosanError("inversion needs at least two nonzero noise levels in the grid")
    return _sampler(sampler)(denoiser, x0, up, extra_args=extra_args, callback=callback, **options)


def psnr(a: torch.Tensor, b: torch.Tensor, data_range: float = 2.0) -> torch.Tensor:
    """Peak signal-to-noise ratio per image in dB, 10·log10(range² / MSE) (range 2 for [-1, 1])."""
    mse = (a.double() - b.double()).square().flatten(1).mean(1)
    return 10 * torch.log10(data_range ** 2 / mse.clamp(min=1e-30))


def slerp(z0: torch.Tensor, z1: torch.Tensor, t) -> torch.Tensor:
    """Spherical linear interpolation (Shoemake 1985) of noise, sample by sample:
    sin((1−t)Ω)/sin Ω · z0 + sin(tΩ)/sin Ω · z1, Ω the angle between them. Unlike a straight line it
    keeps the norm of Gaussian noise (≈ √d), which the model expects at σ_max. ``t`` is a scalar or
    a [B] tensor; z0, z1 are [B or 1, ...]."""
    t = torch.as_tensor(t, dtype=torch.float64).reshape(-1, *([1] * (z0.ndim - 1)))
    a, b = z0.double(), z1.double()
    dims = tuple(range(1, z0.ndim))
    norm = lambda v: v.square().sum(dims, keepdim=True).sqrt()  # noqa: E731
    cos = (a * b).sum(dims, keepdim=True) / (norm(a) * norm(b))
    omega = cos.clamp(-1, 1).acos()
    if float(omega.min()) < 1e-6:  # (nearly) parallel: the straight line is the arc
        return ((1 - t) * a + t * b).to(z0.dtype)
    out = (torch.sin((1 - t) * omega) * a + torch.sin(t * omega) * b) / torch.sin(omega)
    return out.to(z0.dtype)


def class_mix(denoiser, labels_a: torch.Tensor, labels_b: torch.Tensor, weight: torch.Tensor):
    """A denoiser between two classes: D = (1 − a)·D(x; σ, c_a) + a·D(x; σ, c_b), with ``weight`` a
    per sample (a [B] tensor), both terms in one forward of double batch. Wrap a guided denoiser to mix
    guided predictions. Interpolating class embeddings depends on the network; mixing denoisers does
    not, and it mixes the ODE's velocity fields, since dx/dσ = (x − D)/σ is affine in D."""

    def mixed(x: torch.Tensor, sigma, class_labels=None, **kw) -> torch.Tensor:
        b = x.shape[0]
        sigma = torch.as_tensor(sigma, device=x.device)
        sigma = sigma.expand(b) if sigma.ndim == 0 else sigma
        both = denoiser(torch.cat([x, x]), torch.cat([sigma, sigma]),
                        class_labels=torch.cat([labels_a, labels_b]).to(x.device), **kw)
        d_a, d_b = both.chunk(2)
        a = weight.to(device=x.device, dtype=x.dtype).reshape(-1, *([1] * (x.ndim - 1)))
        return (1 - a) * d_a + a * d_b

    return mixed
