import importlib.util
import os
from pathlib import Path

import pytest
import torch

# One thread: tests run beside other processes, and oversubscribed OpenMP threads spin-wait.
torch.set_num_threads(1)
# Sampling's default backend ("auto") exports each new network to ONNX on its first small call (~15 s); the
# suite samples many small fixture models, so it samples on eager torch unless a test chooses otherwise
# (tests/test_onnx.py tests "auto" itself).
os.environ.setdefault("KUOSAN_BACKEND", "torch")


def load_benchmark(name: str):
    """``benchmarks/NAME.py`` imported as a module (the folder is not a package), for tests of its pieces."""
    path = Path(__file__).resolve().parents[1] / "benchmarks" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(f"{name}_bench", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


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


class GaussianMixtureDenoiser:
    """The exact denoiser of x0 ~ Σ_k π_k N(μ_k, s_k² I) in d dimensions: the posterior mean
    D(x; σ) = Σ_k γ_k(x) [μ_k + s_k²/(s_k² + σ²) (x − μ_k)], γ_k ∝ π_k N(x; μ_k, (s_k² + σ²) I).

    ``x`` is [B, *shape] with prod(shape) = d. With ``class_labels`` (a [B] tensor) sample b uses only
    component ``class_labels[b]`` (its exact class-conditional denoiser), and the label K ("null")
    the whole mixture, as a classifier-free-guidance network sees it. Computed in float64.
    """

    def __init__(self, weights, means, stds):
        self.weights = torch.as_tensor(weights, dtype=torch.float64)
        self.means = torch.as_tensor(means, dtype=torch.float64).reshape(len(self.weights), -1)  # [K, d]
        self.stds = torch.as_tensor(stds, dtype=torch.float64)
        self.calls = 0

    def responsibilities(self, x, sigma, class_labels=None):
        b = x.shape[0]
        flat = x.reshape(b, -1).to(torch.float64)
        sigma = torch.as_tensor(sigma, dtype=torch.float64, device=x.device).reshape(-1, 1).expand(b, 1)
        var = self.stds ** 2 + sigma ** 2                                       # [B, K]
        sq = (flat[:, None, :] - self.means[None]).square().sum(-1)             # [B, K]
        d = flat.shape[1]
        logp = self.weights.log() - d / 2 * var.log() - sq / (2 * var)
        if class_labels is not None:
            k = len(self.weights)
            only = torch.nn.functional.one_hot(class_labels.clamp(max=k - 1), k).bool()
            keep = only | (class_labels == k)[:, None]
            logp = logp.masked_fill(~keep, float("-inf"))
        return logp.softmax(1), flat, var

    def __call__(self, x, sigma, class_labels=None, **kw):
        self.calls += 1
        gamma, flat, var = self.responsibilities(x, sigma, class_labels)
        shrink = self.stds ** 2 / var                                            # [B, K]
        post = self.means[None] + shrink[..., None] * (flat[:, None, :] - self.means[None])  # [B, K, d]
        return (gamma[..., None] * post).sum(1).reshape(x.shape).to(x.dtype)

    def sample(self, n, generator, shape=None):
        k = torch.multinomial(self.weights, n, replacement=True, generator=generator)
        z = torch.randn(n, self.means.shape[1], generator=generator, dtype=torch.float64)
        x = self.means[k] + self.stds[k, None] * z
        return x.reshape(n, *(shape or (self.means.shape[1],))), k


@pytest.fixture
def mixture():
    """A 2-D mixture of three Gaussians, well separated, of unequal weights and widths."""
    return GaussianMixtureDenoiser([0.2, 0.5, 0.3], [[-2.0, 0.0], [1.5, 1.5], [1.0, -2.0]], [0.3, 0.5, 0.4])
