"""What ``kuosan bench`` times: a contender (forward, training step, sampling loop, their FLOPs), and
kuosan's own, built from a preset, a config file or a checkpoint the way ``kuosan train`` builds it."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch

from kuosan.errors import KuosanError
from kuosan.nets.build import flops_of

__all__ = ["PEER_SIZED", "Contender", "model_section", "kuosan_contender", "under_bf16"]

# The default model: the size of the peers' usual small UNet (widths 32/64/64, 2 blocks a level,
# attention at 7×7): about 35 GFLOP a forward at batch 64 on 28×28×1.
PEER_SIZED = {"kind": "unet", "base_channels": 32, "channel_mults": [1, 2, 2], "num_blocks": 2,
              "attn_resolutions": [7], "head_channels": 32, "dropout": 0.0}


@dataclass
class Contender:
    name: str
    params: int
    forward: Callable[[], object]                 # one network forward on the fixed batch
    train_step: Callable[[], object] | None       # forward + backward + optimiser step
    sample: Callable[[int], object] | None        # a whole sampling loop of n steps
    flops_forward: int = 0                        # nominal FLOPs of one forward (the whole batch)
    flops_train: int = 0                          # FLOPs of one training step
    info: dict = field(default_factory=dict)


def under_bf16(fn: Callable) -> Callable:
    """``fn`` under bfloat16 autocast on the CPU."""
    def wrapped(*args):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            return fn(*args)
    return wrapped


def model_section(config: str | None) -> tuple[dict, dict]:
    """(model fields, diffusion fields) from a preset, a config file or a checkpoint's config.json."""
    if config is None:
        return dict(PEER_SIZED), {}
    path = Path(config)
    if path.is_dir() and (path / "config.json").is_file():
        path = path / "config.json"
    if path.suffix == ".json" and path.is_file():
        try:
            data = json.loads(path.read_text())
        except (OSError, UnicodeDecodeError, ValueError) as e:
            raise KuosanError(f"--config {config}: not a readable JSON config ({e})") from None
        if isinstance(data, dict) and data.get("format") == "kuosan-checkpoint":
            return {"kind": data["network"]["kind"], **data["network"]["fields"]}, data.get("diffusion", {})
    from kuosan.config import load_config, resolve_config_path

    src = resolve_config_path(config)
    cfg = load_config(src, {}) if isinstance(src, Path) else load_config(None, {}, base=src)
    return dataclasses.asdict(cfg.model), dataclasses.asdict(cfg.diffusion)


def _config(model: dict, diffusion: dict):
    """A kuosan Config from the two sections (a checkpoint's sections may hold more than the dataclasses)."""
    from kuosan.config import Config, DiffusionConfig, ModelConfig

    def fields(cls, values):
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in values.items() if k in known})

    return Config(model=fields(ModelConfig, model), diffusion=fields(DiffusionConfig, diffusion))


def _kuosan_fns(precond, opt, a, bf16: bool) -> tuple[Callable, Callable, Callable]:
    """Forward, training step and sampling loop, each as ``kuosan train`` and ``kuosan sample`` run them."""
    from kuosan.config import SampleConfig
    from kuosan.diffusion.objectives import loss_for
    from kuosan.sampling import generate

    g = torch.Generator().manual_seed(1)
    x = torch.randn(a.batch, a.channels, a.resolution, a.resolution, generator=g)
    c_noise = torch.randn(a.batch, generator=g)
    x0, objective = x.clamp(-1, 1), loss_for(precond)

    def forward():
        with torch.no_grad() if bf16 else torch.inference_mode():  # as kuosan.sampling.generate does
            return precond.net(x, c_noise)

    def train_step():
        loss = objective(precond, x0, None, generator=g).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    def sample(steps):
        return generate(precond, SampleConfig("euler", steps), shape=(a.channels, a.resolution, a.resolution),
                        seeds=range(a.batch), batch_size=a.batch, bf16=bf16)

    return forward, train_step, sample


def kuosan_contender(model: dict, diffusion: dict, a, name: str, channels_last: bool, compile: bool,
                     bf16: bool) -> Contender:
    """kuosan's network with ``a``'s batch and image size, in the given layout, compiled or not."""
    from kuosan.model import build_model, network_spec
    from kuosan.nets.layout import prepare_model
    from kuosan.training.optim import adamw, match_state_layout

    cfg = _config(model, diffusion)
    spec = network_spec(cfg, channels=a.channels, resolution=a.resolution, num_classes=0)
    torch.manual_seed(0)
    precond = build_model(spec, cfg.diffusion)
    opt = adamw(precond.parameters(), lr=1e-4)  # as kuosan train does
    forward, train_step, sample = _kuosan_fns(precond, opt, a, bf16)
    flops = flops_of(forward)  # counted eagerly, before any compilation
    flops_train = 0 if a.skip_train else flops_of(train_step)
    prepare_model(precond, channels_last=channels_last, compile=compile)
    # The FLOP count's step made the AdamW moments in the old layout; kuosan train makes them after
    # prepare_model (NCHW moments beside channels_last weights would send FusedAdamW to torch's slower path).
    match_state_layout(opt)
    if bf16:  # training as kuosan train --bf16 runs it; sampling through generate(bf16=True) above
        forward, train_step = under_bf16(forward), under_bf16(train_step)
    return Contender(name, sum(p.numel() for p in precond.net.parameters()), forward, train_step, sample,
                     flops, flops_train, {"spec": spec, "channels_last": channels_last, "compile": compile,
                                          "bf16_autocast": bf16, "sampler": "euler", "precond": cfg.diffusion.precond})
