"""``kuosan evaluate``: score generated images (or a checkpoint's samples) against a reference
(quality, diversity, stability and speed in one report; the library is :mod:`kuosan.evaluation`)."""

import argparse
import sys
from pathlib import Path

from kuosan.errors import KuosanError
from kuosan.runtime import resolve_device

EXAMPLES = """\
examples:
  kuosan evaluate --images samples.npz --out eval/
  kuosan evaluate --images generated_pngs/ --reference fashion-mnist:test --extractors fmnist-cnn
  kuosan evaluate --checkpoint runs/fmnist/checkpoints/latest --n 1000 --sampler heun --steps 18 --out eval/
  kuosan evaluate --checkpoint runs/fm --extractors fmnist-cnn,efficientnet-lite0   # add ImageNet features
  kuosan evaluate --images samples.npz --reference eval/stats.npz     # reuse saved statistics
  kuosan evaluate --images samples.npz --extractors inception --inception-weights pt_inception-2015-12-05.pth

extractors: fmnist-cnn, mnist-cnn (shipped classifiers), efficientnet-lite0 (ImageNet),
            inception (FID Inception-v3; needs --inception-weights, never downloaded)
default:    the data set's classifier (its reference statistics ship with kuosan: no real image is
            featurised); on CUDA also efficientnet-lite0. Sets without a classifier: efficientnet-lite0.
"""

DEFAULT_N = 1000
DEFAULT_BATCH = 64


def register(sub) -> None:
    p = sub.add_parser("evaluate", help="quality, diversity, stability and speed in one report",
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(p)
    p.set_defaults(run=run)


def add_arguments(parser: argparse.ArgumentParser):
    """Add the ``evaluate`` options to ``parser``."""
    from kuosan.config import SampleConfig
    from kuosan.evaluation.config import EvalConfig

    sample, ev = SampleConfig(), EvalConfig()
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.epilog = EXAMPLES
    src = parser.add_mutually_exclusive_group(required=True)
    src.add_argument("--images", metavar="PATH", help="generated images: a folder of PNGs or a .npz")
    src.add_argument("--checkpoint", metavar="DIR", help="a checkpoint directory: sample first, then evaluate")
    g = parser.add_argument_group("sampling (with --checkpoint)")
    g.add_argument("--n", type=int, default=DEFAULT_N, help=f"number of images to sample (default {DEFAULT_N})")
    g.add_argument("--seeds", metavar="LIST", help="seeds, e.g. 0-999 or 0,5,9-20 (default 0..n-1)")
    own = "the checkpoint's own (its config's sample section; {} for one without)"
    g.add_argument("--sampler", default=None, help=f"sampler name (default {own.format(sample.sampler)})")
    g.add_argument("--steps", type=int, default=None, help=f"sampling steps (default {own.format(sample.steps)})")
    g.add_argument("--guidance", type=float, default=None,
                   help=f"classifier-free guidance scale (default {own.format(f'{sample.guidance:g}')})")
    g.add_argument("--threshold", default=None, metavar="clip|P",
                   help="keep the denoised image in [-1, 1]: clip, or dynamic thresholding at quantile P")
    g.add_argument("--batch", type=int, default=DEFAULT_BATCH, help=f"sampling batch size (default {DEFAULT_BATCH})")
    g.add_argument("--bf16", action="store_true", help="sample with the network under bfloat16 autocast")
    e = parser.add_argument_group("evaluation")
    e.add_argument("--reference", metavar="SPEC", default=None,
                   help="real images: a data set split (fashion-mnist:test), a folder, or a stats .npz "
                        "(default: the checkpoint's data set's test split, else fashion-mnist:test)")
    e.add_argument("--train-reference", metavar="SPEC", default="auto",
                   help="real training images for floors and memorisation (default: the reference's train "
                        "split; 'none' to skip)")
    e.add_argument("--extractors", metavar="NAMES", default=None,
                   help="comma-separated feature extractors (default: the data set's classifier, plus "
                        "efficientnet-lite0 on CUDA; e.g. fmnist-cnn,efficientnet-lite0 to add it on a CPU)")
    e.add_argument("--inception-weights", metavar="PATH", default=None,
                   help="pt_inception-2015-12-05 state dict for the inception extractor")
    e.add_argument("--metrics-log", metavar="FILE", default=None,
                   help="a training run's metrics.jsonl (default: found next to --checkpoint, if any)")
    e.add_argument("--out", metavar="DIR", default="eval", help="output folder (default ./eval)")
    e.add_argument("--device", default="auto", help="cpu, cuda, cuda:1 … (default: cuda when available)")
    e.add_argument("--max-real", type=int, default=ev.max_real, metavar="N",
                   help=f"at most N real images per real set, class-balanced (default {ev.max_real})")
    e.add_argument("--kid-subsets", type=int, default=ev.kid_subsets, metavar="N",
                   help=f"KID subsets (default {ev.kid_subsets})")
    e.add_argument("--no-cache", action="store_true",
                   help="recompute reference features (neither the shipped statistics nor the cache), do not "
                        "cache them")
    e.add_argument("--no-plots", action="store_true", help="skip the PNG plots")
    return parser


def eval_config(args, device):
    """The :class:`EvalConfig` the command line asks for."""
    from kuosan.evaluation.config import EvalConfig

    return EvalConfig(extractors=args.extractors or None, device=device, max_real=args.max_real,
                      inception_weights=args.inception_weights, kid_subsets=args.kid_subsets,
                      use_cache=not args.no_cache, shipped_stats=not args.no_cache, plots=not args.no_plots)


def _find_metrics_log(checkpoint):
    """``metrics.jsonl`` in the checkpoint directory or up to two folders above it (the run directory)."""
    here = Path(checkpoint).resolve()
    for folder in (here, here.parent, here.parent.parent):
        if (folder / "metrics.jsonl").is_file():
            return folder / "metrics.jsonl"
    return None


def sample_checkpoint(args, pipe, seeds, device, out_dir, log, ctx=None):
    """Sample the loaded checkpoint ``pipe``, timing it; returns ``(ImageSet, speed dict)``, saves ``samples.npz``.

    Under torchrun (``ctx.enabled``) every process samples its share of the seeds and all of them get every
    image (image k the one a single process makes for seed k); only rank 0 writes ``samples.npz``."""
    import numpy as np
    from tqdm import tqdm

    from kuosan.data.emoji import cycle_groups, has_groups
    from kuosan.evaluation.features import as_uint8_nchw
    from kuosan.evaluation.report import ImageSet
    from kuosan.evaluation.speed import measure, speed_summary

    k = int(getattr(pipe, "num_classes", 0) or 0)
    labels = [s % k for s in seeds] if k else None
    groups = None  # a model of finer labels (emoji:sub): its samples cycle through the data set's classes
    if k and has_groups(getattr(pipe, "dataset", "")):
        labels, groups = cycle_groups(pipe.class_names, len(seeds))
    spread = {"distributed": True} if ctx is not None and ctx.enabled else {}
    where = f"{ctx.world} processes" if spread else str(device)
    main = ctx is None or ctx.is_main
    if main:
        log(f"sampling {len(seeds)} images ({args.sampler}, {args.steps} steps) on {where}")
    with tqdm(total=len(seeds), desc="sample", unit="img", disable=not (main and sys.stderr.isatty()),
              leave=False) as bar, measure(device) as m:
        out = pipe.sample(seeds=seeds, class_labels=labels, sampler=args.sampler, steps=args.steps,
                          guidance=args.guidance, batch_size=args.batch, progress=bar.update, **spread,
                          **({"bf16": True} if args.bf16 else {}),
                          **({"threshold": args.threshold} if args.threshold else {}))
    what = f"sampling ({args.sampler}, {args.steps} steps, guidance {args.guidance}" + (
        ", bfloat16" if args.bf16 else "") + (f", {ctx.world} processes)" if spread else ")")
    if spread and not ctx.is_main:
        return None, None
    speed = speed_summary(len(out.images), m.seconds, getattr(out, "nfe", None), m.peak_bytes, device,
                          m.memory_kind, what=what)
    out_dir.mkdir(parents=True, exist_ok=True)
    arrays = {"images": np.asarray(out.images), "seeds": np.asarray(seeds)}
    if getattr(out, "labels", None) is not None:
        arrays["labels"] = np.asarray(out.labels)
    if groups is not None:  # scored, and saved, as the data set's classes; the model's own labels beside them
        arrays["model_labels"], arrays["labels"] = arrays.get("labels", np.asarray(labels)), np.asarray(groups)
    np.savez(out_dir / "samples.npz", **arrays)
    out_labels = getattr(out, "labels", None)
    labels = np.asarray(out_labels if out_labels is not None else labels) if k else None
    if groups is not None:
        labels = np.asarray(groups)
    return ImageSet(as_uint8_nchw(np.asarray(out.images)), labels, f"{args.checkpoint} ({args.sampler}, "
                    f"{args.steps} steps)"), speed


def _pipe_shape(pipe):
    """``(channels, resolution)`` of the images a loaded checkpoint makes, or ``None``."""
    shape = getattr(pipe, "pixel_shape", None)
    try:
        return (int(shape[0]), int(shape[-1])) if shape is not None else None
    except (TypeError, IndexError, ValueError):
        return None


def run(args) -> int:
    """Run an evaluation from parsed arguments; prints the table and returns the exit status.

    Everything is checked first (:mod:`kuosan.evaluation.validate`): the options, the extractors and their
    weights, the reference, the output folder -- before the checkpoint is loaded or an image sampled."""
    import torch

    from kuosan.evaluation.render import format_table
    from kuosan.evaluation.report import DEFAULT_REFERENCE, dataset_of, evaluate
    from kuosan.evaluation.validate import check_sampling, validate
    from kuosan.training.distributed import init_distributed

    def log(msg):
        print(f"[evaluate] {msg}", file=sys.stderr, flush=True)

    cfg = eval_config(args, str(resolve_device(args.device)))
    out_dir = Path(args.out)
    train_reference = None if str(args.train_reference).lower() == "none" else args.train_reference
    reference, metrics_log, speed, seeds = args.reference, args.metrics_log, None, None
    if args.images is not None:
        if not Path(args.images).exists():
            raise KuosanError(f"--images {args.images!r} not found; pass a folder of images or a .npz file")
        reference = reference or DEFAULT_REFERENCE
    else:
        seeds = check_sampling(n=args.n, seeds=args.seeds, steps=args.steps, batch=args.batch,
                               guidance=args.guidance, sampler=args.sampler, threshold=args.threshold,
                               checkpoint=args.checkpoint)
    # the reference of a checkpoint without --reference is known once it is loaded: checked again below
    validate(reference, cfg, train_reference=train_reference, out_dir=out_dir)

    # Under torchrun the processes split the sampling of a checkpoint; rank 0 alone evaluates and writes.
    ctx = init_distributed(torch.device(cfg.device))
    cfg = cfg.replace(device=str(ctx.device))
    if args.images is not None:
        if not ctx.is_main:
            return 0  # nothing to sample: rank 0 evaluates
        generated = args.images
    else:
        import kuosan

        pipe = kuosan.load(args.checkpoint, device=cfg.device)
        own = pipe.sample_config  # what the run was trained to sample with (a student: its consistency sampler)
        for name in ("sampler", "steps", "guidance"):
            if getattr(args, name) is None:
                setattr(args, name, getattr(own, name))
        if reference is None:
            trained_on = getattr(pipe, "dataset", None)
            reference = f"{dataset_of(trained_on)}:test" if dataset_of(trained_on) else trained_on or DEFAULT_REFERENCE
        validate(reference, cfg, train_reference=train_reference, out_dir=out_dir, image_shape=_pipe_shape(pipe))
        generated, speed = sample_checkpoint(args, pipe, seeds, cfg.device, out_dir, log, ctx)
        if not ctx.is_main:
            return 0
        metrics_log = metrics_log or _find_metrics_log(args.checkpoint)
    report = evaluate(generated, reference, cfg, train_reference=train_reference, out_dir=out_dir,
                      metrics_log=metrics_log, speed=speed, log=log)
    print(format_table(report))
    print(f"report: {out_dir / 'report.md'}")
    return 0
