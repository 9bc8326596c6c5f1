"""Preconditioners: each wraps a network ``F(x, c_noise, class_labels)`` into a denoiser
``D(x, sigma, class_labels=None) -> x0_hat`` (EDM, Karras et al. 2022, eq. 7):

    D(x; σ) = c_skip(σ) · x + c_out(σ) · F(c_in(σ) · x; c_noise(σ))

Only these classes know the parameterisation. Each ``scalings`` is one row of EDM's Table 1
(or its analogue for v- and x0-prediction); the rest of kuosan sees denoisers only.
Scalings are float32; the network may run in lower precision inside autocast.
"""

from __future__ import annotations

import torch
from torch import nn

from kuosan.diffusion.consistency import boundary_scalings
from kuosan.diffusion.schedules import DiscreteVP
from kuosan.errors import KuosanError

__all__ = ["Precond", "EDMPrecond", "EpsPrecond", "VPrecond", "X0Precond", "FlowPrecond", "GANPrecond", "sigma_to_t",
           "t_to_sigma", "build_precond", "PRECONDS", "ConsistencyPrecond", "ConsistencyFlowPrecond"]


def _expand(sigma: torch.Tensor | float, x: torch.Tensor) -> torch.Tensor:
    """σ as float32 of shape [B, 1, 1, 1] (from a scalar or [B])."""
    sigma = torch.as_tensor(sigma, dtype=torch.float32, device=x.device)
    if sigma.ndim == 0:
        sigma = sigma.expand(x.shape[0])
    return sigma.reshape(-1, *([1] * (x.ndim - 1)))


class Precond(nn.Module):
    """Base: subclasses define ``scalings(sigma) -> (c_skip, c_out, c_in)`` and ``noise_cond(sigma)``, and
    ``kind``, their name in :data:`PRECONDS` (what ``--diffusion.precond`` and config.json call them)."""

    kind: str = ""
    sigma_data: float = 1.0

    def __init__(self, net: nn.Module):
        super().__init__()
        self.net = net

    def scalings(self, sigma: torch.Tensor):
        raise NotImplementedError

    def noise_cond(self, sigma: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    @property
    def sigma_min(self) -> float:
        return 0.002

    @property
    def sigma_max(self) -> float:
        return 80.0

    def forward(self, x: torch.Tensor, sigma, class_labels: torch.Tensor | None = None) -> torch.Tensor:
        x = x.to(torch.float32)
        sigma = _expand(sigma, x)
        c_skip, c_out, c_in = self.scalings(sigma)
        F_x = self.net(c_in * x, self.noise_cond(sigma.flatten()), class_labels)
        return c_skip * x + c_out * F_x.to(torch.float32)


class EDMPrecond(Precond):
    """EDM, Karras et al. 2022, Table 1 ("Ours" column)."""

    kind = "edm"

    def __init__(self, net: nn.Module, sigma_data: float = 0.5, sigma_min: float = 0.002,
                 sigma_max: float = 80.0):
        super().__init__(net)
        self.sigma_data, self._sigma_min, self._sigma_max = sigma_data, sigma_min, sigma_max

    sigma_min = property(lambda self: self._sigma_min)
    sigma_max = property(lambda self: self._sigma_max)

    def scalings(self, sigma):
        sd2 = self.sigma_data ** 2
        c_skip = sd2 / (sigma ** 2 + sd2)
        c_out = sigma * self.sigma_data / (sigma ** 2 + sd2).sqrt()
        c_in = 1 / (sigma ** 2 + sd2).sqrt()
        return c_skip, c_out, c_in

    def noise_cond(self, sigma):
        return sigma.log() / 4


class _DiscretePrecond(Precond):
    """Shared by the DDPM-style parameterisations: the network is conditioned on the (fractional)
    timestep of a :class:`DiscreteVP` schedule, and sees the VP-scaled input x / sqrt(1 + σ²)."""

    sigma_data = 1.0

    def __init__(self, net: nn.Module, schedule: DiscreteVP):
        super().__init__(net)
        self.schedule = schedule

    sigma_min = property(lambda self: self.schedule.sigma_min)
    sigma_max = property(lambda self: self.schedule.sigma_max)

    def noise_cond(self, sigma):
        return self.schedule.sigma_to_t(sigma).to(torch.float32)


class EpsPrecond(_DiscretePrecond):
    """ε-prediction, DDPM (Ho et al. 2020); EDM Table 1, "VP" column: D = x - σ·F."""

    kind = "eps"

    def scalings(self, sigma):
        return torch.ones_like(sigma), -sigma, 1 / (sigma ** 2 + 1).sqrt()


class VPrecond(_DiscretePrecond):
    """v-prediction (Salimans & Ho 2022, §4 and Appendix D), v = α·ε − σ_vp·x0 with
    α = 1/sqrt(1+σ²), σ_vp = σ/sqrt(1+σ²), hence x0 = α·x_vp − σ_vp·v."""

    kind = "v"

    def scalings(self, sigma):
        return 1 / (sigma ** 2 + 1), -sigma / (sigma ** 2 + 1).sqrt(), 1 / (sigma ** 2 + 1).sqrt()


class X0Precond(_DiscretePrecond):
    """x0-prediction: the network outputs the clean image directly."""

    kind = "x0"

    def scalings(self, sigma):
        return torch.zeros_like(sigma), torch.ones_like(sigma), 1 / (sigma ** 2 + 1).sqrt()


PRECONDS = ("edm", "eps", "v", "x0", "flow", "gan", "consistency", "consistency-flow")


def sigma_to_t(sigma):
    """t = σ / (1 + σ)."""
    return sigma / (1 + sigma)


def t_to_sigma(t):
    """σ = t / (1 − t)."""
    return t / (1 - t)


class FlowPrecond(Precond):
    """Flow matching / rectified flow: a velocity-predicting network as a denoiser (c_skip = c_in = 1 − t,
    c_out = −t, c_noise = t with t = σ / (1 + σ); derived in :mod:`kuosan.diffusion.flow`)."""

    kind = "flow"

    def __init__(self, net: nn.Module, sigma_min: float = 0.002, sigma_max: float = 80.0):
        super().__init__(net)
        self._sigma_min, self._sigma_max = sigma_min, sigma_max

    sigma_min = property(lambda self: self._sigma_min)
    sigma_max = property(lambda self: self._sigma_max)

    def scalings(self, sigma):
        t = sigma_to_t(sigma)
        return 1 - t, -t, 1 - t

    def noise_cond(self, sigma):
        return sigma_to_t(sigma)

    def velocity(self, x_t: torch.Tensor, t: torch.Tensor, class_labels: torch.Tensor | None = None) -> torch.Tensor:
        """The network's velocity v̂(x_t; t) on the straight path (t of shape [B]), as float32."""
        return self.net(x_t.to(torch.float32), t.to(torch.float32), class_labels).to(torch.float32)


class GANPrecond(Precond):
    """A GAN generator as a one-step denoiser: D(x; σ) = G(x / σ), i.e. c_skip = 0, c_out = 1, c_in = 1/σ.

    The sampler starts from x = σ_max · z, z ~ N(0, I), so D(x; σ_max) = G(z), and one Euler step from σ_max to 0
    returns x + (0 − σ_max)(x − D)/σ_max = D: one network evaluation an image (the checkpoint's ``sample``
    section: euler, 1 step). The generator was never trained at other noise levels, so a call at any σ other
    than σ_max (a multi-step sampler, img2img) is refused rather than answered with a meaningless image."""

    kind = "gan"

    def __init__(self, net: nn.Module, sigma_max: float = 1.0):
        super().__init__(net)
        self._sigma_max = sigma_max

    sigma_max = property(lambda self: self._sigma_max)

    def scalings(self, sigma):
        return torch.zeros_like(sigma), torch.ones_like(sigma), 1 / sigma

    def noise_cond(self, sigma):
        return sigma

    def forward(self, x, sigma, class_labels=None):
        s = _expand(sigma, x)
        if not torch.allclose(s, torch.full_like(s, self._sigma_max), rtol=1e-5, atol=0):
            raise KuosanError(f"a GAN maps noise at σ_max = {self._sigma_max:g} to an image in one network "
                              "evaluation; sample it with one step (its checkpoint's default: euler, 1 step)")
        return super().forward(x, s.flatten(), class_labels)


class ConsistencyPrecond(EDMPrecond):
    """A consistency model over EDM's parameterisation, f(x, σ_min) = x exactly (Song et al. 2023, Appendix C;
    the maths in :mod:`kuosan.diffusion.consistency`). A student of ``kuosan distill``."""

    kind = "consistency"

    def scalings(self, sigma):
        return boundary_scalings(super().scalings, sigma, self.sigma_min)


class ConsistencyFlowPrecond(FlowPrecond):
    """A consistency model over flow matching's parameterisation, f(x, σ_min) = x exactly
    (:mod:`kuosan.diffusion.consistency`)."""

    kind = "consistency-flow"

    def scalings(self, sigma):
        return boundary_scalings(super().scalings, sigma, self.sigma_min)


def build_precond(kind: str, net: nn.Module, *, sigma_data: float = 0.5, beta_schedule: str = "linear",
                  timesteps: int = 1000, sigma_min: float = 0.002, sigma_max: float = 80.0) -> Precond:
    """The preconditioner named ``kind`` (one of :data:`PRECONDS`) around ``net``."""
    if kind == "edm":
        return EDMPrecond(net, sigma_data, sigma_min, sigma_max)
    if kind == "flow":
        return FlowPrecond(net, sigma_min, sigma_max)
    if kind == "consistency":
        return ConsistencyPrecond(net, sigma_data, sigma_min, sigma_max)
    if kind == "consistency-flow":
        return ConsistencyFlowPrecond(net, sigma_min, sigma_max)
    if kind == "gan":
        return GANPrecond(net, sigma_max)
    cls = {"eps": EpsPrecond, "v": VPrecond, "x0": X0Precond}.get(kind)
    if cls is None:
        raise KuosanError(f"unknown parameterisation {kind!r}; choose one of {', '.join(PRECONDS)}")
    return cls(net, DiscreteVP(beta_schedule, timesteps))
