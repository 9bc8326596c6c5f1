"""``kuosan demo``: train on a bundled data set, sample, evaluate, write pictures (:mod:`kuosan.demo`)."""

from __future__ import annotations

import argparse

from kuosan.cli.options import add_device


def register(sub) -> None:
    p = sub.add_parser("demo", help="train on a bundled data set, sample, evaluate, write pictures",
                       epilog="examples:\n  kuosan demo\n  kuosan demo --minutes 10 --out runs/demo\n"
                              "  kuosan demo --data emoji              colour, 64x64: an autoencoder, then a latent model (~20 min)",
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--minutes", type=float, default=None,
                   help="whole-demo budget in minutes (default 10; 20 for --data emoji)")
    p.add_argument("--out", default=None, help="output directory (default runs/demo; runs/demo-emoji for --data emoji)")
    p.add_argument("--data", default=None,
                   help="data set (default fashion-mnist, else the MNIST subset; emoji: the colour set, latent)")
    p.add_argument("--seed", type=int, default=0, help="seed of the run (default 0)")
    p.add_argument("--no-eval", action="store_true", help="skip the evaluation section")
    add_device(p)
    p.set_defaults(run=run)


def run(args) -> int:
    from kuosan import demo
    from kuosan.errors import KuosanError
    from kuosan.runtime import resolve_device
    from kuosan.validation import output_dir, real, whole

    minutes = None
    if args.minutes is not None:
        minutes = real(args.minutes, "--minutes", 0, 7 * 24 * 60)  # a week: more is a typo
        if minutes <= 0.5:
            raise KuosanError(f"--minutes must be more than 0.5, got {args.minutes}")
    seed = whole(args.seed, "--seed", 0, 2 ** 32 - 1)
    if args.data is not None and not args.data.strip():
        raise KuosanError("--data is empty; give a data set spec, or leave it out for the default")
    latent = demo.LATENT_RECIPES.get(demo.dataset_name(args.data))
    out = args.out if args.out is not None else (f"runs/demo-{demo.dataset_name(args.data)}" if latent else "runs/demo")
    output_dir(out)
    resolve_device(args.device)  # an unknown device fails now, not after the calibration
    return demo.run_demo(minutes=minutes, out=out, data=args.data, seed=seed, device=args.device,
                         evaluate=not args.no_eval)
