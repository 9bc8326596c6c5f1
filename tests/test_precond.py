import pytest
import torch

from kuosan.diffusion.guidance import classifier_free_guidance
from kuosan.diffusion.objectives import ddpm_loss, edm_loss
from kuosan.diffusion.precond import EDMPrecond, EpsPrecond, VPrecond, X0Precond
from kuosan.diffusion.schedules import DiscreteVP

SIGMAS = torch.tensor([0.002, 0.1, 0.5, 1.0, 5.0, 80.0]).reshape(-1, 1, 1, 1)


class Probe(torch.nn.Module):
    """A fake network that returns a fixed tensor, to read the scalings back."""

    def __init__(self, out):
        super().__init__()
        self.out, self.seen = out, None

    def forward(self, x, c_noise, class_labels=None):
        self.seen = (x, c_noise, class_labels)
        return self.out.expand_as(x)


def test_edm_identities():
    p = EDMPrecond(torch.nn.Identity(), sigma_data=0.5)
    c_skip, c_out, c_in = p.scalings(SIGMAS)
    sd = 0.5
    # EDM Appendix B.6: unit-variance network input, and c_skip/c_out minimise the target's variance
    assert torch.allclose(c_in ** 2 * (SIGMAS ** 2 + sd ** 2), torch.ones_like(SIGMAS))
    assert torch.allclose(c_skip * (SIGMAS ** 2 + sd ** 2), torch.full_like(SIGMAS, sd ** 2))
    assert torch.allclose(c_out ** 2, SIGMAS ** 2 * sd ** 2 / (SIGMAS ** 2 + sd ** 2))


@pytest.mark.parametrize("cls", [EpsPrecond, VPrecond, X0Precond])
def test_discrete_inputs_have_unit_variance(cls):
    p = cls(torch.nn.Identity(), DiscreteVP())
    _, _, c_in = p.scalings(SIGMAS)
    assert torch.allclose(c_in ** 2 * (SIGMAS ** 2 + 1), torch.ones_like(SIGMAS))


def test_parameterisations_recover_x0_from_their_true_targets():
    g = torch.Generator().manual_seed(0)
    x0, n = torch.randn(6, 1, 4, 4, generator=g), torch.randn(6, 1, 4, 4, generator=g)
    sigma = SIGMAS.flatten()
    x = x0 + sigma.reshape(-1, 1, 1, 1) * n
    alpha = 1 / (1 + sigma ** 2).sqrt()
    sigma_vp = sigma * alpha
    targets = {
        EpsPrecond: n,
        VPrecond: alpha.reshape(-1, 1, 1, 1) * n - sigma_vp.reshape(-1, 1, 1, 1) * x0,
        X0Precond: x0,
    }
    for cls, target in targets.items():
        p = cls(Probe(target), DiscreteVP())  # a perfect network
        assert torch.allclose(p(x, sigma), x0, atol=1e-4), cls


def test_eps_precond_feeds_fractional_timestep():
    vp = DiscreteVP()
    probe = Probe(torch.zeros(1))
    p = EpsPrecond(probe, vp)
    p(torch.zeros(3, 1, 2, 2), vp.sigmas[[0, 10, 999]].float())
    assert torch.allclose(probe.seen[1], torch.tensor([0.0, 10.0, 999.0]), atol=1e-2)


def test_losses_are_per_sample_and_zero_for_perfect_denoiser():
    x0 = torch.randn(5, 1, 4, 4)

    p = EDMPrecond(torch.nn.Identity())
    p.forward = lambda x, sigma, labels=None: x0  # D returns the clean data
    assert torch.allclose(edm_loss(p, x0), torch.zeros(5))
    q = EpsPrecond(torch.nn.Identity(), DiscreteVP())
    q.forward = lambda x, sigma, labels=None: x0
    assert ddpm_loss(q, x0).shape == (5,)
    assert torch.allclose(ddpm_loss(q, x0, min_snr_gamma=5.0), torch.zeros(5))


def test_eps_loss_equals_noise_mse():
    """ddpm_loss with EpsPrecond and no min-SNR is exactly ||F − ε||²."""
    x0 = torch.randn(4, 1, 3, 3)
    out = torch.randn(4, 1, 3, 3)
    p = EpsPrecond(Probe(out), DiscreteVP())
    g = torch.Generator().manual_seed(3)
    loss = ddpm_loss(p, x0, generator=g)
    g = torch.Generator().manual_seed(3)
    torch.rand((4,), generator=g)
    noise = torch.randn(x0.shape, generator=g)
    assert torch.allclose(loss, (out - noise).square().flatten(1).mean(1), atol=1e-4)


def test_cfg_is_one_forward_and_matches_formula():
    calls = []

    def den(x, sigma, class_labels=None):
        calls.append(x.shape[0])
        return x * 0 + class_labels.float().reshape(-1, 1)

    guided = classifier_free_guidance(den, 3.0, null_label=10)
    out = guided(torch.zeros(4, 2), torch.tensor(1.0), class_labels=torch.tensor([1, 2, 3, 4]))
    assert calls == [8]
    # D_u = 10, D_c = k: 10 + 3 (k − 10)
    assert torch.allclose(out[:, 0], torch.tensor([10 + 3 * (k - 10.0) for k in (1, 2, 3, 4)]))


def test_cfg_interval_skips_unconditional_pass_outside():
    calls = []

    def den(x, sigma, class_labels=None):
        calls.append(x.shape[0])
        return x + class_labels.float().reshape(-1, 1)

    guided = classifier_free_guidance(den, 2.0, null_label=0, interval=(0.5, 2.0))
    labels = torch.tensor([1, 1])
    assert torch.allclose(guided(torch.zeros(2, 1), 5.0, class_labels=labels), torch.ones(2, 1))
    assert calls == [2]
    assert torch.allclose(guided(torch.zeros(2, 1), 1.0, class_labels=labels), torch.full((2, 1), 2.0))


def test_cfg_rescale_matches_conditional_std():
    def den(x, sigma, class_labels=None):
        return torch.where(class_labels.reshape(-1, 1) == 0, x * 1.0, x * 2.0)

    x = torch.randn(3, 16)
    guided = classifier_free_guidance(den, 4.0, null_label=0, rescale=1.0)
    out = guided(x, 1.0, class_labels=torch.tensor([1, 1, 1]))
    assert torch.allclose(out.std(dim=1), (2 * x).std(dim=1), rtol=1e-5)
