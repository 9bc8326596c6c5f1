"""Checkpoint directories, written atomically and verified on load.

Layout of ``RUN/checkpoints/step-0001000/``:
    config.json            everything needed to rebuild the model and its preconditioning
    model.safetensors      raw weights
    ema.safetensors        EMA weights (what sampling uses by default)
    optimizer.safetensors  optimiser tensors (training state only)
    state.json             step, RNG states, optimiser hyper-parameters, size and SHA-256 of each
                           other file, and a SHA-256 of its own content

A checkpoint is written into a temporary directory ``.tmp-step-*``, each file flushed and fsynced,
then the directory is renamed into place (the rename is the commit) and only then does
``RUN/checkpoints/latest`` (a one-line text file) move to it. A crash leaves at worst a ``.tmp-*``
directory, which readers ignore and the next save removes.

Reading picks the newest checkpoint that verifies (sizes, checksums, tensor names, shapes and dtypes
against the architecture in its ``config.json``), warning about each damaged one it skips. Loading
parses safetensors and JSON only: no code in a file is ever run, and pickle files are refused. Every file
a checkpoint names (the fixed names above, state.json's file list, the ``latest`` pointer) must be a
regular file inside it, reached through no symbolic link that leads out; JSON files are read up to 16 MB
and a safetensors header may claim at most 100 MB (and no more than its file holds).

A write that fails (a full disk, a quota, a read-only file system) is one KuosanError line, after the
partial checkpoint is removed and the previous one is left as it was.
"""

from __future__ import annotations

import base64
import binascii
import errno
import hashlib
import json
import os
import re
import shutil
import stat
import warnings
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file
from safetensors.torch import save as _safetensors_bytes

from kuosan.errors import KuosanError

__all__ = ["save_checkpoint", "resolve_checkpoint", "read_checkpoint", "read_config_json", "read_state_json",
           "list_checkpoints",
           "verify_checkpoint", "check_architecture", "optimizer_to_tensors", "optimizer_from_tensors",
           "encode_rng", "decode_rng", "atomic_write_text", "atomic_write_bytes", "write_failure", "file_sha256"]

LATEST = "latest"
_STEP_DIR = re.compile(r"^step-(\d+)$")
_PICKLE_SUFFIXES = (".pt", ".pth", ".pkl", ".pickle", ".bin", ".ckpt")
_JSON_LIMIT = 16 << 20            # config.json, state.json: far more than any real one needs
_HEADER_LIMIT = 100_000_000       # a safetensors JSON header (the safetensors library's own limit)
_WRITE_CHUNK = 8 << 20


# --- durable writes -------------------------------------------------------------------------------

def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _write_durable(path: Path, data: bytes, fsync: bool = True) -> None:
    """Create (or truncate) ``path`` and write ``data`` with ``os.write``; ``fsync``: flush it to the disk.

    Every byte of a checkpoint, sample or cache goes through here, so a full disk always surfaces as an
    OSError with its errno (ENOSPC, EDQUOT, EROFS), never as a library's own exception."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | getattr(os, "O_CLOEXEC", 0), 0o666)
    try:
        view = memoryview(data).cast("B")
        while view:
            view = view[os.write(fd, view[:_WRITE_CHUNK]):]
        if fsync:
            os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write_bytes(path: Path, data: bytes, durable: bool = True) -> Path:
    """Write ``data`` to ``path`` through a temporary file beside it and ``os.replace``: a reader, a crash,
    SIGTERM or KeyboardInterrupt at any moment sees the old file or the new one, never part of one.

    A failed or interrupted write removes the temporary file and re-raises (OSError: see
    :func:`write_failure`). ``durable``: fsync the file before the rename and the folder after it."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        _write_durable(tmp, data, fsync=durable)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    if durable:
        _fsync_dir(path.parent)
    return path


def atomic_write_text(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` so that a crash leaves either the old file or the new one."""
    atomic_write_bytes(path, text.encode())


def write_failure(e: OSError) -> tuple[str, str]:
    """(what happened, what to do) for a failed write, in a few words each: ("disk full", "free space"),
    ("disk quota exceeded", ...), ("read-only file system", ...), else the system's own words."""
    if e.errno == errno.ENOSPC:
        return "disk full", "free space"
    if e.errno == getattr(errno, "EDQUOT", None):
        return "disk quota exceeded", "free space (or raise the quota)"
    if e.errno == errno.EROFS:
        return "read-only file system", "make it writable (or write elsewhere)"
    words = (e.strerror or str(e) or type(e).__name__).splitlines()[0]
    return words[:1].lower() + words[1:], "fix that"


def file_sha256(path: Path) -> str:
    """SHA-256 of a file, read in 1 MiB chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _state_digest(state: dict) -> str:
    """SHA-256 of ``state`` without its own ``sha256`` entry (canonical JSON)."""
    body = {k: v for k, v in state.items() if k != "sha256"}
    return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()


# --- tensors and RNG states -----------------------------------------------------------------------

def encode_rng(state: torch.Tensor) -> str:
    return base64.b64encode(state.cpu().numpy().tobytes()).decode()


def decode_rng(text: str) -> torch.Tensor:
    import numpy as np

    try:
        raw = base64.b64decode(text, validate=True)
    except (binascii.Error, TypeError, ValueError):
        raise KuosanError("a checkpoint's RNG state is not valid base64") from None
    return torch.from_numpy(np.frombuffer(raw, dtype=np.uint8).copy())


def optimizer_to_tensors(opt: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], list]:
    """Flatten an optimiser's state into named tensors plus JSON-able parameter groups."""
    sd = opt.state_dict()
    tensors = {}
    for idx, state in sd["state"].items():
        for key, value in state.items():
            t = value if torch.is_tensor(value) else torch.tensor(value)
            tensors[f"{idx}.{key}"] = t.detach().cpu().contiguous()
    return tensors, sd["param_groups"]


def optimizer_from_tensors(tensors: dict[str, torch.Tensor], param_groups: list) -> dict:
    state: dict[int, dict] = {}
    for name, t in tensors.items():
        idx, key = name.split(".", 1)
        state.setdefault(int(idx), {})[key] = t
    return {"state": state, "param_groups": param_groups}


def _write_safetensors(path: Path, tensors: dict[str, torch.Tensor]) -> None:
    """Serialise in memory, then write and fsync with :func:`_write_durable` (safetensors' own ``save_file``
    reports a full disk as a SafetensorError with the errno only in its text). Costs one file's size in RAM."""
    _write_durable(path, _safetensors_bytes({k: v.detach().cpu().contiguous() for k, v in tensors.items()}))


# --- listing and saving ---------------------------------------------------------------------------

def _step_of(path: Path) -> int | None:
    m = _STEP_DIR.match(path.name)
    return int(m.group(1)) if m else None


def list_checkpoints(run_dir: Path) -> list[Path]:
    """Committed checkpoint directories of a run, oldest (lowest step) first; not yet verified."""
    ckpt_root = Path(run_dir) / "checkpoints"
    if not ckpt_root.is_dir():
        return []
    found = [p for p in ckpt_root.iterdir() if _step_of(p) is not None and p.is_dir()]
    return sorted(found, key=_step_of)


def _remove_leftovers(ckpt_root: Path) -> None:
    """Delete what a crashed writer left behind: ``.tmp-*`` directories and ``.*.tmpPID`` files."""
    for p in ckpt_root.iterdir():
        m = re.match(r"^\.old-(step-\d+)-\d+$", p.name)
        if m and not os.path.lexists(ckpt_root / m.group(1)):  # died mid-swap: the old one is all there is
            os.replace(p, ckpt_root / m.group(1))
        elif p.name.startswith((".tmp-", ".old-")) and p.is_dir():
            shutil.rmtree(p, ignore_errors=True)
        elif p.name.startswith(f".{LATEST}.tmp") and p.is_file():
            p.unlink(missing_ok=True)


def save_checkpoint(run_dir: Path, step: int, *, config: dict, model: dict, ema: dict | None = None,
                    optimizer: torch.optim.Optimizer | None = None, state: dict | None = None,
                    keep: int = 3) -> Path:
    """Write ``RUN/checkpoints/step-NNNNNNN`` atomically, move ``latest``, prune to ``keep``.

    Checkpoints of later steps than ``step`` belong to a continuation that was abandoned (the run
    resumed from an earlier one because they were damaged) and are removed.

    A write that fails (a full disk, a quota, a read-only file system: any OSError) raises a one-line
    KuosanError after removing what this save wrote; the rename of the finished directory is the commit,
    so before it the run is exactly as it was, after it only the ``latest`` pointer may lag (readers
    take the newest intact checkpoint regardless). KeyboardInterrupt cleans up the same way and re-raises.
    """
    ckpt_root = Path(run_dir) / "checkpoints"
    final = ckpt_root / f"step-{step:07d}"
    tmp = ckpt_root / f".tmp-step-{step:07d}-{os.getpid()}"
    old = ckpt_root / f".old-{final.name}-{os.getpid()}"
    state = dict(state or {}, step=step)
    started = False
    try:
        ckpt_root.mkdir(parents=True, exist_ok=True)
        _remove_leftovers(ckpt_root)
        tmp.mkdir()
        started = True
        _write_durable(tmp / "config.json", json.dumps(config, indent=2).encode())
        _write_safetensors(tmp / "model.safetensors", model)
        if ema is not None:
            _write_safetensors(tmp / "ema.safetensors", ema)
        if optimizer is not None:
            tensors, groups = optimizer_to_tensors(optimizer)
            _write_safetensors(tmp / "optimizer.safetensors", tensors)
            state["optimizer_param_groups"] = groups
        state["files"] = {p.name: {"size": p.stat().st_size, "sha256": file_sha256(p)}
                          for p in sorted(tmp.iterdir())}
        state["sha256"] = _state_digest(json.loads(json.dumps(state)))
        _write_durable(tmp / "state.json", json.dumps(state, indent=1).encode())
        _fsync_dir(tmp)
        if os.path.lexists(final):  # re-saving a step (after resuming from an earlier one): swap, then delete
            os.replace(final, old)
        os.replace(tmp, final)  # the commit
        _fsync_dir(ckpt_root)
        atomic_write_text(ckpt_root / LATEST, final.name + "\n")
    except BaseException as e:
        committed = started and not os.path.lexists(tmp)
        _undo_save(tmp, old, final, committed)
        if not isinstance(e, OSError):
            raise
        raise KuosanError(_save_failure_message(e, step, ckpt_root, final, committed)) from None
    shutil.rmtree(old, ignore_errors=True)
    existing = list_checkpoints(run_dir)
    stale = [p for p in existing if _step_of(p) > step]
    kept = [p for p in existing if _step_of(p) <= step]
    for old in stale + kept[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def _undo_save(tmp: Path, old: Path, final: Path, committed: bool) -> None:
    """After a failed save: remove its temporary directory; before the commit, put back the checkpoint
    of the same step that it was replacing; after it, drop that one (the new one stands)."""
    if not committed and os.path.lexists(old) and not os.path.lexists(final):
        try:
            os.replace(old, final)
        except OSError:
            pass  # left as .old-*: a later save removes it, readers skip it
    shutil.rmtree(tmp, ignore_errors=True)
    if committed or os.path.lexists(final):
        shutil.rmtree(old, ignore_errors=True)


def _save_failure_message(e: OSError, step: int, ckpt_root: Path, final: Path, committed: bool) -> str:
    what, fix = write_failure(e)
    head = f"{what} while writing checkpoint step {step} to {ckpt_root}"
    if committed:
        return (f"{head}: {final.name} itself is complete, but the {LATEST!r} pointer could not be moved to it; "
                f"{fix} and resume")
    try:
        earlier = list_checkpoints(ckpt_root.parent)
    except OSError:
        earlier = []
    if earlier:
        return f"{head}: the previous checkpoint (step {_step_of(earlier[-1])}) is untouched; {fix} and resume"
    return f"{head}: nothing was saved and no earlier checkpoint exists; {fix} and start again"


# --- verifying ------------------------------------------------------------------------------------

class _Refused(ValueError):
    """A file a checkpoint names that is not a regular file inside it (the message names it)."""


def _kind(mode: int) -> str:
    for test, word in ((stat.S_ISDIR, "a directory"), (stat.S_ISFIFO, "a FIFO"), (stat.S_ISCHR, "a device"),
                       (stat.S_ISBLK, "a device"), (stat.S_ISSOCK, "a socket")):
        if test(mode):
            return word
    return "not a regular file"


def _inside(path: str, root: str) -> bool:
    return path == root or path.startswith(root.rstrip(os.sep) + os.sep)


def _member(ckpt: Path, name) -> Path:
    """``ckpt / name``, checked: ``name`` is one plain file name (not absolute, no ``..``, no separator)
    and leads, through any symbolic links, to a regular file inside ``ckpt``. Raises _Refused naming it
    (FileNotFoundError when it does not exist)."""
    if (not isinstance(name, str) or name in ("", ".", "..") or "/" in name or "\\" in name or "\0" in name
            or os.path.isabs(name)):
        raise _Refused(f"{name!r} is not a file name inside the checkpoint")
    path = Path(ckpt) / name
    st = os.lstat(path)
    if stat.S_ISLNK(st.st_mode):
        real, root = os.path.realpath(path), os.path.realpath(ckpt)
        if not _inside(real, root):
            raise _Refused(f"{name} is a symbolic link out of the checkpoint (to {os.readlink(path)})")
        st = os.stat(real)
    if not stat.S_ISREG(st.st_mode):
        raise _Refused(f"{name} is {_kind(st.st_mode)}, not a regular file")
    return path


def _open_member(ckpt: Path, name) -> tuple:
    """(open binary file, size) of a checked member; never blocks on a FIFO swapped in after the check."""
    path = _member(ckpt, name)
    fd = os.open(os.path.realpath(path), os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0))
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode):
        os.close(fd)
        raise _Refused(f"{name} is {_kind(st.st_mode)}, not a regular file")
    return os.fdopen(fd, "rb"), st.st_size


def _read_json_member(ckpt: Path, name: str, limit: int = _JSON_LIMIT):
    """A member's JSON, read no further than ``limit`` bytes; _Refused / FileNotFoundError / ValueError."""
    f, size = _open_member(ckpt, name)
    with f:
        if size > limit:
            raise _Refused(f"{name} has {size} bytes, more than the {limit >> 20} MB a checkpoint's JSON may have")
        data = f.read(limit + 1)
    if len(data) > limit:
        raise _Refused(f"{name} is larger than {limit >> 20} MB")
    return json.loads(data.decode())


def _hash_member(ckpt: Path, name: str) -> tuple[int, str]:
    """(size, SHA-256) of a checked member."""
    f, size = _open_member(ckpt, name)
    h = hashlib.sha256()
    with f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return size, h.hexdigest()


def _read_state(ckpt: Path) -> dict:
    """``state.json`` parsed and self-checked; raises ValueError with the reason."""
    try:
        state = _read_json_member(ckpt, "state.json")
    except _Refused:
        raise
    except (OSError, ValueError, UnicodeDecodeError):
        raise ValueError("state.json is unreadable") from None
    if not isinstance(state, dict) or not isinstance(state.get("files", {}), dict):
        raise ValueError("state.json is not a checkpoint state")
    if "sha256" in state and state["sha256"] != _state_digest(state):
        raise ValueError("state.json does not match its recorded checksum")
    return state


def verify_checkpoint(ckpt: Path, require_state: bool = False) -> str | None:
    """None if ``ckpt`` is complete and intact, else what is wrong (one line).

    Checks that config.json and model.safetensors exist, and when ``state.json`` exists (always, for
    a training checkpoint; ``require_state``) every file's size and SHA-256 against it.
    """
    ckpt = Path(ckpt)
    for name in ("config.json", "model.safetensors", "ema.safetensors", "optimizer.safetensors", "state.json"):
        try:
            _member(ckpt, name)
        except FileNotFoundError:
            if name in ("config.json", "model.safetensors"):
                return f"{name} is missing"
            if name == "state.json":
                return "state.json is missing" if require_state else None
        except _Refused as e:
            return str(e)
        except OSError as e:
            return f"{name} cannot be read ({e.strerror or e})"
    try:
        state = _read_state(ckpt)
    except ValueError as e:
        return str(e)
    files = state.get("files", {})
    for name in ("config.json", "model.safetensors"):
        if name not in files:
            return f"state.json records no checksum for {name}"
    for name, meta in files.items():
        try:
            size, digest = int(meta["size"]), str(meta["sha256"])
        except (KeyError, TypeError, ValueError):
            return f"state.json has no valid size and checksum for {name!r}"
        try:
            _member(ckpt, name)
            got_size = os.stat(ckpt / name).st_size
            if got_size != size:
                return f"{name} has {got_size} bytes, expected {size}"
            got_size, got_digest = _hash_member(ckpt, name)
        except FileNotFoundError:
            return f"{name} is missing"
        except _Refused as e:
            return f"in state.json's file list: {e}"
        except OSError as e:
            return f"{name} cannot be read ({e.strerror or e})"
        if got_size != size:
            return f"{name} has {got_size} bytes, expected {size}"
        if got_digest != digest:
            return f"{name} does not match its recorded checksum"
    return None


def _from_run_dir(run: Path, require_state: bool) -> Path:
    """The newest intact checkpoint of a run directory, warning about damaged newer ones."""
    candidates = list_checkpoints(run)
    ckpt_root = run / "checkpoints"
    latest_file = ckpt_root / LATEST
    if os.path.lexists(latest_file):
        why = ""
        try:
            f, _ = _open_member(ckpt_root, LATEST)
            with f:
                named = f.read(4096).decode().strip()
        except _Refused as e:
            named, why = None, f" ({e}; not read)"
        except (OSError, UnicodeDecodeError):
            named = None
        if named is None or not _STEP_DIR.match(named) or not (ckpt_root / named).is_dir():
            warnings.warn(f"{latest_file} does not name a checkpoint{why}; using the newest intact one",
                          stacklevel=3)
    if not candidates:
        raise KuosanError(f"no checkpoint in {run}: expected a checkpoint directory (with model.safetensors) "
                          "or a training run directory (with checkpoints/step-*)")
    for ckpt in reversed(candidates):
        problem = (f"it is a symbolic link out of the run (to {os.readlink(ckpt)})"
                   if os.path.islink(ckpt) and not _inside(os.path.realpath(ckpt), os.path.realpath(ckpt_root))
                   else verify_checkpoint(ckpt, require_state=require_state))
        if problem is None:
            return ckpt
        warnings.warn(f"skipping damaged checkpoint {ckpt.name}: {problem}", stacklevel=3)
    raise KuosanError(f"every checkpoint in {run} is damaged ({len(candidates)} tried); "
                      "see the warnings above")


def resolve_checkpoint(path: str | Path, verify: bool = True, require_state: bool = False) -> Path:
    """The checkpoint directory meant by ``path``: a checkpoint itself, or a run directory, its
    ``checkpoints/`` folder or its ``checkpoints/latest`` file (then the newest intact checkpoint,
    skipping damaged ones with a warning). ``require_state``: it must hold training state."""
    path = Path(path)
    if not path.exists():
        raise KuosanError(f"checkpoint not found: {path}")
    if path.is_file() and path.name == LATEST and path.parent.name == "checkpoints":
        path = path.parent.parent
    elif path.is_dir() and path.name == "checkpoints" and not (path / "model.safetensors").exists():
        path = path.parent
    if path.is_file():
        raise KuosanError(f"{path} is a file; give a checkpoint directory (with model.safetensors and "
                          "config.json) or a training run directory")
    if not path.is_dir():
        raise KuosanError(f"{path} is {_kind(path.stat().st_mode)}; give a checkpoint directory (with "
                          "model.safetensors and config.json) or a training run directory")
    if (path / "checkpoints").is_dir() and not (path / "model.safetensors").exists():
        if verify or not list_checkpoints(path):
            return _from_run_dir(path, require_state)
        return list_checkpoints(path)[-1]
    if not (path / "model.safetensors").exists():
        pickles = sorted(p.name for p in path.iterdir() if p.suffix.lower() in _PICKLE_SUFFIXES)
        if pickles:
            raise KuosanError(f"{path} holds {', '.join(pickles)} but no model.safetensors: kuosan loads only "
                              "safetensors and JSON, never pickle files (they can run code)")
        if not (path / "config.json").exists() and not (path / "state.json").exists():
            raise KuosanError(f"no checkpoint in {path}: expected model.safetensors and config.json, or a "
                              "training run directory with checkpoints/")
    problem = verify_checkpoint(path, require_state=require_state) if verify else None
    if problem:
        raise KuosanError(f"checkpoint {path} is damaged: {problem}")
    return path


# --- reading --------------------------------------------------------------------------------------

def _load_safetensors(path: Path) -> dict[str, torch.Tensor]:
    """Tensors of a safetensors file; anything else (a pickle, a truncated file, a FIFO, a symbolic link out of
    the checkpoint directory, a header that claims more bytes than is sane or than the file has) is refused.

    The safetensors library checks the header length too (at most 100 MB, within the file); checking it
    here first gives the same one-line error whatever that library's version says."""
    path = Path(path)
    try:
        f, size = _open_member(path.parent, path.name)
        with f:
            head = f.read(8)
    except FileNotFoundError:
        raise KuosanError(f"{path} is missing") from None
    except _Refused as e:
        raise KuosanError(f"refusing {path}: {e}") from None
    except OSError as e:
        raise KuosanError(f"cannot read {path}: {e.strerror or e}") from None
    n = int.from_bytes(head, "little") if len(head) == 8 else None
    problem = ("shorter than a safetensors header" if n is None else
               f"its header claims {n} bytes, more than the {_HEADER_LIMIT} allowed" if n > _HEADER_LIMIT else
               f"its header claims {n} bytes, the file has {size}" if 8 + n > size else None)
    if problem is None:
        try:
            return load_file(os.path.realpath(path))
        except (SafetensorError, OSError, ValueError, RuntimeError) as e:
            text = str(e).strip().splitlines()
            problem = text[0] if text else type(e).__name__
    raise KuosanError(f"{path} is not a readable safetensors file ({problem}); "
                      "kuosan never unpickles checkpoint files")


def check_architecture(expected: dict[str, torch.Tensor], tensors: dict[str, torch.Tensor], name: str) -> None:
    """Raise KuosanError unless ``tensors`` has exactly the names, shapes and dtypes of ``expected`` (the
    state dict of the model config.json describes, e.g. built on the meta device by :mod:`kuosan.model`)."""
    missing = sorted(set(expected) - set(tensors))
    extra = sorted(set(tensors) - set(expected))
    if missing or extra:
        parts = ([f"missing {len(missing)} (e.g. {missing[0]})"] if missing else []) + \
                ([f"{len(extra)} unexpected (e.g. {extra[0]})"] if extra else [])
        raise KuosanError(f"{name} does not fit the architecture in config.json: tensors {', '.join(parts)}")
    for key, want in expected.items():
        got = tensors[key]
        if tuple(got.shape) != tuple(want.shape) or got.dtype != want.dtype:
            raise KuosanError(f"{name} does not fit the architecture in config.json: {key} is "
                              f"{list(got.shape)} {str(got.dtype).replace('torch.', '')}, the config needs "
                              f"{list(want.shape)} {str(want.dtype).replace('torch.', '')}")


def read_config_json(ckpt: Path) -> dict:
    """A checkpoint's ``config.json``, read confined and size-capped (:class:`kuosan.records.RunConfig`
    types it); one-line KuosanError otherwise."""
    ckpt = Path(ckpt)
    try:
        config = _read_json_member(ckpt, "config.json")
    except _Refused as e:
        raise KuosanError(f"refusing {ckpt / 'config.json'}: {e}") from None
    except (OSError, ValueError, UnicodeDecodeError) as e:
        raise KuosanError(f"cannot read {ckpt / 'config.json'}: {str(e).splitlines()[0]}") from None
    if not isinstance(config, dict):
        raise KuosanError(f"{ckpt / 'config.json'} is not a kuosan checkpoint config")
    return config


def read_state_json(ckpt: Path) -> dict:
    """A checkpoint's ``state.json``, confined and checked against its own digest; one-line KuosanError."""
    try:
        return _read_state(Path(ckpt))
    except ValueError as e:
        raise KuosanError(f"cannot read the training state of {ckpt}: {e}") from None


def read_checkpoint(ckpt: Path, *, weights: str = "ema", training_state: bool = False,
                    expected=None) -> dict:
    """Read a checkpoint directory: {"config", "weights", and with ``training_state`` "model",
    "ema", "optimizer", "state"}. Only JSON and safetensors are parsed. ``expected``: a function of the
    config giving the state dict the weights must match (names, shapes, dtypes), or None when the config
    alone does not fix the tensors; :func:`kuosan.model.read_model_checkpoint` passes the model's."""
    ckpt = Path(ckpt)
    config = read_config_json(ckpt)
    expected = expected(config) if expected is not None else None
    out: dict = {"config": config, "path": ckpt}
    ema_path = ckpt / "ema.safetensors"
    name = "ema.safetensors" if weights == "ema" and os.path.lexists(ema_path) else "model.safetensors"
    out["weights"] = _load_safetensors(ckpt / name)
    if expected is not None:
        check_architecture(expected, out["weights"], f"{ckpt / name}")
    if not training_state:
        return out
    out["model"] = out["weights"] if name == "model.safetensors" else _load_safetensors(ckpt / "model.safetensors")
    out["ema"] = out["weights"] if name == "ema.safetensors" else (
        _load_safetensors(ema_path) if os.path.lexists(ema_path) else None)
    if expected is not None:
        for key, label in (("model", "model.safetensors"), ("ema", "ema.safetensors")):
            if out[key] is not None and out[key] is not out["weights"]:
                check_architecture(expected, out[key], f"{ckpt / label}")
    try:
        out["state"] = _read_state(ckpt)
    except ValueError as e:
        raise KuosanError(f"cannot resume from {ckpt}: {e}") from None
    opt_path = ckpt / "optimizer.safetensors"
    try:
        out["optimizer"] = (optimizer_from_tensors(_load_safetensors(opt_path),
                                                   out["state"]["optimizer_param_groups"])
                            if os.path.lexists(opt_path) else None)
    except (KeyError, ValueError) as e:
        raise KuosanError(f"cannot read the optimiser state in {ckpt}: {e}") from None
    return out
