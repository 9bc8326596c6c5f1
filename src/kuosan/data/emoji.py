"""``emoji``: a labelled colour data set of 64x64 emoji in up to five art styles, from installed packages.

Sources (see :mod:`kuosan.data.emoji_sources` and ``docs/data-emoji.md``): the Twemoji and Noto images of
emoji-datasource 16.0.0, Microsoft's Fluent 3D (``@lobehub/fluent-emoji-3d`` 1.1.0), OpenMoji 17.0.0 and
EmojiOne 2 (Debian ``ruby-gemojione`` 3.3.0), each installed by ``scripts/install_emoji_data.sh``. The set
holds every style that is installed; ``emoji:<style>`` holds one (``twitter``, ``google``, ``fluent``,
``openmoji``, ``gemojione``), and ``emoji:noto`` is the older 730-image set rendered from the Noto font
(:mod:`kuosan.data.emoji_noto`). Specs: ``emoji[:STYLE][:SPLIT]``; ``emoji[:STYLE]:fine`` labels each training
emoji as its own class, by its name in emoji.json (see :data:`FINE`; training split only);
``emoji[:STYLE][:SPLIT]:sub`` labels each image by its emoji.json subcategory (see :data:`SUB`: 78 classes,
"animal-mammal", "sky & weather"), each of which lies in one of the classes below (:func:`groups_of`).

Classes, by meaning, from ``emoji.json``'s ``subcategory`` (its ``category`` in brackets):

    faces       [Smileys & Emotion] face-*, cat-face, monkey-face
    people      [People & Body] person*, family, body-parts, hand-*, hands
    animals     [Animals & Nature] animal-mammal, -bird, -marine, -bug, -reptile, -amphibian
    plants      [Animals & Nature] plant-flower, plant-other
    food        [Food & Drink] all seven subcategories (fruit ... dishware)
    landscapes  [Travel & Places] sky & weather, place-geographic, -building, -religious, -other, -map
    vehicles    [Travel & Places] transport-ground, -water, -air
    activities  [Activities] event, award-medal, sport, game, arts & crafts
    objects     [Objects] all, and [Travel & Places] hotel and time without the 24 clock faces

Dropped: flags, symbols, skin-tone components, hearts and ``emotion`` (symbols in all but name), the clock
faces. Variants are one emoji: skin tones are never used (only the base image), and man/woman/person,
boy/girl/child, the gender signs and the facing-right arrow fold into one key (:func:`group_key`), so
"woman cook" and "man cook" are the emoji "cook"; each style contributes one image per emoji (the
gender-neutral one where it has it), and an image identical to one already taken in that style is dropped.

Each image is cropped to its visible pixels (alpha > 8), centred on a white square, composited on white,
and resized (LANCZOS) into the middle 60x60 of a 64x64 RGB image. Split by emoji: an emoji is ``test``
when the first 32 bits of the SHA-256 of its key are 0 mod 5 (about 20%), so all its styles fall on one side
and the test set measures generalisation to unseen emoji. Labels: ``labels`` is the class, ``styles`` the
art style (an index into :data:`~kuosan.data.emoji_sources.STYLE_NAMES`, the same for every spec). Each
style's decoded array is cached in ``$KUOSAN_CACHE/data`` (default ``~/.cache/kuosan/data``) under a hash of
its files' names, sizes and modification times, ``emoji.json``'s, and the class mapping.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from kuosan.data import emoji_sources
from kuosan.data.dataset import ImageDataset
from kuosan.data.emoji_sources import BY_NAME, STYLE_NAMES, Style
from kuosan.errors import KuosanError, cache_root

RESOLUTION = 64
MARGIN = 2                    # white pixels kept round the emoji on each side
ALPHA_VISIBLE = 8             # alpha above this counts as drawn, for the crop
CACHE_VERSION = 1
TEST_EVERY = 5                # about 1 emoji in 5 is test
CLASSES = {
    "faces": ("face-smiling", "face-affection", "face-tongue", "face-hand", "face-neutral-skeptical",
              "face-sleepy", "face-unwell", "face-hat", "face-glasses", "face-concerned", "face-negative",
              "face-costume", "cat-face", "monkey-face"),
    "people": ("person", "person-gesture", "person-role", "person-fantasy", "person-activity", "person-sport",
               "person-resting", "family", "body-parts", "hand-fingers-open", "hand-fingers-partial",
               "hand-single-finger", "hand-fingers-closed", "hands", "hand-prop"),
    "animals": ("animal-mammal", "animal-bird", "animal-amphibian", "animal-reptile", "animal-marine", "animal-bug"),
    "plants": ("plant-flower", "plant-other"),
    "food": ("food-fruit", "food-vegetable", "food-prepared", "food-asian", "food-sweet", "drink", "dishware"),
    "landscapes": ("sky & weather", "place-geographic", "place-building", "place-religious", "place-other",
                   "place-map"),
    "vehicles": ("transport-ground", "transport-water", "transport-air"),
    "activities": ("event", "award-medal", "sport", "game", "arts & crafts"),
    "objects": ("clothing", "sound", "music", "musical-instrument", "phone", "computer", "light & video",
                "book-paper", "money", "mail", "writing", "office", "lock", "tool", "science", "medical",
                "household", "other-object", "hotel", "time"),
}
CLASS_NAMES = list(CLASSES)
FINE = "fine"   # emoji:fine: every training emoji is its own class, named by emoji.json ("dog face"), as
                # ImageNet's 1,000 classes are; its classes' groups are the classes above (groups_of)
SUBCATEGORIES = [sub for subs in CLASSES.values() for sub in subs]
SUB = "sub"     # emoji:sub: a class per subcategory above, in this order, in every split; a finer label than
                # the class for a model to condition on, coarser than FINE: "sky & weather" draws suns, moons
                # and clouds where "landscapes" mixes them with buildings and square scenes
LABELLINGS = ("", FINE, SUB)
DROPPED = ((0x1F550, 0x1F567),)                 # the clock faces: 24 near-duplicates
_FOLD = {"1F468": "1F9D1", "1F469": "1F9D1",   # man, woman -> person
         "1F466": "1F9D2", "1F467": "1F9D2"}   # boy, girl -> child
_JOINED_DROP = {"2640", "2642", "27A1"}         # ZWJ + female sign, male sign, rightwards arrow


@dataclass
class StyledImageDataset(ImageDataset):
    """An :class:`ImageDataset` with a second label: ``styles`` int64 ``[N]`` indexing ``style_names``."""

    styles: torch.Tensor = None
    style_names: list[str] = field(default_factory=lambda: list(STYLE_NAMES))

    def __post_init__(self):
        super().__post_init__()
        s = self.styles
        if s is None or s.dtype != torch.int64 or s.shape != self.labels.shape:
            raise ValueError(f"styles must be int64 [{len(self.labels)}]")
        if len(s) and (int(s.min()) < 0 or int(s.max()) >= len(self.style_names)):
            raise ValueError(f"styles must lie in [0, {len(self.style_names)})")

    def subset(self, idx) -> "StyledImageDataset":
        if not isinstance(idx, slice):
            idx = torch.as_tensor(idx)
            idx = idx if idx.dtype == torch.bool else idx.long()
        return StyledImageDataset(self.images[idx].contiguous(), self.labels[idx], self.class_names, self.name,
                                  self.styles[idx], self.style_names)


def with_styles(dataset: ImageDataset, styles: torch.Tensor) -> StyledImageDataset:
    """``dataset`` with its style labels attached."""
    return StyledImageDataset(dataset.images, dataset.labels, dataset.class_names, dataset.name, styles)


# --- which emoji, in which class -------------------------------------------------------------------

def group_key(unified: str) -> str:
    """An emoji's key with gender, age and direction variants folded: ``1F469-200D-1F373`` -> ``1F9D1-200D-1F373``."""
    parts, out, i = emoji_sources.seq_key(unified).split("-"), [], 0
    while i < len(parts):
        if parts[i] == "200D" and i + 1 < len(parts) and parts[i + 1] in _JOINED_DROP:
            i += 2
            continue
        out.append(_FOLD.get(parts[i], parts[i]))
        i += 1
    return "-".join(out)


def _dropped(key: str) -> bool:
    first = int(key.split("-")[0], 16)
    return any(lo <= first <= hi for lo, hi in DROPPED)


@dataclass(frozen=True)
class Emoji:
    """One emoji of the set: its key, class, and its members' join keys, the preferred (neutral) first."""

    key: str
    label: int
    members: tuple[str, ...]
    name: str = ""    # emoji.json's name of the preferred member, lower case: "dog face"
    sub: str = ""     # emoji.json's subcategory of the preferred member: "animal-mammal"


def read_catalogue(path: Path) -> list[Emoji]:
    """The emoji of ``emoji.json`` in the classes above, in class then ``sort_order`` order."""
    try:
        entries = json.loads(path.read_text(encoding="utf-8"))
        rows = [(e["unified"], e.get("subcategory"), int(e.get("sort_order", 0)), str(e.get("name") or e["unified"]))
                for e in entries]
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise KuosanError(f"{path} is not emoji-datasource's emoji.json ({e}); run "
                          f"`{emoji_sources.INSTALL}` again after deleting {path.parent}") from None
    label_of = {sub: k for k, subs in enumerate(CLASSES.values()) for sub in subs}
    groups: dict[tuple[int, str], list[tuple[bool, int, str, str]]] = {}
    for unified, sub, order, name in rows:
        if sub not in label_of:
            continue
        key, own = group_key(unified), emoji_sources.seq_key(unified)
        if not _dropped(key):
            groups.setdefault((label_of[sub], key), []).append((own != key, order, own, name.lower(), sub))
    ordered = sorted(groups.items(), key=lambda kv: (kv[0][0], min(m[1] for m in kv[1])))
    return [Emoji(key, label, tuple(m[2] for m in sorted(members)), min(members)[3], min(members)[4])
            for (label, key), members in ordered]


def is_test(key: str) -> bool:
    """The split of an emoji: a hash of its key, so every style of it lands on the same side."""
    return int(hashlib.sha256(key.encode()).hexdigest()[:8], 16) % TEST_EVERY == 0


# --- images ----------------------------------------------------------------------------------------

def compose(im) -> np.ndarray | None:
    """A PIL image (any mode, transparent or not) -> uint8 ``[3, 64, 64]`` on white; ``None`` if it is blank."""
    from PIL import Image

    im = im.convert("RGBA")
    box = im.getchannel("A").point(lambda a: 255 if a > ALPHA_VISIBLE else 0).getbbox()
    if box is None:
        return None
    im = im.crop(box)
    side = max(im.size)
    square = Image.new("RGBA", (side, side), (255, 255, 255, 255))
    square.alpha_composite(im, ((side - im.width) // 2, (side - im.height) // 2))
    inner = RESOLUTION - 2 * MARGIN
    out = Image.new("RGB", (RESOLUTION, RESOLUTION), (255, 255, 255))
    out.paste(square.convert("RGB").resize((inner, inner), Image.Resampling.LANCZOS), (MARGIN, MARGIN))
    return np.asarray(out, dtype=np.uint8).transpose(2, 0, 1)


def _open(path: Path):
    from PIL import Image

    try:
        im = Image.open(path)
        im.load()
        return im
    except (OSError, ValueError) as e:
        raise KuosanError(f"{path} is not a readable image ({e}); delete {path.parent} and run "
                          f"`{emoji_sources.INSTALL}` again") from None


def decode_style(style: Style, catalogue: list[Emoji], root: str | None = None):
    """``(images uint8 [n, 3, 64, 64], labels int64 [n], keys [n])`` of one style, in catalogue order."""
    files = emoji_sources.list_images(style, root)
    images, labels, keys, seen = [], [], [], set()
    for e in catalogue:
        path = next((files[m] for m in e.members if m in files), None)
        if path is None:
            continue
        x = compose(_open(path))
        digest = None if x is None else hashlib.sha256(x.tobytes()).digest()
        if x is None or digest in seen:              # blank, or the same picture as an emoji already taken
            continue
        seen.add(digest)
        images.append(x)
        labels.append(e.label)
        keys.append(e.key)
    if not images:
        raise KuosanError(f"none of the images in {files and next(iter(files.values())).parent} is an emoji of "
                          f"emoji.json's classes; is it {style.package}?")
    return np.stack(images), np.array(labels, dtype=np.int64), np.array(keys)


def _cache_file(style: Style, root: str | None) -> Path:
    key = [CACHE_VERSION, RESOLUTION, MARGIN, ALPHA_VISIBLE, emoji_sources.fingerprint(style, root),
           emoji_sources.catalogue_fingerprint(root), CLASSES, DROPPED]
    digest = hashlib.sha256(json.dumps(key).encode()).hexdigest()[:12]
    return cache_root("data", f"emoji-{style.name}-{RESOLUTION}px-{digest}.npz")


def load_style(style: Style, root: str | None = None):
    """:func:`decode_style`, from the cache when its files have not changed since."""
    cache = _cache_file(style, root)
    if cache.is_file():
        try:
            with np.load(cache, allow_pickle=False) as f:
                return f["images"], f["labels"], f["keys"]
        except (OSError, ValueError, KeyError):
            pass                                          # damaged: decode again
    images, labels, keys = decode_style(style, read_catalogue(emoji_sources.catalogue_file(root)), root)
    cache.parent.mkdir(parents=True, exist_ok=True)
    tmp = cache.with_name(f".{cache.stem}.{os.getpid()}.tmp.npz")
    np.savez_compressed(tmp, images=images, labels=labels, keys=keys)
    os.replace(tmp, cache)
    return images, labels, keys


# --- the data set ----------------------------------------------------------------------------------

def parse_style(suffix: str) -> tuple[str | None, str | None, str]:
    """``"twitter:test"`` -> ``("twitter", "test", "")``; ``"fine"`` -> ``(None, None, "fine")``; ``""`` ->
    ``(None, None, "")``. The third part, the labelling: ``""`` by class, :data:`FINE` by emoji, :data:`SUB` by
    subcategory."""
    style, split, labelling = None, None, ""
    for part in [p for p in suffix.lower().split(":") if p] if suffix else []:
        if part in STYLE_NAMES or part == "noto":
            if style:
                raise KuosanError(f"emoji:{suffix} names two styles; give one of {', '.join(STYLE_NAMES)}, noto")
            style = part
        elif part in ("train", "test", "all") and split is None:
            split = part
        elif part in (FINE, SUB) and not labelling:
            labelling = part
        elif part in (FINE, SUB):
            raise KuosanError(f"emoji:{suffix} names two labellings; give one of {FINE!r} (a class per emoji) and "
                              f"{SUB!r} (a class per subcategory)")
        else:
            raise KuosanError(f"emoji:{suffix}: {part!r} is neither a style ({', '.join(STYLE_NAMES)}, noto), "
                              f"a split (train, test, all), {FINE!r} (a class per emoji) nor {SUB!r} (a class per "
                              "subcategory)")
    if labelling and style == "noto":
        raise KuosanError(f"emoji:{suffix}: the noto set has only its 8 classes; drop {labelling!r} or the style")
    return style, split, labelling


def target_parts(rest: str) -> tuple[str | None, str]:
    """The part of a parsed target after ``emoji:`` -> ``(style or None, labelling)``: ``"twitter:fine"`` ->
    ``("twitter", "fine")``."""
    parts = [p for p in rest.split(":") if p]
    return next((p for p in parts if p not in LABELLINGS), None), next((p for p in parts if p in LABELLINGS), "")


def _styles_of(style: str | None, root: str | None) -> list[Style]:
    if style:
        return [BY_NAME[style]]
    emoji_sources.catalogue_file(root)                   # the one-line error when nothing is installed
    return emoji_sources.installed(root)


def fingerprint(style: str | None, root: str | None = None, labelling: str = "") -> list:
    """What ``emoji[:style][:labelling]`` depends on (for :func:`kuosan.data.dataset_fingerprint`)."""
    return [CACHE_VERSION, *([labelling] if labelling else []), emoji_sources.catalogue_fingerprint(root), CLASSES,
            DROPPED, [emoji_sources.fingerprint(s, root) for s in _styles_of(style, root)]]


def read_emoji(split: str, root: str | None = None, style: str | None = None, labelling: str = ""):
    """``(images [N, 3, 64, 64], labels, class_names, styles)`` of ``split``: train, then test for ``all``.

    ``style``: one style's name, or ``None`` for every installed one; ``root``: the sources' directory;
    ``labelling``: ``""`` a class per group of :data:`CLASSES`, :data:`FINE` a class per training emoji, named
    by emoji.json, :data:`SUB` a class per subcategory (:data:`SUBCATEGORIES`).
    """
    if labelling == FINE and split != "train":
        raise KuosanError(f"emoji:{FINE} has a class for each training emoji, so it has no {split} split (its test "
                          f"emoji are classes it never saw); use emoji:test, whose classes are the "
                          f"{len(CLASS_NAMES)} groups, to evaluate against")
    parts = [(s, *load_style(s, root)) for s in _styles_of(style, root)]
    images = np.concatenate([p[1] for p in parts])
    labels = np.concatenate([p[2] for p in parts])
    styles = np.concatenate([np.full(len(p[2]), STYLE_NAMES.index(p[0].name), dtype=np.int64) for p in parts])
    test = np.array([is_test(str(k)) for p in parts for k in p[3]], dtype=bool)
    train_rows, test_rows = np.flatnonzero(~test), np.flatnonzero(test)
    keep = {"train": train_rows, "test": test_rows, "all": np.concatenate([train_rows, test_rows])}[split]
    names = list(CLASS_NAMES)
    if labelling:
        keys = np.array([str(k) for p in parts for k in p[3]])[keep]
        catalogue = read_catalogue(emoji_sources.catalogue_file(root))
        if labelling == FINE:
            taken = set(keys.tolist())
            catalogue = [e for e in catalogue if e.key in taken]
            index, names = {e.key: i for i, e in enumerate(catalogue)}, fine_names(catalogue)
        else:
            index, names = {e.key: SUBCATEGORIES.index(e.sub) for e in catalogue}, list(SUBCATEGORIES)
        labels = labels.astype(np.int64)              # a copy; only the kept rows are relabelled
        labels[keep] = [index[k] for k in keys]
    return (torch.from_numpy(np.ascontiguousarray(images[keep])), torch.from_numpy(labels[keep]),
            names, torch.from_numpy(styles[keep]))


def fine_names(catalogue: list[Emoji]) -> list[str]:
    """The emoji's names, made unique (a repeated name gets its key in brackets)."""
    counts: dict[str, int] = {}
    for e in catalogue:
        counts[e.name] = counts.get(e.name, 0) + 1
    return [e.name if counts[e.name] == 1 else f"{e.name} ({e.key.lower()})" for e in catalogue]


def groups_of(class_names: list[str], root: str | None = None) -> list[int]:
    """For a model trained on ``emoji:fine`` or ``emoji:sub``: the group (index into :data:`CLASS_NAMES`) of each
    class name."""
    if list(class_names) == SUBCATEGORIES:
        label_of = {sub: k for k, subs in enumerate(CLASSES.values()) for sub in subs}
        return [label_of[n] for n in class_names]
    if list(class_names) == CLASS_NAMES:
        return list(range(len(CLASS_NAMES)))
    catalogue = read_catalogue(emoji_sources.catalogue_file(root))
    by_name = dict(zip(fine_names(catalogue), (e.label for e in catalogue)))
    by_name.update({e.name: e.label for e in catalogue if e.name not in by_name})
    missing = [n for n in class_names if n not in by_name]
    if missing:
        raise KuosanError(f"{missing[0]!r} is not an emoji of emoji.json's classes; was the model trained on "
                          f"emoji:{FINE}?")
    return [by_name[n] for n in class_names]


def subcategory_weights(root: str | None = None) -> dict[str, int]:
    """The number of training emoji in each of :data:`SUBCATEGORIES` (from emoji.json, whichever styles are
    installed). Read once per version of the file: a page asking for "animals" frame after frame does not
    parse 1.3 MB of JSON each time."""
    path = emoji_sources.catalogue_file(root)
    st = path.stat()
    return dict(_subcategory_weights(str(path), st.st_mtime_ns, st.st_size))


@functools.lru_cache(maxsize=4)
def _subcategory_weights(path: str, mtime_ns: int, size: int) -> tuple:
    counts = dict.fromkeys(SUBCATEGORIES, 0)
    for e in read_catalogue(Path(path)):
        counts[e.sub] += not is_test(e.key)
    return tuple(counts.items())


def labels_by_group(class_names: list[str], per_group: int, root: str | None = None) -> tuple[list[int], list[int]]:
    """``(labels, groups)``: ``per_group`` labels of a model trained on ``emoji``, ``emoji:sub`` or ``emoji:fine``
    for each class of :data:`CLASS_NAMES` in turn, and each label's group (see :func:`spread`; a subcategory
    weighs its training emoji, an emoji one)."""
    if list(class_names) == CLASS_NAMES:
        labels = [g for g in range(len(CLASS_NAMES)) for _ in range(per_group)]
        return labels, list(labels)
    groups = groups_of(class_names, root)
    if list(class_names) == SUBCATEGORIES:
        counts = subcategory_weights(root)
        weights = [counts[n] for n in class_names]
    else:
        weights = [1] * len(class_names)                 # a class per emoji: each the same
    return spread(groups, weights, per_group)


def spread(groups: list[int], weights: list[float], per_group: int) -> tuple[list[int], list[int]]:
    """``(labels, groups)``: ``per_group`` of the classes whose group (``groups[c]``) is each class of
    :data:`CLASS_NAMES` in turn (see :func:`spread_group`)."""
    labels, out = [], []
    for g in range(len(CLASS_NAMES)):
        labels += spread_group(g, groups, weights, per_group)
        out += [g] * per_group
    return labels, out


def spread_group(g: int, groups: list[int], weights: list[float], n: int) -> list[int]:
    """``n`` of the classes in group ``g`` (``groups[c] == g``) in proportion to ``weights`` (largest remainders;
    a class too small for its share gets none, one of weight 0 never), each class's slots spaced evenly along
    the run, so the first columns of a grid row already show different ones and class-balanced samples of the
    groups follow the training mix."""
    members = [c for c, cg in enumerate(groups) if cg == g and weights[c] > 0]
    if not members:
        raise KuosanError(f"the model has no class of the group {CLASS_NAMES[g]!r} with training images")
    total = sum(weights[c] for c in members)
    quota = {c: n * weights[c] / total for c in members}
    take = {c: int(q) for c, q in quota.items()}
    # the largest remainders; among equal ones (a class per emoji: every one) members spread over the group by
    # the golden-ratio sequence, not the first in catalogue order
    tie = {c: (i * 0.6180339887498949) % 1.0 for i, c in enumerate(members)}
    for c in sorted(members, key=lambda c: (round(take[c] - quota[c], 9), tie[c]))[:n - sum(take.values())]:
        take[c] += 1
    slots = sorted(((k + 0.5) / take[c], -weights[c], c) for c in members for k in range(take[c]))
    return [c for _, _, c in slots]


GROUP_PERIOD = 60   # a group name's labels repeat every this many seeds (see labels_for_group)


def labelling_of(spec) -> str | None:
    """The labelling of an ``emoji`` spec (``""``, :data:`FINE` or :data:`SUB`); None for any other spec, the
    noto set and a spec that does not parse."""
    name, _, rest = str(spec or "").strip().partition(":")
    if name.lower() != "emoji":
        return None
    try:
        style, _, labelling = parse_style(rest)
    except KuosanError:
        return None
    return None if style == "noto" else labelling


def has_groups(spec: str, class_names=None) -> bool:
    """Whether a model trained on ``spec`` (``emoji:sub``, ``emoji:fine``) takes :data:`CLASS_NAMES` as groups of
    its finer classes."""
    return bool(labelling_of(spec))


def labels_for_group(spec: str, class_names: list[str], name, seeds: list[int]) -> list[int] | None:
    """For a model trained on ``emoji:sub`` or ``emoji:fine`` (``spec``, its classes ``class_names``) asked for
    one of :data:`CLASS_NAMES` by name ("animals"): each seed's label among that class's subcategories (or
    emoji), drawn as :func:`labels_by_group` spreads a grid row, repeating every GROUP_PERIOD seeds, so
    consecutive seeds show the class's variety and a seed always gets the same label. None when ``name`` is not
    such a class or the model's classes are the groups themselves. Without the installed emoji.json the
    subcategories weigh the same."""
    if not isinstance(name, str) or not has_groups(spec, class_names):
        return None
    group = name.strip().lower()
    if group not in CLASS_NAMES or group in (n.lower() for n in class_names):
        return None
    if list(class_names) == SUBCATEGORIES:
        try:
            counts = subcategory_weights()
        except KuosanError:                               # emoji.json is not installed here: the same weight
            counts = dict.fromkeys(SUBCATEGORIES, 1)
        weights = [counts[n] for n in class_names]
    else:
        weights = [1] * len(class_names)
    run = spread_group(CLASS_NAMES.index(group), groups_of(class_names), weights, GROUP_PERIOD)
    return [run[int(s) % GROUP_PERIOD] for s in seeds]


def cycle_groups(class_names: list[str], n: int, root: str | None = None) -> tuple[list[int], list[int]]:
    """``(labels, groups)`` for ``n`` samples of a model trained on ``emoji``, ``emoji:sub`` or ``emoji:fine``:
    sample k of class k mod 9 (as a model's own classes cycle), its label drawn from that class's finer labels
    by :func:`labels_by_group`; ``groups`` the class of each, which a classifier of the 9 classes scores."""
    per = -(-n // len(CLASS_NAMES))
    labels, groups = labels_by_group(class_names, per, root)
    order = [(k % len(CLASS_NAMES)) * per + k // len(CLASS_NAMES) for k in range(n)]
    return [labels[i] for i in order], [groups[i] for i in order]
