"""``kuosan bench``: a kuosan UNet beside diffusers' and lucidrains' UNets of the same size, on this machine.

Every contender runs on the same batch, resolution and thread settings, timed in one process in
alternation (A B C A B C …, medians), because absolute times on a shared machine drift from minute to
minute while ratios taken in the same seconds hold. Reported per contender: parameters, FLOPs of one
forward (multiply-add = 2, torch's counter), forward time (``inference_mode``), training images/s
(forward, backward, AdamW step), sampling images/s at equal steps (one network call a step: kuosan's
Euler, the peers' DDIM), and the achieved GFLOP/s as a fraction of a ceiling measured in the same
rounds: a 3×3 convolution 64→64 at the benchmark's resolution and batch, NCHW and ``channels_last``.

The peers are optional: ``pip install diffusers denoising-diffusion-pytorch``. lucidrains' package
imports torchvision at module level; ``benchmarks/peers.py`` installs a placeholder when torchvision
cannot load. Nothing is downloaded: all networks start from random weights.

This module is the command (its flags and ``run``); the pieces live beside it: ``contenders`` (kuosan's
contender), ``peers`` (diffusers' and lucidrains'), ``timing`` (alternated rounds, ceilings, layers) and
``report`` (summary and table). FLOPs are counted by ``kuosan.nets.build.flops_of``.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

import torch

from kuosan.errors import KuosanError

__all__ = ["add_arguments", "run"]

LAYOUTS = {f"{lay}{suffix}" for lay in ("channels_last", "nchw") for suffix in ("", "-bf16")}


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", default=None,
                   help="preset name or config/checkpoint JSON whose model to time (default: a UNet of the "
                        "peers' size: base 32, mults 1,2,2, 2 blocks, attention at 7)")
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--resolution", type=int, default=28)
    p.add_argument("--channels", type=int, default=1)
    p.add_argument("--rounds", type=int, default=5, help="alternating rounds (medians over them)")
    p.add_argument("--sample-steps", type=int, default=10, help="sampling steps, equal for all (0: skip)")
    p.add_argument("--sample-rounds", type=int, default=3)
    p.add_argument("--threads", type=int, default=None,
                   help="torch threads, the same for all (default: kuosan.runtime.configure_threads)")
    p.add_argument("--peers", default="diffusers,lucidrains",
                   help="comma list, or 'none'; a -bf16 suffix (diffusers-bf16) adds that peer under bfloat16 "
                        "autocast, the mixed precision its training scripts use")
    p.add_argument("--layouts", default="channels_last,nchw",
                   help="kuosan variants to time: channels_last, nchw, and either with -bf16 (bfloat16 autocast "
                        "for that variant alone), comma list; the first is the headline")
    p.add_argument("--compile", action="store_true", help="also time kuosan under torch.compile (slow start)")
    p.add_argument("--bf16", action="store_true", help="run every contender under bfloat16 autocast")
    p.add_argument("--skip-train", action="store_true")
    p.add_argument("--layers", action="store_true",
                   help="also time GroupNorm variants in both layouts and 3x3 convolutions, torch's against kuosan's")
    p.add_argument("--out", default=None, help="write the results as JSON here")


def _split(text: str) -> list[str]:
    return [s.strip() for s in text.split(",") if s.strip()]


def _contenders(args, log) -> list:
    """kuosan in each of ``--layouts`` (and compiled with ``--compile``), then the peers that load here."""
    from kuosan.bench.contenders import kuosan_contender, model_section
    from kuosan.bench.peers import build_peers

    model, diffusion = model_section(args.config)
    layouts = _split(args.layouts)
    unknown = set(layouts) - LAYOUTS
    if unknown:
        raise KuosanError(f"unknown --layouts {', '.join(sorted(unknown))}; use channels_last, nchw, "
                          "channels_last-bf16 or nchw-bf16")
    out = [kuosan_contender(model, diffusion, args, f"kuosan-{lay}", lay.startswith("channels_last"), False,
                            lay.endswith("-bf16")) for lay in layouts]
    if args.compile:
        out.append(kuosan_contender(model, diffusion, args, "kuosan-compiled", layouts[0].startswith("channels_last"),
                                    True, False))
    return out + build_peers([] if args.peers == "none" else _split(args.peers), model, args, log)


def _time(contenders: list, args, log) -> dict:
    """Alternated rounds of forwards (with the ceilings), training steps, sampling loops and layers."""
    from kuosan.bench.timing import alternate, ceilings, layer_fns, warm_compiled

    result = {"compile_s": warm_compiled(contenders, args.skip_train, log)}
    ceiling = ceilings(args.batch, args.resolution)
    fwd = {c.name: c.forward for c in contenders} | {k: f for k, (f, _) in ceiling.items()}
    log(f"forward: {args.rounds} rounds")
    result["forward"] = alternate(fwd, args.rounds, warmup=2)
    for k, (_, flops) in ceiling.items():
        result["forward"][k]["gflop_per_s"] = flops / result["forward"][k]["median_s"] / 1e9
    if not args.skip_train:
        log(f"training step: {args.rounds} rounds")
        result["train_step"] = alternate({c.name: c.train_step for c in contenders}, args.rounds, warmup=2)
    if args.sample_steps:
        log(f"sampling, {args.sample_steps} steps: {args.sample_rounds} rounds")
        result["sample"] = alternate({c.name: (lambda c=c: c.sample(args.sample_steps)) for c in contenders},
                                     args.sample_rounds, warmup=1)
    if args.layers:
        log("layers: GroupNorm + scale/shift + SiLU; 3x3 convolutions")
        result["layers"] = alternate(layer_fns(args.batch, args.resolution), max(args.rounds, 7), warmup=2)
    return result


def run(args) -> int:
    from kuosan.bench.report import environment, print_table, summarise
    from kuosan.runtime import configure_threads, tune_allocator

    tuned = tune_allocator()
    configure_threads(args.threads)  # default: a fair share of a busy machine (kuosan.runtime)
    log = print
    contenders = _contenders(args, log)
    env = environment(tuned)
    log(f"kuosan bench: batch {args.batch}, {args.channels}x{args.resolution}x{args.resolution}, "
        f"{env['threads']} threads, OMP_WAIT_POLICY={env['omp_wait_policy']}, load {env['loadavg_start']}"
        f"{', bf16 autocast' if args.bf16 else ''}; contenders: {', '.join(c.name for c in contenders)}")
    result = {"env": env, "args": {k: v for k, v in vars(args).items() if not callable(v)},
              "contenders": {c.name: {"params": c.params, "flops_forward": c.flops_forward,
                                      "flops_train_step": c.flops_train, **c.info} for c in contenders}}
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=args.bf16):
        result |= _time(contenders, args, log)
    env["loadavg_end"] = os.getloadavg()
    result["summary"] = summarise(result, contenders, args)
    print_table(result["summary"], result, args, log)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(result, indent=1, default=str) + "\n")
        log(f"wrote {args.out}")
    return 0
