"""Exponential moving average of the weights (Polyak averaging; used by DDPM, Ho et al. 2020, §4)."""

from __future__ import annotations

import copy

import torch
from torch import nn


class EMA:
    """A shadow copy of a module whose parameters follow ``p_ema ← d·p_ema + (1 − d)·p``.

    The decay warms up as d_t = min(decay, (1 + t) / (10 + t)), so early averages are not
    dominated by the random initialisation. With ``gamma``, the decay is EDM2's power function
    d_t = (1 − 1/(t+1))^(γ+1) (Karras et al. 2024, §3): the average always covers the same share of the
    steps so far (relative width σ_rel, :func:`kuosan.training.posthoc_ema.sigma_rel_to_gamma`), so it suits
    a run whose length is not known in advance. Buffers are copied as they are.
    """

    def __init__(self, model: nn.Module, decay: float, gamma: float | None = None):
        self.decay, self.gamma = decay, gamma
        self.module = copy.deepcopy(model).eval().requires_grad_(False)

    def decay_at(self, step: int) -> float:
        if self.gamma is not None:  # power function: β(t) = (1 − 1/t)^(γ+1), t = step + 1 (EDM2, §3)
            return (1.0 - 1.0 / (step + 1)) ** (self.gamma + 1)
        return min(self.decay, (1 + step) / (10 + step))

    @torch.no_grad()
    def update(self, model: nn.Module, step: int) -> None:
        d = self.decay_at(step)
        ema_params = list(self.module.parameters())
        params = [p.detach() for p in model.parameters()]
        torch._foreach_lerp_(ema_params, params, 1 - d)
        for b_ema, b in zip(self.module.buffers(), model.buffers()):
            b_ema.copy_(b)

    def state_dict(self):
        return self.module.state_dict()

    def load_state_dict(self, state):
        self.module.load_state_dict(state)
