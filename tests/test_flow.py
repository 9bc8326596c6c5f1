import pytest
import torch

from kuosan.diffusion.flow import FlowPrecond, flow_loss, sample_flow_euler_t, sigma_to_t, t_to_sigma
from kuosan.diffusion.objectives import loss_for
from kuosan.diffusion.precond import PRECONDS, build_precond
from kuosan.diffusion.samplers import CONSISTENCY_SAMPLERS, SAMPLERS, sample_euler, sample_heun
from kuosan.diffusion.schedules import get_sigmas
from kuosan.rng import generators_for_seeds, randn

# Samplers of a diffusion model's denoiser; the consistency sampler has its own tests (test_consistency.py):
# re-noising a diffusion posterior mean loses variance, so the distribution checks here do not apply to it.
ODE_AND_SDE_SAMPLERS = sorted(set(SAMPLERS) - set(CONSISTENCY_SAMPLERS))

SIGMAS = torch.tensor([0.002, 0.1, 0.5, 1.0, 5.0, 80.0])


class GaussianVelocity(torch.nn.Module):
    """The exact velocity E[n − x0 | x_t] for x0 ~ N(mu, s²) per dimension on x_t = (1 − t) x0 + t n.

    (x0, n, x_t) are jointly Gaussian with Var x_t = V = (1 − t)² s² + t², Cov(x0, x_t) = (1 − t) s²,
    Cov(n, x_t) = t, so with y = x_t − (1 − t) mu:
        E[x0 | x_t] = mu + (1 − t) s² / V · y,   E[n | x_t] = t / V · y,
        v(x_t, t)   = (t − (1 − t) s²) / V · y − mu.
    """

    def __init__(self, mu, s):
        super().__init__()
        self.mu, self.s = mu, s
        self.dummy = torch.nn.Parameter(torch.zeros(()))  # so the module has a device

    def forward(self, x_t, t, class_labels=None):
        t = t.to(torch.float64).reshape(-1, *([1] * (x_t.ndim - 1)))
        s2 = self.s ** 2
        V = (1 - t) ** 2 * s2 + t ** 2
        y = x_t.to(torch.float64) - (1 - t) * self.mu
        return (t - (1 - t) * s2) / V * y - self.mu


class Probe(torch.nn.Module):
    def __init__(self, out):
        super().__init__()
        self.out = out

    def forward(self, x, c_noise, class_labels=None):
        return self.out.expand_as(x)


def test_sigma_t_maps_are_inverse_and_put_the_path_in_the_sigma_view():
    t = sigma_to_t(SIGMAS.double())
    assert torch.allclose(t_to_sigma(t), SIGMAS.double())
    x0, n = torch.randn(6, 5, dtype=torch.float64), torch.randn(6, 5, dtype=torch.float64)
    x_t = (1 - t[:, None]) * x0 + t[:, None] * n
    assert torch.allclose(x_t / (1 - t[:, None]), x0 + SIGMAS.double()[:, None] * n)


def test_scalings_match_the_derivation():
    p = FlowPrecond(torch.nn.Identity())
    c_skip, c_out, c_in = p.scalings(SIGMAS)
    assert torch.allclose(c_skip, 1 / (1 + SIGMAS)) and torch.allclose(c_in, 1 / (1 + SIGMAS))
    assert torch.allclose(c_out, -SIGMAS / (1 + SIGMAS))
    assert torch.allclose(p.noise_cond(SIGMAS), SIGMAS / (1 + SIGMAS))
    assert build_precond("flow", torch.nn.Identity()).__class__ is FlowPrecond and "flow" in PRECONDS


def test_true_velocity_recovers_x0():
    g = torch.Generator().manual_seed(0)
    x0, n = torch.randn(6, 1, 4, 4, generator=g), torch.randn(6, 1, 4, 4, generator=g)
    x = x0 + SIGMAS.reshape(-1, 1, 1, 1) * n
    p = FlowPrecond(Probe(n - x0))  # a perfect network
    assert torch.allclose(p(x, SIGMAS), x0, atol=1e-4)


def test_exact_velocity_is_the_exact_denoiser(gaussian):
    p = FlowPrecond(GaussianVelocity(gaussian.mu, gaussian.s))
    x = torch.randn(6, 3, 4, dtype=torch.float64) * 3
    assert torch.allclose(p(x, SIGMAS).double(), gaussian(x.float(), SIGMAS).double(), atol=1e-5)


def test_heun_on_the_exact_velocity_reaches_the_ode_solution(gaussian):
    p = FlowPrecond(GaussianVelocity(gaussian.mu, gaussian.s))
    sigmas = get_sigmas("karras", 200, p.sigma_min, p.sigma_max)
    x_start = randn((256, 4), torch.Generator().manual_seed(0)) * sigmas[0]
    x = sample_heun(p, x_start.clone(), sigmas)
    exact = gaussian.ode_solution(x_start.double(), sigmas[0], 0.0)
    assert (x.double() - exact).abs().max().item() < 2e-3


@pytest.mark.parametrize("name", ODE_AND_SDE_SAMPLERS)
def test_every_sampler_samples_the_flow_model(gaussian, name):
    p = FlowPrecond(GaussianVelocity(gaussian.mu, gaussian.s))
    sigmas = get_sigmas("karras", 500, p.sigma_min, p.sigma_max)  # many steps: ancestral steps are biased
    g = torch.Generator().manual_seed(1)
    out = SAMPLERS[name](p, randn((20000, 1), g) * sigmas[0], sigmas, generator=g)
    assert out.mean().item() == pytest.approx(gaussian.mu, abs=0.02)
    assert out.std().item() == pytest.approx(gaussian.s, rel=0.03)


def test_euler_in_t_equals_euler_in_sigma():
    """Euler in flow time on the velocity and Euler in σ on the denoiser are the same scheme:
    x_σ = (1 + σ)·x_t at every step, for any network."""
    from kuosan.nets.dit import DiT, DiTConfig

    torch.manual_seed(0)
    net = DiT(DiTConfig(in_channels=2, out_channels=2, resolution=6, patch_size=2, depth=1, width=16, heads=2,
                        num_classes=3, noise_scale=1000.0))
    with torch.no_grad():
        for param in net.parameters():
            param.add_(torch.randn_like(param) * 0.1)
    p = FlowPrecond(net)
    labels = torch.tensor([0, 2, 3])
    sigmas = get_sigmas("karras", 12, p.sigma_min, p.sigma_max)
    ts = sigma_to_t(sigmas)
    x_T = randn((3, 2, 6, 6), torch.Generator().manual_seed(2), dtype=torch.float64) * sigmas[0]
    xs_sigma, xs_t = [], []
    out_sigma = sample_euler(lambda x, s, **kw: p(x, s, **kw).double(), x_T, sigmas,
                             extra_args={"class_labels": labels}, callback=lambda d: xs_sigma.append(d["x"]))
    out_t = sample_flow_euler_t(lambda x, t: p.velocity(x, t, labels).double(), x_T / (1 + sigmas[0]), ts,
                                callback=lambda d: xs_t.append(d["x"]))
    for i, (a, b) in enumerate(zip(xs_sigma, xs_t)):
        assert torch.allclose(a / (1 + sigmas[i + 1]), b, atol=1e-5, rtol=1e-4), i
    assert torch.allclose(out_sigma, out_t, atol=1e-5)


def _replay(x0, seed, time_dist):
    """The t and noise flow_loss draws from a generator seeded ``seed``."""
    g = torch.Generator().manual_seed(seed)
    if time_dist == "uniform":
        t = torch.rand((x0.shape[0],), generator=g)
    else:
        t = torch.sigmoid(torch.randn((x0.shape[0],), generator=g))
    return t, torch.randn(x0.shape, generator=g)


@pytest.mark.parametrize("time_dist", ["logit-normal", "uniform"])
def test_flow_loss_is_velocity_mse_and_weighted_denoiser_loss(time_dist):
    x0, out = torch.randn(5, 1, 3, 3), torch.randn(5, 1, 3, 3)
    p = FlowPrecond(Probe(out))
    loss = flow_loss(p, x0, generator=torch.Generator().manual_seed(7), time_dist=time_dist)
    t, n = _replay(x0, 7, time_dist)
    assert loss.shape == (5,)
    assert torch.allclose(loss, (out - (n - x0)).square().flatten(1).mean(1), atol=1e-5)
    # EDM eq. 8: velocity MSE = λ(σ)·‖D − x0‖² with λ = 1/c_out² = 1/t²
    sigma = t_to_sigma(t.double()).float()
    denoised = p(x0 + sigma.reshape(-1, 1, 1, 1) * n, sigma)
    assert torch.allclose(loss, (denoised - x0).square().flatten(1).mean(1) / t ** 2, rtol=1e-3)
    # a perfect network (one that knows the noise) has zero loss
    assert torch.allclose(flow_loss(FlowPrecond(Probe(n - x0)), x0, generator=torch.Generator().manual_seed(7),
                                    time_dist=time_dist), torch.zeros(5), atol=1e-10)


@pytest.mark.parametrize("time_dist", ["logit-normal", "uniform"])
def test_flow_loss_per_sample_generators_are_batch_independent(time_dist):
    p = FlowPrecond(GaussianVelocity(0.3, 0.5))
    x0 = torch.randn(4, 1, 2, 2)
    together = flow_loss(p, x0, generator=generators_for_seeds(range(4)), time_dist=time_dist)
    alone = torch.cat([flow_loss(p, x0[i:i + 1], generator=generators_for_seeds([i]), time_dist=time_dist)
                       for i in range(4)])
    assert torch.equal(together, alone)


def test_logit_normal_times():
    seen = []

    class Spy(torch.nn.Module):
        def forward(self, x, t, class_labels=None):
            seen.append(t)
            return x

    flow_loss(FlowPrecond(Spy()), torch.zeros(20000, 1), generator=torch.Generator().manual_seed(0),
              loc=0.5, scale=2.0)
    u = torch.logit(seen[0].double())
    assert u.mean().item() == pytest.approx(0.5, abs=0.05) and u.std().item() == pytest.approx(2.0, rel=0.03)


def test_unknown_time_distribution_is_a_clear_error():
    from kuosan.errors import KuosanError

    with pytest.raises(KuosanError, match="logit-normal"):
        flow_loss(FlowPrecond(Probe(torch.zeros(1))), torch.zeros(2, 1), time_dist="beta")


def test_loss_for_flow_precond():
    assert loss_for(FlowPrecond(torch.nn.Identity())) is flow_loss
