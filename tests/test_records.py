"""Checkpoints written before config.json and state.json became typed records (format version 1, made by
scripts/make_checkpoint_fixture.py with kuosan 0.1.0) still load, sample the same images and resume."""

import shutil
from pathlib import Path

import numpy as np
import pytest

import kuosan
from kuosan.cli import main

FIXTURES = Path(__file__).parent / "fixtures"


def test_an_old_run_loads_and_samples_what_it_sampled():
    pipe = kuosan.load(FIXTURES / "v1-run", device="cpu")
    res = pipe.sample([0, 1, 2], class_labels=[0, 1, 2], sampler="euler", steps=3)
    expected = np.load(FIXTURES / "v1-run" / "expected-samples.npz")["images"]
    assert res.images.shape == expected.shape
    assert np.abs(res.images.astype(int) - expected.astype(int)).max() <= 1  # rounding of the last bit at most
    assert pipe.num_classes == 10 and pipe.class_names[:2] == ["0", "1"]


def test_an_old_run_resumes(tmp_path):
    run = tmp_path / "run"
    shutil.copytree(FIXTURES / "v1-run", run)
    argv = ["train", "--config", str(run / "config.json"), "--resume", "--out", str(run), "--steps", "6",
            "--checkpoint_every", "2", "--device", "cpu"]
    assert main(argv) == 0
    assert kuosan.load(run, device="cpu").path.name == "step-0000006"


def test_an_old_autoencoder_loads():
    from kuosan.latent import load_autoencoder

    ae = load_autoencoder(FIXTURES / "v1-autoencoder", device="cpu")
    assert ae.image_shape == (1, 8, 8)


@pytest.mark.parametrize("name", ["v1-run", "v1-autoencoder"])
def test_fixtures_are_the_old_format(name):
    import json

    config = json.loads((FIXTURES / name / "config.json").read_text())
    assert config["version"] == 1 and config["format"] in ("kuosan-checkpoint", "kuosan-autoencoder")
