"""Where a training step's time goes, with kuosan's CPU kernels and without them, in float32 and bfloat16.

    python benchmarks/profile_step.py [--threads 2] [--rounds 7] [--batch 64]

The peer-sized UNet of ``kuosan bench`` (base 32, mults 1,2,2, 2 blocks, attention at 7; 28×28×1) takes
training steps (EDM loss, backward, AdamW) in four variants, timed alternately (medians): ``torch-ops``
(the kernels switched off: oneDNN's convolutions, GroupNorm, SiLU and the residual sum in torch ops, torch's
fused AdamW) and ``kernels`` (what kuosan runs: Winograd 3×3 and matrix-product 1×1 convolutions, the fused
GroupNorm, residual and AdamW kernels), each in float32 and under bfloat16 autocast (``--bf16``). Then
torch.profiler's top operators per step for each variant. Writes benchmarks/results/profile_step.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"


def main(argv=None) -> int:
    from kuosan.runtime import openmp_defaults

    openmp_defaults()
    import torch

    from kuosan.bench.contenders import PEER_SIZED
    from kuosan.config import DiffusionConfig
    from kuosan.diffusion.objectives import loss_for
    from kuosan.model import build_model
    from kuosan.nets import kernels
    from kuosan.nets.layout import prepare_model
    from kuosan.runtime import configure_threads, tune_allocator
    from kuosan.training.optim import adamw

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--top", type=int, default=12)
    ap.add_argument("--out", type=Path, default=RESULTS / "profile_step.json")
    args = ap.parse_args(argv)
    tuned = tune_allocator()
    configure_threads(args.threads)
    if not kernels.loaded():
        print(f"the kernels are not available here ({kernels.status()}): nothing to compare")
        return 1
    lib, status = kernels._lib, kernels._status

    def kernels_on(on: bool) -> None:
        kernels._lib, kernels._status = (lib, status) if on else (None, "disabled (profile_step.py)")

    spec = {"kind": "unet", "fields": {**{k: v for k, v in PEER_SIZED.items() if k != "kind"},
                                       "in_channels": 1, "out_channels": 1, "resolution": 28,
                                       "num_classes": 0, "noise_scale": 250.0}}
    x0 = torch.randn(args.batch, 1, 28, 28, generator=torch.Generator().manual_seed(1)).clamp(-1, 1)
    variants = {}
    for use_kernels in (False, True):
        kernels_on(use_kernels)
        for bf16 in (False, True):
            torch.manual_seed(0)
            precond = prepare_model(build_model(spec, DiffusionConfig()))
            opt = adamw(precond.parameters(), lr=1e-4) if use_kernels else torch.optim.AdamW(
                precond.parameters(), lr=1e-4, fused=True)
            objective, g = loss_for(precond), torch.Generator().manual_seed(2)

            def step(precond=precond, opt=opt, objective=objective, g=g, bf16=bf16, use_kernels=use_kernels):
                kernels_on(use_kernels)
                with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                    loss = objective(precond, x0, None, generator=g).mean()
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
            variants[f"{'kernels' if use_kernels else 'torch-ops'}-{'bf16' if bf16 else 'fp32'}"] = step

    times = {k: [] for k in variants}
    for r in range(args.rounds + 2):
        for name, step in variants.items():
            t0 = time.perf_counter()
            step()
            if r >= 2:
                times[name].append(time.perf_counter() - t0)
    out = {"env": {"torch": torch.__version__, "machine": platform.processor() or platform.machine(),
                   "threads": torch.get_num_threads(), "allocator_tuned": tuned, "kernels": status,
                   "loadavg": os.getloadavg()},
           "args": {k: str(v) for k, v in vars(args).items()}, "variants": {}}
    from torch.profiler import ProfilerActivity, profile

    for name, step in variants.items():
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            for _ in range(3):
                step()
        rows = sorted(prof.key_averages(), key=lambda e: -e.self_cpu_time_total)[:args.top]
        med = sorted(times[name])[len(times[name]) // 2]
        out["variants"][name] = {"step_ms": med * 1e3, "images_per_s": args.batch / med,
                                 "top_ops": [{"op": e.key, "ms_per_step": e.self_cpu_time_total / 3e3,
                                              "calls_per_step": e.count / 3} for e in rows]}
    kernels_on(True)
    base = out["variants"]
    for prec in ("fp32", "bf16"):
        base[f"kernels-{prec}"]["speedup_vs_torch_ops"] = (base[f"torch-ops-{prec}"]["step_ms"]
                                                           / base[f"kernels-{prec}"]["step_ms"])
    for name, v in base.items():
        extra = f"  ({v['speedup_vs_torch_ops']:.2f}x torch ops)" if "speedup_vs_torch_ops" in v else ""
        print(f"\n{name}: {v['step_ms']:.1f} ms a step, {v['images_per_s']:.1f} images/s{extra}")
        for row in v["top_ops"]:
            print(f"  {row['op'][:52]:52s} {row['ms_per_step']:8.2f} ms  {row['calls_per_step']:7.1f} calls")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=1) + "\n")
    print(f"\nwrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
