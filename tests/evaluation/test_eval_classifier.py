"""The shipped data-set classifiers: small, documented, and as accurate as their JSON says."""

import json

import numpy as np
import pytest

from kuosan.evaluation.classifier import CLASSIFIERS, WEIGHTS_DIR, load_classifier, predict
from kuosan.evaluation.diversity import class_distribution


def _load_split(spec):
    from kuosan.data import load_dataset

    return load_dataset(spec)


@pytest.mark.parametrize("name", list(CLASSIFIERS))
def test_shipped_files_are_small_and_described(name):
    weights, meta_path = WEIGHTS_DIR / f"{name}.safetensors", WEIGHTS_DIR / f"{name}.json"
    assert weights.stat().st_size < 2 * 2 ** 20
    meta = json.loads(meta_path.read_text())
    for key in ("architecture", "dataset", "test_accuracy", "date", "check_subset"):
        assert key in meta
    assert meta["dataset"] == CLASSIFIERS[name]


def test_fashion_mnist_classifier_reaches_its_recorded_accuracy():
    model, meta = load_classifier("fmnist-cnn")
    test = _load_split("fashion-mnist:test")
    n = 2000
    accuracy = float((predict(model, test.images[:n]).argmax(1) == test.labels[:n].numpy()).mean())
    assert accuracy == pytest.approx(meta["check_subset"]["accuracy"], abs=2e-3)
    assert meta["test_accuracy"] >= 0.92 and accuracy >= 0.90


def test_mnist_classifier_reaches_its_recorded_accuracy():
    model, meta = load_classifier("mnist-cnn")
    test = _load_split("mnist:test")
    accuracy = float((predict(model, test.images).argmax(1) == test.labels.numpy()).mean())
    assert accuracy == pytest.approx(meta["test_accuracy"], abs=2e-3)
    assert accuracy >= 0.95


def test_mode_collapse_flag_fires_on_three_classes_only():
    model, _ = load_classifier("fmnist-cnn")
    test = _load_split("fashion-mnist:test")
    images, labels = test.images[:3000], test.labels[:3000].numpy()
    three = images[np.isin(labels, [0, 1, 7])][:1000]
    collapsed = class_distribution(predict(model, three))
    assert collapsed["mode_collapse"] is True and collapsed["coverage"] <= 0.5
    real = class_distribution(predict(model, images[:2000]))
    assert real["mode_collapse"] is False and real["coverage"] == 1.0
    assert real["entropy_normalized"] > 0.98 > collapsed["entropy_normalized"]
    assert class_distribution(predict(model, images[:20]))["mode_collapse"] is None  # too few to tell
