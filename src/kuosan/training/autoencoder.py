"""Training the latent-diffusion autoencoder (Rombach et al. 2022, §3; Esser et al. 2021, §3.1).

Loss per image, all terms averaged over pixels so weights do not depend on the image size:

    L = L_rec(x, x̂) + w_p · L_perc(x, x̂) + w_kl · KL(q(z|x) || N(0, I)) / (C·H·W) + λ · w_d · L_G(x̂)
        + w_c · L_cycle(x̂, μ(x)) + w_eq · L_rec(↓_s x, D(↓_s z))

``L_rec`` is L1 or L2; ``L_perc`` an LPIPS-style feature distance (see :class:`Perceptual`); the KL in nats
per image (closed form, :meth:`DiagonalGaussian.kl`) divided by the pixel count, so ``w_kl = 1e-6`` means
what it means in latent diffusion's KL-f4 setting, whose reconstruction term is summed over pixels; and
from ``disc_start`` on, the hinge generator loss of a PatchGAN, weighted adaptively (Esser et al. 2021, eq. 7);
when ``cycle_weight > 0``, a latent cycle-consistency term (see :func:`latent_cycle_loss`); and, when
``equivariance_weight > 0``, a scale-equivariance term (see :func:`scale_equivariance_loss`).

Checkpoints use :func:`kuosan.training.checkpoint.save_checkpoint`: ``config.json`` has ``"format":
"kuosan-autoencoder"``, the network, the training settings and the latent scale measured on the training
data; ``model.safetensors`` the raw weights (plus ``discriminator.*`` when the GAN is on), ``ema.safetensors``
the EMA weights (what encoding and decoding use), ``optimizer.safetensors`` and ``state.json`` for ``--resume``.
"""

from __future__ import annotations

import dataclasses
import json
import time
import typing
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn
from torch.nn import functional as F

from kuosan.errors import KuosanError
from kuosan.training.optim import adamw, match_state_layout

__all__ = ["AutoencoderTrainConfig", "PRESETS", "train_autoencoder", "Perceptual", "build_perceptual",
           "hinge_d_loss", "adaptive_gan_weight", "latent_cycle_loss", "scale_equivariance_loss", "check_options",
           "BOUNDS"]


@dataclass(frozen=True)
class AutoencoderTrainConfig:
    data: str = "fashion-mnist"            # training images: any data set spec (kuosan.data.load_dataset)
    data_root: typing.Optional[str] = None  # directory of the data set's files, if not the default
    resolution: typing.Optional[int] = None  # resize images to this size (default: the data's own)
    channels: typing.Optional[int] = None  # 1 or 3 (default: the data's own)
    max_images: typing.Optional[int] = None  # use only the first N training images
    latent_channels: int = 4               # channels of z
    downsample: int = 4                    # spatial reduction: 2, 4 or 8
    base_channels: int = 64                # width at full resolution
    channel_mults: typing.Optional[tuple] = None  # per-level widths (default: (1, 2), (1, 2, 2), (1, 2, 2, 4))
    num_blocks: int = 1                    # residual blocks per level
    rec_loss: str = "l1"                   # reconstruction loss: l1 | l2
    perceptual: str = "auto"               # auto | none | fmnist-cnn | mnist-cnn | efficientnet-lite0
    perceptual_weight: float = 0.1         # w_p (0 = off)
    kl_weight: float = 1e-6                # w_kl, on the KL per pixel (see the module docstring)
    disc_weight: float = 0.0               # w_d, PatchGAN hinge loss (0 = no discriminator)
    disc_start: int = 2000                 # step at which the GAN loss switches on
    # w_c, latent cycle consistency: the reconstruction encoded again should give the first latent back,
    # ‖μ(x̂) − sg(μ(x))‖² over the batch variance of μ(x) (0 = off; costs one more encoder pass a step)
    cycle_weight: float = 0.0
    # w_eq, scale equivariance: the latent averaged down by `equivariance_scale` should decode to the image
    # averaged down as much (0 = off; costs one decoder pass at 1/scale² the size a step)
    equivariance_weight: float = 0.0       # w_eq (0 = off)
    equivariance_scale: int = 2            # s, the factor latent and image are averaged down by
    steps: int = 5000                      # optimiser steps
    time_limit: typing.Optional[float] = None  # stop after this many seconds (a checkpoint is written)
    batch: int = 64                        # images per step
    lr: float = 5e-4                       # peak learning rate (AdamW)
    betas: tuple = (0.9, 0.99)             # AdamW β1, β2
    warmup_steps: int = 200                # linear warm-up
    lr_decay: str = "cosine"               # constant | cosine | linear (to 5% at `steps`)
    decay_over: str = "steps"              # lr decay over: steps | time (the share of time_limit spent)
    grad_clip: float = 1.0                 # clip the global gradient norm (0 = off)
    ema_decay: float = 0.999               # EMA of the weights (0 = none)
    seed: int = 0                          # makes the run reproducible
    log_every: int = 100                   # steps between metrics lines
    checkpoint_every: int = 1000           # steps between checkpoints (0 = only at the end)
    keep_checkpoints: int = 2              # how many recent checkpoints to keep
    scale_images: int = 5000               # training images the latent scale is measured on
    out: str = "runs/autoencoder"          # output directory
    device: str = "auto"                   # auto | cpu | cuda | cuda:N


# Presets for `kuosan train-autoencoder --config NAME` (kept here, not in configs/, which holds diffusion presets).
PRESETS = {
    # 4x4 spatial reduction, 4 channels (4x fewer numbers); L2 only: PSNR is the target, and the perceptual
    # loss costs 1.5-3x per step on a CPU (turn it on with --perceptual auto --perceptual_weight 0.1).
    "fashion-mnist": {"data": "fashion-mnist", "latent_channels": 4, "downsample": 4, "base_channels": 32,
                      "rec_loss": "l2", "perceptual": "none", "steps": 5000, "batch": 32, "lr": 2e-3,
                      "checkpoint_every": 500, "out": "runs/ae-fashion-mnist"},
    # 64x64 colour -> 4x16x16 (12x fewer numbers); L1 + EfficientNet-Lite0 content loss + PatchGAN at the end.
    "emoji": {"data": "emoji", "latent_channels": 4, "downsample": 4, "base_channels": 16,
              "channel_mults": (1, 2, 4), "rec_loss": "l1", "perceptual": "efficientnet-lite0", "perceptual_weight": 0.1,
              "disc_weight": 0.1, "disc_start": 1000, "steps": 1500, "batch": 16, "lr": 2e-3,
              "checkpoint_every": 250, "out": "runs/ae-emoji"},
    # `kuosan demo --data emoji` on a CPU (the demo sets steps and time from the budget): the same network, L1
    # only (the content loss and the GAN cost 2-3x per step), the latent scale measured on 2,000 images.
    "emoji-demo": {"data": "emoji", "latent_channels": 4, "downsample": 4, "base_channels": 16,
                   "channel_mults": (1, 2, 4), "rec_loss": "l1", "perceptual": "none", "steps": 1500, "batch": 16,
                   "lr": 2e-3, "warmup_steps": 100, "scale_images": 2000, "checkpoint_every": 500,
                   "out": "runs/ae-emoji-demo"},
    # the demo on CUDA: 4x the width, two blocks a level, content loss and PatchGAN (from half-way in the demo)
    "emoji-gpu": {"data": "emoji", "latent_channels": 4, "downsample": 4, "base_channels": 64,
                  "channel_mults": (1, 2, 4), "num_blocks": 2, "rec_loss": "l1", "perceptual": "efficientnet-lite0",
                  "perceptual_weight": 0.1, "disc_weight": 0.1, "disc_start": 10000, "steps": 20000, "batch": 32,
                  "lr": 1e-3, "checkpoint_every": 2000, "out": "runs/ae-emoji-gpu"},
    # seconds, for tests and smoke runs: 8x8 digits -> 2x4x4
    "digits-tiny": {"data": "digits", "latent_channels": 2, "downsample": 2, "base_channels": 16,
                    "perceptual": "none", "steps": 300, "batch": 64, "lr": 2e-3, "out": "runs/ae-digits"},
}


# Bounds of the numeric options (from a preset, a JSON file, the command line or the Python API), as
# kuosan.config's for `train`.
BOUNDS = {"resolution": (4, 1024), "channels": (1, 3), "max_images": (1, None), "latent_channels": (1, 64),
              "base_channels": (1, 4096), "num_blocks": (1, 64), "steps": (1, 10 ** 9), "batch": (1, 65536),
              "warmup_steps": (0, None), "disc_start": (0, None), "seed": (0, 2 ** 32 - 1), "log_every": (1, None),
              "checkpoint_every": (0, None), "keep_checkpoints": (1, 1000), "scale_images": (1, 10 ** 7),
              "lr": (0, 1), "perceptual_weight": (0, 1e6), "kl_weight": (0, 1e6), "disc_weight": (0, 1e6),
              "grad_clip": (0, 1e6), "time_limit": (0, None), "downsample": (2, 8), "cycle_weight": (0, 1e6),
          "equivariance_weight": (0, 1e6), "equivariance_scale": (2, 16), "ema_decay": (0, 1)}


def check_options(options: dict, source: str, prefix: str = "--") -> None:
    """Every option a whole or finite number in its range, a tuple of such numbers, or text, before the
    config is built: the training code would otherwise meet a NaN weight or a one-number ``betas`` mid-run."""
    from kuosan.validation import real, whole

    hints = typing.get_type_hints(AutoencoderTrainConfig)
    for key, value in options.items():
        tp, name = hints[key], f"{prefix}{key}"
        optional = typing.get_origin(tp) is typing.Union
        if optional:
            if value is None:
                continue
            tp = next(a for a in typing.get_args(tp) if a is not type(None))
        lo, hi = BOUNDS.get(key, (None, None))
        if tp is int:
            options[key] = whole(value, name, lo, hi)
        elif tp is float:
            options[key] = real(value, name, lo, hi)
        elif tp is tuple:
            if not isinstance(value, (list, tuple)) or not value:
                raise KuosanError(f"{name} must be a list of numbers like 1,2,2, got {value!r}")
            if key == "betas":
                betas = tuple(real(b, f"each of {prefix}betas", 0) for b in value)
                if len(betas) != 2 or not all(b < 1 for b in betas):
                    raise KuosanError(f"{prefix}betas must be two numbers in [0, 1) like 0.9,0.99, got "
                                      f"{','.join(f'{b:g}' for b in betas)}")
                options[key] = betas
            else:
                if len(value) > 8:
                    raise KuosanError(f"{name} has {len(value)} levels; at most 8")
                options[key] = tuple(whole(m, f"each of {name}", 1, 64) for m in value)
        elif tp is str and not isinstance(value, str):
            raise KuosanError(f"{name} in {source} must be text, got {value!r}")
        elif tp is str and key in ("data", "out") and not value.strip():
            raise KuosanError(f"{name} is empty")


def _check(cfg: AutoencoderTrainConfig) -> None:
    check_options(dataclasses.asdict(cfg), "the autoencoder config", prefix="")  # every number: type, finite, range
    if cfg.downsample not in (2, 4, 8):
        raise KuosanError(f"downsample must be 2, 4 or 8, got {cfg.downsample}")
    if cfg.rec_loss not in ("l1", "l2"):
        raise KuosanError(f"rec_loss must be l1 or l2, got {cfg.rec_loss!r}")
    for name in ("steps", "batch", "latent_channels", "base_channels", "log_every", "scale_images",
                 "keep_checkpoints"):
        if getattr(cfg, name) < 1:
            raise KuosanError(f"{name} must be positive, got {getattr(cfg, name)}")
    for name in ("perceptual_weight", "kl_weight", "disc_weight", "disc_start", "checkpoint_every", "grad_clip",
                 "cycle_weight", "equivariance_weight"):
        if getattr(cfg, name) < 0:
            raise KuosanError(f"{name} must be non-negative, got {getattr(cfg, name)}")
    if cfg.decay_over not in ("steps", "time"):
        raise KuosanError(f"decay_over must be steps or time, got {cfg.decay_over!r}")
    if cfg.decay_over == "time" and cfg.time_limit is None:
        raise KuosanError("decay_over time needs time_limit (seconds): the decay runs over it")
    if not 0 < cfg.lr <= 1 or not 0 <= cfg.ema_decay < 1:
        raise KuosanError(f"need 0 < lr <= 1 and 0 <= ema_decay < 1, got {cfg.lr} and {cfg.ema_decay}")


# --- losses -------------------------------------------------------------------------------------

class Perceptual(nn.Module):
    """A content distance on a frozen pretrained network's feature maps, LPIPS-style (Zhang et al. 2018,
    eq. 1 with all layer weights 1): unit-normalise each map over channels, average the squared difference
    over positions, sum over layers. ``forward(x, y) -> [B]`` for images in [-1, 1]."""

    def __init__(self, name: str, features, prepare):
        super().__init__()
        self.name, self._features, self._prepare = name, features, prepare

    def forward(self, x, y):
        fx, fy = self._features(self._prepare(x)), self._features(self._prepare(y))
        total = 0.0
        for a, b in zip(fx, fy):
            a, b = F.normalize(a, dim=1, eps=1e-8), F.normalize(b, dim=1, eps=1e-8)
            total = total + (a - b).square().sum(1).mean((1, 2))
        return total


def _frozen(module: nn.Module) -> nn.Module:
    return module.eval().requires_grad_(False)


def _classifier_perceptual(name: str) -> Perceptual:
    """Feature maps after each ReLU of the project's data-set classifier (kuosan.evaluation.classifier)."""
    from kuosan.evaluation.classifier import load_classifier

    model = _frozen(load_classifier(name)[0])
    channels, res = model.convs[0].in_channels, model.resolution

    def prepare(x):
        x = x.mean(1, keepdim=True) if x.shape[1] != channels and channels == 1 else x.expand(-1, channels, -1, -1)
        return F.interpolate(x, size=(res, res), mode="bilinear", antialias=True) if x.shape[-1] != res else x

    def features(x):
        maps = []
        for i, (conv, norm) in enumerate(zip(model.convs, model.norms)):
            x = F.relu(norm(conv(x)))
            maps.append(x)
            if i in (1, 3):
                x = F.max_pool2d(x, 2)
        return maps

    p = Perceptual(name, features, prepare)
    p.net = model                                      # registered, so .to(device) moves it
    return p


def _efficientnet_perceptual(resolution: int) -> Perceptual:
    """EfficientNet-Lite0 (ImageNet) feature maps after the stem and after stages 1-3, on the image enlarged
    to 2x (at least 64, at most 224 px) in the network's (x - 127) / 128 range."""
    from kuosan.evaluation import efficientnet as en

    model = _frozen(en.load_efficientnet_lite0())
    side = min(en.RESOLUTION, max(64, 2 * resolution))
    taps = {0, 2, 4}                                   # last block of stages 1, 2, 3 (Tan & Le 2019, Table 1)

    def prepare(x):
        x = x.expand(-1, 3, -1, -1) if x.shape[1] == 1 else x
        x = ((x + 1) * 127.5 - en.MEAN_RGB[0]) / en.STDDEV_RGB[0]
        return F.interpolate(x, size=(side, side), mode="bilinear") if x.shape[-1] != side else x

    def features(x):
        h = F.relu6(model._bn0(model._conv_stem(x)))
        maps = [h]
        for i in range(max(taps) + 1):
            h = model._blocks[i](h)
            if i in taps:
                maps.append(h)
        return maps

    p = Perceptual("efficientnet-lite0", features, prepare)
    p.net = model
    return p


def build_perceptual(choice: str, data_name: str, resolution: int) -> tuple[Perceptual | None, str]:
    """``(loss or None, one line saying which network, or why none)``. ``auto``: the project's classifier
    for this data set if its weights are shipped, else EfficientNet-Lite0 if installed, else off."""
    from kuosan.evaluation.classifier import CLASSIFIERS, WEIGHTS_DIR, classifier_for_dataset

    if choice == "none":
        return None, "perceptual loss off (--perceptual none)"
    if choice in CLASSIFIERS:
        return _classifier_perceptual(choice), f"perceptual loss on {choice} features"
    if choice == "efficientnet-lite0":
        return _efficientnet_perceptual(resolution), "perceptual loss on EfficientNet-Lite0 features"
    if choice != "auto":
        raise KuosanError(f"--perceptual must be auto, none, efficientnet-lite0 or one of {', '.join(CLASSIFIERS)}, "
                          f"got {choice!r}")
    clf = classifier_for_dataset(data_name.split(":")[0])
    if clf and (WEIGHTS_DIR / f"{clf}.safetensors").is_file():
        return _classifier_perceptual(clf), f"perceptual loss on {clf} features (the shipped classifier)"
    try:
        return _efficientnet_perceptual(resolution), "perceptual loss on EfficientNet-Lite0 features" + (
            f" ({clf} weights not shipped)" if clf else "")
    except KuosanError as e:
        return None, f"perceptual loss off: no offline feature network ({e})"


def hinge_d_loss(real_logits: torch.Tensor, fake_logits: torch.Tensor) -> torch.Tensor:
    """Discriminator hinge loss E[max(0, 1 − D(x))] + E[max(0, 1 + D(x̂))] (Lim & Ye 2017; Miyato et al. 2018)."""
    return F.relu(1.0 - real_logits).mean() + F.relu(1.0 + fake_logits).mean()


def latent_cycle_loss(encoder, x_hat: torch.Tensor, mu: torch.Tensor) -> torch.Tensor:
    """L_cycle = mean ‖μ(x̂) − sg(μ(x))‖² / sg(Var μ(x)): encode the reconstruction again and ask for the
    first latent back, the cycle-consistency idea of CycleGAN (Zhu et al. 2017, eq. 2: F(G(x)) ≈ x) turned to
    the latent side, E(D(z)) ≈ z. A latent model's samples are latents the encoder never produced; the term
    asks the decoder to make images the encoder reads back as the latent they came from.

    ``x̂`` is the training reconstruction (decoded from z ~ q(z|x), whose spread the small KL weight keeps
    narrow), so the term costs one encoder pass, not a decoder pass too. The gradient reaches the decoder
    through x̂ and the encoder through μ(x̂); μ(x) is the fixed target. Dividing by the batch variance of
    μ(x) (detached) makes the term blind to the latents' scale, so the encoder cannot lower it by shrinking
    them, and puts it in units of the scaled latents a diffusion model sees (s = 1 / std μ)."""
    target = mu.detach()
    return (encoder(x_hat).mean - target).square().mean() / target.var().clamp_min(1e-12)


def scale_equivariance_loss(decoder, x: torch.Tensor, z: torch.Tensor, scale: int, rec_loss: str = "l1"
                            ) -> torch.Tensor:
    """L_eq = L_rec(↓_s x, D(↓_s z)), ↓_s the average over s×s blocks: a latent made s times smaller should
    decode to the image made s times smaller. This is the scale half of EQ-VAE (Kouzelis et al. 2025, its
    equivariance objective with the transform a downscaling) and the scale-equivariance regulariser of
    Skorokhodov et al. 2025 ("Improving the Diffusability of Autoencoders"): an autoencoder trained on
    reconstruction alone puts fine detail into the latent's high frequencies, which a diffusion model must then
    learn too; asking the latent's low-pass to carry the image's low-pass is meant to bring its spectrum closer
    to the image's (benchmarks/latent_spectrum.py measures whether it did).

    ``z`` is the training latent (sampled from q(z|x)); the gradient reaches the decoder and, through ``z``,
    the encoder. Both sides must divide by ``scale`` (checked by the caller once, not here each step)."""
    target = F.avg_pool2d(x, scale)
    x_small = decoder(F.avg_pool2d(z, scale))
    diff = (x_small - target).abs() if rec_loss == "l1" else (x_small - target).square()
    return diff.mean()


def adaptive_gan_weight(nll: torch.Tensor, g_loss: torch.Tensor, last_layer: torch.Tensor,
                        delta: float = 1e-6) -> torch.Tensor:
    """λ = ‖∇_{G_L} L_rec‖ / (‖∇_{G_L} L_GAN‖ + δ) at the decoder's last layer G_L
    (Esser et al. 2021, eq. 7), clamped to [0, 1e4] and detached."""
    g_nll = torch.autograd.grad(nll, last_layer, retain_graph=True)[0]
    g_gan = torch.autograd.grad(g_loss, last_layer, retain_graph=True)[0]
    return (g_nll.norm() / (g_gan.norm() + delta)).clamp(0.0, 1e4).detach()


# --- training -----------------------------------------------------------------------------------

def _network_fields(cfg: AutoencoderTrainConfig, data) -> dict:
    from kuosan.nets.autoencoder import AutoencoderConfig, default_mults

    mults = tuple(cfg.channel_mults) if cfg.channel_mults else default_mults(cfg.downsample)
    return dataclasses.asdict(AutoencoderConfig(in_channels=data.channels, resolution=data.resolution,
                                                latent_channels=cfg.latent_channels, downsample=cfg.downsample,
                                                base_channels=cfg.base_channels, channel_mults=mults,
                                                num_blocks=cfg.num_blocks))


def _scale_subset(data, n: int) -> torch.Tensor:
    from kuosan.data.dataset import take_stratified

    return data.images[torch.from_numpy(take_stratified(data.labels.numpy(), n))]


def _step_of_line(line: str) -> float:
    """The step of a metrics line; infinity for a damaged one (half-written by a killed run)."""
    try:
        return float(json.loads(line)["step"])
    except (ValueError, KeyError, TypeError):
        return float("inf")


class AutoencoderRun:
    """One autoencoder training run's pieces, built from the config: data, network, discriminator, perceptual
    loss, EMA, optimiser, noise generator. :func:`train_autoencoder` calls its steps in order."""

    def __init__(self, cfg: AutoencoderTrainConfig, device: torch.device, *, log):
        from kuosan.data import load_dataset
        from kuosan.nets.autoencoder import Autoencoder, AutoencoderConfig, PatchDiscriminator
        from kuosan.nets.layout import prepare_model
        from kuosan.training.ema import EMA

        self.cfg, self.device, self.log, self.out = cfg, device, log, Path(cfg.out)
        torch.manual_seed(cfg.seed)  # network initialisation
        data = self.data = load_dataset(cfg.data, "train", root=cfg.data_root, resolution=cfg.resolution,
                                        channels=cfg.channels, max_images=cfg.max_images)
        self.images = data.images.to(device)
        self.fields = _network_fields(cfg, data)
        # channels_last: the fused GroupNorm-SiLU and the 3x3 kernels (benchmarks/autoencoder_speed.py)
        ae = self.ae = prepare_model(Autoencoder(AutoencoderConfig(**self.fields)).to(device))
        side, s = ae.latent_shape[1], cfg.equivariance_scale
        if cfg.equivariance_weight > 0 and (side % s or data.resolution != side * cfg.downsample):
            raise KuosanError(f"equivariance_scale {s} needs images whose side is the latent's times downsample "
                              f"and a latent side it divides; {data.resolution}x{data.resolution} images give "
                              f"{side}x{side} latents (use a scale that divides {side}, or equivariance_weight 0)")
        disc = self.disc = (PatchDiscriminator(data.channels, data.resolution).to(device) if cfg.disc_weight > 0
                            else None)
        perceptual, self.perceptual_note = (build_perceptual(cfg.perceptual, data.name, data.resolution)
                                            if cfg.perceptual_weight > 0 else (None, "perceptual loss off (weight 0)"))
        self.perceptual = perceptual.to(device) if perceptual is not None else None
        self.ema = EMA(ae, cfg.ema_decay) if cfg.ema_decay > 0 else None
        params = [{"params": ae.parameters()}] + ([{"params": disc.parameters()}] if disc is not None else [])
        self.opt = adamw(params, lr=cfg.lr, betas=tuple(cfg.betas), weight_decay=0.0)
        self.noise_gen = torch.Generator().manual_seed(cfg.seed + 1)
        self.pixels = data.channels * data.resolution ** 2
        self.start_step, self.elapsed_before = 0, 0.0
        self.window: dict[str, float] = {}     # sums over the metrics line's steps, and their count "n"
        self.scale_images = None               # the images the latent scale is measured on (set before the loop)
        self.t0 = time.time()                  # reset when the loop starts
        self.lr = cfg.lr

    def describe(self) -> str:
        from kuosan.nets.build import count_parameters

        d, ae, cfg = self.data, self.ae, self.cfg
        return (f"data: {d.name}, {len(d)} images {d.channels}x{d.resolution}x{d.resolution} | "
                f"autoencoder: {count_parameters(ae) / 1e6:.2f} M parameters, latent {ae.latent_shape} "
                f"({self.pixels / (ae.latent_shape[0] * ae.latent_shape[1] ** 2):.1f}x fewer numbers) | "
                f"{self.perceptual_note} | "
                f"GAN: {'from step %d' % cfg.disc_start if self.disc is not None else 'off'} | device: {self.device}")

    # --- what config.json records ----------------------------------------------------------------
    def _train_and_data(self) -> dict:
        d = self.data
        return {"train": json.loads(json.dumps(dataclasses.asdict(self.cfg))),
                "data": {"spec": self.cfg.data, "name": d.name, "class_names": list(d.class_names),
                         "resolution": d.resolution, "channels": d.channels}}

    def _perceptual_name(self) -> str | None:
        return self.perceptual.name if self.perceptual is not None else None

    def run_config(self) -> dict:
        """config.json: the network, the settings, and the latent scale measured on the EMA (or raw) weights."""
        from kuosan.latent import latent_statistics

        stats = latent_statistics(self.ema.module if self.ema is not None else self.ae, self.scale_images)
        stats["measured_on"] = f"{self.data.name}, {stats['images']} images"
        return {"format": "kuosan-autoencoder", "version": 1, "network": {"kind": "autoencoder", "fields": self.fields},
                **self._train_and_data(),
                "latent": {**stats, "shape": list(self.ae.latent_shape)},
                "losses": {"perceptual": self._perceptual_name(), "note": self.perceptual_note}}

    # --- restore ---------------------------------------------------------------------------------
    def restore(self, allow_changes: bool) -> None:
        """Continue from the newest intact checkpoint of ``out``: refuse another architecture, load the
        training state, refuse a changed recipe unless ``allow_changes``, record the resume."""
        from kuosan.checkpoint import resolve_checkpoint

        ckpt = resolve_checkpoint(self.out, require_state=True)
        saved = json.loads((ckpt / "config.json").read_text())
        if saved.get("network", {}).get("fields") != json.loads(json.dumps(self.fields)):
            raise KuosanError(f"cannot resume {self.out}: its checkpoint has another autoencoder architecture; "
                              "drop the changed options or choose another --out")
        self._load_state(ckpt)
        changed = self._check_recipe(saved, ckpt, allow_changes)
        self.log(f"resuming {self.out} from step {self.start_step} ({ckpt.name})"
                 + (f" with changed {', '.join(changed)} (recorded in history.jsonl)" if changed else ""))

    def _load_state(self, ckpt: Path) -> None:
        """Weights (discriminator's included), EMA, optimiser, counters and generator states of ``ckpt``."""
        from safetensors.torch import load_file
        from kuosan.checkpoint import decode_rng, optimizer_from_tensors

        try:
            state = json.loads((ckpt / "state.json").read_text())
            tensors = load_file(str(ckpt / "model.safetensors"))
            self.ae.load_state_dict({k: v for k, v in tensors.items() if not k.startswith("discriminator.")})
            if self.disc is not None:
                self.disc.load_state_dict({k[14:]: v for k, v in tensors.items() if k.startswith("discriminator.")})
            if self.ema is not None:
                self.ema.load_state_dict(load_file(str(ckpt / "ema.safetensors")))
            self.opt.load_state_dict(optimizer_from_tensors(load_file(str(ckpt / "optimizer.safetensors")),
                                                            state["optimizer_param_groups"]))
            match_state_layout(self.opt)
            self.start_step, self.elapsed_before = int(state["step"]), float(state["elapsed"])
            self.noise_gen.set_state(decode_rng(state["rng_noise"]))
            torch.set_rng_state(decode_rng(state["rng_torch"]))
        except (OSError, KeyError, ValueError, TypeError, RuntimeError) as e:
            raise KuosanError(f"cannot resume from {ckpt}: its training state does not fit this run (GAN or EMA "
                              f"switched on or off?): {str(e).splitlines()[0] if str(e) else type(e).__name__}"
                              ) from None

    def _check_recipe(self, saved: dict, ckpt: Path, allow_changes: bool) -> list:
        """The recipe keys that differ from ``saved`` (refused unless ``allow_changes``), recorded in history."""
        from kuosan.rundir import changed_values, check_resume, record_history

        recipe = {**self._train_and_data(), "losses": {"perceptual": self._perceptual_name()}}
        saved_recipe = {key: saved.get(key) for key in ("train", "data")}
        saved_recipe["losses"] = {"perceptual": (saved.get("losses") or {}).get("perceptual")}
        changed = check_resume(saved_recipe, recipe, allow_changes=allow_changes, where=str(self.out))
        record_history(self.out, {"event": "resume", "step": self.start_step, "checkpoint": ckpt.name})
        if changed:
            record_history(self.out, {"event": "changed", "step": self.start_step,
                                      "changed": changed_values(saved_recipe, recipe, changed)})
        return changed

    # --- one step --------------------------------------------------------------------------------
    def batch(self, step: int) -> torch.Tensor:
        """The images of ``step``'s batch, in [-1, 1]."""
        from kuosan.data import to_model_range
        from kuosan.training.loop import batch_indices

        return to_model_range(self.images[batch_indices(step, self.cfg.batch, len(self.data), self.cfg.seed)
                                          .to(self.device)])

    def losses(self, x: torch.Tensor, gan_on: bool):
        """``(x̂, nll, kl, loss, g_loss, optional)``: the terms of L (see the module docstring); ``g_loss`` None
        without GAN; ``optional`` the optional terms that are on, by metrics name (``cycle``, ``equivariance``)."""
        cfg = self.cfg
        posterior = self.ae.encode(x)
        z = posterior.sample(self.noise_gen)
        x_hat = self.ae.decode(z)
        diff = (x_hat - x).abs() if cfg.rec_loss == "l1" else (x_hat - x).square()
        nll = diff.flatten(1).mean(1)
        if self.perceptual is not None:
            nll = nll + cfg.perceptual_weight * self.perceptual(x_hat, x)
        nll = nll.mean()
        kl = posterior.kl().mean() / self.pixels
        loss = nll + cfg.kl_weight * kl
        optional = {}
        if cfg.cycle_weight > 0:
            optional["cycle"] = latent_cycle_loss(self.ae.encode, x_hat, posterior.mean)
            loss = loss + cfg.cycle_weight * optional["cycle"]
        if cfg.equivariance_weight > 0:
            optional["equivariance"] = scale_equivariance_loss(self.ae.decode, x, z, cfg.equivariance_scale,
                                                               cfg.rec_loss)
            loss = loss + cfg.equivariance_weight * optional["equivariance"]
        g_loss = None
        if gan_on:
            g_loss = -self.disc(x_hat).mean()
            lam = adaptive_gan_weight(nll, g_loss, self.ae.decoder.last_layer)
            loss = loss + cfg.disc_weight * lam * g_loss
        return x_hat, nll, kl, loss, g_loss, optional

    def one_step(self, step: int) -> None:
        """One autoencoder step, then (from ``disc_start``) one discriminator step; adds to the metrics window."""
        from kuosan.training.loop import lr_at

        cfg, opt = self.cfg, self.opt
        x = self.batch(step)
        fraction = self.elapsed() / cfg.time_limit if cfg.decay_over == "time" else None  # share of the limit spent
        self.lr = lr_at(step, cfg, fraction)
        for group in opt.param_groups:
            group["lr"] = self.lr
        gan_on = self.disc is not None and step >= cfg.disc_start
        x_hat, nll, kl, loss, g_loss, optional = self.losses(x, gan_on)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if self.disc is not None:
            for p in self.disc.parameters():             # the generator step must not move the discriminator
                p.grad = None
        torch.nn.utils.clip_grad_norm_(self.ae.parameters(), cfg.grad_clip if cfg.grad_clip > 0 else float("inf"))
        if not torch.isfinite(loss):
            raise KuosanError(f"autoencoder training diverged at step {step} (loss {float(loss)}); "
                              f"lower --lr (now {cfg.lr:g})")
        opt.step()
        if gan_on:                                       # discriminator step, on the detached reconstruction
            opt.zero_grad(set_to_none=True)
            d_loss = hinge_d_loss(self.disc(x), self.disc(x_hat.detach()))
            d_loss.backward()
            opt.step()
            self._add(d_loss=d_loss, g_loss=g_loss)
        if self.ema is not None:
            self.ema.update(self.ae, step)
        self._add(**optional)
        self._add(loss=loss, nll=nll, kl=kl, mse01=float(((x_hat.detach() - x) / 2).square().mean()))
        self.window["n"] = self.window.get("n", 0) + 1

    def _add(self, **values) -> None:
        for key, value in values.items():
            self.window[key] = self.window.get(key, 0.0) + float(value.detach() if torch.is_tensor(value) else value)

    def out_of_time(self) -> bool:
        t = self.cfg.time_limit
        return t is not None and self.elapsed() >= t

    def elapsed(self) -> float:
        """Seconds trained so far: this process's and those of the runs it resumed."""
        return self.elapsed_before + time.time() - self.t0

    # --- metrics, checkpoint ---------------------------------------------------------------------
    def metrics(self, step: int, window_t: float) -> dict:
        """The metrics-log line after ``step``: the window's means, learning rate, time, speed, train PSNR."""
        n = self.window.pop("n")
        rec = {"step": step, **{k: v / n for k, v in self.window.items()}, "lr": self.lr,
               "time": self.elapsed(),
               "images_per_s": n * self.cfg.batch / max(1e-9, time.time() - window_t)}
        rec["train_psnr"] = -10 * float(torch.log10(torch.tensor(rec.pop("mse01"))))
        return rec

    def checkpoint(self, step: int) -> Path:
        """Checkpoint ``step``; the run's config.json is rewritten with the latent scale measured now."""
        from kuosan.checkpoint import atomic_write_text, encode_rng, save_checkpoint

        model = dict(self.ae.state_dict())
        if self.disc is not None:
            model.update({f"discriminator.{k}": v for k, v in self.disc.state_dict().items()})
        state = {"elapsed": self.elapsed(), "seed": self.cfg.seed,
                 "rng_noise": encode_rng(self.noise_gen.get_state()), "rng_torch": encode_rng(torch.get_rng_state())}
        config = self.run_config()
        atomic_write_text(self.out / "config.json", json.dumps(config, indent=2))
        return save_checkpoint(self.out, step, config=config, model=model,
                               ema=self.ema.state_dict() if self.ema is not None else None,
                               optimizer=self.opt, state=state, keep=self.cfg.keep_checkpoints)


def _open_metrics(out: Path, start_step: int):
    """The metrics log: a new one for a new run; on resume, without the lines a killed run wrote after its
    checkpoint, appended to."""
    from kuosan.checkpoint import atomic_write_text

    path = out / "metrics.jsonl"
    if start_step and path.is_file():
        kept = [ln for ln in path.read_text().splitlines() if _step_of_line(ln) <= start_step]
        atomic_write_text(path, "".join(ln + "\n" for ln in kept))
    return open(path, "a" if start_step else "w")


def train_autoencoder(cfg: AutoencoderTrainConfig, *, resume: bool = False, allow_changes: bool = False,
                      log=print) -> Path:
    """Train an autoencoder as ``cfg`` says; returns the run directory. See the module docstring.

    The run directory is locked for the whole run (:class:`kuosan.rundir.RunLock`): a second process
    writing into it is refused. ``resume`` with a changed recipe (learning rate, batch, loss weights...) is
    refused unless ``allow_changes``; the run's ``history.jsonl`` records starts, resumes and changes."""
    from kuosan.rundir import RunLock, check_not_inside_checkpoint

    _check(cfg)
    check_not_inside_checkpoint(cfg.out)
    with RunLock(cfg.out, command="train-autoencoder"):  # one process: no distributed autoencoder training
        return _train(cfg, resume=resume, allow_changes=allow_changes, log=log)


def _train(cfg: AutoencoderTrainConfig, *, resume: bool, allow_changes: bool, log) -> Path:
    """Build, restore, the loop (one step, log, checkpoint), the final checkpoint; see :class:`AutoencoderRun`."""
    from kuosan.checkpoint import list_checkpoints
    from kuosan.rundir import record_history
    from kuosan.runtime import resolve_device

    out, device = Path(cfg.out), resolve_device(cfg.device)
    if list_checkpoints(out) and not resume:
        raise KuosanError(f"{out} already holds a training run; pass --resume to continue it, or choose another --out")
    run = AutoencoderRun(cfg, device, log=log)                  # build: data, network, losses, optimiser
    if resume and list_checkpoints(out):                        # restore (none yet: start from step 0)
        run.restore(allow_changes)
    log(run.describe())
    out.mkdir(parents=True, exist_ok=True)
    if not run.start_step:
        record_history(out, {"event": "start", "steps": cfg.steps, "seed": cfg.seed})
    run.scale_images = _scale_subset(run.data, cfg.scale_images)
    metrics = _open_metrics(out, run.start_step)
    run.t0 = window_t = time.time()
    step = run.start_step
    try:
        while step < cfg.steps:                                 # the loop
            if run.out_of_time():
                break
            run.one_step(step)
            step += 1
            if step % cfg.log_every == 0 or step == cfg.steps:  # log
                rec = run.metrics(step, window_t)
                metrics.write(json.dumps(rec) + "\n")
                metrics.flush()
                log(f"step {step}: loss {rec['loss']:.4f}, train PSNR {rec['train_psnr']:.2f} dB, "
                    f"{rec['images_per_s']:.0f} images/s")
                run.window, window_t = {}, time.time()
            if cfg.checkpoint_every and step % cfg.checkpoint_every == 0 and step < cfg.steps:
                run.checkpoint(step)                            # checkpoint
    finally:
        metrics.close()
    if step > run.start_step:                                   # finish
        ckpt = run.checkpoint(step)
        log(f"stopped at step {step}; checkpoint {ckpt} (latent scale "
            f"{json.loads((ckpt / 'config.json').read_text())['latent']['scale']:.4g})")
    return out
