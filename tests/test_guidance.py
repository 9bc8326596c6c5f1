"""Classifier-free guidance: the formula in every parameterisation, its score-space meaning on an exact
class-conditional mixture, the guidance interval's boundaries, rescaling, and the forward-pass budget."""

import pytest
import torch
from conftest import GaussianMixtureDenoiser

from kuosan.diffusion.guidance import classifier_free_guidance
from kuosan.diffusion.precond import EpsPrecond, VPrecond
from kuosan.diffusion.samplers import sample_heun
from kuosan.diffusion.schedules import DiscreteVP, get_sigmas

NULL = 3  # the mixture below has classes 0, 1, 2; label 3 is "no class"


def _mixture():
    return GaussianMixtureDenoiser([0.2, 0.5, 0.3], [[-2.0, 0.0], [1.5, 1.5], [1.0, -2.0]], [0.3, 0.5, 0.4])


def _log_density(den, x, sigma, labels):
    """log p_σ(x | c) of the mixture (all components for the null label), up to a constant."""
    var = den.stds ** 2 + sigma ** 2
    sq = (x[:, None, :] - den.means[None]).square().sum(-1)
    logp = den.weights.log() - x.shape[1] / 2 * var.log() - sq / (2 * var)
    keep = torch.nn.functional.one_hot(labels.clamp(max=2), 3).bool() | (labels == NULL)[:, None]
    return logp.masked_fill(~keep, float("-inf")).logsumexp(1)


def _score(den, x, sigma, labels):
    x = x.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(_log_density(den, x, sigma, labels).sum(), x)
    return grad


def test_mixture_denoiser_obeys_tweedie():
    """The test model itself: D(x; σ) = x + σ² ∇ log p_σ(x) (Tweedie's formula), per class and overall."""
    den = _mixture()
    x = torch.randn(32, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64) * 2
    for labels in (torch.full((32,), NULL), torch.arange(32) % 3):
        for sigma in (0.1, 0.7, 3.0):
            assert torch.allclose(den(x, torch.tensor(sigma), class_labels=labels),
                                  x + sigma ** 2 * _score(den, x, sigma, labels), atol=1e-10)


@pytest.mark.parametrize("w", [0.0, 1.0, 2.5, 6.0])
def test_guidance_is_the_score_of_a_tilted_density(w):
    """D_w = D_u + w (D_c − D_u) is the denoiser of p_u^{1−w} p_c^{w}: its score is
    (1 − w) ∇ log p_u + w ∇ log p_c (Ho & Salimans 2022, eq. 6, in score form)."""
    den = _mixture()
    guided = classifier_free_guidance(den, w, null_label=NULL)
    x = torch.randn(16, 2, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    labels = torch.arange(16) % 3
    for sigma in (0.2, 1.5):
        score = (1 - w) * _score(den, x, sigma, torch.full((16,), NULL)) + w * _score(den, x, sigma, labels)
        assert torch.allclose(guided(x, torch.tensor(sigma), class_labels=labels), x + sigma ** 2 * score, atol=1e-10)


class ToyConditionalNet(torch.nn.Module):
    def forward(self, x, c_noise, class_labels=None):
        c = class_labels.float().reshape(-1, 1, 1, 1)
        return torch.tanh(x * (1 + c) + c_noise.reshape(-1, 1, 1, 1) / 500) - 0.1 * c


@pytest.mark.parametrize("cls", [EpsPrecond, VPrecond])
def test_guidance_on_denoised_equals_guidance_on_the_network_output(cls):
    """D is affine in the network output F with coefficients that do not depend on the class, so
    guiding D is guiding ε (or v) with the same weight."""
    vp = DiscreteVP()
    precond = cls(ToyConditionalNet(), vp)
    x = torch.randn(4, 1, 3, 3, generator=torch.Generator().manual_seed(2))
    sigma = torch.tensor([0.3, 1.0, 5.0, 40.0])
    labels, null = torch.tensor([0, 1, 2, 1]), torch.full((4,), NULL)
    w = 3.0
    _, c_out, c_in = precond.scalings(sigma.reshape(-1, 1, 1, 1))
    t = vp.sigma_to_t(sigma).float()
    f_c, f_u = precond.net(c_in * x, t, labels), precond.net(c_in * x, t, null)
    c_skip = precond.scalings(sigma.reshape(-1, 1, 1, 1))[0]
    expected = c_skip * x + c_out * (f_u + w * (f_c - f_u))
    got = classifier_free_guidance(precond, w, null_label=NULL)(x, sigma, class_labels=labels)
    assert torch.allclose(got, expected, atol=1e-5)


def test_weight_one_is_the_conditional_denoiser_in_one_plain_pass():
    calls = []
    den = _mixture()

    def counting(x, sigma, class_labels=None):
        calls.append(x.shape[0])
        return den(x, sigma, class_labels=class_labels)

    x = torch.randn(5, 2, dtype=torch.float64)
    labels = torch.tensor([0, 1, 2, 0, 1])
    out = classifier_free_guidance(counting, 1.0, null_label=NULL)(x, torch.tensor(0.5), class_labels=labels)
    assert calls == [5] and torch.equal(out, den(x, torch.tensor(0.5), class_labels=labels))
    out = classifier_free_guidance(counting, 4.0, null_label=NULL)(x, torch.tensor(0.5))  # no labels: unguided
    assert calls == [5, 5] and torch.equal(out, den(x, torch.tensor(0.5)))


def test_interval_is_half_open_and_per_sample():
    """Guided where σ_lo < σ <= σ_hi (Kynkäänniemi et al. 2024), conditional elsewhere, sample by sample."""
    den = _mixture()
    lo, hi = 0.5, 2.0
    guided = classifier_free_guidance(den, 3.0, null_label=NULL, interval=(lo, hi))
    full = classifier_free_guidance(den, 3.0, null_label=NULL)
    x = torch.randn(4, 2, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    labels = torch.tensor([0, 1, 2, 0])
    sigma = torch.tensor([0.5, 0.5000001, 2.0, 2.0000001], dtype=torch.float64)
    out = guided(x, sigma, class_labels=labels)
    cond = den(x, sigma, class_labels=labels)
    strong = full(x, sigma, class_labels=labels)
    assert torch.equal(out[[0, 3]], cond[[0, 3]])
    assert torch.allclose(out[[1, 2]], strong[[1, 2]], atol=1e-12)
    assert not torch.allclose(out[[1, 2]], cond[[1, 2]])


def test_rescale_interpolates_between_cfg_and_the_std_matched_prediction():
    """Lin et al. 2024, eq. 15-16: x_rescaled = x_cfg · std(x_c)/std(x_cfg); φ mixes it with x_cfg."""
    den = _mixture()
    x = torch.randn(3, 2, generator=torch.Generator().manual_seed(4), dtype=torch.float64) * 2
    labels, sigma = torch.tensor([0, 1, 2]), torch.tensor(1.0)
    plain = classifier_free_guidance(den, 5.0, null_label=NULL)(x, sigma, class_labels=labels)
    cond = den(x, sigma, class_labels=labels)
    matched = plain * cond.std(dim=1, keepdim=True) / plain.std(dim=1, keepdim=True)
    for phi in (0.0, 0.3, 1.0):
        out = classifier_free_guidance(den, 5.0, null_label=NULL, rescale=phi)(x, sigma, class_labels=labels)
        assert torch.allclose(out, phi * matched + (1 - phi) * plain, atol=1e-12)


def test_conditional_sampling_draws_the_class():
    """Weight 1 samples the class-conditional component; weight 4 keeps every sample in it."""
    den = _mixture()
    sigmas = get_sigmas("karras", 30, 0.01, 40.0)
    x = torch.randn(2000, 2, generator=torch.Generator().manual_seed(5), dtype=torch.float64) * sigmas[0]
    labels = torch.full((2000,), 2)
    out = sample_heun(classifier_free_guidance(den, 1.0, null_label=NULL), x, sigmas,
                      extra_args={"class_labels": labels})
    assert out.mean(0).tolist() == pytest.approx([1.0, -2.0], abs=0.04)
    assert out.std(0).tolist() == pytest.approx([0.4, 0.4], rel=0.06)
    strong = sample_heun(classifier_free_guidance(den, 4.0, null_label=NULL), x, sigmas,
                         extra_args={"class_labels": labels})
    assert ((strong - torch.tensor([1.0, -2.0], dtype=torch.float64)).norm(dim=1) < 2.0).all()
