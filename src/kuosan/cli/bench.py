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
    p.set_defaults(run=bench.run)
