"""kuosan.data: built-in sets, scalings, image folders, .npz files, fingerprints (bad files: test_data_bad_files)."""

import gzip
import hashlib
import logging
import struct

import numpy as np
import pytest
import torch
from PIL import Image

from kuosan.data import ImageDataset, dataset_fingerprint, load_dataset, to_model_range, to_uint8
from kuosan.data.builtin import _digits_arrays, fashion_mnist_dir, find_idx_file
from kuosan.data.dataset import take_stratified
from kuosan.data.transforms import convert_channels
from kuosan.errors import KuosanError


def _has_fashion_mnist():
    d = fashion_mnist_dir()
    return all(find_idx_file(d, s) for s in ("train-images-idx3-ubyte", "train-labels-idx1-ubyte",
                                              "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"))


needs_fashion = pytest.mark.skipif(not _has_fashion_mnist(),
                                   reason="Fashion-MNIST IDX files absent (apt-get install dataset-fashion-mnist)")


def _image_hashes(ds):
    return {hashlib.sha1(x.numpy().tobytes()).hexdigest() for x in ds.images}


# --- built-in sets --------------------------------------------------------------------------------

@needs_fashion
def test_fashion_mnist_splits():
    test = load_dataset("fashion-mnist:test")
    assert test.images.shape == (10000, 1, 28, 28) and test.images.dtype == torch.uint8
    assert test.labels.dtype == torch.int64 and test.labels.bincount().tolist() == [1000] * 10
    assert test.class_names[0] == "T-shirt/top" and test.class_names[9] == "Ankle boot"
    assert test.name == "fashion-mnist:test" and test.resolution == 28 and test.channels == 1
    assert test.images.is_contiguous() and 0 < test.images.float().mean() < 255
    train = load_dataset("fashion-mnist", split="train", max_images=1000)
    assert len(train) == 1000 and train.labels.bincount().tolist() == [100] * 10


@needs_fashion
def test_fashion_mnist_full_train_counts():
    train = load_dataset("fashion-mnist")
    assert train.images.shape == (60000, 1, 28, 28)
    assert train.labels.bincount().tolist() == [6000] * 10


def _write_idx(path, array, compress):
    header = struct.pack(">BBBB", 0, 0, 8, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    data = header + array.astype(np.uint8).tobytes()
    path.write_bytes(gzip.compress(data) if compress else data)


@pytest.mark.parametrize("compress", [True, False])
def test_idx_reader_on_synthetic_files(tmp_path, compress):
    rng = np.random.default_rng(1)
    written = {}
    for prefix, n in (("train", 30), ("t10k", 20)):
        written[prefix] = rng.integers(0, 256, (n, 28, 28)).astype(np.uint8)
        _write_idx(tmp_path / f"{prefix}-images-idx3-ubyte{'.gz' if compress else ''}", written[prefix], compress)
        _write_idx(tmp_path / f"{prefix}-labels-idx1-ubyte{'.gz' if compress else ''}", np.arange(n) % 10, compress)
    ds = load_dataset("fashion-mnist:test", root=str(tmp_path))
    assert ds.images.shape == (20, 1, 28, 28) and ds.labels.tolist() == [i % 10 for i in range(20)]
    assert np.array_equal(ds.images[:, 0].numpy(), written["t10k"])
    assert np.array_equal(load_dataset("fashion-mnist", root=str(tmp_path)).images[:, 0].numpy(), written["train"])
    assert len(load_dataset("fashion-mnist:all", root=str(tmp_path))) == 50


def test_idx_reader_errors(tmp_path):
    with pytest.raises(KuosanError, match="apt-get install dataset-fashion-mnist"):
        load_dataset("fashion-mnist", root=str(tmp_path))
    _write_idx(tmp_path / "train-labels-idx1-ubyte", np.zeros(10), compress=False)
    _write_idx(tmp_path / "train-images-idx3-ubyte", np.zeros((10, 28, 28)), compress=False)
    (tmp_path / "train-images-idx3-ubyte").write_bytes((tmp_path / "train-images-idx3-ubyte").read_bytes()[:-5])
    with pytest.raises(KuosanError, match="truncated"):
        load_dataset("fashion-mnist", root=str(tmp_path))


def test_fashion_mnist_env_var(tmp_path, monkeypatch):
    monkeypatch.setenv("KUOSAN_FASHION_MNIST", str(tmp_path / "nowhere"))
    with pytest.raises(KuosanError, match="nowhere"):
        load_dataset("fashion-mnist")


def test_mnist_subset_split():
    train, test = load_dataset("mnist"), load_dataset("mnist:test")
    assert train.images.shape == (4500, 1, 28, 28) and test.images.shape == (500, 1, 28, 28)
    assert train.labels.bincount().tolist() == [450] * 10 and test.labels.bincount().tolist() == [50] * 10
    assert _image_hashes(train).isdisjoint(_image_hashes(test))
    everything = load_dataset("mnist", split="all")
    assert len(everything) == 5000 and _image_hashes(everything) == _image_hashes(train) | _image_hashes(test)
    assert train.images.max() == 255 and train.images.float().mean() < 80  # white digits on black


def test_digits():
    train, test = load_dataset("digits"), load_dataset("digits:test")
    assert train.images.shape == (1438, 1, 8, 8) and test.images.shape == (359, 1, 8, 8)
    assert train.images.max() == 255 and train.images.min() == 0
    everything = load_dataset("digits:all")
    assert torch.equal(everything.images, torch.cat([train.images, test.images]))
    pixels, labels = _digits_arrays()                            # test = every 5th image of the file
    assert test.labels.tolist() == labels[4::5].tolist()
    assert np.array_equal(test.images.numpy().reshape(-1, 64), np.round(pixels[4::5] * 255 / 16))
    big = load_dataset("digits:test", resolution=16, channels=3, max_images=50)
    assert big.images.shape == (50, 3, 16, 16)
    assert torch.equal(big.images[:, 0], big.images[:, 1]) and torch.equal(big.images[:, 0], big.images[:, 2])


def test_max_images_is_stratified_and_deterministic():
    labels = np.repeat(np.arange(4), [100, 50, 30, 20])
    a, b = take_stratified(labels, 40), take_stratified(labels, 40)
    assert np.array_equal(a, b) and np.all(np.diff(a) > 0)
    assert np.bincount(labels[a]).tolist() == [20, 10, 6, 4]
    assert len(take_stratified(labels, 1000)) == 200
    first = load_dataset("mnist:test", max_images=30)
    assert torch.equal(first.images, load_dataset("mnist:test", max_images=30).images)
    assert first.labels.bincount().tolist() == [3] * 10


def test_bad_options_and_specs(tmp_path):
    for kwargs, match in (({"resolution": 0}, "resolution"), ({"channels": 4}, "channels"),
                          ({"max_images": 0}, "max_images"), ({"split": "val"}, "unknown split")):
        with pytest.raises(KuosanError, match=match):
            load_dataset("digits", **kwargs)
    with pytest.raises(KuosanError, match="given once|give it once"):
        load_dataset("digits:test", split="train")
    with pytest.raises(KuosanError, match="unknown data set"):
        load_dataset("imagenet")
    for empty in ("", "  ", "folder:", "folder: "):  # not the current folder, silently
        with pytest.raises(KuosanError, match="is empty; give fashion-mnist"):
            load_dataset(empty, root=str(tmp_path))
    with pytest.raises(KuosanError, match="does not apply"):
        load_dataset("digits", root=str(tmp_path))


# --- scaling, the dataclass, channels -------------------------------------------------------------

def test_model_range_round_trip():
    x = torch.arange(256, dtype=torch.uint8).reshape(1, 1, 16, 16)
    y = to_model_range(x)
    assert y.dtype == torch.float32 and y.min() == -1 and y.max() == 1
    assert torch.equal(to_uint8(y), x)
    assert torch.equal(to_uint8(y + 0.003), x)  # rounding, not truncation (half a level is 0.0039)
    assert to_uint8(torch.tensor([-3.0, 3.0])).tolist() == [0, 255]


def test_dataset_checks_and_subset():
    images = torch.zeros(6, 3, 4, 4, dtype=torch.uint8)
    ds = ImageDataset(images, torch.tensor([0, 1, 2, 0, 1, 2]), ["a", "b", "c"], "toy")
    assert (len(ds), ds.num_classes, ds.resolution, ds.channels) == (6, 3, 4, 3)
    sub = ds.subset([0, 3])
    assert len(sub) == 2 and sub.labels.tolist() == [0, 0] and sub.class_names == ds.class_names
    assert len(ds.subset(ds.labels == 2)) == 2 and len(ds.subset(slice(1, 3))) == 2
    with pytest.raises(ValueError):
        ImageDataset(images.float(), ds.labels, ds.class_names, "bad")
    with pytest.raises(ValueError):
        ImageDataset(images, torch.tensor([0, 1, 2, 0, 1, 3]), ds.class_names, "bad")


def test_channel_conversion_matches_pillow():
    rgb = torch.randint(0, 256, (2, 3, 5, 5), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    grey = convert_channels(rgb, 1)
    pil = np.asarray(Image.fromarray(rgb[0].permute(1, 2, 0).numpy(), "RGB").convert("L"))
    assert np.array_equal(grey[0, 0].numpy(), pil)
    assert torch.equal(convert_channels(grey, 3), grey.repeat(1, 3, 1, 1))


# --- .npz -----------------------------------------------------------------------------------------

def test_npz_round_trip(tmp_path):
    rng = np.random.default_rng(0)
    nhwc = rng.integers(0, 256, (12, 16, 16, 3), dtype=np.uint8)
    labels = np.arange(12) % 4
    np.savez(tmp_path / "samples.npz", images=nhwc, labels=labels)
    ds = load_dataset(str(tmp_path / "samples.npz"))
    assert torch.equal(ds.images, torch.from_numpy(nhwc).permute(0, 3, 1, 2))
    assert ds.labels.tolist() == labels.tolist() and ds.num_classes == 4
    np.savez(tmp_path / "nchw.npz", images=nhwc.transpose(0, 3, 1, 2))
    plain = load_dataset("nchw.npz", root=str(tmp_path), channels=1, resolution=8)
    assert plain.images.shape == (12, 1, 8, 8) and plain.class_names == ["nchw"] and plain.labels.sum() == 0


def test_npz_errors(tmp_path):
    np.savez(tmp_path / "float.npz", images=np.zeros((2, 8, 8, 3), np.float32))
    np.savez(tmp_path / "nokey.npz", x=np.zeros((2, 8, 8, 3), np.uint8))
    (tmp_path / "junk.npz").write_bytes(b"not a zip")
    for name, match in (("float.npz", "uint8"), ("nokey.npz", "no 'images'"), ("junk.npz", "not a readable"),
                        ("missing.npz", "not found")):
        with pytest.raises(KuosanError, match=match):
            load_dataset(str(tmp_path / name))
    with pytest.raises(KuosanError, match="one split"):
        load_dataset(str(tmp_path / "float.npz"), split="test")


# --- image folders (good files) -------------------------------------------------------------------

def _stripes(w, h):
    """Red | green | blue thirds: a centre crop of a wide image is green."""
    a = np.zeros((h, w, 3), np.uint8)
    a[:, : w // 3, 0], a[:, w // 3: 2 * w // 3, 1], a[:, 2 * w // 3:, 2] = 255, 255, 255
    return a


@pytest.fixture
def image_folder(tmp_path):
    """Three classes in every format the loader promises to convert; 24x24 images unless said otherwise."""
    root = tmp_path / "pics"
    for c in ("cat", "dog", "emu"):
        (root / c).mkdir(parents=True)
    rng = np.random.default_rng(0)
    rgb = lambda: rng.integers(0, 256, (24, 24, 3), dtype=np.uint8)  # noqa: E731
    Image.fromarray(rgb()).save(root / "cat/a.png")
    Image.fromarray(rgb()).save(root / "cat/b.jpg", quality=95)
    Image.fromarray(rgb()).save(root / "cat/c.webp")
    Image.fromarray(rgb()).save(root / "cat/d.bmp")
    Image.fromarray(_stripes(72, 24)).save(root / "cat/wide.png")
    rgba = np.zeros((24, 24, 4), np.uint8)                     # fully transparent -> white
    Image.fromarray(rgba, "RGBA").save(root / "dog/rgba.png")
    pal = Image.new("P", (24, 24), 1)
    pal.putpalette([0, 0, 0, 10, 200, 30] + [0] * 762)
    pal.save(root / "dog/palette.png")
    Image.fromarray(np.full((24, 24), 128 * 257, np.uint16)).save(root / "dog/sixteen.png")  # -> 128
    Image.new("CMYK", (24, 24), (0, 255, 255, 0)).save(root / "emu/cmyk.jpg", quality=95)    # -> red
    Image.new("L", (24, 24), 77).save(root / "emu/grey.png")
    frames = [Image.new("RGB", (24, 24), (0, 0, 255)), Image.new("RGB", (24, 24), (255, 0, 0))]
    frames[0].save(root / "emu/anim.gif", save_all=True, append_images=frames[1:], duration=100)
    (root / "emu" / "nested").mkdir()
    Image.new("RGB", (30, 24), (9, 9, 9)).save(root / "emu/nested/deep.tiff")
    (root / ".DS_Store").write_bytes(b"\0\1junk")
    (root / "cat" / ".hidden.png").write_bytes(b"junk")
    (root / "emu" / "notes.txt").write_text("not an image, wrong extension")
    return root


def _pixel(ds, name):
    path_order = sorted(p for p in ["cat/a.png", "cat/b.jpg", "cat/c.webp", "cat/d.bmp", "cat/wide.png",
                                    "dog/palette.png", "dog/rgba.png", "dog/sixteen.png", "emu/anim.gif",
                                    "emu/cmyk.jpg", "emu/grey.png", "emu/nested/deep.tiff"])
    return ds.images[path_order.index(name)].float().mean((1, 2)).round().tolist()


def test_image_folder_loads_every_format(image_folder, caplog):
    with caplog.at_level(logging.INFO, logger="kuosan.data"):
        ds = load_dataset(str(image_folder), resolution=16)
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING], caplog.text
    assert "loaded 12 images in 3 classes" in caplog.text and "ignored 1 files" in caplog.text
    assert ds.class_names == ["cat", "dog", "emu"] and ds.labels.bincount().tolist() == [5, 3, 4]
    assert ds.images.shape == (12, 3, 16, 16) and ds.images.dtype == torch.uint8
    assert _pixel(ds, "dog/rgba.png") == [255, 255, 255]
    assert _pixel(ds, "dog/palette.png") == [10, 200, 30]
    assert _pixel(ds, "dog/sixteen.png") == [128, 128, 128]
    red, green, blue = _pixel(ds, "emu/cmyk.jpg")
    assert red > 240 and green < 15 and blue < 15
    assert _pixel(ds, "emu/anim.gif") == [0, 0, 255]               # first frame
    red, green, blue = _pixel(ds, "cat/wide.png")                  # centre crop of red|green|blue
    assert green > 245 and red < 10 and blue < 10
    assert _pixel(ds, "emu/grey.png") == [77, 77, 77]


def test_image_folder_defaults_and_grey(image_folder):
    ds = load_dataset(f"folder:{image_folder}")
    assert ds.resolution == 24 and ds.channels == 3 and ds.name.endswith(":train")
    grey = load_dataset(str(image_folder), channels=1, resolution=8, max_images=6)
    assert grey.images.shape == (6, 1, 8, 8) and grey.labels.bincount().tolist() == [2, 2, 2]
    with pytest.raises(KuosanError, match="no test/ subfolder"):
        load_dataset(str(image_folder), split="test")


def test_image_folder_single_class_and_split_layout(tmp_path):
    for sub, cls, n in (("train", "a", 3), ("train", "b", 2), ("test", "b", 2), ("test", "c", 1)):
        (tmp_path / sub / cls).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            Image.new("RGB", (16, 16), (i * 40, 0, 0)).save(tmp_path / sub / cls / f"{i}.png")
    train, test = load_dataset(str(tmp_path)), load_dataset(f"{tmp_path}:test")
    assert train.class_names == test.class_names == ["a", "b", "c"]  # labels agree across splits
    assert train.labels.tolist() == [0, 0, 0, 1, 1] and test.labels.tolist() == [1, 1, 2]
    assert len(load_dataset(str(tmp_path), split="all")) == 8
    single = load_dataset(str(tmp_path / "train" / "a"))
    assert single.class_names == ["a"] and len(single) == 3


# --- fingerprints ---------------------------------------------------------------------------------

def test_fingerprint_stable_and_discriminating(image_folder, tmp_path):
    f = dataset_fingerprint("mnist", "test")
    assert f == dataset_fingerprint("mnist:test") and f.startswith("mnist-test-28px-1ch-")
    others = {dataset_fingerprint("mnist"), dataset_fingerprint("mnist:test", resolution=32),
              dataset_fingerprint("mnist:test", channels=3), dataset_fingerprint("mnist:test", max_images=10),
              dataset_fingerprint("digits:test")}
    assert f not in others and len(others) == 5
    assert dataset_fingerprint("mnist:test", resolution=28) == f   # defaults resolve to the same key
    folder = dataset_fingerprint(str(image_folder))
    assert folder == dataset_fingerprint(str(image_folder)) and "-24px-3ch-" in folder
    Image.new("RGB", (24, 24)).save(image_folder / "cat" / "new.png")
    assert dataset_fingerprint(str(image_folder)) != folder
    np.savez(tmp_path / "s.npz", images=np.zeros((4, 8, 8, 3), np.uint8))
    assert dataset_fingerprint(str(tmp_path / "s.npz")).startswith("s.npz-all-8px-3ch-")
