"""Write docs/emoji-grid.png: real images of the `emoji` data set, one row per class, the styles in turn.

Column j of a row shows the class's emoji at evenly spaced places in catalogue order, in style j mod 5
(twitter, google, fluent, openmoji, gemojione), where that style has it. Needs the sources installed
(`bash scripts/install_emoji_data.sh`). Usage: python scripts/make_emoji_grid.py [OUT.png] [--cols 15]
"""

from __future__ import annotations

import argparse

import numpy as np
from PIL import Image, ImageDraw

from kuosan.data import load_dataset

CELL, PAD, LABEL_W = 64, 3, 96


def pick(ds, label: int, cols: int) -> list[int]:
    """Indices of ``cols`` images of class ``label``: spread over the class, style ``j % n_styles`` in column j."""
    n_styles = len(ds.style_names)
    rows = np.flatnonzero(ds.labels.numpy() == label)
    styles = ds.styles.numpy()[rows]
    chosen = []
    for j in range(cols):
        of_style = rows[styles == j % n_styles] if (styles == j % n_styles).any() else rows
        chosen.append(int(of_style[(j * len(of_style)) // cols]))
    return chosen


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out", nargs="?", default="docs/emoji-grid.png")
    ap.add_argument("--cols", type=int, default=15)
    args = ap.parse_args()
    ds = load_dataset("emoji:all")
    grid = Image.new("RGB", (LABEL_W + args.cols * (CELL + PAD) + PAD, ds.num_classes * (CELL + PAD) + PAD),
                     (200, 200, 200))
    draw = ImageDraw.Draw(grid)
    for r, name in enumerate(ds.class_names):
        y = PAD + r * (CELL + PAD)
        draw.text((8, y + CELL // 2 - 6), name, fill=(0, 0, 0))
        for j, i in enumerate(pick(ds, r, args.cols)):
            grid.paste(Image.fromarray(ds.images[i].permute(1, 2, 0).numpy()), (LABEL_W + PAD + j * (CELL + PAD), y))
    grid.save(args.out, optimize=True)
    print(f"{args.out}: {ds.num_classes} rows x {args.cols} images of {len(ds)}")


if __name__ == "__main__":
    main()
