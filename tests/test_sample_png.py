"""Every PNG `kuosan sample` writes carries how it was made (model, weights checksum, sampler, steps, seed,
class, guidance, kuosan version), and those parameters make the same image again."""

from pathlib import Path

import numpy as np
from PIL import Image

import kuosan
from kuosan.pnginfo import read_png_params
from kuosan.records import recorded_sha256

RUN = Path(__file__).parent / "fixtures" / "v1-run"


def test_sample_pngs_carry_their_parameters_and_reproduce(tmp_path):
    pipe = kuosan.load(RUN, device="cpu")
    res = pipe.sample([3, 4], class_labels=[1, 2], sampler="euler", steps=2, guidance=1.5)
    res.save(tmp_path)
    params = read_png_params((tmp_path / "seed000004.png").read_bytes())
    assert params["seed"] == 4 and params["class"] == 2 and params["sampler"] == "euler" and params["steps"] == 2
    assert params["guidance"] == 1.5 and params["kuosan"] == kuosan.__version__
    assert params["checksum"] == recorded_sha256(pipe.path, "ema.safetensors")
    again = kuosan.load(params["model"], device="cpu").sample(
        [params["seed"]], class_labels=[params["class"]], sampler=params["sampler"], steps=params["steps"],
        guidance=params["guidance"], schedule=params["schedule"])
    assert np.array_equal(again.images[0], res.images[1])
    on_disk = np.asarray(Image.open(tmp_path / "seed000004.png"))
    assert np.array_equal(on_disk, res.images[1][..., 0])  # the pixels are the image, unchanged
    assert read_png_params((tmp_path / "grid.png").read_bytes())["seeds"] == [3, 4]
