"""A run's two records, as typed objects: ``config.json`` (:class:`RunConfig`: how to rebuild the model, what
it was trained on, how it samples) and a checkpoint's ``state.json`` (:class:`TrainState`: where training
stands, the generators' states, the files and their checksums).

This module is their one owner: :mod:`kuosan.checkpoint` writes and reads the files through it, and everyone
else gets these objects. ``to_dict`` gives exactly the JSON that is written, ``from_dict`` reads it back and
checks it, with one line naming what is wrong. Format version 1 is the layout kuosan has always written
(tests/fixtures holds checkpoints made before these records existed); a file of a newer version is refused
with a message to upgrade, rather than misread. Unknown keys are kept, so nothing a newer writer added is
lost when an older reader rewrites a record.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kuosan.checkpoint import file_sha256, read_config_json, read_state_json
from kuosan.config import SampleConfig, sample_config_from
from kuosan.errors import KuosanError

__all__ = ["RUN_FORMAT", "AUTOENCODER_FORMAT", "VERSION", "NetworkSpec", "DataRecord", "RunConfig", "TrainState",
           "read_run_config", "read_train_state", "recorded_sha256"]

RUN_FORMAT = "kuosan-checkpoint"           # a diffusion model's run
AUTOENCODER_FORMAT = "kuosan-autoencoder"  # an autoencoder's run (latent diffusion)
VERSION = 1                                # the newest layout this code writes and reads


def _mapping(value, where: str) -> dict:
    if not isinstance(value, dict):
        raise KuosanError(f"{where} must be a JSON object, got {type(value).__name__}")
    return value


@dataclass(frozen=True)
class NetworkSpec:
    kind: str                              # a network of kuosan.nets.build.NETWORKS, or "diffusers-unet2d"
    fields: dict                           # its constructor's keywords (channels, resolution, classes, widths…)

    @classmethod
    def from_dict(cls, data, where: str = "network") -> "NetworkSpec":
        data = _mapping(data, where)
        if not isinstance(data.get("kind"), str):
            raise KuosanError(f"{where}.kind must name a network, got {data.get('kind')!r}")
        return cls(kind=data["kind"], fields=dict(_mapping(data.get("fields", {}), f"{where}.fields")))

    def to_dict(self) -> dict:
        return {"kind": self.kind, "fields": self.fields}

    @property
    def num_classes(self) -> int:
        return int(self.fields.get("num_classes", 0) or 0)

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """(channels, height, width) of what the network denoises: pixels, or latents."""
        return int(self.fields["in_channels"]), int(self.fields["resolution"]), int(self.fields["resolution"])


@dataclass(frozen=True)
class DataRecord:
    spec: str | None = None                # the data set spec it was trained on (fashion-mnist, a folder, …)
    class_names: tuple = ()                # one name per class, in label order
    resolution: int | None = None          # side of the training images (pixels)
    channels: int | None = None            # 1 or 3
    num_classes: int | None = None         # classes the model takes (0: unconditional)
    extra: dict = field(default_factory=dict)  # other keys, kept as they were (e.g. the data set's name)

    @classmethod
    def from_dict(cls, data, where: str = "data") -> "DataRecord":
        data = dict(_mapping(data or {}, where))
        names = data.pop("class_names", [])
        if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
            raise KuosanError(f"{where}.class_names must be a list of names")
        known = {k: data.pop(k) for k in ("spec", "resolution", "channels", "num_classes") if k in data}
        return cls(class_names=tuple(names), **known, extra=data)

    def to_dict(self) -> dict:
        out = {"spec": self.spec, **self.extra, "class_names": list(self.class_names),
               "resolution": self.resolution, "channels": self.channels, "num_classes": self.num_classes}
        return {k: v for k, v in out.items() if v is not None}


_SECTIONS = ("model", "diffusion", "sample", "train")
_OPTIONAL = ("autoencoder", "lora", "parent", "source", "latent", "losses")


@dataclass(frozen=True)
class RunConfig:
    """``config.json`` of a run and of each of its checkpoints."""
    network: NetworkSpec                   # the network to build
    data: DataRecord                       # what it was trained on
    sections: dict                         # the config sections as trained: model, diffusion, sample, train
    autoencoder: dict | None = None        # latent models: path, checksum and scale of their autoencoder
    lora: dict | None = None               # LoRA runs: rank, alpha, layers, base checksum
    parent: dict | None = None             # fine-tuned runs: the parent checkpoint's path and checksum
    source: dict | None = None             # models read from another library's directory (diffusers)
    latent: dict | None = None             # autoencoders: the measured latent scale
    losses: dict | None = None             # autoencoders: the loss terms it was trained with
    extra: dict = field(default_factory=dict)  # keys of a newer writer, kept
    format: str = RUN_FORMAT               # RUN_FORMAT or AUTOENCODER_FORMAT
    version: int = VERSION

    @classmethod
    def from_dict(cls, data, where: str = "config.json") -> "RunConfig":
        data = dict(_mapping(data, where))
        fmt, version = data.pop("format", None), data.pop("version", None)
        if fmt not in (RUN_FORMAT, AUTOENCODER_FORMAT):
            raise KuosanError(f"{where} is not a kuosan checkpoint config (format {fmt!r})")
        if not isinstance(version, int) or isinstance(version, bool) or version < 1:
            raise KuosanError(f"{where} has no valid format version (got {version!r})")
        if version > VERSION:
            raise KuosanError(f"{where} was written by a newer kuosan (format version {version}; this one reads "
                              f"up to {VERSION}): upgrade kuosan to load it")
        if "network" not in data:
            raise KuosanError(f"{where} lacks 'network'; is this a kuosan checkpoint?")
        network = NetworkSpec.from_dict(data.pop("network"), f"{where}: network")
        record = DataRecord.from_dict(data.pop("data", {}), f"{where}: data")
        sections = {k: dict(_mapping(data.pop(k), f"{where}: {k}")) for k in _SECTIONS if k in data}
        optional = {k: data.pop(k) for k in _OPTIONAL if k in data}
        return cls(network=network, data=record, sections=sections, **optional, extra=data, format=fmt,
                   version=version)

    def to_dict(self) -> dict:
        out: dict[str, Any] = {"format": self.format, "version": self.version, "network": self.network.to_dict()}
        out.update(self.sections)
        out["data"] = self.data.to_dict()
        out.update({k: getattr(self, k) for k in _OPTIONAL if getattr(self, k) is not None})
        return {**out, **self.extra}

    def replace(self, **changes) -> "RunConfig":
        return dataclasses.replace(self, **changes)

    @property
    def is_autoencoder(self) -> bool:
        return self.format == AUTOENCODER_FORMAT

    @property
    def sample(self) -> SampleConfig:
        """How it samples by default: its ``sample`` section over kuosan's defaults."""
        return sample_config_from(self.sections.get("sample"))

    @property
    def diffusion(self) -> dict:
        return self.sections.get("diffusion", {})

    @property
    def train(self) -> dict:
        return self.sections.get("train", {})


_STATE_KEYS = ("step", "nonfinite", "elapsed", "seed", "data_position", "window_loss", "window_n", "rng_noise",
               "rng_torch", "rng_cuda", "optimizer_param_groups", "files", "sha256")


@dataclass(frozen=True)
class TrainState:
    """``state.json`` of a checkpoint: where training stands and what the checkpoint's files are."""
    step: int                              # optimiser steps done
    files: dict = field(default_factory=dict)  # file name -> {"size", "sha256"} of every file beside it
    sha256: str | None = None              # digest of the record itself (written last; see checkpoint.py)
    seed: int | None = None                # the run's seed
    elapsed: float | None = None           # seconds of training so far
    nonfinite: int | None = None           # non-finite steps skipped so far
    data_position: int | None = None       # images drawn so far
    window_loss: float | None = None       # the metrics line's running sum, so a resume continues it
    window_n: int | None = None
    rng_noise: str | None = None           # generator states, base64 (checkpoint.encode_rng)
    rng_torch: str | None = None
    rng_cuda: str | None = None
    optimizer_param_groups: list | None = None  # hyper-parameters of the optimiser's groups
    extra: dict = field(default_factory=dict)   # other keys (an autoencoder's discriminator state, …), kept

    @classmethod
    def from_dict(cls, data, where: str = "state.json") -> "TrainState":
        data = dict(_mapping(data, where))
        step = data.get("step")
        if not isinstance(step, int) or isinstance(step, bool) or step < 0:
            raise KuosanError(f"{where}: step must be a whole number >= 0, got {step!r}")
        files = _mapping(data.get("files", {}), f"{where}: files")
        known = {k: data.pop(k) for k in _STATE_KEYS if k in data}
        known["files"] = dict(files)
        return cls(**known, extra=data)

    def to_dict(self) -> dict:
        """The JSON of state.json, in the order kuosan writes it (the digest is over this)."""
        out = {k: getattr(self, k) for k in _STATE_KEYS[1:-2] if getattr(self, k) is not None}
        out.update(self.extra)
        out["step"] = self.step
        if self.optimizer_param_groups is not None:
            out["optimizer_param_groups"] = out.pop("optimizer_param_groups")
        if self.files:
            out["files"] = self.files
        if self.sha256 is not None:
            out["sha256"] = self.sha256
        return out

    def get(self, key: str, default=None):
        """Dict-style access for the few readers of optional keys (``state.get("window_n", 0)``)."""
        value = getattr(self, key, None) if key in _STATE_KEYS else self.extra.get(key)
        return default if value is None else value


# --- reading them from a checkpoint directory --------------------------------------------------------

def read_run_config(ckpt) -> RunConfig:
    """The typed ``config.json`` of checkpoint directory ``ckpt``."""
    return RunConfig.from_dict(read_config_json(Path(ckpt)), where=str(Path(ckpt) / "config.json"))


def read_train_state(ckpt) -> TrainState | None:
    """The typed ``state.json`` of ``ckpt`` (verified against its digest), or None for an export without one."""
    ckpt = Path(ckpt)
    if not (ckpt / "state.json").exists():
        return None
    return TrainState.from_dict(read_state_json(ckpt), where=str(ckpt / "state.json"))


def recorded_sha256(ckpt, name: str) -> str:
    """The SHA-256 of file ``name`` of ``ckpt`` as its state.json records it (verified when the checkpoint was
    resolved), else computed."""
    state = read_train_state(ckpt)
    entry = state.files.get(name) if state is not None else None
    if isinstance(entry, dict) and isinstance(entry.get("sha256"), str):
        return entry["sha256"]
    return file_sha256(Path(ckpt) / name)
