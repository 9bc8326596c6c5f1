"""A tiny run through the command line: train a few steps on digits, sample, evaluate files."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

import kuosan
from kuosan.cli import main


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("e2e") / "run"
    rc = main(["train", "--config", "digits-tiny", "--out", str(out), "--steps", "12", "--checkpoint_every", "6",
               "--log_every", "3", "--sample.steps", "2"])
    assert rc == 0
    return out


def test_train_writes_a_complete_run(run_dir):
    ckpts = sorted((run_dir / "checkpoints").glob("step-*"))
    assert [p.name for p in ckpts] == ["step-0000006", "step-0000012"]
    assert (run_dir / "checkpoints" / "latest").read_text().strip() == "step-0000012"
    for name in ("config.json", "model.safetensors", "ema.safetensors", "optimizer.safetensors", "state.json"):
        assert (ckpts[-1] / name).is_file()
    lines = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in lines] == [3, 6, 9, 12]
    assert all(np.isfinite(r["loss"]) for r in lines)
    assert "val_loss_ema" in lines[1]
    Image.open(run_dir / "samples.png").verify()
    Image.open(run_dir / "loss.png").verify()


def test_sample_cli_writes_pngs_grid_and_npz(run_dir, tmp_path):
    out = tmp_path / "s"
    rc = main(["sample", "--checkpoint", str(run_dir), "--n", "6", "--sampler", "euler", "--steps", "3",
               "--class", "3", "--guidance", "2.0", "--out", str(out)])
    assert rc == 0
    pngs = sorted(out.glob("seed*.png"))
    assert len(pngs) == 6
    img = np.asarray(Image.open(pngs[0]))
    assert img.shape == (8, 8) and img.dtype == np.uint8
    data = np.load(out / "samples.npz")
    assert data["images"].shape == (6, 8, 8, 1) and data["images"].dtype == np.uint8
    assert (data["labels"] == 3).all()
    assert np.array_equal(data["images"][0, :, :, 0], img)
    Image.open(out / "grid.png").verify()


def test_sample_cli_thresholds_the_denoised_image(run_dir, tmp_path):
    common = ["sample", "--checkpoint", str(run_dir), "--seeds", "0-3", "--sampler", "euler", "--steps", "3",
              "--guidance", "50"]  # far overshoots [-1, 1]
    assert main([*common, "--out", str(tmp_path / "plain")]) == 0
    assert main([*common, "--threshold", "clip", "--out", str(tmp_path / "clip")]) == 0
    assert main([*common, "--threshold", "0.9", "--out", str(tmp_path / "dynamic")]) == 0
    plain, clip, dynamic = (np.load(tmp_path / d / "samples.npz")["images"] for d in ("plain", "clip", "dynamic"))
    assert plain.shape == clip.shape == dynamic.shape
    assert not np.array_equal(plain, clip) and not np.array_equal(plain, dynamic) and not np.array_equal(clip, dynamic)


def test_sample_cli_in_bfloat16_stays_close_to_float32(run_dir, tmp_path):
    common = ["sample", "--checkpoint", str(run_dir), "--seeds", "0-7", "--sampler", "heun", "--steps", "4"]
    assert main([*common, "--out", str(tmp_path / "fp32")]) == 0
    assert main([*common, "--bf16", "--out", str(tmp_path / "bf16")]) == 0
    assert main([*common, "--bf16", "--out", str(tmp_path / "again")]) == 0
    fp32, bf16, again = (np.load(tmp_path / d / "samples.npz")["images"].astype(int) for d in ("fp32", "bf16", "again"))
    assert np.array_equal(bf16, again)  # reproducible
    assert not np.array_equal(fp32, bf16)  # it did run in bfloat16
    assert np.abs(fp32 - bf16).mean() < 1  # grey levels of 255: the same images, rounded differently


def test_images_per_seed_are_independent_of_batch_size(run_dir):
    pipe = kuosan.load(run_dir, device="cpu")
    for sampler in ("heun", "ddpm"):
        big = pipe.sample("0-7", sampler=sampler, steps=3, batch_size=8).images
        small = np.concatenate([pipe.sample([s], [s % 10], sampler=sampler, steps=3, batch_size=1).images
                                for s in range(8)])
        assert np.array_equal(big, small)
        assert not np.array_equal(big[0], big[1])


def test_same_seed_same_images_across_loads(run_dir):
    a = kuosan.load(run_dir).sample([5, 6], steps=3).images
    b = kuosan.load(run_dir).sample([5, 6], steps=3).images
    assert np.array_equal(a, b)


def test_checkpoint_round_trip_gives_identical_outputs(run_dir, tmp_path):
    from kuosan.checkpoint import save_checkpoint

    pipe = kuosan.load(run_dir, use_ema=False)
    x = torch.randn(3, 1, 8, 8)
    sigma = torch.tensor([0.1, 1.0, 10.0])
    labels = torch.tensor([0, 4, 10])
    before = pipe.precond(x, sigma, labels)
    state = pipe.precond.state_dict()
    save_checkpoint(tmp_path / "copy", 1, config=pipe.config, model=state)
    again = kuosan.load(tmp_path / "copy", use_ema=False)
    assert torch.equal(again.precond(x, sigma, labels), before)


def test_module_entry_point_prints_help():
    env = dict(os.environ, OMP_NUM_THREADS="1")
    r = subprocess.run([sys.executable, "-m", "kuosan", "sample", "--help"], capture_output=True, text=True,
                       env=env, timeout=120)
    assert r.returncode == 0 and "--checkpoint" in r.stdout and "example" in r.stdout
