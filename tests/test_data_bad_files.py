"""Image folders never die on one bad file: each is skipped with one log line and counted in the summary."""

import logging
import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from kuosan.data import folder, load_dataset
from kuosan.data.folder import load_image_folder
from kuosan.errors import KuosanError


def _png_header_only(width, height):
    """A valid PNG signature and IHDR claiming ``width x height`` with almost no pixel data: a bomb."""
    def chunk(kind, body):
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")


def _half_of(fmt):
    def write(path):
        Image.fromarray(np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(path, fmt)
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    return write


BAD_FILES = {  # name -> (writer, reason in the summary)
    "zero.png": (lambda p: p.write_bytes(b""), "empty file"),
    "truncated.png": (_half_of("PNG"), "truncated"),
    "truncated.jpg": (_half_of("JPEG"), "truncated"),
    "text.png": (lambda p: p.write_text("this is not a picture\n" * 20), "not an image"),
    "tiny.png": (lambda p: Image.new("RGB", (1, 1)).save(p), "too small"),
    "bomb.png": (lambda p: p.write_bytes(_png_header_only(30000, 30000)), "too large"),      # Pillow's error
    "bomb_warn.png": (lambda p: p.write_bytes(_png_header_only(10000, 9500)), "too large"),  # Pillow's warning
}


def _good_images(directory, n, size=16):
    directory.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        Image.new("RGB", (size, size), (i * 7 % 256, 100, 50)).save(directory / f"good{i:02d}.png")


def _skip_lines(caplog):
    return [r.getMessage() for r in caplog.records if r.getMessage().startswith("skipping ")]


@pytest.mark.parametrize("name", sorted(BAD_FILES))
def test_each_bad_file_is_skipped_once(tmp_path, caplog, name):
    write, reason = BAD_FILES[name]
    _good_images(tmp_path / "good", 3)
    (tmp_path / "mixed").mkdir()
    write(tmp_path / "mixed" / name)
    Image.new("RGB", (16, 16), (1, 2, 3)).save(tmp_path / "mixed" / "fine.png")
    with caplog.at_level(logging.INFO, logger="kuosan.data"):
        ds, report = load_image_folder(tmp_path, resolution=16)
    assert len(ds) == 4 and ds.class_names == ["good", "mixed"]
    lines = _skip_lines(caplog)
    assert len(lines) == 1 and name in lines[0] and reason in lines[0] and "\n" not in lines[0]
    assert report.skip_counts() == {reason: 1}
    assert f"loaded 4 images in 2 classes; skipped 1: 1 {reason}" in caplog.text


def test_all_bad_files_together_on_a_thread_pool(tmp_path, caplog, monkeypatch):
    _good_images(tmp_path / "good", 40)                 # enough files to use the thread pool
    for name, (write, _) in BAD_FILES.items():
        write(tmp_path / "good" / name)
    real_read = folder._read_bytes

    def read_or_deny(path):                             # tests run as root: chmod 000 would not stop a read
        if path.name == "locked.png":
            raise PermissionError(13, "Permission denied")
        return real_read(path)

    monkeypatch.setattr(folder, "_read_bytes", read_or_deny)
    Image.new("RGB", (16, 16)).save(tmp_path / "good" / "locked.png")
    with caplog.at_level(logging.INFO, logger="kuosan.data"):
        ds, report = load_image_folder(tmp_path, resolution=16, workers=2)
    assert len(ds) == 40 and ds.images.shape == (40, 3, 16, 16)
    assert len(_skip_lines(caplog)) == len(BAD_FILES) + 1
    assert report.skip_counts() == {"empty file": 1, "truncated": 2, "not an image": 1, "too small": 1,
                                    "too large": 2, "unreadable": 1}
    assert "loaded 40 images in 1 class; skipped 8: 2 too large, 2 truncated, 1 empty file, 1 not an image, " \
           "1 too small, 1 unreadable" in caplog.text
    assert "locked.png: unreadable (Permission denied)" in caplog.text


def test_pixel_limit_is_ours_too(tmp_path, monkeypatch):
    _good_images(tmp_path, 2, size=16)
    Image.new("RGB", (40, 40)).save(tmp_path / "big.png")
    monkeypatch.setattr(folder, "MAX_PIXELS", 32 * 32)
    ds, report = load_image_folder(tmp_path, resolution=16)
    assert len(ds) == 2 and report.skipped[0][1] == "too large" and "40x40" in report.skipped[0][2]


def test_too_small_is_relative_to_resolution(tmp_path):
    _good_images(tmp_path, 2, size=64)
    Image.new("RGB", (12, 12)).save(tmp_path / "small.png")     # fine at 32 px, too small for 64 px (< 64 // 4)
    assert len(load_image_folder(tmp_path, resolution=32)[0]) == 3
    assert load_image_folder(tmp_path, resolution=64)[1].skip_counts() == {"too small": 1}


def test_a_folder_of_one_image_gives_torch_a_writable_array(tmp_path, monkeypatch):
    """A lone decoded image can be a read-only view; torch.from_numpy warns (once a process) on one."""
    import torch

    from_numpy = torch.from_numpy
    monkeypatch.setattr(torch, "from_numpy", lambda a: from_numpy(a) if a.flags.writeable else pytest.fail(
        "torch.from_numpy given a read-only array"))
    _good_images(tmp_path, 1)
    ds, _ = load_image_folder(tmp_path)
    assert ds.images.shape == (1, 3, 16, 16)


def test_empty_and_failed_classes_are_dropped(tmp_path, caplog):
    _good_images(tmp_path / "a", 2)
    (tmp_path / "b").mkdir()                                     # no files at all
    (tmp_path / "c").mkdir()
    (tmp_path / "c" / "broken.png").write_bytes(b"")             # files, none usable
    _good_images(tmp_path / "d", 1)
    with caplog.at_level(logging.INFO, logger="kuosan.data"):
        ds = load_dataset(str(tmp_path))
    assert ds.class_names == ["a", "d"] and ds.labels.tolist() == [0, 0, 1]
    assert "class folder 'b'" in caplog.text and "class 'c'" in caplog.text
    assert "dropped empty classes: b, c" in caplog.text


def test_nothing_usable_is_a_clear_error(tmp_path):
    with pytest.raises(KuosanError, match="no usable images in .*no files with an image extension"):
        load_dataset(str(tmp_path))
    (tmp_path / "zero.png").write_bytes(b"")
    (tmp_path / "text.jpg").write_text("nope")
    with pytest.raises(KuosanError, match=r"no usable images in .*skipped 2: 1 empty file, 1 not an image"):
        load_dataset(str(tmp_path))
    with pytest.raises(KuosanError, match="does not exist"):
        load_dataset(str(tmp_path / "missing"))


def test_max_images_replaces_bad_files_and_keeps_untried_classes(tmp_path):
    for c in "abcd":
        _good_images(tmp_path / c, 3)
    (tmp_path / "a" / "good00.png").write_bytes(b"")            # replaced by the next file of the order
    ds, report = load_image_folder(tmp_path, resolution=16, max_images=2)
    assert len(ds) == 2 and ds.class_names == ["a", "b", "c", "d"] and not report.dropped_classes
    ds, report = load_image_folder(tmp_path, resolution=16, max_images=11)   # the 11 good files, whatever the order
    assert len(ds) == 11 and ds.labels.bincount().tolist() == [2, 3, 3, 3] and len(report.skipped) == 1
