"""Reference features: computed once per (data set, split, extractor, resolution, size) and cached as ``.npz``.

The cache lives in ``$KUOSAN_CACHE/eval`` (default ``~/.cache/kuosan/eval``). A file holds, for one
extractor, the features (float32), their mean and covariance (float64), the classifier's probabilities
where the extractor is a classifier, and the images' labels. Files are written atomically (temporary
file, fsync, rename), so an interrupted run never leaves a half-written cache entry.

A *statistics file* has the same layout with one block of keys per extractor (``<extractor>.mu`` …) and
can be passed as ``--reference``: it is what ``evaluate`` saves as ``stats.npz`` for the generated set.
"""

import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from kuosan.errors import KuosanError, cache_root
from kuosan.evaluation.metrics import gaussian_stats

CACHE_VERSION = 1
STATS_MARKER = "kuosan_stats"


def cache_dir():
    """``$KUOSAN_CACHE/eval``, else ``~/.cache/kuosan/eval``."""
    return cache_root("eval")


@dataclass
class FeatureSet:
    """One image set seen through one extractor. ``features`` is ``None`` for statistics-only references."""

    extractor: str
    mu: np.ndarray
    sigma: np.ndarray
    count: int
    features: np.ndarray | None = None
    probs: np.ndarray | None = None
    labels: np.ndarray | None = None

    @classmethod
    def from_features(cls, extractor, features, probs=None, labels=None):
        features = np.asarray(features, dtype=np.float64)
        if len(features) >= 2:
            mu, sigma = gaussian_stats(features)
        else:  # one image: a mean but no spread
            mu, sigma = features.mean(0), np.zeros((features.shape[1],) * 2)
        return cls(extractor, mu, sigma, len(features), features, probs,
                   None if labels is None else np.asarray(labels, dtype=np.int64))

    def subset(self, idx):
        """The rows at ``idx`` (needs features)."""
        pick = lambda a: None if a is None else a[idx]  # noqa: E731
        return FeatureSet.from_features(self.extractor, self.features[idx], pick(self.probs), pick(self.labels))

    def arrays(self, prefix=""):
        out = {f"{prefix}mu": self.mu, f"{prefix}sigma": self.sigma, f"{prefix}count": np.int64(self.count)}
        if self.features is not None:
            out[f"{prefix}features"] = self.features.astype(np.float32)
        for key in ("probs", "labels"):
            if getattr(self, key) is not None:
                out[prefix + key] = getattr(self, key)
        return out

    @classmethod
    def from_arrays(cls, extractor, data, prefix=""):
        get = lambda k: data[prefix + k] if prefix + k in data else None  # noqa: E731
        feats = get("features")
        return cls(extractor, np.asarray(get("mu"), np.float64), np.asarray(get("sigma"), np.float64),
                   int(get("count")), None if feats is None else feats.astype(np.float64), get("probs"), get("labels"))


def atomic_savez(path, arrays):
    """``np.savez`` to a temporary file in the same folder, fsync, then rename over ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name + ".", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            np.savez(f, **arrays)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_stats_file(path, feature_sets, meta=None):
    """Save several extractors' feature sets in one statistics file (usable as ``--reference``)."""
    arrays = {STATS_MARKER: np.int64(CACHE_VERSION), "meta": np.asarray(json.dumps(meta or {}))}
    for fs in feature_sets:
        arrays.update(fs.arrays(prefix=f"{fs.extractor}."))
    atomic_savez(path, arrays)


def is_stats_file(path):
    path = Path(path)
    if path.suffix.lower() != ".npz" or not path.is_file():
        return False
    try:
        with np.load(path, allow_pickle=False) as data:
            return STATS_MARKER in data.files
    except (OSError, ValueError):
        return False


def stats_file_extractors(path):
    """The extractor names a statistics file holds (its arrays are not read)."""
    with np.load(path, allow_pickle=False) as data:
        return sorted({k.rsplit(".", 1)[0] for k in data.files if k.endswith(".mu")})


def read_stats_file(path):
    """``{extractor: FeatureSet}`` from a statistics file (never unpickles anything)."""
    with np.load(path, allow_pickle=False) as data:
        names = sorted({k.rsplit(".", 1)[0] for k in data.files if k.endswith(".mu")})
        return {name: FeatureSet.from_arrays(name, data, prefix=f"{name}.") for name in names}


def cache_path(fingerprint, extractor):
    return cache_dir() / f"{fingerprint}--{extractor}--v{CACHE_VERSION}.npz"


def reference_features(spec, extractor, *, resolution=None, channels=None, max_images=None, use_cache=True,
                       log=None, progress=None):
    """Features of data set ``spec`` through ``extractor``, from the cache when present.

    ``resolution``/``channels``: what the images are converted to before extraction (the generated set's),
    so both sides pass through the same resizing. ``progress(total, description)``: returns a progress bar
    (with ``update(n)``, usable as a context manager) shown while features are computed.
    Returns ``(FeatureSet, cache hit?)``.
    """
    from kuosan.data import dataset_fingerprint, load_dataset

    fingerprint = dataset_fingerprint(spec, resolution=resolution, channels=channels, max_images=max_images)
    path = cache_path(fingerprint, extractor.name)
    if use_cache and path.is_file():
        try:
            with np.load(path, allow_pickle=False) as data:
                return FeatureSet.from_arrays(extractor.name, data), True
        except (OSError, ValueError, KeyError):
            pass  # unreadable cache entry: recompute and overwrite
    dataset = load_dataset(spec, resolution=resolution, channels=channels, max_images=max_images)
    if log:
        log(f"computing {extractor.name} features of {spec} ({len(dataset)} images)")
    if progress is None:
        feats, probs = extractor.run(dataset.images)
    else:
        with progress(len(dataset), f"{extractor.name} {spec}") as bar:
            feats, probs = extractor.run(dataset.images, progress=bar.update)
    fs = FeatureSet.from_features(extractor.name, feats, probs, dataset.labels.numpy())
    if use_cache:
        try:
            atomic_savez(path, fs.arrays())
        except OSError as exc:
            if log:
                log(f"could not write the statistics cache {path} ({exc}); continuing without it")
    return fs, False


def check_reference_exists(spec):
    """A one-line error early, before any network is loaded, when ``spec`` names nothing."""
    if is_stats_file(spec):
        return
    from kuosan.data.sources import parse_spec

    try:
        parse_spec(spec)
    except KuosanError as exc:
        raise KuosanError(f"reference: {exc}") from None
