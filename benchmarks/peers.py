"""kuosan's UNet against diffusers' UNet2DModel and lucidrains' Unet, same size, same CPU, one process.

    .venv/bin/python benchmarks/peers.py [--rounds 5] [--sample-steps 10] [--threads 2] [--compile] [--isa avx2]

All three at batch 64 on 28×28×1 and about 35 GFLOP a forward (kuosan: base 32, mults 1,2,2, 2 blocks,
attention at 7; diffusers: widths 32/64/64, 2 layers a level, attention at 7; lucidrains: dim 32, mults
1,2,2), timed alternately with 3×3 convolution ceilings. On CPUs with native bfloat16 convolutions the
defaults add kuosan and diffusers in mixed precision (kuosan ``--bf16``; diffusers as its scripts and
pipelines run it). Prints a table and writes benchmarks/results/peers.json (see ``kuosan bench --help`` for
the options; this script sets the output path and those defaults, and makes lucidrains' package importable
without a working torchvision).

Peers are optional benchmark dependencies:  pip install diffusers denoising-diffusion-pytorch
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from _tv_shim import shim_torchvision  # noqa: E402  (before any peer is imported)


def _isa(argv) -> None:
    """``--isa avx2``: measure as on a CPU without AVX512 (before torch loads): oneDNN, MKL and torch's own
    vectorised kernels limited to AVX2, kuosan's kernels built for x86-64-v3 (AVX2 + FMA)."""
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--isa", choices=["native", "avx2"], default="native")
    if pre.parse_known_args(argv)[0].isa == "avx2":
        os.environ.update(ONEDNN_MAX_CPU_ISA="AVX2", MKL_ENABLE_INSTRUCTIONS="AVX2", ATEN_CPU_CAPABILITY="avx2",
                          KUOSAN_KERNEL_ARCH="x86-64-v3")


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    _isa(argv)
    from kuosan.runtime import openmp_defaults

    openmp_defaults()  # before torch loads OpenMP; the same for every contender
    shimmed = shim_torchvision()
    from kuosan import bench

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    bench.add_arguments(ap)
    ap.add_argument("--isa", choices=["native", "avx2"], default="native",
                    help="avx2: oneDNN and MKL limited to AVX2 and kuosan's kernels built for it, as on a CPU "
                         "without AVX512 (set before torch loads)")
    import torch

    bf16 = torch.ops.mkldnn._is_mkldnn_bf16_supported()  # AVX512-BF16 or AMX: bfloat16 convolutions run natively
    ap.set_defaults(out=str(HERE / "results" / "peers.json"),
                    peers="diffusers,diffusers-bf16,lucidrains" if bf16 else "diffusers,lucidrains",
                    layouts="channels_last,channels_last-bf16" if bf16 else "channels_last,nchw")
    args = ap.parse_args(argv)
    if shimmed:
        print("torchvision does not load here: lucidrains' package gets a placeholder (its Unet never calls it)")
    return bench.run(args)


if __name__ == "__main__":
    sys.exit(main())
