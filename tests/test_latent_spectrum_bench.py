"""benchmarks/latent_spectrum.py: the high-frequency share it reports, and a run on a tiny autoencoder."""

import json

import pytest
import torch

from conftest import load_benchmark


@pytest.fixture(scope="module")
def bench():
    return load_benchmark("latent_spectrum")


def test_the_high_frequency_share_separates_smooth_maps_from_noise(bench):
    side = 16
    yy, xx = torch.meshgrid(torch.arange(side), torch.arange(side), indexing="ij")
    smooth = torch.cos(2 * torch.pi * xx / side).expand(8, 4, side, side)     # all power at radius 1
    sharp = torch.cos(torch.pi * (xx + yy)).expand(8, 4, side, side)          # all at the corner, radius ~11
    assert bench.high_share(smooth) == pytest.approx(0.0, abs=1e-9)
    assert bench.high_share(sharp) == pytest.approx(1.0, abs=1e-9)
    torch.manual_seed(0)
    noise = bench.high_share(torch.randn(64, 4, side, side))
    radius = torch.sqrt(torch.fft.fftfreq(side)[:, None] ** 2 + torch.fft.fftfreq(side)[None, :] ** 2) * side
    area = float((radius.round() > side // 4).double().mean())                # white noise: the share of the plane
    assert noise == pytest.approx(area, abs=0.03)


def test_a_run_on_a_tiny_autoencoder_writes_its_table(bench, tmp_path, capsys):
    from kuosan.training.autoencoder import PRESETS, AutoencoderTrainConfig, train_autoencoder

    ae = train_autoencoder(AutoencoderTrainConfig(**{**PRESETS["digits-tiny"], "steps": 4, "log_every": 2,
                                                      "scale_images": 64, "out": str(tmp_path / "ae"),
                                                      "device": "cpu"}), log=lambda *a: None)
    out = tmp_path / "spectrum.json"
    assert bench.main([str(ae), "--data", "digits", "--images", "64", "--out", str(out)]) == 0
    row = json.loads(out.read_text())["rows"][0]
    assert row["images"] == 64 and row["latent_shape"] == [2, 4, 4] and 0 <= row["latent_high_share"] <= 1
    assert "latent >½Nyq" in capsys.readouterr().out
    assert bench.main([str(tmp_path / "missing"), "--out", str(out)]) == 2
