"""Everything ``kuosan evaluate`` is given is checked before a checkpoint is loaded or an image sampled."""

import dataclasses
import json

import numpy as np
import pytest

from kuosan.config import SampleConfig
from kuosan.errors import KuosanError
from kuosan.cli import evaluate as cli
from kuosan.cli import main as kuosan_main
from kuosan.evaluation.config import EvalConfig
from kuosan.evaluation.report import default_extractors, evaluate


def evaluate_cli(argv):
    """``kuosan evaluate ARGV`` through the command line's entry point (user errors: one line, status 2)."""
    return kuosan_main(["evaluate", *argv])


@pytest.fixture
def run_dir(tmp_path, monkeypatch):
    """A checkpoint folder whose loading or sampling fails the test."""
    import kuosan

    (tmp_path / "run" / "checkpoints" / "latest").mkdir(parents=True)

    def no_load(*args, **kwargs):
        raise AssertionError("the checkpoint was loaded before the options were checked")

    monkeypatch.setattr(kuosan, "load", no_load)
    monkeypatch.setenv("KUOSAN_CACHE", str(tmp_path / "cache"))
    return tmp_path / "run"


BAD = [
    (["--reference", "no-such-set:test"], "--reference"),
    (["--reference", "fashion-mnist:val"], "unknown split"),
    (["--train-reference", "/nowhere/at/all"], "--train-reference"),
    (["--extractors", "vgg-face"], "unknown feature extractor 'vgg-face'"),
    (["--extractors", "inception"], "--inception-weights"),
    (["--extractors", "inception", "--inception-weights", "/nowhere/pt_inception.pth"], "not found"),
    (["--n", "1"], "--n"),
    (["--n", "200000"], "--n"),
    (["--seeds", "7"], "--seeds"),
    (["--seeds", "3-x"], "--seeds"),
    (["--steps", "0"], "--steps"),
    (["--steps", "20000"], "--steps"),
    (["--batch", "0"], "--batch"),
    (["--guidance", "-1"], "--guidance"),
    (["--sampler", "no-such-sampler"], "--sampler"),
    (["--threshold", "2"], "--threshold"),
    (["--max-real", "1"], "--max-real"),
    (["--kid-subsets", "0"], "--kid-subsets"),
]


@pytest.mark.parametrize("extra,message", BAD, ids=[" ".join(b[0]) for b in BAD])
def test_bad_options_fail_in_one_line_before_sampling(run_dir, capsys, extra, message):
    code = evaluate_cli(["--checkpoint", str(run_dir), "--out", str(run_dir / "eval"), "--device", "cpu", *extra])
    err = capsys.readouterr().err.strip()
    assert code == 2 and err.startswith("kuosan: error:") and "\n" not in err, err
    assert message in err


def test_unwritable_output_and_missing_checkpoint(run_dir, tmp_path, capsys):
    (tmp_path / "a-file").write_text("")
    assert evaluate_cli(["--checkpoint", str(run_dir), "--out", str(tmp_path / "a-file")]) == 2
    assert "--out" in capsys.readouterr().err
    assert evaluate_cli(["--checkpoint", str(tmp_path / "no-run"), "--out", str(tmp_path / "e")]) == 2
    assert "--checkpoint" in capsys.readouterr().err


def test_the_reference_a_checkpoint_names_is_checked_before_sampling(run_dir, tmp_path, monkeypatch, capsys):
    import kuosan

    class Pipe:
        dataset, num_classes, pixel_shape = "fashion-mnist", 10, (1, 28, 28)
        sample_config = SampleConfig()

        def sample(self, *args, **kwargs):
            raise AssertionError("sampled before the reference was checked")

    monkeypatch.setattr(kuosan, "load", lambda *a, **k: Pipe())
    from kuosan.data import builtin

    monkeypatch.setenv(builtin.FASHION_MNIST_ENV, str(tmp_path / "empty"))  # no Fashion-MNIST files here
    code = evaluate_cli(["--checkpoint", str(run_dir), "--extractors", "fmnist-cnn,efficientnet-lite0",
                     "--out", str(tmp_path / "eval"), "--device", "cpu"])
    assert code == 2 and "do not cover efficientnet-lite0" in capsys.readouterr().err


def test_the_python_api_checks_before_reading_images(monkeypatch):
    import kuosan.evaluation.report as report_module

    def no_images(*args, **kwargs):
        raise AssertionError("images were read before the options were checked")

    monkeypatch.setattr(report_module, "as_image_set", no_images)
    for ref, cfg, message in [("no-such-set:test", EvalConfig(), "--reference"),
                              ("fashion-mnist:test", EvalConfig(max_real=1), "--max-real"),
                              ("fashion-mnist:test", EvalConfig(kid_subsets=0), "--kid-subsets"),
                              ("fashion-mnist:test", EvalConfig(pr_k=0), "pr_k"),
                              ("fashion-mnist:test", EvalConfig(extractors="vgg"), "unknown feature extractor")]:
        with pytest.raises(KuosanError, match=message):
            evaluate("never-read.npz", ref, cfg)
    with pytest.raises(KuosanError, match="EvalConfig"):
        evaluate("never-read.npz", "fashion-mnist:test", {"max_real": 10})


def test_eval_config_round_trip_and_defaults():
    cfg = EvalConfig(extractors="fmnist-cnn, efficientnet-lite0", max_real=500, kid_subsets=7, plots=False)
    assert cfg.extractors == ("fmnist-cnn", "efficientnet-lite0")
    again = EvalConfig.from_dict(json.loads(json.dumps(cfg.to_dict())))
    assert again == cfg and hash(again) == hash(cfg)
    assert EvalConfig.from_dict({}) == EvalConfig()
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.max_real = 3
    with pytest.raises(KuosanError, match="no field"):
        EvalConfig.from_dict({"max_reals": 3})
    assert cfg.replace(max_real=None).max_real is None


def test_cli_defaults_come_from_the_configs():
    import argparse

    args = cli.add_arguments(argparse.ArgumentParser()).parse_args(["--checkpoint", "x"])
    e = EvalConfig()
    # sampling: the checkpoint's own sample section, read once it is loaded (test_distill checks a student's)
    assert (args.sampler, args.steps, args.guidance) == (None, None, None)
    assert (args.max_real, args.kid_subsets) == (e.max_real, e.kid_subsets)
    cfg = cli.eval_config(args, "cpu")
    assert dataclasses.replace(cfg, device=e.device) == e


def test_default_extractors_cpu_fast_cuda_full(tmp_path):
    assert default_extractors("fashion-mnist:test", "cpu") == ("fmnist-cnn",)
    assert default_extractors("fashion-mnist:test", "cuda") == ("fmnist-cnn", "efficientnet-lite0")
    assert default_extractors("mnist", "cpu") == ("mnist-cnn",)
    assert default_extractors("digits:test", "cpu") == ("efficientnet-lite0",)
    from kuosan.evaluation.reference import FeatureSet, write_stats_file

    path = tmp_path / "stats.npz"
    write_stats_file(path, [FeatureSet.from_features("fmnist-cnn", np.eye(3, 4))])
    assert default_extractors(str(path), "cuda") == ("fmnist-cnn",)  # what the file holds
