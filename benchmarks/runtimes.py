"""kuosan's denoiser on four CPU runtimes, side by side: kuosan eager with its C++ kernels, torch eager without
them, ONNX Runtime and OpenVINO (float32, and bfloat16 where the runtime and the CPU have it).

    .venv/bin/python benchmarks/runtimes.py [--rounds 5] [--threads 2] [--batches 1,64] [--trained RUN]

The network is the demo's (src/kuosan/configs/demo.json: UNet, base 32, mults 1,2,2, one block a level,
attention at 7×7, 28×28×1, ten classes), untrained, with its zero-initialised layers given small random
weights so that its output is not zero. Each contender computes the whole denoiser D(x; σ) (the
preconditioning in float32 torch around the network) on the same inputs; they are timed alternately in
rounds (medians), the torch-without-kernels one in a worker process started with KUOSAN_KERNELS=0 and
KUOSAN_CONV_KERNELS=0 (the kernels are chosen when the library loads) that waits while the others run.
Reported: images per second per network evaluation at each batch, milliseconds a call at batch 1, and the
largest |D − D_eager| over the batch-64 inputs. Then ``--trained`` (default: the test fixture, a tiny
conditional model) is sampled with every float32 runtime and compared with eager torch's images in uint8.

Needs:  pip install onnx onnxscript onnxruntime openvino        Writes benchmarks/results/runtimes.json
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
NO_KERNELS = {"KUOSAN_KERNELS": "0", "KUOSAN_CONV_KERNELS": "0"}


def demo_precond():
    """The demo's denoiser, untrained, its zero-initialised layers given N(0, 0.02²) weights; channels_last."""
    import torch

    from kuosan.config import load_config
    from kuosan.model import build_model, network_spec
    from kuosan.nets.layout import prepare_model

    cfg = load_config(ROOT / "src" / "kuosan" / "configs" / "demo.json")
    torch.manual_seed(0)
    precond = build_model(network_spec(cfg, channels=1, resolution=28, num_classes=10), cfg.diffusion)
    with torch.no_grad():
        for p in precond.parameters():
            if not p.any():
                p.normal_(0, 0.02)
    return prepare_model(precond.eval().requires_grad_(False))


def inputs(batch: int):
    """x = x0 + σ·n at σ spread over EDM's range, a class each (fixed seed)."""
    import torch

    g = torch.Generator().manual_seed(batch)
    sigma = torch.logspace(-2.5, 1.9, batch) if batch > 1 else torch.tensor([1.0])
    x = (torch.rand(batch, 1, 28, 28, generator=g) * 2 - 1) + sigma.view(-1, 1, 1, 1) * torch.randn(
        batch, 1, 28, 28, generator=g)
    return x, sigma, torch.arange(batch) % 10


def _call(den, bf16: bool):
    """One denoiser call on prepared inputs, under inference mode (and bfloat16 autocast for eager bf16)."""
    import torch

    def run(x, sigma, labels):
        with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            return den(x, sigma, labels).float()
    return run


def _worker(conn, state: dict, threads: int) -> None:
    """The torch-without-kernels contender: KUOSAN_KERNELS=0 was in the environment when it started."""
    import torch

    torch.set_num_threads(threads)
    precond = demo_precond()
    precond.load_state_dict(state)
    calls = {False: _call(precond, False), True: _call(precond, True)}
    while (msg := conn.recv()) is not None:
        bf16, batch, repeat = msg
        args = inputs(batch)
        t0 = time.perf_counter()
        for _ in range(repeat):
            out = calls[bf16](*args)
        conn.send((time.perf_counter() - t0, out.numpy() if batch > 1 else None))


def start_worker(state: dict, threads: int):
    ctx = mp.get_context("spawn")  # a fresh interpreter: the environment decides the kernels when it loads
    parent, child = ctx.Pipe()
    saved = {k: os.environ.get(k) for k in NO_KERNELS}
    os.environ.update(NO_KERNELS)
    try:
        proc = ctx.Process(target=_worker, args=(child, state, threads), daemon=True)
        proc.start()
    finally:
        for k, v in saved.items():
            os.environ.pop(k) if v is None else os.environ.__setitem__(k, v)
    return proc, parent


def contenders(precond, onnx_dir: Path, threads: int, bf16_cpu: bool) -> dict:
    """name -> callable(x, sigma, labels) -> D, or a string saying why it does not run here."""
    from kuosan.interop.onnx import BatchDispatch, OnnxDenoiser

    out = {"kuosan eager, kernels": _call(precond, False)}
    try:  # what Pipeline.sample and `kuosan sample` run by default on a CPU (backend "auto")
        auto = BatchDispatch(precond, lambda: OnnxDenoiser(onnx_dir, "onnxruntime", threads, precond=precond))
        auto.prepare()
        out["kuosan default (auto)"] = _call(auto, False)
    except Exception as e:  # noqa: BLE001
        out["kuosan default (auto)"] = str(e).splitlines()[0]
    for backend in ("onnxruntime", "openvino"):
        for precision in ("float32", "bfloat16"):
            name = f"{backend} {precision}"
            try:
                den = OnnxDenoiser(onnx_dir, backend, threads, precond=precond, precision=precision)
                out[name] = _call(den, False)
            except Exception as e:  # noqa: BLE001 - a runtime that lacks a precision: say so in the table
                out[name] = str(e).splitlines()[0]
    if bf16_cpu:
        out["kuosan eager, kernels, bfloat16"] = _call(precond, True)
    return out


def _remote(conn, bf16: bool):
    def run(batch, repeat):
        conn.send((bf16, batch, repeat))
        return conn.recv()
    return run


def time_round(fns: dict, remote: dict, batch: int, repeat: int, times: dict, outs: dict) -> None:
    """Every contender once (``repeat`` calls), in turn."""
    args = inputs(batch)
    for name, f in fns.items():
        if isinstance(f, str):
            continue
        t0 = time.perf_counter()
        for _ in range(repeat):
            y = f(*args)
        times[name].append((time.perf_counter() - t0) / repeat)
        outs.setdefault(name, y)
    for name, f in remote.items():
        seconds, y = f(batch, repeat)
        times[name].append(seconds / repeat)
        if y is not None:
            import torch

            outs.setdefault(name, torch.from_numpy(y))


def measure(fns: dict, remote: dict, batches: list[int], rounds: int) -> dict:
    results = {}
    for batch in batches:
        repeat = 10 if batch <= 2 else 4 if batch <= 8 else 1
        names = [n for n, f in fns.items() if not isinstance(f, str)] + list(remote)
        times, outs = {n: [] for n in names}, {}
        time_round(fns, remote, batch, repeat, {n: [] for n in names}, {})  # warm-up
        for _ in range(rounds):
            time_round(fns, remote, batch, repeat, times, outs)
        ref = outs.get("kuosan eager, kernels")
        for n in names:
            med = statistics.median(times[n])
            row = results.setdefault(n, {})
            row[f"batch{batch}_median_s"], row[f"batch{batch}_all_s"] = med, [round(t, 5) for t in times[n]]
            row[f"batch{batch}_images_per_s"] = batch / med
            if batch > 1 and ref is not None:
                row["max_abs_diff_vs_eager"] = float((outs[n] - ref).abs().max())
                row["max_abs_eager"] = float(ref.abs().max())
    return results


def same_images(run_dir: Path, threads: int, cache: Path) -> dict:
    """The trained model sampled by eager torch and by each float32 runtime: uint8 pixels that differ."""
    import kuosan
    from kuosan.interop.onnx import runtime_denoiser
    from kuosan.sampling import generate

    pipe = kuosan.load(run_dir, device="cpu")
    seeds = list(range(16))
    labels = pipe.labels_for(seeds, None)
    kw = dict(shape=pipe.image_shape, seeds=seeds, class_labels=labels, null_label=pipe.num_classes or None)
    eager = pipe.to_images(generate(pipe.precond, pipe.sample_config, **kw)).astype(int)
    out = {"run": str(run_dir), "checkpoint": pipe.path.name, "data": pipe.dataset, "images": len(seeds),
           "sampler": pipe.sample_config.sampler, "steps": pipe.sample_config.steps}
    for backend in ("onnxruntime", "openvino"):
        den = runtime_denoiser(pipe, backend, threads, cache_dir=cache)
        imgs = pipe.to_images(generate(pipe.precond, pipe.sample_config, denoiser=den, **kw)).astype(int)
        diff = abs(imgs - eager)
        out[backend] = {"max_uint8_diff": int(diff.max()), "pixels_differing": int((diff > 0).sum()),
                        "pixels": int(diff.size)}
    return out


def table(results: dict, batches: list[int], skipped: dict) -> str:
    """Images/s per network evaluation, and as a multiple of eager kuosan's in the same rounds."""
    eager = results["kuosan eager, kernels"]
    head = (["runtime"] + [f"img/s @{b} (× eager)" for b in batches] + ["ms @1" if 1 in batches else "",
            "max|ΔD| vs eager"])
    lines = [" | ".join(head), " | ".join("---" for _ in head)]
    for name, r in results.items():
        rates = [(r[f"batch{b}_images_per_s"], eager[f"batch{b}_images_per_s"]) for b in batches]
        cells = [name] + [f"{ours:.1f} ({ours / theirs:.2f}×)" for ours, theirs in rates]
        cells.append(f"{1000 * r['batch1_median_s']:.2f}" if 1 in batches else "")
        cells.append(f"{r['max_abs_diff_vs_eager']:.2e}" if "max_abs_diff_vs_eager" in r else "")
        lines.append(" | ".join(cells))
    lines += [f"{name} | not run: {why}" for name, why in skipped.items()]
    return "\n".join(lines)


def main(argv=None) -> int:
    from kuosan.runtime import openmp_defaults

    openmp_defaults()  # before torch loads OpenMP; the same for every contender and the worker
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=5, help="timed rounds per batch (medians)")
    ap.add_argument("--threads", type=int, default=2, help="intra-op threads of every runtime")
    ap.add_argument("--batches", default="1,2,4,8,64", help="batch sizes, a comma list")
    ap.add_argument("--trained", default=str(ROOT / "tests" / "fixtures" / "v1-run"),
                    help="a trained run to sample with every runtime for the same-images check ('' to skip)")
    ap.add_argument("--out", default=str(HERE / "results" / "runtimes.json"))
    args = ap.parse_args(argv)
    import torch

    from kuosan.interop.onnx import export_onnx

    torch.set_num_threads(args.threads)
    batches = [int(b) for b in args.batches.split(",")]
    precond = demo_precond()
    bf16_cpu = torch.ops.mkldnn._is_mkldnn_bf16_supported()
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        export_onnx(precond, Path(tmp) / "demo", image_shape=(1, 28, 28), num_classes=10)
        export_s = time.perf_counter() - t0
        fns = contenders(precond, Path(tmp) / "demo", args.threads, bf16_cpu)
        proc, conn = start_worker(precond.state_dict(), args.threads)
        remote = {"torch eager, no kernels": _remote(conn, False)}
        if bf16_cpu:
            remote["torch eager, no kernels, bfloat16"] = _remote(conn, True)
        try:
            results = measure(fns, remote, batches, args.rounds)
        finally:
            conn.send(None)
            proc.join(timeout=30)
        images = same_images(Path(args.trained), args.threads, Path(tmp) / "cache") if args.trained else None
    skipped = {n: f for n, f in fns.items() if isinstance(f, str)}
    report = {"what": "kuosan's denoiser D(x; σ) (demo network, 28x28x1, 10 classes) per runtime, CPU",
              "threads": args.threads, "rounds": args.rounds, "load_average": os.getloadavg(), "cpu": _cpu(),
              "cpu_bf16": bool(bf16_cpu), "export_s": export_s, "results": results, "not_run": skipped,
              "same_images": images, "versions": _versions()}
    print(table(results, batches, skipped))
    print(f"export {export_s:.1f} s; load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores ({_cpu()})")
    if images:
        print("same images (trained run, uint8):", json.dumps({k: v for k, v in images.items() if isinstance(v, dict)}))
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=1) + "\n")
    print(f"-> {args.out}")
    return 0


def _cpu() -> str:
    """The CPU's model name (Linux), else the platform's processor string."""
    import platform

    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _versions() -> dict:
    import importlib.metadata as md

    out = {}
    for name in ("torch", "onnx", "onnxscript", "onnxruntime", "openvino"):
        try:
            out[name] = md.version(name)
        except md.PackageNotFoundError:
            pass
    return out


if __name__ == "__main__":
    sys.exit(main())
