"""Consistency models in kuosan's σ view: the consistency function's boundary, ECT's pairs of noise levels,
its loss, and the re-noising levels of multistep sampling.

A consistency function maps every point of a probability-flow ODE trajectory to that trajectory's point at
the smallest noise level (Song et al. 2023, "Consistency Models", §3):

    f(x_σ, σ) = x_{σ_min}  for every σ in [σ_min, σ_max] on one trajectory,  so  f(x, σ_min) = x.

One network evaluation at σ_max then turns noise into an image; more evaluations alternate f with fresh
noise (multistep sampling, Song et al. 2023, Algorithm 1; ``kuosan.diffusion.samplers.sample_consistency``).

Notation (paper -> code):
    ε = σ_min      the boundary: f(x, σ_min) = x                          ``sigma_min``
    t, r           ECT's two noise levels of a training pair, r < t       ``t``, ``r``
    n(t)           1 + k·sigmoid(−b·t): wider gaps at small t             ``k``, ``b``
    q, a           the gap shrinks by q each stage a = ⌊step / d⌋        ``q``, ``stage``
    Δ              f_θ(x_t, t) − sg[f_θ(x_r, r)], sg = stop-gradient       ``pred - target``
    c              pseudo-Huber constant                                  ``c``
    w(t, r)        1 / (t − r)                                            ``weight``

Parameterisation. Song et al. 2023 (§3 and Appendix C) impose the boundary through EDM's scalings shifted
by ε: c_skip(σ) = σ_d² / ((σ − ε)² + σ_d²), c_out(σ) = σ_d (σ − ε) / sqrt(σ_d² + σ²). kuosan shifts a base
parameterisation's c_skip and c_out alike (:func:`boundary_scalings`), which gives c_skip(ε) = 1 and
c_out(ε) = 0 exactly for EDM's and flow matching's rows; c_in and c_noise keep the true σ, so the network
sees its inputs as the base model did and a pretrained denoiser's weights start the student.

Consistency tuning (ECT, Geng et al. 2025, "Consistency Models Made Easy", §3): a pretrained denoiser is a
consistency model with r = 0 (its loss pairs x_t with the clean image); ECT tunes it with pairs (t, r) whose
gap shrinks over training, by its mapping function

    r = t · (1 − n(t) / q^(a+1)),   n(t) = 1 + k·sigmoid(−b·t),   ln t ~ N(P_mean, P_std²),

clamped to r ≥ ε (ECT clamps at 0, where its denoiser's boundary is). Both points share one noise draw n,
x_t = x0 + t·n and x_r = x0 + r·n (consistency training, Song et al. 2023, Algorithm 3), and both network
calls one dropout mask (ECT's code). Without a pretrained start the same loss is consistency training from
scratch. The loss is w(t, r)·d(Δ) with d(Δ) = sqrt(‖Δ‖² + c²) − c, the pseudo-Huber metric of iCT (Song &
Dhariwal 2023, "Improved Techniques for Training Consistency Models", §3.3, c = 0.00054·sqrt(dim)), and
ECT's weighting w(t, r) = 1 / (t − r) (iCT's λ(σ_i) = 1 / (σ_{i+1} − σ_i), §3.5). c = 0 is ECT's CIFAR-10
setting, ‖Δ‖ itself.
"""

from __future__ import annotations

import math
from typing import Callable, Sequence

import torch

from kuosan.diffusion.schedules import get_sigmas
from kuosan.errors import KuosanError
from kuosan.rng import randn

__all__ = ["boundary_scalings", "ect_r", "stage_at", "pseudo_huber", "default_huber_c", "consistency_loss",
           "shared_dropout_calls", "renoise_levels", "gaussian_consistency"]


def boundary_scalings(scalings: Callable, sigma: torch.Tensor, sigma_min: float):
    """(c_skip, c_out, c_in) of a consistency model over a base parameterisation's ``scalings``: c_skip and
    c_out at σ − σ_min, c_in at σ (Song et al. 2023, Appendix C, generalised). At σ = σ_min they are 1 and 0
    exactly, so f(x, σ_min) = x for any finite network output."""
    c_skip, c_out, _ = scalings(sigma - sigma_min)
    _, _, c_in = scalings(sigma)
    return c_skip, c_out, c_in


def stage_at(step: int, stage_steps: int) -> int:
    """ECT's stage a = ⌊step / d⌋: the gap t − r shrinks by q each stage."""
    return step // max(1, int(stage_steps))


def ect_r(t: torch.Tensor, stage: int, *, q: float = 2.0, k: float = 8.0, b: float = 1.0,
          sigma_min: float = 0.002, max_shrink: float = 256.0) -> torch.Tensor:
    """ECT's mapping function (Geng et al. 2025, §3): r = t·(1 − n(t)/q^(a+1)), n(t) = 1 + k·sigmoid(−b·t),
    clamped to [σ_min, t]. For t > σ_min, σ_min <= r < t; r -> t as the stage a grows, until q^(a+1) reaches
    ``max_shrink``: 256 is the finest gap of both of ECT's CIFAR-10 recipes (q = 2 over 8 stages, and q = 256),
    and far finer gaps drown Δ in float32 rounding, which the weight 1/(t − r) then amplifies."""
    n_t = 1 + k * torch.sigmoid(-b * t)
    r = t * (1 - n_t / min(q ** (stage + 1), max_shrink))
    return torch.minimum(r.clamp(min=sigma_min), t)


def pseudo_huber(sq_norm: torch.Tensor, c: float) -> torch.Tensor:
    """d = sqrt(‖Δ‖² + c²) − c from ‖Δ‖² (iCT, Song & Dhariwal 2023, §3.3); c = 0 gives ‖Δ‖. Where
    ‖Δ‖ = 0 with c = 0 the value and its gradient are 0 (the square root's own gradient there is infinite,
    and infinity times the zero of Δ's gradient would put NaN into every weight)."""
    inner = sq_norm + c * c
    positive = inner > 0
    return torch.where(positive, torch.where(positive, inner, torch.ones_like(inner)).sqrt(), 0.0) - c


def default_huber_c(dim: int) -> float:
    """iCT's c = 0.00054·sqrt(d) for data of d dimensions (Song & Dhariwal 2023, §3.3)."""
    return 0.00054 * math.sqrt(dim)


def shared_dropout_calls(first: Callable, second: Callable, device: torch.device):
    """``(first(), second())`` with the global RNG rewound in between, so that dropout draws the same mask
    in both calls (ECT's code does so for its two network calls). The RNG ends where one call leaves it."""
    cpu = torch.get_rng_state()
    cuda = torch.cuda.get_rng_state(device) if device.type == "cuda" else None
    a = first()
    torch.set_rng_state(cpu)
    if cuda is not None:
        torch.cuda.set_rng_state(cuda, device)
    return a, second()


def _rows(v: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    return v.reshape(-1, *([1] * (x.ndim - 1)))


def consistency_loss(student, x0: torch.Tensor, class_labels=None, *, generator=None, stage: int = 0,
                     sigma_min: float = 0.002, p_mean: float = -1.1, p_std: float = 2.0, q: float = 2.0,
                     k: float = 8.0, b: float = 1.0, max_shrink: float = 256.0,
                     c: float | None = None) -> torch.Tensor:
    """ECT's loss per sample (see the module docstring): w(t, r)·d(f(x_t, t) − sg[f(x_r, r)]).

    ``student(x, sigma, class_labels)`` is the consistency function, ``c`` None means iCT's default for the
    data's size. A target that is not finite (a NaN or inf in f(x_r, r)) contributes nothing: its row's
    loss is 0, and the optimiser step goes on with the others."""
    B = x0.shape[0]
    t = (randn((B,), generator, device=x0.device) * p_std + p_mean).exp().clamp(min=sigma_min)
    r = ect_r(t, stage, q=q, k=k, b=b, sigma_min=sigma_min, max_shrink=max_shrink)
    noise = randn(x0.shape, generator, device=x0.device)  # one draw for both points
    x_t, x_r = x0 + _rows(t, x0) * noise, x0 + _rows(r, x0) * noise

    def target():
        with torch.no_grad():
            return student(x_r, r, class_labels)

    pred, tgt = shared_dropout_calls(lambda: student(x_t, t, class_labels), target, x0.device)
    finite = tgt.flatten(1).isfinite().all(1)
    tgt = torch.where(_rows(finite, tgt), tgt, pred.detach())
    c = default_huber_c(x0[0].numel()) if c is None else c
    distance = pseudo_huber((pred - tgt).square().flatten(1).sum(1), c)
    gap = t - r
    weight = torch.where(gap > 0, 1 / gap.clamp(min=1e-12), torch.zeros_like(gap))  # t = r = σ_min: Δ = 0
    return weight * distance


def renoise_levels(steps: int, sigma_max: float, sigma_min: float, *, points: Sequence[float] | None = None,
                   rho: float = 7.0) -> list[float]:
    """The ``steps`` noise levels at which multistep consistency sampling evaluates f: σ_max, then the
    re-noising points τ_1 > … > τ_{steps−1} (Song et al. 2023, Algorithm 1). ``points`` gives them; by
    default they are the interior of EDM's grid (Karras et al. 2022, eq. 5, with ``rho``) of steps + 1
    levels from σ_max to σ_min: its last level is dropped, since f there is the identity. For σ from 80 to
    0.002 the two-step point is then 2.52; benchmarks/results/realtime.json compares it with 0.4, 0.8 (near
    the 0.821 Song et al. 2023 chose for CIFAR-10) and 1.5."""
    if points is None:
        if steps == 1:
            return [float(sigma_max)]
        return [float(sigma_max), *get_sigmas("karras", steps + 1, sigma_min, sigma_max, rho=rho)[1:-2].tolist()]
    points = [float(p) for p in points]
    if len(points) != steps - 1:
        raise KuosanError(f"the consistency sampler takes steps − 1 = {steps - 1} re-noising points for "
                          f"{steps} steps, got {len(points)}")
    levels = [float(sigma_max), *points]
    if any(not (math.isfinite(p) and sigma_min <= p < prev) for prev, p in zip(levels, points)):
        raise KuosanError(f"re-noising points must decrease from below σ_max {sigma_max:g} to at least "
                          f"σ_min {sigma_min:g}, got {points}")
    return levels


def gaussian_consistency(x: torch.Tensor, sigma, mean, std, sigma_min: float) -> torch.Tensor:
    """The exact consistency function of data x0 ~ N(mean, std²) per dimension: the probability-flow ODE
    dx/dσ = σ (x − mean) / (std² + σ²) is linear, x(σ) − mean ∝ sqrt(std² + σ²), so
    f(x, σ) = mean + (x − mean)·sqrt(std² + σ_min²) / sqrt(std² + σ²)."""
    sigma = torch.as_tensor(sigma, dtype=x.dtype, device=x.device)
    if sigma.ndim == 1:
        sigma = _rows(sigma, x)
    mean, std = torch.as_tensor(mean, dtype=x.dtype), torch.as_tensor(std, dtype=x.dtype)
    return mean + (x - mean) * ((std ** 2 + sigma_min ** 2) / (std ** 2 + sigma ** 2)).sqrt()
