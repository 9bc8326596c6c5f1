"""How much of each autoencoder's latent lives at high spatial frequencies, beside the images' own spectrum.

    .venv/bin/python benchmarks/latent_spectrum.py runs/demo-emoji/autoencoder runs/demo-emoji-eq/autoencoder \
        [--data emoji] [--images 963] [--out benchmarks/results/latent_spectrum.json]

Skorokhodov et al. 2025 ("Improving the Diffusability of Autoencoders", §3) observe that autoencoders trained on
reconstruction put more of the latent's energy at high frequencies than the images have, and that a diffusion
model learns such latents more slowly; the scale-equivariance term (``--equivariance_weight``) is meant to move
that energy down. For each autoencoder this encodes the test split (the posterior means, scaled as a diffusion
model sees them) and reports, from the radially averaged power spectrum of each channel (DC removed, averaged
over images and channels): the share of the power above half the Nyquist frequency, and the same for the
images (grey levels) at the latent's size, as the yardstick. Also the test split's reconstruction PSNR, and what
a latent averaged down 2x decodes to against the image averaged down 2x (PSNR), the property the term trains.
Prints a table and writes ``--out`` (JSON).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch
from torch.nn import functional as F

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"


def radial_power(x: torch.Tensor) -> torch.Tensor:
    """Mean power per integer radial frequency of [N, C, H, W] (each map's mean removed), over N and C."""
    x = x - x.mean((-2, -1), keepdim=True)
    p = torch.fft.fft2(x.double()).abs().square().mean((0, 1))
    h, w = p.shape
    fy, fx = torch.fft.fftfreq(h) * h, torch.fft.fftfreq(w) * w
    r = torch.sqrt(fy[:, None] ** 2 + fx[None, :] ** 2).round().long()
    return torch.zeros(int(r.max()) + 1, dtype=p.dtype).index_add_(0, r.flatten(), p.flatten())


def high_share(x: torch.Tensor) -> float:
    """The share of the (DC-free) power at radii above half the Nyquist frequency (side / 4)."""
    power = radial_power(x)
    cut = x.shape[-1] // 4
    return float(power[cut + 1:].sum() / power.sum())


def psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    """PSNR in dB per image, averaged (``kuosan.evaluation.metrics.psnr``, as the reconstruction report
    computes it), of images in [-1, 1] rounded to uint8 levels first, as saved images are."""
    from kuosan.data import to_uint8
    from kuosan.evaluation.metrics import psnr as per_image_psnr

    return per_image_psnr(to_uint8(a).double() / 255, to_uint8(b).double() / 255)


def measure(path: str, data: str, images: int) -> dict:
    from kuosan.data import load_dataset, to_model_range
    from kuosan.latent import load_autoencoder

    ae = load_autoencoder(path, device="cpu")
    c, side, _ = ae.image_shape
    test = load_dataset(f"{data}:test", resolution=side, channels=c, max_images=images)
    x = to_model_range(test.images)
    with torch.no_grad():
        z = torch.cat([ae.net.encode(x[i:i + 256]).mean for i in range(0, len(x), 256)])
        x_hat = torch.cat([ae.net.decode(z[i:i + 256]) for i in range(0, len(z), 256)])
        small = torch.cat([ae.net.decode(F.avg_pool2d(z[i:i + 256], 2)) for i in range(0, len(z), 256)])
    grey = F.adaptive_avg_pool2d(x.mean(1, keepdim=True), z.shape[-1])
    cfg = ae.config.get("train", {})
    return {"autoencoder": str(path), "images": len(x), "latent_shape": list(ae.latent_shape),
            "equivariance_weight": cfg.get("equivariance_weight", 0.0),
            "latent_high_share": high_share(z * ae.scale), "image_high_share_at_latent_size": high_share(grey),
            "test_psnr": psnr(x_hat, x), "half_size_psnr": psnr(small, F.avg_pool2d(x, 2))}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("autoencoders", nargs="+", help="train-autoencoder run or checkpoint directories")
    p.add_argument("--data", default="emoji")
    p.add_argument("--images", type=int, default=None, help="test images to use (default: the whole split)")
    p.add_argument("--out", default=str(RESULTS / "latent_spectrum.json"))
    args = p.parse_args(argv)
    from kuosan.errors import KuosanError

    start = time.time()
    try:
        rows = [measure(a, args.data, args.images) for a in args.autoencoders]
    except KuosanError as e:
        print(f"latent_spectrum: {e}", file=sys.stderr)
        return 2
    print(f"{'autoencoder':<44} {'w_eq':>5} {'latent >½Nyq':>13} {'image >½Nyq':>12} {'PSNR':>7} "
          f"{'½-size PSNR':>12}")
    for r in rows:
        print(f"{r['autoencoder']:<44} {r['equivariance_weight']:>5g} {r['latent_high_share']:>13.3f} "
              f"{r['image_high_share_at_latent_size']:>12.3f} {r['test_psnr']:>7.2f} {r['half_size_psnr']:>12.2f}")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({"data": f"{args.data}:test", "rows": rows,
                                          "seconds": round(time.time() - start, 1)}, indent=1) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
