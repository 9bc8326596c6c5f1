"""The ``kuosan`` command line: parse, then call the library. User mistakes print one line."""

from __future__ import annotations

import argparse
import os
import sys
import warnings

# Idle OpenMP threads sleep instead of spinning. On a machine shared with other processes, spinning
# threads steal each other's cores: a 2-thread training step measured up to 8× slower there
# (benchmarks/results/distributed-passive.json). Must be set before torch starts its thread pool.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from kuosan.diffusion.samplers import SAMPLERS
from kuosan.errors import KuosanError

EXAMPLES = """examples:
  kuosan demo                                   train on Fashion-MNIST for ~10 minutes, write runs/demo/
  kuosan train --config fashion-mnist --steps 2000 --out runs/fm
  kuosan train --config runs/fm/config.json --resume --out runs/fm
  kuosan sample --checkpoint runs/fm --n 64 --sampler heun --steps 18 --class 3 --guidance 2.0 --out samples/
  kuosan evaluate --checkpoint runs/fm --n 1000 --reference fashion-mnist:test --out eval/
  torchrun --nproc_per_node=4 -m kuosan train --config fashion-mnist --batch 256 --out runs/fm4
                                                one process per GPU (or CPU share); --batch is global
  torchrun --nproc_per_node=4 -m kuosan sample --checkpoint runs/fm4 --n 10000 --out samples/
  kuosan data fashion-mnist:test                show what a data set spec loads
  kuosan train --init-from runs/fm --data mnist --out runs/mnist     fine-tune (lr / 10, --freeze "down.*")
  kuosan train --init-from runs/fm --data mnist --lora-rank 8 --out runs/mnist-lora    LoRA adapters
  kuosan sample --checkpoint runs/fm --adapter runs/mnist-lora/adapter.safetensors:0.8 --out samples/
  kuosan train-autoencoder --data fashion-mnist --out runs/ae-fm      then, in its latent space:
  kuosan train --config fashion-mnist --autoencoder runs/ae-fm --sigma_data 1 --out runs/ldm-fm
"""


def _add_device(p):
    p.add_argument("--device", default="auto", help="auto (default: CUDA if present), cpu, cuda, cuda:N")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="kuosan", description="Train, sample and evaluate diffusion models.",
                                     epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"kuosan {__import__('kuosan').__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    p = sub.add_parser("demo", help="train on a bundled data set, sample, evaluate, write pictures",
                       epilog="example:\n  kuosan demo --minutes 10 --out runs/demo",
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--minutes", type=float, default=10.0, help="whole-demo budget in minutes (default 10)")
    p.add_argument("--out", default="runs/demo", help="output directory (default runs/demo)")
    p.add_argument("--data", default=None, help="data set (default fashion-mnist, else the MNIST subset)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-eval", action="store_true", help="skip the evaluation section")
    _add_device(p)

    p = sub.add_parser("train", help="train a model from a config and --key value overrides",
                       epilog="examples:\n  kuosan train --config fashion-mnist --steps 2000 --out runs/fm\n"
                              "  kuosan train --config demo --train.lr 1e-3 --bf16\n"
                              "  kuosan train --config runs/fm/config.json --resume --out runs/fm\n"
                              "any config field can be set: --steps, --batch, --lr, --model.base_channels, ...",
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default="fashion-mnist",
                   help="a JSON/YAML/TOML file or a preset name (default fashion-mnist)")
    p.add_argument("--resume", action="store_true", help="continue the run in --out from its newest intact checkpoint (from step 0 if it has none yet)")

    p = sub.add_parser("sample", help="generate images from a checkpoint",
                       epilog="example:\n  kuosan sample --checkpoint runs/fm --n 64 --sampler heun --steps 18 "
                              "--class 3 --guidance 2.0 --seeds 0-63 --out samples/",
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", required=True, help="a run directory (its latest checkpoint) or a checkpoint")
    p.add_argument("--n", type=int, default=None, help="number of images (seeds 0..n-1 unless --seeds)")
    p.add_argument("--seeds", default=None, help="seeds, e.g. 0-63 or 1,5,9 (one image per seed)")
    p.add_argument("--class", dest="class_label", default=None, help="class index or name (default: cycle)")
    p.add_argument("--sampler", default=None,
                   help=f"one of {', '.join(sorted(SAMPLERS))} (default: the model's)")
    p.add_argument("--steps", type=int, default=None)
    p.add_argument("--schedule", default=None, help="karras, exponential, log-snr, vp-linear, ...")
    p.add_argument("--guidance", type=float, default=None, help="classifier-free guidance weight (1 = none)")
    p.add_argument("--threshold", default=None, metavar="clip|P",
                   help="keep the denoised image in [-1, 1]: clip, or dynamic thresholding at quantile P (0.995)")
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--bf16", action="store_true",
                   help="run the network under bfloat16 autocast (faster on CPUs with AVX512-BF16 and on GPUs)")
    p.add_argument("--raw", action="store_true", help="use the raw weights instead of the EMA")
    p.add_argument("--adapter", action="append", default=[], metavar="PATH[:WEIGHT]",
                   help="a LoRA adapter to apply, with an optional mixing weight (repeatable)")
    p.add_argument("--out", default="samples", help="output directory")
    p.add_argument("--autoencoder", default=None, help="latent models: their autoencoder, if it moved since training")
    _add_device(p)

    from kuosan import latent_cli

    latent_cli.add_arguments(sub.add_parser("train-autoencoder", help="train an autoencoder for latent diffusion"))
    latent_cli.add_latent_arguments(sub.add_parser("latent", help="latent-space tools: encode, interpolate, "
                                                                  "class arithmetic"))

    from kuosan import lora_cli

    lora_cli.add_arguments(sub.add_parser("lora", help="inspect LoRA adapters, merge them into a checkpoint"))

    p = sub.add_parser("bench", help="time a kuosan UNet beside diffusers' and lucidrains' on this machine",
                       description="Times kuosan's UNet (or --config's) and, where installed, diffusers' "
                                   "UNet2DModel and lucidrains' Unet of the same size, alternately in one process.",
                       epilog="examples:\n  kuosan bench\n  kuosan bench --config runs/fm --peers none\n"
                              "  kuosan bench --threads 2 --layouts channels_last,channels_last-bf16 --out bench.json",
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    from kuosan import bench

    bench.add_arguments(p)

    p = sub.add_parser("data", help="load a data set spec and describe it")
    p.add_argument("spec", help="fashion-mnist[:test], mnist, digits, a folder, an .npz")
    p.add_argument("--root", default=None, help="directory of the data set's files")
    p.add_argument("--grid", default=None, help="write a PNG grid of the first 64 images here")

    try:
        from kuosan.evaluation import cli as eval_cli
    except ImportError:
        eval_cli = None
    if eval_cli is not None:
        p = sub.add_parser("evaluate", help="quality, diversity, stability and speed in one report",
                           formatter_class=argparse.RawDescriptionHelpFormatter,
                           epilog="examples:\n  kuosan evaluate --checkpoint runs/fm --n 1000 --out eval/\n"
                                  "  kuosan evaluate --images samples/samples.npz --reference fashion-mnist:test")
        eval_cli.add_arguments(p)
    from kuosan import edit_cli

    p = sub.add_parser("edit", help="img2img, inpaint, invert or interpolate with a checkpoint",
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    edit_cli.add_arguments(p)
    return parser


def _positive(name, value):
    if value is not None and value <= 0:
        raise KuosanError(f"{name} must be positive, got {value}")


def cmd_sample(args) -> int:
    import kuosan
    from kuosan.rng import parse_seeds

    _positive("--n", args.n)
    _positive("--steps", args.steps)
    _positive("--batch", args.batch)
    if args.steps is not None and args.steps > 10000:
        raise KuosanError(f"--steps {args.steps} is absurdly large (at most 10000)")
    if args.n is not None and args.n > 100_000:
        raise KuosanError(f"--n {args.n} is absurdly large (at most 100000 images a command)")
    if args.guidance is not None and not 0 <= args.guidance <= 100:
        raise KuosanError(f"--guidance must be between 0 and 100, got {args.guidance}")
    from kuosan.diffusion.thresholding import parse_threshold

    parse_threshold(args.threshold)  # a bad value is a one-line error before the model loads
    seeds = parse_seeds(args.seeds) if args.seeds else list(range(args.n or 64))
    if args.n is not None and args.seeds and args.n != len(seeds):
        raise KuosanError(f"--n {args.n} disagrees with --seeds ({len(seeds)} seeds)")
    from kuosan.training.distributed import init_distributed
    from kuosan.runtime import resolve_device

    ctx = init_distributed(resolve_device(args.device))  # under torchrun: each process a share of the seeds
    from kuosan.lora_cli import parse_adapter

    pipe = kuosan.load(args.checkpoint, device=str(ctx.device), use_ema=not args.raw,
                       autoencoder=args.autoencoder, adapters=[parse_adapter(a) for a in args.adapter])
    from tqdm import tqdm

    shown = ctx.is_main and sys.stderr.isatty()
    with tqdm(total=len(seeds), desc="sample", unit="img", disable=not shown) as bar:
        res = pipe.sample(seeds, args.class_label, sampler=args.sampler, steps=args.steps,
                          guidance=args.guidance, schedule=args.schedule, batch_size=args.batch,
                          progress=bar.update, distributed=ctx.enabled, threshold=args.threshold, bf16=args.bf16)
    if not ctx.is_main:
        return 0  # rank 0 writes the files
    saved = res.save(args.out, grid_cols=8 if len(seeds) >= 8 else None)
    print(f"{len(seeds)} images in {res.seconds:.1f} s ({len(seeds) / res.seconds:.2f} images/s, "
          f"{res.nfe} network evaluations each) -> {saved['dir']} (grid.png, samples.npz)")
    return 0


def cmd_train(args, overrides) -> int:
    from kuosan.config import load_config, resolve_config_path
    from kuosan.training.loop import train

    source = resolve_config_path(args.config)
    data = None
    if isinstance(source, dict):
        cfg = load_config(None, overrides, base=source)
    else:
        import json

        if source.suffix == ".json":  # a run's own config.json (with network/data sections) is accepted too
            try:
                data = json.loads(source.read_text())
            except ValueError:
                data = None
        if isinstance(data, dict) and data.get("format") == "kuosan-checkpoint":
            base = {k: data[k] for k in ("model", "diffusion", "sample", "train") if k in data}
            cfg = load_config(None, overrides, base=base)
        else:
            cfg = load_config(source, overrides)
    run_config = isinstance(data, dict) and data.get("format") == "kuosan-checkpoint"
    if cfg.train.init_from and not run_config:  # a run's config.json holds the fine-tuning settings already
        from kuosan.finetune import finetune_config

        cfg = finetune_config(cfg, overrides)
    train(cfg, resume=args.resume)
    return 0


def cmd_data(args) -> int:
    from kuosan.data import load_dataset

    ds = load_dataset(args.spec, root=args.root)
    counts = ds.labels.bincount(minlength=ds.num_classes).tolist()
    print(f"{ds.name}: {len(ds)} images, {ds.channels}x{ds.resolution}x{ds.resolution}, "
          f"{ds.num_classes} classes")
    for name, c in zip(ds.class_names, counts):
        print(f"  {name}: {c}")
    if args.grid:
        from kuosan.images import make_grid, save_png

        save_png(make_grid(ds.images[:64].permute(0, 2, 3, 1).numpy(), 8), args.grid, scale=2)
        print(f"grid: {args.grid}")
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    from kuosan.runtime import tune_allocator

    tune_allocator()
    parser = _parser()
    args, extra = parser.parse_known_args(argv)
    warnings.formatwarning = lambda msg, cat, *a, **k: f"kuosan: warning: {msg}\n"
    try:
        if args.command is None:
            parser.print_help()
            return 0
        if extra and args.command != "train":
            parser.error(f"unrecognized arguments: {' '.join(extra)}")
        if args.command == "train":
            return cmd_train(args, extra)
        if args.command == "sample":
            return cmd_sample(args)
        if args.command == "demo":
            from kuosan.demo import run_demo

            return run_demo(minutes=args.minutes, out=args.out, data=args.data, seed=args.seed,
                            device=args.device, evaluate=not args.no_eval)
        if args.command == "data":
            return cmd_data(args)
        if args.command == "bench":
            from kuosan import bench

            return bench.run(args)
        if args.command == "lora":
            from kuosan import lora_cli

            return lora_cli.run(args)
        if args.command in ("train-autoencoder", "latent"):
            from kuosan import latent_cli

            return latent_cli.run(args) if args.command == "train-autoencoder" else latent_cli.run_latent(args)
        if args.command == "edit":
            from kuosan import edit_cli

            return edit_cli.run(args)
        if args.command == "evaluate":
            from kuosan.evaluation import cli as eval_cli

            return eval_cli.run(args)
        parser.error(f"unknown command {args.command}")
    except KuosanError as e:
        print(f"kuosan: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("kuosan: interrupted", file=sys.stderr)
        return 130
    except OSError as e:  # a path the user gave: missing, not writable, a file where a folder should be
        where = f": {e.filename}" if e.filename else ""
        print(f"kuosan: error: {e.strerror or e}{where}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
