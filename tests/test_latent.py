"""Latent diffusion's data side: the latent scale, the encoded-data cache and its invalidation, decoding,
the recorded autoencoder, the latent-space tools, and a tiny latent diffusion run end to end on digits."""

import dataclasses
import json

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from kuosan import latent
from kuosan.errors import KuosanError
from kuosan.training.autoencoder import AutoencoderTrainConfig, train_autoencoder
from kuosan.checkpoint import resolve_checkpoint, save_checkpoint


@pytest.fixture(scope="module")
def ae_dir(tmp_path_factory):
    """A tiny autoencoder (8x8 digits -> 2x4x4), trained a few steps; its scale measured on all 1,438 images."""
    out = tmp_path_factory.mktemp("latent") / "ae"
    cfg = AutoencoderTrainConfig(data="digits", latent_channels=2, downsample=2, base_channels=8, perceptual="none",
                                 steps=20, batch=32, lr=3e-3, warmup_steps=2, log_every=10, checkpoint_every=0,
                                 scale_images=5000, out=str(out), device="cpu")
    return train_autoencoder(cfg, log=lambda *a: None)


@pytest.fixture(autouse=True)
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("KUOSAN_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


def _count_encodes(monkeypatch):
    calls = []
    original = latent.LatentAutoencoder.encode

    def counting(self, *a, **k):
        calls.append(1)
        return original(self, *a, **k)

    monkeypatch.setattr(latent.LatentAutoencoder, "encode", counting)
    return calls


def test_scale_gives_unit_std_latents_on_the_training_data(ae_dir):
    data = latent.encode_dataset(ae_dir, "digits", "train")
    assert data.images.dtype == torch.float32 and data.images.shape == (1438, 2, 4, 4)
    assert abs(float(data.images.std()) - 1.0) < 1e-3
    config = json.loads((resolve_checkpoint(ae_dir) / "config.json").read_text())
    assert abs(config["latent"]["scale"] * config["latent"]["std"] - 1.0) < 1e-9


def test_latent_dataset_quacks_like_an_image_dataset(ae_dir):
    from kuosan.data import load_dataset

    pixels, data = load_dataset("digits", "test"), latent.encode_dataset(ae_dir, "digits", "test")
    assert data.is_latent and len(data) == len(pixels) == 359
    assert (data.channels, data.resolution, data.num_classes) == (2, 4, 10)
    assert data.class_names == pixels.class_names and data.name == "digits:test"
    assert torch.equal(data.labels, pixels.labels)
    assert len(data.subset(torch.arange(5))) == 5
    assert data.autoencoder["sha256"] and data.autoencoder["scale"] > 0


def test_cache_is_reused_and_invalidated_when_the_autoencoder_changes(ae_dir, tmp_path, monkeypatch, cache):
    calls = _count_encodes(monkeypatch)
    first = latent.encode_dataset(ae_dir, "digits", "test")
    again = latent.encode_dataset(ae_dir, "digits", "test")
    assert len(calls) == 1 and torch.equal(first.images, again.images)
    assert len(list((cache / "latents").glob("*.safetensors"))) == 1
    # the same run trained on: a newer checkpoint with other weights is another autoencoder
    ckpt = resolve_checkpoint(ae_dir)
    config = json.loads((ckpt / "config.json").read_text())
    weights = {k: v + 0.01 * torch.randn_like(v) for k, v in load_file(str(ckpt / "ema.safetensors")).items()}
    changed = tmp_path / "changed"
    save_checkpoint(changed, 21, config=config, model=weights, ema=weights)
    other = latent.encode_dataset(changed, "digits", "test")
    assert len(calls) == 2 and not torch.equal(other.images, first.images)
    assert other.autoencoder["sha256"] != first.autoencoder["sha256"]
    assert len(list((cache / "latents").glob("*.safetensors"))) == 2
    latent.encode_dataset(ae_dir, "digits", "test", max_images=100)          # another data set, another entry
    assert len(calls) == 3


def test_decode_gives_images_and_reconstruction_metrics(ae_dir):
    from kuosan.data import load_dataset

    ae = latent.load_autoencoder(ae_dir, device="cpu")
    images = load_dataset("digits", "test").images[:10]
    z = ae.encode(images)
    out = ae.decode_uint8(z)
    assert out.dtype == torch.uint8 and out.shape == images.shape
    assert ae.decode_nhwc(z).shape == (10, 8, 8, 1)
    m = latent.reconstruction_metrics(ae, images)
    assert np.isfinite(m["psnr"]) and -1 <= m["ssim"] <= 1
    with pytest.raises(KuosanError, match="takes 1x8x8 images"):
        ae.encode(torch.zeros(2, 3, 8, 8, dtype=torch.uint8))


def test_not_an_autoencoder_is_refused(tmp_path):
    save_checkpoint(tmp_path / "x", 1, config={"format": "kuosan-checkpoint"}, model={"w": torch.zeros(1)})
    with pytest.raises(KuosanError, match="not an autoencoder"):
        latent.load_autoencoder(tmp_path / "x")


def test_recorded_autoencoder_is_found_checked_and_can_be_moved(ae_dir, tmp_path):
    import shutil

    from kuosan.records import DataRecord, NetworkSpec, RunConfig

    ref = latent.load_autoencoder(ae_dir).reference()
    pixel = RunConfig(network=NetworkSpec("unet", {}), data=DataRecord(), sections={})
    config = pixel.replace(autoencoder=ref)
    assert latent.autoencoder_for_checkpoint(pixel, tmp_path) is None
    assert latent.autoencoder_for_checkpoint(config, tmp_path).checksum == ref["sha256"]
    moved = tmp_path / "moved"
    shutil.copytree(ref["path"], moved)
    gone = config.replace(autoencoder=dict(ref, path=str(tmp_path / "nowhere")))
    with pytest.raises(KuosanError, match="missing .moved or deleted.*autoencoder=DIR"):
        latent.autoencoder_for_checkpoint(gone, tmp_path)
    assert latent.autoencoder_for_checkpoint(gone, tmp_path, override=moved).checksum == ref["sha256"]
    wrong = config.replace(autoencoder=dict(ref, sha256="0" * 64))
    with pytest.raises(KuosanError, match="not the one"):
        latent.autoencoder_for_checkpoint(wrong, tmp_path)


def test_interpolation_and_class_arithmetic_strips(ae_dir, tmp_path):
    from PIL import Image

    from kuosan.data import load_dataset

    ae = latent.load_autoencoder(ae_dir)
    images = load_dataset("digits", "test").images
    strip = latent.interpolate(ae, images[0], images[1], steps=5)
    assert strip.shape == (7, 1, 8, 8) and torch.equal(strip[0], images[0]) and torch.equal(strip[-1], images[1])
    assert torch.equal(strip[1], ae.decode_uint8(ae.encode(images[:1])).squeeze(0))   # t = 0 is z_a itself
    data = latent.encode_dataset(ae, "digits", "train")
    means = latent.class_means(data)
    assert means.shape == (10, 2, 4, 4)
    assert torch.allclose(means[3], data.images[data.labels == 3].mean(0), atol=1e-5)
    rows = latent.class_arithmetic(ae, images[:3], means, add=7, subtract=1)
    assert rows.shape == (3, 3, 1, 8, 8) and rows.dtype == torch.uint8
    path = latent.save_strip(rows, tmp_path / "a.png", scale=1)
    assert Image.open(path).size == (3 * 10 + 2, 3 * 10 + 2)


def _latent_training(monkeypatch, ae_dir):
    """Train through kuosan.training.loop.train in latent space (``train.autoencoder``)."""
    return {"autoencoder": str(ae_dir)}


def test_tiny_latent_diffusion_end_to_end(ae_dir, tmp_path, monkeypatch):
    import kuosan
    from kuosan.config import load_config
    from kuosan.config import SampleConfig
    from kuosan.sampling import generate
    from kuosan.training.loop import train

    extra = _latent_training(monkeypatch, ae_dir)
    cfg = load_config(None, {
        "model.base_channels": 8, "model.channel_mults": "1", "model.attn_resolutions": "4",
        "diffusion.sigma_data": 1.0,
        "train.data": "digits", "train.steps": 4, "train.batch": 16, "train.warmup_steps": 1, "train.log_every": 2,
        "train.sample_every": 0, "train.checkpoint_every": 0, "train.out": str(tmp_path / "ldm"),
        "train.device": "cpu", "sample.steps": 2, **{f"train.{k}": v for k, v in extra.items()}})
    out = train(cfg, progress=False, log=lambda *a: None)
    config = json.loads((out / "config.json").read_text())
    assert config["network"]["fields"]["in_channels"] == 2 and config["network"]["fields"]["resolution"] == 4
    assert config["autoencoder"]["sha256"] == latent.load_autoencoder(ae_dir).checksum
    pipe = kuosan.load(out, device="cpu")
    if getattr(pipe, "autoencoder", None) is not None:              # pipeline.py carries the latent patch
        res = pipe.sample([0, 1, 2], steps=2)
        assert res.images.shape == (3, 8, 8, 1) and res.images.dtype == np.uint8
        with pytest.raises(KuosanError, match="latents"):  # clipping to [-1, 1] is for pixels
            pipe.sample([0], steps=2, threshold="clip")
    else:
        ae = latent.autoencoder_for_checkpoint(pipe.record, pipe.path)
        x = generate(pipe.precond, SampleConfig(steps=2), shape=pipe.image_shape, seeds=[0, 1, 2],
                     class_labels=[0, 1, 2])
        assert x.shape == (3, 2, 4, 4) and ae.decode_nhwc(x).shape == (3, 8, 8, 1)


# --- the emoji data set ---------------------------------------------------------------------------

def test_emoji_renders_classes_in_colour_and_splits_deterministically(monkeypatch):
    from kuosan.data import dataset_fingerprint, load_dataset
    from kuosan.data import emoji_noto as emoji

    try:
        emoji.font_path()
    except KuosanError:
        pytest.skip("fonts-noto-color-emoji is not installed")
    # two small classes keep the test fast (the cache key includes the classes)
    monkeypatch.setattr(emoji, "CLASSES", {"faces": ((0x1F600, 0x1F609),), "animals": ((0x1F400, 0x1F409),)})
    monkeypatch.setattr(emoji, "CLASS_NAMES", ["faces", "animals"])
    train, test = load_dataset("emoji:noto:train"), load_dataset("emoji:noto", "test")
    assert train.images.shape == (16, 3, 64, 64) and test.images.shape == (4, 3, 64, 64)
    assert train.class_names == ["faces", "animals"] and test.labels.tolist() == [0, 0, 1, 1]
    corners = train.images[:, :, :2, :2]
    assert (corners == 255).float().mean() > 0.8                    # on white
    rgb = train.images.float()
    assert (rgb[:, 0] - rgb[:, 2]).abs().mean() > 10               # in colour (faces are yellow)
    assert torch.equal(load_dataset("emoji:noto:train").images, train.images)   # from the cache, identical
    assert "emoji-noto-train-64px-3ch" in dataset_fingerprint("emoji:noto:train")


def test_emoji_without_the_font_says_how_to_install_it(monkeypatch, tmp_path):
    from kuosan.data import load_dataset
    from kuosan.data import emoji_noto as emoji

    monkeypatch.delenv(emoji.FONT_ENV, raising=False)
    monkeypatch.setattr(emoji, "FONT_DIRS", (str(tmp_path),))
    with pytest.raises(KuosanError, match="apt-get install fonts-noto-color-emoji"):
        load_dataset("emoji:noto")
    monkeypatch.setenv(emoji.FONT_ENV, str(tmp_path / "nope.ttf"))
    with pytest.raises(KuosanError, match="not found"):
        load_dataset("emoji:noto")


# --- the command-line modules (wired into kuosan.cli as train-autoencoder and latent) ------------

def _parse(add, argv):
    import argparse

    parser = argparse.ArgumentParser()
    add(parser)
    return parser.parse_args(argv)


def test_train_autoencoder_cli_options_and_run(tmp_path, capsys):
    from kuosan.cli import latent as latent_cli

    args = _parse(latent_cli.add_arguments, ["--config", "digits-tiny", "--out", str(tmp_path / "ae"), "--steps", "2",
                                             "--max-images", "64", "--base_channels", "4", "--downsample", "4",
                                             "--log_every", "1", "--scale_images", "64", "--device", "cpu"])
    cfg = latent_cli.config_from_args(args)
    assert (cfg.steps, cfg.max_images, cfg.base_channels, cfg.downsample, cfg.channel_mults) == (2, 64, 4, 4, None)
    assert latent_cli.run(args) == 0
    assert json.loads((tmp_path / "ae" / "reconstruction.json").read_text())["held_out"] is True
    assert "kuosan train --autoencoder" in capsys.readouterr().out
    with pytest.raises(KuosanError, match="neither a preset"):
        latent_cli.config_from_args(_parse(latent_cli.add_arguments, ["--config", "nope"]))


def test_latent_cli_tools_write_strips(ae_dir, tmp_path):
    from PIL import Image

    from kuosan.cli import latent as latent_cli

    interp = tmp_path / "i.png"
    assert latent_cli.run_latent(_parse(latent_cli.add_latent_arguments, [
        "interpolate", "--autoencoder", str(ae_dir), "--a", "2", "--b", "3", "--steps", "4", "--out", str(interp)])) == 0
    arith = tmp_path / "a.png"
    assert latent_cli.run_latent(_parse(latent_cli.add_latent_arguments, [
        "arithmetic", "--autoencoder", str(ae_dir), "--add", "7", "--subtract", "1", "--n", "2",
        "--out", str(arith)])) == 0
    Image.open(interp).verify()
    Image.open(arith).verify()
    with pytest.raises(KuosanError, match="unknown class"):
        latent_cli.run_latent(_parse(latent_cli.add_latent_arguments, [
            "arithmetic", "--autoencoder", str(ae_dir), "--add", "cat", "--subtract", "1"]))
