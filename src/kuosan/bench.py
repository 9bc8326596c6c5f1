"""``kuosan bench``: a kuosan UNet beside diffusers' and lucidrains' UNets of the same size, on this machine.

Every contender runs on the same batch, resolution and thread settings, timed in one process in
alternation (A B C A B C …, medians), because absolute times on a shared machine drift from minute to
minute while ratios taken in the same seconds hold. Reported per contender: parameters, FLOPs of one
forward (multiply-add = 2, torch's counter), forward time (``inference_mode``), training images/s
(forward, backward, AdamW step), sampling images/s at equal steps (one network call a step: kuosan's
Euler, the peers' DDIM), and the achieved GFLOP/s as a fraction of a ceiling measured in the same
rounds: a 3×3 convolution 64→64 at the benchmark's resolution and batch, NCHW and ``channels_last``.

The peers are optional: ``pip install diffusers denoising-diffusion-pytorch``. lucidrains' package
imports torchvision at module level; ``benchmarks/peers.py`` installs a placeholder when torchvision
cannot load. Nothing is downloaded: all networks start from random weights.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import dataclasses
import io
import json
import math
import os
import platform
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch

from kuosan.errors import KuosanError
from kuosan.nets import kernels

__all__ = ["add_arguments", "run", "alternate", "count_flops", "Contender"]

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


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", default=None,
                   help="preset name or config/checkpoint JSON whose model to time (default: a UNet of the "
                        "peers' size: base 32, mults 1,2,2, 2 blocks, attention at 7)")
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--resolution", type=int, default=28)
    p.add_argument("--channels", type=int, default=1)
    p.add_argument("--rounds", type=int, default=5, help="alternating rounds (medians over them)")
    p.add_argument("--sample-steps", type=int, default=10, help="sampling steps, equal for all (0: skip)")
    p.add_argument("--sample-rounds", type=int, default=3)
    p.add_argument("--threads", type=int, default=None,
                   help="torch threads, the same for all (default: kuosan.runtime.configure_threads)")
    p.add_argument("--peers", default="diffusers,lucidrains",
                   help="comma list, or 'none'; a -bf16 suffix (diffusers-bf16) adds that peer under bfloat16 "
                        "autocast, the mixed precision its training scripts use")
    p.add_argument("--layouts", default="channels_last,nchw",
                   help="kuosan variants to time: channels_last, nchw, and either with -bf16 (bfloat16 autocast "
                        "for that variant alone), comma list; the first is the headline")
    p.add_argument("--compile", action="store_true", help="also time kuosan under torch.compile (slow start)")
    p.add_argument("--bf16", action="store_true", help="run every contender under bfloat16 autocast")
    p.add_argument("--skip-train", action="store_true")
    p.add_argument("--layers", action="store_true",
                   help="also time GroupNorm variants in both layouts and 3x3 convolutions, torch's against kuosan's")
    p.add_argument("--out", default=None, help="write the results as JSON here")


# --- timing ---------------------------------------------------------------------------------------

def alternate(fns: dict[str, Callable], rounds: int, warmup: int = 1) -> dict[str, dict]:
    """Time each function once per round, in turn, after ``warmup`` untimed calls each."""
    for f in fns.values():
        for _ in range(warmup):
            f()
    times: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(rounds):
        for k, f in fns.items():
            t0 = time.perf_counter()
            f()
            times[k].append(time.perf_counter() - t0)
    return {k: {"median_s": statistics.median(v), "min_s": min(v), "all_s": [round(t, 4) for t in v]}
            for k, v in times.items()}


def _attention_flops(q, k, v, *args, out_shape=None, **kw) -> int:
    return 4 * math.prod(q[:-1]) * k[-2] * q[-1]  # Q Kᵀ and P V: two batched matmuls


def _attention_backward_flops(grad_out, q, k, v, *args, out_shape=None, **kw) -> int:
    return 2 * _attention_flops(q, k, v)  # dV, dP, dQ, dK: four matmuls of the same size


def count_flops(fn: Callable) -> int:
    """FLOPs of matmuls, convolutions and attention in ``fn()`` (torch's counter, CPU attention added)."""
    from torch.utils.flop_counter import FlopCounterMode

    aten, custom = torch.ops.aten, {}
    if hasattr(aten, "_scaled_dot_product_flash_attention_for_cpu"):
        custom[aten._scaled_dot_product_flash_attention_for_cpu] = _attention_flops
        custom[aten._scaled_dot_product_flash_attention_for_cpu_backward] = _attention_backward_flops
    counter = FlopCounterMode(display=False, custom_mapping=custom)
    with counter:
        fn()
    return int(counter.get_total_flops())


def _ceiling(batch: int, res: int) -> dict[str, tuple[Callable, int]]:
    """The reference kernels: 3×3 conv 64→64 (both layouts; and bfloat16 channels_last, the ceiling of the
    bfloat16 contenders) and a 2048² matmul, with their FLOPs."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(batch, 64, res, res, generator=g)
    conv = torch.nn.Conv2d(64, 64, 3, padding=1).requires_grad_(False)
    conv_cl = torch.nn.Conv2d(64, 64, 3, padding=1).requires_grad_(False).to(memory_format=torch.channels_last)
    conv_bf = torch.nn.Conv2d(64, 64, 3, padding=1).requires_grad_(False).to(torch.bfloat16,
                                                                            memory_format=torch.channels_last)
    x_cl = x.contiguous(memory_format=torch.channels_last)
    x_bf = x_cl.to(torch.bfloat16)
    a = torch.randn(2048, 2048, generator=g)
    conv_flops = 2 * batch * 64 * 64 * 9 * res * res

    def fp32(f):  # the float32 ceilings stay float32 under --bf16
        def run():
            with torch.autocast("cpu", enabled=False):
                return f()
        return run
    return {"conv3x3_nchw": (fp32(lambda: conv(x)), conv_flops),
            "conv3x3_channels_last": (fp32(lambda: conv_cl(x_cl)), conv_flops),
            "conv3x3_channels_last_bf16": (lambda: conv_bf(x_bf), conv_flops),
            "matmul_2048": (fp32(lambda: a @ a), 2 * 2048 ** 3)}


# --- contenders -----------------------------------------------------------------------------------

def _model_section(config: str | None) -> tuple[dict, dict]:
    """(model fields, diffusion fields) from a preset, a config file or a checkpoint's config.json."""
    if config is None:
        return dict(PEER_SIZED), {}
    path = Path(config)
    if path.is_dir() and (path / "config.json").is_file():
        path = path / "config.json"
    if path.suffix == ".json" and path.is_file():
        data = json.loads(path.read_text())
        if data.get("format") == "kuosan-checkpoint":
            return {"kind": data["network"]["kind"], **data["network"]["fields"]}, data.get("diffusion", {})
    from kuosan.config import load_config, resolve_config_path

    src = resolve_config_path(config)
    cfg = load_config(src, {}) if isinstance(src, Path) else load_config(None, {}, base=src)
    return dataclasses.asdict(cfg.model), dataclasses.asdict(cfg.diffusion)


def _kuosan(model: dict, diffusion: dict, a, name: str, channels_last: bool, compile: bool, bf16: bool) -> Contender:
    from kuosan.config import Config, DiffusionConfig, ModelConfig
    from kuosan.diffusion.objectives import loss_for
    from kuosan.model import build_model, network_spec
    from kuosan.nets.layout import prepare_model
    from kuosan.training.optim import adamw, match_state_layout
    from kuosan.sampling import generate

    def fields(cls, values):  # a checkpoint's sections may hold more than the dataclass
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in values.items() if k in known})

    cfg = Config(model=fields(ModelConfig, model), diffusion=fields(DiffusionConfig, diffusion))
    spec = network_spec(cfg, channels=a.channels, resolution=a.resolution, num_classes=0)
    torch.manual_seed(0)
    precond = build_model(spec, cfg.diffusion)
    g = torch.Generator().manual_seed(1)
    x = torch.randn(a.batch, a.channels, a.resolution, a.resolution, generator=g)
    c_noise = torch.randn(a.batch, generator=g)
    x0 = x.clamp(-1, 1)
    objective, opt = loss_for(precond), adamw(precond.parameters(), lr=1e-4)  # as kuosan train does

    def forward():
        with torch.no_grad() if bf16 else torch.inference_mode():  # as kuosan.sampling.generate does
            return precond.net(x, c_noise)

    def train_step():
        loss = objective(precond, x0, None, generator=g).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    def sample(steps):
        return generate(precond, shape=(a.channels, a.resolution, a.resolution), seeds=range(a.batch),
                        sampler="euler", steps=steps, batch_size=a.batch, bf16=bf16)

    flops = count_flops(forward)  # counted eagerly, before any compilation
    flops_train = 0 if a.skip_train else count_flops(train_step)
    prepare_model(precond, channels_last=channels_last, compile=compile)
    # The FLOP count's step made the AdamW moments in the old layout; kuosan train makes them after
    # prepare_model (NCHW moments beside channels_last weights would send FusedAdamW to torch's slower path).
    match_state_layout(opt)
    if bf16:  # training as kuosan train --bf16 runs it; sampling through generate(bf16=True) above
        forward, train_step = _bf16(forward), _bf16(train_step)
    return Contender(name, sum(p.numel() for p in precond.net.parameters()), forward, train_step, sample,
                     flops, flops_train, {"spec": spec, "channels_last": channels_last, "compile": compile,
                                          "bf16_autocast": bf16, "sampler": "euler", "precond": cfg.diffusion.precond})


def _bf16(fn: Callable) -> Callable:
    def wrapped(*args):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            return fn(*args)
    return wrapped


def _diffusers(model: dict, a, bf16: bool = False) -> Contender:
    """diffusers' UNet2DModel; with ``bf16`` as diffusers runs mixed precision: training under bfloat16
    autocast (accelerate's ``mixed_precision="bf16"``), inference on a bfloat16 copy of the weights
    (``torch_dtype=torch.bfloat16``), both inside ``no_grad`` like its pipelines."""
    import diffusers
    from diffusers import DDIMScheduler, DDPMScheduler, UNet2DModel

    widths = [model["base_channels"] * m for m in model["channel_mults"]]
    sizes = [math.ceil(a.resolution / 2 ** i) for i in range(len(widths))]
    attn = [s in set(model.get("attn_resolutions", ())) for s in sizes]
    groups = math.gcd(32, *widths)
    config = dict(sample_size=a.resolution, in_channels=a.channels, out_channels=a.channels,
                  block_out_channels=tuple(widths), layers_per_block=model["num_blocks"], norm_num_groups=groups,
                  attention_head_dim=model.get("head_channels", 32),
                  down_block_types=tuple("AttnDownBlock2D" if t else "DownBlock2D" for t in attn),
                  up_block_types=tuple("AttnUpBlock2D" if t else "UpBlock2D" for t in reversed(attn)))
    torch.manual_seed(0)
    net = UNet2DModel(**config)
    g = torch.Generator().manual_seed(1)
    x = torch.randn(a.batch, a.channels, a.resolution, a.resolution, generator=g)
    t = torch.randint(0, 1000, (a.batch,), generator=g)
    train_sched, opt = DDPMScheduler(num_train_timesteps=1000), torch.optim.AdamW(net.parameters(), lr=1e-4)

    infer, dtype = (copy.deepcopy(net).to(torch.bfloat16), torch.bfloat16) if bf16 else (net, torch.float32)

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

    flops = count_flops(forward)
    flops_train = 0 if a.skip_train else count_flops(train_step)
    if bf16:
        train_step = _bf16(train_step)
    return Contender("diffusers-bf16" if bf16 else "diffusers", sum(p.numel() for p in net.parameters()), forward,
                     train_step, sample, flops, flops_train,
                     {"version": diffusers.__version__, "config": config, "sampler": "DDIM", "bf16_autocast": bf16,
                      "bf16_inference": "bfloat16 weights" if bf16 else None})


def _lucidrains(model: dict, a) -> Contender:
    import importlib.metadata

    from denoising_diffusion_pytorch import GaussianDiffusion, Unet

    torch.manual_seed(0)
    net = Unet(dim=model["base_channels"], dim_mults=tuple(model["channel_mults"]), channels=a.channels)
    g = torch.Generator().manual_seed(1)
    x = torch.randn(a.batch, a.channels, a.resolution, a.resolution, generator=g)
    t = torch.randint(0, 1000, (a.batch,), generator=g)
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

    flops = count_flops(forward)
    flops_train = 0 if a.skip_train else count_flops(train_step)
    return Contender("lucidrains", sum(p.numel() for p in net.parameters()), forward, train_step, sample, flops,
                     flops_train, {"version": importlib.metadata.version("denoising-diffusion-pytorch"),
                                   "config": {"dim": model["base_channels"], "dim_mults": list(model["channel_mults"])},
                                   "sampler": "DDIM"})


def _peers(names: list[str], model: dict, a, log) -> list[Contender]:
    """The peers that can be built here; a missing one is reported and skipped."""
    makers = {"diffusers": _diffusers, "lucidrains": _lucidrains}
    out = []
    for full in names:
        name, bf16 = full.removesuffix("-bf16"), full.endswith("-bf16")
        if name not in makers:
            raise KuosanError(f"unknown peer {full!r} in --peers; choose from "
                              f"{', '.join(f'{m}, {m}-bf16' for m in makers)} or none")
        if model.get("kind", "unet") != "unet":
            log(f"skipping {name}: it has no equivalent of a {model.get('kind')} network")
            continue
        try:
            if name == "diffusers":
                c = _diffusers(model, a, bf16=bf16)
            else:
                c = makers[name](model, a)
                if bf16:  # the peer's own code under bfloat16 autocast
                    c = dataclasses.replace(c, name=full, forward=_bf16(c.forward), train_step=_bf16(c.train_step),
                                            sample=_bf16(c.sample), info={**c.info, "bf16_autocast": True})
            out.append(c)
        except Exception as e:  # ImportError, or a peer's own import-time failure (torchvision)
            log(f"skipping {name}: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''} "
                f"(pip install {'diffusers' if name == 'diffusers' else 'denoising-diffusion-pytorch'}; "
                "benchmarks/peers.py works around a broken torchvision)")
    return out


# --- layers ---------------------------------------------------------------------------------------

def _layer_fns(batch: int, res: int) -> dict[str, Callable]:
    """GroupNorm + scale/shift + SiLU (a ResBlock's second norm), torch's ops vs ours, both layouts."""
    from torch.nn import functional as F

    from kuosan.nets.layers import group_norm_act

    g = torch.Generator().manual_seed(0)
    x = torch.randn(batch, 64, res, res, generator=g)
    w, b = torch.randn(64, generator=g), torch.randn(64, generator=g)
    s, t = torch.randn(batch, 64, generator=g) * 0.1, torch.randn(batch, 64, generator=g)
    params = [p.requires_grad_() for p in (w, b, s, t)]

    def torch_ops(x):
        return F.silu(F.group_norm(x, 32, w, b) * (1 + s[:, :, None, None]) + t[:, :, None, None])

    def ours(x):
        return group_norm_act(x, 32, w, b, 1e-5, s, t, act=True)

    fns = {}
    for layout, fmt in (("nchw", torch.contiguous_format), ("channels_last", torch.channels_last)):
        xf = x.contiguous(memory_format=fmt).requires_grad_()
        for name, f in (("torch", torch_ops), ("kuosan", ours)):
            fns[f"{name}_{layout}_forward"] = lambda f=f, xf=xf: _no_grad(f, xf)
            fns[f"{name}_{layout}_forward_backward"] = lambda f=f, xf=xf: f(xf).sum().backward()
    return {**fns, **_conv_fns(batch, res)}


def _conv_fns(batch: int, res: int) -> dict[str, Callable]:
    """A 3×3 convolution 64→64 (channels_last) at ``res`` and ``res // 2``: torch's (oneDNN's direct
    convolution) against kuosan's Winograd kernels, float32 and, where the CPU has native bfloat16, under
    bfloat16 autocast."""
    from kuosan.nets.layers import Conv2d

    precisions = ["fp32"] + (["bf16"] if torch.ops.mkldnn._is_mkldnn_bf16_supported() else [])
    g = torch.Generator().manual_seed(0)
    fns = {}
    for side in (res, res // 2):
        conv = Conv2d(64, 64, 3, padding=1).to(memory_format=torch.channels_last)
        x = torch.randn(batch, 64, side, side, generator=g).contiguous(memory_format=torch.channels_last)
        x.requires_grad_()
        for precision in precisions:
            for name, fast in (("torch", False), ("kuosan", True)):
                def forward(conv=conv, x=x, fast=fast, bf16=precision == "bf16"):
                    conv._fast = fast
                    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                        return conv(x)
                key = f"conv3x3_{side}x{side}_{name}_{precision}"
                fns[f"{key}_forward"] = lambda forward=forward: _no_grad(forward)
                fns[f"{key}_forward_backward"] = lambda forward=forward: forward().float().sum().backward()
    return fns


def _no_grad(f, *args):
    with torch.inference_mode():
        return f(*args)


# --- the command ----------------------------------------------------------------------------------

def run(args) -> int:
    from kuosan.runtime import configure_threads, tune_allocator

    tuned = tune_allocator()
    configure_threads(args.threads)  # default: a fair share of a busy machine (kuosan.runtime)
    log = print
    model, diffusion = _model_section(args.config)
    layouts = [s.strip() for s in args.layouts.split(",") if s.strip()]
    unknown = set(layouts) - {f"{lay}{suffix}" for lay in ("channels_last", "nchw") for suffix in ("", "-bf16")}
    if unknown:
        raise KuosanError(f"unknown --layouts {', '.join(sorted(unknown))}; use channels_last, nchw, "
                          "channels_last-bf16 or nchw-bf16")
    contenders = [_kuosan(model, diffusion, args, f"kuosan-{lay}", lay.startswith("channels_last"), False,
                          lay.endswith("-bf16")) for lay in layouts]
    if args.compile:
        contenders.append(_kuosan(model, diffusion, args, "kuosan-compiled", layouts[0].startswith("channels_last"),
                                  True, False))
    peers = [] if args.peers == "none" else [s.strip() for s in args.peers.split(",") if s.strip()]
    contenders += _peers(peers, model, args, log)
    autocast = torch.autocast("cpu", dtype=torch.bfloat16, enabled=args.bf16)
    env = _environment(tuned)
    log(f"kuosan bench: batch {args.batch}, {args.channels}x{args.resolution}x{args.resolution}, "
        f"{env['threads']} threads, OMP_WAIT_POLICY={env['omp_wait_policy']}, load {env['loadavg_start']}"
        f"{', bf16 autocast' if args.bf16 else ''}; contenders: {', '.join(c.name for c in contenders)}")
    result = {"env": env, "args": {k: v for k, v in vars(args).items() if not callable(v)},
              "contenders": {c.name: {"params": c.params, "flops_forward": c.flops_forward,
                                      "flops_train_step": c.flops_train, **c.info} for c in contenders}}
    with autocast:
        result["compile_s"] = _warm_compiled(contenders, args, log)
        ceiling = _ceiling(args.batch, args.resolution)
        fwd = {f"{c.name}": c.forward for c in contenders} | {k: f for k, (f, _) in ceiling.items()}
        log(f"forward: {args.rounds} rounds")
        result["forward"] = alternate(fwd, args.rounds, warmup=2)
        for k, (_, flops) in ceiling.items():
            result["forward"][k]["gflop_per_s"] = flops / result["forward"][k]["median_s"] / 1e9
        if not args.skip_train:
            log(f"training step: {args.rounds} rounds")
            result["train_step"] = alternate({c.name: c.train_step for c in contenders}, args.rounds, warmup=2)
        if args.sample_steps:
            log(f"sampling, {args.sample_steps} steps: {args.sample_rounds} rounds")
            result["sample"] = alternate({c.name: (lambda c=c: c.sample(args.sample_steps)) for c in contenders},
                                         args.sample_rounds, warmup=1)
        if args.layers:
            log("layers: GroupNorm + scale/shift + SiLU; 3x3 convolutions")
            result["layers"] = alternate(_layer_fns(args.batch, args.resolution), max(args.rounds, 7), warmup=2)
    env["loadavg_end"] = os.getloadavg()
    result["summary"] = _summary(result, contenders, args)
    _print_table(result["summary"], result, args, log)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(result, indent=1, default=str) + "\n")
        log(f"wrote {args.out}")
    return 0


def _environment(tuned: bool) -> dict:
    return {"torch": torch.__version__, "python": platform.python_version(), "machine": platform.machine(),
            "cpu_capability": torch.backends.cpu.get_cpu_capability(), "threads": torch.get_num_threads(),
            "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY", "(default)"), "allocator_tuned": tuned,
            "cpus": os.cpu_count(), "loadavg_start": os.getloadavg(), "fused_kernels": kernels.status(),
            **{k: os.environ[k] for k in ("ONEDNN_MAX_CPU_ISA", "MKL_ENABLE_INSTRUCTIONS", "ATEN_CPU_CAPABILITY",
                                          "KUOSAN_KERNEL_ARCH", "KUOSAN_CONV_KERNELS", "KUOSAN_WINOGRAD_TILE")
               if k in os.environ}}


def _warm_compiled(contenders: list[Contender], args, log) -> dict:
    """Compile time: the first forward, training step and sampling step of compiled contenders."""
    out = {}
    for c in contenders:
        if not c.info.get("compile"):
            continue
        t0 = time.perf_counter()
        c.forward()
        out[f"{c.name}_forward"] = time.perf_counter() - t0
        if not args.skip_train:
            t0 = time.perf_counter()
            c.train_step()
            out[f"{c.name}_train_step"] = time.perf_counter() - t0
        log(f"{c.name}: first calls (compilation) took " + ", ".join(f"{k.split('_', 1)[1]} {v:.1f} s"
                                                                      for k, v in out.items()))
    return out


def _summary(result: dict, contenders: list[Contender], args) -> dict:
    """Per contender: times, GFLOP/s, the fraction of the convolution ceiling in its own precision, and
    ratios to diffusers in float32 (``*_vs_diffusers``) and in the contender's precision (``*_same_precision``:
    bfloat16 rows against ``diffusers-bf16`` when it ran)."""
    fw = result["forward"]
    ceilings = {"float32": max(fw[k]["gflop_per_s"] for k in ("conv3x3_nchw", "conv3x3_channels_last")),
                "bfloat16": fw["conv3x3_channels_last_bf16"]["gflop_per_s"]}
    rows = {}
    for c in contenders:
        f = result["forward"][c.name]["median_s"]
        precision = "bfloat16" if c.info.get("bf16_autocast") or args.bf16 else "float32"
        ceiling = ceilings[precision]
        row = {"precision": precision, "params_m": c.params / 1e6, "gflop_forward": c.flops_forward / 1e9,
               "forward_s": f,
               "forward_gflop_per_s": c.flops_forward / f / 1e9,
               "forward_fraction_of_conv_ceiling": c.flops_forward / f / 1e9 / ceiling}
        if "train_step" in result:
            s = result["train_step"][c.name]["median_s"]
            row |= {"train_step_s": s, "train_images_per_s": args.batch / s,
                    "train_gflop_per_s": c.flops_train / s / 1e9,
                    "train_fraction_of_conv_ceiling": c.flops_train / s / 1e9 / ceiling}
        if "sample" in result:
            row["sample_images_per_s"] = args.batch / result["sample"][c.name]["median_s"]
        rows[c.name] = row
    refs = {"": rows.get("diffusers")}
    for row in rows.values():
        refs["_same_precision"] = rows.get("diffusers-bf16" if row["precision"] == "bfloat16" else "diffusers")
        for suffix, ref in refs.items():
            if ref is None:
                continue
            row[f"forward_speedup_vs_diffusers{suffix}"] = ref["forward_s"] / row["forward_s"]
            for k in ("train_images_per_s", "sample_images_per_s"):
                if k in row:
                    row[k.replace("_per_s", "") + f"_speedup_vs_diffusers{suffix}"] = row[k] / ref[k]
    return {"conv_ceiling_gflop_per_s": ceilings["float32"], "conv_ceiling_bf16_gflop_per_s": ceilings["bfloat16"],
            "rows": rows}


def _print_table(summary: dict, result: dict, args, log) -> None:
    fw = result["forward"]
    log(f"\nceiling: conv3x3 64->64 {fw['conv3x3_nchw']['gflop_per_s']:.0f} GFLOP/s (NCHW), "
        f"{fw['conv3x3_channels_last']['gflop_per_s']:.0f} (channels_last), "
        f"{fw['conv3x3_channels_last_bf16']['gflop_per_s']:.0f} (channels_last, bfloat16); "
        f"matmul 2048 {fw['matmul_2048']['gflop_per_s']:.0f}")
    cols = [("params M", "params_m", "{:.2f}"), ("GFLOP/fwd", "gflop_forward", "{:.1f}"),
            ("fwd s", "forward_s", "{:.3f}"), ("fwd GF/s", "forward_gflop_per_s", "{:.0f}"),
            ("fwd %ceil", "forward_fraction_of_conv_ceiling", "{:.0%}"),
            ("train img/s", "train_images_per_s", "{:.1f}"), ("train GF/s", "train_gflop_per_s", "{:.0f}"),
            ("train %ceil", "train_fraction_of_conv_ceiling", "{:.0%}"),
            (f"sample img/s ({args.sample_steps} st)", "sample_images_per_s", "{:.2f}"),
            ("fwd x", "forward_speedup_vs_diffusers", "{:.2f}"),
            ("train x", "train_images_speedup_vs_diffusers", "{:.2f}"),
            ("sample x", "sample_images_speedup_vs_diffusers", "{:.2f}"),
            ("train x same", "train_images_speedup_vs_diffusers_same_precision", "{:.2f}"),
            ("sample x same", "sample_images_speedup_vs_diffusers_same_precision", "{:.2f}")]
    rows = summary["rows"]
    cols = [c for c in cols if any(c[1] in r for r in rows.values())]
    width = max(len(n) for n in rows) + 2
    log("".ljust(width) + "  ".join(h for h, _, _ in cols))
    for name, r in rows.items():
        log(name.ljust(width) + "  ".join(fmt.format(r[k]).rjust(len(h)) if k in r else "-".rjust(len(h))
                                          for h, k, fmt in cols))
    if "diffusers" in rows:
        log("(x: ratio to diffusers in float32, higher is faster; x same: to diffusers in the row's precision, "
            "diffusers-bf16 for bfloat16 rows; %ceil: of the convolution ceiling in the row's precision; "
            "medians of alternated rounds; GFLOP/s count the direct convolution's FLOPs, and kuosan's 3x3 "
            "layers compute them with Winograd's algorithm in 2.25-4x fewer multiply-adds)")
    if "layers" in result:
        for k, v in result["layers"].items():
            log(f"  {k:42s} {v['median_s'] * 1e3:8.2f} ms")
