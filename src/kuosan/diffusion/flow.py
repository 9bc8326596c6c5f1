"""Flow matching / rectified flow in kuosan's σ view.

The straight path between data and noise (rectified flow, Liu et al. 2023, eq. 1; flow matching with
optimal-transport paths, Lipman et al. 2023, §4.1; SD3, Esser et al. 2024, §3):

    x_t = (1 − t) · x0 + t · n,   t ∈ [0, 1],   n ~ N(0, I),

and a network that predicts the velocity dx_t/dt = n − x0. Dividing by (1 − t) puts x_t in the σ view:

    x = x_t / (1 − t) = x0 + σ · n   with   σ = t / (1 − t),   t = σ / (1 + σ),   1 − t = 1 / (1 + σ).

Notation (paper → code):
    t            flow time (0 = data, 1 = noise)          ``t``, also the network's ``c_noise``
    x_t          point on the straight path               ``x_t = x / (1 + σ)``
    v̂ = F(x_t; t) the network's velocity estimate          ``F_x``
    σ            kuosan's noise level                     ``sigma = t / (1 − t)``

Preconditioning, derived (EDM, Karras et al. 2022, eq. 7: D(x; σ) = c_skip·x + c_out·F(c_in·x; c_noise)):
    The denoiser is the path's own estimate of x0: x_t − t·v̂ = (1 − t)·x0 + t·n − t·(n − x0) = x0 when
    v̂ is exact. With x_t = x / (1 + σ) and t = σ / (1 + σ):

        D(x; σ) = x / (1 + σ) − σ / (1 + σ) · F(x / (1 + σ); t)

    so  c_skip = 1 / (1 + σ) = 1 − t,   c_out = −σ / (1 + σ) = −t,   c_in = 1 / (1 + σ) = 1 − t,   c_noise = t.
    (The network's embedding multiplies c_noise by noise_scale = 1000, a DDPM-like timestep range.)

Loss: F − F_target = (D − x0) / c_out (EDM eq. 8) makes the velocity MSE ‖F − (n − x0)‖² equal to the
denoiser loss weighted by λ(σ) = 1 / t² = ((1 + σ) / σ)². :func:`flow_loss` computes the velocity form
directly (no division by a small t), with t drawn logit-normal (SD3 §3.1, m = 0, s = 1) or uniform.

σ range: sampling cannot start at t = 1 (σ = ∞). We use EDM's σ_max = 80 (t_max = 80/81 ≈ 0.988) and
σ_min = 0.002 (t_min ≈ 0.002): the data-to-noise ratio at the start, σ_data/σ_max ≈ 0.006 for data of
std 0.5, is the same whatever the parameterisation, so the same grids (karras, …) serve both.
"""

from __future__ import annotations

from typing import Callable

import torch

from kuosan.diffusion.precond import FlowPrecond, sigma_to_t, t_to_sigma  # noqa: F401 (part of this module's API)
from kuosan.errors import KuosanError
from kuosan.rng import randn

__all__ = ["FlowPrecond", "flow_loss", "sample_flow_euler_t", "sigma_to_t", "t_to_sigma", "TIME_DISTS"]

TIME_DISTS = ("logit-normal", "uniform")


def _draw_t(b: int, generator, device, time_dist: str, loc: float, scale: float) -> torch.Tensor:
    if time_dist == "logit-normal":  # SD3, Esser et al. 2024, §3.1: t = sigmoid(u), u ~ N(m, s²)
        return torch.sigmoid(randn((b,), generator, device=device) * scale + loc)
    if time_dist == "uniform":  # rectified flow, Liu et al. 2023, eq. 1
        if isinstance(generator, (list, tuple)):
            return torch.stack([torch.rand((), generator=g) for g in generator]).to(device)
        cpu = generator is None or generator.device.type == "cpu"
        return torch.rand((b,), generator=generator, device="cpu" if cpu else device).to(device)
    raise KuosanError(f"unknown flow time distribution {time_dist!r}; choose one of {', '.join(TIME_DISTS)}")


def flow_loss(precond: FlowPrecond, x0: torch.Tensor, class_labels=None, *, generator=None,
              time_dist: str = "logit-normal", loc: float = 0.0, scale: float = 1.0) -> torch.Tensor:
    """Conditional flow-matching loss ‖v̂(x_t; t) − (n − x0)‖² per sample (Lipman et al. 2023, §4.1,
    optimal-transport path with σ_min = 0; rectified flow, Liu et al. 2023, eq. 1), t drawn ``logit-normal`` (m = ``loc``,
    s = ``scale``) or ``uniform``. Equals the denoiser loss with λ(σ) = 1/t² (see module docstring)."""
    b = x0.shape[0]
    t = _draw_t(b, generator, x0.device, time_dist, loc, scale)
    noise = randn(x0.shape, generator, device=x0.device)
    t_ = t.reshape(-1, *([1] * (x0.ndim - 1)))
    x_t = (1 - t_) * x0 + t_ * noise
    v = precond.velocity(x_t, t, class_labels)
    return (v - (noise - x0)).square().flatten(1).mean(1)


@torch.no_grad()
def sample_flow_euler_t(velocity_fn: Callable, x_T: torch.Tensor, ts, *, callback=None) -> torch.Tensor:
    """Euler's method on dx_t/dt = v(x_t, t) from ``ts[0]`` down to ``ts[-1]`` (a decreasing grid, usually
    ending at 0), in flow time. A reference for tests: with ts = σ/(1+σ) it matches kuosan's σ-view Euler
    step for step, x_σ = (1 + σ)·x_t. ``callback`` gets ``{"i", "x", "t", "t_next"}`` after each step."""
    x = x_T
    for i in range(len(ts) - 1):
        t, t_next = ts[i], ts[i + 1]
        v = velocity_fn(x, torch.as_tensor(t, dtype=torch.float32, device=x.device).expand(x.shape[0]))
        x = x + (t_next - t) * v
        if callback is not None:
            callback({"i": i, "x": x, "t": t, "t_next": t_next})
    return x
