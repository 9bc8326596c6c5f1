"""``kuosan data``: load a data set spec and describe it (and optionally write a grid of it)."""

from __future__ import annotations

import argparse

EXAMPLES = """examples:
  kuosan data fashion-mnist:test
  kuosan data mnist --grid digits.png
  kuosan data emoji                                 colour, 9 classes (faces, animals, landscapes ...)
  kuosan data emoji:fine                            the same images, a class per emoji ("dog face")
  kuosan data emoji:sub                             the same images, a class per subcategory ("sky & weather")
  kuosan data path/to/folder --grid real.png       one subfolder per class
"""


SHOW_CLASSES = 20      # a set with more than twice this many classes lists its first ones


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
    shown = SHOW_CLASSES if ds.num_classes > 2 * SHOW_CLASSES else ds.num_classes
    for name, c in zip(ds.class_names[:shown], counts):
        print(f"  {name}: {c}")
    if shown < ds.num_classes:
        print(f"  ... and {ds.num_classes - shown} more (images per class: {min(counts)} to {max(counts)})")
    if args.grid:
        save_png(make_grid(ds.images[:64].permute(0, 2, 3, 1).numpy(), 8), args.grid, scale=2)
        print(f"grid: {args.grid}")
    return 0
