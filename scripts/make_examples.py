"""Write the example inputs the README's editing commands use: examples/{shoe,shirt,bag}.png and hole.png.

    .venv/bin/python scripts/make_examples.py

The images are the first test image of Fashion-MNIST's classes Sneaker, Shirt and Bag (Fashion-MNIST, Zalando
Research, MIT licence; see docs/data-fashion-mnist.md), 28x28 grey PNGs; hole.png is an inpainting mask
(white = regenerate) over the middle of the image.
"""

from pathlib import Path

import numpy as np
from PIL import Image

from kuosan.data import load_dataset


def main(out: Path = Path("examples")) -> None:
    out.mkdir(exist_ok=True)
    ds = load_dataset("fashion-mnist", "test")
    for name, cls in (("shoe", "Sneaker"), ("shirt", "Shirt"), ("bag", "Bag")):
        k = ds.class_names.index(cls)
        index = int((ds.labels == k).nonzero()[0])
        Image.fromarray(ds.images[index, 0].numpy()).save(out / f"{name}.png")
    mask = np.zeros((28, 28), np.uint8)
    mask[9:19, 6:22] = 255
    Image.fromarray(mask).save(out / "hole.png")
    print(f"wrote {', '.join(sorted(p.name for p in out.glob('*.png')))} in {out}/")


if __name__ == "__main__":
    main()
