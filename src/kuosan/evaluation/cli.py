"""``kuosan evaluate``: score generated images (or a checkpoint's samples) against a reference.

The lead CLI wires :func:`add_arguments` and :func:`run` as a subcommand; ``python -m kuosan.evaluation.cli``
runs the same thing on its own.
"""

import argparse
import sys
from pathlib import Path

from kuosan.errors import KuosanError

EXAMPLES = """\
examples:
  kuosan evaluate --images samples.npz --out eval/
  kuosan evaluate --images generated_pngs/ --reference fashion-mnist:test --extractors fmnist-cnn
  kuosan evaluate --checkpoint runs/fmnist/checkpoints/latest --n 1000 --sampler heun --steps 18 --out eval/
  kuosan evaluate --images samples.npz --reference eval/stats.npz     # reuse saved statistics
  kuosan evaluate --images samples.npz --extractors inception --inception-weights pt_inception-2015-12-05.pth

extractors: fmnist-cnn, mnist-cnn (shipped classifiers), efficientnet-lite0 (ImageNet),
            inception (FID Inception-v3; needs --inception-weights, never downloaded)
"""


def add_arguments(parser: argparse.ArgumentParser):
    """Add the ``evaluate`` options to ``parser``."""
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.epilog = EXAMPLES
    src = parser.add_mutually_exclusive_group(required=True)
    src.add_argument("--images", metavar="PATH", help="generated images: a folder of PNGs or a .npz")
    src.add_argument("--checkpoint", metavar="DIR", help="a checkpoint directory: sample first, then evaluate")
    g = parser.add_argument_group("sampling (with --checkpoint)")
    g.add_argument("--n", type=int, default=1000, help="number of images to sample (default 1000)")
    g.add_argument("--seeds", metavar="LIST", help="seeds, e.g. 0-999 or 0,5,9-20 (default 0..n-1)")
    g.add_argument("--sampler", default="heun", help="sampler name (default heun)")
    g.add_argument("--steps", type=int, default=18, help="sampling steps (default 18)")
    g.add_argument("--guidance", type=float, default=1.0, help="classifier-free guidance scale (default 1)")
    g.add_argument("--threshold", default=None, metavar="clip|P",
                   help="keep the denoised image in [-1, 1]: clip, or dynamic thresholding at quantile P")
    g.add_argument("--batch", type=int, default=64, help="sampling batch size (default 64)")
    g.add_argument("--bf16", action="store_true", help="sample with the network under bfloat16 autocast")
    e = parser.add_argument_group("evaluation")
    e.add_argument("--reference", metavar="SPEC", default=None,
                   help="real images: a data set split (fashion-mnist:test), a folder, or a stats .npz "
                        "(default: the checkpoint's data set's test split, else fashion-mnist:test)")
    e.add_argument("--train-reference", metavar="SPEC", default="auto",
                   help="real training images for floors and memorisation (default: the reference's train "
                        "split; 'none' to skip)")
    e.add_argument("--extractors", metavar="NAMES", default=None,
                   help="comma-separated feature extractors (default: the data set's classifier + efficientnet-lite0)")
    e.add_argument("--inception-weights", metavar="PATH", default=None,
                   help="pt_inception-2015-12-05 state dict for the inception extractor")
    e.add_argument("--metrics-log", metavar="FILE", default=None,
                   help="a training run's metrics.jsonl (default: found next to --checkpoint, if any)")
    e.add_argument("--out", metavar="DIR", default="eval", help="output folder (default ./eval)")
    e.add_argument("--device", default="auto", help="cpu, cuda, cuda:1 … (default: cuda when available)")
    e.add_argument("--max-real", type=int, default=10000, metavar="N",
                   help="at most N real images per real set, class-balanced (default 10000)")
    e.add_argument("--kid-subsets", type=int, default=100, metavar="N", help="KID subsets (default 100)")
    e.add_argument("--no-cache", action="store_true", help="recompute reference features, do not cache them")
    e.add_argument("--no-plots", action="store_true", help="skip the PNG plots")
    return parser


def _device(name):
    import torch

    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise KuosanError(f"--device {name}: CUDA is not available here; use --device cpu")
    return name


def _find_metrics_log(checkpoint):
    """``metrics.jsonl`` in the checkpoint directory or up to two folders above it (the run directory)."""
    here = Path(checkpoint).resolve()
    for folder in (here, here.parent, here.parent.parent):
        if (folder / "metrics.jsonl").is_file():
            return folder / "metrics.jsonl"
    return None


def sample_checkpoint(args, device, out_dir, log, ctx=None):
    """Sample the checkpoint, timing it; returns ``(ImageSet, speed dict, pipe)`` and saves ``samples.npz``.

    Under torchrun (``ctx.enabled``) every process samples its share of the seeds and all of them get every
    image (image k the one a single process makes for seed k); only rank 0 writes ``samples.npz``."""
    import numpy as np

    import kuosan
    from kuosan.evaluation.features import as_uint8_nchw
    from kuosan.evaluation.report import ImageSet
    from kuosan.evaluation.speed import measure, speed_summary

    if not Path(args.checkpoint).exists():
        raise KuosanError(f"checkpoint {args.checkpoint!r} not found; pass a checkpoint directory")
    pipe = kuosan.load(args.checkpoint, device=device)
    from kuosan.rng import parse_seeds

    seeds = parse_seeds(args.seeds) if args.seeds else list(range(args.n))
    k = int(getattr(pipe, "num_classes", 0) or 0)
    labels = [s % k for s in seeds] if k else None
    spread = {"distributed": True} if ctx is not None and ctx.enabled else {}
    where = f"{ctx.world} processes" if spread else str(device)
    if ctx is None or ctx.is_main:
        log(f"sampling {len(seeds)} images ({args.sampler}, {args.steps} steps) on {where}")
    with measure(device) as m:
        out = pipe.sample(seeds=seeds, class_labels=labels, sampler=args.sampler, steps=args.steps,
                          guidance=args.guidance, batch_size=args.batch, **spread,
                          **({"bf16": True} if args.bf16 else {}),
                          **({"threshold": args.threshold} if args.threshold else {}))
    what = f"sampling ({args.sampler}, {args.steps} steps, guidance {args.guidance}" + (
        ", bfloat16" if args.bf16 else "") + (f", {ctx.world} processes)" if spread else ")")
    if spread and not ctx.is_main:
        return None, None, pipe
    speed = speed_summary(len(out.images), m.seconds, getattr(out, "nfe", None), m.peak_bytes, device,
                          m.memory_kind, what=what)
    out_dir.mkdir(parents=True, exist_ok=True)
    arrays = {"images": np.asarray(out.images), "seeds": np.asarray(seeds)}
    if getattr(out, "labels", None) is not None:
        arrays["labels"] = np.asarray(out.labels)
    np.savez(out_dir / "samples.npz", **arrays)
    out_labels = getattr(out, "labels", None)
    labels = np.asarray(out_labels if out_labels is not None else labels) if k else None
    return ImageSet(as_uint8_nchw(np.asarray(out.images)), labels, f"{args.checkpoint} ({args.sampler}, "
                    f"{args.steps} steps)"), speed, pipe


def run(args) -> int:
    """Run an evaluation from parsed arguments; prints the table and returns the exit status."""
    import torch

    from kuosan.evaluation.reference import check_reference_exists
    from kuosan.evaluation.render import format_table
    from kuosan.evaluation.report import DEFAULT_REFERENCE, dataset_of, evaluate
    from kuosan.training.distributed import init_distributed

    def log(msg):
        print(f"[evaluate] {msg}", file=sys.stderr, flush=True)

    # Under torchrun the processes split the sampling of a checkpoint; rank 0 alone evaluates and writes.
    ctx = init_distributed(torch.device(_device(args.device)))
    device = str(ctx.device)
    out_dir = Path(args.out)
    if args.max_real < 2:
        raise KuosanError(f"--max-real must be at least 2, got {args.max_real}")
    extractors = [x.strip() for x in args.extractors.split(",") if x.strip()] if args.extractors else None
    reference, metrics_log, speed = args.reference, args.metrics_log, None
    if args.images is not None:
        if not Path(args.images).exists():
            raise KuosanError(f"--images {args.images!r} not found; pass a folder of images or a .npz file")
        if not ctx.is_main:
            return 0  # nothing to sample: rank 0 evaluates
        reference = reference or DEFAULT_REFERENCE
        check_reference_exists(reference)
        generated = args.images
    else:
        if args.n < 2 and not args.seeds:
            raise KuosanError(f"--n must be at least 2 to compare image sets, got {args.n}")
        generated, speed, pipe = sample_checkpoint(args, device, out_dir, log, ctx)
        if not ctx.is_main:
            return 0
        if reference is None:
            trained_on = getattr(pipe, "dataset", None)
            reference = f"{dataset_of(trained_on)}:test" if dataset_of(trained_on) else trained_on or DEFAULT_REFERENCE
        check_reference_exists(reference)
        metrics_log = metrics_log or _find_metrics_log(args.checkpoint)
    train_reference = None if str(args.train_reference).lower() == "none" else args.train_reference
    report = evaluate(generated, reference, extractors=extractors, out_dir=out_dir, metrics_log=metrics_log,
                      speed=speed, train_reference=train_reference, device=device, max_real=args.max_real,
                      inception_weights=args.inception_weights, kid_subsets=args.kid_subsets,
                      use_cache=not args.no_cache, plots=not args.no_plots, log=log)
    print(format_table(report))
    print(f"report: {out_dir / 'report.md'}")
    return 0


def main(argv=None):
    from kuosan.cli import main as cli_main  # one place turns user errors into one line

    return cli_main(["evaluate", *(sys.argv[1:] if argv is None else argv)])


if __name__ == "__main__":
    sys.exit(main())
