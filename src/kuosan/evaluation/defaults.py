"""What ``evaluate`` compares against and scores with when it is not told: the reference split, the
training split for floors and memorisation, and the feature extractors."""

from __future__ import annotations

from pathlib import Path

from kuosan.evaluation.classifier import classifier_for_dataset
from kuosan.evaluation.features import NAMES
from kuosan.evaluation.reference import is_stats_file, stats_file_extractors

__all__ = ["DEFAULT_REFERENCE", "dataset_of", "default_train_reference", "default_extractors"]

DEFAULT_REFERENCE = "fashion-mnist:test"


def dataset_of(spec):
    """``"fashion-mnist"`` for ``"fashion-mnist:test"``; ``None`` for folders, files and in-memory sets."""
    if not isinstance(spec, str):
        return None
    name = spec.split(":")[0].lower().replace("_", "-")
    return {"fashionmnist": "fashion-mnist"}.get(name, name) if name in ("fashion-mnist", "fashionmnist",
                                                                          "mnist", "digits") else None


def default_train_reference(reference):
    """The training split of a bundled reference (``fashion-mnist:test`` -> ``fashion-mnist:train``)."""
    dataset = dataset_of(reference)
    if dataset is None or reference.endswith(":train") or reference == dataset:
        return None
    return f"{dataset}:train"


def default_extractors(reference, device="cpu"):
    """What ``evaluate`` scores with when no extractors are named.

    A bundled set: its own classifier (seconds on a CPU, reference features shipped with kuosan), plus
    EfficientNet-Lite0 (ImageNet features, minutes of a CPU for the real sets the first time) on CUDA. A set
    without a classifier of its own: EfficientNet-Lite0. A statistics file: the extractors it holds.
    Add EfficientNet-Lite0 on a CPU with ``--extractors fmnist-cnn,efficientnet-lite0``.
    """
    if isinstance(reference, (str, Path)) and is_stats_file(reference):
        held = [n for n in stats_file_extractors(reference) if n in NAMES]
        return tuple([n for n in held if n != "inception-v3-fid"] or held or ["efficientnet-lite0"])
    own = classifier_for_dataset(dataset_of(reference))
    if own is None:
        return ("efficientnet-lite0",)
    return (own, "efficientnet-lite0") if str(device).startswith("cuda") else (own,)
