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
parses safetensors and JSON only: no code in a file is ever run, and pickle files are refused.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import os
import re
import shutil
import warnings
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from kuosan.errors import KuosanError

__all__ = ["save_checkpoint", "resolve_checkpoint", "read_checkpoint", "list_checkpoints",
           "verify_checkpoint", "check_architecture", "optimizer_to_tensors", "optimizer_from_tensors",
           "encode_rng", "decode_rng", "atomic_write_text", "file_sha256"]

LATEST = "latest"
_STEP_DIR = re.compile(r"^step-(\d+)$")
_PICKLE_SUFFIXES = (".pt", ".pth", ".pkl", ".pickle", ".bin", ".ckpt")


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


def _write_durable(path: Path, data: bytes) -> None:
    with open(path, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def atomic_write_text(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` so that a crash leaves either the old file or the new one."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    _write_durable(tmp, text.encode())
    os.replace(tmp, path)
    _fsync_dir(path.parent)


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
    save_file({k: v.detach().cpu().contiguous() for k, v in tensors.items()}, str(path))
    with open(path, "rb+") as f:
        os.fsync(f.fileno())


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
        if p.name.startswith((".tmp-", ".old-")) and p.is_dir():
            shutil.rmtree(p, ignore_errors=True)
        elif p.name.startswith(f".{LATEST}.tmp") and p.is_file():
            p.unlink(missing_ok=True)


def save_checkpoint(run_dir: Path, step: int, *, config: dict, model: dict, ema: dict | None = None,
                    optimizer: torch.optim.Optimizer | None = None, state: dict | None = None,
                    keep: int = 3) -> Path:
    """Write ``RUN/checkpoints/step-NNNNNNN`` atomically, move ``latest``, prune to ``keep``.

    Checkpoints of later steps than ``step`` belong to a continuation that was abandoned (the run
    resumed from an earlier one because they were damaged) and are removed.
    """
    ckpt_root = Path(run_dir) / "checkpoints"
    ckpt_root.mkdir(parents=True, exist_ok=True)
    _remove_leftovers(ckpt_root)
    final = ckpt_root / f"step-{step:07d}"
    tmp = ckpt_root / f".tmp-step-{step:07d}-{os.getpid()}"
    tmp.mkdir()
    state = dict(state or {}, step=step)
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
    if final.exists():  # re-saving a step (after resuming from an earlier one): swap, then delete
        old = ckpt_root / f".old-{final.name}-{os.getpid()}"
        os.replace(final, old)
        os.replace(tmp, final)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, final)
    _fsync_dir(ckpt_root)
    atomic_write_text(ckpt_root / LATEST, final.name + "\n")
    existing = list_checkpoints(run_dir)
    stale = [p for p in existing if _step_of(p) > step]
    kept = [p for p in existing if _step_of(p) <= step]
    for old in stale + kept[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return final


# --- verifying ------------------------------------------------------------------------------------

def _read_state(ckpt: Path) -> dict:
    """``state.json`` parsed and self-checked; raises ValueError with the reason."""
    try:
        state = json.loads((ckpt / "state.json").read_text())
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
    for name in ("config.json", "model.safetensors"):
        if not (ckpt / name).is_file():
            return f"{name} is missing"
    if not (ckpt / "state.json").is_file():
        return "state.json is missing" if require_state else None
    try:
        state = _read_state(ckpt)
    except ValueError as e:
        return str(e)
    files = state.get("files", {})
    for name in ("config.json", "model.safetensors"):
        if name not in files:
            return f"state.json records no checksum for {name}"
    for name, meta in files.items():
        p = ckpt / name
        if not p.is_file():
            return f"{name} is missing"
        try:
            size, digest = int(meta["size"]), str(meta["sha256"])
        except (KeyError, TypeError, ValueError):
            return f"state.json has no valid size and checksum for {name}"
        if p.stat().st_size != size:
            return f"{name} has {p.stat().st_size} bytes, expected {size}"
        if file_sha256(p) != digest:
            return f"{name} does not match its recorded checksum"
    return None


def _from_run_dir(run: Path, require_state: bool) -> Path:
    """The newest intact checkpoint of a run directory, warning about damaged newer ones."""
    candidates = list_checkpoints(run)
    latest_file = run / "checkpoints" / LATEST
    if latest_file.exists():
        try:
            named = latest_file.read_text().strip()
        except (OSError, UnicodeDecodeError):
            named = None
        if named is None or not _STEP_DIR.match(named) or not (run / "checkpoints" / named).is_dir():
            warnings.warn(f"{latest_file} does not name a checkpoint; using the newest intact one", stacklevel=3)
    if not candidates:
        raise KuosanError(f"no checkpoint in {run}: expected a checkpoint directory (with model.safetensors) "
                          "or a training run directory (with checkpoints/step-*)")
    for ckpt in reversed(candidates):
        problem = verify_checkpoint(ckpt, require_state=require_state)
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
    """Tensors of a safetensors file; anything else (a pickle, a truncated file) is refused."""
    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError, RuntimeError) as e:
        text = str(e).strip().splitlines()
        raise KuosanError(f"{path} is not a readable safetensors file ({text[0] if text else type(e).__name__}); "
                          "kuosan never unpickles checkpoint files") from None


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


def read_checkpoint(ckpt: Path, *, weights: str = "ema", training_state: bool = False,
                    expected=None) -> dict:
    """Read a checkpoint directory: {"config", "weights", and with ``training_state`` "model",
    "ema", "optimizer", "state"}. Only JSON and safetensors are parsed. ``expected``: a function of the
    config giving the state dict the weights must match (names, shapes, dtypes), or None when the config
    alone does not fix the tensors; :func:`kuosan.model.read_model_checkpoint` passes the model's."""
    ckpt = Path(ckpt)
    try:
        config = json.loads((ckpt / "config.json").read_text())
    except (OSError, ValueError, UnicodeDecodeError) as e:
        raise KuosanError(f"cannot read {ckpt / 'config.json'}: {str(e).splitlines()[0]}") from None
    if not isinstance(config, dict):
        raise KuosanError(f"{ckpt / 'config.json'} is not a kuosan checkpoint config")
    expected = expected(config) if expected is not None else None
    out: dict = {"config": config, "path": ckpt}
    ema_path = ckpt / "ema.safetensors"
    name = "ema.safetensors" if weights == "ema" and ema_path.is_file() else "model.safetensors"
    out["weights"] = _load_safetensors(ckpt / name)
    if expected is not None:
        check_architecture(expected, out["weights"], f"{ckpt / name}")
    if not training_state:
        return out
    out["model"] = out["weights"] if name == "model.safetensors" else _load_safetensors(ckpt / "model.safetensors")
    out["ema"] = out["weights"] if name == "ema.safetensors" else (
        _load_safetensors(ema_path) if ema_path.is_file() else None)
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
                            if opt_path.is_file() else None)
    except (KeyError, ValueError) as e:
        raise KuosanError(f"cannot read the optimiser state in {ckpt}: {e}") from None
    return out
