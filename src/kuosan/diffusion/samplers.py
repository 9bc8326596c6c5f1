"""Samplers: plain functions of a denoiser, a starting noise and a σ grid.

Every sampler has the signature

    sample_<name>(denoiser, x, sigmas, *, extra_args=None, callback=None, generator=None, **options) -> x

where ``denoiser(x, sigma, **extra_args) -> x0_hat`` is any callable (a preconditioned network, a
guided one, an analytic one in a test), ``sigmas`` is a decreasing 1-D tensor ending in 0 (see
``schedules.get_sigmas``) and ``x`` starts as ``sigmas[0] * noise``. ``callback`` receives a dict
``{"i", "x", "sigma", "sigma_next", "denoised"}`` after every step. Noise is drawn only by the
samplers that use it, only when they use it, and only from ``generator`` (see :mod:`kuosan.rng`).

The deterministic samplers also run on an increasing grid that starts at a small σ > 0 (inversion,
see :mod:`kuosan.diffusion.editing`); a grid reaching σ = 0 must end there.

Notation of the exponential integrators (DPM-Solver, Lu et al. 2022, eq. 3.4, and DPM-Solver++, which
writes it for data prediction; in the σ view α = 1):
    λ = −log σ       half the log-SNR; a step σ → σ_next has h = λ_next − λ = log(σ / σ_next)
    D_j              the denoiser's output at the j-th previous point (D_0 the newest)
    u_j = λ_j − λ    the nodes of the polynomial that interpolates D in λ (u_0 = 0, u_j < 0)
The exact solution of the probability-flow ODE over a step is
    x_next = e^{−h} x + ∫_0^h e^{u−h} D(λ + u) du,
and every multistep method below replaces D by a polynomial through the D_j and integrates it
exactly (:func:`_quadrature`). At σ_next = 0 (λ = ∞) that integral is D itself: the last step of
every sampler to σ = 0 returns the denoised image.
"""

from __future__ import annotations

import math
from typing import Callable, Sequence

import torch

from kuosan.diffusion.consistency import renoise_levels
from kuosan.rng import randn_like

__all__ = ["SAMPLERS", "get_sampler", "nfe", "to_d", "ancestral_step", "add_noise",
           "sample_euler", "sample_heun", "sample_ddim", "sample_ddpm", "sample_euler_ancestral",
           "sample_dpmpp_2m", "sample_dpmpp_2m_sde", "sample_dpmpp_3m", "sample_dpmpp_3m_sde",
           "sample_unipc", "sample_lms", "sample_consistency", "CONSISTENCY_SAMPLERS"]


# --- shared helpers --------------------------------------------------------------------------------

def to_d(x: torch.Tensor, sigma: torch.Tensor, denoised: torch.Tensor) -> torch.Tensor:
    """dx/dσ of the probability-flow ODE: (x − D(x; σ)) / σ (EDM, eq. 3 with σ(t) = t)."""
    return (x - denoised) / sigma


def ancestral_step(sigma, sigma_next, eta: float = 1.0):
    """Split the step σ → σ_next into a deterministic part down to ``sigma_down`` and fresh noise
    of size ``sigma_up``, with σ_down² + σ_up² = σ_next². η = 1 is the DDPM posterior
    (Ho et al. 2020, eq. 7) and η = 0 the deterministic DDIM step (Song et al. 2021, eq. 12 and 16),
    written in the σ view. Takes Python floats or 0-d tensors."""
    if eta == 0 or sigma_next == 0:
        return sigma_next, sigma_next * 0
    sigma_up = min(sigma_next, eta * (sigma_next ** 2 * (sigma ** 2 - sigma_next ** 2) / sigma ** 2) ** 0.5)
    sigma_down = (sigma_next ** 2 - sigma_up ** 2) ** 0.5
    return sigma_down, sigma_up


def add_noise(x: torch.Tensor, generator, std) -> torch.Tensor:
    """x + std · z, z ~ N(0, I) from ``generator`` (one per sample, see :mod:`kuosan.rng`); when
    ``std`` is 0 nothing is drawn and ``x`` comes back unchanged."""
    if std == 0:
        return x
    return x + randn_like(x, generator) * std


def _call(callback, i, x, sigma, sigma_next, denoised):
    if callback is not None:
        callback({"i": i, "x": x, "sigma": sigma, "sigma_next": sigma_next, "denoised": denoised})


def _quadrature(nodes: Sequence[float], moments: Sequence[float]) -> list[float]:
    """Weights w_j with Σ_j w_j f(u_j) = Σ_k m_k c_k, where Σ_k c_k u^k is the polynomial that
    interpolates f at ``nodes``: the integral ∫ ω(u) P(u) du when m_k = ∫ ω(u) u^k du.
    w_j = Σ_k m_k [u^k] L_j(u), with L_j the Lagrange basis polynomial of node j."""
    weights = []
    for j, u_j in enumerate(nodes):
        coeffs, scale = [1.0], 1.0  # ascending coefficients of Π_{k≠j} (u − u_k), and Π_{k≠j} (u_j − u_k)
        for k, u_k in enumerate(nodes):
            if k != j:
                coeffs = [a - u_k * b for a, b in zip([0.0, *coeffs], [*coeffs, 0.0])]
                scale *= u_j - u_k
        weights.append(sum(c * m for c, m in zip(coeffs, moments)) / scale)
    return weights


def _exp_moments(h: float, p: int, eta: float = 0.0) -> list[float]:
    """m_k = ∫_0^h ω(u) u^k du, k < p, for ω(u) = (1+η) e^{(1+η)(u−h)}: the weight of the data term
    of the exponential integrator in λ: the ODE's for η = 0 (DPM-Solver++, Lu et al. 2022) and, for
    η > 0, that of the SDE solvers of the same paper (η = 1 is their SDE). With H = (1+η) h,
    m_k = k! G_k / (1+η)^k, G_0 = 1 − e^{−H}, G_k = H^k / k! − G_{k−1} (integration by parts)."""
    H = (1 + eta) * h
    g = -math.expm1(-H)
    moments = [g]
    for k in range(1, p):
        g = H ** k / math.factorial(k) - g
        moments.append(math.factorial(k) * g / (1 + eta) ** k)
    return moments


def _combine(weights: Sequence[float], tensors: Sequence[torch.Tensor]) -> torch.Tensor:
    out = tensors[0] * weights[0]
    for w, t in zip(weights[1:], tensors[1:]):
        out = out.add(t, alpha=w)
    return out


# --- one-step samplers -----------------------------------------------------------------------------

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
            x = add_noise(x, generator, s_noise * (sigma_hat ** 2 - sigma ** 2).sqrt())
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
def sample_ddim(denoiser, x, sigmas, *, extra_args=None, callback=None, generator=None, eta: float = 0.0,
                s_noise: float = 1.0):
    """DDIM (Song et al. 2021, eq. 12) in the σ view: x_next = x0 + σ_down·ε̂ + σ_up·z with
    ε̂ = (x − x0)/σ. η = 0 is deterministic (and equals Euler on the ODE); η = 1 is DDPM."""
    extra_args = extra_args or {}
    s = sigmas.tolist()
    for i in range(len(s) - 1):
        denoised = denoiser(x, sigmas[i], **extra_args)
        sigma_down, sigma_up = ancestral_step(s[i], s[i + 1], eta)
        x = add_noise(denoised + (x - denoised) * (sigma_down / s[i]), generator, sigma_up * s_noise)
        _call(callback, i, x, sigmas[i], sigmas[i + 1], denoised)
    return x


def sample_ddpm(denoiser, x, sigmas, *, extra_args=None, callback=None, generator=None):
    """Ancestral sampling with the DDPM posterior (Ho et al. 2020, Algorithm 2): DDIM with η = 1."""
    return sample_ddim(denoiser, x, sigmas, extra_args=extra_args, callback=callback,
                       generator=generator, eta=1.0)


def sample_euler_ancestral(denoiser, x, sigmas, *, extra_args=None, callback=None, generator=None,
                           eta: float = 1.0, s_noise: float = 1.0):
    """Ancestral Euler: an Euler step down to σ_down, then fresh noise σ_up (:func:`ancestral_step`).
    An Euler step to σ_down is exactly DDIM's, so this is DDIM with η (default 1, the DDPM posterior)."""
    return sample_ddim(denoiser, x, sigmas, extra_args=extra_args, callback=callback,
                       generator=generator, eta=eta, s_noise=s_noise)


# --- multistep samplers (solver state in local variables) -----------------------------------------

@torch.no_grad()
def sample_dpmpp_2m(denoiser, x, sigmas, *, extra_args=None, callback=None, generator=None):
    """DPM-Solver++(2M) (Lu et al. 2022, "DPM-Solver++", Algorithm 2) with α = 1 and λ = −log σ.
    The first step is first order (DDIM); the step to σ = 0 returns the denoised image."""
    extra_args = extra_args or {}
    s = sigmas.tolist()
    old_denoised, h_last = None, None
    for i in range(len(s) - 1):
        denoised = denoiser(x, sigmas[i], **extra_args)
        if s[i + 1] == 0:
            x = denoised
        else:
            h = math.log(s[i] / s[i + 1])
            d = denoised
            if old_denoised is not None:
                # D_i = (1 + 1/(2r)) x_θ(t_{i−1}) − 1/(2r) x_θ(t_{i−2}), r = h_{i−1}/h_i
                d = denoised + (denoised - old_denoised) * (h / (2 * h_last))
            # x̃_i = (σ_i/σ_{i−1}) x̃_{i−1} − α_i (e^{−h_i} − 1) D_i
            x = x * (s[i + 1] / s[i]) - d * math.expm1(-h)
            old_denoised, h_last = denoised, h
        _call(callback, i, x, sigmas[i], sigmas[i + 1], denoised)
    return x


# A multistep step more than this many times longer (in λ) than the previous one would extrapolate
# the polynomial far beyond its nodes; variable-step multistep methods are stable only for bounded
# step ratios (Hairer, Nørsett & Wanner, "Solving ODEs I", §III.5), so the method restarts at first
# order there. Smooth grids (Karras with ≥ 3 steps, log-SNR) never trigger it; the VP grids through
# t = 0, whose last step is long, do.
MAX_STEP_RATIO = 2.5


@torch.no_grad()
def _sample_dpmpp_multistep(denoiser, x, sigmas, *, order, eta, s_noise, extra_args, callback, generator):
    """DPM-Solver++(kM), with SDE noise of level η: the polynomial through the last ``order`` outputs
    (fewer at the start), integrated exactly against the η-weight of :func:`_exp_moments`;
    x_next = e^{−(1+η)h} x + Σ_j w_j D_j + σ_next (1 − e^{−2ηh})^{1/2} z, the SDE-DPM-Solver++
    step of Lu et al. 2022 for η = 1 (its first-order step is exactly DDPM's), the ODE for η = 0."""
    extra_args = extra_args or {}
    s = sigmas.tolist()
    lams, history = [], []  # newest first
    for i in range(len(s) - 1):
        denoised = denoiser(x, sigmas[i], **extra_args)
        if s[i + 1] == 0:
            x = denoised
        else:
            lam, h = -math.log(s[i]), math.log(s[i] / s[i + 1])
            if lams and abs(h) > MAX_STEP_RATIO * abs(lam - lams[0]):  # restart at first order
                lams, history = [], []
            lams, history = [lam, *lams][:order], [denoised, *history][:order]
            weights = _quadrature([l - lam for l in lams], _exp_moments(h, len(lams), eta))
            x = x * math.exp(-(1 + eta) * h) + _combine(weights, history)
            if eta > 0:
                x = add_noise(x, generator, s_noise * s[i + 1] * math.sqrt(-math.expm1(-2 * eta * h)))
        _call(callback, i, x, sigmas[i], sigmas[i + 1], denoised)
    return x


def sample_dpmpp_2m_sde(denoiser, x, sigmas, *, extra_args=None, callback=None, generator=None,
                        eta: float = 1.0, s_noise: float = 1.0):
    """SDE-DPM-Solver++(2M) (Lu et al. 2022, "DPM-Solver++"), with the linear term integrated exactly;
    η = 0 makes it a deterministic second-order multistep solver."""
    return _sample_dpmpp_multistep(denoiser, x, sigmas, order=2, eta=eta, s_noise=s_noise,
                                   extra_args=extra_args, callback=callback, generator=generator)


def sample_dpmpp_3m_sde(denoiser, x, sigmas, *, extra_args=None, callback=None, generator=None,
                        eta: float = 1.0, s_noise: float = 1.0):
    """Third-order multistep SDE-DPM-Solver++ (after Lu et al. 2022: the quadratic through the last
    three outputs, integrated exactly); the first two steps are of order 1 and 2.

    This is the third-order method: the data term is the exact integral of that quadratic against the
    η-weight (:func:`_exp_moments`), for every η; at η = 0 it is :func:`sample_dpmpp_3m` (measured orders
    in its docstring). k-diffusion's ``sample_dpmpp_3m_sde`` of the same name gives the second divided
    difference half the weight the quadratic needs (its ``phi_3`` term is half of the exact ``−2 phi_3``),
    which makes it second order and its images differ from these; the weights here are the exact ones on
    purpose, do not change them to match (``tests/test_samplers_multistep.py`` pins them).
    """
    return _sample_dpmpp_multistep(denoiser, x, sigmas, order=3, eta=eta, s_noise=s_noise,
                                   extra_args=extra_args, callback=callback, generator=generator)


def sample_dpmpp_3m(denoiser, x, sigmas, *, extra_args=None, callback=None, generator=None):
    """DPM-Solver++(3M) (Lu et al. 2022, "DPM-Solver++"): the deterministic third-order multistep solver.

    This is the third-order method: the quadratic through the last three denoiser outputs (in λ = −log σ)
    integrated exactly over the step. k-diffusion's same-named 3M sampler (``sample_dpmpp_3m_sde`` with
    η = 0) weighs the second divided difference by half and is second order, so images differ from it under
    the same name; the weights here are the exact ones on purpose, do not "fix" them to match.

    Measured by ``benchmarks/sampler_orders.py`` (σ from 20 to 0.02, error at σ_min against the exact
    solution, order log2(e_N / e_2N) for N = 16 → 32 → 64 → 128 → 256 on the karras grid):

        data                        dpmpp_3m                  half-weighted 3M          dpmpp_2m
        Gaussian (closed form)      3.29, 3.09, 3.03, 2.99    1.39, 1.69, 1.87, 1.94    2.15, 2.11, 2.05, 2.03
        two-Gaussian mixture (2-D)  3.37, 3.24, 3.06, 2.94    3.58, 1.69, 1.75, 1.91    2.39, 2.13, 2.07, 2.04

    The first two steps are of order 1 and 2; the O(h²) error the first one leaves is tiny (the denoiser
    hardly changes at σ_max) but shows on the exponential grid, whose first steps are longer, from 64
    steps on (mixture: 3.09, 3.23, 2.68, 2.54 there, and 3.11, 3.38, 3.18, 3.07 for the same third-order
    steps started from the exact solution).
    """
    return _sample_dpmpp_multistep(denoiser, x, sigmas, order=3, eta=0.0, s_noise=1.0,
                                   extra_args=extra_args, callback=callback, generator=generator)


def _unipc_weights(nodes: list[float], h: float) -> list[float]:
    """UniPC's weights on ``nodes`` (Zhao et al. 2023, "UniPC", UniP-p and UniC-p): with two or more
    unknown coefficients the order conditions make them the exact quadrature of the interpolating
    polynomial; with one, UniPC fixes a_1 = 1/2, i.e. the first moment is B(h)·h/2 with the "bh2"
    choice B(h) = 1 − e^{−h} (data prediction). UniP-2 with bh2 is DPM-Solver++(2M)."""
    moments = _exp_moments(h, len(nodes))
    if len(nodes) == 2:
        moments[1] = h * moments[0] / 2
    return _quadrature(nodes, moments)


@torch.no_grad()
def sample_unipc(denoiser, x, sigmas, *, extra_args=None, callback=None, generator=None, order: int = 2):
    """UniPC-bh2 (Zhao et al. 2023, "UniPC", data prediction): the UniP-p predictor
    (p = ``order``, 1-3) and the UniC corrector, which reuses the evaluation at the predicted point
    for the next step (one evaluation per step, order p + 1). No corrector after the last step."""
    if order not in (1, 2, 3):
        from kuosan.errors import KuosanError

        raise KuosanError(f"UniPC order must be 1, 2 or 3, got {order}")
    extra_args = extra_args or {}
    s, n = sigmas.tolist(), len(sigmas) - 1
    lams, history = [], []  # newest first
    denoised = denoiser(x, sigmas[0], **extra_args)
    for i in range(n):
        denoised_next = None
        if s[i + 1] == 0:
            x_next = denoised
        else:
            lam, h = -math.log(s[i]), math.log(s[i] / s[i + 1])
            lams, history = [lam, *lams][:order], [denoised, *history][:order]
            nodes = [l - lam for l in lams]
            x_next = x * (s[i + 1] / s[i]) + _combine(_unipc_weights(nodes, h), history)  # UniP-p
            if i + 1 < n:  # UniC-p: one more node, at the predicted point u = h
                denoised_next = denoiser(x_next, sigmas[i + 1], **extra_args)
                x_next = x * (s[i + 1] / s[i]) + _combine(_unipc_weights(nodes + [h], h),
                                                           history + [denoised_next])
        x = x_next
        _call(callback, i, x, sigmas[i], sigmas[i + 1], denoised)
        denoised = denoised_next
    return x


@torch.no_grad()
def sample_lms(denoiser, x, sigmas, *, extra_args=None, callback=None, generator=None, order: int = 4):
    """Linear multistep (Adams-Bashforth; Hairer, Nørsett & Wanner, "Solving ODEs I", §III.1) on the
    probability-flow ODE dx/dσ = (x − D)/σ (EDM, eq. 3): the Lagrange polynomial through the last
    ``order`` slopes, integrated exactly in σ over the step."""
    extra_args = extra_args or {}
    s = sigmas.tolist()
    nodes_sigma, slopes = [], []  # newest first
    for i in range(len(s) - 1):
        denoised = denoiser(x, sigmas[i], **extra_args)
        nodes_sigma = [s[i], *nodes_sigma][:order]
        slopes = [to_d(x, s[i], denoised), *slopes][:order]
        step = s[i + 1] - s[i]
        moments = [step ** (k + 1) / (k + 1) for k in range(len(slopes))]
        x = x + _combine(_quadrature([t - s[i] for t in nodes_sigma], moments), slopes)
        _call(callback, i, x, sigmas[i], sigmas[i + 1], denoised)
    return x


@torch.no_grad()
def sample_consistency(denoiser, x, sigmas, *, extra_args=None, callback=None, generator=None,
                       points: Sequence[float] | None = None, rho: float = 7.0):
    """Multistep consistency sampling (Song et al. 2023, "Consistency Models", Algorithm 1) of a consistency
    function f (``kuosan distill``'s student, f(x, σ_min) = x): x <- f(x, σ_max), then for each re-noising
    point τ, x <- f(x + τ·z, τ); one evaluation a step, ``len(sigmas) − 1`` steps. The paper adds
    sqrt(τ² − σ_min²)·z; kuosan treats f's output as the clean image, as every sampler here treats D's.

    Of the grid only its ends count: σ_max = sigmas[0], σ_min its last nonzero level; the re-noising points
    are ``points`` (steps − 1 values), else :func:`kuosan.diffusion.consistency.renoise_levels` with ``rho``.
    A grid that ends above 0 ends re-noised to that level (a partial step of an edit). On a diffusion model's
    denoiser this is no sampler: re-noising its posterior means loses variance (see CONSISTENCY_SAMPLERS)."""
    extra_args = extra_args or {}
    s = sigmas.tolist()
    if any(b >= a for a, b in zip(s, s[1:])):
        from kuosan.errors import KuosanError

        raise KuosanError("the consistency sampler needs a decreasing σ grid; it cannot run the ODE backwards "
                          "(inversion needs an ODE sampler and a diffusion model)")
    levels = renoise_levels(len(s) - 1, s[0], s[-2] if s[-1] == 0 else s[-1], points=points, rho=rho)
    denoised = x
    for i, (sigma, sigma_next) in enumerate(zip(levels, [*levels[1:], s[-1]])):
        if i:  # Algorithm 1, line 5: back to noise level τ, with fresh noise
            x = add_noise(denoised, generator, sigma)
        denoised = denoiser(x, sigmas.new_tensor(sigma), **extra_args)
        _call(callback, i, x, sigmas.new_tensor(sigma), sigmas.new_tensor(sigma_next), denoised)
    return add_noise(denoised, generator, s[-1])


SAMPLERS: dict[str, Callable] = {
    "euler": sample_euler,
    "heun": sample_heun,
    "ddim": sample_ddim,
    "ddpm": sample_ddpm,
    "euler_ancestral": sample_euler_ancestral,
    "lms": sample_lms,
    "dpmpp_2m": sample_dpmpp_2m,
    "dpmpp_2m_sde": sample_dpmpp_2m_sde,
    "dpmpp_3m": sample_dpmpp_3m,
    "dpmpp_3m_sde": sample_dpmpp_3m_sde,
    "unipc": sample_unipc,
    "consistency": sample_consistency,
}

# Samplers that draw fresh noise (with their default options).
STOCHASTIC = ("ddpm", "euler_ancestral", "dpmpp_2m_sde", "dpmpp_3m_sde", "consistency")

# Samplers of consistency functions f(x, σ) -> x at σ_min (kuosan distill's students), not of denoisers.
CONSISTENCY_SAMPLERS = ("consistency",)

# Network evaluations per step; the last step of a second-order sampler costs one. Every other
# sampler here makes one evaluation a step (UniPC's corrector reuses the next step's evaluation).
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
