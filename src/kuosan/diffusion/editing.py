"""Editing images with a denoiser: image-to-image (SDEdit), inpainting (with RePaint resampling),
ODE inversion, and interpolation between seeds or classes.

Like the samplers, each function takes a denoiser ``D(x, sigma, **extra_args) -> x0_hat`` and a σ grid
(decreasing, ending in 0; see ``schedules.get_sigmas``); images are in the model's range, [B, C, H, W].
``sampler`` is a name in :data:`~kuosan.diffusion.samplers.SAMPLERS` or a sampler function. Noise comes
only from ``generator`` (one per sample: image k does not depend on the batch).
"""

from __future__ import annotations

import math
import numbers

import torch

from kuosan.diffusion.samplers import STOCHASTIC, SAMPLERS, add_noise, get_sampler
from kuosan.errors import KuosanError

__all__ = ["start_index", "img2img", "inpaint", "repaint_path", "invert", "psnr", "slerp", "class_mix"]


# --- input checks: a wrong argument is one KuosanError line, never a broadcasting error or NaN images ----------

MAX_NETWORK_CALLS = 1_000_000  # an inpainting path longer than this is a typo in resample/jump, not a plan


def _sampler(sampler):
    if isinstance(sampler, str):
        return get_sampler(sampler)
    if not callable(sampler):
        raise KuosanError(f"sampler must be a name ({', '.join(sorted(SAMPLERS))}) or a sampler function, "
                          f"got {sampler!r}")
    return sampler


def _number(value, name: str, lo: float, hi: float) -> float:
    """``value`` (a Python or numpy number, a one-element tensor) as a float in [lo, hi]."""
    if isinstance(value, torch.Tensor) and value.numel() == 1:
        value = value.item()
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value) \
            or not lo <= value <= hi:
        raise KuosanError(f"{name} must be a number between {lo:g} and {hi:g}, got {value!r}")
    return float(value)


def _count(value, name: str, lo: int = 1) -> int:
    if isinstance(value, torch.Tensor) and value.numel() == 1:
        value = value.item()
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < lo:
        raise KuosanError(f"{name} must be a whole number of at least {lo}, got {value!r}")
    return int(value)


def _images(x, name: str) -> torch.Tensor:
    """A batch of images: a floating tensor [B, ...] of finite values."""
    if not isinstance(x, torch.Tensor) or not x.is_floating_point() or x.ndim < 2:
        what = f"a {x.dtype} tensor of shape {list(x.shape)}" if isinstance(x, torch.Tensor) else type(x).__name__
        raise KuosanError(f"{name} must be a floating-point tensor [batch, ...] of images, got {what}")
    if not bool(torch.isfinite(x).all()):
        raise KuosanError(f"{name} holds NaN or infinite values")
    return x


def _grid(sigmas, like: torch.Tensor) -> torch.Tensor:
    """A σ grid: one dimension, finite, not negative, not increasing (as ``schedules.get_sigmas`` makes)."""
    if not isinstance(sigmas, torch.Tensor):
        try:
            sigmas = torch.as_tensor(sigmas, dtype=torch.float64, device=like.device)
        except (TypeError, ValueError, RuntimeError):
            raise KuosanError(f"sigmas must be a 1-D tensor of noise levels, got {type(sigmas).__name__}") from None
    if sigmas.ndim != 1 or len(sigmas) < 1 or not sigmas.is_floating_point():
        raise KuosanError(f"sigmas must be a 1-D floating tensor of noise levels, got shape {list(sigmas.shape)}")
    if not bool(torch.isfinite(sigmas).all()) or bool((sigmas < 0).any()):
        raise KuosanError("sigmas must be finite and non-negative")
    if bool((sigmas[1:] > sigmas[:-1]).any()):
        raise KuosanError("sigmas must decrease (from σ_max down to 0), as schedules.get_sigmas makes them")
    return sigmas


def _generators(generator, batch: int) -> None:
    if isinstance(generator, (list, tuple)) and len(generator) != batch:
        raise KuosanError(f"{len(generator)} generators for a batch of {batch} images: give one per image "
                          "(kuosan.rng.generators_for_seeds) or a single torch.Generator")
    if generator is not None and not isinstance(generator, (list, tuple, torch.Generator)):
        raise KuosanError(f"generator must be a torch.Generator, a list of them or None, got {generator!r}")


def start_index(num_steps: int, strength: float) -> int:
    """Where an edit of ``strength`` ∈ [0, 1] enters a grid of ``num_steps`` steps: it runs the last
    round(strength · num_steps) of them (0: none, the input comes back; 1: all, plain generation)."""
    strength = _number(strength, "strength", 0, 1)
    num_steps = _count(num_steps, "the number of steps", 0)
    return num_steps - round(strength * num_steps)


@torch.no_grad()
def img2img(denoiser, x0: torch.Tensor, sigmas: torch.Tensor, strength: float, *, sampler="heun",
            generator=None, extra_args=None, callback=None, **options) -> torch.Tensor:
    """SDEdit (Meng et al. 2022, §3): perturb the input to the grid's σ at ``strength``,
    x = x0 + σ_start·z, and solve the reverse process from there down to 0. Conditioning in
    ``extra_args`` (another class, guidance through a guided denoiser) steers the edit."""
    x0 = _images(x0, "x0")
    sigmas = _grid(sigmas, x0)
    fn = _sampler(sampler)
    _generators(generator, len(x0))
    k = start_index(len(sigmas) - 1, strength)
    if k == len(sigmas) - 1:
        return x0.clone()
    x = add_noise(x0, generator, sigmas[k])
    return fn(denoiser, x, sigmas[k:], extra_args=extra_args, callback=callback, generator=generator, **options)


def repaint_path(num_steps: int, resample: int = 1, jump: int = 1) -> list[int]:
    """Grid indices an inpainting run visits: down one step at a time and, each time it arrives at a
    multiple of ``jump``, back up ``jump`` steps, ``resample − 1`` times per segment (RePaint,
    Lugmayr et al. 2022: resampling with jump length j = ``jump`` and U = ``resample``)."""
    num_steps = _count(num_steps, "the number of steps", 0)
    if not all(isinstance(v, numbers.Integral) and not isinstance(v, bool) and v >= 1 for v in (resample, jump)):
        raise KuosanError(f"resample and jump must be whole numbers of at least 1, got {resample!r} and {jump!r}")
    if num_steps * resample > MAX_NETWORK_CALLS:
        raise KuosanError(f"resample {resample} over {num_steps} steps is about {num_steps * resample} denoiser "
                          f"calls, absurdly many (at most {MAX_NETWORK_CALLS})")
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
    x_known = _images(x_known, "x_known")
    sigmas = _grid(sigmas, x_known)
    _generators(generator, len(x_known))
    known = _mask(known, x_known)

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


def _mask(known, x_known: torch.Tensor) -> torch.Tensor:
    """``known`` as a float tensor of 0s to 1s that broadcasts to the images' shape without enlarging it."""
    if not isinstance(known, torch.Tensor):
        import numpy as np

        if not isinstance(known, np.ndarray):
            raise KuosanError(f"the mask must be a tensor of 1 (keep) and 0 (regenerate), got {type(known).__name__}")
        known = torch.from_numpy(np.ascontiguousarray(known))
    if known.dtype == torch.bool or not known.is_floating_point():
        known = known.to(torch.float32)
    try:
        fits = torch.broadcast_shapes(known.shape, x_known.shape) == x_known.shape
    except RuntimeError:
        fits = False
    if not fits:
        raise KuosanError(f"a mask of shape {list(known.shape)} does not fit images of shape {list(x_known.shape)}: "
                          "give [B or 1, 1 or C, H, W] with the images' H and W")
    if not bool(torch.isfinite(known).all()) or bool((known < 0).any() | (known > 1).any()):
        raise KuosanError("the mask must hold values from 0 (regenerate) to 1 (keep)")
    return known.to(device=x_known.device, dtype=x_known.dtype)


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
    fn = _sampler(sampler)
    _deterministic(sampler)
    x0 = _images(x0, "x0")
    sigmas = _grid(sigmas, x0)
    up = (sigmas[:-1] if sigmas[-1] == 0 else sigmas).flip(0)
    if len(up) < 2:
        raise KuosanError("inversion needs at least two nonzero noise levels in the grid")
    return fn(denoiser, x0, up, extra_args=extra_args, callback=callback, **options)


def psnr(a: torch.Tensor, b: torch.Tensor, data_range: float = 2.0) -> torch.Tensor:
    """Peak signal-to-noise ratio per image in dB, 10·log10(range² / MSE) (range 2 for [-1, 1])."""
    if not (isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor)) or a.shape != b.shape or a.ndim < 2:
        shape = lambda v: list(v.shape) if isinstance(v, torch.Tensor) else type(v).__name__  # noqa: E731
        raise KuosanError(f"psnr compares two image batches of one shape [B, ...], got {shape(a)} and {shape(b)}")
    mse = (a.double() - b.double()).square().flatten(1).mean(1)
    return 10 * torch.log10(data_range ** 2 / mse.clamp(min=1e-30))


def slerp(z0: torch.Tensor, z1: torch.Tensor, t) -> torch.Tensor:
    """Spherical linear interpolation (Shoemake 1985) of noise, sample by sample:
    sin((1−t)Ω)/sin Ω · z0 + sin(tΩ)/sin Ω · z1, Ω the angle between them. Unlike a straight line it
    keeps the norm of Gaussian noise (≈ √d), which the model expects at σ_max. ``t`` is a scalar or
    a [B] tensor; z0, z1 are [B or 1, ...]."""
    t = _weights(t, "t")
    z0, z1 = _images(z0, "z0"), _images(z1, "z1")
    if z0.shape[1:] != z1.shape[1:] or (len(z0) != len(z1) and 1 not in (len(z0), len(z1))):
        raise KuosanError(f"slerp between noise of shapes {list(z0.shape)} and {list(z1.shape)}: they must match")
    batch = max(len(z0), len(z1))
    if t.numel() != 1 and batch != 1 and t.numel() != batch:
        raise KuosanError(f"{t.numel()} values of t for a batch of {batch}")
    t = t.reshape(-1, *([1] * (z0.ndim - 1)))
    a, b = z0.double(), z1.double()
    dims = tuple(range(1, z0.ndim))
    norm = lambda v: v.square().sum(dims, keepdim=True).sqrt()  # noqa: E731
    cos = (a * b).sum(dims, keepdim=True) / (norm(a) * norm(b))
    if bool((norm(a) == 0).any() | (norm(b) == 0).any()):
        raise KuosanError("slerp needs nonzero noise: the angle to a zero vector is undefined")
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
    weight = _weights(weight, "weight")
    labels_a, labels_b = _labels(labels_a, "labels_a"), _labels(labels_b, "labels_b")
    if len(labels_a) != len(labels_b) or weight.numel() not in (1, len(labels_a)):
        raise KuosanError(f"class_mix needs as many labels in each class as weights: got {len(labels_a)}, "
                          f"{len(labels_b)} and {weight.numel()}")

    def mixed(x: torch.Tensor, sigma, class_labels=None, **kw) -> torch.Tensor:
        b = x.shape[0]
        if b != len(labels_a):
            raise KuosanError(f"class_mix was made for {len(labels_a)} images, called on {b}")
        sigma = torch.as_tensor(sigma, device=x.device)
        sigma = sigma.expand(b) if sigma.ndim == 0 else sigma
        both = denoiser(torch.cat([x, x]), torch.cat([sigma, sigma]),
                        class_labels=torch.cat([labels_a, labels_b]).to(x.device), **kw)
        d_a, d_b = both.chunk(2)
        a = weight.to(device=x.device, dtype=x.dtype).reshape(-1, *([1] * (x.ndim - 1)))
        return (1 - a) * d_a + a * d_b

    return mixed


def _weights(t, name: str) -> torch.Tensor:
    """Interpolation weights: a number, a list or a tensor of finite values in [0, 1], as float64."""
    try:
        t = torch.as_tensor(t, dtype=torch.float64)
    except (TypeError, ValueError, RuntimeError):
        raise KuosanError(f"{name} must be a number or a tensor of numbers in [0, 1], got {t!r}"[:200]) from None
    if t.numel() == 0 or not bool(torch.isfinite(t).all()) or bool((t < 0).any() | (t > 1).any()):
        raise KuosanError(f"{name} must be in [0, 1] (0: the first end, 1: the second), got {t.tolist()}"[:200])
    return t


def _labels(labels, name: str) -> torch.Tensor:
    if not isinstance(labels, torch.Tensor) or labels.ndim != 1 or labels.is_floating_point() \
            or labels.dtype == torch.bool:
        raise KuosanError(f"{name} must be a 1-D integer tensor of class indices, got {labels!r}"[:200])
    return labels
