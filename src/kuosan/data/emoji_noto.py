"""``emoji:noto``: the older, 730-image colour set rendered offline from the Noto Color Emoji font (Debian
``fonts-noto-color-emoji``); the ``emoji`` set of installed image packages is :mod:`kuosan.data.emoji`.

Each single-code-point emoji in the classes below that the font has is drawn by Pillow from the font's
colour bitmaps (``ImageFont.truetype(path, 109)``, ``draw.text(..., embedded_color=True)``: 109 px is the
size of the font's only bitmap strike), cropped to its visible pixels, centred on a white square and
resized to 64x64 (LANCZOS). 8 classes, 730 images with Noto Color Emoji 2.042; the classes are Unicode
code-point ranges, chosen to follow the emoji groups of Unicode's ``emoji-test.txt``:

    faces       1F600-1F637, 1F641-1F644, 1F910-1F92F, 1F970-1F97A, 1F9D0   smileys
    people      1F442-1F487                                                 body parts, hands, people
    animals     1F400-1F43F, 1F980-1F9AE                                    animals
    nature      1F300-1F344                                                 weather, sky, plants
    food        1F345-1F37F, 1F950-1F96F, 1F9C0-1F9CB                       food and drink
    activities  1F380-1F3CA, 1F93A-1F94F                                    celebrations, music, sport
    transport   1F680-1F6C5, 1F6E0-1F6FC                                    vehicles, places
    objects     1F4A0-1F4FF                                                 office, media, money, symbols

Split: within each class, in code-point order, every 5th emoji (index % 5 == 4) is ``test``, the rest
``train`` (deterministic). The rendered array is cached in ``$KUOSAN_CACHE/data`` (default
``~/.cache/kuosan/data``), keyed by the font file's size and modification time.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import numpy as np
import torch

from kuosan.errors import KuosanError, cache_root, user_path

FONT_ENV = "KUOSAN_EMOJI_FONT"
FONT_NAME = "NotoColorEmoji.ttf"
FONT_DIRS = ("/usr/share/fonts/truetype/noto", "/usr/share/fonts/noto", "/usr/share/fonts/google-noto-emoji",
             "/usr/local/share/fonts", "~/.local/share/fonts", "~/.fonts", "/System/Library/Fonts")
FONT_SIZE = 109                      # the font's only bitmap strike (CBDT); other sizes fail to load
RESOLUTION = 64
CACHE_VERSION = 1
CLASSES = {
    "faces": ((0x1F600, 0x1F637), (0x1F641, 0x1F644), (0x1F910, 0x1F92F), (0x1F970, 0x1F97A), (0x1F9D0, 0x1F9D0)),
    "people": ((0x1F442, 0x1F487),),
    "animals": ((0x1F400, 0x1F43F), (0x1F980, 0x1F9AE)),
    "nature": ((0x1F300, 0x1F344),),
    "food": ((0x1F345, 0x1F37F), (0x1F950, 0x1F96F), (0x1F9C0, 0x1F9CB)),
    "activities": ((0x1F380, 0x1F3CA), (0x1F93A, 0x1F94F)),
    "transport": ((0x1F680, 0x1F6C5), (0x1F6E0, 0x1F6FC)),
    "objects": ((0x1F4A0, 0x1F4FF),),
}
CLASS_NAMES = list(CLASSES)


def font_path(root: str | None = None) -> Path:
    """The font file: ``root`` (the file or its directory), else ``$KUOSAN_EMOJI_FONT``, else the usual places."""
    given = root or os.environ.get(FONT_ENV)
    if given:
        p = user_path(given, "the emoji font")
        p = p / FONT_NAME if p.is_dir() else p
        if not p.is_file():
            raise KuosanError(f"emoji font {p} not found; give the path of {FONT_NAME} (or its directory)")
        return p
    for d in FONT_DIRS:
        p = Path(d).expanduser() / FONT_NAME
        if p.is_file():
            return p
    raise KuosanError(f"`emoji:noto` needs the font {FONT_NAME}: `apt-get install fonts-noto-color-emoji`, "
                      f"or set {FONT_ENV} (or --data-root) to the font file")


def font_fingerprint(root: str | None = None) -> list:
    """What the rendered array depends on: the font's name, size and modification time, and the classes."""
    p = font_path(root)
    st = p.stat()
    return [p.name, st.st_size, st.st_mtime_ns, FONT_SIZE, RESOLUTION, CACHE_VERSION,
            {k: [list(r) for r in v] for k, v in CLASSES.items()}]


def _cache_file(root: str | None) -> Path:
    digest = hashlib.sha256(json.dumps(font_fingerprint(root)).encode()).hexdigest()[:12]
    return cache_root("data", f"emoji-{RESOLUTION}px-{digest}.npz")


def _code_points(path: Path) -> list[tuple[int, int]]:
    """``(code point, class)`` of every emoji in :data:`CLASSES` that the font maps, in code-point order."""
    from fontTools.ttLib import TTFont   # ships with matplotlib; reads only the cmap table

    cmap = set(TTFont(str(path), lazy=True).getBestCmap())
    return [(cp, k) for k, ranges in enumerate(CLASSES.values())
            for lo, hi in ranges for cp in range(lo, hi + 1) if cp in cmap]


def render(cp: int, font) -> np.ndarray:
    """One emoji -> uint8 ``[3, 64, 64]``: drawn in colour, cropped to its pixels, centred on white."""
    from PIL import Image, ImageDraw

    left, top, right, bottom = font.getbbox(chr(cp))
    im = Image.new("RGBA", (right + 4, bottom + 4), (0, 0, 0, 0))
    ImageDraw.Draw(im).text((0, 0), chr(cp), font=font, embedded_color=True)
    box = im.getbbox()
    if box is None:
        raise KuosanError(f"the emoji font drew nothing for U+{cp:04X}; is {FONT_NAME} damaged?")
    im = im.crop(box)
    side = max(im.size)
    square = Image.new("RGBA", (side, side), (255, 255, 255, 255))
    square.alpha_composite(im, ((side - im.width) // 2, (side - im.height) // 2))
    small = square.convert("RGB").resize((RESOLUTION, RESOLUTION), Image.Resampling.LANCZOS)
    return np.asarray(small, dtype=np.uint8).transpose(2, 0, 1)


def render_all(root: str | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(images uint8 [N, 3, 64, 64], labels int64 [N], code points int64 [N])``, from the cache when there."""
    cache = _cache_file(root)
    if cache.is_file():
        try:
            with np.load(cache, allow_pickle=False) as f:
                return f["images"], f["labels"], f["code_points"]
        except (OSError, ValueError, KeyError):
            pass                                          # damaged: render again
    from PIL import ImageFont

    path = font_path(root)
    try:
        font = ImageFont.truetype(str(path), FONT_SIZE)
    except OSError as e:
        raise KuosanError(f"cannot load {path} at {FONT_SIZE} px ({e}); is it Noto Color Emoji?") from None
    pairs = _code_points(path)
    if not pairs:
        raise KuosanError(f"{path} has none of the emoji code points kuosan uses; is it Noto Color Emoji?")
    images = np.stack([render(cp, font) for cp, _ in pairs])
    labels = np.array([k for _, k in pairs], dtype=np.int64)
    cps = np.array([cp for cp, _ in pairs], dtype=np.int64)
    cache.parent.mkdir(parents=True, exist_ok=True)
    tmp = cache.with_name(f".{cache.stem}.{os.getpid()}.tmp.npz")
    np.savez_compressed(tmp, images=images, labels=labels, code_points=cps)
    os.replace(tmp, cache)
    return images, labels, cps


def read_noto(split: str, root: str | None = None):
    """The ``emoji:noto`` set's ``split`` as ``(images [N, 3, 64, 64], labels, class_names)``."""
    images, labels, _ = render_all(root)
    rank = np.zeros(len(labels), dtype=np.int64)        # position of each emoji within its class
    for k in np.unique(labels):
        members = np.flatnonzero(labels == k)
        rank[members] = np.arange(len(members))
    test = rank % 5 == 4
    keep = {"train": np.flatnonzero(~test), "test": np.flatnonzero(test),
            "all": np.concatenate([np.flatnonzero(~test), np.flatnonzero(test)])}[split]
    return (torch.from_numpy(np.ascontiguousarray(images[keep])), torch.from_numpy(labels[keep]),
            list(CLASS_NAMES))
