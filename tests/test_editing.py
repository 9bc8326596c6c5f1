"""Editing on exact denoisers: SDEdit's end points and its preservation of the data distribution,
inpainting's untouched known region and RePaint's schedule, inversion round trips, interpolation."""

import math

import pytest
import torch
from conftest import GaussianMixtureDenoiser

from kuosan.diffusion import editing as E
from kuosan.diffusion import samplers as S
from kuosan.diffusion.schedules import get_sigmas
from kuosan.errors import KuosanError
from kuosan.rng import generators_for_seeds, randn

SIGMAS = get_sigmas("karras", 20, 0.002, 80.0)


def _mixture():
    return GaussianMixtureDenoiser([0.2, 0.5, 0.3], [[-2.0, 0.0], [1.5, 1.5], [1.0, -2.0]], [0.3, 0.5, 0.4])


def test_img2img_strength_zero_returns_the_input_untouched(monkeypatch):
    monkeypatch.setattr(S, "randn_like", lambda *a, **k: pytest.fail("noise drawn at strength 0"))
    den = _mixture()
    x0 = torch.randn(4, 2, dtype=torch.float64)
    assert torch.equal(E.img2img(den, x0, SIGMAS, 0.0), x0)
    assert den.calls == 0


def test_img2img_strength_one_is_plain_generation():
    den = _mixture()
    x0 = torch.randn(4, 2, dtype=torch.float64)
    out = E.img2img(den, x0, SIGMAS, 1.0, sampler="dpmpp_2m", generator=torch.Generator().manual_seed(3))
    noisy = x0 + SIGMAS[0] * torch.randn(4, 2, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    assert torch.equal(out, S.sample_dpmpp_2m(den, noisy, SIGMAS))


@pytest.mark.parametrize("strength,steps", [(0.25, 5), (0.5, 10), (0.75, 15)])
def test_img2img_runs_the_last_part_of_the_grid(strength, steps):
    den = _mixture()
    seen = []
    E.img2img(den, torch.zeros(2, 2, dtype=torch.float64), SIGMAS, strength, sampler="euler",
              callback=lambda info: seen.append(float(info["sigma"])))
    assert len(seen) == steps == den.calls and seen[0] == float(SIGMAS[20 - steps])


def test_img2img_keeps_the_data_distribution():
    """SDEdit on inputs drawn from the data: x0 + σz is then exactly distributed as p_σ, so the exact
    denoiser's reverse process lands on the data distribution again (component weights and widths)."""
    den = GaussianMixtureDenoiser([0.3, 0.7], [[-2.8], [1.2]], [0.4, 0.6])
    g = torch.Generator().manual_seed(0)
    x0, _ = den.sample(20000, g)
    sigmas = get_sigmas("karras", 60, 0.01, 80.0)
    out = E.img2img(den, x0, sigmas, 0.6, sampler="dpmpp_3m", generator=g)
    left = out[:, 0] < -0.8
    assert left.double().mean().item() == pytest.approx(0.3, abs=4 * math.sqrt(0.21 / 20000))
    assert out[left].std().item() == pytest.approx(0.4, rel=0.03)
    assert out[~left].std().item() == pytest.approx(0.6, rel=0.03)
    assert (out - x0).abs().mean() > 0.1  # an edit, not a copy


@pytest.mark.parametrize("resample,jump", [(1, 1), (3, 2)])
def test_inpainting_leaves_the_known_region_untouched(resample, jump):
    den = GaussianMixtureDenoiser([0.5, 0.5], [[-1.0] * 16, [1.0] * 16], [0.3, 0.3])
    x_known = den.sample(6, torch.Generator().manual_seed(1), shape=(1, 4, 4))[0]
    known = torch.zeros(1, 1, 4, 4, dtype=torch.float64)
    known[..., :, :2] = 1
    out = E.inpaint(den, x_known, known, SIGMAS, generator=generators_for_seeds(range(6)),
                    resample=resample, jump=jump)
    assert torch.equal(out[..., :, :2], x_known[..., :, :2])
    assert not torch.allclose(out[..., :, 2:], x_known[..., :, 2:])


def test_inpainting_completes_with_the_conditional_distribution():
    """Pixels 0-1 known at the mean of component 0 of a two-component mixture in 4-D: the completion
    must come from component 0 too (mean −1, width 0.3). Re-imposing the known region alone leaves
    some completions in the other mode; RePaint's resampling (U = 4, jumps of 5) repairs them."""
    den = GaussianMixtureDenoiser([0.5, 0.5], [[-1.0] * 4, [1.0] * 4], [0.3, 0.3])
    n = 2000
    x_known = torch.full((n, 4), -1.0, dtype=torch.float64)
    known = torch.tensor([1.0, 1.0, 0.0, 0.0], dtype=torch.float64)
    sigmas = get_sigmas("karras", 25, 0.01, 20.0)

    def complete(**kw):
        out = E.inpaint(den, x_known, known, sigmas, sampler="dpmpp_2m", generator=torch.Generator().manual_seed(2),
                        **kw)
        return out[:, 2:], (out[:, 2:] < 0).all(dim=1).double().mean().item()

    _, plain = complete()
    fill, consistent = complete(resample=4, jump=5)
    assert consistent > 0.99 and consistent > plain + 0.05
    assert fill.mean().item() == pytest.approx(-1.0, abs=0.03)
    assert fill.std().item() == pytest.approx(0.3, rel=0.06)


def test_repaint_path_visits_each_segment_resample_times():
    assert E.repaint_path(5) == [0, 1, 2, 3, 4, 5]
    path = E.repaint_path(6, resample=3, jump=2)
    assert path[0] == 0 and path[-1] == 6
    downs = [(a, b) for a, b in zip(path, path[1:]) if b == a + 1]
    ups = [(a, b) for a, b in zip(path, path[1:]) if b < a]
    assert all(a - b == 2 for a, b in ups) and len(ups) == 3 * 2
    for k in range(6):
        assert downs.count((k, k + 1)) == 3
    with pytest.raises(KuosanError):
        E.repaint_path(5, resample=0)


@pytest.mark.parametrize("sampler", ["heun", "dpmpp_2m", "dpmpp_3m", "unipc"])
def test_inversion_then_generation_returns_the_image(sampler):
    """40 steps up and 40 down: the round trip's PSNR is high (images near a basin boundary are
    ill-conditioned to invert, so the median and the batch's PSNR are checked, not each image's)."""
    den = _mixture()
    x0, _ = den.sample(64, torch.Generator().manual_seed(4))
    sigmas = get_sigmas("karras", 40, 0.002, 80.0)
    first = []
    z = E.invert(den, x0, sigmas, sampler=sampler, callback=lambda info: first.append(float(info["sigma"])))
    assert first[0] == pytest.approx(0.002) and first[-1] < 80
    assert z.std().item() == pytest.approx(80, rel=0.2)  # noise at σ_max
    back = S.SAMPLERS[sampler](den, z, sigmas)
    assert E.psnr(back, x0).median().item() > 50
    assert E.psnr(back.reshape(1, -1), x0.reshape(1, -1)).item() > 40


def test_inversion_rejects_stochastic_samplers():
    with pytest.raises(KuosanError, match="deterministic"):
        E.invert(_mixture(), torch.zeros(1, 2), SIGMAS, sampler="ddpm")


def test_psnr_of_a_known_error():
    a = torch.zeros(2, 1, 4, 4)
    assert E.psnr(a, a + 0.02).tolist() == pytest.approx([20 * math.log10(2 / 0.02)] * 2)


def test_slerp_end_points_norm_and_symmetry():
    z0, z1 = randn((1, 1, 8, 8), generators_for_seeds([0])), randn((1, 1, 8, 8), generators_for_seeds([1]))
    t = torch.linspace(0, 1, 5)
    path = E.slerp(z0, z1, t)
    assert torch.allclose(path[0], z0[0], atol=1e-6) and torch.allclose(path[-1], z1[0], atol=1e-6)
    # for two vectors of equal norm the arc keeps it; the straight line would shrink it at t = 1/2
    u0, u1 = z0 / z0.norm(), z1 / z1.norm()
    assert torch.allclose(E.slerp(u0, u1, t).flatten(1).norm(dim=1), torch.ones(5), atol=1e-6)
    assert ((u0 + u1) / 2).norm() < 0.9
    assert torch.allclose(E.slerp(z0, z1, 0.3), E.slerp(z1, z0, 0.7), atol=1e-6)


def test_class_mix_ends_are_the_class_denoisers_in_one_forward():
    den = _mixture()
    calls = []

    def counting(x, sigma, class_labels=None):
        calls.append(x.shape[0])
        return den(x, sigma, class_labels=class_labels)

    x = torch.randn(3, 2, dtype=torch.float64)
    a, b = torch.tensor([0, 0, 0]), torch.tensor([2, 2, 2])
    mixed = E.class_mix(counting, a, b, torch.tensor([0.0, 0.25, 1.0]))
    sigma = torch.tensor(0.7)
    out = mixed(x, sigma)
    assert calls == [6]
    d_a, d_b = den(x, sigma, class_labels=a), den(x, sigma, class_labels=b)
    assert torch.equal(out[0], d_a[0]) and torch.equal(out[2], d_b[2])
    assert torch.allclose(out[1], 0.75 * d_a[1] + 0.25 * d_b[1])


# --- the ``kuosan edit`` command line, on an untrained tiny checkpoint ----------------------------

@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """An untrained class-conditional ε-model on 8×8 grey images, saved as a checkpoint, plus two
    input images and a mask."""
    import numpy as np
    from PIL import Image

    from kuosan.config import config_to_dict, load_config, resolve_config_path
    from kuosan.model import build_model, network_spec
    from kuosan.checkpoint import save_checkpoint

    root = tmp_path_factory.mktemp("edit")
    cfg = load_config(None, {"diffusion.precond": "eps", "model.base_channels": 8},
                      base=resolve_config_path("digits-tiny"))
    spec = network_spec(cfg, channels=1, resolution=8, num_classes=10)
    torch.manual_seed(0)
    model = build_model(spec, cfg.diffusion)
    config = {"format": "kuosan-checkpoint", "version": 1, "network": spec, **config_to_dict(cfg),
              "data": {"spec": "digits", "class_names": [str(k) for k in range(10)], "resolution": 8,
                       "channels": 1, "num_classes": 10}}
    save_checkpoint(root / "run", 1, config=config, model=model.state_dict(), ema=model.state_dict())
    rng = np.random.default_rng(0)
    for name in ("a", "b"):
        Image.fromarray(rng.integers(0, 256, (20, 24), dtype=np.uint8)).save(root / f"{name}.png")
    mask = np.zeros((8, 8), np.uint8)
    mask[:4] = 255
    Image.fromarray(mask).save(root / "mask.png")
    return root


def _edit(argv):
    import argparse

    from kuosan.cli import edit as edit_cli

    return edit_cli.run(edit_cli.add_arguments(argparse.ArgumentParser()).parse_args(argv))


def test_edit_cli_modes_write_their_pictures(checkpoint, capsys):
    ck, out = str(checkpoint / "run"), checkpoint / "out"
    common = ["--checkpoint", ck, "--steps", "4", "--device", "cpu"]
    ins = [str(checkpoint / "a.png"), str(checkpoint / "b.png")]
    assert _edit(["img2img", *common, "--input", *ins, "--strength", "0.5", "--class", "3", "--guidance", "2",
                  "--out", str(out / "i2i")]) == 0
    assert _edit(["inpaint", *common, "--input", *ins, "--mask", str(checkpoint / "mask.png"), "--resample", "2",
                  "--jump", "2", "--out", str(out / "inp")]) == 0
    assert _edit(["invert", *common, "--input", ins[0], "--sampler", "dpmpp_2m", "--out", str(out / "inv")]) == 0
    assert "round-trip PSNR" in capsys.readouterr().out
    assert _edit(["interpolate", *common, "--seeds", "1,2", "--n", "3", "--out", str(out / "seeds")]) == 0
    assert _edit(["interpolate", *common, "--classes", "1,7", "--seeds", "5", "--n", "3",
                  "--out", str(out / "cls")]) == 0
    for path in ("i2i/img2img.png", "i2i/a_img2img.png", "inp/inpaint.png", "inp/b_inpaint.png",
                 "inv/invert.png", "inv/a_noise.npy", "seeds/interpolate.png", "cls/interpolate.png"):
        assert (out / path).is_file(), path


def test_edit_cli_inpainting_keeps_the_unmasked_pixels(checkpoint):
    """The saved PNG equals the input (after fitting to 8×8) wherever the box leaves pixels alone."""
    import numpy as np
    from PIL import Image

    from kuosan.cli.edit import load_image

    out = checkpoint / "box"
    assert _edit(["inpaint", "--checkpoint", str(checkpoint / "run"), "--steps", "3", "--device", "cpu",
                  "--input", str(checkpoint / "a.png"), "--box", "2,2,6,5", "--out", str(out)]) == 0
    got = np.asarray(Image.open(out / "a_inpaint.png"), dtype=np.int64)
    want = ((load_image(str(checkpoint / "a.png"), 1, 8)[0].numpy() + 1) * 127.5).round().astype(np.int64)
    keep = np.ones((8, 8), bool)
    keep[2:5, 2:6] = False
    assert np.array_equal(got[keep], want[keep])


@pytest.mark.parametrize("argv,message", [
    (["invert", "--input", "missing.png"], "no such image"),
    (["invert", "--input", "{a}", "--sampler", "ddpm"], "deterministic"),
    (["img2img", "--input", "{a}", "--strength", "1.5"], "strength"),
    (["img2img", "--input", "{a}", "--class", "99"], "out of range"),
    (["inpaint", "--input", "{a}", "--box", "3,3,2,2"], "box"),
    (["interpolate", "--seeds", "1,2,3"], "two seeds"),
    (["img2img", "--input", "{a}", "--sampler", "nope"], "unknown sampler"),
])
def test_edit_cli_user_mistakes_are_one_line_errors(checkpoint, argv, message):
    argv = [a.replace("{a}", str(checkpoint / "a.png")) for a in argv]
    with pytest.raises(KuosanError, match=message):
        _edit([*argv, "--checkpoint", str(checkpoint / "run"), "--steps", "2", "--device", "cpu",
               "--out", str(checkpoint / "err")])
