"""Mathematical truths about every sampler: convergence orders on an exact mixture-of-Gaussians
denoiser, exactness on a Gaussian, any sampler on any schedule, the data distribution from the
stochastic ones, evaluation and noise budgets, and the identities between samplers."""

import math

import pytest
import torch
from conftest import GaussianMixtureDenoiser

from kuosan.diffusion import samplers as S
from kuosan.diffusion.samplers import CONSISTENCY_SAMPLERS, SAMPLERS, STOCHASTIC, nfe
from kuosan.diffusion.schedules import SCHEDULES, get_sigmas

# Samplers of a diffusion model's denoiser; the consistency sampler has its own tests (test_consistency.py):
# re-noising a diffusion posterior mean loses variance, so the distribution checks here do not apply to it.
ODE_AND_SDE_SAMPLERS = sorted(set(SAMPLERS) - set(CONSISTENCY_SAMPLERS))

DETERMINISTIC = sorted(set(SAMPLERS) - set(STOCHASTIC))
SIGMA_MIN, SIGMA_MAX = 0.02, 20.0


def _grid(n):
    return get_sigmas("karras", n, SIGMA_MIN, SIGMA_MAX)


def _state_at_sigma_min(fn, den, x, n, **kw):
    """The state at the last nonzero σ (before the final jump to 0) after ``n`` steps."""
    sigmas, seen = _grid(n), {}

    def cb(info):
        if info["sigma_next"] == sigmas[-2]:
            seen["x"] = info["x"]

    fn(den, x.clone(), sigmas, callback=cb, **kw)
    return seen["x"]


@pytest.fixture(scope="module")
def mixture_reference():
    """256 starts and their ODE solutions at σ_min: Heun with 1000 and 2000 steps, Richardson-extrapolated
    (Heun's error is O(h²), so (4·x_2000 − x_1000)/3 removes its leading term)."""
    den = GaussianMixtureDenoiser([0.2, 0.5, 0.3], [[-2.0, 0.0], [1.5, 1.5], [1.0, -2.0]], [0.3, 0.5, 0.4])
    x = torch.randn(256, 2, generator=torch.Generator().manual_seed(7), dtype=torch.float64) * SIGMA_MAX
    coarse = _state_at_sigma_min(S.sample_heun, den, x, 1000)
    fine = _state_at_sigma_min(S.sample_heun, den, x, 2000)
    return den, x, fine + (fine - coarse) / 3


ORDERS = [("euler", {}, 1), ("ddim", {}, 1), ("heun", {}, 2), ("dpmpp_2m", {}, 2),
          ("dpmpp_2m_sde", {"eta": 0.0}, 2), ("dpmpp_3m", {}, 3), ("dpmpp_3m_sde", {"eta": 0.0}, 3),
          ("unipc", {"order": 1}, 2), ("unipc", {"order": 2}, 3), ("unipc", {"order": 3}, 4),
          ("lms", {"order": 3}, 3), ("lms", {}, 4)]


@pytest.mark.parametrize("name,kw,order", ORDERS, ids=[f"{n}-{o}{''.join(map(str, k.values()))}" for n, k, o in ORDERS])
def test_ode_samplers_converge_with_their_order_on_a_mixture(mixture_reference, name, kw, order):
    """Errors (median over 256 trajectories, so that the few starts on a basin boundary, which may
    switch mode, do not decide) fall by ~2^order when the steps double."""
    den, x, exact = mixture_reference
    errors = [(_state_at_sigma_min(SAMPLERS[name], den, x, n, **kw) - exact).norm(dim=1).median().item()
              for n in (32, 64, 128)]
    ratios = [errors[0] / errors[1], errors[1] / errors[2]]
    for r in ratios:
        assert 0.65 * 2 ** order < r < 1.5 * 2 ** order, (errors, ratios)


@pytest.mark.parametrize("name,tol", [("dpmpp_2m", 1e-2), ("dpmpp_3m", 1.5e-3), ("unipc", 2.5e-3),
                                      ("lms", 2e-3), ("dpmpp_2m_sde", 1.5e-2), ("dpmpp_3m_sde", 1.5e-3)])
def test_multistep_samplers_reach_the_exact_gaussian_solution(gaussian, name, tol):
    """Through the last step to σ = 0, against the closed form x(σ) − μ ∝ (s² + σ²)^{1/2}."""
    sigmas = _grid(50)
    x = torch.randn(64, 3, generator=torch.Generator().manual_seed(0), dtype=torch.float64) * SIGMA_MAX
    kw = {"eta": 0.0} if name in STOCHASTIC else {}
    out = SAMPLERS[name](gaussian, x, sigmas, **kw)
    # the exact ODE ends at σ_min; the last step to 0 is D(x; σ_min), the posterior mean there
    expected = gaussian(gaussian.ode_solution(x, SIGMA_MAX, SIGMA_MIN), torch.tensor(SIGMA_MIN))
    assert (out - expected).abs().max().item() < tol


SCHEDULE_CASES = [(k, {}) for k in SCHEDULES if not k.startswith("vp-")] + [
    ("vp-linear", {"spacing": s}) for s in ("linspace", "leading", "trailing")] + [
    ("vp-cosine", {"spacing": "trailing"})]


@pytest.mark.parametrize("kind,kw", SCHEDULE_CASES, ids=[f"{k}-{kw.get('spacing', '')}" for k, kw in SCHEDULE_CASES])
@pytest.mark.parametrize("name", ODE_AND_SDE_SAMPLERS)
def test_every_sampler_works_on_every_schedule(gaussian, name, kind, kw):
    """100 steps of any grid bring N(0, σ_max²) noise to the data N(μ, s²) of the Gaussian denoiser:
    deterministic samplers onto the exact ODE solution, stochastic ones in distribution. (Grids with
    a sudden long last step, such as the VP ones through t = 0, cost the multistep methods most.)"""
    sigmas = get_sigmas(kind, 100, 0.01, 80.0, **kw)
    n = 8 if name in DETERMINISTIC else 4000
    x = torch.randn(n, 1, generator=torch.Generator().manual_seed(1), dtype=torch.float64) * sigmas[0]
    out = SAMPLERS[name](gaussian, x, sigmas, generator=torch.Generator().manual_seed(2))
    assert torch.isfinite(out).all()
    if name in DETERMINISTIC:
        sigma_last = sigmas[-2]
        exact = gaussian(gaussian.ode_solution(x, sigmas[0], sigma_last), sigma_last)
        assert (out - exact).abs().max().item() < 0.03
    else:  # N(μ, s²) within sampling error (≈ 0.008 on the mean) plus the sampler's discretisation
        assert out.mean().item() == pytest.approx(gaussian.mu, abs=0.04)
        assert out.std().item() == pytest.approx(gaussian.s, rel=0.08)


@pytest.mark.parametrize("name", sorted(SAMPLERS))
def test_one_step_to_zero_returns_the_denoised_image(mixture, name):
    x = torch.randn(5, 2, generator=torch.Generator().manual_seed(3), dtype=torch.float64) * 3
    sigmas = torch.tensor([3.0, 0.0], dtype=torch.float64)
    out = SAMPLERS[name](mixture, x, sigmas, generator=torch.Generator().manual_seed(0))
    assert torch.allclose(out, mixture(x, sigmas[0]), atol=1e-12)


@pytest.mark.parametrize("name", ODE_AND_SDE_SAMPLERS)
def test_evaluations_callbacks_and_noise_draws(mixture, monkeypatch, name):
    """nfe() counts the denoiser calls; one callback a step; stochastic samplers draw once a step
    except on the last (to σ = 0); deterministic ones never."""
    draws = []
    real = S.randn_like
    monkeypatch.setattr(S, "randn_like", lambda x, g=None: draws.append(1) or real(x, g))
    steps = 7
    sigmas, seen = _grid(steps), []
    mixture.calls = 0
    x = torch.randn(4, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64) * SIGMA_MAX
    SAMPLERS[name](mixture, x, sigmas, callback=lambda info: seen.append((info["i"], float(info["sigma_next"]))),
                   generator=torch.Generator().manual_seed(0))
    assert mixture.calls == nfe(name, steps)
    assert seen == [(i, float(sigmas[i + 1])) for i in range(steps)]
    assert len(draws) == (steps - 1 if name in STOCHASTIC else 0)


@pytest.mark.parametrize("name", ["dpmpp_2m_sde", "dpmpp_3m_sde", "euler_ancestral"])
def test_stochastic_samplers_at_eta_zero_draw_nothing(gaussian, monkeypatch, name):
    monkeypatch.setattr(S, "randn_like", lambda *a, **k: pytest.fail("noise drawn at η = 0"))
    SAMPLERS[name](gaussian, torch.randn(3, 2) * SIGMA_MAX, _grid(6), eta=0.0)


def test_first_order_sde_dpm_solver_is_ddpm(mixture):
    """SDE-DPM-Solver++1 with η = 1 and ρ = σ_next/σ,
    x_next = ρ² x + (1 − ρ²) D + σ_next (1 − ρ²)^{1/2} z, is the DDPM posterior step (Ho et al. 2020, eq. 7) in the σ view."""
    sigmas = _grid(10)
    x = torch.randn(16, 2, generator=torch.Generator().manual_seed(1), dtype=torch.float64) * SIGMA_MAX
    a = S._sample_dpmpp_multistep(mixture, x, sigmas, order=1, eta=1.0, s_noise=1.0, extra_args=None,
                                  callback=None, generator=torch.Generator().manual_seed(5))
    b = SAMPLERS["ddpm"](mixture, x, sigmas, generator=torch.Generator().manual_seed(5))
    assert torch.allclose(a, b, atol=1e-12)
    c = SAMPLERS["euler_ancestral"](mixture, x, sigmas, generator=torch.Generator().manual_seed(5))
    assert torch.equal(b, c)


def test_unip2_with_bh2_is_dpm_solver_pp_2m():
    """UniP-2 with B(h) = 1 − e^{−h} gives Algorithm 2 of DPM-Solver++: weights g(1 + 1/2r) and −g/2r."""
    h, r = 0.37, 0.8
    g = -math.expm1(-h)
    w = S._unipc_weights([0.0, -r * h], h)
    assert w == pytest.approx([g * (1 + 1 / (2 * r)), -g / (2 * r)], rel=1e-12)


def test_quadrature_integrates_interpolating_polynomials_exactly():
    """Σ w_j f(u_j) = ∫ ω P for f a polynomial of degree < number of nodes, here with ω(u) = e^{u−h}."""
    from scipy.integrate import quad

    h, nodes = 0.6, [0.0, -0.4, -1.1, 0.6]
    weights = S._quadrature(nodes, S._exp_moments(h, len(nodes)))
    f = lambda u: 0.3 - 1.2 * u + 0.7 * u ** 2 + 0.25 * u ** 3  # noqa: E731
    exact, _ = quad(lambda u: math.exp(u - h) * f(u), 0, h)
    assert sum(w * f(u) for w, u in zip(weights, nodes)) == pytest.approx(exact, rel=1e-12)


@pytest.mark.parametrize("h", [0.05, 1.3, -0.7])
@pytest.mark.parametrize("eta", [0.0, 0.5, 1.0])
def test_exponential_moments_match_numerical_integrals(h, eta):
    from scipy.integrate import quad

    moments = S._exp_moments(h, 4, eta)
    for k, m in enumerate(moments):
        exact, _ = quad(lambda u: (1 + eta) * math.exp((1 + eta) * (u - h)) * u ** k, 0, h, epsabs=0, epsrel=1e-13)
        assert m == pytest.approx(exact, rel=1e-9, abs=1e-15)


def test_unipc_rejects_a_bad_order(gaussian):
    from kuosan.errors import KuosanError

    with pytest.raises(KuosanError):
        SAMPLERS["unipc"](gaussian, torch.zeros(1, 1), _grid(3), order=5)


@pytest.mark.parametrize("name,steps", [("euler_ancestral", 400), ("dpmpp_2m_sde", 200), ("dpmpp_3m_sde", 200),
                                        ("dpmpp_3m", 100), ("unipc", 100)])
def test_samplers_reproduce_the_mixture(name, steps):
    """20,000 samples of 0.3·N(−2.8, 0.4²) + 0.7·N(1.2, 0.6²) (mean 0, so that N(0, σ_max²) is the
    right start): component weights and standard deviations within ~4 standard errors."""
    den = GaussianMixtureDenoiser([0.3, 0.7], [[-2.8], [1.2]], [0.4, 0.6])
    sigmas = get_sigmas("karras", steps, 0.01, 80.0)
    g = torch.Generator().manual_seed(0)
    n = 20000
    out = SAMPLERS[name](den, torch.randn(n, 1, generator=g, dtype=torch.float64) * sigmas[0], sigmas, generator=g)
    left = out[:, 0] < -0.8
    w = left.double().mean().item()
    assert w == pytest.approx(0.3, abs=4 * math.sqrt(0.3 * 0.7 / n))
    for sel, s in ((left, 0.4), (~left, 0.6)):
        assert out[sel].std().item() == pytest.approx(s, abs=4 * s / math.sqrt(2 * sel.sum().item()) + 0.004)


def test_log_snr_grid_is_uniform_in_lambda():
    """λ = −log σ (half the log-SNR, α/σ_vp = 1/σ in the σ view) has equal steps, from σ_max to σ_min."""
    sigmas = get_sigmas("log-snr", 12, 0.002, 80.0)[:-1]
    steps = torch.diff(-sigmas.log())
    assert torch.allclose(steps, steps[0].expand(12 - 1), rtol=1e-12)
    assert float(steps.sum()) == pytest.approx(math.log(80.0 / 0.002))


@pytest.mark.parametrize("name,eta", [("dpmpp_3m", 0.0), ("dpmpp_3m_sde", 0.0), ("dpmpp_3m_sde", 0.5)])
def test_third_order_dpm_solver_step_integrates_a_quadratic_exactly(name, eta):
    """Once three outputs are at hand, a 3M step is the exact solution
    x_next = e^{−(1+η)h} x + ∫_0^h ω(u) D(λ + u) du, ω(u) = (1+η) e^{(1+η)(u−h)}, with D replaced by the
    quadratic through them (Lu et al. 2022, "DPM-Solver++"), so it is exact for a D quadratic in
    λ = −log σ: the third-order method. The variant that gives the second divided difference c half its
    weight (k-diffusion's ``sample_dpmpp_3m_sde``, second order) is off by c/2 · ∫ ω u², here 0.20 at
    η = 0 and 0.26 at η = 0.5."""
    from scipy.integrate import quad

    a, b, c = 0.4, -0.3, 0.7
    quadratic = lambda lam: a + b * lam + c * lam ** 2  # noqa: E731
    sigmas = torch.tensor([8.0, 3.0, 1.5, 0.4], dtype=torch.float64)  # uneven steps in λ
    states = []
    SAMPLERS[name](lambda x, sigma, **kw: torch.full_like(x, quadratic(-math.log(float(sigma)))),
                   torch.randn(3, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64) * 8,
                   sigmas, callback=lambda info: states.append(info["x"]),
                   **({"eta": eta, "s_noise": 0.0} if name == "dpmpp_3m_sde" else {}))
    lam, h = -math.log(1.5), math.log(1.5 / 0.4)
    w = lambda u: (1 + eta) * math.exp((1 + eta) * (u - h))  # noqa: E731
    integral, _ = quad(lambda u: w(u) * quadratic(lam + u), 0, h, epsabs=0, epsrel=1e-13)
    expected = states[1] * math.exp(-(1 + eta) * h) + integral
    assert torch.allclose(states[2], expected, rtol=1e-12, atol=1e-12)
    half_weight_error = c / 2 * quad(lambda u: w(u) * u ** 2, 0, h)[0]
    assert half_weight_error > 0.15  # what the tolerance above would have to absorb
