"""Data set specs -> :class:`ImageDataset`, and the fingerprint that names one in cache keys.

A spec is one of
    ``fashion-mnist`` | ``mnist`` | ``digits``  built-in grey-scale sets (``NAME:SPLIT`` means ``split=SPLIT``)
    ``emoji[:STYLE]``                          64x64 colour emoji in five art styles (see :mod:`kuosan.data.emoji`);
                                               ``emoji:fine``: a class per training emoji ("dog face");
                                               ``emoji:sub``: a class per subcategory ("sky & weather");
                                               ``emoji:noto``: the older set rendered from a font
    ``stacked-mnist``                          three MNIST digits as R, G, B: 1,000 modes (:mod:`kuosan.data.stacked_mnist`)
    ``DIR`` or ``folder:DIR``                  an image folder (see :mod:`kuosan.data.folder`)
    ``FILE.npz``                               images written by ``kuosan sample`` (see :mod:`kuosan.data.arrays`)

Splits are ``train`` (the default), ``test`` and ``all`` (train then test). A ``.npz`` file is one split.
Defaults: built-ins keep their size (28, 28, 8 px) and 1 channel; folders give 3 channels at the
resolution guessed from the first image (capped at 64); ``.npz`` files keep what they hold.
``max_images`` keeps the first N of a seeded (0), class-proportional shuffle, returned in source order.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path

from kuosan.data import arrays, builtin, emoji, emoji_noto, folder, stacked_mnist
from kuosan.data.dataset import ImageDataset, take_stratified
from kuosan.data.transforms import fit_images
from kuosan.errors import KuosanError, user_path

_ALIASES = {"fashion-mnist": "fashion-mnist", "fashion_mnist": "fashion-mnist", "fashionmnist": "fashion-mnist",
            "mnist": "mnist", "digits": "digits", "sklearn-digits": "digits", "emoji": "emoji",
            "stacked-mnist": "stacked-mnist", "stacked_mnist": "stacked-mnist", "stackedmnist": "stacked-mnist"}
_NATIVE_RESOLUTION = {"fashion-mnist": 28, "mnist": 28, "digits": 8, "emoji": 64, "stacked-mnist": 28}
_NATIVE_CHANNELS = {"emoji": 3, "stacked-mnist": 3}    # the others are grey
_READERS = {**builtin.READERS, "emoji:noto": emoji_noto.read_noto,  # colour, from a font (data/emoji_noto.py)
            "stacked-mnist": stacked_mnist.read_stacked_mnist}  # built from `mnist` (data/stacked_mnist.py)


@dataclass(frozen=True)
class Source:
    """A parsed spec: ``kind`` is ``"builtin"``, ``"folder"`` or ``"npz"``; ``target`` a name or a path."""

    kind: str
    target: str
    split: str


def _pick_split(from_spec: str | None, split: str | None, spec: str) -> str:
    if from_spec and split and from_spec != split:
        raise KuosanError(f"data set {spec!r} names split {from_spec!r} but split={split!r} was also given; "
                          "give it once")
    split = from_spec or split or "train"
    if split not in builtin.SPLITS:
        raise KuosanError(f"unknown split {split!r} in {spec!r}: use train, test or all")
    return split


def parse_spec(spec: str, split: str | None = None, root: str | None = None) -> Source:
    """Work out what ``spec`` names; relative paths are taken inside ``root`` when it is given."""
    spec = str(spec).strip()
    if not spec.removeprefix("folder:").strip():
        raise KuosanError(f"the data set spec {spec!r} is empty; give fashion-mnist, mnist or digits, an image "
                          "folder (one subfolder per class) or a .npz file")  # not the current folder, silently
    name, sep, suffix = spec.partition(":")
    if name.lower() in _ALIASES:
        if _ALIASES[name.lower()] == "emoji":                   # emoji[:STYLE][:SPLIT][:fine|:sub]
            style, from_spec, labelling = emoji.parse_style(suffix)
            target = ":".join(["emoji", *([style] if style else []), *([labelling] if labelling else [])])
            return Source("builtin", target, _pick_split(from_spec, split, spec))
        return Source("builtin", _ALIASES[name.lower()], _pick_split(suffix if sep else None, split, spec))
    path_text, from_spec = spec, None
    if spec.startswith("folder:"):
        path_text = spec[len("folder:"):]
    elif not _local(spec, root).exists() and re.search(r":(train|test|all)$", spec):
        path_text, _, from_spec = spec.rpartition(":")        # DIR:test
    path = _local(path_text, root)
    if path.suffix.lower() == ".npz" and not spec.startswith("folder:"):
        if (from_spec or split or "all") not in ("all", "train"):
            raise KuosanError(f"{path} is a .npz file, which holds one split; drop split={from_spec or split!r}")
        return Source("npz", str(path), "all")
    if not path.exists():
        if "/" in path_text or os.sep in path_text or path_text.startswith((".", "~")):
            raise KuosanError(f"{path} does not exist; check the path to the image folder or .npz file")
        raise KuosanError(f"unknown data set {spec!r}: not fashion-mnist, mnist or digits, and no file or folder "
                          "of that name; give one of those, an image folder (one subfolder per class) or a .npz file")
    return Source("folder", str(path), _pick_split(from_spec, split, spec))


def _local(text: str, root: str | None) -> Path:
    path = user_path(text, "the data set")
    return user_path(root, "the data root") / path if root and not path.is_absolute() else path


def _check_options(resolution, channels, max_images):
    if resolution is not None and (not isinstance(resolution, int) or resolution < 1):
        raise KuosanError(f"resolution must be a positive whole number of pixels, got {resolution!r}")
    if channels is not None and channels not in (1, 3):
        raise KuosanError(f"channels must be 1 (grey) or 3 (RGB), got {channels!r}")
    if max_images is not None and (not isinstance(max_images, int) or max_images < 1):
        raise KuosanError(f"max_images must be a positive whole number, got {max_images!r}")


def _read_builtin(target: str, split: str, root: str | None):
    """``(images, labels, class_names[, styles])``; ``emoji`` and ``emoji:STYLE`` carry a style per image."""
    name, _, rest = target.partition(":")
    if name == "emoji" and rest != "noto":
        style, labelling = emoji.target_parts(rest)
        return emoji.read_emoji(split, root, style, labelling)
    return _READERS[target](split, root)


def load_dataset(spec: str, split: str | None = None, *, root: str | None = None, resolution: int | None = None,
                 channels: int | None = None, max_images: int | None = None) -> ImageDataset:
    """Load a data set into memory as uint8 ``[N, C, H, W]`` (see the module docstring for specs and defaults).

    ``root``: the Fashion-MNIST directory (or the folder holding ``mnist_5k.csv.gz``) for built-ins,
    the base of relative paths for folders and ``.npz`` files.
    """
    _check_options(resolution, channels, max_images)
    src = parse_spec(spec, split, root)
    if src.kind == "folder":
        dataset, _ = folder.load_image_folder(src.target, src.split, resolution=resolution,
                                              channels=channels or 3, max_images=max_images)
        return dataset
    styles: list = []                                       # emoji's second label, when it has one
    if src.kind == "npz":
        images, labels, names = arrays.read_npz(src.target)
        dataset_name = src.target
        if resolution is None and images.shape[2] != images.shape[3]:
            resolution = min(images.shape[2:])              # non-square: centre-crop to the shorter side
    else:
        images, labels, names, *styles = _read_builtin(src.target, src.split, root)
        dataset_name = f"{src.target}:{src.split}"
    keep = take_stratified(labels.numpy(), max_images)
    if len(keep) < len(labels):
        images, labels, styles = images[keep], labels[keep], [s[keep] for s in styles]
    dataset = ImageDataset(fit_images(images, resolution, channels), labels.contiguous(), names, dataset_name)
    return emoji.with_styles(dataset, styles[0]) if styles else dataset


# --- fingerprint ----------------------------------------------------------------------------------

def _stat(path: Path, base: Path | None = None) -> list:
    st = path.stat()
    return [str(path.relative_to(base)) if base else path.name, st.st_size, st.st_mtime_ns]


def _describe(src: Source, root: str | None, resolution, channels) -> tuple[str, int, int, list]:
    """``(slug, resolution, channels, content)`` where ``content`` changes when the files do."""
    if src.kind == "builtin":
        content: list = []
        if src.target == "fashion-mnist":
            d = builtin.fashion_mnist_dir(root)
            stems = [s for part in (("train", "test") if src.split == "all" else (src.split,))
                     for s in builtin.IDX_STEMS[part]]
            content = [[p.name, p.stat().st_size] for p in (builtin.find_idx_file(d, s) for s in stems) if p]
        elif src.target in ("mnist", "stacked-mnist"):
            p = builtin.mnist_csv_path(root)
            content = [[p.name, p.stat().st_size]] if p.is_file() else []
        elif src.target == "emoji:noto":
            content = emoji_noto.font_fingerprint(root)
        elif src.target.startswith("emoji"):
            style, labelling = emoji.target_parts(src.target.partition(":")[2])
            content = emoji.fingerprint(style, root, labelling)
        base = src.target.partition(":")[0]
        return (src.target.replace(":", "-"), resolution or _NATIVE_RESOLUTION[base],
                channels or _NATIVE_CHANNELS.get(base, 1), content)
    path = Path(src.target)
    slug = re.sub(r"[^A-Za-z0-9._-]+", "_", path.resolve().name or "data")[:40]
    if src.kind == "npz":
        c, h, w = arrays.npz_image_shape(path)
        return slug, resolution or min(h, w), channels or c, [_stat(path)]
    listing = folder.list_folder(path, src.split)
    content = [listing.class_names] + [_stat(f, path) for f in listing.files]
    return slug, resolution or folder.guess_resolution(listing.files), channels or 3, content


def dataset_fingerprint(spec: str, split: str | None = None, *, root: str | None = None,
                        resolution: int | None = None, channels: int | None = None,
                        max_images: int | None = None) -> str:
    """A short, stable name for what :func:`load_dataset` would return, for cache keys.

    ``"fashion-mnist-train-28px-1ch-3f9a0c2b1d"``: readable parts, then a hash of the resolved options
    and the files' names and sizes (plus modification times for folders and ``.npz`` files). Nothing is
    decoded; defaults are resolved as ``load_dataset`` resolves them.
    """
    _check_options(resolution, channels, max_images)
    src = parse_spec(spec, split, root)
    slug, res, ch, content = _describe(src, root, resolution, channels)
    key = json.dumps([1, src.kind, src.target if src.kind == "builtin" else os.path.abspath(src.target),
                      src.split, res, ch, max_images, content])
    digest = hashlib.sha256(key.encode()).hexdigest()[:10]
    limit = f"-n{max_images}" if max_images else ""
    return f"{slug}-{src.split}-{res}px-{ch}ch{limit}-{digest}"
