"""StackedMNIST: the builder stacks the digits it says it stacks, and the mode counter counts known modes."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from kuosan.data.stacked_mnist import MODES, mode_of, stack_digits
from kuosan.errors import KuosanError
from kuosan.training.gan_modes import count_modes, kl_to_uniform, mode_histogram


def _synthetic_digits(n=30):
    """Digit k of class k % 10: a constant image of value 8·k, so each pixel names its source."""
    images = (torch.arange(n, dtype=torch.uint8) * 8).view(n, 1, 1, 1).expand(n, 1, 28, 28).contiguous()
    return images, torch.arange(n) % 10


def test_stack_digits_puts_one_drawn_digit_in_each_channel():
    digits, labels = _synthetic_digits()
    images, modes = stack_digits(digits, labels, 200, seed=5)
    assert images.shape == (200, 3, 28, 28) and images.dtype == torch.uint8
    source = images[:, :, 0, 0].long() // 8                          # [200, 3]: which digit each channel shows
    assert torch.equal(images, digits[source.flatten(), 0].view(200, 3, 28, 28))
    assert torch.equal(modes, mode_of(labels[source[:, 0]], labels[source[:, 1]], labels[source[:, 2]]))
    again, _ = stack_digits(digits, labels, 200, seed=5)
    other, _ = stack_digits(digits, labels, 200, seed=6)
    assert torch.equal(images, again) and not torch.equal(images, other)


def test_kl_to_uniform_closed_forms():
    assert kl_to_uniform(np.ones(MODES)) == pytest.approx(0.0)
    one = np.zeros(MODES)
    one[7] = 5
    assert kl_to_uniform(one) == pytest.approx(math.log(MODES))      # all mass on one mode
    ten = np.zeros(MODES)
    ten[:10] = 3
    assert kl_to_uniform(ten) == pytest.approx(math.log(MODES / 10))
    with pytest.raises(KuosanError):
        mode_histogram([1000])


@pytest.fixture(scope="module")
def clean_digits():
    """Real MNIST test digits that the shipped classifier reads correctly, 4 of each class."""
    from kuosan.data import load_dataset
    from kuosan.evaluation.classifier import load_classifier, predict

    data = load_dataset("mnist:test")
    model, _ = load_classifier("mnist-cnn")
    right = torch.as_tensor(predict(model, data.images).argmax(1)) == data.labels
    picks = [torch.nonzero(right & (data.labels == c)).flatten()[:4] for c in range(10)]
    return data.images, picks


def test_a_set_with_ten_modes_counts_ten(clean_digits):
    images, picks = clean_digits
    stacks = []
    for d in range(10):                                               # modes 000, 111, ..., 999, 4 images each
        idx = picks[d]
        stacks.append(torch.cat([images[idx], images[idx.roll(1)], images[idx.roll(2)]], dim=1))
    report = count_modes(torch.cat(stacks))
    assert report["images"] == 40 and report["modes_covered"] == 10
    assert report["kl_to_uniform"] == pytest.approx(math.log(MODES / 10))


def test_channels_are_read_in_rgb_order_and_nhwc_works(clean_digits):
    images, picks = clean_digits
    one = torch.cat([images[picks[1][:1]], images[picks[2][:1]], images[picks[3][:1]]], dim=1)   # mode 123
    assert count_modes(one)["top_mode"] == 123
    assert count_modes(one.permute(0, 2, 3, 1).numpy())["top_mode"] == 123
    with pytest.raises(KuosanError, match="3 channels"):
        count_modes(images[:2])


def test_stacked_mnist_is_a_data_set(clean_digits):
    from kuosan.data import dataset_fingerprint, load_dataset
    from kuosan.data.builtin import read_mnist

    data = load_dataset("stacked-mnist:test")
    assert data.images.shape == (10_000, 3, 28, 28) and data.num_classes == MODES
    digits, labels, _ = read_mnist("test")
    images, modes = stack_digits(digits, labels, 10_000, seed=1)
    assert torch.equal(data.images, images) and torch.equal(data.labels, modes)
    assert dataset_fingerprint("stacked-mnist:test") != dataset_fingerprint("mnist:test")


def test_count_modes_command_reads_a_samples_file(clean_digits, tmp_path, capsys):
    from kuosan.cli import main

    images, picks = clean_digits
    idx = torch.cat([picks[d][:2] for d in range(5)])               # modes 000, 111, 222, 333, 444
    stacked = torch.cat([images[idx]] * 3, dim=1)
    np.savez(tmp_path / "samples.npz", images=stacked.permute(0, 2, 3, 1).numpy())   # NHWC, as kuosan sample
    assert main(["count-modes", "--images", str(tmp_path / "samples.npz"), "--out", str(tmp_path / "m.json")]) == 0
    assert "5 of 1000 modes covered by 10 images" in capsys.readouterr().out
    import json

    assert json.loads((tmp_path / "m.json").read_text())["modes_covered"] == 5
