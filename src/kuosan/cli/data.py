"""``kuosan data``: load a data set spec and describe it (and optionally write a grid of it)."""

from __future__ import annotations

import argparse

EXAMPLES = """examples:
  kuosan data fashion-mnist:test
  kuosan data mnist --grid digits.png
  kuosan data path/to/folder --grid real.png       one subfolder per class
"""


def register(sub) -> None:
    p = sub.add_parser("data", help="load a data set spec and describe it", epilog=EXAMPLES,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("spec", help="fashion-mnist[:train|test], mnist[:train|test], digits, emoji, a folder, an .npz")
    p.add_argument("--root", default=None, help="directory of the data set's files")
    p.add_argument("--grid", default=None, help="write a PNG grid of the first 64 images here")
    p.set_defaults(run=run)


def run(args) -> int:
    from kuosan.data import load_dataset
    from kuosan.errors import KuosanError
    from kuosan.images import make_grid, save_png
    from kuosan.validation import output_file

    if not args.spec.strip():
        raise KuosanError("the data set spec is empty; give fashion-mnist, mnist, digits, a folder or an .npz file")
    if args.grid is not None:
        output_file(args.grid, "--grid")
    ds = load_dataset(args.spec, root=args.root)
    counts = ds.labels.bincount(minlength=ds.num_classes).tolist()
    print(f"{ds.name}: {len(ds)} images, {ds.channels}x{ds.resolution}x{ds.resolution}, "
          f"{ds.num_classes} classes")
    for name, c in zip(ds.class_names, counts):
        print(f"  {name}: {c}")
    if args.grid:
        save_png(make_grid(ds.images[:64].permute(0, 2, 3, 1).numpy(), 8), args.grid, scale=2)
        print(f"grid: {args.grid}")
    return 0
