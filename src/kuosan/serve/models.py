"""The models a server offers: the ``--checkpoint`` one and every run under ``--runs``, by name.

A name is the model's folder relative to ``--runs`` (``fm``, ``students/fm-2step``); a request names a model,
and only names found by scanning resolve, so no path from a request reaches the file system. Loaded
pipelines are kept in a small least-recently-used cache (loading parses JSON and safetensors only: no code in
a checkpoint runs). The card (data set, steps, parameters, evaluation report) reads the model's own files.
"""

from __future__ import annotations

import json
import os
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

from kuosan.errors import KuosanError

__all__ = ["ModelEntry", "Loaded", "Models"]

_JSON_LIMIT = 4 << 20       # config.json, state.json, report.json: far bigger than real ones
_SCAN_DEPTH = 4             # folders below --runs that are searched for runs
_SKIP = {"checkpoints", "__pycache__", "node_modules"}
_RESCAN = 3.0               # seconds a scan of --runs is reused (a request names a model; new runs appear soon)


@dataclass(frozen=True)
class ModelEntry:
    name: str                              # what requests and the page call it
    path: Path                             # the directory given to kuosan.load (a run, checkpoint or diffusers dir)
    kind: str                              # "kuosan" or "diffusers"


@dataclass(frozen=True)
class Loaded:
    entry: ModelEntry                      # which model
    pipe: object                           # the kuosan.pipeline.Pipeline
    checksum: str                          # SHA-256 of the weights file in use ("" when unknown)
    denoiser: object = None                # what requests sample with: the backend's (None: pipe.precond)


def read_json(path: Path, limit: int = _JSON_LIMIT):
    """A small JSON file, or None when it is missing, too big, a link or not JSON."""
    try:
        if path.is_symlink() or not path.is_file() or path.stat().st_size > limit:
            return None
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError, UnicodeDecodeError):
        return None


def _kind_of(d: Path) -> str | None:
    """"kuosan" for a diffusion run or checkpoint directory, "diffusers" for a diffusers model, else None."""
    from kuosan.interop.diffusers import is_diffusers_dir

    cfg = read_json(d / "config.json")
    if isinstance(cfg, dict) and cfg.get("format") == "kuosan-checkpoint":
        if (d / "checkpoints").is_dir() or (d / "model.safetensors").is_file():
            return "kuosan"
    if is_diffusers_dir(d):
        return "diffusers"
    return None


def scan_runs(root: Path, skip: tuple[Path, ...] = ()) -> list[tuple[str, Path, str]]:
    """(name, directory, kind) of every model folder under ``root``, sorted by name; links are not followed,
    ``checkpoints/`` folders and hidden ones are not entered, nor anything under ``skip``."""
    from kuosan.checkpoint import resolve_checkpoint

    found, root = [], root.resolve()
    skip = tuple(p.resolve() for p in skip)
    for here, dirs, _ in os.walk(root, followlinks=False):
        d = Path(here)
        depth = len(d.relative_to(root).parts)
        dirs[:] = sorted(x for x in dirs if x not in _SKIP and not x.startswith(".") and depth < _SCAN_DEPTH
                         and (d / x) not in skip)
        kind = _kind_of(d)
        if kind is None:
            continue
        dirs[:] = []  # a model's own subfolders (unet/, eval/) are not other models
        if kind == "kuosan":
            try:
                resolve_checkpoint(d, verify=False)
            except KuosanError:
                continue
        found.append((d.relative_to(root).as_posix() if d != root else d.name, d, kind))
    return sorted(found)


def weights_checksum(loaded_path: Path, kind: str) -> str:
    """SHA-256 of the weights a model samples with: as its state.json records it, else hashed here."""
    from kuosan.checkpoint import file_sha256

    if kind == "diffusers":
        unet = loaded_path / "unet" if (loaded_path / "unet").is_dir() else loaded_path
        files = sorted(unet.glob("*.safetensors"))
        return file_sha256(files[0]) if files else ""
    name = "ema.safetensors" if (loaded_path / "ema.safetensors").is_file() else "model.safetensors"
    state = read_json(loaded_path / "state.json") or {}
    recorded = ((state.get("files") or {}).get(name) or {}).get("sha256") if isinstance(state, dict) else None
    if isinstance(recorded, str) and len(recorded) == 64:
        return recorded
    return file_sha256(loaded_path / name) if (loaded_path / name).is_file() else ""


class Models:
    """The ``--checkpoint`` model (always first) and the runs under ``--runs``; loads them on demand."""

    def __init__(self, checkpoint: str | Path, runs: str | Path | None = None, *, device: str = "auto",
                 max_loaded: int = 2, skip: tuple[Path, ...] = ()):
        self.runs = None if runs is None else Path(runs)
        if self.runs is not None and not self.runs.is_dir():
            raise KuosanError(f"--runs {runs} is not a directory")
        self.device, self.max_loaded, self.skip = device, max(1, int(max_loaded)), skip
        self.default = self._default_entry(Path(checkpoint))
        self._loaded: OrderedDict[str, Loaded] = OrderedDict()
        self._lock = threading.Lock()
        self._scanned: tuple[float, list] = (-_RESCAN, [])
        self._loading: dict[str, threading.Lock] = {}

    def _default_entry(self, path: Path) -> ModelEntry:
        kind = _kind_of(path)
        if kind is None:
            from kuosan.checkpoint import resolve_checkpoint

            resolve_checkpoint(path, verify=False)  # names what is wrong with it, in one line
            kind = "kuosan"
        name = path.resolve().name
        if self.runs is not None and self.runs.resolve() in path.resolve().parents:
            name = path.resolve().relative_to(self.runs.resolve()).as_posix()
        return ModelEntry(name, path, kind)

    def entries(self) -> list[ModelEntry]:
        """Every model, the default first, then the runs by name (rescanned every few seconds: new runs appear)."""
        when, found = self._scanned
        if self.runs is not None and time.monotonic() - when >= _RESCAN:
            found = [ModelEntry(name, d, kind) for name, d, kind in scan_runs(self.runs, self.skip)
                     if d.resolve() != self.default.path.resolve() and name != self.default.name]
            self._scanned = (time.monotonic(), found)
        return [self.default, *found]

    def entry(self, name) -> ModelEntry:
        """The model called ``name`` ("" or None: the default); only scanned names resolve."""
        if name in (None, "", self.default.name):
            return self.default
        if not isinstance(name, str) or len(name) > 300:
            raise KuosanError("model must be the name of a model the page lists")
        for e in self.entries():
            if e.name == name:
                return e
        raise KuosanError(f"unknown model {name!r}: choose one the page lists (runs under --runs)")

    def load(self, name) -> Loaded:
        """The loaded model ``name``: from the cache, else loaded once (other callers wait for it)."""
        entry = self.entry(name)
        with self._lock:
            if entry.name in self._loaded:
                self._loaded.move_to_end(entry.name)
                return self._loaded[entry.name]
            gate = self._loading.setdefault(entry.name, threading.Lock())
        with gate:
            with self._lock:
                if entry.name in self._loaded:
                    return self._loaded[entry.name]
            loaded = self._load(entry)
            with self._lock:
                self._loaded[entry.name] = loaded
                while len(self._loaded) > self.max_loaded:
                    self._loaded.popitem(last=False)  # a worker still using it keeps its own reference
        return loaded

    def _load(self, entry: ModelEntry) -> Loaded:
        import kuosan

        from kuosan.interop.onnx import BatchDispatch, default_backend, runtime_denoiser

        pipe = kuosan.load(entry.path, device=self.device)
        where = pipe.path if entry.kind == "kuosan" else entry.path
        den = runtime_denoiser(pipe, default_backend())
        if isinstance(den, BatchDispatch):  # export it now, while the page is read, not at the first click
            threading.Thread(target=den.prepare, name=f"prepare-{entry.name}", daemon=True).start()
        return Loaded(entry, pipe, weights_checksum(Path(where), entry.kind), den)

    def loaded_names(self) -> list[str]:
        with self._lock:
            return list(self._loaded)

    def match(self, params: dict) -> str | None:
        """The name of the model a PNG's parameters came from: by name, else by the checksum of its weights
        (so a PNG that `kuosan sample` wrote, naming a path, finds its model here too)."""
        from kuosan.checkpoint import resolve_checkpoint

        entries = self.entries()
        name, checksum = params.get("model"), params.get("checksum")
        if any(e.name == name for e in entries):
            return name
        for e in entries:
            if not isinstance(checksum, str) or e.kind != "kuosan":
                continue  # hashing a diffusers model's weights on a drop would take too long
            try:
                if weights_checksum(resolve_checkpoint(e.path, verify=False), "kuosan") == checksum:
                    return e.name
            except (KuosanError, OSError):
                continue
        return None
