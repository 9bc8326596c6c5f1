"""Write the old-format checkpoint fixtures that tests/test_records.py loads.

    .venv/bin/python scripts/make_checkpoint_fixture.py [--out tests/fixtures]

Trains a tiny class-conditional UNet on scikit-learn's 8x8 digits for 4 steps (a run directory with
config.json, metrics.jsonl and one checkpoint with its full training state) and a tiny autoencoder for
2 steps, with the code as it is when the script runs, and the run's samples for seeds 0-2 (Euler, 3 steps)
in expected-samples.npz. The committed fixtures were made by kuosan 0.1.0
before config.json and state.json became typed records (format version 1), so that every later version
must keep reading them. Seeded: the same command on the same machine writes the same tensors.
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

TINY = ["--config", "digits-tiny", "--steps", "4", "--batch", "8", "--max_images", "64", "--model.base_channels", "8",
        "--model.attn_resolutions", "", "--checkpoint_every", "4", "--log_every", "2", "--sample_every", "0",
        "--sample.steps", "2", "--keep_checkpoints", "1", "--device", "cpu"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default="tests/fixtures")
    args = ap.parse_args()
    from kuosan.cli import main as kuosan_cli

    out = Path(args.out)
    for name, argv in (("v1-run", ["train", *TINY]),
                       ("v1-autoencoder", ["train-autoencoder", "--config", "digits-tiny", "--steps", "2",
                                           "--max_images", "64", "--batch", "8"])):
        target = out / name
        shutil.rmtree(target, ignore_errors=True)
        assert kuosan_cli([*argv, "--out", str(target)]) == 0, name
        for junk in ("samples.png", "loss.png", "samples", "reconstructions.png"):  # pictures: not needed
            p = target / junk
            shutil.rmtree(p, ignore_errors=True) if p.is_dir() else p.unlink(missing_ok=True)
        if name == "v1-run":  # what the run samples, to compare with after loading it in later versions
            import numpy as np

            import kuosan

            res = kuosan.load(target, device="cpu").sample([0, 1, 2], class_labels=[0, 1, 2], sampler="euler",
                                                             steps=3)
            np.savez_compressed(target / "expected-samples.npz", images=res.images)
        size = sum(p.stat().st_size for p in target.rglob("*") if p.is_file())
        print(f"{target}: {size / 1e3:.0f} kB")


if __name__ == "__main__":
    main()
