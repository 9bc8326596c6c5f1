"""One writer per run directory, and a run's recipe kept honest across ``--resume``.

* :class:`RunLock` takes an exclusive OS lock on ``RUN/.lock`` (``flock``; ``msvcrt.locking`` on Windows)
  for as long as a run writes there. The OS drops it when the process ends, however it ends, so a killed
  run never leaves a stale lock. A second writer is refused at once, with the holder's pid, host,
  command line and start time.
* :func:`recipe_changes` / :func:`check_resume` compare a run's saved config with the one a ``--resume``
  would continue with; a changed recipe is refused unless the user allows it, and then
  :func:`record_history` appends the change to ``RUN/history.jsonl`` instead of overwriting silently.
* :func:`check_not_inside_checkpoint` keeps outputs out of checkpoint directories.
"""

from __future__ import annotations

import errno
import fnmatch
import json
import os
import shlex
import socket
import sys
import time
import warnings
from pathlib import Path

from kuosan.errors import KuosanError, user_path

try:
    import fcntl
except ImportError:  # Windows
    fcntl = None

__all__ = ["RunLock", "RESUME_IGNORE", "recipe_changes", "changed_values", "check_resume", "record_history",
           "check_not_inside_checkpoint"]

LOCK_NAME, HISTORY_NAME = ".lock", "history.jsonl"

# Settings a resumed run may change freely: how long and where it runs, how often it reports, and what it
# only measures or samples. Everything else (learning rate, batch, data, loss weights, EMA, precision of
# the arithmetic, ...) is the recipe. ``autoencoder.path``/``parent.path``: the file may move, its
# checksum (compared) says whether it is the same one.
RESUME_IGNORE = (
    "train.steps", "train.time_limit", "train.out", "train.device", "train.log_every", "train.sample_every",
    "train.checkpoint_every", "train.keep_checkpoints", "train.max_nonfinite", "train.compile", "train.tf32",
    "train.batch_per_device", "train.data_root", "train.scale_images", "sample", "latent", "losses.note",
    "autoencoder.path", "parent.path",
)


def _describe_argv() -> str:
    argv = list(sys.argv) or ["?"]
    if Path(argv[0]).name in ("__main__.py", "kuosan", "kuosan.exe"):
        argv[0] = "kuosan"
    text = shlex.join(argv)
    return text if len(text) <= 160 else text[:157] + "..."


class RunLock:
    """``with RunLock(out, command="train", enabled=ctx.is_main): ...`` (or ``acquire()``/``release()``).

    Creates ``run_dir`` if needed. Under torchrun pass ``enabled=is_main``: rank 0 alone writes the run,
    and a disabled lock does nothing. Raises :class:`KuosanError` when another process holds the lock.
    On a file system without locks (some network or FUSE mounts) it warns and runs unlocked.
    """

    def __init__(self, run_dir, command: str = "train", enabled: bool = True):
        self.run_dir, self.command, self.enabled = Path(run_dir), command, enabled
        self.path = self.run_dir / LOCK_NAME
        self._fd = None

    def __enter__(self) -> "RunLock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()

    def acquire(self) -> "RunLock":
        if not self.enabled or self._fd is not None:
            return self
        if self.run_dir.exists() and not self.run_dir.is_dir():
            raise KuosanError(f"--out {self.run_dir} is a file; give a directory for the run")
        self._created = not self.run_dir.exists()
        try:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            fd = self._open_locked()
        except OSError as e:
            if e.errno in (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL):
                warnings.warn(f"cannot lock {self.run_dir} ({e.strerror}); nothing stops a second process from "
                              "writing into it", stacklevel=2)
                return self
            raise KuosanError(f"cannot create or lock {self.run_dir}: {e.strerror or e}") from None
        self._fd = fd
        holder = {"pid": os.getpid(), "host": socket.gethostname(), "command": self.command,
                  "argv": _describe_argv(), "started": time.time()}
        try:  # the note a refused writer reads
            os.ftruncate(fd, 0)
            os.lseek(fd, 0, os.SEEK_SET)
            os.write(fd, (json.dumps(holder) + "\n").encode())
            os.fsync(fd)
        except OSError as e:
            self.release()
            raise KuosanError(f"cannot write {self.path}: {e.strerror or e}") from None
        return self

    def release(self) -> None:
        fd, self._fd = self._fd, None
        if fd is None:
            return
        try:
            if fcntl is not None:  # removed while still held: a writer that opened it retries on a fresh file
                os.unlink(self.path)
            else:
                import msvcrt

                os.lseek(fd, 1 << 20, os.SEEK_SET)
                msvcrt.locking(fd, msvcrt.LK_UNLCK, 1)
        except OSError:
            pass
        os.close(fd)  # closing drops the lock
        if getattr(self, "_created", False):  # a run that stopped before writing anything leaves no folder
            try:
                self.run_dir.rmdir()
            except OSError:
                pass

    def _open_locked(self) -> int:
        """The lock file's descriptor, locked; :class:`KuosanError` when another process holds it."""
        for _ in range(20):  # a holder letting go removes its file: retry until the locked file is the one named
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                if not self._lock(fd):
                    raise KuosanError(self._busy())
                if fcntl is None:
                    return fd
                st, now = os.fstat(fd), os.stat(self.path)
                if (now.st_ino, now.st_dev) == (st.st_ino, st.st_dev):
                    return fd
            except BaseException as e:
                os.close(fd)
                if not isinstance(e, FileNotFoundError):
                    raise
                continue
            os.close(fd)
        raise KuosanError(self._busy())

    @staticmethod
    def _lock(fd: int) -> bool:
        """Try to take the lock on ``fd``: False when another process holds it."""
        try:
            if fcntl is not None:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            else:
                import msvcrt

                os.lseek(fd, 1 << 20, os.SEEK_SET)  # lock a byte past the holder's note, which stays readable
                msvcrt.locking(fd, msvcrt.LK_NBLCK, 1)
            return True
        except OSError as e:
            if e.errno in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK, errno.EDEADLK):
                return False
            raise

    def _busy(self) -> str:
        holder = {}
        for _ in range(10):  # the holder writes its note just after locking
            try:
                holder = json.loads(self.path.read_text() or "{}")
            except (OSError, ValueError):
                holder = {}
            if holder:
                break
            time.sleep(0.05)
        try:
            started = time.localtime(float(holder["started"]))
            since = time.strftime("%H:%M:%S" if started[:3] == time.localtime()[:3] else "%Y-%m-%d %H:%M:%S",
                                  started)
            who = f"pid {int(holder['pid'])} on {holder['host']}, `{holder['argv']}`, since {since}"
        except (KeyError, TypeError, ValueError, OverflowError):
            who = "holder unknown"
        return (f"{self.run_dir} is in use by another kuosan process ({who}); wait for it to finish "
                "or choose another --out")


def _flatten(d: dict, prefix: str = "") -> dict:
    flat = {}
    for key, value in d.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            flat.update(_flatten(value, name + "."))
        else:
            flat[name] = value
    return flat


def _ignored(key: str, ignore) -> bool:
    return any(key == p or key.startswith(p + ".") or fnmatch.fnmatchcase(key, p) for p in ignore)


_ABSENT = "(absent)"
# Settings added after a run format was fixed, with the value that does what runs written before them did: a
# saved recipe without one of them has that value (an old run resumes; setting another value is a change).
ADDED_DEFAULTS = {"train.decay_over": "steps", "train.ema_sigma_rel": None, "train.cycle_weight": 0.0,
                  "train.equivariance_weight": 0.0, "train.equivariance_scale": 2, "train.clock": "wall",
                  "train.posthoc_ema": False, "train.repa_weight": 0.0}


def recipe_changes(saved: dict, now: dict, *, ignore=RESUME_IGNORE) -> list[str]:
    """The dotted keys (``"train.lr"``) whose values differ between two run configs, sorted, less those
    matched by ``ignore`` (exact keys, section prefixes such as ``"sample"``, or globs). A key present on
    one side only counts as changed. Values are compared as JSON would store them (tuples as lists)."""
    a, b = (_flatten(json.loads(json.dumps(d, default=str))) for d in (saved, now))
    return sorted(k for k in set(a) | set(b)
                  if not _ignored(k, ignore) and _saved(a, k) != b.get(k, _ABSENT))


def _saved(flat: dict, key: str):
    return flat.get(key, ADDED_DEFAULTS.get(key, _ABSENT))


def changed_values(saved: dict, now: dict, keys) -> dict:
    """``{key: {"old": ..., "new": ...}}`` for ``keys`` (from :func:`recipe_changes`), for the run's history."""
    a, b = (_flatten(json.loads(json.dumps(d, default=str))) for d in (saved, now))
    return {k: {"old": _saved(a, k), "new": b.get(k, _ABSENT)} for k in keys}


def check_resume(saved: dict, now: dict, *, allow_changes: bool, where: str = "the run",
                 ignore=RESUME_IGNORE) -> list[str]:
    """The recipe changes between ``saved`` and ``now``; raises :class:`KuosanError` naming each with its
    old and new value, unless ``allow_changes`` (then the caller records them with :func:`record_history`)."""
    keys = recipe_changes(saved, now, ignore=ignore)
    if keys and not allow_changes:
        def show(v):
            text = json.dumps(v)
            return text if len(text) <= 40 else text[:37] + "..."

        parts = ", ".join(f"{k} {show(v['old'])} -> {show(v['new'])}"
                          for k, v in changed_values(saved, now, keys).items())
        raise KuosanError(f"cannot resume {where} with a changed recipe ({parts}); drop the changed options, or "
                          "pass --allow-changes to continue with the new values; they are recorded in the run's "
                          f"{HISTORY_NAME}")
    return keys


def record_history(run_dir, event: dict) -> None:
    """Append one line to ``run_dir/history.jsonl``: the time (UTC), pid, host and ``event``, e.g.
    ``{"event": "resume", "step": 1000}`` or ``{"event": "changed", "changed": changed_values(...)}``.
    Written with one ``write`` and fsynced, so a killed process leaves whole lines."""
    line = {"time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "pid": os.getpid(),
            "host": socket.gethostname(), **event}
    path = Path(run_dir) / HISTORY_NAME
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, (json.dumps(line, default=str) + "\n").encode())
        os.fsync(fd)
    finally:
        os.close(fd)


def _is_file(p: Path) -> bool:
    try:
        return p.is_file()
    except OSError:  # a directory we may not look into
        return False


def _is_checkpoint_dir(p: Path) -> bool:
    return _is_file(p / "model.safetensors") and _is_file(p / "config.json")


def _is_checkpoints_folder(p: Path) -> bool:
    """A run's ``checkpoints/`` folder: named so, and holding ``latest`` or ``step-*``, or beside a config.json."""
    if p.name != "checkpoints":
        return False
    try:
        return p.is_dir() and (_is_file(p / "latest") or _is_file(p.parent / "config.json")
                               or any(c.name.startswith("step-") for c in p.iterdir()))
    except OSError:
        return False


def check_not_inside_checkpoint(out_dir, what: str = "--out") -> None:
    """Refuse (:class:`KuosanError`) an output directory that is, or is inside, a checkpoint directory
    (config.json plus model.safetensors) or a run's ``checkpoints/`` folder: outputs written there would
    mix with a checkpoint's files, and pruning old checkpoints would delete them."""
    out = user_path(out_dir, what).absolute()
    try:
        out = out.resolve()
    except (OSError, RuntimeError):
        pass
    for p in (out, *out.parents):
        if _is_checkpoint_dir(p):
            kind = "the checkpoint directory" if p == out else f"the checkpoint directory {p}"
        elif _is_checkpoints_folder(p):
            kind = "a run's checkpoints folder" if p == out else f"the run's checkpoints folder {p}"
        else:
            continue
        raise KuosanError(f"{what} {out_dir} is {'' if p == out else 'inside '}{kind}; choose a directory "
                          "outside it (outputs there would mix with checkpoint files)")
