"""The `emoji` data set on a small fixture of images and an emoji.json made here (the real packages are
used only by the slow test, where scripts/install_emoji_data.sh installed them)."""

import hashlib
import json
import os
import time

import numpy as np
import pytest
import torch
from PIL import Image

from kuosan.cli import main as cli_main
from kuosan.data import dataset_fingerprint, emoji, emoji_sources, load_dataset
from kuosan.errors import KuosanError

# unified, category, subcategory, sort order; skin tones live inside their base entry, as in emoji-datasource
ENTRIES = [
    ("1F600", "Smileys & Emotion", "face-smiling", 1),
    ("2764-FE0F", "Smileys & Emotion", "heart", 2),                      # dropped: a symbol
    ("1F44D", "People & Body", "hand-fingers-closed", 3),
    ("1F468-200D-1F373", "People & Body", "person-role", 4),             # man cook   } one emoji, "cook"
    ("1F469-200D-1F373", "People & Body", "person-role", 5),             # woman cook }
    ("1F9D1-200D-1F373", "People & Body", "person-role", 6),             # cook       }
    ("1F98A", "Animals & Nature", "animal-mammal", 7),
    ("1F355", "Food & Drink", "food-prepared", 8),                       # on the test side
    ("1F3D4-FE0F", "Travel & Places", "place-geographic", 9),
    ("1F550", "Travel & Places", "time", 10),                            # dropped: a clock face
    ("231A", "Travel & Places", "time", 11),                             # a watch: objects
    ("1F1EB-1F1F7", "Flags", "country-flag", 12),                        # dropped
    ("1F523", "Symbols", "alphanum", 13),                                # dropped
]
NAMES = {"1F600": "Grinning Face", "1F44D": "Thumbs Up Sign", "1F468-200D-1F373": "Man Cook",
         "1F469-200D-1F373": "Woman Cook", "1F9D1-200D-1F373": "Cook", "1F98A": "Fox Face", "1F355": "Slice of Pizza",
         "1F3D4-FE0F": "Snow Capped Mountain", "231A": "Watch"}
GOOGLE_LACKS = {"1F98A", "1F9D1-200D-1F373"}
FLUENT_HAS = {"1F600", "1F355", "1F3D4-FE0F"}


def _colour(unified: str, style: str) -> tuple[int, int, int]:
    """A colour of its own for each image, so a test can tell which file was read."""
    return tuple(hashlib.sha256(f"{unified} {style}".encode()).digest()[:3])


def _square(rgb, alpha=255, size=16, inner=10):
    """A transparent ``size`` image with an ``inner`` square of colour ``rgb`` at opacity ``alpha``."""
    im = Image.new("RGBA", (size, size), (0, 0, 0, 0))
    lo = (size - inner) // 2
    im.paste(Image.new("RGBA", (inner, inner), (*rgb, alpha)), (lo, lo))
    return im


def write_sources(base):
    """Three styles of the entries above; returns ``{(unified, style): colour}``."""
    colours = {}
    rows = []
    for unified, cat, sub, order in ENTRIES:
        name = unified.lower()
        row = {"unified": unified, "image": f"{name}.png", "category": cat, "subcategory": sub, "sort_order": order,
               "name": NAMES.get(unified)}
        if unified == "1F44D":
            row["skin_variations"] = {"1F3FB": {"unified": "1F44D-1F3FB", "image": "1f44d-1f3fb.png"}}
        rows.append(row)
    for style, folder, suffix, has in (
            ("twitter", "emoji-datasource-twitter-16.0.0/img/twitter/64", ".png", lambda u: True),
            ("google", "emoji-datasource-google-16.0.0/img/google/64", ".png", lambda u: u not in GOOGLE_LACKS),
            ("fluent", "fluent-emoji-3d-1.1.0/assets", ".webp", lambda u: u in FLUENT_HAS)):
        d = base / folder
        d.mkdir(parents=True)
        for unified in [e[0] for e in ENTRIES] + ["1F44D-1F3FB"]:
            if has(unified):
                colours[unified, style] = _colour(unified, style)
                _square(colours[unified, style]).save(d / f"{unified.lower()}{suffix}", lossless=True)
    for pkg in ("emoji-datasource-twitter-16.0.0", "emoji-datasource-google-16.0.0"):
        (base / pkg / "emoji.json").write_text(json.dumps(rows))
    return colours


@pytest.fixture
def sources(tmp_path, monkeypatch):
    monkeypatch.setenv("KUOSAN_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv(emoji_sources.SOURCES_ENV, str(tmp_path / "src"))
    return write_sources(tmp_path / "src")


def _centre(ds, i):
    return tuple(ds.images[i, :, 32, 32].tolist())


def test_classes_variants_and_styles(sources):
    ds = load_dataset("emoji:all")
    assert ds.images.shape[1:] == (3, 64, 64) and ds.images.dtype == torch.uint8
    assert ds.class_names == list(emoji.CLASSES) and ds.style_names == emoji_sources.STYLE_NAMES
    per_style = {s: sorted(ds.class_names[int(c)] for c in ds.labels[ds.styles == k])
                 for k, s in enumerate(ds.style_names)}
    # faces, people (thumbs up, cook), animals, food, landscapes, objects (the watch); no flag, heart, clock
    assert per_style["twitter"] == ["animals", "faces", "food", "landscapes", "objects", "people", "people"]
    assert per_style["google"] == ["faces", "food", "landscapes", "objects", "people", "people"]
    assert per_style["fluent"] == ["faces", "food", "landscapes"]
    assert len(ds) == 7 + 6 + 3
    centres = {_centre(ds, i) for i in range(len(ds))}
    assert sources["1F9D1-200D-1F373", "twitter"] in centres        # the neutral cook where the style has it,
    assert sources["1F468-200D-1F373", "google"] in centres         # else the first variant
    for dropped in ("1F469-200D-1F373", "1F44D-1F3FB", "1F1EB-1F1F7", "2764-FE0F", "1F550", "1F523"):
        assert not any(sources.get((dropped, s)) in centres for s in ("twitter", "google", "fluent"))


def test_transparency_is_composited_on_white(sources, tmp_path):
    folder = tmp_path / "src" / "emoji-datasource-twitter-16.0.0" / "img" / "twitter" / "64"
    _square((200, 0, 0), alpha=128, inner=16).save(folder / "1f600.png")   # half-transparent red, all over
    ds = load_dataset("emoji:twitter:all")
    face = ds.images[ds.labels == ds.class_names.index("faces")][0]
    assert (face[:, :2, :] == 255).all() and (face[:, :, -2:] == 255).all()   # the white margin
    assert (face[:, 4:60, 4:60].float().mean((1, 2)) - torch.tensor([227.5, 127.5, 127.5])).abs().max() < 1.5
    fox = ds.images[ds.labels == ds.class_names.index("animals")][0]
    assert tuple(fox[:, 0, 0].tolist()) == (255, 255, 255)                    # transparent corner -> white
    assert tuple(fox[:, 32, 32].tolist()) == sources["1F98A", "twitter"]      # opaque middle unchanged


def test_split_is_by_emoji(sources):
    train, test, every = (load_dataset("emoji", s) for s in ("train", "test", "all"))
    assert len(train) + len(test) == len(every) and len(test) > 0 and len(train) > 0
    pizza = sources["1F355", "twitter"], sources["1F355", "google"], sources["1F355", "fluent"]
    test_centres = [_centre(test, i) for i in range(len(test))]
    assert sorted(test_centres) == sorted(pizza)                           # every style of the pizza, only it
    assert all(emoji.is_test("1F355") != emoji.is_test(k) for k in ("1F600", "1F98A", "231A"))
    assert torch.equal(every.images, torch.cat([train.images, test.images]))
    assert torch.equal(every.styles, torch.cat([train.styles, test.styles]))


def test_one_style_keeps_the_style_index(sources):
    fluent = load_dataset("emoji:fluent:all")
    assert len(fluent) == 3 and fluent.styles.tolist() == [emoji_sources.STYLE_NAMES.index("fluent")] * 3
    assert fluent.class_names == list(emoji.CLASSES)
    few = load_dataset("emoji:all", max_images=4)
    assert len(few) == 4 and few.styles.shape == (4,)
    part = few.subset([0, 2])
    assert torch.equal(part.styles, few.styles[[0, 2]]) and part.style_names == few.style_names


def test_fine_labels_name_each_training_emoji(sources):
    train, fine = load_dataset("emoji"), load_dataset("emoji:fine")
    # catalogue order (class, then emoji.json's order); the pizza is a test emoji, so it is no class; the cook's
    # name is the neutral one's, though google draws the man cook
    assert fine.class_names == ["grinning face", "thumbs up sign", "cook", "fox face", "snow capped mountain", "watch"]
    assert torch.equal(fine.images, train.images) and torch.equal(fine.styles, train.styles)
    groups = emoji.groups_of(fine.class_names)
    assert [train.class_names[g] for g in groups] == ["faces", "people", "people", "animals", "landscapes", "objects"]
    assert [groups[int(c)] for c in fine.labels] == train.labels.tolist()
    assert len(set(fine.labels.tolist())) == len(fine.class_names)             # every class has an image
    assert load_dataset("emoji:google:fine").class_names == ["grinning face", "thumbs up sign", "cook",
                                                              "snow capped mountain", "watch"]
    assert dataset_fingerprint("emoji:fine") != dataset_fingerprint("emoji")
    for spec in ("emoji:fine:test", "emoji:fine:all"):
        with pytest.raises(KuosanError, match="emoji:test") as e:
            load_dataset(spec)
        assert "\n" not in str(e.value)
    with pytest.raises(KuosanError, match="noto"):
        load_dataset("emoji:noto:fine")
    with pytest.raises(KuosanError, match="not an emoji"):
        emoji.groups_of(["grinning face", "no such emoji"])


def test_sub_labels_are_subcategories_in_every_split(sources):
    every, sub = load_dataset("emoji:all"), load_dataset("emoji:all:sub")
    assert sub.class_names == emoji.SUBCATEGORIES and len(sub.class_names) == 78
    assert torch.equal(sub.images, every.images) and torch.equal(sub.styles, every.styles)
    named = sorted({sub.class_names[int(c)] for c in sub.labels})
    assert named == ["animal-mammal", "face-smiling", "food-prepared", "hand-fingers-closed", "person-role",
                     "place-geographic", "time"]
    groups = emoji.groups_of(sub.class_names)
    assert [groups[int(c)] for c in sub.labels] == every.labels.tolist()    # each subcategory inside its class
    test = load_dataset("emoji:sub:test")                                   # the pizza: a class the model knows
    assert test.class_names == emoji.SUBCATEGORIES and {int(c) for c in test.labels} == {
        emoji.SUBCATEGORIES.index("food-prepared")}
    assert len({dataset_fingerprint(s) for s in ("emoji", "emoji:sub", "emoji:fine")}) == 3
    with pytest.raises(KuosanError, match="noto"):
        load_dataset("emoji:noto:sub")
    with pytest.raises(KuosanError, match="two labellings"):
        load_dataset("emoji:sub:fine")                                      # one labelling at a time


def test_labels_by_group_spread_a_class_over_its_finer_labels(sources):
    labels, groups = emoji.labels_by_group(emoji.CLASS_NAMES, 2)           # the 9 classes: each its own label
    assert labels == groups == [g for g in range(9) for _ in range(2)]
    weights = emoji.subcategory_weights()                                   # training emoji: the pizza is test
    assert {k: v for k, v in weights.items() if v} == dict.fromkeys(
        ["face-smiling", "person-role", "hand-fingers-closed", "animal-mammal", "place-geographic", "time"], 1)
    with pytest.raises(KuosanError, match="plants"):                        # the fixture has no plant
        emoji.labels_by_group(emoji.SUBCATEGORIES, 4)
    # in proportion, largest remainders, spaced along the run; weight 0 never drawn
    groups = [0, 0, 0, 1, 2, 3, 4, 5, 6, 7, 8]
    labels, out = emoji.spread(groups, [3, 1, 0, 1, 1, 1, 1, 1, 1, 1, 1], 4)
    assert out == [g for g in range(9) for _ in range(4)]
    assert labels[:4] == [0, 0, 1, 0] and labels[4:8] == [3] * 4
    labels, _ = emoji.spread(groups, [1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1], 4)
    assert sorted(labels[:4]) == [0, 0, 1, 2]                               # the remainder to the first
    labels, _ = emoji.spread(groups, [1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1], 2)
    assert labels[:2] == [0, 2]                                             # ties: spread across the group
    # equal weights (a class per emoji): the slots go to members across the group, not the first in order
    many = emoji.spread_group(0, [0] * 40, [1] * 40, 5)
    assert len(set(many)) == 5 and max(many) - min(many) > 20
    # cycling: sample k of class k mod 9, as a model's own classes cycle
    labels, groups = emoji.cycle_groups(emoji.CLASS_NAMES, 20)
    assert labels == groups == [k % 9 for k in range(20)]


def test_subcategory_weights_are_read_once_per_version_of_emoji_json(sources, monkeypatch):
    import os

    first = emoji.subcategory_weights()
    reads = []
    real = emoji.read_catalogue
    monkeypatch.setattr(emoji, "read_catalogue", lambda *a, **k: reads.append(1) or real(*a, **k))
    assert emoji.subcategory_weights() == first and not reads               # the same file: not parsed again
    path = emoji_sources.catalogue_file()
    st = path.stat()
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))             # the file changed: read again
    assert emoji.subcategory_weights() == first and len(reads) == 1
    first["time"] = 99                                                      # the caller's copy, not the cache's
    assert emoji.subcategory_weights()["time"] == 1


def _stub_pipeline(dataset: str, class_names: list[str]):
    """A Pipeline with only what naming a class reads: its data set and classes (no network)."""
    from kuosan.pipeline import Pipeline

    class Stub(Pipeline):
        def __init__(self):  # noqa: D107 -- nothing loaded
            pass

    Stub.dataset, Stub.class_names, Stub.num_classes = dataset, list(class_names), len(class_names)
    return Stub()


def test_one_class_doors_take_a_group_name_seed_by_seed(monkeypatch):
    """Pipeline.class_for, which kuosan edit and the page use: a group's name gives the label labels_for gives
    that seed (here without the installed sources: every subcategory weighs the same)."""
    monkeypatch.setenv(emoji_sources.SOURCES_ENV, "/nonexistent")
    subs = emoji.SUBCATEGORIES
    pipe = _stub_pipeline("emoji:sub", subs)
    animals = pipe.labels_for(list(range(12)), "animals")
    assert [pipe.class_for(" Animals", s) for s in range(12)] == animals
    assert {subs[c] for c in animals} == set(emoji.CLASSES["animals"])
    assert pipe.class_for("animal-bird", 7) == subs.index("animal-bird") and pipe.class_for("3") == 3
    assert pipe.groups == emoji.CLASS_NAMES
    with pytest.raises(KuosanError, match="unknown class 'unicorns'.*or one of the classes they fall in: faces"):
        pipe.class_for("unicorns")
    with pytest.raises(KuosanError) as e:                                  # not a name: no list of groups
        pipe.class_for("99")
    assert "out of range" in str(e.value) and "fall in" not in str(e.value)
    with pytest.raises(KuosanError, match="an index or a name"):
        pipe.class_for([1, 2])
    plain = _stub_pipeline("emoji", emoji.CLASS_NAMES)                     # the 9 classes: their own names
    assert plain.groups == [] and plain.class_for("animals", 5) == 2
    unconditional = _stub_pipeline("emoji:sub", [])
    assert unconditional.groups == []
    with pytest.raises(KuosanError) as e:
        unconditional.class_for("animals")
    assert str(e.value) == "this model is unconditional: it takes no class"
    other = _stub_pipeline("fashion-mnist", ["shirt", "animals"])
    assert other.groups == [] and other.class_for("Animals") == 1


def test_which_specs_have_groups():
    for spec in ("emoji:sub", "emoji:twitter:sub:test", "emoji:fine", "EMOJI:SUB"):
        assert emoji.has_groups(spec), spec
    for spec in ("emoji", "emoji:test", "emoji:noto", "emoji:test:noto", "emoji_art/", "emojis.npz", "folder:emoji",
                 "fashion-mnist", "", None, "emoji:sub:fine"):
        assert not emoji.has_groups(spec), spec
    with pytest.raises(KuosanError, match="two labellings"):
        emoji.parse_style("sub:fine")


def test_a_class_name_draws_its_subcategories(sources, monkeypatch):
    subs = emoji.SUBCATEGORIES
    ask = lambda name, seeds, spec="emoji:sub", names=subs: emoji.labels_for_group(spec, names, name, seeds)  # noqa: E731
    assert ask("People", [0, 1, 2, 3]) == [subs.index("person-role"), subs.index("hand-fingers-closed")] * 2
    assert ask("people", [61]) == ask("people", [1])                       # repeats every GROUP_PERIOD seeds
    assert ask("animal-mammal", [0]) is None and ask(3, [0]) is None       # a class of the model, an index
    assert ask("faces", [0], names=emoji.CLASS_NAMES) is None              # the model's own classes
    assert ask("faces", [0], spec="folder:x") is None
    with pytest.raises(KuosanError, match="plants"):                       # no plant has a training emoji here
        ask("plants", [0])
    monkeypatch.setenv(emoji_sources.SOURCES_ENV, "/nonexistent")          # a model on a machine without the
    assert len({emoji.SUBCATEGORIES[c] for c in ask("plants", range(4))}) == 2  # sources: the same weights


def test_cache_is_used_and_invalidated_when_a_source_changes(sources, tmp_path, monkeypatch):
    first = load_dataset("emoji:twitter:all")
    fp = dataset_fingerprint("emoji:twitter:all")
    calls = []
    real = emoji.decode_style
    monkeypatch.setattr(emoji, "decode_style", lambda *a, **k: calls.append(1) or real(*a, **k))
    assert torch.equal(load_dataset("emoji:twitter:all").images, first.images) and not calls   # from the cache
    png = tmp_path / "src" / "emoji-datasource-twitter-16.0.0" / "img" / "twitter" / "64" / "1f98a.png"
    _square((1, 2, 3), inner=12).save(png)
    os.utime(png, ns=(time.time_ns(), time.time_ns() + 10**9))
    again = load_dataset("emoji:twitter:all")
    assert calls == [1] and dataset_fingerprint("emoji:twitter:all") != fp
    assert (1, 2, 3) in {_centre(again, i) for i in range(len(again))}
    (tmp_path / "src" / "emoji-datasource-twitter-16.0.0" / "emoji.json").touch()
    os.utime(tmp_path / "src" / "emoji-datasource-twitter-16.0.0" / "emoji.json", ns=(1, 1))
    load_dataset("emoji:twitter:all")
    assert calls == [1, 1]                                                # emoji.json changed too


def test_missing_sources_give_one_line(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("KUOSAN_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv(emoji_sources.SOURCES_ENV, str(tmp_path / "nothing"))
    with pytest.raises(KuosanError, match="install_emoji_data.sh") as e:
        load_dataset("emoji")
    assert "\n" not in str(e.value)
    with pytest.raises(KuosanError, match="fluent-emoji-3d@1.1.0.*install_emoji_data.sh"):
        load_dataset("emoji:fluent")
    assert cli_main(["data", "emoji:gemojione"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "ruby-gemojione" in err and "Traceback" not in err
    with pytest.raises(KuosanError, match="neither a style"):
        load_dataset("emoji:bogus")


def test_noto_spec_reaches_the_font_set(monkeypatch):
    from kuosan.data import sources
    from kuosan.data.sources import parse_spec

    assert parse_spec("emoji:noto:test").target == "emoji:noto" and parse_spec("emoji:noto:test").split == "test"
    assert parse_spec("emoji:test").target == "emoji" and parse_spec("emoji:google").split == "train"
    fake = torch.zeros(2, 3, 64, 64, dtype=torch.uint8), torch.tensor([0, 1]), ["faces", "people"]
    monkeypatch.setitem(sources._READERS, "emoji:noto", lambda split, root=None: fake)
    ds = load_dataset("emoji:noto")
    assert len(ds) == 2 and not hasattr(ds, "styles") and ds.name == "emoji:noto:train"


def _installed():
    try:
        emoji_sources.catalogue_file()
    except KuosanError:
        return False
    return True


@pytest.mark.slow
@pytest.mark.skipif(not _installed(), reason="emoji sources not installed (bash scripts/install_emoji_data.sh)")
def test_the_installed_set_is_large_and_labelled():
    ds = load_dataset("emoji:all")
    counts = np.bincount(ds.labels.numpy(), minlength=ds.num_classes)
    assert ds.images.shape[1:] == (3, 64, 64) and (counts > 0).sum() >= 6
    if len(emoji_sources.installed()) == len(emoji_sources.STYLES):
        assert len(ds) >= 5000
    test = load_dataset("emoji:test")
    assert 0.1 < len(test) / len(ds) < 0.3
