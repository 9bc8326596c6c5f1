"""The GAN baseline: R3GAN's objective against closed forms, the generator as a one-step kuosan denoiser,
bit-exact resume, and the command line from training to samples."""

from __future__ import annotations

import json
import math

import pytest
import torch
from safetensors.torch import load_file
from torch import nn

from kuosan.diffusion.precond import GANPrecond, build_precond
from kuosan.errors import KuosanError
from kuosan.nets.gan import Discriminator, GANConfig, GANPair, levels_for
from kuosan.training.gan import (GANTrainConfig, cosine, d_objective, g_objective, relativistic_d_loss,
                                 relativistic_g_loss, train_gan, zero_centered_penalty)


class QuadraticD(nn.Module):
    """D(x) = Σ ½ a·x² + b·x per sample: ∇ₓD = a·x + b, ∂D/∂a = ½x², ∂D/∂b = x (all elementwise)."""

    def __init__(self, shape, seed=0):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.a = nn.Parameter(torch.randn(shape, generator=g, dtype=torch.float64))
        self.b = nn.Parameter(torch.randn(shape, generator=g, dtype=torch.float64))

    def forward(self, x, labels=None):
        return (0.5 * self.a * x ** 2 + self.b * x).flatten(1).sum(1)


def _pair(shape=(1, 3, 3), n=5, seed=1):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(n, *shape, generator=g, dtype=torch.float64),
            torch.randn(n, *shape, generator=g, dtype=torch.float64))


def test_relativistic_losses_are_softplus_of_the_logit_gap():
    r, f = torch.tensor([2.0, -1.0, 0.0]), torch.tensor([0.5, 3.0, 0.0])
    expected_d = torch.log1p(torch.exp(-(r - f)))
    assert torch.allclose(relativistic_d_loss(r, f), expected_d)
    assert torch.allclose(relativistic_g_loss(r, f), torch.log1p(torch.exp(-(f - r))))
    assert torch.allclose(relativistic_d_loss(r, r), torch.full((3,), math.log(2)))   # a tie: log 2


def test_r1_r2_of_a_quadratic_discriminator_match_its_gradient():
    D = QuadraticD((1, 3, 3))
    real, fake = _pair()
    x = real.clone().requires_grad_(True)
    r1 = zero_centered_penalty(D(x), x)
    expected = (D.a * real + D.b).square().flatten(1).sum(1)
    assert torch.allclose(r1, expected)


def test_d_objective_value_and_weight_gradients_match_closed_form():
    D, gamma = QuadraticD((1, 3, 3)), 0.7
    real, fake = _pair()
    loss, parts = d_objective(D, real, fake, None, gamma)
    loss.mean().backward()
    a, b = D.a.detach(), D.b.detach()

    def value(x):
        return (0.5 * a * x ** 2 + b * x).flatten(1).sum(1)

    u = value(real) - value(fake)                                   # the relativistic logit gap
    grad_r, grad_f = a * real + b, a * fake + b                     # ∇ₓD at reals and fakes
    pen = grad_r.square().flatten(1).sum(1) + grad_f.square().flatten(1).sum(1)
    assert torch.allclose(loss.detach(), torch.log1p(torch.exp(-u)) + gamma / 2 * pen)
    w = (-torch.sigmoid(-u)).view(-1, 1, 1, 1)                        # d softplus(−u) / du, per pair
    # d/da: adversarial w·(½r² − ½f²), penalty γ/2 · 2(a x + b)·x for x in reals and fakes; mean over pairs
    da = (w * 0.5 * (real ** 2 - fake ** 2) + gamma * (grad_r * real + grad_f * fake)).mean(0)
    db = (w * (real - fake) + gamma * (grad_r + grad_f)).mean(0)
    assert torch.allclose(D.a.grad, da) and torch.allclose(D.b.grad, db)
    assert parts["r1"] == pytest.approx(float(grad_r.square().flatten(1).sum(1).mean()))


def test_g_objective_gradient_reaches_the_fakes_only_through_d():
    D = QuadraticD((1, 3, 3))
    real, fake = _pair()
    fake = fake.clone().requires_grad_(True)
    g_objective(D, real, fake, None).sum().backward()
    u = (D(real) - D(fake)).detach()                                 # G's loss is softplus(u)
    expected = torch.sigmoid(u).view(-1, 1, 1, 1) * -(D.a.detach() * fake.detach() + D.b.detach())
    assert torch.allclose(fake.grad, expected)


def test_penalty_differentiates_twice_through_the_real_discriminator():
    """The R1 gradient with respect to D's weights (a second derivative through torch's convolutions)
    agrees with a central finite difference along a random direction, in float64."""
    torch.manual_seed(0)
    D = Discriminator(GANConfig(resolution=8, num_classes=3, d_channels=4)).double()
    x = torch.randn(4, 1, 8, 8, dtype=torch.float64)
    y = torch.tensor([0, 1, 2, 0])

    def r1():
        xx = x.clone().requires_grad_(True)
        return zero_centered_penalty(D(xx, y), xx).mean()

    D.zero_grad()
    r1().backward()
    params = list(D.parameters())
    direction = [torch.randn_like(p) for p in params]
    analytic = sum((p.grad * d).sum() for p, d in zip(params, direction) if p.grad is not None)  # ψ's bias: none
    eps = 1e-5
    with torch.no_grad():
        for p, d in zip(params, direction):
            p.add_(eps * d)
    plus = r1().detach()
    with torch.no_grad():
        for p, d in zip(params, direction):
            p.sub_(2 * eps * d)
    minus = r1().detach()
    assert float(analytic) == pytest.approx(float((plus - minus) / (2 * eps)), rel=1e-5)


def test_cosine_schedule_ends():
    assert cosine(0, 10, 2.0, 0.2) == 2.0 and cosine(10, 10, 2.0, 0.2) == pytest.approx(0.2)
    assert cosine(5, 10, 2.0, 0.2) == pytest.approx(1.1) and cosine(50, 10, 2.0, 0.2) == pytest.approx(0.2)


@pytest.mark.parametrize("resolution,channels,levels", [(28, 1, 2), (64, 3, 4), (8, 1, 1)])
def test_generator_and_discriminator_shapes(resolution, channels, levels):
    cfg = GANConfig(in_channels=channels, out_channels=channels, resolution=resolution, num_classes=4,
                    g_channels=4, d_channels=4, z_dim=16)
    assert levels_for(resolution)[0] == levels
    net = GANPair(cfg)
    y = torch.tensor([0, 3])
    x = net(torch.randn(2, channels, resolution, resolution), None, y)
    assert x.shape == (2, channels, resolution, resolution) and x.abs().max() <= 1
    assert net.discriminator(x, y).shape == (2,)
    with pytest.raises(KuosanError, match="no null class"):
        net(torch.randn(2, channels, resolution, resolution), None, torch.tensor([0, 4]))


def _tiny_precond() -> GANPrecond:
    torch.manual_seed(0)
    net = GANPair(GANConfig(resolution=8, num_classes=10, g_channels=8, d_channels=8, z_dim=16))
    return build_precond("gan", net, sigma_max=1.0).eval()


def test_one_euler_step_from_sigma_max_returns_the_generator_output():
    from kuosan.config import SampleConfig
    from kuosan.rng import generators_for_seeds, randn
    from kuosan.sampling import generate

    precond = _tiny_precond()
    labels = [k % 10 for k in range(6)]
    calls = []
    precond.net.generator.register_forward_hook(lambda m, inp, out: calls.append(len(out)))
    x = generate(precond, SampleConfig(sampler="euler", steps=1), shape=(1, 8, 8), seeds=range(6),
                 class_labels=labels)
    assert sum(calls) == 6                                           # one generator evaluation an image
    z = randn((6, 1, 8, 8), generators_for_seeds(list(range(6))))  # the sampler's start: σ_max · z, σ_max = 1
    with torch.no_grad():
        expected = precond.net.generator(z, torch.tensor(labels))
    assert torch.allclose(x, expected, atol=1e-6, rtol=0)
    with pytest.raises(KuosanError, match="one network evaluation"):
        precond(z * 0.5, 0.5, torch.tensor(labels))


def _config(out, **kw) -> GANTrainConfig:
    base = dict(data="digits", steps=6, batch=16, z_dim=16, g_channels=8, d_channels=8, log_every=2,
                checkpoint_every=2, sample_every=0, keep_checkpoints=2, seed=3, out=str(out), device="cpu")
    return GANTrainConfig(**{**base, **kw})


def _files(out):
    ckpt = out / "checkpoints" / "step-0000006"
    return {name: load_file(str(ckpt / name)) for name in ("model.safetensors", "ema.safetensors",
                                                            "optimizer.safetensors")}


def _log(out):
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in r.items() if k not in ("time", "images_per_s")} for r in rows]


def test_resume_is_bit_exact(tmp_path, monkeypatch):
    quiet = dict(progress=False, log=lambda *a: None)
    train_gan(_config(tmp_path / "whole"), **quiet)
    from kuosan.training import gan

    real_stop = gan.Run.stop_reason
    monkeypatch.setattr(gan.Run, "stop_reason", lambda self, i: "time limit" if self.progress.step == 3 else None)
    train_gan(_config(tmp_path / "split"), **quiet)                 # stops at step 3, with a checkpoint
    assert (tmp_path / "split" / "checkpoints" / "step-0000003").is_dir()
    monkeypatch.setattr(gan.Run, "stop_reason", real_stop)
    train_gan(_config(tmp_path / "split"), resume=True, **quiet)
    whole, split = _files(tmp_path / "whole"), _files(tmp_path / "split")
    for name in whole:
        assert whole[name].keys() == split[name].keys()
        assert all(torch.equal(whole[name][k], split[name][k]) for k in whole[name]), name
    assert _log(tmp_path / "whole") == _log(tmp_path / "split")


def test_train_gan_then_sample_one_evaluation_an_image(tmp_path, capsys):
    import kuosan
    from kuosan.cli import main

    out = tmp_path / "run"
    assert main(["train-gan", "--data", "digits", "--steps", "2", "--batch", "8", "--z_dim", "16", "--g_channels",
                 "8", "--d_channels", "8", "--checkpoint_every", "0", "--out", str(out)]) == 0
    assert main(["sample", "--checkpoint", str(out), "--n", "5", "--out", str(tmp_path / "s")]) == 0
    assert "1 network evaluations each" in capsys.readouterr().out
    assert (tmp_path / "s" / "samples.npz").is_file()
    pipe = kuosan.load(out)
    res = pipe.sample(4)
    assert res.nfe == 1 and res.images.shape == (4, 8, 8, 1)
    assert main(["sample", "--checkpoint", str(out), "--n", "2", "--sampler", "heun", "--steps", "4",
                 "--out", str(tmp_path / "s2")]) == 2
    assert "one network evaluation" in capsys.readouterr().err


def test_bad_options_are_one_line_errors(tmp_path, capsys):
    from kuosan.cli import main

    assert main(["train-gan", "--gamma", "-1", "--out", str(tmp_path / "r")]) == 2
    assert "--gamma must be non-negative" in capsys.readouterr().err
    assert main(["train-gan", "--config", "nope", "--out", str(tmp_path / "r")]) == 2
    assert "neither a preset" in capsys.readouterr().err


def test_non_finite_steps_are_skipped_then_stop_the_run(tmp_path, monkeypatch):
    from kuosan.training import gan

    real = gan.d_objective
    monkeypatch.setattr(gan, "d_objective", lambda *a: (lambda loss, parts: (loss * float("nan"), parts))(*real(*a)))
    with pytest.raises(KuosanError, match="2 non-finite steps"):
        train_gan(_config(tmp_path / "nan", max_nonfinite=2), progress=False, log=lambda *a: None)
    assert not (tmp_path / "nan" / "checkpoints").exists()          # nothing good to keep


@pytest.mark.slow
def test_sigterm_checkpoints_and_resume_continues(tmp_path):
    """SIGTERM stops a running ``kuosan train-gan`` at the next step with a checkpoint; --resume continues."""
    import os
    import signal
    import subprocess
    import sys
    import time

    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "kuosan", "train-gan", "--data", "digits", "--steps", "100000", "--batch", "8",
           "--z_dim", "16", "--g_channels", "8", "--d_channels", "8", "--checkpoint_every", "0", "--out", str(out)]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while not (out / "metrics.jsonl").is_file() or not (out / "metrics.jsonl").read_text().strip():
        assert time.monotonic() < deadline and proc.poll() is None, proc.communicate()
        time.sleep(0.1)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    from kuosan.checkpoint import list_checkpoints

    step = int(list_checkpoints(out)[-1].name.split("-")[1])
    assert step >= 50
    resumed = subprocess.run([*cmd[:cmd.index("100000")], str(step + 2), *cmd[cmd.index("100000") + 1:], "--resume"],
                             env=env, capture_output=True, text=True, timeout=120)
    assert resumed.returncode == 0, resumed.stderr
    assert f"resuming {out} from step {step}" in resumed.stdout
