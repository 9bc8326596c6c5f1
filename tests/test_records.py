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


# --- the records themselves -------------------------------------------------------------------------

def _json(path):
    import json

    return json.loads(path.read_text())


@pytest.mark.parametrize("name", ["v1-run", "v1-autoencoder"])
def test_records_read_and_write_the_same_json(name):
    from kuosan.records import RunConfig, TrainState

    config = _json(FIXTURES / name / "config.json")
    record = RunConfig.from_dict(config)
    assert record.to_dict() == config
    state_path = next((FIXTURES / name / "checkpoints").glob("step-*/state.json"))
    state = _json(state_path)
    assert TrainState.from_dict(state).to_dict() == state


def test_records_are_typed():
    from kuosan.records import RunConfig

    record = RunConfig.from_dict(_json(FIXTURES / "v1-run" / "config.json"))
    assert record.network.kind == "unet" and record.network.num_classes == 10
    assert record.network.image_shape == (1, 8, 8)
    assert record.data.spec == "digits" and len(record.data.class_names) == 10
    assert record.sample.sampler == "heun" and record.sample.steps == 2  # the run's own sampling settings
    assert RunConfig.from_dict({**record.to_dict(), "future": {"x": 1}}).to_dict()["future"] == {"x": 1}


@pytest.mark.parametrize("change,message", [
    ({"version": 2}, "newer kuosan"),
    ({"version": "1"}, "no valid format version"),
    ({"format": "something"}, "not a kuosan checkpoint config"),
    ({"network": {"kind": 3}}, "network.kind must name a network"),
    ({"data": {"class_names": "abc"}}, "class_names must be a list"),
])
def test_bad_records_are_one_line_errors(change, message):
    from kuosan.errors import KuosanError
    from kuosan.records import RunConfig

    config = {**_json(FIXTURES / "v1-run" / "config.json"), **change}
    with pytest.raises(KuosanError, match=message) as e:
        RunConfig.from_dict(config)
    assert "\n" not in str(e.value)


def test_a_state_without_a_step_is_refused():
    from kuosan.errors import KuosanError
    from kuosan.records import TrainState

    with pytest.raises(KuosanError, match="step must be a whole number"):
        TrainState.from_dict({"files": {}})
