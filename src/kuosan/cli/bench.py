"""``kuosan bench``: time kuosan's UNet beside diffusers' and lucidrains' (the harness is :mod:`kuosan.bench`)."""

from __future__ import annotations

import argparse

from kuosan import bench


def register(sub) -> None:
    p = sub.add_parser("bench", help="time a kuosan UNet beside diffusers' and lucidrains' on this machine",
                       description="Times kuosan's UNet (or --config's) and, where installed, diffusers' "
                                   "UNet2DModel and lucidrains' Unet of the same size, alternately in one process.",
                       epilog="examples:\n  kuosan bench\n  kuosan bench --config runs/fm --peers none\n"
                              "  kuosan bench --threads 2 --layouts channels_last,channels_last-bf16 --out bench.json",
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    bench.add_arguments(p)
    p.set_defaults(run=run)


def run(args) -> int:
    """Check the numbers and names first (one line each), then time (:func:`kuosan.bench.run`)."""
    from kuosan.errors import KuosanError
    from kuosan.validation import LIMITS, output_file, whole

    for name, lo, hi in (("batch", 1, LIMITS["batch"]), ("resolution", 4, 1024), ("channels", 1, 4),
                         ("rounds", 1, 1000), ("sample_steps", 0, LIMITS["steps"]), ("sample_rounds", 1, 1000)):
        setattr(args, name, whole(getattr(args, name), f"--{name.replace('_', '-')}", lo, hi))
    if args.threads is not None:
        args.threads = whole(args.threads, "--threads", 1, 4096)
    layouts = [s.strip() for s in args.layouts.split(",") if s.strip()]
    unknown = sorted(set(layouts) - bench.LAYOUTS)
    if not layouts or unknown:
        raise KuosanError(f"unknown --layouts {', '.join(unknown) or repr(args.layouts)}; use channels_last, nchw, "
                          "channels_last-bf16 or nchw-bf16 (a comma list)")
    peers = [s.strip() for s in args.peers.split(",") if s.strip()]
    from kuosan.bench.peers import PEERS

    if args.peers.strip() != "none" and (not peers or {p.removesuffix("-bf16") for p in peers} - set(PEERS)):
        raise KuosanError(f"unknown --peers {args.peers!r}; use {', '.join(PEERS)} (any with -bf16), "
                          "a comma list of them, or none")
    if args.out is not None:
        output_file(args.out, "--out", ".json")
    if args.config is not None:
        from kuosan.bench.contenders import model_section

        model_section(args.config)  # a missing or broken --config fails before anything is built
    return bench.run(args)
