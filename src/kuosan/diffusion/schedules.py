"""Noise-level schedules in the σ view (a noisy image is ``x = x0 + sigma * n``).

``get_sigmas(kind, n, ...)`` returns ``n + 1`` float64 values, strictly decreasing, the last one 0:
the sampler's grid. Discrete DDPM-style models are described by a :class:`DiscreteVP` schedule
(β per timestep), which also maps a continuous σ back to a fractional timestep for the network.

Notation (DDPM, Ho et al. 2020; EDM, Karras et al. 2022, Table 1):
    beta_t       per-step variance of the forward Markov chain, t = 0..T-1
    alpha_bar_t  prod_{s<=t} (1 - beta_s): the VP signal fraction
    sigma_t      sqrt((1 - alpha_bar_t) / alpha_bar_t): the same state in the σ (VE) view,
                 since x_vp = sqrt(alpha_bar) * (x0 + sigma * n)
"""

from __future__ import annotations

import math

import numpy as np
import torch

from kuosan.errors import KuosanError

__all__ = ["DiscreteVP", "get_sigmas", "SCHEDULES", "append_zero"]


def append_zero(sigmas: torch.Tensor) -> torch.Tensor:
    return torch.cat([sigmas, sigmas.new_zeros(1)])


class DiscreteVP:
    """A discrete variance-preserving schedule of ``timesteps`` β values (DDPM)."""

    def __init__(self, beta_schedule: str = "linear", timesteps: int = 1000,
                 beta_start: float = 1e-4, beta_end: float = 0.02):
        if timesteps < 2:
            raise KuosanError(f"timesteps must be at least 2, got {timesteps}")
        self.beta_schedule, self.timesteps = beta_schedule, timesteps
        if beta_schedule == "linear":  # DDPM, Ho et al. 2020, §4
            betas = torch.linspace(beta_start, beta_end, timesteps, dtype=torch.float64)
            alpha_bar = torch.cumprod(1 - betas, 0)
        elif beta_schedule == "cosine":  # Improved DDPM, Nichol & Dhariwal 2021, eq. 17
            s = 0.008
            t = torch.arange(timesteps + 1, dtype=torch.float64) / timesteps
            f = torch.cos((t + s) / (1 + s) * math.pi / 2) ** 2
            betas = (1 - f[1:] / f[:-1]).clamp(max=0.999)
            alpha_bar = torch.cumprod(1 - betas, 0)
        else:
            raise KuosanError(f"unknown beta schedule {beta_schedule!r}; use 'linear' or 'cosine'")
        self.alpha_bar = alpha_bar
        self.sigmas = ((1 - alpha_bar) / alpha_bar).sqrt()  # increasing in t
        self.log_sigmas = self.sigmas.log()

    @property
    def sigma_min(self) -> float:
        return float(self.sigmas[0])

    @property
    def sigma_max(self) -> float:
        return float(self.sigmas[-1])

    def sigma_to_t(self, sigma: torch.Tensor) -> torch.Tensor:
        """Fractional timestep whose σ is ``sigma``, by linear interpolation in log σ."""
        log_sigma = sigma.to(torch.float64).clamp(min=self.sigma_min, max=self.sigma_max).log()
        log_sigmas = self.log_sigmas.to(log_sigma.device)
        hi = torch.searchsorted(log_sigmas, log_sigma.contiguous()).clamp(1, self.timesteps - 1)
        lo = hi - 1
        w = (log_sigma - log_sigmas[lo]) / (log_sigmas[hi] - log_sigmas[lo])
        return (lo + w.clamp(0, 1)).to(sigma.dtype)

    def t_to_sigma(self, t: torch.Tensor) -> torch.Tensor:
        t = t.to(torch.float64)
        lo = t.floor().long().clamp(0, self.timesteps - 1)
        hi = (lo + 1).clamp(max=self.timesteps - 1)
        w = t - lo
        log_sigmas = self.log_sigmas.to(t.device)
        return ((1 - w) * log_sigmas[lo] + w * log_sigmas[hi]).exp()

    def timesteps_for(self, n: int, spacing: str = "linspace") -> torch.Tensor:
        """``n`` decreasing timesteps of the discrete chain, as float64 integers (diffusers' spacings,
        computed in numpy as diffusers does, so that ties round the same way):

        linspace: round(linspace(0, T-1, n)) reversed, from T-1 down to 0 (for n = 1 only T-1; diffusers
                  would give 0, the cleanest step);
        leading:  0, k, 2k, … with k = T // n, reversed (DDIM, Song et al. 2021; no ``steps_offset``);
        trailing: round(arange(T, 0, -T/n)) - 1, which always starts at the last step T-1
                  (Lin et al. 2024, Table 2).
        """
        T = self.timesteps
        if not 1 <= n <= T:
            raise KuosanError(f"steps must be between 1 and {T} for this schedule, got {n}")
        if spacing == "linspace":
            t = np.linspace(0, T - 1, n).round()[::-1] if n > 1 else np.array([T - 1.0])
        elif spacing == "leading":
            t = (np.arange(n) * (T // n)).round()[::-1].astype(np.float64)
        elif spacing == "trailing":
            t = np.round(np.arange(T, 0, -T / n)) - 1
        else:
            raise KuosanError(f"unknown timestep spacing {spacing!r}; use linspace, leading or trailing")
        return torch.from_numpy(t.copy())


def _karras(n, sigma_min, sigma_max, rho=7.0):
    """EDM, Karras et al. 2022, eq. 5."""
    ramp = torch.linspace(0, 1, n, dtype=torch.float64)
    inv_rho_min, inv_rho_max = sigma_min ** (1 / rho), sigma_max ** (1 / rho)
    return (inv_rho_max + ramp * (inv_rho_min - inv_rho_max)) ** rho


def _exponential(n, sigma_min, sigma_max):
    """Evenly spaced in log σ."""
    return torch.linspace(math.log(sigma_max), math.log(sigma_min), n, dtype=torch.float64).exp()


def _log_snr(n, sigma_min, sigma_max):
    """Evenly spaced in log-SNR λ = -2 log σ (DPM-Solver, Lu et al. 2022, §3.3): the same grid
    as ``exponential``, kept under its own name because schedulers elsewhere call it that."""
    return _exponential(n, sigma_min, sigma_max)


def _polyexponential(n, sigma_min, sigma_max, rho=1.0):
    ramp = torch.linspace(1, 0, n, dtype=torch.float64) ** rho
    return (ramp * (math.log(sigma_max) - math.log(sigma_min)) + math.log(sigma_min)).exp()


SCHEDULES = ("karras", "exponential", "log-snr", "polyexponential", "vp-linear", "vp-cosine")


def get_sigmas(kind: str, n: int, sigma_min: float | None = None, sigma_max: float | None = None,
               **kw) -> torch.Tensor:
    """``n + 1`` float64 noise levels for ``n`` sampler steps, decreasing and ending in 0.

    kinds: ``karras`` (keyword ``rho``, default 7), ``exponential``, ``log-snr``,
    ``polyexponential`` (``rho``), and the discrete VP schedules ``vp-linear`` / ``vp-cosine`` at the
    timesteps chosen by ``spacing`` (linspace | leading | trailing; keyword ``timesteps``, default
    1000). For ``vp-*`` kinds ``sigma_min``/``sigma_max`` are ignored: the schedule defines them.
    """
    if not isinstance(n, int) or n < 1:
        raise KuosanError(f"the number of steps must be a positive integer, got {n!r}")
    if kind.startswith("vp-"):
        vp = kw.get("vp") or DiscreteVP(kind[3:], kw.get("timesteps", 1000))
        t = vp.timesteps_for(n, kw.get("spacing", "linspace"))
        return append_zero(vp.t_to_sigma(t))
    if sigma_min is None or sigma_max is None:
        raise KuosanError(f"schedule {kind!r} needs sigma_min and sigma_max")
    if not 0 < sigma_min < sigma_max:
        raise KuosanError(f"need 0 < sigma_min < sigma_max, got {sigma_min} and {sigma_max}")
    if n == 1:
        return torch.tensor([sigma_max, 0.0], dtype=torch.float64)
    if kind == "karras":
        sigmas = _karras(n, sigma_min, sigma_max, kw.get("rho", 7.0))
    elif kind == "exponential":
        sigmas = _exponential(n, sigma_min, sigma_max)
    elif kind == "log-snr":
        sigmas = _log_snr(n, sigma_min, sigma_max)
    elif kind == "polyexponential":
        sigmas = _polyexponential(n, sigma_min, sigma_max, kw.get("rho", 1.0))
    else:
        raise KuosanError(f"unknown schedule {kind!r}; choose one of {', '.join(SCHEDULES)}")
    return append_zero(sigmas)
