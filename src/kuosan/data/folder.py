"""Image folders: one subfolder per class, decoded once into memory, never stopped by one bad file.

Layout
    ``DIR/<class>/**/*.png`` — classes are the sorted subfolder names; images directly in ``DIR`` with no
    subfolders form one class named after ``DIR``. A folder is a single split ("train"; "all" is the
    same) unless it holds ``train/`` and ``test/`` subfolders, each laid out as above; then ``split``
    picks one ("all" takes both) and the class list is the union of both, so labels agree across splits.
    Hidden files and folders (``.DS_Store``) are ignored silently; files whose extension is not an image
    extension are ignored and counted in the summary.

Decoding
    PNG, JPEG, WebP, BMP, GIF and TIFF (animated GIF/WebP: the first frame). Alpha is composited on
    white; palette, 16-bit and CMYK images are converted (see :mod:`kuosan.data.transforms`); the EXIF
    orientation is applied. Each image is scaled so its shorter side is ``resolution`` and centre-cropped.
    ``resolution=None`` takes the shorter side of the first readable image (sorted path order), capped
    at 64. Files decode on a thread pool (Pillow releases the GIL) into one uint8 tensor.

Skipped, with one log line each (logger ``kuosan.data``) and a summary line at the end
    empty file, unreadable, not an image, truncated, corrupt, too large (over ``MAX_PIXELS``, or Pillow's
    decompression-bomb limit), too small (shorter side under ``max(MIN_SIDE, resolution // 4)``).
    A class folder with no image files, or whose images were all skipped, is dropped with a warning
    (in the train/test layout it is kept, with no images in that split, so labels stay aligned).
"""

from __future__ import annotations

import io
import logging
import os
import warnings
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError

from kuosan.data.dataset import ImageDataset, stratified_order
from kuosan.data.transforms import pil_to_chw, resize_center_crop, to_l_or_rgb
from kuosan.errors import KuosanError

log = logging.getLogger("kuosan.data")

IMAGE_EXTENSIONS = frozenset({".png", ".jpg", ".jpeg", ".jpe", ".webp", ".bmp", ".gif", ".tif", ".tiff"})
MAX_PIXELS = 8192 * 8192            # larger images are refused as "too large" (decompression bombs)
MIN_SIDE = 8                        # shorter sides under max(MIN_SIDE, resolution // 4) are "too small"
DEFAULT_MAX_RESOLUTION = 64         # cap on the resolution guessed from the first image


@dataclass
class FolderListing:
    """The files of one split of an image folder, before decoding."""

    files: list[Path]
    labels: list[int]
    class_names: list[str]
    split_layout: bool               # DIR/train/<class> + DIR/test/<class>
    ignored: int = 0                 # files with a non-image extension
    empty_classes: list[str] = field(default_factory=list)
    loose: dict[str, int] = field(default_factory=dict)    # {folder: images beside class subfolders}


@dataclass
class FolderReport:
    """What happened while loading a folder: counts, skipped files and dropped classes."""

    directory: str
    loaded: int = 0
    class_names: list[str] = field(default_factory=list)
    skipped: list[tuple[str, str, str]] = field(default_factory=list)    # (path, reason, detail)
    dropped_classes: list[str] = field(default_factory=list)
    ignored: int = 0

    def skip_counts(self) -> Counter:
        return Counter(reason for _, reason, _ in self.skipped)

    def summary(self) -> str:
        n_classes = len(self.class_names)
        line = f"{self.directory}: loaded {self.loaded} images in {n_classes} class{'es' * (n_classes != 1)}"
        if self.skipped:
            counts = sorted(self.skip_counts().items(), key=lambda kv: (-kv[1], kv[0]))
            line += f"; skipped {len(self.skipped)}: " + ", ".join(f"{n} {r}" for r, n in counts)
        if self.dropped_classes:
            line += f"; dropped empty classes: {', '.join(self.dropped_classes)}"
        if self.ignored:
            line += f"; ignored {self.ignored} files without an image extension"
        return line


class SkipImage(Exception):
    """Raised by :func:`decode_image` for a file to leave out; ``reason`` is the summary category."""

    def __init__(self, reason: str, detail: str):
        super().__init__(f"{reason} ({detail})")
        self.reason, self.detail = reason, detail


# --- listing --------------------------------------------------------------------------------------

def _visible(path: Path, base: Path) -> bool:
    return not any(part.startswith(".") for part in path.relative_to(base).parts)


def _image_files(directory: Path, recursive: bool) -> tuple[list[Path], int]:
    """Sorted image files under ``directory`` and how many other (non-hidden) files were ignored."""
    entries = directory.rglob("*") if recursive else directory.iterdir()
    images, ignored = [], 0
    for p in entries:
        if not _visible(p, directory) or p.is_dir():
            continue
        if p.suffix.lower() in IMAGE_EXTENSIONS:
            images.append(p)
        else:
            ignored += 1
    return sorted(images), ignored


def _subfolders(directory: Path) -> list[Path]:
    return sorted(p for p in directory.iterdir() if p.is_dir() and not p.name.startswith("."))


def _class_files(directory: Path, single_name: str, loose: dict) -> tuple[dict[str, list[Path]], int]:
    """``{class: files}`` for ``directory`` (subfolders are classes; none means one class ``single_name``).

    Images lying beside class subfolders are left out and counted in ``loose[str(directory)]``.
    """
    subs = _subfolders(directory)
    files, ignored = _image_files(directory, recursive=False)
    if not subs:
        return ({single_name: files} if files else {}), ignored
    if files:
        loose[str(directory)] = len(files)
    classes = {}
    for sub in subs:
        classes[sub.name], n = _image_files(sub, recursive=True)
        ignored += n
    return classes, ignored


def list_folder(directory: str | Path, split: str = "train") -> FolderListing:
    """The image files of ``split`` with their class labels; raises :class:`KuosanError` for a bad layout."""
    root = Path(directory).expanduser()
    if not root.exists():
        raise KuosanError(f"image folder {root} does not exist; check the path")
    if not root.is_dir():
        raise KuosanError(f"{root} is not a directory, a .npz file or a known data set "
                          "(fashion-mnist, mnist, digits)")
    name = root.resolve().name or "images"
    split_layout = {"train", "test"} <= {p.name for p in _subfolders(root)}
    if split not in ("train", "test", "all"):
        raise KuosanError(f"unknown split {split!r} for {root}: use train, test or all")
    if not split_layout and split == "test":
        raise KuosanError(f"{root} has no test/ subfolder: an image folder is one split (train) unless it holds "
                          "train/ and test/ subfolders, each with one subfolder per class")
    parts = (["train", "test"] if split == "all" else [split]) if split_layout else [None]
    loose: dict[str, int] = {}
    per_part = [_class_files(root / p if p else root, name, loose) for p in parts]
    if split_layout:  # labels from the union of both splits' classes, so they agree between splits
        other = [s for s in ("train", "test") if s not in parts]
        names = {c for p in other for c, f in _class_files(root / p, name, {})[0].items() if f}
    else:
        names = set()
    for classes, _ in per_part:
        names |= {c for c, f in classes.items() if f}
    class_names = sorted(names)
    empty = sorted({c for classes, _ in per_part for c, f in classes.items() if not f} - names)
    index = {c: i for i, c in enumerate(class_names)}
    pairs = sorted((f, index[c]) for classes, _ in per_part for c, fs in classes.items() if fs for f in fs)
    return FolderListing([f for f, _ in pairs], [y for _, y in pairs], class_names, split_layout,
                         sum(n for _, n in per_part), empty, loose)


# --- decoding -------------------------------------------------------------------------------------

def _read_bytes(path: Path) -> bytes:
    """The file's bytes (a seam for tests: root reads through ``chmod 000``)."""
    with open(path, "rb") as f:
        return f.read()


def _one_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return text[0] if text else type(e).__name__


def _open_image(path: Path) -> Image.Image:
    """Open (headers only), or raise :class:`SkipImage` for empty, unreadable, non-image or oversized files."""
    try:
        data = _read_bytes(path)
    except OSError as e:
        raise SkipImage("unreadable", e.strerror or _one_line(e)) from None
    if not data:
        raise SkipImage("empty file", "0 bytes")
    try:
        im = Image.open(io.BytesIO(data))
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise SkipImage("too large", _one_line(e)) from None
    except UnidentifiedImageError:
        raise SkipImage("not an image", "Pillow cannot identify it") from None
    except Exception as e:  # noqa: BLE001 - a broken header can raise almost anything
        raise SkipImage("not an image", _one_line(e)) from None
    w, h = im.size
    if w * h > MAX_PIXELS:
        raise SkipImage("too large", f"{w}x{h} pixels, more than the {MAX_PIXELS} limit")
    return im


def decode_image(path: Path, resolution: int, channels: int) -> np.ndarray:
    """One file -> uint8 ``[channels, resolution, resolution]``, or raise :class:`SkipImage`."""
    im = _open_image(path)
    min_side = max(MIN_SIDE, resolution // 4)
    if min(im.size) < min_side:
        raise SkipImage("too small", f"{im.size[0]}x{im.size[1]}, shorter side under {min_side} px")
    try:
        if im.format == "JPEG":
            im.draft(im.mode, (resolution, resolution))  # decode at 1/2, 1/4, 1/8 scale when that suffices
        im.load()
    except Exception as e:  # noqa: BLE001 - any decoder failure means this file is damaged
        truncated = isinstance(e, EOFError) or "truncated" in str(e) or "broken data stream" in str(e)
        raise SkipImage("truncated" if truncated else "corrupt", _one_line(e)) from None
    try:
        im = ImageOps.exif_transpose(im)
    except Exception:  # noqa: BLE001 - a damaged EXIF block leaves the image as stored
        pass
    try:
        return pil_to_chw(resize_center_crop(to_l_or_rgb(im), resolution), channels)
    except Exception as e:  # noqa: BLE001
        raise SkipImage("corrupt", _one_line(e)) from None


def guess_resolution(files: list[Path]) -> int:
    """Shorter side of the first file that opens and is at least ``MIN_SIDE``, capped at 64 (64 if none)."""
    for path in files:
        try:
            side = min(_open_image(path).size)
        except SkipImage:
            continue
        if side >= MIN_SIDE:
            return min(side, DEFAULT_MAX_RESOLUTION)
    return DEFAULT_MAX_RESOLUTION


def _decode_or_skip(args):
    path, resolution, channels = args
    try:
        return decode_image(path, resolution, channels), None
    except SkipImage as skip:
        return None, skip


def _default_workers() -> int:
    try:
        return min(8, len(os.sched_getaffinity(0)))
    except AttributeError:
        return min(8, os.cpu_count() or 1)


def _decode_all(paths: list[Path], resolution: int, channels: int, workers: int) -> list:
    """``(array | None, SkipImage | None)`` per path, in order."""
    jobs = [(p, resolution, channels) for p in paths]
    with warnings.catch_warnings():  # Pillow's bomb warning becomes an exception, seen by the workers too
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        if workers <= 1 or len(jobs) < 32:
            return list(map(_decode_or_skip, jobs))
        with ThreadPoolExecutor(workers) as pool:
            return list(pool.map(_decode_or_skip, jobs))


# --- loading --------------------------------------------------------------------------------------

def load_image_folder(directory: str | Path, split: str = "train", *, resolution: int | None = None,
                      channels: int = 3, max_images: int | None = None,
                      workers: int | None = None) -> tuple[ImageDataset, FolderReport]:
    """Decode an image folder into memory; see the module docstring for layout, defaults and skips.

    ``max_images`` takes the first N of a seeded (0) class-proportional order, decoding only what it
    needs (files that fail are replaced by the next ones).
    """
    listing = list_folder(directory, split)
    for folder, n in listing.loose.items():
        log.warning(f"ignoring {n} images directly in {folder}: its subfolders are the classes")
    for c in listing.empty_classes:
        log.warning(f"class folder {c!r} in {directory} has no image files; class dropped")
    files, labels = listing.files, np.asarray(listing.labels, dtype=np.int64)
    resolution = resolution or guess_resolution(files)
    report = FolderReport(str(directory), ignored=listing.ignored, dropped_classes=list(listing.empty_classes))
    order = stratified_order(labels) if max_images is not None else np.arange(len(files))
    want = len(files) if max_images is None else min(max_images, len(files))
    kept, arrays, pos = [], [], 0
    while len(kept) < want and pos < len(order):
        chunk = order[pos:pos + want - len(kept)]
        pos += len(chunk)
        for i, (array, skip) in zip(chunk, _decode_all([files[i] for i in chunk], resolution, channels,
                                                         workers or _default_workers())):
            if skip is None:
                kept.append(i)
                arrays.append(array)
            else:
                log.warning(f"skipping {files[i]}: {skip.reason} ({skip.detail})")
                report.skipped.append((str(files[i]), skip.reason, skip.detail))
    untried = np.bincount(labels[order[pos:]], minlength=len(listing.class_names))
    return _assemble(listing, labels, kept, arrays, untried, split, report)


def _assemble(listing, labels, kept, arrays, untried, split, report):
    """Stack the decoded images in file order, drop classes whose files all failed, log the summary."""
    if not kept:
        report.class_names = []
        detail = report.summary() if (report.skipped or report.ignored) else (
            f"no files with an image extension ({', '.join(sorted(IMAGE_EXTENSIONS))})")
        raise KuosanError(f"no usable images in {report.directory}: {detail}")
    rank = np.argsort(kept, kind="stable")
    # np.stack copies even one image: a decoded image can be a read-only view, which torch.from_numpy refuses
    images = np.stack([arrays[r] for r in rank])
    y = labels[np.asarray(kept)[rank]]
    names = list(listing.class_names)
    if not listing.split_layout:                   # renumber without classes whose files were all tried and failed
        failed = [c for c in range(len(names)) if not (y == c).any() and not untried[c]]
        for c in failed:
            log.warning(f"class {names[c]!r} in {report.directory} has no usable images; class dropped")
            report.dropped_classes.append(names[c])
        keep = np.array([c for c in range(len(names)) if c not in failed], dtype=np.int64)
        remap = np.full(len(names), -1, dtype=np.int64)
        remap[keep] = np.arange(len(keep))
        y, names = remap[y], [names[c] for c in keep]
    report.loaded, report.class_names = len(y), names
    (log.warning if report.skipped or report.dropped_classes else log.info)(report.summary())
    dataset = ImageDataset(torch.from_numpy(images), torch.from_numpy(y), names, f"{report.directory}:{split}")
    return dataset, report
