"""``EvalConfig``: how :func:`kuosan.evaluation.report.evaluate` scores a set, with every default in one place.

    from kuosan.evaluation.config import EvalConfig
    from kuosan.evaluation.report import evaluate
    report = evaluate("samples.npz", "fashion-mnist:test", EvalConfig(max_real=2000), out_dir="eval/")

The inputs (generated images, reference, training reference, labels, training log, timings, output folder)
are arguments of ``evaluate``; the config holds only the choices, so one config can score many sets and is
written into ``report.json`` (``EvalConfig.from_dict(report["config"])`` gives it back).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

from kuosan.errors import KuosanError


@dataclass(frozen=True)
class EvalConfig:
    # Feature extractors by name (kuosan.evaluation.features.NAMES). None: the data set's own classifier
    # (fmnist-cnn, mnist-cnn), plus efficientnet-lite0 on CUDA; efficientnet-lite0 alone for sets without
    # one; for a statistics file, the extractors it holds. The data set's classifier always runs as well,
    # for the diversity section.
    extractors: tuple[str, ...] | None = None
    # Where the extractors run: "cpu", "cuda", "cuda:1" …
    device: str = "cpu"
    # At most this many real images per real set (a class-balanced choice); None: all of them.
    max_real: int | None = 10000
    # The pt_inception-2015-12-05 state dict, needed only by the inception extractor (never downloaded).
    inception_weights: str | None = None
    # KID: vectors drawn from each set per subset (fewer when a set is smaller), and how many subsets.
    kid_subset_size: int = 1000
    kid_subsets: int = 100
    # Neighbours for precision/recall (Kynkäänniemi et al. 2019) and density/coverage (Naeem et al. 2020).
    pr_k: int = 3
    dc_k: int = 5
    # Reuse reference features from the cache ($KUOSAN_CACHE/eval) and write new ones there.
    use_cache: bool = True
    # Use the reference statistics shipped in the package (kuosan/evaluation/stats/) when the reference,
    # extractor, image size and data files match them (see kuosan.evaluation.shipped).
    shipped_stats: bool = True
    # Write the PNG plots beside report.json.
    plots: bool = True
    # tqdm progress bars on stderr during feature extraction; None: only when stderr is a terminal.
    progress: bool | None = None

    def __post_init__(self):
        ext = self.extractors
        if isinstance(ext, str):
            ext = [x for x in ext.split(",")]
        if ext is not None:
            if not isinstance(ext, (list, tuple)):
                raise KuosanError(f"extractors must be a list of names or a comma-separated string, got {ext!r}")
            ext = tuple(str(x).strip() for x in ext if str(x).strip())
            if not ext:
                raise KuosanError("--extractors / extractors names no extractor; leave it out for the defaults")
        object.__setattr__(self, "extractors", ext)
        if isinstance(self.inception_weights, Path):
            object.__setattr__(self, "inception_weights", str(self.inception_weights))

    def replace(self, **changes) -> EvalConfig:
        """A copy with ``changes`` (unknown names are a :class:`KuosanError`)."""
        unknown = set(changes) - {f.name for f in dataclasses.fields(self)}
        if unknown:
            raise KuosanError(f"EvalConfig has no field {', '.join(sorted(unknown))}")
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict:
        """Plain JSON types (the extractors as a list)."""
        d = dataclasses.asdict(self)
        d["extractors"] = None if self.extractors is None else list(self.extractors)
        return d

    @classmethod
    def from_dict(cls, data: dict) -> EvalConfig:
        """The inverse of :meth:`to_dict`; missing fields take their defaults, unknown ones are an error."""
        unknown = set(data) - {f.name for f in dataclasses.fields(cls)}
        if unknown:
            raise KuosanError(f"EvalConfig has no field {', '.join(sorted(unknown))}")
        return cls(**data)


__all__ = ["EvalConfig"]
