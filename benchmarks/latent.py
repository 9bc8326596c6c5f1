"""Latent diffusion against pixel diffusion (Rombach et al. 2022) on this machine.

1. reconstruction: PSNR / SSIM of the autoencoder(s) on held-out images (Fashion-MNIST test, emoji test);
2. cost of one denoiser call: the same UNet settings on pixels (1x28x28, 3x64x64) and on latents (4x7x7,
   4x16x16): FLOPs by ``kuosan.nets.build.count_flops`` and measured time at batch 64, plus the decoder's
   one-off cost per image;
3. equal training time: a pixel and a latent model trained side by side (two processes started together,
   one thread each, so they share the CPU alike) for the same wall time, then N samples each, Fréchet
   distance against Fashion-MNIST test in ``fmnist-cnn`` features (``efficientnet-lite0`` when the classifier
   is not shipped), beside the real-vs-real floor at the same N.

    python benchmarks/latent.py --ae runs/ae-fashion-mnist --ae-emoji runs/ae-emoji --minutes 10 --n 500

Writes ``benchmarks/results/latent.json`` (and sample grids beside it) and prints a table.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch
from torch.utils.flop_counter import FlopCounterMode

RESULTS = Path(__file__).parent / "results"
MODEL = {"kind": "unet", "base_channels": 32, "channel_mults": [1, 2, 2], "num_blocks": 2,
         "attn_resolutions": [7, 8], "dropout": 0.1}
TRAIN = {"batch": 64, "lr": 1e-3, "warmup_steps": 200, "lr_decay": "constant", "ema_decay": 0.999,
         "log_every": 100, "sample_every": 0, "checkpoint_every": 0, "steps": 10 ** 7, "device": "cpu"}


def _config(data: str, out: Path, seconds: float, latent: bool, autoencoder: str | None):
    from kuosan.config import load_config

    return load_config(None, {**{f"model.{k}": v for k, v in MODEL.items()},
                              "diffusion.sigma_data": 1.0 if latent else 0.5,
                              **{f"train.{k}": v for k, v in TRAIN.items()},
                              "train.data": data, "train.out": str(out), "train.time_limit": seconds,
                              **({"train.autoencoder": autoencoder} if autoencoder and _loop_is_latent() else {})})


def _loop_is_latent() -> bool:
    from kuosan.config import TrainConfig

    return "autoencoder" in {f.name for f in dataclasses.fields(TrainConfig)}


def _shim_latent_loop(ae_dir: str, data: str) -> None:
    """Until loop.py carries the latent patch: hand the loop the LatentDataset through the names it imports."""
    import kuosan.data
    import kuosan.training.loop as loop
    from kuosan.latent import encode_dataset

    encoded = encode_dataset(ae_dir, data, "train")
    kuosan.data.load_dataset = lambda *a, **k: encoded
    to_model_range = kuosan.data.to_model_range
    kuosan.data.to_model_range = lambda x: x if x.is_floating_point() else to_model_range(x)
    run_config = loop._run_config
    loop._run_config = lambda cfg, spec, d, transfer: run_config(cfg, spec, d, transfer).replace(
        autoencoder=d.autoencoder)


def train_one(data: str, out: str, seconds: float, autoencoder: str | None) -> None:
    """One training run (called in a child process)."""
    from kuosan.training.loop import train

    torch.set_num_threads(1)
    if autoencoder and not _loop_is_latent():
        _shim_latent_loop(autoencoder, data)
    train(_config(data, Path(out), seconds, autoencoder is not None, autoencoder), progress=False)


# --- 1. reconstruction ----------------------------------------------------------------------------

def reconstruction(ae_dir: str, spec: str) -> dict:
    from kuosan.data import load_dataset
    from kuosan.latent import load_autoencoder, reconstruction_metrics

    ae = load_autoencoder(ae_dir, device="cpu")
    c, res, _ = ae.image_shape
    data = load_dataset(spec, root=ae.config["train"].get("data_root"), resolution=res, channels=c)
    pixels, numbers = c * res * res, int(np.prod(ae.latent_shape))
    return {**reconstruction_metrics(ae, data.images), "data": data.name, "image_shape": list(ae.image_shape),
            "latent_shape": list(ae.latent_shape), "fewer_numbers": pixels / numbers,
            "training_steps": json.loads((ae.path / "state.json").read_text())["step"],
            "latent_scale": ae.scale, "losses": ae.config.get("losses", {}), "autoencoder": str(ae.path)}


def strips(ae_dir: str, spec: str, add: str, subtract: str, key: str) -> dict:
    """Interpolation between two test images and class arithmetic, as PNG strips beside the results."""
    from kuosan import latent
    from kuosan.data import load_dataset

    ae = latent.load_autoencoder(ae_dir, device="cpu")
    c, res, _ = ae.image_shape
    test = load_dataset(spec, "test", resolution=res, channels=c)
    train = latent.encode_dataset(ae, spec, "train")
    a, b = train.class_names.index(add), train.class_names.index(subtract)
    idx = (test.labels == b).nonzero().flatten()[:4]
    paths = {"interpolation": latent.save_strip(latent.interpolate(ae, test.images[0], test.images[1], 8),
                                                RESULTS / f"latent_{key}_interpolation.png"),
             "arithmetic": latent.save_strip(latent.class_arithmetic(ae, test.images[idx], latent.class_means(train),
                                                                     a, b), RESULTS / f"latent_{key}_arithmetic.png")}
    return {k: str(v.relative_to(RESULTS.parent.parent)) if v.is_relative_to(RESULTS.parent.parent) else str(v)
            for k, v in paths.items()} | {"arithmetic_classes": f"+ {add} - {subtract}"}


# --- 2. cost of one denoiser call -----------------------------------------------------------------

def _time_forward(net, shape, batch=64, reps=5) -> float:
    x, c = torch.randn(batch, *shape), torch.zeros(batch)
    labels = torch.zeros(batch, dtype=torch.long)
    with torch.no_grad():
        net(x, c, labels)
        times = []
        for _ in range(reps):
            t0 = time.perf_counter()
            net(x, c, labels)
            times.append(time.perf_counter() - t0)
    return float(np.median(times))


def denoiser_cost(ae_dir: str) -> dict:
    from kuosan.config import load_config
    from kuosan.latent import load_autoencoder
    from kuosan.model import network_spec
    from kuosan.nets.build import build_network, count_flops

    torch.set_num_threads(1)
    ae = load_autoencoder(ae_dir, device="cpu")
    cfg = load_config(None, {f"model.{k}": v for k, v in MODEL.items()})
    out = {}
    for name, shape in (("pixel", ae.image_shape), ("latent", ae.latent_shape)):
        spec = network_spec(cfg, channels=shape[0], resolution=shape[1], num_classes=10)
        net = build_network(spec["kind"], **spec["fields"]).eval()
        out[name] = {"shape": list(shape), "gflop_per_image": count_flops(net, shape[0], shape[1], 1, 10) / 1e9,
                     "ms_per_call_batch64": 1000 * _time_forward(net, shape)}
    x = torch.randn(64, *ae.latent_shape)
    with torch.no_grad(), FlopCounterMode(display=False) as fc:
        ae.net.decode(x[:1])
    t0 = time.perf_counter()
    ae.decode(x)
    out["decoder"] = {"gflop_per_image": fc.get_total_flops() / 1e9, "ms_batch64": 1000 * (time.perf_counter() - t0)}
    out["flop_ratio_pixel_over_latent"] = out["pixel"]["gflop_per_image"] / out["latent"]["gflop_per_image"]
    out["time_ratio_pixel_over_latent"] = out["pixel"]["ms_per_call_batch64"] / out["latent"]["ms_per_call_batch64"]
    out["threads"] = 1
    return out


# --- 3. equal training time -----------------------------------------------------------------------

def _sample(run: Path, n: int, steps: int) -> tuple[np.ndarray, float]:
    """uint8 NCHW images from a run (latent runs decoded) and the seconds it took."""
    import kuosan
    from kuosan.latent import autoencoder_for_checkpoint
    from kuosan.config import SampleConfig
    from kuosan.sampling import generate

    pipe = kuosan.load(run, device="cpu")
    t0 = time.perf_counter()
    if getattr(pipe, "autoencoder", None) is not None or "autoencoder" not in pipe.config:
        images = pipe.sample(n, sampler="heun", steps=steps, batch_size=100).images
    else:                                              # pipeline.py without the latent patch: decode here
        ae = autoencoder_for_checkpoint(pipe.record, pipe.path, device="cpu")
        x = generate(pipe.precond, shape=pipe.image_shape, seeds=range(n), class_labels=[k % 10 for k in range(n)],
                     sample=SampleConfig("heun", steps), batch_size=100)
        images = ae.decode_nhwc(x)
    return images.transpose(0, 3, 1, 2).copy(), time.perf_counter() - t0


def train_side_by_side(ae_dir: str, minutes: float, work: Path) -> dict:
    """Encode the training set (once, cached), then train the pixel and the latent model at the same time."""
    from kuosan.latent import encode_dataset

    t0 = time.perf_counter()
    encode_dataset(ae_dir, "fashion-mnist", "train")   # fill the cache first: a one-off cost, reported apart
    encode_seconds = time.perf_counter() - t0
    runs = {"pixel": (work / "pixel", None), "latent": (work / "latent", str(ae_dir))}
    procs = {}
    for name, (run, ae) in runs.items():
        job = json.dumps(["fashion-mnist", str(run), minutes * 60, ae])
        procs[name] = subprocess.Popen([sys.executable, __file__, "--_train", job],
                                       stdout=open(work / f"{name}.log", "w"), stderr=subprocess.STDOUT)
    for name, p in procs.items():
        if p.wait() != 0:
            raise SystemExit(f"{name} training failed; see {work / (name + '.log')}")
    return {"seconds_each": minutes * 60, "encode_train_set_seconds": encode_seconds,
            "runs": {name: str(run) for name, (run, _) in runs.items()}}


def score_runs(runs: dict, n: int, steps: int) -> dict:
    """N samples from each run, Fréchet distance to Fashion-MNIST test, and the real-vs-real floor."""
    from kuosan.data import load_dataset
    from kuosan.evaluation.classifier import WEIGHTS_DIR
    from kuosan.evaluation.features import get_extractor
    from kuosan.evaluation.metrics import frechet_distance_features
    from kuosan.evaluation.reference import reference_features
    from kuosan.images import make_grid, save_png
    from kuosan.checkpoint import resolve_checkpoint

    torch.set_num_threads(1)
    name = "fmnist-cnn" if (WEIGHTS_DIR / "fmnist-cnn.safetensors").is_file() else "efficientnet-lite0"
    ext = get_extractor(name)
    ref, _ = reference_features("fashion-mnist:test", ext, resolution=28, channels=1)
    real = load_dataset("fashion-mnist", "train", max_images=n).images
    out = {"n": n, "sampler": f"heun, {steps} steps ({2 * steps - 1} NFE)", "extractor": name,
           "reference": "fashion-mnist:test",
           "fd_real_train_vs_test": frechet_distance_features(ext(real), ref.features)}
    for key, run in runs.items():
        run = Path(run)
        state = json.loads((resolve_checkpoint(run) / "state.json").read_text())
        rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
        images, seconds = _sample(run, n, steps)
        save_png(make_grid(images[:100].transpose(0, 2, 3, 1), 10), RESULTS / f"latent_{key}_samples.png", scale=2)
        out[key] = {"steps": state["step"], "images_seen": state["step"] * TRAIN["batch"],
                    "train_seconds": state["elapsed"], "last_logged_loss": rows[-1]["loss"] if rows else None,
                    "fd": frechet_distance_features(ext(torch.from_numpy(images)), ref.features),
                    "sampling_images_per_s": n / seconds}
    return out


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--_train"]:                       # a child process: one training run
        train_one(*json.loads(argv[1]))
        return 0
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--ae", default=None, help="Fashion-MNIST autoencoder (train-autoencoder run)")
    p.add_argument("--ae-emoji", default=None, help="emoji autoencoder, for its reconstruction and cost")
    p.add_argument("--minutes", type=float, default=10.0, help="training wall time of each model (side by side)")
    p.add_argument("--n", type=int, default=500, help="samples per model for the Fréchet distance")
    p.add_argument("--sample-steps", type=int, default=10)
    p.add_argument("--skip-train", action="store_true", help="only sections 1 and 2")
    p.add_argument("--work", default="/tmp/kuosan-latent-bench", help="where the two training runs go")
    p.add_argument("--merge", action="store_true", help="update the sections computed now in an existing results file")
    args = p.parse_args(argv)
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / "latent.json"
    results = json.loads(path.read_text()) if args.merge and path.is_file() else {}
    results.setdefault("reconstruction", {})
    results.setdefault("denoiser_cost", {})
    results["machine"] = {"cpus": os.cpu_count(), "load_average_at_start": os.getloadavg(), "torch": torch.__version__}
    results.setdefault("strips", {})
    for key, ae, spec, add, sub in (("fashion-mnist", args.ae, "fashion-mnist", "Ankle boot", "Sneaker"),
                                    ("emoji", args.ae_emoji, "emoji", "animals", "faces")):
        if ae:
            results["reconstruction"][key] = reconstruction(ae, f"{spec}:test")
            results["denoiser_cost"][key] = denoiser_cost(ae)
            results["strips"][key] = strips(ae, spec, add, sub, key)
    if not args.skip_train:
        if not args.ae:
            raise SystemExit("--ae (the Fashion-MNIST autoencoder) is needed for the equal-time comparison")
        work = Path(args.work)
        if work.exists():
            import shutil

            shutil.rmtree(work)
        work.mkdir(parents=True)
        trained = train_side_by_side(args.ae, args.minutes, work)
        results["equal_time"] = {**trained, **score_runs(trained["runs"], args.n, args.sample_steps)}
    results["machine"]["load_average_at_end"] = os.getloadavg()
    path.write_text(json.dumps(results, indent=2))
    _print(results)
    return 0


def _print(r: dict) -> None:
    print(f"{'data':<14}{'PSNR dB':>9}{'SSIM':>8}  latent      fewer numbers")
    for k, v in r["reconstruction"].items():
        print(f"{k:<14}{v['psnr']:>9.2f}{v['ssim']:>8.4f}  {'x'.join(map(str, v['latent_shape'])):<12}"
              f"{v['fewer_numbers']:.0f}x  ({v['images']} held-out images)")
    print(f"\n{'denoiser call':<14}{'pixel GFLOP':>12}{'latent GFLOP':>13}{'ratio':>7}{'pixel ms':>10}{'latent ms':>10}"
          f"{'ratio':>7}   (batch 64, 1 thread; decoder once: GFLOP/image)")
    for k, v in r["denoiser_cost"].items():
        print(f"{k:<14}{v['pixel']['gflop_per_image']:>12.3f}{v['latent']['gflop_per_image']:>13.4f}"
              f"{v['flop_ratio_pixel_over_latent']:>7.1f}{v['pixel']['ms_per_call_batch64']:>10.0f}"
              f"{v['latent']['ms_per_call_batch64']:>10.0f}{v['time_ratio_pixel_over_latent']:>7.1f}"
              f"   {v['decoder']['gflop_per_image']:.3f}")
    if "equal_time" in r:
        e = r["equal_time"]
        print(f"\nequal training time ({e['seconds_each']:.0f} s each, side by side), {e['n']} samples, "
              f"{e['sampler']}, FD in {e['extractor']} features vs {e['reference']} "
              f"(real train images: {e['fd_real_train_vs_test']:.2f})")
        for k in ("pixel", "latent"):
            v = e[k]
            print(f"  {k:<7} steps {v['steps']:>6}  FD {v['fd']:>8.2f}  "
                  f"sampling {v['sampling_images_per_s']:.1f} images/s")


if __name__ == "__main__":
    sys.exit(main())
