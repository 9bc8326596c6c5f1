import os

import pytest
import torch

# One thread: tests run beside other processes, and oversubscribed OpenMP threads spin-wait.
torch.set_num_threads(1)


class GaussianDenoiser:
    """The exact denoiser of data x0 ~ N(mu, s²) per dimension: D(x; σ) = mu + s²/(s²+σ²)·(x − mu)."""

    def __init__(self, mu: float = 0.3, s: float = 0.5):
        self.mu, self.s = mu, s

    def __call__(self, x, sigma, **kw):
        sigma = torch.as_tensor(sigma, dtype=x.dtype, device=x.device)
        if sigma.ndim == 1:
            sigma = sigma.reshape(-1, *([1] * (x.ndim - 1)))
        return self.mu + self.s ** 2 / (self.s ** 2 + sigma ** 2) * (x - self.mu)

    def ode_solution(self, x_start, sigma_start, sigma_end):
        """Closed-form probability-flow ODE solution: x(σ) − mu ∝ sqrt(s² + σ²)."""
        ratio = ((self.s ** 2 + sigma_end ** 2) / (self.s ** 2 + sigma_start ** 2)) ** 0.5
        return self.mu + (x_start - self.mu) * ratio


@pytest.fixture
def gaussian():
    return GaussianDenoiser()
