"""Consistency models: the boundary f(x, σ_min) = x, ECT's (t, r) mapping, the pseudo-Huber loss, the exact
consistency function of Gaussian data (loss, tuning towards it, sampling it), and the consistency sampler."""

import copy
import math

import pytest
import torch
from torch import nn

from kuosan.config import load_config
from kuosan.diffusion.consistency import (consistency_loss, ect_r, gaussian_consistency, pseudo_huber,
                                          renoise_levels, shared_dropout_calls, stage_at)
from kuosan.diffusion.precond import (PRECONDS, ConsistencyFlowPrecond, ConsistencyPrecond, EDMPrecond, FlowPrecond,
                                      build_precond)
from kuosan.diffusion.samplers import SAMPLERS, nfe, sample_consistency
from kuosan.diffusion.schedules import get_sigmas
from kuosan.errors import KuosanError
from kuosan.rng import generators_for_seeds, randn

SIGMA_MIN = 0.002


class Wild(nn.Module):
    """A network whose output is large, random and unrelated to its input."""

    def __init__(self, d=2):
        super().__init__()
        self.lin = nn.Linear(d, d)

    def forward(self, x, c_noise, class_labels=None):
        flat = x.flatten(1)
        out = self.lin(flat) * 1e3 + torch.randn_like(flat) * 1e4 + c_noise[:, None]
        return out.reshape(x.shape)


class TinyMLP(nn.Module):
    """F(x, c_noise) for 2-D data, with a sinusoidal embedding of c_noise."""

    def __init__(self, d=2, hidden=64):
        super().__init__()
        self.register_buffer("freqs", torch.randn(8, generator=torch.Generator().manual_seed(3)) * 4)
        self.body = nn.Sequential(nn.Linear(d + 16, hidden), nn.SiLU(), nn.Linear(hidden, hidden), nn.SiLU(),
                                  nn.Linear(hidden, d))

    def forward(self, x, c_noise, class_labels=None):
        e = c_noise[:, None] * self.freqs[None]
        return self.body(torch.cat([x, e.sin(), e.cos()], 1))


# --- the boundary ----------------------------------------------------------------------------------

@pytest.mark.parametrize("cls", [ConsistencyPrecond, ConsistencyFlowPrecond])
def test_boundary_holds_exactly_for_any_network(cls):
    torch.manual_seed(0)
    f = cls(Wild(4))
    x = torch.randn(6, 4) * 3
    assert torch.equal(f(x, SIGMA_MIN), x)
    sigma = torch.tensor([SIGMA_MIN, 0.5, SIGMA_MIN, 3.0, 80.0, SIGMA_MIN])  # per row
    out = f(x, sigma)
    at_min = sigma == SIGMA_MIN
    assert torch.equal(out[at_min], x[at_min])
    assert not torch.allclose(out[~at_min], x[~at_min])


@pytest.mark.parametrize("cls,base", [(ConsistencyPrecond, EDMPrecond), (ConsistencyFlowPrecond, FlowPrecond)])
def test_student_starts_as_its_teacher_away_from_the_boundary(cls, base):
    """c_skip and c_out move by O(σ_min), c_in and c_noise not at all: a teacher's weights start the student."""
    torch.manual_seed(1)
    net = TinyMLP()
    x = torch.randn(5, 2) * 2
    for sigma in (0.5, 2.0, 80.0):
        student, teacher = cls(net)(x, sigma), base(net)(x, sigma)
        assert (student - teacher).abs().max() < 5 * SIGMA_MIN * (1 + x.abs().max())


def test_registered_as_parameterisations_with_their_sampler():
    assert {"consistency", "consistency-flow"} <= set(PRECONDS)
    assert isinstance(build_precond("consistency", TinyMLP(), sigma_min=0.01), ConsistencyPrecond)
    assert isinstance(build_precond("consistency-flow", TinyMLP()), ConsistencyFlowPrecond)
    cfg = load_config(None, {"diffusion.precond": "consistency", "sample.sampler": "consistency", "sample.steps": 2})
    assert cfg.diffusion.precond == "consistency" and cfg.sample.sampler == "consistency"
    assert SAMPLERS["consistency"] is sample_consistency and nfe("consistency", 2) == 2


# --- ECT's mapping and loss ------------------------------------------------------------------------

def test_mapping_is_monotone_below_t_and_closes_in_on_t():
    t = torch.logspace(math.log10(SIGMA_MIN * 1.001), math.log10(200.0), 4000, dtype=torch.float64)
    gaps = []
    for stage in range(12):
        r = ect_r(t, stage, sigma_min=SIGMA_MIN, max_shrink=math.inf)
        assert (r >= SIGMA_MIN).all() and (r < t).all()
        assert (torch.diff(r) >= 0).all()  # r is non-decreasing in t
        gaps.append((t - r) / t)
        if stage:
            assert (gaps[-1] <= gaps[-2]).all()
    assert gaps[-1].max() < 5 * 2.0 ** -12  # n(t) <= 1 + k/2 = 5, q^(a+1) = 2^12
    big = t > 50  # n(t) -> 1 for large t: the gap is t / q^(a+1)
    assert torch.allclose(gaps[3][big], torch.full_like(t[big], 2.0 ** -4), rtol=1e-6)
    assert [stage_at(s, 250) for s in (0, 249, 250, 999)] == [0, 0, 1, 3]


def test_mapping_stops_shrinking_at_max_shrink():
    """By default the gap stops at n(t)·t/256, ECT's finest: stage 7 of q = 2 and every later one alike."""
    t = torch.logspace(-1, 2, 500, dtype=torch.float64)
    finest = ect_r(t, 7, sigma_min=SIGMA_MIN)
    assert torch.equal(ect_r(t, 30, sigma_min=SIGMA_MIN), finest)
    assert torch.equal(ect_r(t, 0, q=256.0, sigma_min=SIGMA_MIN), finest)
    assert not torch.equal(ect_r(t, 6, sigma_min=SIGMA_MIN), finest)


def test_pseudo_huber():
    sq = torch.tensor([0.0, 1e-8, 4.0, 1e6], dtype=torch.float64, requires_grad=True)
    d = pseudo_huber(sq, 0.03).tolist()
    assert d[0] == 0 and d[1] == pytest.approx(1e-8 / (2 * 0.03), rel=1e-3)  # ≈ ‖Δ‖²/2c near 0
    assert d[2] == pytest.approx(math.sqrt(4 + 0.03 ** 2) - 0.03)
    l1 = pseudo_huber(sq, 0.0)
    assert torch.allclose(l1, sq.detach().sqrt())
    l1.sum().backward()  # ‖Δ‖ = 0 with c = 0: a zero gradient, not NaN
    assert torch.isfinite(sq.grad).all() and sq.grad[0] == 0


def test_loss_is_zero_at_the_exact_consistency_function_of_a_point_mass():
    """x0 = μ: x_t = μ + t·n and x_r = μ + r·n lie on one ODE trajectory (x − μ ∝ σ), whatever t and r."""
    mu = torch.tensor([0.3, -0.7, 1.1])
    exact = lambda x, sigma, labels=None: gaussian_consistency(x, sigma, mu, 0.0, SIGMA_MIN)  # noqa: E731
    x0 = mu.double().expand(512, 3).clone()
    for stage in (0, 3, 8):
        loss = consistency_loss(exact, x0, generator=torch.Generator().manual_seed(stage), stage=stage,
                                sigma_min=SIGMA_MIN, c=0.0)
        assert loss.abs().max() < 1e-4
    # not a consistency function: Δ = 0.01·(t − r) in each of 3 dimensions, so w·d(Δ) = 0.01·sqrt(3)
    off = lambda x, sigma, labels=None: exact(x, sigma) + 0.01 * sigma.reshape(-1, 1)  # noqa: E731
    loss = consistency_loss(off, x0, generator=torch.Generator().manual_seed(0), c=0.0)
    assert loss.max().item() == pytest.approx(0.01 * math.sqrt(3), rel=1e-3)


def test_exact_gaussian_consistency_function_is_constant_along_ode_trajectories(gaussian):
    """The closed form against the probability-flow ODE solved by the exact denoiser's own solution."""
    x = torch.randn(64, 1, dtype=torch.float64, generator=torch.Generator().manual_seed(0)) * 20
    end = gaussian.ode_solution(x, 20.0, SIGMA_MIN)
    for sigma in (20.0, 3.0, 0.4):
        x_sigma = gaussian.ode_solution(x, 20.0, sigma)
        f = gaussian_consistency(x_sigma, sigma, gaussian.mu, gaussian.s, SIGMA_MIN)
        assert torch.allclose(f, end, atol=1e-12)


def test_both_calls_share_one_dropout_mask():
    drop = nn.Dropout(0.5).train()
    student = lambda x, sigma, labels=None: drop(torch.ones_like(x))  # noqa: E731  (f is its dropout mask)
    x0 = torch.randn(64, 50)
    torch.manual_seed(0)
    assert consistency_loss(student, x0, generator=torch.Generator().manual_seed(0), c=0.0).abs().max() == 0
    a, b = drop(torch.ones(1000)), drop(torch.ones(1000))
    assert not torch.equal(a, b)  # without rewinding, the masks differ
    state = torch.get_rng_state()
    a, b = shared_dropout_calls(lambda: drop(torch.ones(1000)), lambda: drop(torch.ones(1000)), torch.device("cpu"))
    assert torch.equal(a, b)
    after_both = torch.get_rng_state()
    torch.set_rng_state(state)
    drop(torch.ones(1000))
    assert torch.equal(after_both, torch.get_rng_state())  # the RNG ends where one call leaves it


def test_nonfinite_targets_contribute_nothing():
    net = TinyMLP()
    f = ConsistencyPrecond(net)

    def flaky(x, sigma, labels=None):  # the target call (without gradients) is NaN at small noise levels
        out = f(x, sigma)
        return out if torch.is_grad_enabled() else torch.where(sigma.reshape(-1, 1) < 0.5, torch.nan, out)

    loss = consistency_loss(flaky, torch.randn(256, 2), generator=torch.Generator().manual_seed(0))
    assert torch.isfinite(loss).all() and (loss == 0).any() and (loss > 0).any()
    loss.mean().backward()
    assert all(torch.isfinite(p.grad).all() for p in net.parameters())


def _gaussian_error(model, mu, s):
    """Mean distance of ``model`` to the exact consistency function, over noisy points of the data."""
    g = torch.Generator().manual_seed(9)
    sigma = torch.exp(torch.randn(2000, generator=g) * 1.2 - 0.5)
    x = mu + torch.randn(2000, 2, generator=g) * (s ** 2 + sigma[:, None] ** 2).sqrt()
    with torch.no_grad():
        out = model(x, sigma)
    return (out - gaussian_consistency(x, sigma, mu, s, SIGMA_MIN)).norm(dim=1).mean().item()


def test_tuning_a_tiny_denoiser_on_gaussian_data_approaches_the_exact_consistency_function():
    """A denoiser briefly trained on 2-D Gaussian data, tuned 300 steps with ECT's loss: its EMA lands much
    nearer the closed-form consistency function than the denoiser (exact or trained) is."""
    torch.manual_seed(0)
    mu, s = torch.tensor([0.3, -0.2]), torch.tensor([0.5, 0.25])
    net, g = TinyMLP(), torch.Generator().manual_seed(1)
    teacher = EDMPrecond(net)
    opt = torch.optim.Adam(net.parameters(), lr=3e-3)
    for _ in range(200):  # EDM's loss (Karras et al. 2022, eq. 8) written for 2-D points
        x0 = mu + torch.randn(256, 2, generator=g) * s
        sigma = (torch.randn(256, generator=g) * 1.2 - 1.2).exp()
        weight = (sigma ** 2 + 0.25) / (sigma * 0.5) ** 2
        loss = weight * (teacher(x0 + sigma[:, None] * torch.randn(256, 2, generator=g), sigma) - x0).square().sum(1)
        opt.zero_grad()
        loss.mean().backward()
        opt.step()
    exact_denoiser = lambda x, sigma: mu + s ** 2 / (s ** 2 + sigma[:, None] ** 2) * (x - mu)  # noqa: E731
    before, baseline = _gaussian_error(teacher, mu, s), _gaussian_error(exact_denoiser, mu, s)
    student = ConsistencyPrecond(net)
    ema = copy.deepcopy(student)
    opt = torch.optim.Adam(net.parameters(), lr=2e-3)
    for step in range(300):
        x0 = mu + torch.randn(256, 2, generator=g) * s
        loss = consistency_loss(student, x0, generator=g, stage=stage_at(step, 75), c=0.1)
        opt.zero_grad()
        loss.mean().backward()
        opt.step()
        with torch.no_grad():
            for pe, p in zip(ema.parameters(), student.parameters()):
                pe.lerp_(p, 0.05)
    after = _gaussian_error(ema, mu, s)
    assert after < 0.4 * min(before, baseline), (before, baseline, after)


# --- sampling --------------------------------------------------------------------------------------

class ExactConsistency:
    """The consistency function of x0 ~ N(μ, s²) per dimension, as a sampler's denoiser; counts its calls."""

    def __init__(self, mu=0.3, s=0.5):
        self.mu, self.s, self.calls = mu, s, 0

    def __call__(self, x, sigma, **kw):
        self.calls += 1
        return gaussian_consistency(x, sigma, self.mu, self.s, SIGMA_MIN)


@pytest.mark.parametrize("steps", [1, 2, 4])
def test_consistency_sampling_of_the_exact_function_reproduces_the_data(steps):
    """One step maps N(0, σ_max²) to the data (up to σ_max's finite size); each re-noising keeps it there."""
    f = ExactConsistency()
    sigmas = get_sigmas("karras", steps, SIGMA_MIN, 80.0)
    g = torch.Generator().manual_seed(0)
    x = randn((40000, 1), g, dtype=torch.float64) * 80.0
    out = sample_consistency(f, x, sigmas, generator=g)
    assert f.calls == nfe("consistency", steps) == steps
    assert out.mean().item() == pytest.approx(f.mu, abs=0.02)
    assert out.std().item() == pytest.approx(math.sqrt(f.s ** 2 + SIGMA_MIN ** 2), rel=0.02)
    if steps == 1:
        assert torch.equal(out, f(x, sigmas[0]))


def test_renoising_points_default_and_given():
    levels = []
    sample_consistency(ExactConsistency(), torch.zeros(2, 1), get_sigmas("karras", 3, SIGMA_MIN, 80.0),
                       generator=torch.Generator().manual_seed(0), callback=lambda i: levels.append(float(i["sigma"])))
    assert levels == pytest.approx(renoise_levels(3, 80.0, SIGMA_MIN))
    assert levels[0] == 80.0 and 80.0 > levels[1] > levels[2] > SIGMA_MIN
    levels.clear()
    sample_consistency(ExactConsistency(), torch.zeros(2, 1), get_sigmas("karras", 2, SIGMA_MIN, 80.0), points=[0.8],
                       generator=torch.Generator().manual_seed(0), callback=lambda i: levels.append(float(i["sigma"])))
    assert levels == [80.0, pytest.approx(0.8)]
    for bad in ([0.8, 0.2], [90.0], [SIGMA_MIN / 2]):
        with pytest.raises(KuosanError):
            renoise_levels(2, 80.0, SIGMA_MIN, points=bad)
    with pytest.raises(KuosanError, match="decreasing"):
        sample_consistency(ExactConsistency(), torch.zeros(2, 1), torch.tensor([0.1, 1.0, 5.0]))


def test_a_grid_ending_above_zero_ends_at_that_noise_level():
    """As an edit's partial step: f at the first level, then noise of the last one."""
    f = ExactConsistency()
    x = torch.zeros(20000, 1, dtype=torch.float64)
    g = torch.Generator().manual_seed(1)
    out = sample_consistency(f, x, torch.tensor([3.0, 1.5], dtype=torch.float64), generator=g)
    assert f.calls == 1
    assert (out - f(x, 3.0)).std().item() == pytest.approx(1.5, rel=0.03)


@pytest.mark.parametrize("steps", [1, 2])
def test_student_images_per_seed_do_not_depend_on_the_batch(steps):
    from kuosan.config import SampleConfig
    from kuosan.model import build_model, network_spec
    from kuosan.sampling import generate

    cfg = load_config(None, {"diffusion.precond": "consistency", "model.base_channels": 8,
                             "model.channel_mults": "1,2", "model.num_blocks": 1, "model.attn_resolutions": "4"})
    torch.manual_seed(0)
    student = build_model(network_spec(cfg, channels=1, resolution=8, num_classes=3), cfg.diffusion).eval()
    sample = SampleConfig(sampler="consistency", steps=steps)
    seeds, labels = list(range(8)), [k % 3 for k in range(8)]
    kw = dict(shape=(1, 8, 8), null_label=3)
    full = generate(student, sample, seeds=seeds, class_labels=labels, batch_size=8, **kw)
    singles = torch.cat([generate(student, sample, seeds=[s], class_labels=[c], batch_size=1, **kw)
                         for s, c in zip(seeds, labels)])
    assert torch.allclose(full, singles, atol=1e-5, rtol=0)
    assert torch.equal(full, generate(student, sample, seeds=seeds, class_labels=labels, batch_size=8, **kw))
    gens = generators_for_seeds([0])
    first = randn((1, 1, 8, 8), gens) * 80.0
    if steps == 1:
        assert torch.allclose(full[:1], student(first, 80.0, torch.tensor([0])), atol=1e-6)
