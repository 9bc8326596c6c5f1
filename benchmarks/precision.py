"""bfloat16 against float32: what mixed precision costs in image quality, and what it buys in speed.

    python benchmarks/precision.py                       # demo preset, 1,500 steps each, 500 samples
    python benchmarks/precision.py --steps 200 --samples 100   # a quick look (numbers mean little)

Trains the ``demo`` preset twice from the same seed for the same number of steps, once in float32 and once
with ``--bf16`` (bfloat16 autocast; float32 master weights, normalisation statistics and optimiser), then
samples ``--samples`` images (fixed seeds, classes cycled, Heun 18 steps) from each run's EMA weights in float32
and with ``--bf16`` sampling. For every cell: training images/s and final loss of the run, sampling images/s,
and the Fréchet distance of the samples to the test split on the data set's classifier features
(``fmnist-cnn``), beside the floor of 500 real training images. Writes benchmarks/results/precision.json.

Speed here is the training loop's own clock on whatever else the machine is doing; the side-by-side speed
comparison is ``benchmarks/peers.py`` (alternated rounds). On CPUs without AVX512-BF16 (and without AMX)
bfloat16 convolutions are emulated and slower than float32: check ``torch.ops.mkldnn._is_mkldnn_bf16_supported()``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from backbones import frechet, pick_data, reference_stats, train_metrics  # noqa: E402

RESULTS = HERE / "results"


def train_run(name: str, bf16: bool, args, data: str) -> Path:
    from kuosan.config import load_config, resolve_config_path
    from kuosan.training.loop import train

    run_dir = Path(args.work) / name
    if run_dir.exists():
        shutil.rmtree(run_dir)
    overrides = ["--data", data, "--steps", str(args.steps), "--batch", str(args.batch), "--checkpoint_every", "0",
                 "--sample_every", "0", "--log_every", str(args.log_every), "--seed", str(args.seed),
                 "--out", str(run_dir), "--device", "cpu"] + (["--bf16"] if bf16 else [])
    cfg = load_config(None, overrides, base=resolve_config_path("demo"))
    print(f"--- training {name} ({args.steps} steps)")
    train(cfg, progress=False, log=lambda msg: print("   ", msg))
    return run_dir


def floor(ext, ref, data: str, n: int) -> float | None:
    """FD of ``n`` real training images: what a perfect generator would score at this sample size."""
    from kuosan.evaluation.metrics import frechet_distance
    from kuosan.evaluation.reference import reference_features

    if ext is None:
        return None
    real, _ = reference_features(f"{data}:train", ext, max_images=n, log=print)
    return frechet_distance(real.mu, real.sigma, ref.mu, ref.sigma)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default="fashion-mnist")
    ap.add_argument("--steps", type=int, default=1500)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--log-every", type=int, default=25)
    ap.add_argument("--samples", type=int, default=500)
    ap.add_argument("--sampler", default="heun")
    ap.add_argument("--sample-steps", type=int, default=18)
    ap.add_argument("--sample-batch", type=int, default=125)
    ap.add_argument("--ref-images", type=int, default=10000)
    ap.add_argument("--threads", type=int, default=torch.get_num_threads())
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--work", default="runs/bench/precision")
    ap.add_argument("--keep-runs", action="store_true")
    ap.add_argument("--out", type=Path, default=RESULTS / "precision.json")
    args = ap.parse_args(argv)

    import kuosan
    from kuosan.nets import kernels

    torch.set_num_threads(args.threads)
    data = pick_data(args.data)
    ext, ref = reference_stats(data, args.ref_images)
    start, load_before = time.time(), os.getloadavg()
    runs = {}
    for name, bf16 in (("train-fp32", False), ("train-bf16", True)):
        run_dir = train_run(name, bf16, args, data)
        pipe = kuosan.load(run_dir, device="cpu")
        row = {**train_metrics(run_dir, pipe.path, args.batch), "sampling": {}}
        for mode, flag in (("sample-fp32", False), ("sample-bf16", True)):
            res = pipe.sample(args.samples, sampler=args.sampler, steps=args.sample_steps,
                              batch_size=args.sample_batch, bf16=flag)
            row["sampling"][mode] = {"images_per_s": args.samples / res.seconds,
                                     "frechet_distance": frechet(ext, ref, res.images) if ext is not None else None}
            print(f"    {name} / {mode}: FD {row['sampling'][mode]['frechet_distance']}, "
                  f"{row['sampling'][mode]['images_per_s']:.1f} images/s")
        runs[name] = row
        if not args.keep_runs:
            shutil.rmtree(run_dir, ignore_errors=True)
    report = {"data": data, "threads": args.threads, "torch": torch.__version__,
              "machine": platform.processor() or platform.machine(),
              "bf16_supported": bool(torch.ops.mkldnn._is_mkldnn_bf16_supported()),
              "fused_kernels": kernels.status(), "extractor": ext.name if ext is not None else None,
              "real_floor": floor(ext, ref, data, args.samples), "settings": vars(args) | {"out": args.out.name},
              "load_average": {"before": load_before, "after": os.getloadavg()},
              "seconds_total": time.time() - start, "runs": runs}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2, default=str) + "\n")

    print(f"\n{'run':<12}{'train img/s':>12}{'final loss':>12}   " + "   ".join(
        f"{m + ' FD':>16}{m + ' img/s':>20}" for m in ("sample-fp32", "sample-bf16")))
    for name, r in runs.items():
        cells = "   ".join(f"{r['sampling'][m]['frechet_distance'] or float('nan'):>16.3f}"
                           f"{r['sampling'][m]['images_per_s']:>20.1f}" for m in ("sample-fp32", "sample-bf16"))
        print(f"{name:<12}{r['train_images_per_s']:>12.1f}{r['final_loss'] or float('nan'):>12.4f}   {cells}")
    print(f"real-data floor ({args.samples} training images): {report['real_floor']}")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
