"""Training objectives: each draws σ for a batch, noises the data, calls the denoiser and returns
a per-sample loss (shape [B]). All are written on the denoiser's output D(x0 + σn; σ) against
x0, with a weight λ(σ) chosen so that the loss equals the parameterisation's own target loss:
for any preconditioner, F − F_target = (D − x0) / c_out (EDM, Karras et al. 2022, eq. 8).
"""

from __future__ import annotations

import torch

from kuosan.diffusion.flow import FlowPrecond, flow_loss
from kuosan.diffusion.precond import EDMPrecond, Precond, _DiscretePrecond
from kuosan.rng import randn

__all__ = ["edm_loss", "ddpm_loss", "flow_loss", "loss_for"]


def _per_sample_mse(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return (a - b).square().flatten(1).mean(1)


def edm_loss(precond: EDMPrecond, x0: torch.Tensor, class_labels=None, *, generator=None,
             p_mean: float = -1.2, p_std: float = 1.2) -> torch.Tensor:
    """EDM loss (Karras et al. 2022, eq. 8 and Table 1): ln σ ~ N(P_mean, P_std²),
    λ(σ) = (σ² + σ_data²) / (σ · σ_data)²."""
    b = x0.shape[0]
    sigma = (randn((b,), generator, device=x0.device) * p_std + p_mean).exp()
    noise = randn(x0.shape, generator, device=x0.device)
    sd = precond.sigma_data
    weight = (sigma ** 2 + sd ** 2) / (sigma * sd) ** 2
    denoised = precond(x0 + noise * sigma.reshape(-1, 1, 1, 1), sigma, class_labels)
    return weight * _per_sample_mse(denoised, x0)


def ddpm_loss(precond: _DiscretePrecond, x0: torch.Tensor, class_labels=None, *, generator=None,
              min_snr_gamma: float | None = None) -> torch.Tensor:
    """DDPM loss on uniformly drawn discrete timesteps (Ho et al. 2020, eq. 14), in the
    parameterisation of ``precond`` (ε, v or x0). With ``min_snr_gamma`` the weight in x0 space is
    min(SNR, γ) with SNR = 1/σ² (Min-SNR, Hang et al. 2023, eq. 7–9): the same for ε and v."""
    b = x0.shape[0]
    schedule = precond.schedule
    if isinstance(generator, (list, tuple)):
        u = torch.stack([torch.rand((), generator=g) for g in generator])
    else:
        u = torch.rand((b,), generator=generator)
    t = (u * schedule.timesteps).long().clamp(max=schedule.timesteps - 1)
    sigma = schedule.sigmas[t].to(device=x0.device, dtype=torch.float32)
    noise = randn(x0.shape, generator, device=x0.device)
    denoised = precond(x0 + noise * sigma.reshape(-1, 1, 1, 1), sigma, class_labels)
    if min_snr_gamma is not None:
        weight = torch.clamp(1 / sigma ** 2, max=min_snr_gamma)
    else:
        _, c_out, _ = precond.scalings(sigma)
        weight = 1 / c_out.square().clamp(min=1e-12)
    return weight * _per_sample_mse(denoised, x0)


def loss_for(precond: Precond):
    """The default objective of a preconditioner: EDM's loss for EDM, flow matching's for flow,
    DDPM's for the others."""
    if isinstance(precond, FlowPrecond):
        return flow_loss
    return edm_loss if isinstance(precond, EDMPrecond) else ddpm_loss
