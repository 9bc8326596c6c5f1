"""kuosan's samplers against diffusers' schedulers on the same ε-prediction network and noise.

Correspondence. diffusers works in the VP view, x_vp = sqrt(ᾱ_t)·(x0 + σ_t·ε) with σ_t = sqrt((1 − ᾱ_t)/ᾱ_t),
so kuosan's state is x = x_vp / sqrt(ᾱ_t) = x_vp·sqrt(1 + σ_t²). An ε-network F(x_vp, t) is kuosan's
``EpsPrecond`` (c_in = 1/sqrt(1 + σ²), c_noise = t). diffusers' timesteps t_i become the σ grid σ(t_i) of
the same ``DiscreteVP`` schedule; its last step goes to ᾱ = 1 (DDIM's ``final_alpha_cumprod`` with
``set_alpha_to_one=True``; DPM-Solver's ``final_sigmas_type="zero"``), i.e. to σ = 0: the grid ends in 0.
diffusers' DDIM steps from t to t − T/n, which is the next timestep for the default "leading" spacing.
"""

import pytest
import torch

diffusers = pytest.importorskip("diffusers", reason="diffusers is optional: pip install diffusers")
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")  # numpy 2 copy= notice inside diffusers

from kuosan.diffusion.precond import EpsPrecond  # noqa: E402
from kuosan.diffusion.samplers import sample_ddim, sample_dpmpp_2m  # noqa: E402
from kuosan.diffusion.schedules import DiscreteVP, append_zero  # noqa: E402


class ToyEps(torch.nn.Module):
    """An ε-network of (x_vp, t): the exact ε of data N(0, 0.5²) per pixel, ε = σ·x/(s² + σ²) with
    x = x_vp·sqrt(1 + σ²), plus a fixed nonlinear convolutional perturbation, so that the samples are
    images of scale 1 and the network is not linear."""

    def __init__(self, vp):
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.vp = vp
        self.a = torch.nn.Parameter(torch.randn(4, 1, 3, 3, generator=g) * 0.5)
        self.b = torch.nn.Parameter(torch.randn(1, 4, 3, 3, generator=g) * 0.5)

    def forward(self, x, t, class_labels=None):
        t = torch.as_tensor(t, dtype=torch.float32).reshape(-1, 1, 1, 1).expand(x.shape[0], 1, 1, 1)
        sigma = self.vp.t_to_sigma(t.double()).float()
        exact = sigma * x * (1 + sigma ** 2).sqrt() / (0.25 + sigma ** 2)
        h = torch.tanh(torch.nn.functional.conv2d(x, self.a, padding=1) + torch.sin(t / 97.0))
        return exact + 0.2 * torch.nn.functional.conv2d(h, self.b, padding=1)


def _setup(scheduler, n):
    vp = DiscreteVP("linear", 1000)
    net = ToyEps(vp).requires_grad_(False)
    precond = EpsPrecond(net, vp)
    scheduler.set_timesteps(n)
    sigmas = append_zero(vp.t_to_sigma(scheduler.timesteps.double()))
    noise = torch.randn(4, 1, 6, 6, generator=torch.Generator().manual_seed(1))
    return vp, net, precond, sigmas, noise


def _run_both(scheduler, sampler, n):
    vp, net, precond, sigmas, noise = _setup(scheduler, n)
    x_vp = noise * (sigmas[0] / (1 + sigmas[0] ** 2).sqrt()).float()  # the same state at σ_0 in both views
    theirs = []
    with torch.no_grad():
        for t in scheduler.timesteps:
            x_vp = scheduler.step(net(x_vp, t), t, x_vp).prev_sample
            theirs.append(x_vp)
    ours = []
    sampler(precond, noise * sigmas[0].float(), sigmas.float(),
            callback=lambda info: ours.append(info["x"] / (1 + info["sigma_next"].double() ** 2).sqrt()))
    return theirs, ours


def _assert_same_trajectory(theirs, ours):
    """Equal at every step up to float32 rounding (diffusers keeps ᾱ in float32), relative to the scale."""
    for i, (a, b) in enumerate(zip(theirs, ours)):
        err = (a.double() - b.double()).abs().max() / a.abs().max()
        assert err < 5e-6, (i, err.item())


def test_ddim_eta0_matches_diffusers_step_for_step():
    sched = diffusers.DDIMScheduler(num_train_timesteps=1000, beta_schedule="linear", beta_start=1e-4,
                                    beta_end=0.02, clip_sample=False, set_alpha_to_one=True,
                                    timestep_spacing="leading")
    theirs, ours = _run_both(sched, sample_ddim, 10)
    assert len(theirs) == len(ours) == 10
    _assert_same_trajectory(theirs, ours)


@pytest.mark.parametrize("n", [5, 10, 20])
def test_dpmpp_2m_matches_diffusers_step_for_step(n):
    sched = diffusers.DPMSolverMultistepScheduler(num_train_timesteps=1000, beta_schedule="linear",
                                                  algorithm_type="dpmsolver++", solver_order=2,
                                                  solver_type="midpoint", lower_order_final=True,
                                                  final_sigmas_type="zero")
    theirs, ours = _run_both(sched, sample_dpmpp_2m, n)
    assert len(theirs) == len(ours) == n
    _assert_same_trajectory(theirs, ours)


@pytest.mark.parametrize("spacing", ["linspace", "leading", "trailing"])
def test_timestep_spacings_match_diffusers(spacing):
    vp = DiscreteVP("linear", 1000)
    sched = diffusers.DDIMScheduler(num_train_timesteps=1000, timestep_spacing=spacing)
    for n in range(2, 1001):
        sched.set_timesteps(n)
        assert torch.equal(vp.timesteps_for(n, spacing).long(), sched.timesteps.long()), n
