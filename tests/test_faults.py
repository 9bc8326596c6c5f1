"""A full disk, a quota, a read-only file system or an interrupt at any write of a checkpoint, a sample
or a cache: one line, the previous state kept, no temporary files left, nothing half-written.

The fault injector wraps the lowest write calls (``os.open`` creating a file, ``os.write``, ``os.fsync``,
``os.replace``, ``os.mkdir``). A first clean save counts them; then each case fails the k-th one.
"""

import errno
import io
import os
import random
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from kuosan.checkpoint import list_checkpoints, resolve_checkpoint, save_checkpoint
from kuosan.errors import KuosanError
from kuosan.model import read_model_checkpoint

from test_checkpoint import encode_rng, optimiser_after_one_step, tiny_model

_WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT


class Faults:
    """Counts write calls while armed; with ``fail_at=k`` the k-th (0-based) raises ``exc`` instead.

    ``points`` records each call as (kind, name, tolerated): tolerated calls are those whose failure the
    code rightly ignores (fsync of a directory, mkdir of a folder that already exists)."""

    def __init__(self, monkeypatch, fail_at=None, exc=None):
        self.fail_at, self.exc, self.points, self.fired = fail_at, exc, [], None
        self.armed = False
        real = {name: getattr(os, name) for name in ("open", "write", "fsync", "replace", "mkdir")}
        self.real = real

        def hook(kind, name, tolerated, call):
            if not self.armed:
                return call()
            k = len(self.points)
            self.points.append((kind, name, tolerated))
            if k == self.fail_at:
                self.fired = (kind, name, tolerated)
                raise self.exc() if callable(self.exc) else self.exc
            return call()

        def fd_name(fd):
            try:
                return os.path.basename(os.readlink(f"/proc/self/fd/{fd}"))
            except OSError:
                return str(fd)

        def is_dir_fd(fd):
            try:
                return stat.S_ISDIR(os.fstat(fd).st_mode)
            except OSError:
                return False

        def _open(path, flags, *a, **k):
            if not flags & _WRITE_FLAGS:
                return real["open"](path, flags, *a, **k)
            return hook("open", os.path.basename(path), False, lambda: real["open"](path, flags, *a, **k))

        monkeypatch.setattr(os, "open", _open)
        monkeypatch.setattr(os, "write", lambda fd, data: hook("write", fd_name(fd), False,
                                                               lambda: real["write"](fd, data)))
        monkeypatch.setattr(os, "fsync", lambda fd: hook("fsync", fd_name(fd), is_dir_fd(fd),
                                                         lambda: real["fsync"](fd)))
        monkeypatch.setattr(os, "replace", lambda a, b, **k: hook("replace", os.path.basename(b), False,
                                                                  lambda: real["replace"](a, b, **k)))
        monkeypatch.setattr(os, "mkdir", lambda p, *a, **k: hook("mkdir", os.path.basename(p), os.path.isdir(p),
                                                                 lambda: real["mkdir"](p, *a, **k)))

    def __enter__(self):
        self.armed = True
        return self

    def __exit__(self, *exc):
        self.armed = False


def enospc():
    return OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


# --- one tiny model, reused --------------------------------------------------------------------------

_MODEL = {}


def model():
    if not _MODEL:
        precond, config = tiny_model()
        _MODEL.update(precond=precond, config=config, opt=optimiser_after_one_step(precond))
    return _MODEL["precond"], _MODEL["config"], _MODEL["opt"]


def save(run, step, keep=3):
    precond, config, opt = model()
    state = {"rng_torch": encode_rng(torch.get_rng_state()), "nonfinite": 0}
    return save_checkpoint(run, step, config=config, model=precond.state_dict(), ema=precond.state_dict(),
                           optimizer=opt, state=state, keep=keep)


def make_run(root: Path, steps=(10, 20)) -> Path:
    run = root / "run"
    for s in steps:
        save(run, s)
    return run


def snapshot(root: Path) -> dict:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def count_points(save_step: int) -> list:
    """The write calls of a clean save of ``save_step`` into a run holding steps 10 and 20."""
    mp = pytest.MonkeyPatch()
    try:
        with tempfile.TemporaryDirectory() as d:
            run = make_run(Path(d))
            with Faults(mp) as f:
                save(run, save_step)
            return f.points
    finally:
        mp.undo()


NEW_POINTS = count_points(30)      # a new step
RESAVE_POINTS = count_points(20)   # the same step again (after resuming from it): the swap


def test_the_fault_points_cover_every_file_and_the_commit():
    names = {name for _, name, _ in NEW_POINTS}
    for name in ("config.json", "model.safetensors", "ema.safetensors", "optimizer.safetensors", "state.json",
                 "step-0000030", "latest"):
        assert any(name in n for n in names), name
    kinds = {kind for kind, _, _ in NEW_POINTS}
    assert kinds == {"open", "write", "fsync", "replace", "mkdir"}
    assert len(NEW_POINTS) >= 20, NEW_POINTS
    assert len(RESAVE_POINTS) == len(NEW_POINTS) + 1  # the old step-0000020 moves aside first


def after_the_pointer(points, k) -> bool:
    """Whether call k comes after ``latest`` was renamed into place (only the folder's fsync is left)."""
    return any(kind == "replace" and name == "latest" for kind, name, _ in points[:k])


def check_after_fault(run, before_latest, before_prev, prev_name, committed_name, err, pointer_moved=False):
    """Shared assertions after a failed save."""
    root = run / "checkpoints"
    assert "\n" not in str(err)
    assert not [p.name for p in root.iterdir() if p.name.startswith(".")], "a temporary file or folder was left"
    latest = (root / "latest").read_bytes()
    assert latest == (f"{committed_name}\n".encode() if pointer_moved else before_latest)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # nothing damaged is in the run: no "skipping damaged checkpoint"
        got = resolve_checkpoint(run, require_state=True)
    assert got.name in (prev_name, committed_name)
    prev = root / prev_name
    if got.name == committed_name and prev_name == committed_name:
        return got  # the re-saved step was committed: it replaced the old one
    assert snapshot(prev) == before_prev, "the previous checkpoint changed"
    read_model_checkpoint(resolve_checkpoint(prev, require_state=True), training_state=True)
    return got


@pytest.mark.parametrize("k", range(len(NEW_POINTS)))
def test_disk_full_at_every_write_of_a_checkpoint(tmp_path, monkeypatch, k):
    run = make_run(tmp_path)
    root = run / "checkpoints"
    before_latest, before_prev = (root / "latest").read_bytes(), snapshot(root / "step-0000020")
    faults = Faults(monkeypatch, fail_at=k, exc=enospc)
    kind, name, tolerated = NEW_POINTS[k]
    if tolerated:  # its failure is rightly ignored: the save goes through
        with faults:
            save(run, 30)
        assert resolve_checkpoint(run, require_state=True).name == "step-0000030"
        return
    with faults, pytest.raises(KuosanError) as e:
        save(run, 30)
    monkeypatch.undo()
    assert faults.fired == NEW_POINTS[k]
    msg = str(e.value)
    assert msg.startswith(f"disk full while writing checkpoint step 30 to {root}: "), msg
    got = check_after_fault(run, before_latest, before_prev, "step-0000020", "step-0000030", e.value)
    if got.name == "step-0000030":  # failed after the commit (the rename): only the pointer lags
        assert "step-0000030 itself is complete" in msg and "'latest' pointer could not be moved" in msg
        assert name == "latest" or name.startswith(".latest.tmp")
    else:
        assert "the previous checkpoint (step 20) is untouched; free space and resume" in msg
        assert not (root / "step-0000030").exists()
    # after freeing space, the run goes on
    save(run, 30)
    assert (root / "latest").read_text() == "step-0000030\n"
    assert resolve_checkpoint(run, require_state=True).name == "step-0000030"


@pytest.mark.parametrize("k", range(len(RESAVE_POINTS)))
def test_disk_full_at_every_write_of_a_re_saved_step_keeps_the_old_one(tmp_path, monkeypatch, k):
    run = make_run(tmp_path)
    root = run / "checkpoints"
    before_latest, before_prev = (root / "latest").read_bytes(), snapshot(root / "step-0000020")
    faults = Faults(monkeypatch, fail_at=k, exc=enospc)
    if RESAVE_POINTS[k][2]:
        with faults:
            save(run, 20)
        return
    with faults, pytest.raises(KuosanError, match="^disk full while writing checkpoint step 20 ") as e:
        save(run, 20)
    monkeypatch.undo()
    check_after_fault(run, before_latest, before_prev, "step-0000020", "step-0000020", e.value)
    assert sorted(p.name for p in list_checkpoints(run)) == ["step-0000010", "step-0000020"]


@pytest.mark.parametrize("k", range(len(NEW_POINTS)))
def test_keyboard_interrupt_at_every_write_of_a_checkpoint(tmp_path, monkeypatch, k):
    run = make_run(tmp_path)
    root = run / "checkpoints"
    before_latest, before_prev = (root / "latest").read_bytes(), snapshot(root / "step-0000020")
    with Faults(monkeypatch, fail_at=k, exc=KeyboardInterrupt), pytest.raises(KeyboardInterrupt):
        save(run, 30)
    monkeypatch.undo()
    check_after_fault(run, before_latest, before_prev, "step-0000020", "step-0000030", "",
                      pointer_moved=after_the_pointer(NEW_POINTS, k))


@pytest.mark.parametrize("code, words, fix", [
    (errno.EDQUOT, "disk quota exceeded", "free space (or raise the quota) and resume"),
    (errno.EROFS, "read-only file system", "make it writable (or write elsewhere) and resume"),
    (errno.EIO, "input/output error", "fix that and resume"),
])
@pytest.mark.parametrize("where", ["model.safetensors", "state.json", "step-0000030"])
def test_quota_read_only_and_other_errors_are_one_line_too(tmp_path, monkeypatch, code, words, fix, where):
    run = make_run(tmp_path)
    root = run / "checkpoints"
    before_latest, before_prev = (root / "latest").read_bytes(), snapshot(root / "step-0000020")
    k = next(i for i, (kind, name, tol) in enumerate(NEW_POINTS) if where in name and not tol)
    with Faults(monkeypatch, fail_at=k, exc=OSError(code, os.strerror(code))), pytest.raises(KuosanError) as e:
        save(run, 30)
    monkeypatch.undo()
    assert str(e.value).startswith(f"{words} while writing checkpoint step 30"), str(e.value)
    assert str(e.value).endswith(fix)
    check_after_fault(run, before_latest, before_prev, "step-0000020", "step-0000030", e.value)


def test_a_read_only_run_directory_is_one_line_before_anything_is_written(tmp_path, monkeypatch):
    real_mkdir = os.mkdir

    def mkdir(p, *a, **k):
        raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(p))

    monkeypatch.setattr(os, "mkdir", mkdir)
    with pytest.raises(KuosanError, match=r"^read-only file system while writing checkpoint step 5 to .*: nothing "
                                          r"was saved and no earlier checkpoint exists; make it writable") as e:
        save(tmp_path / "run", 5)
    assert "\n" not in str(e.value)
    monkeypatch.setattr(os, "mkdir", real_mkdir)
    assert not (tmp_path / "run").exists()


def test_a_crash_in_the_middle_of_the_swap_is_repaired_by_the_next_save(tmp_path):
    """A process killed between moving step-N aside and renaming the new one into place leaves only
    ``.old-step-N-PID``: the next save puts it back instead of deleting the only copy."""
    run = make_run(tmp_path)
    root = run / "checkpoints"
    before = snapshot(root / "step-0000020")
    os.replace(root / "step-0000020", root / ".old-step-0000020-999999")
    save(run, 30)
    assert snapshot(root / "step-0000020") == before
    assert [p.name for p in list_checkpoints(run)] == ["step-0000010", "step-0000020", "step-0000030"]


# --- a real full file system (tmpfs), where the tests run as root and mount works ---------------------

@pytest.fixture
def tiny_fs(tmp_path):
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    if os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("mounting a tmpfs needs root")
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(mnt)], capture_output=True)
    if r.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {r.stderr.decode().strip()}")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], capture_output=True)


def fill(mnt: Path, leave: int, name="filler") -> Path:
    """Fill the file system up to ``leave`` free bytes (all of it with 0)."""
    filler = mnt / name
    free = shutil.disk_usage(mnt).free
    try:
        with open(filler, "wb") as f:
            f.write(b"\0" * max(0, free - leave))
    except OSError as e:
        assert e.errno == errno.ENOSPC and leave == 0
    return filler


def test_a_really_full_tmpfs_during_a_checkpoint(tiny_fs):
    run = tiny_fs / "run"
    save(run, 10)
    root = run / "checkpoints"
    size = sum(p.stat().st_size for p in (root / "step-0000010").iterdir())
    before_latest, before_prev = (root / "latest").read_bytes(), snapshot(root / "step-0000010")
    filler = fill(tiny_fs, size // 2)
    with pytest.raises(KuosanError) as e:
        save(run, 20)
    assert str(e.value).startswith(f"disk full while writing checkpoint step 20 to {root}: the previous "
                                   "checkpoint (step 10) is untouched; free space and resume"), str(e.value)
    check_after_fault(run, before_latest, before_prev, "step-0000010", "step-0000020", e.value)
    filler.unlink()
    save(run, 20)
    assert resolve_checkpoint(run, require_state=True).name == "step-0000020"


def test_a_really_full_tmpfs_during_sampling_and_caching(tiny_fs):
    from kuosan.pipeline import SampleResult

    rng = np.random.default_rng(0)
    res = SampleResult(images=rng.integers(0, 256, (8, 64, 64, 3), dtype=np.uint8), labels=None,
                       seeds=list(range(8)), nfe=1, seconds=0.0)
    filler = fill(tiny_fs, 40_000)
    with pytest.raises(KuosanError, match=r"^disk full while writing .*: \d of 8 images saved") as e:
        res.save(tiny_fs / "samples")
    assert "\n" not in str(e.value)
    for p in (tiny_fs / "samples").iterdir():
        assert not p.name.startswith("."), p
        if p.suffix == ".png":
            from PIL import Image

            with Image.open(p) as im:
                im.load()
    fill(tiny_fs, 0, "filler2")
    _latent_cache_warns(tiny_fs / "cache" / "x.safetensors")


# --- samples ------------------------------------------------------------------------------------------

def sample_result(n=3):
    from kuosan.pipeline import SampleResult

    rng = np.random.default_rng(1)
    return SampleResult(images=rng.integers(0, 256, (n, 8, 8, 3), dtype=np.uint8), labels=np.arange(n),
                        seeds=[5 + i for i in range(n)], nfe=1, seconds=0.0)


def _reference_files(res) -> dict:
    with tempfile.TemporaryDirectory() as d:
        res.save(d)
        return {p.name: p.read_bytes() for p in Path(d).iterdir()}


def is_complete(p: Path, reference: dict) -> bool:
    """``p`` holds what a clean save writes (an npz by content: its zip entries carry the time of writing)."""
    if p.suffix != ".npz":
        return p.read_bytes() == reference[p.name]
    with np.load(p) as got, np.load(io.BytesIO(reference[p.name])) as want:
        return sorted(got.files) == sorted(want.files) and all(np.array_equal(got[k], want[k]) for k in got.files)


def assert_only_complete_files(out: Path, reference: dict):
    for p in out.iterdir():
        assert not p.name.startswith("."), f"temporary file left: {p.name}"
        assert is_complete(p, reference), f"{p.name} is not complete"


def _sample_points():
    mp = pytest.MonkeyPatch()
    try:
        with tempfile.TemporaryDirectory() as d, Faults(mp) as f:
            sample_result().save(Path(d) / "out")
        return f.points
    finally:
        mp.undo()


SAMPLE_POINTS = _sample_points()


def test_sample_fault_points_cover_every_file():
    names = " ".join(name for _, name, _ in SAMPLE_POINTS)
    for name in ("seed000005.png", "seed000007.png", "grid.png", "samples.npz"):
        assert name in names


@pytest.mark.parametrize("k", range(len(SAMPLE_POINTS)))
def test_disk_full_at_every_write_of_samples(tmp_path, monkeypatch, k):
    res = sample_result()
    reference = _reference_files(res)
    out = tmp_path / "out"
    faults = Faults(monkeypatch, fail_at=k, exc=enospc)
    if SAMPLE_POINTS[k][2]:
        with faults:
            res.save(out)
        assert_only_complete_files(out, reference)
        return
    with faults, pytest.raises(KuosanError) as e:
        res.save(out)
    monkeypatch.undo()
    msg = str(e.value)
    assert "\n" not in msg and msg.startswith("disk full while writing "), msg
    assert "free space and sample again" in msg
    if out.exists():
        assert_only_complete_files(out, reference)


@pytest.mark.parametrize("k", range(len(SAMPLE_POINTS)))
def test_keyboard_interrupt_at_every_write_of_samples(tmp_path, monkeypatch, k):
    res = sample_result()
    reference = _reference_files(res)
    out = tmp_path / "out"
    with Faults(monkeypatch, fail_at=k, exc=KeyboardInterrupt), pytest.raises(KeyboardInterrupt):
        res.save(out)
    monkeypatch.undo()
    if out.exists():
        assert_only_complete_files(out, reference)


def test_save_png_on_a_full_disk_is_one_line_and_leaves_nothing(tmp_path, monkeypatch):
    from kuosan.images import save_png

    with Faults(monkeypatch, fail_at=2, exc=enospc), pytest.raises(KuosanError) as e:  # mkdir, create, write
        save_png(np.zeros((4, 4, 3), np.uint8), tmp_path / "a.png")
    assert str(e.value) == (f"disk full while writing {tmp_path / 'a.png'}: nothing partial was left there; "
                            "free space and run again")
    assert list(tmp_path.iterdir()) == []


def test_interrupts_at_random_moments_leave_only_complete_samples(tmp_path):
    """SIGINT (KeyboardInterrupt in the main thread) at 20 random moments of a save of 40 images: every file
    under a final name is complete. (A temporary file may survive only when the interrupt lands inside the
    cleanup itself; the exact write points are covered above, where none may be left.)

    Python's own SIGINT handler is installed for the test: a process started in the background by a
    non-interactive shell inherits SIGINT ignored, and then ``interrupt_main`` delivers nothing."""
    import _thread

    old = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        _interrupt_saves_at_random(tmp_path, _thread.interrupt_main)
    finally:
        signal.signal(signal.SIGINT, old)


def _interrupt_saves_at_random(tmp_path, interrupt_main):
    res = sample_result(40)
    reference = _reference_files(res)
    took = float("inf")
    for k in range(3):  # the quickest of three: a first, cold save overstates the time and timers outrun saves
        t0 = time.perf_counter()
        res.save(tmp_path / f"timing{k}")
        took = min(took, time.perf_counter() - t0)
    rnd = random.Random(0)
    interrupted = 0
    for i in range(20):
        out = tmp_path / f"out{i}"
        timer = threading.Timer(rnd.uniform(0, took), interrupt_main)
        try:
            try:
                timer.start()
                res.save(out)
            finally:
                timer.cancel()
                timer.join()
            time.sleep(0.05)  # an interrupt that fired just as the save finished arrives here
        except KeyboardInterrupt:
            interrupted += 1
        if out.exists():
            for p in out.iterdir():
                if not p.name.startswith("."):
                    assert is_complete(p, reference), p.name
    assert interrupted >= 10  # most land mid-save (a save that outruns its timer is not interrupted)


def test_sigterm_at_random_moments_leaves_only_complete_files(tmp_path):
    """A child saving samples and checkpoints in a loop is killed by SIGTERM (no handler: the process just
    dies) three times; every file under a final name is complete, and the run resumes."""
    script = textwrap.dedent(f"""
        import sys
        sys.path.insert(0, {str(Path(__file__).parent)!r})
        import test_faults as tf
        from pathlib import Path
        res = tf.sample_result(40)
        run = Path(sys.argv[1])
        step = len(tf.list_checkpoints(run)) * 10 + 10
        print("ready", flush=True)
        while True:
            res.save(run / "samples")
            tf.save(run, step)
            step += 10
    """)
    res = sample_result(40)
    reference = _reference_files(res)
    run = tmp_path / "run"
    make_run(tmp_path, steps=(10,))
    rnd = random.Random(1)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
    for _ in range(3):
        child = subprocess.Popen([sys.executable, "-c", script, str(run)], stdout=subprocess.PIPE, env=env)
        try:
            assert child.stdout.readline().strip() == b"ready"
            time.sleep(rnd.uniform(0.05, 0.5))
            child.send_signal(signal.SIGTERM)
            child.wait(timeout=60)
        finally:
            if child.poll() is None:
                child.kill()
                child.wait()
        samples = run / "samples"
        if samples.exists():
            for p in samples.iterdir():
                if not p.name.startswith("."):
                    assert is_complete(p, reference), p.name
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # no damaged checkpoint: a killed save leaves only a .tmp-* folder
            read_model_checkpoint(resolve_checkpoint(run, require_state=True), training_state=True)
    save(run, 10_000)  # the next save cleans up whatever the killed ones left
    assert not [p for p in (run / "checkpoints").iterdir() if p.name.startswith(".")]
    sample_result(40).save(run / "samples")
    assert not [p for p in (run / "samples").iterdir() if p.name.startswith(".")]


# --- caches -------------------------------------------------------------------------------------------

class _FakeAutoencoder:
    checksum, config_sha256, scale = "a" * 64, "b" * 64, 0.5

    def reference(self):
        return {"path": "ae"}


def _latent_data():
    from kuosan.latent import LatentDataset

    return LatentDataset(torch.linspace(-2, 2, 6 * 2 * 4 * 4).reshape(6, 2, 4, 4), torch.arange(6) % 2, ["a", "b"],
                         "toy", {"path": "ae"})


def _latent_cache_warns(path: Path):
    from kuosan.latent import _write_cache

    with pytest.warns(UserWarning, match=r"^disk full while writing the latent cache .*; continuing without it"):
        _write_cache(path, _latent_data(), _FakeAutoencoder())
    assert not path.exists()
    if path.parent.exists():
        assert not [p for p in path.parent.iterdir() if p.name.startswith(".")]


@pytest.mark.parametrize("point", ["open", "write", "fsync", "replace"])
def test_a_latent_cache_write_that_fails_warns_and_goes_on(tmp_path, monkeypatch, point):
    from kuosan.latent import _read_cache, _write_cache

    path = tmp_path / "cache" / "x.safetensors"
    mp = pytest.MonkeyPatch()
    with Faults(mp) as f:
        _write_cache(tmp_path / "clean" / "x.safetensors", _latent_data(), _FakeAutoencoder())
    mp.undo()
    k = next(i for i, (kind, _, tol) in enumerate(f.points) if kind == point and not tol)
    with Faults(monkeypatch, fail_at=k, exc=enospc):
        _latent_cache_warns(path)
    monkeypatch.undo()
    _write_cache(path, _latent_data(), _FakeAutoencoder())  # and when there is room, it is written and read
    back = _read_cache(path, _FakeAutoencoder())
    assert back is not None and torch.equal(back.images, _latent_data().images)
    assert torch.equal(back.labels, _latent_data().labels) and back.class_names == ["a", "b"]


def test_a_latent_cache_interrupted_leaves_no_temporary_file(tmp_path, monkeypatch):
    from kuosan.latent import _write_cache

    with Faults(monkeypatch, fail_at=2, exc=KeyboardInterrupt), pytest.raises(KeyboardInterrupt):
        _write_cache(tmp_path / "x.safetensors", _latent_data(), _FakeAutoencoder())
    assert list(tmp_path.iterdir()) == []
