"""Every file a checkpoint names stays inside it: no absolute names, no ``..``, no symbolic link out, no
FIFO or device, and no header or JSON file that asks for more than is sane. Each is refused on one line
without anything outside being opened."""

import builtins
import contextlib
import json
import os
import re
import signal
import struct
import warnings
from pathlib import Path

import pytest

from kuosan import checkpoint as ck
from kuosan.checkpoint import resolve_checkpoint
from kuosan.errors import KuosanError
from kuosan.model import read_model_checkpoint

from test_checkpoint import optimiser_after_one_step, save, tiny_model


@pytest.fixture
def run(tmp_path):
    precond, config = tiny_model()
    opt = optimiser_after_one_step(precond)
    save(tmp_path / "run", 1, precond, config, opt)
    save(tmp_path / "run", 2, precond, config, opt)
    return tmp_path / "run"


def newest(run):
    return run / "checkpoints" / "step-0000002"


def forge_state(ckpt: Path, files: dict) -> None:
    """Rewrite state.json to list ``files`` ({name: path whose size and checksum to record}) and re-seal it,
    as an attacker who built the whole directory would."""
    state = json.loads((ckpt / "state.json").read_text())
    state["files"] = {name: {"size": Path(p).stat().st_size, "sha256": ck.file_sha256(p)}
                      for name, p in files.items()}
    state["sha256"] = ck._state_digest(state)
    (ckpt / "state.json").write_text(json.dumps(state))


@contextlib.contextmanager
def nothing_opened_under(monkeypatch, *forbidden: Path):
    """Fail if any of the ``forbidden`` files is opened through os.open, open() or safetensors' load_file."""
    forbidden = {os.path.realpath(p) for p in forbidden}
    opened = []
    real_os_open, real_open, real_load = os.open, builtins.open, ck.load_file

    def note(path):
        if isinstance(path, (str, bytes, os.PathLike)) and os.path.realpath(path) in forbidden:
            opened.append(str(path))

    monkeypatch.setattr(os, "open", lambda p, *a, **k: (note(p), real_os_open(p, *a, **k))[1])
    monkeypatch.setattr(builtins, "open", lambda p, *a, **k: (note(p), real_open(p, *a, **k))[1])
    monkeypatch.setattr(ck, "load_file", lambda p, *a, **k: (note(p), real_load(p, *a, **k))[1])
    try:
        yield opened
    finally:
        monkeypatch.undo()
    assert not opened, f"opened outside the checkpoint: {opened}"


@contextlib.contextmanager
def no_hang(seconds=20):
    def boom(*_):
        raise TimeoutError("blocked: a FIFO was opened")

    old = signal.signal(signal.SIGALRM, boom)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)


def refused(ckpt, words, monkeypatch, *outside):
    """The checkpoint alone: one KuosanError containing ``words``; via its run: skipped with a warning naming
    the problem, the older checkpoint used. Nothing in ``outside`` is opened either way."""
    with nothing_opened_under(monkeypatch, *outside), no_hang():
        with pytest.raises(KuosanError) as e:
            resolve_checkpoint(ckpt, require_state=True)
    msg = str(e.value)
    assert "\n" not in msg and words in msg, msg
    with nothing_opened_under(monkeypatch, *outside), no_hang():
        with pytest.warns(UserWarning, match=f"skipping damaged checkpoint {ckpt.name}: .*{re.escape(words)}"):
            got = resolve_checkpoint(ckpt.parent.parent, require_state=True)
    assert got.name == "step-0000001"
    read_model_checkpoint(got, training_state=True)
    return msg


def test_a_dot_dot_name_in_state_json_is_refused_and_not_read(run, monkeypatch):
    ckpt = newest(run)
    outside = run / "outside.safetensors"
    outside.write_bytes((ckpt / "model.safetensors").read_bytes())
    forge_state(ckpt, {"config.json": ckpt / "config.json", "model.safetensors": ckpt / "model.safetensors",
                       "../../outside.safetensors": outside})
    msg = refused(ckpt, "'../../outside.safetensors' is not a file name inside the checkpoint", monkeypatch, outside)
    assert "in state.json's file list" in msg


def test_an_absolute_name_in_state_json_is_refused_and_not_read(run, monkeypatch, tmp_path):
    ckpt = newest(run)
    outside = tmp_path / "secret"
    outside.write_bytes(b"secret\n")
    forge_state(ckpt, {"config.json": ckpt / "config.json", "model.safetensors": ckpt / "model.safetensors",
                       str(outside): outside})
    refused(ckpt, f"{str(outside)!r} is not a file name inside the checkpoint", monkeypatch, outside)


@pytest.mark.parametrize("bad", ["", ".", "sub/model.safetensors", "a\\b", "x\0y"])
def test_other_names_that_are_not_plain_file_names_are_refused(run, bad):
    ckpt = newest(run)
    state = json.loads((ckpt / "state.json").read_text())
    state["files"][bad] = {"size": 1, "sha256": "0" * 64}
    state["sha256"] = ck._state_digest(state)
    (ckpt / "state.json").write_text(json.dumps(state))
    with pytest.raises(KuosanError, match="is not a file name inside the checkpoint") as e:
        resolve_checkpoint(ckpt, require_state=True)
    assert "\n" not in str(e.value)


def test_a_symlink_to_etc_passwd_is_refused_and_not_read(run, monkeypatch):
    ckpt = newest(run)
    (ckpt / "model.safetensors").unlink()
    (ckpt / "model.safetensors").symlink_to("/etc/passwd")
    refused(ckpt, "model.safetensors is a symbolic link out of the checkpoint (to /etc/passwd)", monkeypatch,
            Path("/etc/passwd"))
    # read directly, without verifying: refused as well
    with nothing_opened_under(monkeypatch, Path("/etc/passwd")), pytest.raises(KuosanError) as e:
        read_model_checkpoint(ckpt, weights="model")
    assert "symbolic link out of the checkpoint" in str(e.value) and "\n" not in str(e.value)


@pytest.mark.parametrize("which", ["model.safetensors", "ema.safetensors", "config.json", "state.json",
                                   "optimizer.safetensors"])
def test_a_symlink_to_a_valid_file_outside_is_refused_even_with_forged_checksums(run, monkeypatch, tmp_path,
                                                                                 which):
    ckpt = newest(run)
    outside = tmp_path / f"elsewhere-{which}"
    outside.write_bytes((ckpt / which).read_bytes())  # the very same bytes: sizes and checksums match
    (ckpt / which).unlink()
    (ckpt / which).symlink_to(outside)
    refused(ckpt, f"{which} is a symbolic link out of the checkpoint", monkeypatch, outside)
    if which != "state.json":
        with nothing_opened_under(monkeypatch, outside), pytest.raises(KuosanError, match="symbolic link out"):
            read_model_checkpoint(ckpt, training_state=True)


def test_symlinks_inside_the_checkpoint_and_a_symlinked_run_still_work(run, tmp_path):
    ckpt = newest(run)
    (ckpt / "ema.safetensors").unlink()
    (ckpt / "ema.safetensors").symlink_to("model.safetensors")  # within the checkpoint: fine
    forge_state(ckpt, {p.name: p for p in ckpt.iterdir() if p.name != "state.json"})
    alias = tmp_path / "alias"
    alias.symlink_to(run)  # the user's own link to the run directory
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        got = resolve_checkpoint(alias, require_state=True)
    assert got.name == "step-0000002"
    read_model_checkpoint(got, training_state=True)


@pytest.mark.parametrize("which", ["model.safetensors", "state.json", "config.json"])
def test_a_fifo_is_refused_without_blocking(run, monkeypatch, which):
    ckpt = newest(run)
    (ckpt / which).unlink()
    os.mkfifo(ckpt / which)
    refused(ckpt, f"{which} is a FIFO, not a regular file", monkeypatch)
    if which != "state.json":
        with no_hang(), pytest.raises(KuosanError, match="a FIFO, not a regular file") as e:
            read_model_checkpoint(ckpt, weights="model")
        assert "\n" not in str(e.value)


def test_a_device_file_is_refused(run, monkeypatch):
    ckpt = newest(run)
    (ckpt / "model.safetensors").unlink()
    (ckpt / "model.safetensors").symlink_to("/dev/zero")
    refused(ckpt, "model.safetensors is a symbolic link out of the checkpoint", monkeypatch, Path("/dev/zero"))
    (ckpt / "model.safetensors").unlink()
    try:
        os.mknod(ckpt / "model.safetensors", 0o600 | 0o020000, os.makedev(1, 5))  # /dev/zero itself
    except (PermissionError, AttributeError):
        pytest.skip("creating a device node needs root")
    refused(ckpt, "model.safetensors is a device, not a regular file", monkeypatch)


def test_a_latest_pointer_out_of_the_run_is_not_followed(run, monkeypatch, tmp_path):
    latest = run / "checkpoints" / "latest"
    outside = tmp_path / "elsewhere"
    outside.write_text("step-0000001\n")
    latest.unlink()
    latest.symlink_to(outside)
    with nothing_opened_under(monkeypatch, outside):
        with pytest.warns(UserWarning, match=r"latest does not name a checkpoint \(latest is a symbolic link out "
                                             r"of the checkpoint .*; not read\)"):
            assert resolve_checkpoint(run).name == "step-0000002"
    latest.unlink()
    latest.write_text("../../../other/checkpoints/step-0000001\n")
    with pytest.warns(UserWarning, match="latest does not name a checkpoint"):
        assert resolve_checkpoint(run).name == "step-0000002"
    latest.unlink()
    os.mkfifo(latest)
    with no_hang(), pytest.warns(UserWarning, match=r"latest is a FIFO, not a regular file; not read"):
        assert resolve_checkpoint(run).name == "step-0000002"


def test_a_step_directory_linked_out_of_the_run_is_skipped(run, monkeypatch, tmp_path):
    precond, config = tiny_model()
    other = save(tmp_path / "other", 9, precond, config)  # a valid checkpoint, but another run's
    (run / "checkpoints" / "step-0000009").symlink_to(other)
    with nothing_opened_under(monkeypatch, *other.iterdir()):
        with pytest.warns(UserWarning, match=r"skipping damaged checkpoint step-0000009: it is a symbolic link "
                                             r"out of the run"):
            assert resolve_checkpoint(run).name == "step-0000002"


def test_resolving_a_fifo_path_is_one_line(tmp_path):
    os.mkfifo(tmp_path / "pipe")
    with no_hang(), pytest.raises(KuosanError, match="is a FIFO; give a checkpoint directory") as e:
        resolve_checkpoint(tmp_path / "pipe")
    assert "\n" not in str(e.value)


# --- sizes --------------------------------------------------------------------------------------------

def _exported(run) -> Path:
    """The newest checkpoint without state.json, as an exported model is: nothing is checksummed."""
    ckpt = newest(run)
    (ckpt / "state.json").unlink()
    return ckpt


@pytest.mark.parametrize("claimed, words", [
    (2 ** 60, f"its header claims {2 ** 60} bytes, more than the 100000000 allowed"),
    (2 ** 64 - 1, "more than the 100000000 allowed"),
    (5000, "its header claims 5000 bytes, the file has 18"),
])
def test_a_hostile_safetensors_header_length_is_one_line(run, claimed, words):
    ckpt = _exported(run)
    for name in ("model.safetensors", "ema.safetensors"):
        (ckpt / name).write_bytes(struct.pack("<Q", claimed) + b'{"a":1}\0\0\0')
    with pytest.raises(KuosanError) as e:
        read_model_checkpoint(resolve_checkpoint(ckpt))
    msg = str(e.value)
    assert "\n" not in msg and words in msg and "is not a readable safetensors file" in msg, msg


def test_a_file_too_short_for_a_header_is_one_line(run):
    ckpt = _exported(run)
    (ckpt / "ema.safetensors").write_bytes(b"\x01\x02")
    with pytest.raises(KuosanError, match="shorter than a safetensors header"):
        read_model_checkpoint(ckpt)


def test_a_huge_config_json_is_not_read(run):
    ckpt = _exported(run)
    with open(ckpt / "config.json", "r+b") as f:
        f.truncate(17 << 20)  # sparse: costs no disk
    with pytest.raises(KuosanError, match=r"config.json has 17825792 bytes, more than the 16 MB") as e:
        read_model_checkpoint(ckpt)
    assert "\n" not in str(e.value)


def test_a_huge_state_json_is_refused(run, monkeypatch):
    ckpt = newest(run)
    with open(ckpt / "state.json", "r+b") as f:
        f.truncate(17 << 20)
    refused(ckpt, "state.json has 17825792 bytes, more than the 16 MB", monkeypatch)


def test_a_file_listed_in_state_that_lies_about_its_size_is_not_hashed(run, monkeypatch):
    """The size is compared before the hash: a forged entry cannot make kuosan read gigabytes."""
    ckpt = newest(run)
    big = ckpt / "optimizer.safetensors"
    with open(big, "r+b") as f:
        f.truncate(1 << 30)
    hashed = []
    real = ck._hash_member
    monkeypatch.setattr(ck, "_hash_member", lambda c, n: (hashed.append(n), real(c, n))[1])
    with pytest.raises(KuosanError, match="optimizer.safetensors has 1073741824 bytes, expected"):
        resolve_checkpoint(ckpt, require_state=True)
    assert "optimizer.safetensors" not in hashed
