"""Post-hoc EMA (EDM2, Karras et al. 2024, §3 and Appendix C) against closed forms."""

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy import integrate
from torch import nn

from kuosan.errors import KuosanError
from kuosan.training.posthoc_ema import (PosthocEMA, PowerEMA, gamma_to_sigma_rel, list_snapshots, power_beta,
                                         power_weights, profile_inner, reconstruct, sigma_rel_to_gamma,
                                         solve_coefficients)

FIXTURES = Path(__file__).parent / "fixtures"


class Weights(nn.Module):
    """A "network" whose weights we set: θ_t = f(t)."""

    def __init__(self, d: int):
        super().__init__()
        self.theta = nn.Parameter(torch.zeros(d, dtype=torch.float64))
        self.register_buffer("count", torch.zeros((), dtype=torch.long))


def trajectory(T: int, d: int = 4) -> np.ndarray:
    """θ_1..θ_T: a drift, an oscillation, a power and a random walk (float64, [T, d])."""
    s = np.arange(1, T + 1, dtype=np.float64)
    walk = np.cumsum(np.random.default_rng(0).normal(size=T)) / math.sqrt(T)
    return np.stack([s / T, np.sin(s / 37.0), (s / T) ** 3, walk], axis=1)[:, :d]


def train(run_dir, thetas: np.ndarray, every: int, posthoc=None, start: int = 0) -> PosthocEMA:
    model = Weights(thetas.shape[1])
    posthoc = posthoc or PosthocEMA(model)
    for step in range(start, len(thetas)):
        model.theta.data = torch.from_numpy(thetas[step])
        model.count.fill_(step + 1)
        posthoc.update(model, step)
        if (step + 1) % every == 0:
            posthoc.save_snapshot(run_dir, step + 1)
    return posthoc


def test_sigma_rel_and_gamma_are_inverse_and_match_edm2():
    assert sigma_rel_to_gamma(0.05) == pytest.approx(16.97, abs=0.005)  # EDM2 §3: γ = 16.97 and 6.94
    assert sigma_rel_to_gamma(0.10) == pytest.approx(6.94, abs=0.005)
    for s in (0.01, 0.05, 0.1, 0.2, 12 ** -0.5):
        assert gamma_to_sigma_rel(sigma_rel_to_gamma(s)) == pytest.approx(s, rel=1e-10)


def test_sigma_rel_is_the_profiles_relative_standard_deviation():
    gamma, t = 6.94, 1.0
    p = lambda tau: (gamma + 1) * tau ** gamma / t ** (gamma + 1)  # noqa: E731
    mean = integrate.quad(lambda tau: tau * p(tau), 0, t)[0]
    var = integrate.quad(lambda tau: (tau - mean) ** 2 * p(tau), 0, t)[0]
    assert math.sqrt(var) / t == pytest.approx(gamma_to_sigma_rel(gamma), rel=1e-8)


@pytest.mark.parametrize("sigma_rel", [0.0, -0.1, 0.3, float("nan")])
def test_sigma_rel_outside_the_power_profiles_is_refused(sigma_rel):
    with pytest.raises(KuosanError, match="σ_rel"):
        sigma_rel_to_gamma(sigma_rel)


def test_the_update_telescopes_to_the_profiles_mass_per_step():
    gamma, T = 4.5, 60
    thetas = np.random.default_rng(1).normal(size=(T, 1))
    ema = PowerEMA(Weights(1), gamma)
    for t in range(T):
        ema.update(_set(Weights(1), thetas[t]))
    w = power_weights(T, gamma)
    assert power_beta(1, gamma) == 0.0 and w.sum() == pytest.approx(1.0, abs=1e-14)
    mass = [integrate.quad(lambda tau: (gamma + 1) * tau ** gamma / T ** (gamma + 1), s - 1, s)[0]
            for s in range(1, T + 1)]
    np.testing.assert_allclose(w, mass, rtol=1e-9, atol=1e-15)
    assert float(ema.module.theta) == pytest.approx(float(w @ thetas[:, 0]), abs=1e-12)


def _set(model, value):
    model.theta.data = torch.as_tensor(value, dtype=torch.float64)
    return model


@pytest.mark.parametrize("t_a,g_a,t_b,g_b", [(1.0, 16.97, 1.0, 6.94), (0.4, 3.0, 1.0, 6.94), (5.0, 0.0, 2.0, 10.0)])
def test_inner_products_of_profiles_match_quadrature(t_a, g_a, t_b, g_b):
    p = lambda tau, t, g: (g + 1) * tau ** g / t ** (g + 1)  # noqa: E731
    direct = integrate.quad(lambda tau: p(tau, t_a, g_a) * p(tau, t_b, g_b), 0, min(t_a, t_b), epsabs=0)[0]
    assert float(profile_inner(t_a, g_a, t_b, g_b)) == pytest.approx(direct, rel=1e-8)


def test_inner_products_do_not_overflow_for_long_runs():
    value = float(profile_inner(1e7, 300.0, 2e7, 300.0))  # t^γ alone would overflow float64
    assert math.isfinite(value) and value > 0


def test_reconstructing_a_stored_profile_returns_it(tmp_path):
    thetas = trajectory(400)
    posthoc = train(tmp_path, thetas, every=100)
    x, residual = solve_coefficients([100, 100, 400, 400], [16.97, 6.94, 16.97, 6.94], 400, 6.94)
    assert residual < 1e-6 and np.abs(x - [0, 0, 0, 1]).max() < 1e-6
    got = reconstruct(tmp_path, 0.10)
    np.testing.assert_allclose(got["theta"].numpy(), posthoc.profiles[1].module.theta.numpy(), atol=1e-9)
    assert int(got["count"]) == 400 and got["theta"].dtype == torch.float64


def test_reconstruction_matches_the_ema_computed_directly(tmp_path):
    T, every = 2000, 50
    thetas = trajectory(T)
    train(tmp_path, thetas, every=every)
    gammas = [sigma_rel_to_gamma(s) for s in (0.05, 0.10)]
    ts = [t for t in range(every, T + 1, every) for _ in gammas]
    norm = np.sqrt((thetas ** 2).sum(0))  # ‖θ‖ in L²(0, T) of the piecewise constant trajectory
    for sigma_rel in (0.03, 0.07, 0.15):
        direct = power_weights(T, sigma_rel_to_gamma(sigma_rel)) @ thetas  # the EMA a run with it would keep
        got = reconstruct(tmp_path, sigma_rel)["theta"].numpy()
        _, residual = solve_coefficients(ts, gammas * (len(ts) // 2), T, sigma_rel_to_gamma(sigma_rel))
        p_norm = math.sqrt(float(profile_inner(T, sigma_rel_to_gamma(sigma_rel), T, sigma_rel_to_gamma(sigma_rel))))
        bound = residual * p_norm * norm  # Cauchy–Schwarz: |⟨Σ x p − p_target, θ⟩| ≤ ‖·‖ ‖θ‖
        assert np.all(np.abs(got - direct) <= bound * (1 + 1e-6) + 1e-9)
        assert np.abs(got - direct).max() < 2e-3 * np.abs(direct).max()


def test_reconstruction_at_an_earlier_step_uses_only_the_snapshots_up_to_it(tmp_path):
    thetas = trajectory(600)
    train(tmp_path, thetas, every=100)
    direct = power_weights(300, sigma_rel_to_gamma(0.05)) @ thetas[:300]
    np.testing.assert_allclose(reconstruct(tmp_path, 0.05, step=300)["theta"].numpy(), direct, atol=1e-9)


def test_resuming_from_a_snapshot_continues_exactly(tmp_path):
    thetas = trajectory(300)
    whole = train(tmp_path / "whole", thetas, every=100)
    train(tmp_path / "resumed", thetas, every=100)
    resumed = PosthocEMA(Weights(4))
    resumed.restore(tmp_path / "resumed", 100)  # back to step 100: later snapshots are an abandoned future
    assert [s for s, _ in list_snapshots(tmp_path / "resumed")] == [100]
    train(tmp_path / "resumed", thetas, every=100, posthoc=resumed, start=100)
    for a, b in zip(whole.profiles, resumed.profiles):
        assert a.t == b.t == 300 and torch.equal(a.module.theta, b.module.theta)


def test_an_update_out_of_step_is_refused():
    posthoc = PosthocEMA(Weights(2))
    with pytest.raises(KuosanError, match="out of step"):
        posthoc.update(Weights(2), 5)


def test_a_run_without_snapshots_says_so(tmp_path):
    with pytest.raises(KuosanError, match="no post-hoc EMA snapshots"):
        reconstruct(tmp_path, 0.1)
    with pytest.raises(KuosanError, match="no post-hoc EMA snapshot of step 7"):
        PosthocEMA(Weights(2)).restore(tmp_path, 7)


def test_a_reconstruction_loads_into_the_model_it_was_taken_from(tmp_path):
    import kuosan

    pipe = kuosan.load(FIXTURES / "v1-run", device="cpu")
    posthoc = PosthocEMA(pipe.precond)
    for step in range(3):
        posthoc.update(pipe.precond, step)
    posthoc.save_snapshot(tmp_path, 3)
    pipe.precond.load_state_dict(reconstruct(tmp_path, 0.1))  # same names, shapes and dtypes
    for name, v in pipe.precond.state_dict().items():
        assert torch.allclose(v, posthoc.profiles[1].module.state_dict()[name], rtol=0, atol=1e-6)


def test_posthoc_ema_export_refuses_adapters_and_raw_weights(tmp_path, capsys):
    from kuosan.cli import main

    assert main(["export", "--onnx", str(tmp_path / "o"), "--checkpoint", str(FIXTURES / "v1-run"), "--raw",
                 "--posthoc-ema", "0.1"]) == 2
    assert "--posthoc-ema" in capsys.readouterr().err
