"""Configuration: frozen dataclasses with a comment per field, loadable from a JSON, YAML or TOML
file and overridable from the command line (``--train.lr 1e-4`` or, when the name is unique,
``--lr 1e-4``). No class names as strings, no code execution: values are plain data.

Names are checked against the registries of the floor below (samplers, schedules, networks), so this
module sits above ``nets/`` and ``diffusion/``, which know nothing of it.
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
import inspect
import json
import re
import math
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kuosan.diffusion.precond import PRECONDS
from kuosan.diffusion.samplers import SAMPLERS
from kuosan.diffusion.schedules import SCHEDULES
from kuosan.errors import KuosanError
from kuosan.nets.build import NETWORKS

__all__ = ["ModelConfig", "DiffusionConfig", "SampleConfig", "TrainConfig", "Config", "SECTIONS",
           "load_config", "apply_overrides", "config_to_dict", "config_from_dict", "field_docs", "option_owner",
           "sample_config_from"]


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
    mlp_ratio: float = 4.0                 # DiT only: MLP hidden width = mlp_ratio · width
    pos_embed: str = "sincos"              # DiT only: position embedding, sincos (fixed 2-D) | learned


@dataclass(frozen=True)
class DiffusionConfig:
    precond: str = "edm"                   # parameterisation: edm | eps | v | x0 | flow
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
    guidance_rescale: float = 0.0          # 0-1: pull the guided prediction's spread back to the conditional one's (0 = none)


@dataclass(frozen=True)
class TrainConfig:
    data: str = "fashion-mnist"            # data set: fashion-mnist | mnist | digits | a folder | an .npz
    data_root: typing.Optional[str] = None  # directory of the data set's files, if not the default
    resolution: typing.Optional[int] = None  # resize images to this size (default: the data's own)
    channels: typing.Optional[int] = None  # 1 or 3 (default: the data's own)
    max_images: typing.Optional[int] = None  # use only the first N training images
    autoencoder: typing.Optional[str] = None  # latent diffusion: a train-autoencoder run; data encoded once, cached
    conditional: bool = True               # train class-conditional (with a null class for CFG)
    steps: int = 20000                     # optimiser steps
    time_limit: typing.Optional[float] = None  # stop after this many seconds (a checkpoint is written)
    clock: str = "wall"                    # what time_limit counts: wall (seconds) | cpu (the process's CPU seconds)
    batch: int = 64                        # images per optimiser step, over all processes (the global batch)
    batch_per_device: typing.Optional[int] = None  # most images a process runs at once; more = gradient accumulation
    lr: float = 2e-3                       # peak learning rate (AdamW)
    weight_decay: float = 0.0              # AdamW weight decay
    betas: tuple = (0.9, 0.99)             # AdamW β1, β2
    warmup_steps: int = 200                # linear learning-rate warm-up
    lr_decay: str = "cosine"               # after warm-up: constant | cosine | linear (to 5% at `steps`)
    decay_over: str = "steps"              # lr decay over: steps | time (the share of time_limit spent; 1 process)
    ema_decay: float = 0.999               # EMA of the weights (with warm-up, see training.ema)
    ema_sigma_rel: typing.Optional[float] = None  # power-function EMA of this width (EDM2), not ema_decay
    posthoc_ema: bool = False              # also keep EDM2's two EMA profiles; a snapshot with each checkpoint
    grad_clip: float = 1.0                 # clip the global gradient norm (0 = off)
    repa_weight: float = 0.0               # > 0: representation alignment (REPA) of a UNet's middle block with EfficientNet-Lite0's features of the clean image, at this weight (0 = off)
    bf16: bool = False                     # bfloat16 autocast inside the network
    compile: bool = False                  # torch.compile the network (slow to compile; for long GPU runs)
    tf32: bool = True                      # CUDA only: TensorFloat-32 matmuls/convolutions (Ampere or newer)
    seed: int = 0                          # makes the run reproducible
    log_every: int = 50                    # steps between metrics-log lines
    sample_every: int = 2000               # steps between sample grids (0 = only at the end)
    checkpoint_every: int = 1000           # steps between checkpoints (0 = only at the end)
    keep_checkpoints: int = 3              # how many recent checkpoints to keep
    out: str = "runs/train"                # output directory
    device: str = "auto"                   # auto | cpu | cuda | cuda:N
    max_nonfinite: int = 20                # stop after this many skipped non-finite steps
    init_from: typing.Optional[str] = None  # fine-tune from this checkpoint, run or diffusers directory
    freeze: typing.Optional[str] = None    # fine-tune: globs of parameters to keep fixed, e.g. "down.*,mid.*"
    lora_rank: int = 0                     # > 0: train LoRA adapters of this rank instead of the network
    lora_alpha: typing.Optional[float] = None  # LoRA update scale is alpha / rank (default alpha = rank)
    lora_targets: str = "attn,conv"        # LoRA layers: attn, conv, or globs on layer names


@dataclass(frozen=True)
class Config:
    model: ModelConfig = field(default_factory=ModelConfig)
    diffusion: DiffusionConfig = field(default_factory=DiffusionConfig)
    sample: SampleConfig = field(default_factory=SampleConfig)
    train: TrainConfig = field(default_factory=TrainConfig)


SECTIONS = {"model": ModelConfig, "diffusion": DiffusionConfig, "sample": SampleConfig,
            "train": TrainConfig}  # section name -> its dataclass, in the order of Config's fields
_SECTION_CLASSES = SECTIONS


@functools.lru_cache(maxsize=None)
def field_docs(cls) -> dict[str, str]:
    """Field name -> the comment written after it in the dataclass: the one place each setting is explained
    (``--help``, the web page and the docs read it from here)."""
    try:
        source = inspect.getsource(cls)
    except (OSError, TypeError):  # no source (a frozen executable): no comments
        return {}
    names = {f.name for f in dataclasses.fields(cls)}
    docs = {}
    for line in source.splitlines():
        m = re.match(r"\s+(\w+)\s*:.*?#\s*(.+?)\s*$", line)
        if m and m[1] in names and m[1] not in docs:
            docs[m[1]] = m[2]
    return docs


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
        if tp is not str and isinstance(value, str) and len(value) > 100:
            raise ValueError  # no number or list of numbers is written with this many characters
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
            if not isinstance(value, (int, float, str)) or isinstance(value, bool) or (
                    isinstance(value, float) and not value.is_integer()):
                raise ValueError
            return int(value)
        if tp is float:
            if not isinstance(value, (int, float, str)) or isinstance(value, bool):
                raise ValueError
            out = float(value)
            if not math.isfinite(out):
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
            if not isinstance(value, (list, tuple)) or len(value) > 64:
                raise ValueError
            out = tuple(_coerce(v, float if isinstance(v, float) or (isinstance(v, str) and "." in v) else int,
                                where) for v in value)
            return out
    except (TypeError, ValueError, OverflowError):
        pass
    else:
        return value
    name = {"tuple": "a list of numbers", "float": "a finite number", "int": "a whole number",
            "bool": "true or false", "str": "a string"}.get(getattr(tp, "__name__", ""), str(tp))
    shown = repr(value)
    raise KuosanError(f"{where}: expected {name}, got {shown if len(shown) <= 60 else shown[:57] + '...'}")


@functools.lru_cache(maxsize=None)
def _type_hints(cls) -> dict:
    """Field name -> annotated type, in field order (evaluating the annotations is slow: once)."""
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls)}


def _shown(name: str) -> str:
    """A user-given name for a message: as it is, or quoted when it holds unprintable characters."""
    return name if name.isprintable() and len(name) <= 60 else repr(name[:60])


def _section_from_dict(cls, data: dict, section: str):
    if data is None:  # an empty section in YAML
        data = {}
    if not isinstance(data, dict):
        raise KuosanError(f"config section {section!r} must be a mapping, got {type(data).__name__}")
    hints = _type_hints(cls)
    names = list(hints)
    kwargs = {}
    for key, value in data.items():
        if not isinstance(key, str):
            raise KuosanError(f"config section {section!r} has a key {key!r} that is not a name")
        if key not in names:
            close = difflib.get_close_matches(key, names, n=1)
            hint = f" (did you mean {section}.{close[0]}?)" if close else ""
            raise KuosanError(f"unknown config key {_shown(f'{section}.{key}')}{hint}")
        kwargs[key] = _coerce(value, hints[key], f"{section}.{key}")
    return cls(**kwargs)


def sample_config_from(section: dict | None) -> SampleConfig:
    """A checkpoint's ``sample`` section as a :class:`SampleConfig` (missing keys take kuosan's defaults)."""
    return _section_from_dict(SampleConfig, dict(section or {}), "sample")


def config_from_dict(data: dict) -> Config:
    if not isinstance(data, dict):
        raise KuosanError("a config file must hold a mapping of sections (model, diffusion, sample, train)")
    for key in data:
        if key not in _SECTION_CLASSES:
            close = difflib.get_close_matches(key, list(_SECTION_CLASSES), n=1) if isinstance(key, str) else []
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise KuosanError(f"unknown config section {key!r}{hint}; sections are {', '.join(_SECTION_CLASSES)}")
    cfg = Config(**{name: _section_from_dict(cls, data.get(name, {}), name)
                    for name, cls in _SECTION_CLASSES.items()})
    validate(cfg)
    return cfg


def _read_file(path: Path) -> dict:
    if not path.is_file():
        raise KuosanError(f"config file not found: {path}")
    if path.suffix not in (".json", ".yaml", ".yml", ".toml"):
        raise KuosanError(f"config file {path} must end in .json, .yaml, .yml or .toml")
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as e:
        raise KuosanError(f"cannot read config file {path}: {str(e).splitlines()[0]}") from None
    try:
        if path.suffix == ".json":
            data = json.loads(text)
        elif path.suffix in (".yaml", ".yml"):
            import yaml

            data = yaml.safe_load(text) or {}
        else:
            try:
                import tomllib
            except ImportError:  # Python 3.10
                import tomli as tomllib
            data = tomllib.loads(text)
    except Exception as e:  # parse errors of any of the three formats
        lines = str(e).strip().splitlines()
        raise KuosanError(f"cannot parse {path}: {lines[0] if lines else type(e).__name__}") from None
    if not isinstance(data, dict):
        raise KuosanError(f"{path} must hold a mapping of sections (model, diffusion, sample, train), "
                          f"not a {type(data).__name__}")
    return data


def load_config(path: str | Path | None = None, overrides: list[str] | dict | None = None,
                base: dict | None = None) -> Config:
    """A config from defaults, then ``base`` (a preset dict), then the file, then overrides."""
    if not isinstance(base or {}, dict):
        raise KuosanError("a preset must be a mapping of sections")
    data: dict = {}
    for k, v in (base or {}).items():
        if not isinstance(v, dict):
            raise KuosanError(f"config section {k!r} of the preset must be a mapping")
        data[k] = dict(v)
    if path is not None:
        if not isinstance(path, (str, Path)):
            raise KuosanError(f"a config path must be a string, got {type(path).__name__}")
        for section, values in _read_file(Path(path)).items():
            if values is None:
                values = {}
            if not isinstance(values, dict):
                raise KuosanError(f"config section {section!r} in {path} must be a mapping")
            if not isinstance(data.get(section, {}), dict):
                raise KuosanError(f"config section {section!r} must be a mapping")
            data.setdefault(section, {}).update(values)
    apply_overrides(data, overrides or [])
    return config_from_dict(data)


_SHORTHANDS = {"model": ("model", "kind")}


def _resolve_key(key: str) -> tuple[str, str]:
    if not isinstance(key, str):
        raise KuosanError(f"an option name must be a string, got {key!r}")
    key = key.lstrip("-").replace("-", "_")
    if key in _SHORTHANDS:  # --model dit means --model.kind dit
        return _SHORTHANDS[key]
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
    raise KuosanError(f"unknown option {_shown('--' + key)}{hint}")


def option_owner(name: str) -> tuple[str, str] | None:
    """(section, field) that the bare option ``--name`` sets, or None when it names no single field."""
    try:
        return _resolve_key(name)
    except KuosanError:
        return None


def apply_overrides(data: dict, overrides: list[str] | dict) -> dict:
    """Apply ``["--train.lr", "1e-4", "--steps=10"]`` or ``{"train.lr": 1e-4}`` to a config dict."""
    if isinstance(overrides, dict):
        pairs = list(overrides.items())
    else:
        pairs, items = [], list(overrides)
        i = 0
        while i < len(items):
            item = items[i]
            if not isinstance(item, str) or not item.startswith("--"):
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
        if data.get(section) is None:
            data[section] = {}
        if not isinstance(data[section], dict):
            raise KuosanError(f"config section {section!r} must be a mapping")
        data[section][name] = value
    return data


def _positive(value, name, allow_zero=False):
    if value is None:
        return
    if value < 0 or (value == 0 and not allow_zero):
        raise KuosanError(f"{name} must be {'non-negative' if allow_zero else 'positive'}, got {value}")


def _at_most(value, limit, name):
    if value is not None and value > limit:
        raise KuosanError(f"{name} {value} is absurdly large (at most {limit})")


def _whole_numbers(values: tuple, name: str, lo: int, hi: int) -> None:
    if any(not isinstance(v, int) or isinstance(v, bool) or not lo <= v <= hi for v in values):
        raise KuosanError(f"{name} must be whole numbers from {lo} to {hi}, got {list(values)}")


def _one_of(value, choices, name):
    if value not in choices:
        raise KuosanError(f"{name} must be one of {', '.join(sorted(choices))}, got {value!r}")


def validate(cfg: Config) -> None:
    """Reject values that cannot work, with a message naming the key."""
    t, d, s, m = cfg.train, cfg.diffusion, cfg.sample, cfg.model
    # train
    for name in ("steps", "batch", "log_every", "keep_checkpoints", "max_nonfinite"):
        _positive(getattr(t, name), f"train.{name}")
    for name in ("sample_every", "checkpoint_every", "warmup_steps", "weight_decay", "grad_clip"):
        _positive(getattr(t, name), f"train.{name}", allow_zero=True)
    _positive(t.lr, "train.lr")
    _positive(t.time_limit, "train.time_limit")
    _positive(t.max_images, "train.max_images")
    _at_most(t.batch, 65536, "train.batch")
    _positive(t.batch_per_device, "train.batch_per_device")
    _at_most(t.batch_per_device, 65536, "train.batch_per_device")
    _at_most(t.steps, 10 ** 9, "train.steps")
    _at_most(t.lr, 1, "train.lr")
    _at_most(t.keep_checkpoints, 1000, "train.keep_checkpoints")
    if not 0 <= t.seed < 2 ** 32:
        raise KuosanError(f"train.seed must be a whole number from 0 to 2**32 - 1, got {t.seed}")
    if not t.data.strip():
        raise KuosanError("train.data is empty; give fashion-mnist, mnist, digits, an image folder or an .npz file")
    if not t.out.strip():
        raise KuosanError("train.out is empty; give an output directory")
    if t.resolution is not None and not 4 <= t.resolution <= 1024:
        raise KuosanError(f"train.resolution must be between 4 and 1024, got {t.resolution}")
    if t.channels is not None and t.channels not in (1, 3):
        raise KuosanError(f"train.channels must be 1 or 3, got {t.channels}")
    if not 0 <= t.ema_decay < 1:
        raise KuosanError(f"train.ema_decay must be in [0, 1), got {t.ema_decay}")
    if len(t.betas) != 2 or not all(0 <= b < 1 for b in t.betas):
        raise KuosanError(f"train.betas must be two numbers in [0, 1), got {list(t.betas)}")
    _one_of(t.lr_decay, {"constant", "cosine", "linear"}, "train.lr_decay")
    _one_of(t.decay_over, {"steps", "time"}, "train.decay_over")
    _one_of(t.clock, {"wall", "cpu"}, "train.clock")
    if t.decay_over == "time" and t.time_limit is None:
        raise KuosanError("train.decay_over time needs train.time_limit (seconds): the decay runs over it")
    if t.ema_sigma_rel is not None and not 0 < t.ema_sigma_rel <= 12 ** -0.5:
        raise KuosanError(f"train.ema_sigma_rel must be in (0, 0.2887] (0.2887: a plain running mean), "
                          f"got {t.ema_sigma_rel}")
    _positive(t.repa_weight, "train.repa_weight", allow_zero=True)
    _at_most(t.repa_weight, 100, "train.repa_weight")
    if t.repa_weight > 0 and m.kind != "unet":
        raise KuosanError(f"train.repa_weight aligns a UNet's middle block; model.kind {m.kind!r} has none: "
                          "set it to 0 or use model.kind unet")
    if t.repa_weight > 0 and (t.init_from is not None or t.lora_rank):
        raise KuosanError("train.repa_weight trains a network from scratch; drop it when fine-tuning "
                          "(train.init_from, train.lora_rank)")
    if t.repa_weight > 0 and (t.batch_per_device is not None or t.compile):
        raise KuosanError("train.repa_weight runs without train.batch_per_device or train.compile: its targets "
                          "follow the whole batch through one forward pass")
    _positive(t.lora_rank, "train.lora_rank", allow_zero=True)
    _at_most(t.lora_rank, 4096, "train.lora_rank")
    _positive(t.lora_alpha, "train.lora_alpha")
    if t.init_from is not None and not t.init_from.strip():
        raise KuosanError("train.init_from is empty; give a checkpoint, run or diffusers directory")
    # diffusion
    _one_of(d.precond, set(PRECONDS), "diffusion.precond")
    _one_of(d.beta_schedule, {"linear", "cosine"}, "diffusion.beta_schedule")
    if not 0 <= d.label_dropout < 1:
        raise KuosanError(f"diffusion.label_dropout must be in [0, 1), got {d.label_dropout}")
    if not 0 < d.sigma_min < d.sigma_max:
        raise KuosanError(f"need 0 < diffusion.sigma_min < diffusion.sigma_max, got {d.sigma_min} and {d.sigma_max}")
    _at_most(d.sigma_max, 1e6, "diffusion.sigma_max")
    _positive(d.sigma_data, "diffusion.sigma_data")
    _positive(d.p_std, "diffusion.p_std")
    _positive(d.min_snr_gamma, "diffusion.min_snr_gamma")
    if not 2 <= d.timesteps <= 100000:
        raise KuosanError(f"diffusion.timesteps must be between 2 and 100000, got {d.timesteps}")
    # sample
    _one_of(s.sampler, set(SAMPLERS), "sample.sampler")
    _one_of(s.schedule, set(SCHEDULES), "sample.schedule")
    _positive(s.steps, "sample.steps")
    _at_most(s.steps, 10000, "sample.steps")
    _positive(s.rho, "sample.rho")
    if not 0 <= s.guidance <= 100:
        raise KuosanError(f"sample.guidance must be between 0 and 100, got {s.guidance}")
    if not 0 <= s.guidance_rescale <= 1:
        raise KuosanError(f"sample.guidance_rescale must be between 0 and 1, got {s.guidance_rescale}")
    # model
    _one_of(m.kind, set(NETWORKS), "model.kind")
    for name, hi in (("base_channels", 4096), ("num_blocks", 64), ("head_channels", 4096),
                     ("patch_size", 64), ("depth", 256), ("width", 16384), ("heads", 256)):
        _positive(getattr(m, name), f"model.{name}")
        _at_most(getattr(m, name), hi, f"model.{name}")
    if not m.channel_mults or len(m.channel_mults) > 8:
        raise KuosanError(f"model.channel_mults must list 1 to 8 levels, got {list(m.channel_mults)}")
    _whole_numbers(m.channel_mults, "model.channel_mults", 1, 64)
    _whole_numbers(m.attn_resolutions, "model.attn_resolutions", 1, 1024)
    if not 0 <= m.dropout < 1:
        raise KuosanError(f"model.dropout must be in [0, 1), got {m.dropout}")
    if not 0 < m.mlp_ratio <= 64:
        raise KuosanError(f"model.mlp_ratio must be in (0, 64], got {m.mlp_ratio}")
    _one_of(m.pos_embed, {"sincos", "learned"}, "model.pos_embed")
    if m.kind == "dit" and m.width % m.heads:
        raise KuosanError(f"model.width {m.width} must be a multiple of model.heads {m.heads}")


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
