"""Checkpoint directories, written atomically and verified on load.

Layout of ``RUN/checkpoints/step-0001000/``:
    config.json            everything needed to rebuild the model and its preconditioning
    model.safetensors      raw weights
    ema.safetensors        EMA weights (what sampling uses by default)
    optimizer.safetensors  optimiser tensors (training state only)
    state.json             step, RNG states, optimiser hyper-parameters, size and SHA-256 of each file

A checkpoint is written into a temporary directory, each file flushed and fsynced, then the
directory is renamed into place and only then does ``RUN/checkpoints/latest`` (a one-line text
file) move to it. Loading reads safetensors and JSON only; no code in a file is ever run.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import shutil
import warnings
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from kuosan.errors import KuosanError

__all__ = ["save_checkpoint", "resolve_checkpoint", "read_checkpoint", "list_checkpoints",
           "optimizer_to_tensors", "optimizer_from_tensors", "encode_rng", "decode_rng",
           "atomic_write_text"]

LATEST = "latest"


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


def atomic_write_text(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` so that a crash leaves either the old file or the new one."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    with open(tmp, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    _fsync_dir(path.parent)


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def encode_rng(state: torch.Tensor) -> str:
    return base64.b64encode(state.cpu().numpy().tobytes()).decode()


def decode_rng(text: str) -> torch.Tensor:
    import numpy as np

    return torch.from_numpy(np.frombuffer(base64.b64decode(text), dtype=np.uint8).copy())


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


def list_checkpoints(run_dir: Path) -> list[Path]:
    """Complete checkpoints of a run, oldest first."""
    ckpt_root = Path(run_dir) / "checkpoints"
    if not ckpt_root.is_dir():
        return []
    return sorted(p for p in ckpt_root.iterdir() if p.is_dir() and p.name.startswith("step-"))


def save_checkpoint(run_dir: Path, step: int, *, config: dict, model: dict, ema: dict | None = None,
                    optimizer: torch.optim.Optimizer | None = None, state: dict | None = None,
                    keep: int = 3) -> Path:
    """Write ``RUN/checkpoints/step-NNNNNNN`` atomically, move ``latest``, prune to ``keep``."""
    ckpt_root = Path(run_dir) / "checkpoints"
    ckpt_root.mkdir(parents=True, exist_ok=True)
    final = ckpt_root / f"step-{step:07d}"
    tmp = ckpt_root / f".tmp-step-{step:07d}-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    state = dict(state or {}, step=step)
    (tmp / "config.json").write_text(json.dumps(config, indent=2))
    _write_safetensors(tmp / "model.safetensors", model)
    if ema is not None:
        _write_safetensors(tmp / "ema.safetensors", ema)
    if optimizer is not None:
        tensors, groups = optimizer_to_tensors(optimizer)
        _write_safetensors(tmp / "optimizer.safetensors", tensors)
        state["optimizer_param_groups"] = groups
    state["files"] = {p.name: {"size": p.stat().st_size, "sha256": _sha256(p)}
                      for p in sorted(tmp.iterdir())}
    atomic_write_text(tmp / "state.json", json.dumps(state, indent=1))
    _fsync_dir(tmp)
    if final.exists():  # re-saving the same step (e.g. after a resume): replace it
        shutil.rmtree(final)
    os.replace(tmp, final)
    _fsync_dir(ckpt_root)
    atomic_write_text(ckpt_root / LATEST, final.name + "\n")
    for old in list_checkpoints(run_dir)[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def verify_checkpoint(ckpt: Path) -> str | None:
    """None if ``ckpt`` is complete and intact, else what is wrong."""
    state_path = ckpt / "state.json"
    if not (ckpt / "config.json").is_file() or not (ckpt / "model.safetensors").is_file():
        return "config.json or model.safetensors is missing"
    if not state_path.is_file():
        return None  # an exported model without training state: nothing to check against
    try:
        state = json.loads(state_path.read_text())
    except (OSError, ValueError):
        return "state.json is unreadable"
    for name, meta in state.get("files", {}).items():
        p = ckpt / name
        if not p.is_file():
            return f"{name} is missing"
        if p.stat().st_size != meta["size"]:
            return f"{name} has {p.stat().st_size} bytes, expected {meta['size']}"
        if _sha256(p) != meta["sha256"]:
            return f"{name} does not match its recorded checksum"
    return None


def resolve_checkpoint(path: str | Path, verify: bool = True) -> Path:
    """The checkpoint directory meant by ``path``: a checkpoint itself, or a run directory (then
    its ``latest``, falling back to the newest intact one with a warning if that is damaged)."""
    path = Path(path)
    if not path.exists():
        raise KuosanError(f"checkpoint not found: {path}")
    if (path / "model.safetensors").exists() or (path / "config.json").exists():
        problem = verify_checkpoint(path) if verify else None
        if problem:
            raise KuosanError(f"checkpoint {path} is damaged: {problem}")
        return path
    candidates = list_checkpoints(path)
    latest_file = path / "checkpoints" / LATEST
    if latest_file.is_file():
        named = path / "checkpoints" / latest_file.read_text().strip()
        if named in candidates:
            candidates.remove(named)
            candidates.append(named)
    if not candidates:
        raise KuosanError(f"no checkpoint in {path}: expected a checkpoint directory or a run directory "
                          "with checkpoints/")
    for ckpt in reversed(candidates):
        problem = verify_checkpoint(ckpt) if verify else None
        if problem is None:
            if ckpt != candidates[-1]:
                warnings.warn(f"newest checkpoint {candidates[-1].name} is damaged; using {ckpt.name}",
                              stacklevel=2)
            return ckpt
        warnings.warn(f"skipping damaged checkpoint {ckpt.name}: {problem}", stacklevel=2)
    raise KuosanError(f"every checkpoint in {path} is damaged")


def read_checkpoint(ckpt: Path, *, weights: str = "ema", training_state: bool = False) -> dict:
    """Read a checkpoint directory: {"config", "weights", and with ``training_state`` "model",
    "ema", "optimizer", "state"}. Only JSON and safetensors are parsed."""
    ckpt = Path(ckpt)
    try:
        config = json.loads((ckpt / "config.json").read_text())
    except (OSError, ValueError) as e:
        raise KuosanError(f"cannot read {ckpt / 'config.json'}: {e}") from None
    out: dict = {"config": config, "path": ckpt}
    ema_path = ckpt / "ema.safetensors"
    name = "ema.safetensors" if weights == "ema" and ema_path.is_file() else "model.safetensors"
    try:
        out["weights"] = load_file(str(ckpt / name))
        if training_state:
            out["model"] = load_file(str(ckpt / "model.safetensors"))
            out["ema"] = load_file(str(ema_path)) if ema_path.is_file() else None
            out["state"] = json.loads((ckpt / "state.json").read_text())
            opt_path = ckpt / "optimizer.safetensors"
            out["optimizer"] = (optimizer_from_tensors(load_file(str(opt_path)),
                                                       out["state"]["optimizer_param_groups"])
                                if opt_path.is_file() else None)
    except (OSError, ValueError, KeyError, RuntimeError) as e:
        raise KuosanError(f"cannot read checkpoint {ckpt}: {str(e).splitlines()[0]}") from None
    return out
