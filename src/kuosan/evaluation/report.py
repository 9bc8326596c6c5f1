"""``evaluate``: generated images + a reference -> quality, diversity, stability and speed, with real floors.

    from kuosan.evaluation.report import EvalConfig, evaluate
    report = evaluate("samples.npz", "fashion-mnist:test", EvalConfig(max_real=2000), out_dir="eval/")

Every distance is computed twice: generated set versus reference, and *floor*: a real set of the same size
(a class-balanced subset of the training split) versus the same reference. The floor is what a perfect
generator would score at that sample size; distances mean little without it.
"""

import datetime
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from kuosan.errors import KuosanError
from kuosan.evaluation import diversity as div
from kuosan.evaluation.classifier import classifier_for_dataset
from kuosan.evaluation.config import EvalConfig
from kuosan.evaluation.defaults import (DEFAULT_REFERENCE, dataset_of, default_extractors,  # noqa: F401
                                       default_train_reference)
from kuosan.evaluation.features import as_uint8_nchw, get_extractor
from kuosan.evaluation.metrics import density_coverage, frechet_distance, kid, precision_recall
from kuosan.evaluation.reference import FeatureSet, is_stats_file, read_stats_file, reference_features

@dataclass
class ImageSet:
    """Images (uint8 ``[N, C, H, W]`` tensor), labels (``None`` when unknown), and where they came from."""

    images: object
    labels: np.ndarray | None
    source: str
    class_names: list | None = None


def as_image_set(data, name="generated"):
    """A path (folder or ``.npz``), an ``ImageDataset``, a sampling result (``.images`` NHWC) or an array."""
    if isinstance(data, ImageSet):
        return data
    if isinstance(data, (str, Path)):
        if is_stats_file(data):
            raise KuosanError(f"{data} holds statistics, not images; pass it as the reference, not the {name} set")
        from kuosan.data import load_dataset

        ds = load_dataset(str(data), **_native_geometry(data))
        labelled = ds.num_classes > 1
        return ImageSet(ds.images, ds.labels.numpy() if labelled else None, str(data),
                        ds.class_names if labelled else None)
    if hasattr(data, "images"):
        labels = getattr(data, "labels", None)
        names = getattr(data, "class_names", None)
        if labels is not None and names is not None and len(names) <= 1:
            labels = None  # one class: an unlabelled folder or file, nothing was asked for
        labels = None if labels is None else np.asarray(labels, dtype=np.int64)
        return ImageSet(as_uint8_nchw(data.images), labels, getattr(data, "name", name),
                        getattr(data, "class_names", None))
    return ImageSet(as_uint8_nchw(data), None, name)


def _native_geometry(path):
    """A folder's first image's size and channels, so generated PNGs are scored as written (no 64 px cap)."""
    if not Path(path).is_dir():
        return {}
    from PIL import Image

    from kuosan.data.folder import list_folder

    for file in list_folder(path).files[:8]:
        try:
            with Image.open(file) as im:
                return {"resolution": min(im.size), "channels": 1 if im.mode in ("L", "LA", "I", "I;16", "1") else 3}
        except OSError:
            continue
    return {}


# --- feature sets ---------------------------------------------------------------------------------

class _Real:
    """A real image source (data set spec, statistics file or in-memory images), featurised on demand.

    A bundled data set split is taken, in this order, from the statistics shipped with kuosan (when they
    match, see :mod:`kuosan.evaluation.shipped`), the cache, or computed (and cached)."""

    def __init__(self, source, cfg, resolution, channels, log, bar):
        self.source, self.cfg, self.log, self.bar = source, cfg, log, bar
        self.resolution, self.channels, self.max_images = resolution, channels, cfg.max_real
        self.stats = read_stats_file(source) if isinstance(source, (str, Path)) and is_stats_file(source) else None
        self.images = None if isinstance(source, (str, Path)) else as_image_set(source, "reference")
        self.origin = {}  # extractor -> {"from": shipped | cache | computed | statistics file | images, ...}

    @property
    def name(self):
        return self.images.source if self.images is not None else str(self.source)

    def features(self, ext):
        if self.stats is not None:
            if ext.name not in self.stats:
                raise KuosanError(f"statistics file {self.source} has no {ext.name!r} features "
                                  f"(it has: {', '.join(self.stats)}); choose --extractors among those")
            self.origin[ext.name] = {"from": "statistics file"}
            return self.stats[ext.name]
        if self.images is not None:
            images = self.images.images[: self.max_images] if self.max_images else self.images.images
            with self.bar(len(images), f"{ext.name} {self.name}") as bar:
                feats, probs = ext.run(images, progress=bar.update)
            labels = None if self.images.labels is None else self.images.labels[: len(images)]
            self.origin[ext.name] = {"from": "images"}
            return FeatureSet.from_features(ext.name, feats, probs, labels)
        if self.cfg.shipped_stats:
            from kuosan.evaluation.shipped import lookup

            found = lookup(str(self.source), ext.name, resolution=self.resolution, channels=self.channels,
                           max_images=self.max_images, log=self.log)
            if found is not None:
                fs, origin = found
                self.log(f"{ext.name}: statistics of {self.source} shipped with kuosan ({fs.count} images, "
                         + ("checked against the data files)" if origin["verified"] else
                            "no data files here to check them against)"))
                self.origin[ext.name] = {"from": "shipped", **origin}
                return fs
        fs, hit = reference_features(str(self.source), ext, resolution=self.resolution, channels=self.channels,
                                     max_images=self.max_images, use_cache=self.cfg.use_cache, log=self.log,
                                     progress=self.bar)
        self.origin[ext.name] = {"from": "cache" if hit else "computed"}
        return fs


def _progress_factory(cfg):
    """``bar(total, description)``: a tqdm bar on stderr, shown as ``cfg.progress`` says (None: on a terminal)."""
    import sys

    show = sys.stderr.isatty() if cfg.progress is None else bool(cfg.progress)

    def bar(total, desc):
        from tqdm import tqdm

        return tqdm(total=total, desc=desc, unit="img", disable=not show, file=sys.stderr, leave=False)

    return bar


def _floor_indices(train_fs, n, seed=1):
    """A class-balanced choice of ``n`` training rows (all rows when there are fewer)."""
    from kuosan.data.dataset import take_stratified

    if train_fs.labels is not None:
        return take_stratified(train_fs.labels, n, seed=seed)
    rng = np.random.default_rng(seed)
    return np.sort(rng.choice(train_fs.count, min(n, train_fs.count), replace=False))


# --- sections -------------------------------------------------------------------------------------

def _distances(fake, real, opts):
    """All set-to-set distances between two feature sets (``real`` may hold statistics only)."""
    out = {"frechet_distance": frechet_distance(fake.mu, fake.sigma, real.mu, real.sigma)}
    if fake.features is not None and real.features is not None:
        m, s = kid(fake.features, real.features, opts["kid_subset_size"], opts["kid_subsets"])
        out["kid"], out["kid_std"] = m, s
        out["precision"], out["recall"] = precision_recall(real.features, fake.features, k=opts["pr_k"])
        out["density"], out["coverage"] = density_coverage(real.features, fake.features, k=opts["dc_k"])
    return out


def _paired(generated, floor):
    """``{metric: {"generated": g, "floor": f}}``."""
    return {k: {"generated": v, "floor": None if floor is None else floor.get(k)} for k, v in generated.items()}


def _diversity(clf_name, gen_fs, ref_fs, floor_fs, requested):
    k = gen_fs.probs.shape[1]
    out = {"classifier": clf_name,
           "class_distribution": {"generated": div.class_distribution(gen_fs.probs, k),
                                  "floor": None if floor_fs is None else div.class_distribution(floor_fs.probs, k)}}
    if ref_fs.features is not None and ref_fs.probs is not None:
        ref_cls = ref_fs.probs.argmax(1)
        gen_div = div.intra_class_diversity(gen_fs.features, gen_fs.probs.argmax(1), ref_fs.features, ref_cls, k)
        floor_div = None if floor_fs is None else div.intra_class_diversity(
            floor_fs.features, floor_fs.probs.argmax(1), ref_fs.features, ref_cls, k)
        out["intra_class_diversity"] = {"generated": gen_div, "floor": floor_div}
    if requested is not None:
        ref_acc = None
        if ref_fs.probs is not None and ref_fs.labels is not None:
            ref_acc = div.conditional_accuracy(ref_fs.probs, ref_fs.labels)
        out["conditional_accuracy"] = {"generated": div.conditional_accuracy(gen_fs.probs, requested),
                                       "floor": ref_acc}
    return out


def _speed_section(speed, extractors):
    from kuosan.evaluation.speed import normalise_speed

    out = {}
    if speed:
        out["generation"] = normalise_speed(speed)
    out["feature_extraction"] = {
        e.name: {"device": str(e.device), "images": e.images_seen, "seconds": e.seconds,
                 "images_per_s": e.images_seen / e.seconds if e.seconds > 0 else None}
        for e in extractors}
    return out


def _flags(report):
    flags = []
    cd = report.get("diversity", {}).get("class_distribution", {}).get("generated")
    if cd and cd.get("mode_collapse"):
        flags.append(f"mode collapse: classes {cd['missing_classes']} (nearly) absent")
    mem = report.get("memorisation", {})
    if mem.get("suspect_fraction", 0) > 0.05:
        flags.append(f"memorisation: {100 * mem['suspect_fraction']:.0f}% of samples closer to a training image "
                     "than 99% of held-out real images")
    if "stability" in report:
        from kuosan.evaluation.stability import stability_flags

        flags += stability_flags(report["stability"])
    return flags


def _feature_sets(ext, gen, ref, train, bar):
    """``(generated, reference, train, floor)`` feature sets for one extractor (train/floor ``None`` without one)."""
    with bar(len(gen.images), f"{ext.name} generated") as b:
        gen_fs = FeatureSet.from_features(ext.name, *ext.run(gen.images, progress=b.update))
    ref_fs = ref.features(ext)
    train_fs = train.features(ext) if train is not None else None
    floor_fs = train_fs.subset(_floor_indices(train_fs, len(gen.images))) if train_fs is not None else None
    return gen_fs, ref_fs, train_fs, floor_fs


def _quality(gen_fs, ref_fs, train_fs, floor_fs, opts):
    floor = _distances(floor_fs, ref_fs, opts) if floor_fs is not None else None
    out = _paired(_distances(gen_fs, ref_fs, opts), floor)
    if floor_fs is not None:
        out["floor_images"] = floor_fs.count
    return out


def _nearest_neighbours(gen_fs, ref_fs, train_fs):
    """Distances to the nearest training image: ``(generated, held-out reference)``, or ``None``."""
    if train_fs is None or train_fs.features is None or ref_fs.features is None:
        return None
    return (div.nearest_train_distances(gen_fs.features, train_fs.features),
            div.nearest_train_distances(ref_fs.features, train_fs.features))


# --- entry point ----------------------------------------------------------------------------------

def evaluate(generated, reference=DEFAULT_REFERENCE, config=None, *, train_reference="auto",
             generated_labels=None, out_dir=None, metrics_log=None, speed=None, log=None):
    """Evaluate ``generated`` images against ``reference``; write ``report.json``/``report.md``/plots to ``out_dir``.

    ``generated``: a folder, a ``.npz``, an ``ImageDataset``, a sampling result or a uint8 array.
    ``reference``: a data set spec (``"fashion-mnist:test"``), a folder, a statistics ``.npz`` or images.
    ``config``: an :class:`~kuosan.evaluation.config.EvalConfig` (extractors, device, real-set size, metric
    options; ``None``: the defaults). ``train_reference``: real images for the floors and the memorisation
    check; ``"auto"`` takes the training split of a bundled reference, ``None`` skips both.
    ``generated_labels``: the class each image was asked for (conditional accuracy); by default the labels
    the generated set carries, if any. ``metrics_log``: a training run's ``metrics.jsonl`` (stability);
    ``speed``: the sampling timings. Every input is checked (:func:`kuosan.evaluation.validate.validate`)
    before any image is featurised. Returns the report dict.
    """
    from kuosan.evaluation.validate import validate

    cfg = EvalConfig() if config is None else config
    if not isinstance(cfg, EvalConfig):
        raise KuosanError(f"config must be an EvalConfig, got {type(cfg).__name__}")
    log = log or (lambda msg: None)
    if train_reference == "auto":
        train_reference = default_train_reference(reference)
    names, clf_name = validate(reference, cfg, train_reference=train_reference, out_dir=out_dir)
    gen = as_image_set(generated)
    if len(gen.images) < 2:
        raise KuosanError(f"need at least 2 generated images to compare sets, got {len(gen.images)}")
    resolution, channels = int(gen.images.shape[-1]), int(gen.images.shape[1])
    needed = _checked_needs(reference, train_reference, cfg, names, clf_name, resolution, channels)
    bar = _progress_factory(cfg)
    ref = _Real(reference, cfg, resolution, channels, log, bar)
    train = _Real(train_reference, cfg, resolution, channels, log, bar) if train_reference is not None else None
    requested = np.asarray(generated_labels, dtype=np.int64) if generated_labels is not None else gen.labels

    report = {
        "kuosan_version": _version(),
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "config": cfg.to_dict(),
        "generated": {"source": gen.source, "images": len(gen.images), "resolution": resolution,
                      "channels": channels, "labels": requested is not None},
        "reference": {"source": ref.name, "max_images": cfg.max_real,
                      "train_reference": None if train is None else train.name},
        "extractors": {}, "quality": {},
    }
    opts = dict(kid_subset_size=cfg.kid_subset_size, kid_subsets=cfg.kid_subsets, pr_k=cfg.pr_k, dc_k=cfg.dc_k)
    used, sets = [], {}
    for name in needed:
        ext = get_extractor(name, device=cfg.device, inception_weights=cfg.inception_weights)
        used.append(ext)
        log(f"{name}: features of {len(gen.images)} generated images")
        sets[name] = _feature_sets(ext, gen, ref, train, bar)
        origin = ref.origin.get(name, {})
        report["extractors"][name] = {
            "dim": ext.dim, **ext.info, "reference_images": sets[name][1].count,
            "reference_from": origin.get("from"),
            "reference_cached": origin.get("from") in ("shipped", "cache"),
            **({"reference_checked_against_data": origin["verified"]} if "verified" in origin else {}),
            **({"train_reference_from": train.origin.get(name, {}).get("from")} if train is not None else {})}
        if name in names:
            report["quality"][name] = _quality(*sets[name], opts)

    if clf_name in sets:
        gen_fs, ref_fs, _, floor_fs = sets[clf_name]
        usable = requested is not None and len(requested) == len(gen.images) and \
            requested.max(initial=0) < gen_fs.probs.shape[1]
        report["diversity"] = _diversity(clf_name, gen_fs, ref_fs, floor_fs, requested if usable else None)
    mem_name = clf_name if clf_name in sets else names[0]
    nn = _nearest_neighbours(*sets[mem_name][:3])
    if nn is not None:
        report["memorisation"] = {"features": mem_name, "train_images": sets[mem_name][2].count,
                                  **div.memorisation(*nn)}

    stability_log = None
    if metrics_log is not None:
        from kuosan.evaluation.stability import EmptyMetricsLog, stability_report

        try:
            report["stability"], stability_log = stability_report(metrics_log)
        except EmptyMetricsLog:  # a run too short for one metrics line: the rest of the report still stands
            log(f"{metrics_log} has no records yet: the report has no training stability section")
    report["speed"] = _speed_section(speed, used)
    report["flags"] = _flags(report)
    from kuosan.evaluation.render import markdown_summary

    report["markdown_summary"] = markdown_summary(report)

    if out_dir is not None:
        from kuosan.evaluation.render import write_outputs

        write_outputs(report, out_dir, gen, sets, nn, stability_log, plots=cfg.plots,
                      class_names=_class_names(reference, gen), log=log)
    return report


def _checked_needs(reference, train_reference, cfg, names, clf_name, resolution, channels) -> list:
    """The feature networks an evaluation runs (``names``, then the data set's classifier), once both real
    sets are checked to have what they need for images of ``channels`` x ``resolution``."""
    from kuosan.evaluation.validate import check_reference

    needed = names + ([clf_name] if clf_name and clf_name not in names else [])
    for spec, option in ((reference, "--reference"), (train_reference, "--train-reference")):
        check_reference(spec, cfg, needed, option=option, image_shape=(channels, resolution))
    return needed


def prepare_references(reference=DEFAULT_REFERENCE, config=None, *, train_reference="auto", resolution: int,
                       channels: int, log=None, probe: int = 64) -> dict:
    """Featurise now the real sets that :func:`evaluate` with the same ``reference``, ``config`` and
    ``train_reference`` will compare generated images of ``channels`` x ``resolution`` against, so that it then
    finds them shipped or cached and spends its time on the generated images only. Also times each extractor
    on ``probe`` real images, so a caller can budget for that. Returns ``{"seconds": time taken, "per_image":
    {extractor: seconds an image costs}}``."""
    import time

    from kuosan.evaluation.validate import validate

    t0 = time.time()
    cfg = EvalConfig() if config is None else config
    log = log or (lambda msg: None)
    if train_reference == "auto":
        train_reference = default_train_reference(reference)
    names, clf_name = validate(reference, cfg, train_reference=train_reference, out_dir=None)
    needed = _checked_needs(reference, train_reference, cfg, names, clf_name, resolution, channels)
    bar = _progress_factory(cfg)
    reals = [_Real(s, cfg, resolution, channels, log, bar) for s in (reference, train_reference) if s is not None]
    sample = None
    if isinstance(reference, (str, Path)) and not is_stats_file(reference):
        from kuosan.data import load_dataset

        sample = load_dataset(str(reference), resolution=resolution, channels=channels, max_images=probe).images
    per_image = {}
    for name in needed:
        ext = get_extractor(name, device=cfg.device, inception_weights=cfg.inception_weights)
        for real in reals:
            real.features(ext)
        if sample is not None and len(sample):
            t = time.time()
            ext.run(sample)
            per_image[name] = (time.time() - t) / len(sample)
    return {"seconds": time.time() - t0, "per_image": per_image}


def _class_names(reference, gen):
    dataset = dataset_of(reference)
    if dataset is not None:
        from kuosan.data import builtin

        return {"fashion-mnist": builtin.FASHION_MNIST_CLASSES}.get(dataset, builtin.DIGIT_CLASSES)
    return gen.class_names


def _version():
    try:
        from kuosan import __version__

        return __version__
    except ImportError:
        return None


__all__ = ["evaluate", "EvalConfig", "default_extractors", "default_train_reference", "DEFAULT_REFERENCE"]
