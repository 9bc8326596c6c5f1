import math

import pytest
import torch

from kuosan.diffusion.samplers import SAMPLERS, ancestral_step, sample_ddim, sample_euler, sample_heun
from kuosan.diffusion.schedules import get_sigmas
from kuosan.rng import generators_for_seeds, randn


def _run(sampler, den, n, seed=0, shape=(256, 4), **kw):
    sigmas = get_sigmas("karras", n, 0.02, 20.0)
    x0 = randn(shape, torch.Generator().manual_seed(seed), dtype=torch.float64) * sigmas[0]
    seen = {}

    def cb(info):  # the state at the last nonzero σ, before the final jump to 0
        if info["sigma_next"] == sigmas[-2]:
            seen["x"] = info["x"]

    x = sampler(den, x0.clone(), sigmas, callback=cb, **kw)
    return x0, sigmas, seen["x"], x


@pytest.mark.parametrize("name,order", [("euler", 1), ("ddim", 1), ("heun", 2)])
def test_ode_samplers_converge_with_expected_order(gaussian, name, order):
    errors = []
    for n in (16, 32, 64):
        x_start, sigmas, x_end, _ = _run(SAMPLERS[name], gaussian, n)
        exact = gaussian.ode_solution(x_start, sigmas[0], sigmas[-2])
        errors.append((x_end - exact).abs().max().item())
    ratios = [errors[i] / errors[i + 1] for i in range(2)]
    expected = 2 ** order
    for r in ratios:
        assert expected * 0.75 < r < expected * 1.35, (errors, ratios)


@pytest.mark.parametrize("name,tol", [("euler", 0.03), ("ddim", 0.03), ("heun", 2e-3)])
def test_ode_samplers_reach_exact_solution(gaussian, name, tol):
    x_start, sigmas, _, x = _run(SAMPLERS[name], gaussian, 200)
    exact = gaussian.ode_solution(x_start, sigmas[0], 0.0)
    assert (x - exact).abs().max().item() < tol


def test_ddim_eta0_equals_euler(gaussian):
    sigmas = get_sigmas("karras", 10, 0.02, 20.0)
    x = torch.randn(8, 3, generator=torch.Generator().manual_seed(1), dtype=torch.float64) * sigmas[0]
    assert torch.allclose(sample_ddim(gaussian, x, sigmas), sample_euler(gaussian, x, sigmas))


@pytest.mark.parametrize("name", ["ddpm", "heun_churn"])
def test_stochastic_samplers_match_data_distribution(gaussian, name):
    sigmas = get_sigmas("karras", 500, 0.01, 40.0)
    g = torch.Generator().manual_seed(0)
    x = randn((20000, 1), g, dtype=torch.float64) * sigmas[0]
    if name == "ddpm":
        out = SAMPLERS["ddpm"](gaussian, x, sigmas, generator=g)
    else:
        out = sample_heun(gaussian, x, sigmas, generator=g, s_churn=40, s_tmin=0.05, s_tmax=50)
    assert out.mean().item() == pytest.approx(gaussian.mu, abs=0.02)
    assert out.std().item() == pytest.approx(gaussian.s, rel=0.03)


def test_ancestral_step_preserves_variance():
    for s, sn in [(2.0, 1.0), (10.0, 0.5)]:
        s, sn = torch.tensor(s), torch.tensor(sn)
        down, up = ancestral_step(s, sn, 1.0)
        assert math.isclose((down ** 2 + up ** 2).item(), (sn ** 2).item(), rel_tol=1e-6)
        down0, up0 = ancestral_step(s, sn, 0.0)
        assert down0 == sn and up0 == 0


def test_deterministic_samplers_draw_no_noise(gaussian, monkeypatch):
    import kuosan.diffusion.samplers as S

    def boom(*a, **k):
        raise AssertionError("noise drawn by a deterministic sampler")

    monkeypatch.setattr(S, "randn_like", boom)
    sigmas = get_sigmas("karras", 5, 0.02, 20.0)
    x = torch.randn(2, 3) * 20
    for name in ("euler", "heun", "ddim"):
        SAMPLERS[name](gaussian, x, sigmas)


@pytest.mark.parametrize("name", sorted(SAMPLERS))
def test_per_seed_generators_make_batch_invariant_images(gaussian, name):
    sigmas = get_sigmas("karras", 8, 0.02, 20.0)
    seeds = list(range(8))
    kw = {"s_churn": 10.0} if name == "heun" else {}

    def run(batch_seeds):
        gens = generators_for_seeds(batch_seeds)
        x = randn((len(batch_seeds), 1, 4, 4), gens) * sigmas[0]
        return SAMPLERS[name](gaussian, x, sigmas, generator=gens, **kw)

    full = run(seeds)
    singles = torch.cat([run([s]) for s in seeds])
    assert torch.equal(full, singles)
