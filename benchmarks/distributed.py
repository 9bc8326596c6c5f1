"""Data-parallel speed on this machine: one process against two (torchrun, gloo), training and sampling.

    .venv/bin/python benchmarks/distributed.py [--configs digits-tiny,demo] [--steps 40] [--n 64]

For each preset: ``kuosan train`` as 1 process × T threads and as ``torchrun --nproc_per_node=P``
× T/P threads each (the same cores in total; T = the machine's cores unless ``--threads``), and
also 1 process × T/P threads (what one of the P processes alone does: the scaling baseline). Steps/s
and images/s come from the metrics log, after the first logged window (start-up and warm-up excluded).
Sampling: ``generate`` against ``generate_distributed`` on the trained checkpoint, timed inside the
processes (start-up excluded), images/s. Prints a table, writes benchmarks/results/distributed.json.
On a 2-core machine "2 processes × 1 thread" and "1 process × 2 threads" use the same two cores, so
what is measured is the data-parallel overhead against intra-op threading, not scaling. On a
machine shared with other work, OpenMP threads spin-wait for each other (``OMP_WAIT_POLICY=PASSIVE``
stops that); the policy in force is recorded.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

RESULTS = Path(__file__).parent / "results"


def _env(threads: int) -> dict:
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads), GLOO_SOCKET_IFNAME="lo",
               MASTER_ADDR="127.0.0.1", PYTHONUNBUFFERED="1")
    env.pop("KUOSAN_PROGRESS", None)
    return env


def _launch(nproc: int, threads: int, args: list[str]) -> str:
    head = ([sys.executable] if nproc == 1 else
            [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}"])
    r = subprocess.run([*head, *args], env=_env(threads), capture_output=True, text=True, timeout=3600)
    if r.returncode:
        raise SystemExit(f"failed ({' '.join(args[:4])} ...):\n{r.stdout}{r.stderr}")
    return r.stdout


def train_speed(config: str, nproc: int, threads: int, steps: int, batch: int, out: Path) -> dict:
    """Steps/s over the logged windows after the first (excludes start-up and warm-up)."""
    log_every = max(1, steps // 8)
    _launch(nproc, threads, ["-m", "kuosan", "train", "--config", config, "--steps", str(steps), "--batch",
                             str(batch), "--log_every", str(log_every), "--checkpoint_every", "0",
                             "--sample.steps", "1", "--max_images", "2000", "--out", str(out)])
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    first, last = rows[0], rows[-1]
    steps_per_s = (last["step"] - first["step"]) / (last["time"] - first["time"])
    return {"steps_per_s": steps_per_s, "images_per_s": steps_per_s * batch}


def sample_speed(run: Path, nproc: int, threads: int, n: int, steps: int) -> dict:
    out = run.parent / f"sample-{nproc}x{threads}.json"
    _launch(nproc, threads, [__file__, "sample-worker", str(run), str(out), str(n), str(steps)])
    return json.loads(out.read_text())


def _sample_worker(run: str, out: str, n: int, steps: int) -> None:
    """Runs in each process: time ``generate_distributed`` (the plain ``generate`` in one process)."""
    import torch
    import torch.distributed as dist

    import kuosan
    from kuosan.config import SampleConfig
    from kuosan.sampling import generate_distributed
    from kuosan.training.distributed import init_distributed

    ctx = init_distributed(torch.device("cpu"))
    pipe = kuosan.load(run, device="cpu")
    kw = dict(shape=pipe.image_shape, class_labels=[s % 10 for s in range(n)], sample=SampleConfig("heun", steps),
              batch_size=64)
    generate_distributed(pipe.precond, seeds=list(range(ctx.world)), **{**kw, "class_labels": [0] * ctx.world})
    if ctx.enabled:
        dist.barrier()
    t0 = time.perf_counter()
    x = generate_distributed(pipe.precond, seeds=list(range(n)), **kw)
    seconds = time.perf_counter() - t0
    if ctx.is_main:
        Path(out).write_text(json.dumps({"images": len(x), "seconds": seconds, "images_per_s": len(x) / seconds}))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--configs", default="digits-tiny,demo", help="presets, comma-separated")
    ap.add_argument("--steps", type=int, default=40, help="training steps per run")
    ap.add_argument("--batch", type=int, default=64, help="global batch")
    ap.add_argument("--n", type=int, default=64, help="images sampled")
    ap.add_argument("--sample-steps", type=int, default=10, help="Heun steps when sampling")
    ap.add_argument("--nproc", type=int, default=2, help="processes of the data-parallel run")
    ap.add_argument("--threads", type=int, default=os.cpu_count(), help="threads in all (default: all cores)")
    ap.add_argument("--out", default=str(RESULTS / "distributed.json"))
    args = ap.parse_args()
    per = max(1, args.threads // args.nproc)
    setups = [(1, args.threads), (args.nproc, per), (1, per)]
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        for config in args.configs.split(","):
            for nproc, threads in setups:
                run = Path(tmp) / f"{config}-{nproc}x{threads}"
                row = {"config": config, "processes": nproc, "threads_each": threads,
                       **train_speed(config, nproc, threads, args.steps, args.batch, run)}
                s = sample_speed(run, nproc, threads, args.n, args.sample_steps)
                row["sample_images_per_s"] = s["images_per_s"]
                results.append(row)
                print(f"{config:12s} {nproc} × {threads} threads: {row['steps_per_s']:6.2f} steps/s "
                      f"{row['images_per_s']:8.1f} train img/s {row['sample_images_per_s']:8.1f} sample img/s",
                      flush=True)
    import torch

    report = {"machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "torch": torch.__version__,
                          "load_average": os.getloadavg(), "OMP_WAIT_POLICY": os.environ.get("OMP_WAIT_POLICY")},
              "settings": {k: v for k, v in vars(args).items() if k != "out"}, "results": results}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=2))
    print(f"\n| config | processes × threads | steps/s | train images/s | sample images/s |\n|---|---|---|---|---|")
    for r in results:
        print(f"| {r['config']} | {r['processes']} × {r['threads_each']} | {r['steps_per_s']:.2f} | "
              f"{r['images_per_s']:.1f} | {r['sample_images_per_s']:.1f} |")
    print(f"\nwritten {args.out} (load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores)")


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "sample-worker":
        _sample_worker(sys.argv[2], sys.argv[3], int(sys.argv[4]), int(sys.argv[5]))
    else:
        main()
