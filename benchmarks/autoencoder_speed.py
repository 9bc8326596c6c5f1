"""The autoencoder's training step and its encode/decode in NCHW against ``channels_last``.

    python benchmarks/autoencoder_speed.py [--preset emoji-demo] [--rounds 9] [--batch 16] [--threads N]

The same autoencoder (a training preset of :mod:`kuosan.training.autoencoder`, random weights) takes training steps
(L1 reconstruction + KL, backward, AdamW) and inference passes (encode, decode), once with its weights in NCHW, as it
ran before it learned the layout (torch's convolutions, GroupNorm and SiLU), once in ``channels_last``
(``kuosan.nets.layout.prepare_model``: the fused GroupNorm-SiLU and the 3x3 / 1x1 kernels of kuosan.nets.kernels).
The variants alternate round by round and the median is kept, so a machine that slows down meanwhile slows both.
Also checks that both layouts compute the same thing (largest difference of the reconstructions). Prints a table
and writes benchmarks/results/autoencoder_speed.json.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"


def main(argv=None) -> int:
    from kuosan.runtime import openmp_defaults

    openmp_defaults()
    import torch

    from kuosan.nets.autoencoder import Autoencoder, AutoencoderConfig
    from kuosan.nets.layout import prepare_model
    from kuosan.runtime import configure_threads, tune_allocator
    from kuosan.training.autoencoder import PRESETS
    from kuosan.training.optim import adamw

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="emoji-demo", choices=sorted(PRESETS))
    ap.add_argument("--rounds", type=int, default=9)
    ap.add_argument("--steps", type=int, default=5, help="training steps a round")
    ap.add_argument("--batch", type=int, default=None, help="default: the preset's")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--out", type=Path, default=RESULTS / "autoencoder_speed.json")
    args = ap.parse_args(argv)
    tune_allocator()
    configure_threads(args.threads)
    preset = PRESETS[args.preset]
    side, channels = (64, 3) if str(preset["data"]).startswith("emoji") else (28, 1)
    if preset["data"] == "digits":
        side, channels = 8, 1
    cfg = AutoencoderConfig(in_channels=channels, resolution=side, latent_channels=preset["latent_channels"],
                            downsample=preset["downsample"], base_channels=preset["base_channels"],
                            channel_mults=tuple(preset.get("channel_mults", (1, 2, 2))),
                            num_blocks=preset.get("num_blocks", 1))
    batch = args.batch or preset["batch"]
    torch.manual_seed(0)
    nets = {"nchw": Autoencoder(cfg)}
    nets["channels_last"] = prepare_model(Autoencoder(cfg))
    nets["channels_last"].load_state_dict(nets["nchw"].state_dict())
    opts = {k: adamw(n.parameters(), lr=1e-4) for k, n in nets.items()}
    x = torch.rand(batch, channels, side, side) * 2 - 1

    def train_steps(name):
        net, opt = nets[name], opts[name]
        t0 = time.perf_counter()
        for _ in range(args.steps):
            posterior = net.encode(x)
            loss = (net.decode(posterior.sample()) - x).abs().mean() + 1e-6 * posterior.kl().mean()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        return args.steps * batch / (time.perf_counter() - t0)

    def inference(name):
        net = nets[name]
        with torch.inference_mode():
            t0 = time.perf_counter()
            net.decode(net.encode(x).mean)
            return batch / (time.perf_counter() - t0)

    with torch.inference_mode():
        a, b = (nets[k].decode(nets[k].encode(x).mean) for k in nets)
        max_diff = float((a - b).abs().max())
    rows = {k: {"train": [], "inference": []} for k in nets}
    for name in nets:  # warm-up: first calls build the kernels' plans and the allocator's pool
        train_steps(name), inference(name)
    for _ in range(args.rounds):
        for name in nets:
            rows[name]["train"].append(train_steps(name))
            rows[name]["inference"].append(inference(name))
    med = {k: {m: statistics.median(v) for m, v in r.items()} for k, r in rows.items()}
    print(f"autoencoder {args.preset}: {side}x{side}x{channels} -> {cfg.latent_channels}x{side // cfg.downsample}"
          f"x{side // cfg.downsample}, batch {batch}, {torch.get_num_threads()} threads; medians of {args.rounds} rounds")
    print(f"{'layout':>14} {'train images/s':>15} {'encode+decode images/s':>23}")
    for k, m in med.items():
        print(f"{k:>14} {m['train']:15.1f} {m['inference']:23.1f}")
    ratio = {m: med["channels_last"][m] / med["nchw"][m] for m in ("train", "inference")}
    print(f"{'ratio':>14} {ratio['train']:14.2f}x {ratio['inference']:22.2f}x   (largest difference {max_diff:.2e})")
    out = {"preset": args.preset, "batch": batch, "threads": torch.get_num_threads(), "rounds": args.rounds,
           "loadavg": list(os.getloadavg()), "torch": torch.__version__, "images_per_s": rows, "median": med,
           "ratio": ratio, "max_abs_difference": max_diff}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=1))
    print(f"results: {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
