"""kuosan's UNet against diffusers' UNet2DModel on a CUDA GPU in bfloat16: training and sampling images per
second and peak memory, at 28×28 and 64×64, the same widths on both sides, alternately in one process.

    .venv/bin/python benchmarks/gpu.py [--batch 64] [--rounds 10] [--resolutions 28,64] [--sample-steps 10]
    .venv/bin/python benchmarks/gpu.py --dry-run      # the same arithmetic, tiny and on the CPU: a check

Both networks: widths 32/64/64, two residual blocks a level, self-attention at the lowest level (7×7 at
28, 16×16 at 64), one channel, random weights (nothing is downloaded).
  kuosan:    EDM's loss and AdamW as ``kuosan train --bf16`` runs them (bfloat16 autocast, float32 weights,
             channels_last); sampling as ``kuosan sample --bf16``: ``generate(..., bf16=True)``, Euler.
  diffusers: DDPM's loss under bfloat16 autocast (accelerate's mixed_precision="bf16"), torch's AdamW;
             sampling on a bfloat16 copy of the weights (``torch_dtype=torch.bfloat16``), DDIM.
Both samplers make one network evaluation a step. cuDNN autotuning and TF32 are on for both
(:func:`kuosan.training.distributed.setup_backends`). Peak memory is ``torch.cuda.max_memory_allocated``
over each phase. Without CUDA it says so and exits; ``--dry-run`` runs every code path on the CPU at
8×8 with a batch of 2 and one round, in float32 (bfloat16 convolutions there would mostly time oneDNN's
first-call code generation; the numbers are meaningless either way). Writes benchmarks/results/gpu.json
(gpu-dry-run.json for a dry run).  Peer:  pip install diffusers
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import statistics
import sys
import time
from pathlib import Path
from types import SimpleNamespace

HERE = Path(__file__).resolve().parent
NO_CUDA = ("no CUDA device here: benchmarks/gpu.py measures GPUs (run it on a machine with one; "
           "--dry-run checks its arithmetic on the CPU)")


def model_fields(resolution: int, tiny: bool) -> dict:
    """The peers' usual small UNet with attention at its lowest level; a tiny one for --dry-run."""
    from kuosan.bench.contenders import PEER_SIZED

    if tiny:
        return dict(PEER_SIZED, base_channels=16, channel_mults=[1, 2], num_blocks=1,
                    attn_resolutions=[math.ceil(resolution / 2)], head_channels=16)
    return dict(PEER_SIZED, attn_resolutions=[math.ceil(resolution / 4)])


def _sync(device):
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def kuosan_fns(fields: dict, a) -> dict:
    """Training step, network forward and sampling loop of kuosan's UNet, as ``kuosan train/sample --bf16``."""
    import torch

    from kuosan.config import Config, ModelConfig, SampleConfig
    from kuosan.diffusion.objectives import loss_for
    from kuosan.model import build_model, network_spec
    from kuosan.nets.layout import prepare_model
    from kuosan.sampling import generate
    from kuosan.training.optim import adamw

    cfg = Config(model=ModelConfig(**{k: tuple(v) if isinstance(v, list) else v for k, v in fields.items()}))
    torch.manual_seed(0)
    precond = prepare_model(build_model(network_spec(cfg, channels=1, resolution=a.resolution, num_classes=0),
                                        cfg.diffusion).to(a.device))
    opt, objective = adamw(precond.parameters(), lr=1e-4), loss_for(precond)
    g = torch.Generator(a.device).manual_seed(1)
    x0 = torch.randn(a.batch, 1, a.resolution, a.resolution, generator=g, device=a.device).clamp(-1, 1)
    c_noise = torch.randn(a.batch, generator=g, device=a.device)

    def train():
        with _amp(a):
            loss = objective(precond, x0, None, generator=g).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    def forward():
        with torch.no_grad(), _amp(a):
            return precond.net(x0, c_noise, None)

    def sample():
        return generate(precond, SampleConfig("euler", a.sample_steps), shape=(1, a.resolution, a.resolution),
                        seeds=range(a.batch), batch_size=a.batch, bf16=a.dtype == torch.bfloat16)

    return {"train": train, "forward": forward, "sample": sample, "params": _count(precond.net)}


def diffusers_fns(fields: dict, a) -> dict:
    """The same for diffusers' UNet2DModel, as its training scripts and pipelines run it in bfloat16."""
    import torch
    from diffusers import DDIMScheduler, DDPMScheduler, UNet2DModel
    from diffusers.utils import logging as diffusers_logging

    from kuosan.bench.peers import diffusers_config

    diffusers_logging.set_verbosity_error()  # its note on casting a model with .to(): that is what is meant here
    torch.manual_seed(0)
    net = UNet2DModel(**diffusers_config(fields, SimpleNamespace(resolution=a.resolution, channels=1))).to(a.device)
    infer = copy.deepcopy(net).to(a.dtype).requires_grad_(False)
    opt, ddpm = torch.optim.AdamW(net.parameters(), lr=1e-4), DDPMScheduler(num_train_timesteps=1000)
    g = torch.Generator(a.device).manual_seed(1)
    x0 = torch.randn(a.batch, 1, a.resolution, a.resolution, generator=g, device=a.device).clamp(-1, 1)
    t_fixed = torch.randint(0, 1000, (a.batch,), generator=g, device=a.device)

    def train():
        noise = torch.randn(x0.shape, generator=g, device=a.device)
        t = torch.randint(0, 1000, (a.batch,), generator=g, device=a.device)
        with _amp(a):
            pred = net(ddpm.add_noise(x0, noise, t), t).sample
        loss = torch.nn.functional.mse_loss(pred.float(), noise)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    def forward():
        with torch.no_grad():
            return infer(x0.to(a.dtype), t_fixed).sample

    @torch.no_grad()
    def sample():
        sched = DDIMScheduler(num_train_timesteps=1000)
        sched.set_timesteps(a.sample_steps)
        x = torch.randn(x0.shape, generator=g, device=a.device).to(a.dtype)
        for t in sched.timesteps:
            x = sched.step(infer(x, t).sample, t, x).prev_sample
        return x.float()

    return {"train": train, "forward": forward, "sample": sample, "params": _count(net)}


def _amp(a):
    """Autocast to ``a.dtype`` (bfloat16; nothing for a float32 dry run)."""
    import torch

    return torch.autocast(a.device.type, dtype=a.dtype, enabled=a.dtype != torch.float32)


def _count(net) -> int:
    return sum(p.numel() for p in net.parameters())


def _timed(fn, device) -> float:
    _sync(device)
    t0 = time.perf_counter()
    fn()
    _sync(device)
    return time.perf_counter() - t0


def _peak_bytes(fn, device) -> int | None:
    """Peak allocated memory over one call (CUDA only)."""
    import torch

    if device.type != "cuda":
        return None
    _sync(device)
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats(device)
    fn()
    _sync(device)
    return torch.cuda.max_memory_allocated(device)


def measure(contenders: dict, a) -> dict:
    """Per phase: warm-up, peak memory, then ``rounds`` calls of each contender in turn (medians)."""
    out = {name: {"params": fns["params"]} for name, fns in contenders.items()}
    images = {"train": a.batch, "forward": a.batch, "sample": a.batch}
    for phase in ("train", "forward", "sample"):
        for name, fns in contenders.items():
            for _ in range(a.warmup):
                fns[phase]()
            out[name][f"{phase}_peak_bytes"] = _peak_bytes(fns[phase], a.device)
        times = {name: [] for name in contenders}
        for _ in range(a.rounds):
            for name, fns in contenders.items():
                times[name].append(_timed(fns[phase], a.device))
        for name, ts in times.items():
            med = statistics.median(ts)
            out[name].update({f"{phase}_median_s": med, f"{phase}_images_per_s": images[phase] / med,
                              f"{phase}_all_s": [round(t, 5) for t in ts]})
    return out


def build(resolution: int, a, log) -> dict:
    """The contenders that can be built here (diffusers is optional: reported and skipped when missing)."""
    fields = model_fields(resolution, a.dry_run)
    r = SimpleNamespace(**vars(a), resolution=resolution)
    contenders = {"kuosan": kuosan_fns(fields, r)}
    try:
        contenders["diffusers"] = diffusers_fns(fields, r)
    except ImportError as e:
        log(f"skipping diffusers: {e} (pip install diffusers)")
    return contenders


def print_table(results: dict, a) -> None:
    gib = 2 ** 30
    print("res | contender | params | train img/s | forward img/s | sample img/s | peak GiB train/forward/sample")
    for res, rows in results.items():
        for name, r in rows.items():
            peaks = "/".join("-" if r[f"{p}_peak_bytes"] is None else f"{r[f'{p}_peak_bytes'] / gib:.2f}"
                             for p in ("train", "forward", "sample"))
            print(f"{res} | {name} | {r['params'] / 1e6:.2f} M | {r['train_images_per_s']:.1f} | "
                  f"{r['forward_images_per_s']:.1f} | {r['sample_images_per_s']:.1f} | {peaks}")
    print(f"(batch {a.batch}, {a.sample_steps} sampling steps, {str(a.dtype).removeprefix('torch.')}; "
          "sample img/s counts whole images)")


def parse(argv):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batch", type=int, default=64, help="images a step (default 64)")
    ap.add_argument("--rounds", type=int, default=10, help="timed calls of each contender per phase (medians)")
    ap.add_argument("--warmup", type=int, default=3, help="untimed calls first (cuDNN autotuning, allocator)")
    ap.add_argument("--resolutions", default="28,64", help="image sizes, a comma list")
    ap.add_argument("--sample-steps", type=int, default=10, help="sampler steps (one network evaluation each)")
    ap.add_argument("--device", default="cuda", help="a CUDA device (default cuda)")
    ap.add_argument("--dry-run", action="store_true", help="tiny, on the CPU: every code path, no real numbers")
    ap.add_argument("--out", default=None, help="the JSON to write (default benchmarks/results/gpu.json)")
    a = ap.parse_args(argv)
    if a.dry_run:
        a.batch, a.rounds, a.warmup, a.resolutions, a.sample_steps, a.device = 2, 1, 1, "8", 2, "cpu"
    a.out = a.out or str(HERE / "results" / ("gpu-dry-run.json" if a.dry_run else "gpu.json"))
    return a


def main(argv=None) -> int:
    a = parse(sys.argv[1:] if argv is None else argv)
    from kuosan.runtime import openmp_defaults

    openmp_defaults()  # before torch loads OpenMP: idle CPU threads sleep (the dry run shares the machine)
    import torch

    from kuosan.training.distributed import setup_backends

    if not a.dry_run and not torch.cuda.is_available():
        print(NO_CUDA)
        return 0
    a.device = torch.device(a.device)
    a.dtype = torch.float32 if a.dry_run else torch.bfloat16
    if a.dry_run:
        torch.set_num_threads(1)
    setup_backends(a.device)
    results = {}
    for res in (int(r) for r in a.resolutions.split(",")):
        results[f"{res}x{res}"] = measure(build(res, a, print), a)
    print_table(results, a)
    info = {"device": torch.cuda.get_device_name(a.device) if a.device.type == "cuda" else "cpu (dry run)",
            "torch": torch.__version__, "cuda": torch.version.cuda, "batch": a.batch, "rounds": a.rounds,
            "sample_steps": a.sample_steps, "dtype": str(a.dtype), "dry_run": a.dry_run, "results": results}
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(info, indent=1) + "\n")
    print(f"-> {a.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
