"""The peers ``kuosan bench`` times kuosan against, at the same size: diffusers' ``UNet2DModel`` (DDPM
training, DDIM sampling) and lucidrains' ``denoising_diffusion_pytorch.Unet`` (its ``GaussianDiffusion``).

Both are optional (``pip install diffusers denoising-diffusion-pytorch``) and imported inside the builders;
a peer that cannot be imported is reported and skipped. All start from random weights: nothing is
downloaded.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import io
import math
from typing import Callable

import torch

from kuosan.bench.contenders import Contender, under_bf16
from kuosan.errors import KuosanError
from kuosan.nets.build import flops_of

__all__ = ["PEERS", "build_peers", "diffusers_contender", "lucidrains_contender"]

INSTALL = {"diffusers": "diffusers", "lucidrains": "denoising-diffusion-pytorch"}


def _batch(a) -> tuple[torch.Tensor, torch.Tensor, torch.Generator]:
    """The fixed batch (images, integer timesteps) and the generator that drew it."""
    g = torch.Generator().manual_seed(1)
    x = torch.randn(a.batch, a.channels, a.resolution, a.resolution, generator=g)
    t = torch.randint(0, 1000, (a.batch,), generator=g)
    return x, t, g


def diffusers_config(model: dict, a) -> dict:
    """``UNet2DModel`` keyword arguments for kuosan's UNet fields: the same widths, blocks and attention."""
    widths = [model["base_channels"] * m for m in model["channel_mults"]]
    sizes = [math.ceil(a.resolution / 2 ** i) for i in range(len(widths))]
    attn = [s in set(model.get("attn_resolutions", ())) for s in sizes]
    return dict(sample_size=a.resolution, in_channels=a.channels, out_channels=a.channels,
                block_out_channels=tuple(widths), layers_per_block=model["num_blocks"],
                norm_num_groups=math.gcd(32, *widths), attention_head_dim=model.get("head_channels", 32),
                down_block_types=tuple("AttnDownBlock2D" if t else "DownBlock2D" for t in attn),
                up_block_types=tuple("AttnUpBlock2D" if t else "UpBlock2D" for t in reversed(attn)))


def _diffusers_fns(net, infer, dtype, a) -> tuple[Callable, Callable, Callable]:
    """Forward (on ``infer``), DDPM training step (on ``net``) and DDIM sampling, as diffusers' scripts run them."""
    from diffusers import DDIMScheduler, DDPMScheduler

    x, t, g = _batch(a)
    train_sched, opt = DDPMScheduler(num_train_timesteps=1000), torch.optim.AdamW(net.parameters(), lr=1e-4)

    def forward():
        with torch.no_grad():
            return infer(x.to(dtype), t).sample

    def train_step():
        noise = torch.randn(x.shape, generator=g)
        ts = torch.randint(0, 1000, (a.batch,), generator=g)
        loss = torch.nn.functional.mse_loss(net(train_sched.add_noise(x, noise, ts), ts).sample, noise)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    @torch.no_grad()
    def sample(steps):
        sched = DDIMScheduler(num_train_timesteps=1000)
        sched.set_timesteps(steps)
        xt = torch.randn(x.shape, generator=g).to(dtype)
        for step_t in sched.timesteps:
            xt = sched.step(infer(xt, step_t).sample, step_t, xt).prev_sample
        return xt

    return forward, train_step, sample


def diffusers_contender(model: dict, a, bf16: bool = False) -> Contender:
    """diffusers' UNet2DModel; with ``bf16`` as diffusers runs mixed precision: training under bfloat16
    autocast (accelerate's ``mixed_precision="bf16"``), inference on a bfloat16 copy of the weights
    (``torch_dtype=torch.bfloat16``), both inside ``no_grad`` like its pipelines."""
    import diffusers
    from diffusers import UNet2DModel

    config = diffusers_config(model, a)
    torch.manual_seed(0)
    net = UNet2DModel(**config)
    infer, dtype = (copy.deepcopy(net).to(torch.bfloat16), torch.bfloat16) if bf16 else (net, torch.float32)
    forward, train_step, sample = _diffusers_fns(net, infer, dtype, a)
    flops = flops_of(forward)
    flops_train = 0 if a.skip_train else flops_of(train_step)
    if bf16:
        train_step = under_bf16(train_step)
    return Contender("diffusers-bf16" if bf16 else "diffusers", sum(p.numel() for p in net.parameters()), forward,
                     train_step, sample, flops, flops_train,
                     {"version": diffusers.__version__, "config": config, "sampler": "DDIM", "bf16_autocast": bf16,
                      "bf16_inference": "bfloat16 weights" if bf16 else None})


def _lucidrains_fns(net, a) -> tuple[Callable, Callable, Callable]:
    """Forward, training step (``GaussianDiffusion``'s loss) and its DDIM sampling loop."""
    from denoising_diffusion_pytorch import GaussianDiffusion

    x, t, _ = _batch(a)
    x01 = (x.clamp(-1, 1) + 1) / 2  # GaussianDiffusion takes images in [0, 1]
    gd = {}

    def diffusion(steps):
        if steps not in gd:
            gd[steps] = GaussianDiffusion(net, image_size=a.resolution, timesteps=1000, sampling_timesteps=steps)
        return gd[steps]

    opt = torch.optim.AdamW(net.parameters(), lr=1e-4)

    def forward():
        with torch.inference_mode():
            return net(x, t)

    def train_step():
        loss = diffusion(max(a.sample_steps, 1))(x01)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    def sample(steps):
        with contextlib.redirect_stderr(io.StringIO()):  # its loop draws a progress bar
            return diffusion(steps).sample(batch_size=a.batch)

    return forward, train_step, sample


def lucidrains_contender(model: dict, a, bf16: bool = False) -> Contender:
    """lucidrains' Unet of the same widths; with ``bf16`` its own code under bfloat16 autocast."""
    import importlib.metadata

    from denoising_diffusion_pytorch import Unet

    torch.manual_seed(0)
    net = Unet(dim=model["base_channels"], dim_mults=tuple(model["channel_mults"]), channels=a.channels)
    forward, train_step, sample = _lucidrains_fns(net, a)
    flops = flops_of(forward)
    flops_train = 0 if a.skip_train else flops_of(train_step)
    c = Contender("lucidrains", sum(p.numel() for p in net.parameters()), forward, train_step, sample, flops,
                  flops_train, {"version": importlib.metadata.version("denoising-diffusion-pytorch"),
                                "config": {"dim": model["base_channels"], "dim_mults": list(model["channel_mults"])},
                                "sampler": "DDIM"})
    if bf16:
        c = dataclasses.replace(c, name="lucidrains-bf16", forward=under_bf16(c.forward),
                                train_step=under_bf16(c.train_step), sample=under_bf16(c.sample),
                                info={**c.info, "bf16_autocast": True})
    return c


PEERS = {"diffusers": diffusers_contender, "lucidrains": lucidrains_contender}


def build_peers(names: list[str], model: dict, a, log) -> list[Contender]:
    """The peers that can be built here (``name`` or ``name-bf16``); a missing one is reported and skipped."""
    out = []
    for full in names:
        name, bf16 = full.removesuffix("-bf16"), full.endswith("-bf16")
        if name not in PEERS:
            raise KuosanError(f"unknown peer {full!r} in --peers; choose from "
                              f"{', '.join(f'{m}, {m}-bf16' for m in PEERS)} or none")
        if model.get("kind", "unet") != "unet":
            log(f"skipping {name}: it has no equivalent of a {model.get('kind')} network")
            continue
        try:
            out.append(PEERS[name](model, a, bf16=bf16))
        except Exception as e:  # ImportError, or a peer's own import-time failure (torchvision)
            log(f"skipping {name}: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''} "
                f"(pip install {INSTALL[name]}; benchmarks/peers.py works around a broken torchvision)")
    return out
