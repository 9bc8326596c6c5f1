"""Recipes for the colour demo's latent model, compared by measurement at equal CPU time (or equal steps).

    .venv/bin/python benchmarks/emoji_ldm_recipes.py [--autoencoder runs/demo-emoji/autoencoder] \
        [--arms ARM ...] [--minutes 10 | --steps N] [--guidance 3,9@0.7] [--per-class 30] [--seed 0] [--out FILE]

An arm is the demo's CPU latent preset (``kuosan/configs/emoji-ldm.json``) with config overrides,
``KEY=VALUE`` pairs joined by ``;`` (VALUE in JSON; an empty arm is the preset itself), trained on ``emoji``'s 9
classes unless it sets ``train.data`` (the demo conditions on ``emoji:sub``, the 78 subcategories: add
``train.data="emoji:sub"`` to an arm to compare on the demo's labels). Each arm trains on the
same autoencoder for the same wall time, with the demo's time schedule (learning-rate decay and power EMA over
the time), one after the other in this process; then the same class-balanced seeds are sampled and scored
against the test split: the share the shipped emoji classifier puts in the class asked for, Fréchet distance in
its features and in EfficientNet-Lite0's. The autoencoder is the one ``make demo-emoji`` trains
(runs/demo-emoji/autoencoder). Writes ``--out`` (JSON) and a PNG beside it: the first 6 samples of each class
for each arm, side by side.

With ``--steps N`` every arm trains N steps instead, the learning rate decaying over the steps: equal work,
for comparisons a machine whose speed drifts between arms would blur. An arm may set
``train.autoencoder="DIR"`` to train on another autoencoder's latents.

Questions it was run for (all but the first before representation alignment joined the preset: add
``train.repa_weight=0`` to every arm to repeat them as they ran):
  * representation alignment (REPA, Yu et al. 2025; kuosan.training.repa) against none, at equal wall time,
    scored at the evaluation's guidance and at the demo grid's: ``--arms "train.repa_weight=0" "" --minutes 9.5
    --seed 1 --guidance 3,9@0.7 --out benchmarks/results/emoji_ldm_repa.json`` (and ``--seed 0``:
    ``emoji_ldm_repa_seed0.json``)
  * noise levels: EDM (Karras et al. 2022, eq. 8 and Table 1) draws the training noise as
    ln σ ~ N(P_mean, P_std²); a higher P_mean spends more of a short run on the large σ, where a sample's layout
    is decided: ``--arms diffusion.p_mean=-0.5 diffusion.p_mean=0.3 --out benchmarks/results/emoji_ldm_noise_levels.json``
  * width at low resolution: channels ×4 at 4x4 and attention there too, which costs little at 4x4:
    ``--arms "" "model.channel_mults=[1,2,4];model.attn_resolutions=[8,4]" --out benchmarks/results/emoji_ldm_width.json``
  * conditioning on emoji.json's 78 subcategories (``emoji:sub``: "sky & weather", "place-building") instead of
    the 9 classes, each class's samples drawn from its subcategories in proportion to their training emoji:
    ``--arms 'train.data="emoji"' 'train.data="emoji:sub"' --minutes 9.5 --seed 1 --guidance 3,9@0.7
    --out benchmarks/results/emoji_ldm_sub.json``
  * flow matching against EDM (rectified flow with SD3's logit-normal times, Esser et al. 2024, §3.1):
    ``--arms "" 'diffusion.precond="flow"' --out benchmarks/results/emoji_ldm_flow.json``
  * an autoencoder trained with the scale-equivariance term (``--equivariance_weight 0.5``) against one
    without, at equal steps: ``--steps 8000 --arms "" 'train.autoencoder="runs/ae-emoji-eq"'
    --out benchmarks/results/emoji_ldm_equivariance_steps.json``
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--autoencoder", default="runs/demo-emoji/autoencoder", help="a train-autoencoder run on emoji")
    p.add_argument("--arms", nargs="+", default=["", "diffusion.p_mean=0.3"],
                   help="config overrides of each arm: KEY=VALUE;KEY=VALUE (VALUE in JSON; '' = the preset)")
    p.add_argument("--minutes", type=float, default=10.0, help="training wall time of each model")
    p.add_argument("--steps", type=int, default=None,
                   help="train each model this many steps instead (learning-rate decay over the steps): "
                        "compares recipes at equal work on a machine whose speed drifts between arms")
    p.add_argument("--guidance", default=None,
                   help="guidance settings, W or W@R (R: guidance rescale), comma-separated; every arm is scored at "
                        "each (default: the preset's weight)")
    p.add_argument("--per-class", type=int, default=30, help="samples per class scored for each model")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=str(RESULTS / "emoji_ldm_recipes.json"))
    args = p.parse_args(argv)
    try:
        arms = [parse_arm(a) for a in args.arms]
    except ValueError as e:
        print(f"--arms: {e}", file=sys.stderr)
        return 2
    if not Path(args.autoencoder).is_dir():
        print(f"no autoencoder run at {args.autoencoder}; run `make demo-emoji` first or pass --autoencoder DIR",
              file=sys.stderr)
        return 2

    from kuosan.runtime import openmp_defaults

    openmp_defaults()
    import torch

    import kuosan
    from kuosan.config import load_config, resolve_config_path
    from kuosan.data import load_dataset
    from kuosan.data.emoji import labels_by_group
    from kuosan.demo import DEMO_SIGMA_REL
    from kuosan.images import make_grid
    from kuosan.nets.build import count_parameters
    from kuosan.records import read_train_state
    from kuosan.training.loop import train

    from emoji_guidance import parse_setting, save_results, scorer  # this folder is on the path as a script

    try:
        settings = [parse_setting(x) for x in args.guidance.split(",")] if args.guidance else [None]
    except ValueError as e:
        print(f"--guidance: {e}", file=sys.stderr)
        return 2

    base = resolve_config_path("emoji-ldm")
    test = load_dataset("emoji:test")
    score = scorer(test)
    seconds = 60 * args.minutes
    result = {"autoencoder": args.autoencoder, "preset": "emoji-ldm", "seed": args.seed,
              **({"steps": args.steps} if args.steps else {"minutes": args.minutes}),
              "load_average_start": list(os.getloadavg()), "rows": []}
    blocks = []
    print(f"{'arm':>40} {'steps':>6} {'img/s':>6} {'accuracy':>9} {'FD emoji-cnn':>13} {'FD EfficientNet':>16}")
    with tempfile.TemporaryDirectory(prefix="kuosan-ldm-recipes-") as tmp:
        for i, (arm, overrides) in enumerate(zip(args.arms, arms)):
            cfg = load_config(None, {"train.data": "emoji", "train.autoencoder": args.autoencoder,
                                     "train.seed": args.seed, "train.out": f"{tmp}/arm{i}",
                                     **({"train.steps": args.steps, "train.decay_over": "steps"} if args.steps
                                        else {"train.steps": 100_000, "train.time_limit": seconds,
                                              "train.decay_over": "time"}),
                                     "train.ema_sigma_rel": DEMO_SIGMA_REL,
                                     "train.checkpoint_every": 0, "train.sample_every": 0, **overrides}, base=base)
            t0 = time.time()
            run = train(cfg, progress=False, log=lambda *a: None)
            train_s = time.time() - t0
            pipe = kuosan.load(run, device="cpu")
            # a class's samples in a run; a model trained on emoji:sub or emoji:fine draws each group's samples
            # from its subcategories (or emoji) in proportion to their training emoji, and is scored by group
            labels, groups = labels_by_group(pipe.class_names, args.per_class)
            k = len(test.class_names)
            steps = read_train_state(pipe.path).step
            for setting in settings:
                w, r = setting or (pipe.sample_config.guidance, pipe.sample_config.guidance_rescale)
                res = pipe.sample(list(range(len(labels))), labels, guidance=w, guidance_rescale=r, batch_size=90)
                images = torch.from_numpy(np.ascontiguousarray(res.images.transpose(0, 3, 1, 2)))
                row = {"arm": arm or "the preset", "overrides": overrides, "p_mean": cfg.diffusion.p_mean,
                       "p_std": cfg.diffusion.p_std, "parameters": count_parameters(pipe.precond), "steps": steps,
                       "batch": cfg.train.batch, "train_seconds": round(train_s, 1),
                       "images_per_s": round(steps * cfg.train.batch / train_s, 1), "guidance": w,
                       "guidance_rescale": r, "data": cfg.train.data, **score(images, groups)}
                result["rows"].append(row)
                shown = f"{row['arm'][:32]} @{w:g}" + (f"/{r:g}" if r else "")
                print(f"{shown:>40} {steps:6d} {row['images_per_s']:6.1f} {row['conditional_accuracy']:9.3f} "
                      f"{row['fd_emoji-cnn']:13.2f} {row['fd_efficientnet-lite0']:16.1f}", flush=True)
                first = np.concatenate([res.images[c * args.per_class:][:6] for c in range(k)])  # a row per class
                blocks.append(make_grid(first, nrow=6, value=255))
    result["load_average_end"] = list(os.getloadavg())
    result["floor_accuracy"] = score.floor_accuracy
    print(f"classifier on the {len(test)} test images: {result['floor_accuracy']:.3f}")
    png = save_results(result, blocks, args.out, gap=16)
    print(f"results: {args.out}\npicture: {png} (6 columns per arm and guidance setting, in the order given; a row "
          "per class)")
    return 0


def parse_arm(text: str) -> dict:
    """``"model.channel_mults=[1,2,4];diffusion.p_mean=0.3"`` -> ``{"model.channel_mults": [1, 2, 4], ...}``."""
    out = {}
    for part in [x.strip() for x in text.split(";") if x.strip()]:
        key, eq, value = part.partition("=")
        if not eq or not key.strip():
            raise ValueError(f"{part!r} is not KEY=VALUE")
        try:
            out[key.strip()] = json.loads(value)
        except json.JSONDecodeError:
            out[key.strip()] = value.strip()
    return out


if __name__ == "__main__":
    sys.exit(main())
