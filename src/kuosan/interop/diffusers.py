"""A local diffusers ``UNet2DModel`` directory and its scheduler config as a kuosan denoiser.

    precond = load_diffusers_unet("ddpm-cifar10-32/")        # a Precond: D(x, sigma, class_labels)
    pipe = kuosan.load("ddpm-cifar10-32/")                  # kuosan.pipeline.Pipeline: every sampler
    kuosan train --init-from ddpm-cifar10-32/ --data mnist    # fine-tune it (with the loop's transfer hook)

Correspondence (diffusers works in the VP view, kuosan in the σ view; DDPM, Ho et al. 2020; EDM,
Karras et al. 2022, Table 1):

    ᾱ_t          diffusers' ``alphas_cumprod`` (float32, computed from its β schedule as diffusers does)
    σ_t          sqrt((1 − ᾱ_t) / ᾱ_t): the same noise level in the σ view
    x_vp         = sqrt(ᾱ_t) · x = x / sqrt(1 + σ_t²): diffusers' sample is kuosan's state scaled by c_in
    F(x_vp, t)   the UNet's output: ε (``epsilon``), v (``v_prediction``) or x0 (``sample``), which
                 :class:`EpsPrecond` / :class:`VPrecond` / :class:`X0Precond` turn into a denoiser
    c_noise      the fractional timestep t with σ_t = σ (``DiscreteVP.sigma_to_t``), fed as ``timestep``

A σ grid built from a scheduler's timesteps with a 0 appended reproduces diffusers' DDIM
(``set_alpha_to_one=True`` ends at ᾱ = 1, i.e. σ = 0) with kuosan's deterministic DDIM.
Not reproduced: ``clip_sample`` and ``thresholding`` (they are not denoiser properties in diffusers:
DDIM clips x0 but keeps the unclipped ε) and zero-terminal-SNR schedules (σ_max = ∞).

Only local files are read (config JSON and safetensors; pickled ``.bin`` weights are refused) and
nothing is ever downloaded: a hub name is refused with a KuosanError.
"""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import torch
from torch import nn

from kuosan.config import SampleConfig
from kuosan.diffusion.schedules import DiscreteVP
from kuosan.errors import KuosanError
from kuosan.interop import require_local_dir
from kuosan.records import DataRecord, NetworkSpec, RunConfig

__all__ = ["KIND", "PREDICTION_TYPES", "DiffusersVP", "DiffusersUNet", "is_diffusers_dir", "load_diffusers_unet",
           "diffusers_model", "precond_from_config", "training_sections", "load_for_training",
           "add_class_embedding"]

KIND = "diffusers-unet2d"
PREDICTION_TYPES = {"epsilon": "eps", "v_prediction": "v", "sample": "x0"}
WEIGHTS = "diffusion_pytorch_model.safetensors"
# Attention parameter names of diffusers checkpoints written before its attention refactor.
_OLD_ATTENTION = {".query.": ".to_q.", ".key.": ".to_k.", ".value.": ".to_v.", ".proj_attn.": ".to_out.0."}


def _import_diffusers():
    try:
        import diffusers
    except ImportError:
        raise KuosanError("loading diffusers models needs the optional package diffusers: pip install diffusers") \
            from None
    return diffusers


# --- the schedule --------------------------------------------------------------------------------

def _cosine_betas(T: int, max_beta: float = 0.999) -> list[float]:
    """Improved DDPM (Nichol & Dhariwal 2021, eq. 17) per step, capped: diffusers' squaredcos_cap_v2."""
    f = lambda t: math.cos((t + 0.008) / 1.008 * math.pi / 2) ** 2  # noqa: E731
    return [min(1 - f((i + 1) / T) / f(i / T), max_beta) for i in range(T)]


def scheduler_betas(cfg: dict) -> torch.Tensor:
    """β_t of a diffusers scheduler config, in float32 as diffusers computes them."""
    T = int(cfg.get("num_train_timesteps", 1000))
    b0, b1 = float(cfg.get("beta_start", 1e-4)), float(cfg.get("beta_end", 0.02))
    kind = cfg.get("beta_schedule", "linear")
    f32 = {"dtype": torch.float32, "device": "cpu"}
    if cfg.get("trained_betas") is not None:
        return torch.tensor(cfg["trained_betas"], **f32)
    if kind == "linear":
        return torch.linspace(b0, b1, T, **f32)
    if kind == "scaled_linear":  # linear in sqrt(β) (latent diffusion)
        return torch.linspace(b0 ** 0.5, b1 ** 0.5, T, **f32) ** 2
    if kind == "squaredcos_cap_v2":
        return torch.tensor(_cosine_betas(T), **f32)
    if kind == "sigmoid":  # GeoDiff (Xu et al. 2022)
        return torch.sigmoid(torch.linspace(-6, 6, T, **f32)) * (b1 - b0) + b0
    raise KuosanError(f"unsupported diffusers beta_schedule {kind!r}; kuosan reads linear, scaled_linear, "
                      "squaredcos_cap_v2, sigmoid and trained_betas")


class DiffusersVP(DiscreteVP):
    """A :class:`DiscreteVP` whose ᾱ_t are those of a diffusers scheduler config (any β schedule)."""

    def __init__(self, scheduler_config: dict):
        if scheduler_config.get("rescale_betas_zero_snr"):
            raise KuosanError("this scheduler rescales β to zero terminal SNR (σ_max = ∞), which the σ view "
                              "cannot start from; not supported")
        betas = scheduler_betas(scheduler_config)
        super().__init__("linear", len(betas))
        alpha_bar = torch.cumprod(1 - betas, 0)  # float32, as diffusers' alphas_cumprod
        self.beta_schedule = scheduler_config.get("beta_schedule", "linear")
        self.alpha_bar = alpha_bar.double()
        self.sigmas = ((1 - self.alpha_bar) / self.alpha_bar).sqrt()
        self.log_sigmas = self.sigmas.log()


# --- the network ---------------------------------------------------------------------------------

class DiffusersUNet(nn.Module):
    """A diffusers ``UNet2DModel`` as a kuosan network F(x, c_noise, class_labels)."""

    def __init__(self, unet: nn.Module, num_classes: int = 0, null_class: bool = False):
        super().__init__()
        self.unet, self.num_classes, self.null_class = unet, num_classes, null_class

    def forward(self, x, c_noise, class_labels=None):
        labels = None
        if getattr(self.unet, "class_embedding", None) is not None:
            if class_labels is None and not self.null_class:
                raise KuosanError("this diffusers model is class-conditional: give class labels")
            labels = (torch.full((x.shape[0],), self.num_classes, device=x.device) if class_labels is None
                      else class_labels).long()
        out = self.unet(x, c_noise, class_labels=labels, return_dict=False)[0]
        return out[:, :x.shape[1]]  # models that also predict a variance return 2·C channels

    def add_class_embedding(self, num_classes: int) -> dict:
        """See :func:`add_class_embedding`."""
        return _add_class_embedding(self, num_classes)

    def adopt_classes(self, num_classes: int):
        """:func:`kuosan.nets.classes.resize_classes` for this network: an unconditional UNet gets a zero
        class embedding (returns 0, the previous count); otherwise ``NotImplemented``."""
        if num_classes and getattr(self.unet, "class_embedding", None) is None:
            self.add_class_embedding(num_classes)
            return 0
        return NotImplemented


# --- reading a directory -------------------------------------------------------------------------

def _read_json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError, UnicodeDecodeError) as e:
        raise KuosanError(f"cannot read {path}: {str(e).splitlines()[0]}") from None
    if not isinstance(data, dict):
        raise KuosanError(f"{path} is not a JSON object")
    return data


def is_diffusers_dir(path) -> bool:
    """True for a local diffusers pipeline directory (``unet/``) or a UNet2DModel directory."""
    p = Path(path)
    if (p / "unet" / "config.json").is_file():
        return True
    if not (p / "config.json").is_file():
        return False
    try:
        return "_class_name" in json.loads((p / "config.json").read_text())
    except (OSError, ValueError, UnicodeDecodeError):
        return False


def _find_parts(path, scheduler=None) -> tuple[Path, dict, dict]:
    """(UNet directory, UNet config, scheduler config) of a pipeline or UNet directory."""
    root = require_local_dir(path, "diffusers model")
    unet_dir = root / "unet" if (root / "unet" / "config.json").is_file() else root
    if not (unet_dir / "config.json").is_file():
        raise KuosanError(f"{root} holds no config.json: expected a diffusers UNet2DModel directory "
                          "(config.json + diffusion_pytorch_model.safetensors) or a pipeline with unet/")
    unet_cfg = _read_json(unet_dir / "config.json")
    cls = unet_cfg.get("_class_name", "UNet2DModel")
    if cls != "UNet2DModel":
        raise KuosanError(f"{unet_dir} holds a {cls}; kuosan reads diffusers UNet2DModel (pixel-space, "
                          "optionally class-conditional) models only")
    if scheduler is not None:
        sched_path = Path(scheduler)
        sched_path = sched_path / "scheduler_config.json" if sched_path.is_dir() else sched_path
        candidates = [sched_path]
    else:
        candidates = [root / "scheduler" / "scheduler_config.json", root / "scheduler_config.json",
                      unet_dir / "scheduler_config.json", unet_dir.parent / "scheduler" / "scheduler_config.json"]
    found = next((c for c in candidates if c.is_file()), None)
    if found is None:
        raise KuosanError(f"no scheduler_config.json for {root} (looked in {', '.join(str(c) for c in candidates)}); "
                          "pass scheduler=PATH to the scheduler config of the model")
    sched_cfg = _read_json(found)
    kind = sched_cfg.get("prediction_type", "epsilon")
    if kind not in PREDICTION_TYPES:
        raise KuosanError(f"unsupported prediction_type {kind!r} in {found}; kuosan reads "
                          f"{', '.join(PREDICTION_TYPES)}")
    return unet_dir, unet_cfg, sched_cfg


def _clean(cfg: dict) -> dict:
    return {k: v for k, v in cfg.items() if not k.startswith("_")}


def _spec(unet_cfg: dict, sched_cfg: dict, num_classes: int | None = None, null_class: bool = False) -> dict:
    if unet_cfg.get("time_embedding_type", "positional") != "positional":
        raise KuosanError(f"time_embedding_type {unet_cfg.get('time_embedding_type')!r} (a score-SDE VE model) is "
                          "not supported; kuosan reads DDPM-style UNet2DModels (positional timestep embedding)")
    if unet_cfg.get("class_embed_type") is not None:
        raise KuosanError(f"class_embed_type {unet_cfg['class_embed_type']!r} is not supported; kuosan reads "
                          "unconditional UNet2DModels and ones with num_class_embeds")
    size = unet_cfg.get("sample_size")
    if isinstance(size, (list, tuple)):
        if len(set(size)) != 1:
            raise KuosanError(f"non-square sample_size {size} is not supported")
        size = size[0]
    channels = int(unet_cfg.get("in_channels", 3))
    if num_classes is None:
        num_classes = int(unet_cfg.get("num_class_embeds") or 0)
    return {"kind": KIND, "fields": {"in_channels": channels, "out_channels": channels, "resolution": int(size),
                                     "num_classes": num_classes, "null_class": null_class,
                                     "unet": _clean(unet_cfg), "scheduler": _clean(sched_cfg)}}


def _build(spec: dict):
    """A randomly initialised precond for a ``diffusers-unet2d`` network spec."""
    from kuosan.diffusion.precond import EpsPrecond, VPrecond, X0Precond

    diffusers = _import_diffusers()
    f = spec["fields"]
    unet = diffusers.UNet2DModel.from_config(dict(f["unet"]))
    net = DiffusersUNet(unet, int(f.get("num_classes", 0)), bool(f.get("null_class", False)))
    cls = {"eps": EpsPrecond, "v": VPrecond, "x0": X0Precond}[PREDICTION_TYPES[f["scheduler"].get(
        "prediction_type", "epsilon")]]
    return cls(net, DiffusersVP(f["scheduler"]))


def precond_from_config(config: dict):
    """The (randomly initialised) precond of a kuosan config.json whose network kind is
    ``diffusers-unet2d``: what ``kuosan.model.model_from_checkpoint_config`` calls for such runs."""
    return _build(config["network"])


def _read_weights(unet_dir: Path) -> tuple[dict, Path]:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    path = unet_dir / WEIGHTS
    if not path.is_file():
        pickles = sorted(p.name for p in unet_dir.glob("*.bin")) + sorted(p.name for p in unet_dir.glob("*.ckpt"))
        if pickles:
            raise KuosanError(f"{unet_dir} has {', '.join(pickles)} but no {WEIGHTS}: kuosan loads only safetensors, "
                              "never pickle files (they can run code); convert them with diffusers elsewhere")
        raise KuosanError(f"{unet_dir} has no {WEIGHTS}")
    try:
        tensors = load_file(str(path))
    except (SafetensorError, OSError, ValueError, RuntimeError) as e:
        raise KuosanError(f"{path} is not a readable safetensors file ({str(e).splitlines()[0]})") from None
    renamed = {}
    for key, t in tensors.items():
        for old, new in _OLD_ATTENTION.items():
            key = key.replace(old, new)
        renamed[key] = t
    return renamed, path


@torch.no_grad()
def _load_unet_weights(precond, tensors: dict, path: Path, allow_missing=()) -> None:
    missing, unexpected = precond.net.unet.load_state_dict(tensors, strict=False)
    missing = [k for k in missing if k not in allow_missing]
    if missing or unexpected:
        what = f"missing {missing[0]}" if missing else f"unexpected {unexpected[0]}"
        raise KuosanError(f"{path} does not fit the UNet2DModel of its config.json ({what})")


def _load(path, scheduler=None):
    from kuosan.checkpoint import file_sha256
    from kuosan.nets.lora import weights_checksum

    unet_dir, unet_cfg, sched_cfg = _find_parts(path, scheduler)
    spec = _spec(unet_cfg, sched_cfg)
    tensors, weights_path = _read_weights(unet_dir)
    precond = _build(spec)
    _load_unet_weights(precond, tensors, weights_path)
    info = {"path": str(Path(path).resolve()), "format": "diffusers", "weights": str(weights_path.name),
            "sha256": file_sha256(weights_path), "weights_sha256": weights_checksum(precond),
            "num_classes": spec["fields"]["num_classes"]}
    return precond, spec, info


def load_diffusers_unet(path, *, scheduler=None, device=None):
    """A local diffusers UNet2DModel (directory, or pipeline directory with ``unet/``) and its
    scheduler config as a kuosan :class:`~kuosan.diffusion.precond.Precond`, in eval mode."""
    precond, _, _ = _load(path, scheduler)
    precond = precond.eval().requires_grad_(False)
    return precond.to(device) if device is not None else precond


# How a diffusers model samples unless told otherwise: DDIM on its own timesteps, as diffusers' pipelines do.
DIFFUSERS_SAMPLING = SampleConfig(sampler="ddim", steps=50, schedule="vp-linear")


def _pipeline_config(spec: dict, info: dict) -> RunConfig:
    f = spec["fields"]
    s = f["scheduler"]
    diffusion = {"precond": PREDICTION_TYPES[s.get("prediction_type", "epsilon")],
                 "beta_schedule": s.get("beta_schedule", "linear"),
                 "timesteps": int(s.get("num_train_timesteps", 1000)), "sigma_data": 1.0}
    data = DataRecord(class_names=tuple(str(k) for k in range(f["num_classes"])), resolution=f["resolution"],
                      channels=f["in_channels"], num_classes=f["num_classes"])
    return RunConfig(network=NetworkSpec.from_dict(spec), data=data, source=info,
                     sections={"diffusion": diffusion, "sample": dataclasses.asdict(DIFFUSERS_SAMPLING)})


def diffusers_model(path, *, scheduler=None):
    """(denoiser, kuosan run config) of a local diffusers model: :meth:`kuosan.pipeline.Pipeline.load`
    samples it with any kuosan sampler (default DDIM, 50 steps on the model's own timesteps)."""
    precond, spec, info = _load(path, scheduler)
    return precond, _pipeline_config(spec, info)


# --- fine-tuning ---------------------------------------------------------------------------------

def training_sections(path) -> dict:
    """The config settings a run fine-tuning this model must use (for :func:`kuosan.training.finetune.finetune_config`)."""
    _, unet_cfg, sched_cfg = _find_parts(path)
    spec = _spec(unet_cfg, sched_cfg)
    f = spec["fields"]
    diffusion = {"precond": PREDICTION_TYPES[sched_cfg.get("prediction_type", "epsilon")],
                 "timesteps": int(sched_cfg.get("num_train_timesteps", 1000))}
    kind = {"linear": "linear", "squaredcos_cap_v2": "cosine"}.get(sched_cfg.get("beta_schedule", "linear"))
    if kind:
        diffusion["beta_schedule"] = kind
    return {"diffusion": diffusion, "train": {"resolution": f["resolution"], "channels": f["in_channels"]}}


@torch.no_grad()
def add_class_embedding(precond, num_classes: int) -> dict:
    """Give an unconditional diffusers UNet a zero class embedding of ``num_classes`` + null rows
    (kuosan's convention) in place, so that it computes exactly what it did; returns the new spec."""
    return precond.net.add_class_embedding(num_classes)


@torch.no_grad()
def _add_class_embedding(net, num_classes: int) -> dict:
    if getattr(net.unet, "class_embedding", None) is not None:
        raise KuosanError("this diffusers model is class-conditional already; changing its classes is not supported")
    unet_cfg = dict(net.unet.config, num_class_embeds=num_classes + 1)
    spec = _spec(unet_cfg, {}, num_classes, null_class=True)
    old_state = net.unet.state_dict()
    device = next(net.unet.parameters()).device
    net.unet = _import_diffusers().UNet2DModel.from_config(spec["fields"]["unet"]).to(device).train(net.training)
    missing, unexpected = net.unet.load_state_dict(old_state, strict=False)
    assert missing == ["class_embedding.weight"] and not unexpected, (missing, unexpected)
    net.unet.class_embedding.weight.zero_()
    net.num_classes, net.null_class = num_classes, True
    return spec


def load_for_training(path, *, num_classes: int = 0, load_weights: bool = True):
    """(precond, network spec, parent record) for a run that fine-tunes a diffusers model. An
    unconditional model trained on labelled data gets a zero class embedding with a null row
    (:func:`add_class_embedding`), so it starts exactly as the parent."""
    precond, spec, info = _load(path)
    if spec["fields"]["num_classes"]:
        raise KuosanError(f"{path} is class-conditional; fine-tuning class-conditional diffusers models is not "
                          "supported (sample it with explicit classes instead)")
    if num_classes:
        scheduler = spec["fields"]["scheduler"]
        spec = add_class_embedding(precond, num_classes)
        spec["fields"]["scheduler"] = scheduler
        info["classes"] = "parent unconditional: zero class embedding"
    if not load_weights:
        info = dict(info, note="structure only (resumed run)")
    return precond, spec, info
