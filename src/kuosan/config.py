"""Configuration: frozen dataclasses with a comment per field, loadable from a JSON, YAML or TOML
file and overridable from the command line (``--train.lr 1e-4`` or, when the name is unique,
``--lr 1e-4``). No class names as strings, no code execution: values are plain data.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kuosan.errors import KuosanError

__all__ = ["ModelConfig", "DiffusionConfig", "SampleConfig", "TrainConfig", "Config",
           "load_config", "apply_overrides", "config_to_dict", "config_from_dict"]


@dataclass(frozen=True)
class ModelConfig:
    kind: str = "unet"                     # network: unet (dit where available)
    base_channels: int = 64                # width of the first level
    channel_mults: tuple = (1, 2, 2)       # per-level width multipliers; each level halves the size
    num_blocks: int = 2                    # residual blocks per level
    attn_resolutions: tuple = (7,)         # feature-map sizes with self-attention
    head_channels: int = 32                # channels per attention head
    dropout: float = 0.1                   # dropout in residual blocks (regularises small data sets)
    patch_size: int = 2                    # DiT only: side of a patch
    depth: int = 6                         # DiT only: transformer blocks
    width: int = 192                       # DiT only: token width
    heads: int = 6                         # DiT only: attention heads


@dataclass(frozen=True)
class DiffusionConfig:
    precond: str = "edm"                   # parameterisation: edm | eps | v | x0
    sigma_data: float = 0.5                # EDM: standard deviation of the data in [-1, 1]
    sigma_min: float = 0.002               # EDM: smallest noise level sampled
    sigma_max: float = 80.0                # EDM: largest noise level sampled
    beta_schedule: str = "linear"          # eps/v/x0: discrete β schedule, linear | cosine
    timesteps: int = 1000                  # eps/v/x0: length of the discrete chain
    p_mean: float = -1.2                   # EDM loss: mean of ln σ during training
    p_std: float = 1.2                     # EDM loss: std of ln σ during training
    min_snr_gamma: typing.Optional[float] = None  # DDPM loss: Min-SNR-γ weighting (5 is common)
    label_dropout: float = 0.1             # probability a training label becomes "null" (for CFG)


@dataclass(frozen=True)
class SampleConfig:
    sampler: str = "heun"                  # see kuosan.diffusion.samplers.SAMPLERS
    steps: int = 18                        # sampler steps (Heun: 2 network calls each, last one 1)
    schedule: str = "karras"               # σ grid: karras | exponential | log-snr | vp-linear | vp-cosine
    rho: float = 7.0                       # karras schedule's ρ (EDM eq. 5)
    guidance: float = 1.0                  # classifier-free guidance weight (1 = none)


@dataclass(frozen=True)
class TrainConfig:
    data: str = "fashion-mnist"            # data set: fashion-mnist | mnist | digits | a folder | an .npz
    data_root: typing.Optional[str] = None  # directory of the data set's files, if not the default
    resolution: typing.Optional[int] = None  # resize images to this size (default: the data's own)
    channels: typing.Optional[int] = None  # 1 or 3 (default: the data's own)
    max_images: typing.Optional[int] = None  # use only the first N training images
    conditional: bool = True               # train class-conditional (with a null class for CFG)
    steps: int = 20000                     # optimiser steps
    time_limit: typing.Optional[float] = None  # stop after this many seconds (a checkpoint is written)
    batch: int = 64                        # images per optimiser step
    lr: float = 2e-3                       # peak learning rate (AdamW)
    weight_decay: float = 0.0              # AdamW weight decay
    betas: tuple = (0.9, 0.99)             # AdamW β1, β2
    warmup_steps: int = 200                # linear learning-rate warm-up
    lr_decay: str = "cosine"               # after warm-up: constant | cosine | linear (to 5% at `steps`)
    ema_decay: float = 0.999               # EMA of the weights (with warm-up, see training.ema)
    grad_clip: float = 1.0                 # clip the global gradient norm (0 = off)
    bf16: bool = False                     # bfloat16 autocast inside the network
    seed: int = 0                          # makes the run reproducible
    log_every: int = 50                    # steps between metrics-log lines
    sample_every: int = 2000               # steps between sample grids (0 = only at the end)
    checkpoint_every: int = 1000           # steps between checkpoints (0 = only at the end)
    keep_checkpoints: int = 3              # how many recent checkpoints to keep
    out: str = "runs/train"                # output directory
    device: str = "auto"                   # auto | cpu | cuda | cuda:N
    max_nonfinite: int = 20                # stop after this many skipped non-finite steps


@dataclass(frozen=True)
class Config:
    model: ModelConfig = field(default_factory=ModelConfig)
    diffusion: DiffusionConfig = field(default_factory=DiffusionConfig)
    sample: SampleConfig = field(default_factory=SampleConfig)
    train: TrainConfig = field(default_factory=TrainConfig)


SECTIONS = {f.name: f.type for f in dataclasses.fields(Config)}
_SECTION_CLASSES = {"model": ModelConfig, "diffusion": DiffusionConfig, "sample": SampleConfig,
                    "train": TrainConfig}


def config_to_dict(cfg) -> dict:
    return json.loads(json.dumps(dataclasses.asdict(cfg)))


def _coerce(value: Any, tp: Any, where: str) -> Any:
    """Check/convert ``value`` to the annotated type ``tp`` (bool, int, float, str, tuple, Optional)."""
    origin = typing.get_origin(tp)
    if origin is typing.Union:
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if value is None or (isinstance(value, str) and value.lower() in ("none", "null")):
            return None
        return _coerce(value, args[0], where)
    try:
        if tp is bool:
            if isinstance(value, str):
                if value.lower() in ("1", "true", "yes", "on"):
                    return True
                if value.lower() in ("0", "false", "no", "off"):
                    return False
                raise ValueError
            if isinstance(value, (bool, int)) and value in (0, 1):
                return bool(value)
            raise ValueError
        if tp is int:
            if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
                raise ValueError
            return int(value)
        if tp is float:
            if isinstance(value, bool):
                raise ValueError
            out = float(value)
            if out != out:
                raise ValueError
            return out
        if tp is str:
            if not isinstance(value, str):
                raise ValueError
            return value
        if tp is tuple:
            if isinstance(value, str):
                value = [v for v in value.replace("(", "").replace(")", "").split(",") if v.strip()]
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                value = [value]
            return tuple(float(v) if isinstance(v, float) or (isinstance(v, str) and "." in v) else int(v)
                         for v in value)
    except (TypeError, ValueError):
        pass
    else:
        return value
    name = getattr(tp, "__name__", str(tp))
    raise KuosanError(f"{where}: expected {name}, got {value!r}")


def _section_from_dict(cls, data: dict, section: str):
    if not isinstance(data, dict):
        raise KuosanError(f"config section {section!r} must be a mapping, got {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    kwargs = {}
    for key, value in data.items():
        if key not in names:
            close = difflib.get_close_matches(key, names, n=1)
            hint = f" (did you mean {section}.{close[0]}?)" if close else ""
            raise KuosanError(f"unknown config key {section}.{key}{hint}")
        kwargs[key] = _coerce(value, hints[key], f"{section}.{key}")
    return cls(**kwargs)


def config_from_dict(data: dict) -> Config:
    if not isinstance(data, dict):
        raise KuosanError("a config file must hold a mapping of sections (model, diffusion, sample, train)")
    for key in data:
        if key not in _SECTION_CLASSES:
            raise KuosanError(f"unknown config section {key!r}; sections are {', '.join(_SECTION_CLASSES)}")
    cfg = Config(**{name: _section_from_dict(cls, data.get(name, {}), name)
                    for name, cls in _SECTION_CLASSES.items()})
    validate(cfg)
    return cfg


def _read_file(path: Path) -> dict:
    if not path.is_file():
        raise KuosanError(f"config file not found: {path}")
    text = path.read_text()
    try:
        if path.suffix == ".json":
            return json.loads(text)
        if path.suffix in (".yaml", ".yml"):
            import yaml

            return yaml.safe_load(text) or {}
        if path.suffix == ".toml":
            try:
                import tomllib
            except ImportError:  # Python 3.10
                import tomli as tomllib
            return tomllib.loads(text)
    except Exception as e:  # parse errors of any of the three formats
        raise KuosanError(f"cannot parse {path}: {str(e).splitlines()[0]}") from None
    raise KuosanError(f"config file {path} must end in .json, .yaml, .yml or .toml")


def load_config(path: str | Path | None = None, overrides: list[str] | dict | None = None,
                base: dict | None = None) -> Config:
    """A config from defaults, then ``base`` (a preset dict), then the file, then overrides."""
    data: dict = {k: dict(v) for k, v in (base or {}).items()}
    if path is not None:
        for section, values in _read_file(Path(path)).items():
            if not isinstance(values, dict):
                raise KuosanError(f"config section {section!r} in {path} must be a mapping")
            data.setdefault(section, {}).update(values)
    apply_overrides(data, overrides or [])
    return config_from_dict(data)


def _resolve_key(key: str) -> tuple[str, str]:
    key = key.lstrip("-").replace("-", "_")
    if "." in key:
        section, name = key.split(".", 1)
        if section in _SECTION_CLASSES and name in {f.name for f in dataclasses.fields(_SECTION_CLASSES[section])}:
            return section, name
    owners = [s for s, cls in _SECTION_CLASSES.items() if key in {f.name for f in dataclasses.fields(cls)}]
    if len(owners) == 1:
        return owners[0], key
    if "train" in owners:  # bare names mean the training setting: --steps is train.steps
        return "train", key
    if len(owners) > 1:
        raise KuosanError(f"--{key} is ambiguous: write one of {', '.join(f'--{s}.{key}' for s in owners)}")
    every = [f"{s}.{f.name}" for s, cls in _SECTION_CLASSES.items() for f in dataclasses.fields(cls)]
    close = difflib.get_close_matches(key, every + [e.split(".")[1] for e in every], n=1)
    hint = f" (did you mean --{close[0]}?)" if close else ""
    raise KuosanError(f"unknown option --{key}{hint}")


def apply_overrides(data: dict, overrides: list[str] | dict) -> dict:
    """Apply ``["--train.lr", "1e-4", "--steps=10"]`` or ``{"train.lr": 1e-4}`` to a config dict."""
    if isinstance(overrides, dict):
        pairs = list(overrides.items())
    else:
        pairs, items = [], list(overrides)
        i = 0
        while i < len(items):
            item = items[i]
            if not item.startswith("--"):
                raise KuosanError(f"expected an option like --key value, got {item!r}")
            if "=" in item:
                key, value = item.split("=", 1)
                i += 1
            elif i + 1 < len(items) and not (items[i + 1].startswith("--") and len(items[i + 1]) > 2
                                              and not items[i + 1][2].isdigit()):
                key, value = item, items[i + 1]
                i += 2
            else:
                key, value = item, "true"  # a bare flag: --bf16
                i += 1
            pairs.append((key, value))
    for key, value in pairs:
        section, name = _resolve_key(key)
        data.setdefault(section, {})[name] = value
    return data


def _positive(value, name, allow_zero=False):
    if value is None:
        return
    if value < 0 or (value == 0 and not allow_zero):
        raise KuosanError(f"{name} must be {'non-negative' if allow_zero else 'positive'}, got {value}")


def validate(cfg: Config) -> None:
    """Reject values that cannot work, with a message naming the key."""
    t, d, s, m = cfg.train, cfg.diffusion, cfg.sample, cfg.model
    for name in ("steps", "batch", "log_every"):
        _positive(getattr(t, name), f"train.{name}")
    for name in ("sample_every", "checkpoint_every", "warmup_steps", "weight_decay", "grad_clip"):
        _positive(getattr(t, name), f"train.{name}", allow_zero=True)
    _positive(t.keep_checkpoints, "train.keep_checkpoints")
    _positive(t.lr, "train.lr")
    _positive(t.time_limit, "train.time_limit")
    _positive(t.max_images, "train.max_images")
    if t.batch > 65536:
        raise KuosanError(f"train.batch {t.batch} is absurdly large")
    if t.steps > 10 ** 9:
        raise KuosanError(f"train.steps {t.steps} is absurdly large")
    if t.resolution is not None and not 4 <= t.resolution <= 1024:
        raise KuosanError(f"train.resolution must be between 4 and 1024, got {t.resolution}")
    if t.channels is not None and t.channels not in (1, 3):
        raise KuosanError(f"train.channels must be 1 or 3, got {t.channels}")
    if not 0 <= t.ema_decay < 1:
        raise KuosanError(f"train.ema_decay must be in [0, 1), got {t.ema_decay}")
    if t.lr > 1:
        raise KuosanError(f"train.lr {t.lr} is absurdly large")
    if t.lr_decay not in ("constant", "cosine", "linear"):
        raise KuosanError(f"train.lr_decay must be constant, cosine or linear, got {t.lr_decay!r}")
    if not 0 <= d.label_dropout < 1:
        raise KuosanError(f"diffusion.label_dropout must be in [0, 1), got {d.label_dropout}")
    if d.precond not in ("edm", "eps", "v", "x0", "flow"):
        raise KuosanError(f"diffusion.precond must be edm, eps, v, x0 or flow, got {d.precond!r}")
    if not 0 < d.sigma_min < d.sigma_max:
        raise KuosanError("need 0 < diffusion.sigma_min < diffusion.sigma_max")
    _positive(d.sigma_data, "diffusion.sigma_data")
    _positive(s.steps, "sample.steps")
    if s.steps > 10000:
        raise KuosanError(f"sample.steps {s.steps} is absurdly large")
    if not 0 <= s.guidance <= 100:
        raise KuosanError(f"sample.guidance must be between 0 and 100, got {s.guidance}")
    _positive(m.base_channels, "model.base_channels")
    _positive(m.num_blocks, "model.num_blocks")
    if not m.channel_mults or any(c <= 0 for c in m.channel_mults):
        raise KuosanError("model.channel_mults must be positive integers")
    if not 0 <= m.dropout < 1:
        raise KuosanError(f"model.dropout must be in [0, 1), got {m.dropout}")


def preset_names() -> list[str]:
    from importlib import resources

    return sorted(p.name[:-5] for p in resources.files("kuosan").joinpath("configs").iterdir()
                  if p.name.endswith(".json"))


def resolve_config_path(name_or_path: str) -> Path | dict:
    """A config file path, or the contents of a bundled preset (``demo``, ``fashion-mnist``, …)."""
    path = Path(name_or_path)
    if path.is_file():
        return path
    if name_or_path in preset_names():
        from importlib import resources

        return json.loads(resources.files("kuosan").joinpath("configs", f"{name_or_path}.json").read_text())
    raise KuosanError(f"config {name_or_path!r} is neither a file nor a preset ({', '.join(preset_names())})")
