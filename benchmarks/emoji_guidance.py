"""Classifier-free guidance for the colour demo's latent model, by measurement.

    .venv/bin/python benchmarks/emoji_guidance.py [--run runs/demo-emoji/ldm] [--guidance 1,2,3,4,6] [--per-class 30]

A setting is a guidance weight, or ``W@R``: weight W with guidance rescale R (Lin et al. 2024, eq. 15-16: the guided
prediction's spread pulled back to the conditional one's by the share R), e.g. ``--guidance 3,9,9@0.7``.

Samples the same seeds (class-balanced, the demo's sampler: DPM-Solver++(2M), 16 steps) at each guidance weight
(Ho & Salimans 2022: D = D_uncond + w (D_cond - D_uncond)) and scores them against the test split: the share the
shipped emoji classifier puts in the class asked for, Fréchet distance in its features and in EfficientNet-Lite0's,
beside the real floor (as many class-balanced training images), and how alike the images of a class are (the
mean RMS pixel distance between two of them, in [0, 1]: lower is more alike). Writes benchmarks/results/emoji_guidance.json and
benchmarks/results/emoji_guidance.png (the first samples of each class at each weight).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--run", default="runs/demo-emoji/ldm", help="a latent model trained on emoji (the demo's)")
    p.add_argument("--guidance", default="1,2,3,4,6", help="guidance weights (1 = none), W@R with rescale R")
    p.add_argument("--per-class", type=int, default=30, help="samples per class at each weight")
    p.add_argument("--out", default=str(RESULTS / "emoji_guidance.json"))
    args = p.parse_args(argv)

    from kuosan.runtime import openmp_defaults

    openmp_defaults()
    import torch

    import kuosan
    from kuosan.data import load_dataset
    from kuosan.data.dataset import take_stratified
    from kuosan.data.emoji import CLASS_NAMES, cycle_groups
    from kuosan.images import make_grid

    pipe = kuosan.load(args.run, device="cpu")
    # sample i of class i mod 9; a model of finer labels (the demo's, emoji:sub) draws it from that class's
    # subcategories, and every model is scored by class
    k = len(CLASS_NAMES)
    n = k * args.per_class
    labels, groups = cycle_groups(pipe.class_names, n)
    test, train = load_dataset("emoji:test"), load_dataset("emoji:train")
    picked = take_stratified(train.labels.numpy(), n)
    floor = train.images[torch.from_numpy(picked)]
    score = scorer(test)
    result = {"run": args.run, "n": n, "sampler": {"sampler": pipe.sample_config.sampler, "steps": pipe.sample_config.steps},
              "reference": f"emoji:test ({len(test)} images)", "load_average_start": list(os.getloadavg()),
              "floor": {**score(floor, None), "conditional_accuracy": score.floor_accuracy},
              "rows": []}
    blocks = []
    result["floor"]["within_class_rms"] = within_class_rms(floor.numpy().transpose(0, 2, 3, 1),
                                                           train.labels.numpy()[picked])
    try:
        settings = [parse_setting(x) for x in args.guidance.split(",")]
    except ValueError as e:
        print(f"--guidance: {e}", file=sys.stderr)
        return 2
    print(f"{'guidance':>8} {'rescale':>7} {'accuracy':>9} {'FD emoji-cnn':>13} {'FD EfficientNet':>16} "
          f"{'alike':>6} {'seconds':>8}")
    for w, r in settings:
        t0 = time.time()
        res = pipe.sample(list(range(n)), labels, guidance=w, guidance_rescale=r, batch_size=90)
        images = torch.from_numpy(np.ascontiguousarray(res.images.transpose(0, 3, 1, 2)))
        row = {"guidance": w, "guidance_rescale": r, "seconds": round(time.time() - t0, 1), "nfe": res.nfe,
               **score(images, groups), "within_class_rms": within_class_rms(res.images, groups)}
        result["rows"].append(row)
        print(f"{w:8g} {r:7g} {row['conditional_accuracy']:9.3f} {row['fd_emoji-cnn']:13.2f} "
              f"{row['fd_efficientnet-lite0']:16.1f} {row['within_class_rms']:6.3f} {row['seconds']:8.1f}", flush=True)
        first = np.concatenate([res.images[c::k][:4] for c in range(k)])  # 4 of each class, a row per class
        blocks.append(make_grid(first, nrow=4, value=255))
    f = result["floor"]
    print(f"{'real':>8} {'':>7} {f['conditional_accuracy']:9.3f} {f['fd_emoji-cnn']:13.2f} "
          f"{f['fd_efficientnet-lite0']:16.1f} {f['within_class_rms']:6.3f}")
    png = save_results(result, blocks, args.out, gap=12)
    print(f"results: {args.out}\npicture: {png} (columns of 4 per weight, in the order given; a row per class)")
    return 0


def parse_setting(text: str) -> tuple[float, float]:
    """``W`` or ``W@R`` as (weight, rescale)."""
    w, _, r = text.strip().partition("@")
    try:
        w, r = float(w), float(r or 0)
    except ValueError:
        raise ValueError(f"{text!r} is not a weight W or W@R (R: the guidance rescale)") from None
    if not 0 <= r <= 1:
        raise ValueError(f"{text!r}: the rescale must be between 0 and 1")
    return w, r


def within_class_rms(images: np.ndarray, labels) -> float:
    """The mean RMS distance between two images of one class ([N, H, W, C] uint8, scaled to [0, 1]), averaged over
    the classes: how different the images of a class are from one another."""
    flat, labels = images.reshape(len(images), -1).astype(np.float32) / 255, np.asarray(labels)
    out = []
    for c in np.unique(labels):
        x = flat[labels == c]
        sq = (x * x).sum(1)
        d = np.sqrt(np.maximum(sq[:, None] + sq[None] - 2 * x @ x.T, 0) / x.shape[1])
        out.append(d[~np.eye(len(x), dtype=bool)].mean())
    return float(np.mean(out))


def scorer(test):
    """``score(images, labels)`` against the test split ``test``: ``fd_emoji-cnn`` and ``fd_efficientnet-lite0``
    (Fréchet distance in those features), and with ``labels`` ``conditional_accuracy``, the share the shipped
    emoji classifier puts in the class asked for. ``score.floor_accuracy``: that classifier on ``test``."""
    from kuosan.evaluation.classifier import load_classifier, predict
    from kuosan.evaluation.features import get_extractor
    from kuosan.evaluation.metrics import frechet_distance_features

    clf, _ = load_classifier("emoji-cnn")
    extractors = {name: get_extractor(name, device="cpu") for name in ("emoji-cnn", "efficientnet-lite0")}
    refs = {name: ext(test.images) for name, ext in extractors.items()}

    def score(images, labels) -> dict:
        out = {f"fd_{name}": frechet_distance_features(ext(images), refs[name]) for name, ext in extractors.items()}
        if labels is not None:
            out["conditional_accuracy"] = float((predict(clf, images).argmax(1) == np.asarray(labels)).mean())
        return out

    score.floor_accuracy = float((predict(clf, test.images).argmax(1) == test.labels.numpy()).mean())
    return score


def save_results(result: dict, blocks: list, out: str, gap: int) -> Path:
    """``result`` as the JSON file ``out``; ``blocks`` (grids of one setting each) side by side, ``gap`` white
    pixels apart, as the PNG beside it, which is returned."""
    from PIL import Image

    RESULTS.mkdir(parents=True, exist_ok=True)
    Path(out).write_text(json.dumps(result, indent=2))
    space = np.full((blocks[0].shape[0], gap, 3), 255, np.uint8)
    png = Path(out).with_suffix(".png")
    Image.fromarray(np.concatenate([x for b in blocks for x in (b, space)][:-1], axis=1)).save(png)
    return png


if __name__ == "__main__":
    sys.exit(main())
