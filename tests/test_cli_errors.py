"""Bad commands, configs, checkpoints and data: one line ``kuosan: error: ...`` and exit status 2,
never a traceback. Fuzzed argv for ``train`` and ``sample`` may only return an int or leave
through argparse's SystemExit."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

import kuosan.sampling
import kuosan.training.loop as loop
from kuosan.cli import main
from kuosan.config import Config

TINY = ["--config", "digits-tiny", "--batch", "8", "--max_images", "100", "--sample.sampler", "euler",
        "--sample.steps", "2"]  # a cheap end-of-run sample grid


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A two-step digits-tiny run (module-wide; tests must not change it)."""
    out = tmp_path_factory.mktemp("cli") / "run"
    assert main(["train", *TINY, "--steps", "2", "--checkpoint_every", "1", "--out", str(out)]) == 0
    return out


def _one_error_line(capsys, code, words):
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert code == 2, captured.err
    assert len(lines) == 1 and lines[0].startswith("kuosan: error: "), captured.err
    assert words in lines[0], lines[0]
    assert "Traceback" not in captured.out + captured.err
    return lines[0]


@pytest.fixture
def no_training(monkeypatch):
    """Replace training by a stub: these tests are about what happens before it."""
    seen = []
    monkeypatch.setattr(loop, "train", lambda cfg, resume=False, **kw: seen.append(cfg) or Path(cfg.train.out))
    return seen


TRAIN_ERRORS = [
    (["--steps", "-5"], "train.steps must be positive, got -5"),
    (["--batch", "0"], "train.batch must be positive"),
    (["--batch", "1e9"], "train.batch: expected a whole number"),
    (["--resolution", "2"], "train.resolution must be between 4 and 1024"),
    (["--guidance", "-3"], "sample.guidance must be between 0 and 100"),
    (["--stepz", "5"], "unknown option --stepz (did you mean --steps?)"),
    (["--lr", "fast"], "train.lr: expected a finite number, got 'fast'"),
    (["--sampler", "nope"], "sample.sampler must be one of"),
    (["--config", "missing.json"], "neither a file nor a preset"),
    (["oops"], "expected an option like --key value, got 'oops'"),
]


@pytest.mark.parametrize("precond, words", [("gan", "kuosan train-gan"), ("consistency", "kuosan distill --teacher"),
                                             ("consistency-flow", "kuosan distill --teacher")])
def test_train_names_the_command_that_trains_another_kind(capsys, tmp_path, precond, words):
    out = tmp_path / "run"
    _one_error_line(capsys, main(["train", *TINY, "--diffusion.precond", precond, "--out", str(out)]), words)
    assert not out.exists()  # refused before the run directory is made


@pytest.mark.parametrize("extra,words", TRAIN_ERRORS, ids=[" ".join(e) for e, _ in TRAIN_ERRORS])
def test_bad_train_commands(capsys, no_training, extra, words):
    _one_error_line(capsys, main(["train", *TINY, *extra]), words)
    assert not no_training


def test_bad_config_file(tmp_path, capsys, no_training):
    bad = tmp_path / "bad.yaml"
    bad.write_text("train: {steps: [1, 2}\n")
    _one_error_line(capsys, main(["train", "--config", str(bad)]), "cannot parse")
    bad.write_text("train: {steps: 10, batchsize: 4}\n")
    _one_error_line(capsys, main(["train", "--config", str(bad)]), "unknown config key train.batchsize")


def test_missing_data_and_bad_out(tmp_path, capsys):
    _one_error_line(capsys, main(["train", *TINY, "--data", str(tmp_path / "nowhere"), "--out", str(tmp_path / "o")]),
                    "does not exist")
    (tmp_path / "file").write_text("x")
    _one_error_line(capsys, main(["train", *TINY, "--out", str(tmp_path / "file")]), "is a file")
    _one_error_line(capsys, main(["train", *TINY, "--device", "tpu", "--out", str(tmp_path / "o")]), "unknown device")
    assert not (tmp_path / "o").exists()  # nothing is created for a command that fails its checks


def test_existing_run_without_resume(run, capsys):
    _one_error_line(capsys, main(["train", *TINY, "--out", str(run)]), "pass --resume")


def test_resume_with_another_architecture(run, capsys):
    line = _one_error_line(capsys, main(["train", *TINY, "--out", str(run), "--resume", "--model.base_channels", "8"]),
                           "has another architecture")
    assert "(base_channels 16 there, 8 now)" in line  # the one difference, named


SAMPLE_ERRORS = [
    (["--n", "0"], "--n must be positive"),
    (["--steps", "-1"], "--steps must be positive"),
    (["--guidance", "500"], "--guidance must be between 0 and 100"),
    (["--seeds", "x-y"], "cannot read seeds"),
    (["--class", "99"], "class 99 out of range"),
    (["--sampler", "magic"], "unknown sampler 'magic'"),
    (["--device", "meta"], "unknown device 'meta'"),
]


@pytest.mark.parametrize("extra,words", SAMPLE_ERRORS, ids=[" ".join(e) for e, _ in SAMPLE_ERRORS])
def test_bad_sample_commands(run, tmp_path, capsys, extra, words):
    _one_error_line(capsys, main(["sample", "--checkpoint", str(run), "--n", "2", *extra,
                                  "--out", str(tmp_path / "s")]), words)


def test_sample_missing_or_empty_checkpoint(tmp_path, capsys):
    _one_error_line(capsys, main(["sample", "--checkpoint", str(tmp_path / "nope")]), "checkpoint not found")
    _one_error_line(capsys, main(["sample", "--checkpoint", str(tmp_path)]), "no checkpoint in")


def test_a_line_break_the_user_typed_is_escaped_on_the_error_line(tmp_path, capsys):
    line = _one_error_line(capsys, main(["sample", "--checkpoint", str(tmp_path / "a\nb")]), "checkpoint not found")
    assert "a\\nb" in line


USAGE_ERRORS = [
    (["sample", "--steps"], "argument --steps: expected one argument", "kuosan sample"),
    (["sampl"], "invalid choice: 'sampl'", "kuosan"),
    (["edit", "img2img"], "the following arguments are required: --input, --checkpoint", "kuosan edit img2img"),
    (["data", "digits", "--bogus"], "unrecognized arguments: --bogus", "kuosan data"),
    (["--bogus"], "unrecognized arguments: --bogus", "kuosan"),
]


@pytest.mark.parametrize("argv,words,command", USAGE_ERRORS, ids=[" ".join(a) for a, _, _ in USAGE_ERRORS])
def test_usage_errors_are_one_line_naming_the_help_to_read(capsys, argv, words, command):
    """argparse's mistakes read like every other error: one line, no usage block, status 2."""
    with pytest.raises(SystemExit) as exit_:
        main(argv)
    line = _one_error_line(capsys, exit_.value.code, words)
    assert line.endswith(f"(see `{command} --help`)"), line


def test_help_is_still_argparse_help(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["sample", "--help"])
    captured = capsys.readouterr()
    assert exit_.value.code == 0 and captured.err == ""
    assert captured.out.startswith("usage: kuosan sample") and "--checkpoint" in captured.out


def test_sample_weights_that_do_not_match_their_config(run, tmp_path, capsys):
    """An exported checkpoint (no state.json) whose config.json says 16 channels, weights 8."""
    from kuosan.model import build_model
    from kuosan.checkpoint import _write_safetensors, resolve_checkpoint
    from kuosan.model import read_model_checkpoint

    ckpt = tmp_path / "exported"
    shutil.copytree(resolve_checkpoint(run), ckpt)
    (ckpt / "state.json").unlink()
    config = read_model_checkpoint(ckpt)["config"]
    spec = dict(config["network"], fields=dict(config["network"]["fields"], base_channels=8))
    small = build_model(spec, config["diffusion"]).state_dict()
    _write_safetensors(ckpt / "ema.safetensors", small)
    line = _one_error_line(capsys, main(["sample", "--checkpoint", str(ckpt), "--n", "1", "--out",
                                         str(tmp_path / "s")]), "does not fit the architecture in config.json")
    assert "the config needs [" in line
    assert not (tmp_path / "s").exists()


# --- bad data, end to end -------------------------------------------------------------------------

def _image_folder(root: Path, per_class: int = 6) -> Path:
    rng = np.random.default_rng(0)
    for name in ("a", "b"):
        (root / name).mkdir(parents=True)
        for i in range(per_class):
            Image.fromarray(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)).save(root / name / f"{i}.png")
    return root


def test_train_on_a_folder_with_bad_files_skips_each_with_one_line(tmp_path):
    data = _image_folder(tmp_path / "data")
    (data / "a" / "zero.png").write_bytes(b"")
    good = (data / "a" / "0.png").read_bytes()
    (data / "a" / "truncated.png").write_bytes(good[: len(good) // 2])
    (data / "b" / "text.png").write_text("not a picture\n" * 10)
    env = dict(os.environ, OMP_NUM_THREADS="1")
    res = subprocess.run([sys.executable, "-m", "kuosan", "train", "--config", "digits-tiny", "--data", str(data),
                          "--resolution", "8", "--steps", "2", "--batch", "4", "--sample.steps", "2",
                          "--out", str(tmp_path / "run")],
                         env=env, capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    err = res.stderr.strip().splitlines()
    skipped = [ln for ln in err if ln.startswith("skipping ")]
    assert len(skipped) == 3
    for name, reason in (("zero.png", "empty file"), ("truncated.png", "truncated"), ("text.png", "not an image")):
        assert sum(name in ln and reason in ln for ln in skipped) == 1, skipped
    summary = [ln for ln in err if "loaded 12 images in 2 classes; skipped 3" in ln]
    assert len(summary) == 1, err
    assert len(err) == 4, err  # nothing else on stderr: no traceback, no noise
    assert (tmp_path / "run" / "checkpoints" / "step-0000002").is_dir()


def test_train_on_an_empty_folder(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    _one_error_line(capsys, main(["train", *TINY, "--data", str(tmp_path / "empty"), "--out", str(tmp_path / "o")]),
                    "no usable images in")


# --- fuzzing the command line -------------------------------------------------------------------

_config_options = [f"--{n}" for n in ("steps", "batch", "lr", "resolution", "guidance", "sampler", "seed",
                                      "model.base_channels", "channel_mults", "train.data", "bf16",
                                      "checkpoint_every", "ema_decay", "precond", "device")]
_train_tokens = st.sampled_from(_config_options + ["--config", "--resume", "--help", "-h", "--", "--x", "-"]) | \
    st.sampled_from(["digits-tiny", "demo", "0", "-1", "1e9", "nan", "inf", "1,2", "true", "cpu", "meta",
                     "missing.json", "edm", "heun", "", "=", "--steps=3"]) | st.text(max_size=6)


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(argv=st.lists(_train_tokens, max_size=7))
def test_fuzz_train_argv(capsys, no_training, argv):
    capsys.readouterr()
    try:
        code = main(["train", *argv])
    except SystemExit as e:  # argparse (bad usage, --help)
        assert e.code in (0, 2)
        return
    assert isinstance(code, int)
    if code == 0:
        assert isinstance(no_training[-1], Config)
    else:
        assert code == 2 and capsys.readouterr().err.startswith("kuosan: error: ")


_sample_tokens = st.sampled_from(["--n", "--seeds", "--class", "--sampler", "--steps", "--schedule", "--guidance",
                                  "--batch", "--raw", "--device", "--checkpoint", "--help"]) | \
    st.sampled_from(["0", "1", "3", "-2", "40", "0-3", "5,1", "x", "nan", "1e3", "heun", "euler", "ddim",
                     "karras", "vp-cosine", "cpu", "cuda", "2.5", "7", "Zero", ""]) | st.text(max_size=5)


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(argv=st.lists(_sample_tokens, max_size=7))
def test_fuzz_sample_argv(run, tmp_path, capsys, monkeypatch, argv):
    def fast_generate(precond, *, shape, seeds, **kw):  # the sampler is not what is tested here
        return torch.zeros(len(seeds), *shape)

    monkeypatch.setattr(kuosan.sampling, "generate", fast_generate)
    capsys.readouterr()
    argv = ["sample", "--checkpoint", str(run), *argv, "--out", str(tmp_path / "s")]
    if any(t in ("--steps", "--n") and nxt.isdigit() and int(nxt) > 100 for t, nxt in zip(argv, argv[1:])):
        return  # sizes the CLI accepts but that would take long
    try:
        code = main(argv)
    except SystemExit as e:
        assert e.code in (0, 2)
        return
    assert isinstance(code, int)
    assert code in (0, 2)
    if code == 2:
        assert capsys.readouterr().err.startswith("kuosan: error: ")
