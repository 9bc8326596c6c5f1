"""Training and sampling speed of a preset (default: the demo's), on this machine.

    .venv/bin/python benchmarks/train_sample.py [--config demo] [--batch 64] [--repeats 3]

Prints a table and writes benchmarks/results/train_sample.json: parameters, GFLOP per forward,
training steps/s and images/s (one optimiser step of the real objective, EMA included), sampling
images/s at the preset's sampler and steps, and the achieved GFLOP/s. Medians over repeats.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path

import torch

from kuosan.config import load_config, resolve_config_path
from kuosan.diffusion.objectives import loss_for
from kuosan.diffusion.samplers import nfe
from kuosan.model import build_model, network_spec
from kuosan.nets.build import count_flops, count_parameters
from kuosan.nets.layout import prepare_model
from kuosan.runtime import tune_allocator
from kuosan.sampling import generate
from kuosan.training.ema import EMA

RESULTS = Path(__file__).parent / "results"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", default="demo")
    ap.add_argument("--batch", type=int, default=None, help="training batch (default: the preset's)")
    ap.add_argument("--sample-batch", type=int, default=100)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--train-steps", type=int, default=10, help="timed optimiser steps per repeat")
    ap.add_argument("--resolution", type=int, default=28)
    ap.add_argument("--channels", type=int, default=1)
    ap.add_argument("--out", default=str(RESULTS / "train_sample.json"))
    args = ap.parse_args()
    tuned = tune_allocator()

    cfg = load_config(None, {}, base=resolve_config_path(args.config))
    batch = args.batch or cfg.train.batch
    spec = network_spec(cfg, channels=args.channels, resolution=args.resolution, num_classes=10)
    model = build_model(spec, cfg.diffusion)
    prepare_model(model)  # as the training loop and sampling do
    ema = EMA(model, 0.999)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    objective = loss_for(model)
    gflop = count_flops(model.net, args.channels, args.resolution, 1, 10) / 1e9
    g = torch.Generator().manual_seed(0)
    x0 = torch.rand(batch, args.channels, args.resolution, args.resolution, generator=g) * 2 - 1
    y = torch.randint(0, 10, (batch,), generator=g)

    def train_steps(n):
        for i in range(n):
            loss = objective(model, x0, y, generator=g).mean()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            ema.update(model, i)

    def sample():
        return generate(ema.module, shape=(args.channels, args.resolution, args.resolution),
                        seeds=range(args.sample_batch), class_labels=[k % 10 for k in range(args.sample_batch)],
                        sample=cfg.sample, null_label=10,
                        batch_size=args.sample_batch)

    train_steps(2)  # warm-up: allocator, kernels
    train_times, sample_times = [], []
    for _ in range(args.repeats):  # alternate training and sampling so drift hits both alike
        t0 = time.perf_counter()
        train_steps(args.train_steps)
        train_times.append((time.perf_counter() - t0) / args.train_steps)
        t0 = time.perf_counter()
        sample()
        sample_times.append(time.perf_counter() - t0)
    step_s = statistics.median(train_times)
    sample_s = statistics.median(sample_times)
    evals = nfe(cfg.sample.sampler, cfg.sample.steps)
    result = {
        "config": args.config, "batch": batch, "resolution": args.resolution, "channels": args.channels,
        "parameters": count_parameters(model), "gflop_per_forward_per_image": round(gflop, 4),
        "train_steps_per_s": round(1 / step_s, 3), "train_images_per_s": round(batch / step_s, 1),
        # a training step is one forward and one backward (~2× forward) = 3 forwards' FLOPs
        "train_gflop_per_s": round(3 * gflop * batch / step_s, 1),
        "sampler": cfg.sample.sampler, "sampler_steps": cfg.sample.steps, "nfe": evals,
        "sample_images_per_s": round(args.sample_batch / sample_s, 2),
        "sample_gflop_per_s": round(gflop * evals * args.sample_batch / sample_s, 1),
        "threads": torch.get_num_threads(), "torch": torch.__version__, "machine": platform.processor() or platform.machine(),
        "allocator_tuned": tuned, "repeats": args.repeats,
    }
    rows = [("parameters", f"{result['parameters'] / 1e6:.2f} M"),
            ("GFLOP per forward (1 image)", result["gflop_per_forward_per_image"]),
            ("training steps/s", result["train_steps_per_s"]),
            (f"training images/s (batch {batch})", result["train_images_per_s"]),
            ("training GFLOP/s", result["train_gflop_per_s"]),
            (f"sampling images/s ({cfg.sample.sampler}, {cfg.sample.steps} steps, {evals} NFE)",
             result["sample_images_per_s"]),
            ("sampling GFLOP/s", result["sample_gflop_per_s"])]
    width = max(len(r[0]) for r in rows)
    print(f"kuosan {args.config} preset, {args.channels}x{args.resolution}x{args.resolution}, "
          f"{torch.get_num_threads()} threads")
    for name, value in rows:
        print(f"  {name:<{width}}  {value}")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
