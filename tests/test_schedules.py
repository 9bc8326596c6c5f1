import pytest
import torch

from kuosan.diffusion.schedules import SCHEDULES, DiscreteVP, get_sigmas
from kuosan.errors import KuosanError


@pytest.mark.parametrize("kind", SCHEDULES)
@pytest.mark.parametrize("n", [1, 2, 10, 50])
def test_schedule_invariants(kind, n):
    sigmas = get_sigmas(kind, n, 0.002, 80.0)
    assert sigmas.dtype == torch.float64
    assert sigmas.shape == (n + 1,)
    assert sigmas[-1] == 0
    assert (sigmas[:-1] > 0).all()
    assert (sigmas[1:] < sigmas[:-1]).all()


@pytest.mark.parametrize("kind", ["karras", "exponential", "log-snr"])
def test_endpoints(kind):
    sigmas = get_sigmas(kind, 10, 0.002, 80.0)
    assert sigmas[0].item() == pytest.approx(80.0)
    assert sigmas[-2].item() == pytest.approx(0.002)


def test_karras_rho_one_is_linear():
    sigmas = get_sigmas("karras", 5, 1.0, 5.0, rho=1.0)
    assert torch.allclose(sigmas[:-1], torch.tensor([5.0, 4.0, 3.0, 2.0, 1.0], dtype=torch.float64))


@pytest.mark.parametrize("beta", ["linear", "cosine"])
def test_discrete_vp_matches_alpha_bar(beta):
    vp = DiscreteVP(beta)
    # x_vp = sqrt(ᾱ)·(x0 + σ n) must have unit variance for unit-variance x0: ᾱ(1 + σ²) = 1
    assert torch.allclose(vp.alpha_bar * (1 + vp.sigmas ** 2), torch.ones(1000, dtype=torch.float64))
    t = torch.tensor([0.0, 10.0, 10.5, 999.0])
    assert torch.allclose(vp.sigma_to_t(vp.t_to_sigma(t)), t.double(), atol=1e-6)


def test_linear_vp_known_values():
    vp = DiscreteVP("linear")
    assert vp.sigma_min == pytest.approx((1e-4 / (1 - 1e-4)) ** 0.5, rel=1e-9)
    assert vp.sigma_max == pytest.approx(157.4, rel=0.01)  # DDPM's linear β reaches σ ≈ 157


@pytest.mark.parametrize("spacing", ["linspace", "leading", "trailing"])
def test_spacings(spacing):
    vp = DiscreteVP("linear")
    t = vp.timesteps_for(10, spacing)
    assert len(t) == 10 and (t[1:] < t[:-1]).all() and t.min() >= 0 and t.max() <= 999
    expected_first = {"linspace": 999, "leading": 900, "trailing": 999}[spacing]
    assert t[0] == expected_first
    sig = get_sigmas("vp-linear", 10, spacing=spacing)
    assert sig.shape == (11,) and sig[-1] == 0


def test_bad_schedule_is_user_error():
    with pytest.raises(KuosanError):
        get_sigmas("nope", 10, 0.1, 1.0)
    with pytest.raises(KuosanError):
        get_sigmas("karras", 0, 0.1, 1.0)
    with pytest.raises(KuosanError):
        get_sigmas("karras", 10, 2.0, 1.0)
