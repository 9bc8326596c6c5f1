"""Diffusion (kuosan's CPU recipe, the demo preset) against the R3GAN-objective GAN at equal CPU time.

    .venv/bin/python benchmarks/gan_vs_diffusion.py [--budget 90] [--seeds 0,1,2] [--n-eval 500] [--workers 2]

For each data set (Fashion-MNIST, class-conditional; StackedMNIST, unconditional), method and seed: measure
the CPU seconds a training step costs (two short runs, the difference of their CPU times over the difference
of their steps), train for ``budget / cost`` steps (the learning-rate warm-up scaled with the steps, as the
recipe's 100 of 4000), then sample ``--n-eval`` images (diffusion: the recipe's Heun, 18 steps, 35
evaluations; GAN: one) and score them on one feature space per data set: the shipped Fashion-MNIST
classifier's features, or for StackedMNIST the MNIST classifier's features of R, G and B, concatenated.

Quality: Fréchet distance (against ``--n-ref`` test images) and precision/recall (Kynkäänniemi et al. 2019,
k = 3, against as many test images as generated). Diversity: recall, class entropy, modes covered out of
1,000 and KL from uniform (StackedMNIST). Stability (Lucic et al. 2018: spread over seeds): FD's mean, std
and range over seeds, loss and gradient-norm traces, gradient-norm spikes (median + 6 robust sigmas),
non-finite steps and collapse events (a class below a quarter of its share, or fewer than half the modes a
real sample of the same size covers). Speed: training images per CPU second, sampling images per CPU
second and per wall second, network evaluations per image. Every number beside a real floor: the same
metrics of as many real training images.

Each run is a single-threaded process (``--workers`` of them at once), so CPU seconds are one core's.
Prints a table, writes benchmarks/results/gan_vs_diffusion.json and figures to docs/diffusion-vs-gan/.
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")   # before torch starts its thread pool (see kuosan.cli)
os.environ.setdefault("OMP_NUM_THREADS", "1")

import argparse  # noqa: E402
import json  # noqa: E402
import math  # noqa: E402
import multiprocessing  # noqa: E402
import platform  # noqa: E402
import shutil  # noqa: E402
import statistics  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from concurrent.futures import ProcessPoolExecutor  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
FIGURES = ROOT / "docs" / "diffusion-vs-gan"
# Each data set's feature classifier (FD, precision/recall, classes); emoji: 64x64 colour, 9 classes.
DATA = {"fashion-mnist": {"conditional": True, "classifier": "fmnist-cnn"},
        "stacked-mnist": {"conditional": False},
        "emoji": {"conditional": True, "classifier": "emoji-cnn"}}
# On the colour set the diffusion arm is kuosan's colour recipe, the demo's: an autoencoder for 30% of the CPU
# budget, then a class-conditional latent model on its latents for the rest (configs/emoji-ldm.json, scheduled by
# the CPU clock like the demo), sampled with that config's own sampler.
LATENT_SHARE = 0.3
DIFFUSION_SAMPLER = {"sampler": "heun", "steps": 18}     # the demo recipe's sampler (35 evaluations an image)
RECIPE_WARMUP = 100 / 4000                               # the demo recipe: 100 warm-up steps of 4000


def parse_args():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--budget", type=float, default=90, help="CPU seconds of training per run (default 90)")
    ap.add_argument("--seeds", default="0,1,2", help="training seeds (default 0,1,2)")
    ap.add_argument("--data", default="fashion-mnist,stacked-mnist", help="data sets (default both)")
    ap.add_argument("--methods", default="diffusion,gan", help="methods (default both)")
    ap.add_argument("--gamma", default=None,
                    help="comma-separated γ of the GAN's R1 + R2 penalty, one GAN arm each (default: the preset's)")
    ap.add_argument("--n-eval", type=int, default=500, help="generated images scored per run (default 500)")
    ap.add_argument("--n-ref", type=int, default=2000, help="test images of the FD reference (default 2000)")
    ap.add_argument("--workers", type=int, default=2, help="runs at once, one core each (default 2)")
    ap.add_argument("--runs", default=None, help="where the runs go (default: a temporary directory)")
    ap.add_argument("--out", default=str(RESULTS / "gan_vs_diffusion.json"))
    ap.add_argument("--figures", default=str(FIGURES))
    ap.add_argument("--replot", action="store_true", help="redraw the figures of --out's results; train nothing")
    return ap.parse_args()


# --- training ---------------------------------------------------------------------------------------------

def _diffusion_config(data: str, seed: int, steps: int, out: Path):
    from kuosan.config import load_config, resolve_config_path

    overrides = {"train.data": data, "train.conditional": DATA[data]["conditional"], "train.seed": seed,
                 "train.steps": steps, "train.warmup_steps": max(1, round(steps * RECIPE_WARMUP)),
                 "train.log_every": max(1, steps // 50), "train.checkpoint_every": 0, "train.sample_every": 0,
                 "train.out": str(out), "train.device": "cpu",
                 "sample.sampler": "euler", "sample.steps": 1}   # the closing grid only; scored with Heun below
    return load_config(None, overrides, base=resolve_config_path("demo"))


def _gan_config(data: str, seed: int, steps: int, out: Path, gamma: float | None = None):
    from kuosan.training.gan import PRESETS, GANTrainConfig

    fields = {**PRESETS[data], "seed": seed, "steps": steps, "log_every": max(1, steps // 50),
              "checkpoint_every": 0, "sample_every": 0, "out": str(out), "device": "cpu"}
    if gamma is not None:
        fields["gamma"] = gamma
    return GANTrainConfig(**fields)


def _cpu_clock_for_autoencoders() -> None:
    """The autoencoder loop's ``time.time`` becomes this process's CPU time (its time limit in CPU seconds;
    the diffusion loop has ``train.clock cpu`` for that)."""
    import types

    import kuosan.training.autoencoder as ae_loop

    clock = types.SimpleNamespace(**{k: getattr(time, k) for k in dir(time) if not k.startswith("_")})
    clock.time = time.process_time
    ae_loop.time = clock


def train_latent(seed: int, budget: float, out: Path) -> None:
    """The colour recipe in ``budget`` CPU seconds of this process: the autoencoder for 30%, the data set's
    latents (encoded once, on disk for the loop), then the latent model for what is left."""
    from kuosan.config import load_config, resolve_config_path
    from kuosan.demo import DEMO_SIGMA_REL
    from kuosan.training.autoencoder import PRESETS, AutoencoderTrainConfig, train_autoencoder
    from kuosan.training.loop import train

    from kuosan.latent import encode_dataset

    _cpu_clock_for_autoencoders()
    cpu0, quiet = time.process_time(), {"log": lambda *a: None}
    ae = train_autoencoder(AutoencoderTrainConfig(**{
        **PRESETS["emoji-demo"], "seed": seed, "steps": 10 ** 6, "time_limit": LATENT_SHARE * budget,
        "decay_over": "time", "log_every": 50, "checkpoint_every": 0, "device": "cpu", "out": str(out / "autoencoder")}),
        **quiet)
    encode_dataset(ae, "emoji", "train", device="cpu")  # the loop below finds them in the cache
    left = max(1.0, budget - (time.process_time() - cpu0))
    overrides = {"train.data": "emoji", "train.autoencoder": str(ae), "train.seed": seed, "train.steps": 10 ** 6,
                 "train.clock": "cpu", "train.time_limit": left, "train.decay_over": "time",
                 "train.ema_sigma_rel": DEMO_SIGMA_REL, "train.warmup_steps": 20, "train.log_every": 5,
                 "train.checkpoint_every": 0, "train.sample_every": 0, "train.out": str(out), "train.device": "cpu"}
    cfg = load_config(None, overrides, base=resolve_config_path("emoji-ldm"))
    train(cfg, progress=False, **quiet)


def train_once(method: str, data: str, seed: int, steps: int, out: Path, gamma: float | None = None,
               budget: float | None = None) -> dict:
    """Train one run; its CPU and wall seconds."""
    from kuosan.training.gan import train_gan
    from kuosan.training.loop import train

    quiet = {"progress": False, "log": lambda *a: None}
    cpu, wall = time.process_time(), time.time()
    if method == "diffusion" and data == "emoji":
        train_latent(seed, budget, out)
    elif method == "diffusion":
        train(_diffusion_config(data, seed, steps, out), **quiet)
    else:
        train_gan(_gan_config(data, seed, steps, out, gamma), **quiet)
    return {"train_cpu_s": time.process_time() - cpu, "train_wall_s": time.time() - wall}


def calibrate(method: str, data: str, root: Path, steps: int = 6) -> float:
    """CPU seconds of one training step: the training loop's own step (``Run.one_step``), timed after two."""
    if method == "diffusion" and data == "emoji":
        return float("nan")  # scheduled by the CPU clock, not by a step count
    if method == "diffusion":
        import contextlib

        from kuosan.training.distributed import Dist, ShardedStep
        from kuosan.training.loop import Run

        cfg = _diffusion_config(data, 0, 1000, root / "calibrate")
        run = Run(cfg, Dist(device=torch.device("cpu")), resume=False, log=lambda *a: None)
        sharded = ShardedStep(run.precond, run.ctx, batch=cfg.train.batch)
        step = lambda i: run.one_step(sharded, contextlib.nullcontext(), i)  # noqa: E731
    else:
        from kuosan.training.gan import Run

        run = Run(_gan_config(data, 0, 1000, root / "calibrate"), log=lambda *a: None)
        step = run.one_step
    for i in range(2):
        step(i)
    cpu = time.process_time()
    for i in range(2, 2 + steps):
        step(i)
    return (time.process_time() - cpu) / steps


# --- scoring ----------------------------------------------------------------------------------------------

def _load_real(data: str, split: str, n: int, seed: int) -> torch.Tensor:
    from kuosan.data import load_dataset

    images = load_dataset(f"{data}:{split}").images
    return images[torch.randperm(len(images), generator=torch.Generator().manual_seed(seed))[:n]]


def describe(data: str, images: torch.Tensor, requested=None) -> dict:
    """Features for FD/PR and the diversity numbers of uint8 images [N, C, H, W]."""
    from kuosan.evaluation.classifier import load_classifier, predict, prepare
    from kuosan.evaluation.diversity import class_distribution, conditional_accuracy
    from kuosan.training.gan_modes import count_modes, stacked_features

    if data == "stacked-mnist":
        modes = count_modes(images)
        return {"features": stacked_features(images), "modes": modes,
                "class_entropy": modes["entropy_normalized"]}
    model, _ = load_classifier(DATA[data]["classifier"])
    with torch.inference_mode():
        feats = torch.cat([model.features(prepare(images[i:i + 512], model.convs[0].in_channels, model.resolution))
                           for i in range(0, len(images), 512)])
    probs = predict(model, images)
    dist = class_distribution(probs, probs.shape[1])
    out = {"features": feats.double().numpy(), "classes": dist, "class_entropy": dist["entropy_normalized"]}
    if requested is not None:
        out["conditional_accuracy"] = conditional_accuracy(probs, np.asarray(requested))
    return out


def reference(data: str, n_eval: int, n_ref: int) -> dict:
    """The real side: FD statistics of ``n_ref`` test images, a P/R set of ``n_eval``, and the floor."""
    ref = describe(data, _load_real(data, "test", n_ref, seed=0))
    pr = ref["features"][:n_eval]                                 # already a random subset
    floor_images = _load_real(data, "train", n_eval, seed=1)
    return {"fd": ref["features"], "pr": pr, "floor": score(data, describe(data, floor_images), ref["features"], pr)}


def score(data: str, d: dict, fd_ref: np.ndarray, pr_ref: np.ndarray) -> dict:
    from kuosan.evaluation.metrics import frechet_distance_features, precision_recall

    precision, recall = precision_recall(pr_ref, d["features"], k=3)
    out = {"fd": frechet_distance_features(d["features"], fd_ref), "precision": precision, "recall": recall,
           "class_entropy": d["class_entropy"]}
    if "modes" in d:
        out.update(modes_covered=d["modes"]["modes_covered"], kl_to_uniform=d["modes"]["kl_to_uniform"])
    else:
        out.update(class_coverage=d["classes"]["coverage"], mode_collapse=d["classes"]["mode_collapse"])
    if "conditional_accuracy" in d:
        out["conditional_accuracy"] = d["conditional_accuracy"]
    return out


def sample_run(method: str, out: Path, n: int):
    """``n`` images of the run (seeds 0..n-1, classes cycling), and the sampling's speed."""
    import kuosan

    pipe = kuosan.load(out, device="cpu")
    options = DIFFUSION_SAMPLER if method == "diffusion" and pipe.autoencoder is None else {}  # latent: its own
    cpu = time.process_time()
    res = pipe.sample(list(range(n)), batch_size=100, **options)
    speed = {"sample_cpu_s": time.process_time() - cpu, "sample_wall_s": res.seconds, "nfe": res.nfe,
             "sample_images_per_cpu_s": n / max(1e-9, time.process_time() - cpu),
             "sample_images_per_wall_s": n / max(1e-9, res.seconds)}
    return torch.as_tensor(res.images).permute(0, 3, 1, 2).contiguous(), res.labels, speed


def traces(out: Path) -> dict:
    """The metrics log's loss and gradient-norm columns, and its gradient-norm spikes."""
    from kuosan.evaluation.stability import grad_spikes

    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines() if line.strip()]
    if not rows:  # a run too short to log a line
        return {"trace": {"step": [], "loss": [], "grad_norm": []}, "grad_spikes": 0, "nonfinite": 0}
    keys = [k for k in ("loss", "loss_d", "loss_g", "r1", "r2", "grad_norm", "grad_norm_d", "grad_norm_g")
            if k in rows[0]]
    cols = {k: [r[k] for r in rows] for k in ["step", *keys]}
    steps, norms = np.asarray(cols["step"], float), np.asarray(cols["grad_norm"], float)
    return {"trace": cols, "grad_spikes": grad_spikes(steps, norms)["spikes"],
            "nonfinite": int(rows[-1].get("nonfinite", 0))}


# --- one job in a worker -------------------------------------------------------------------------------

def _worker_init() -> None:
    torch.set_num_threads(1)


def run_job(job: dict) -> dict:
    """Train, sample, score one (method, data, seed); the first seed's first 100 images become a grid."""
    from kuosan.images import make_grid, save_png

    gamma = job.get("gamma")
    arm = job["method"] if gamma is None else f"{job['method']}-gamma{gamma:g}"
    out = Path(job["root"]) / f"{arm}-{job['data']}-{job['seed']}"
    shutil.rmtree(out, ignore_errors=True)                       # this benchmark's own run of an earlier call
    row = {k: job[k] for k in ("method", "data", "seed", "steps")}
    if gamma is not None:
        row.update(gamma=gamma, method=f"gan γ={gamma:g}")
    row.update(train_once(job["method"], job["data"], job["seed"], job["steps"], out, gamma, job["budget"]))
    images, labels, speed = sample_run(job["method"], out, job["n_eval"])
    row.update(speed, **traces(out))
    batch = json.loads((out / "config.json").read_text())["train"]["batch"]
    row["steps"] = _steps_done(out)
    row["train_images_per_cpu_s"] = row["steps"] * batch / row["train_cpu_s"]
    d = describe(job["data"], images, labels)
    row["scores"] = score(job["data"], d, job["ref"]["fd"], job["ref"]["pr"])
    row["collapse"] = _collapse(row["scores"], job["ref"]["floor"])
    if job["grid"]:
        grid = Path(job["figures"]) / f"samples-{job['method']}-{job['data']}-seed{job['seed']}.png"
        save_png(make_grid(images[:100].permute(0, 2, 3, 1).numpy(), 10), grid, scale=2)
    return row


def _steps_done(out: Path) -> int:
    from kuosan.checkpoint import resolve_checkpoint

    return int(json.loads((resolve_checkpoint(out) / "state.json").read_text())["step"])


def _collapse(s: dict, floor: dict) -> bool:
    """A collapse event: a class below a quarter of its share, or under half the modes of a real sample."""
    if "modes_covered" in s:
        return s["modes_covered"] < 0.5 * floor["modes_covered"]
    return bool(s["mode_collapse"])


# --- summary, table, figures --------------------------------------------------------------------------

def _spread(values) -> dict:
    v = [float(x) for x in values]
    return {"mean": statistics.fmean(v), "std": statistics.stdev(v) if len(v) > 1 else 0.0,
            "min": min(v), "max": max(v), "values": v}


def summarise(rows: list[dict], refs: dict) -> dict:
    """Per data set and method: each score's spread over seeds, collapse events, speed; and the real floor."""
    out = {}
    for data in sorted({r["data"] for r in rows}):
        out[data] = {"real_floor": refs[data]["floor"]}
        for method in sorted({r["method"] for r in rows if r["data"] == data}):
            mine = [r for r in rows if r["data"] == data and r["method"] == method]
            keys = [k for k, v in mine[0]["scores"].items() if isinstance(v, (int, float)) and not isinstance(v, bool)]
            out[data][method] = {
                **{k: _spread([r["scores"][k] for r in mine]) for k in keys},
                "collapse_events": sum(r["collapse"] for r in mine), "runs": len(mine),
                "grad_spikes": sum(r["grad_spikes"] for r in mine), "nonfinite": sum(r["nonfinite"] for r in mine),
                **{k: _spread([r[k] for r in mine]) for k in ("steps", "train_cpu_s", "train_images_per_cpu_s",
                                                             "sample_images_per_cpu_s", "sample_images_per_wall_s")},
                "nfe": mine[0]["nfe"]}
    return out


def table(summary: dict) -> str:
    head = (f"{'data':14s} {'method':9s} {'steps':>6s} {'train CPU-s':>11s} {'FD':>15s} {'precision':>9s} "
            f"{'recall':>7s} {'entropy':>7s} {'modes':>9s} {'collapse':>8s} {'img/CPU-s':>9s} {'NFE':>4s}")
    lines = [head, "-" * len(head)]
    for data, per in summary.items():
        for method, m in per.items():
            if method == "real_floor":
                modes = f"{m.get('modes_covered', '-')}"
                lines.append(f"{data:14s} {'real':9s} {'':>6s} {'':>11s} {m['fd']:15.3f} {m['precision']:9.3f} "
                             f"{m['recall']:7.3f} {m['class_entropy']:7.3f} {modes:>9s}")
                continue
            modes = f"{m['modes_covered']['mean']:.0f}" if "modes_covered" in m else "-"
            fd = f"{m['fd']['mean']:.3f}±{m['fd']['std']:.3f}"
            lines.append(f"{data:14s} {method:9s} {m['steps']['mean']:6.0f} {m['train_cpu_s']['mean']:11.1f} "
                         f"{fd:>15s} {m['precision']['mean']:9.3f} {m['recall']['mean']:7.3f} "
                         f"{m['class_entropy']['mean']:7.3f} {modes:>9s} {m['collapse_events']:>4d}/{m['runs']:<3d} "
                         f"{m['sample_images_per_cpu_s']['mean']:9.1f} {m['nfe']:4d}")
    return "\n".join(lines)


def figures(rows: list[dict], summary: dict, where: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    palette = iter(["tab:red", "tab:purple", "tab:brown", "tab:pink", "tab:olive"])
    colours = {"diffusion": "tab:blue", **{m: next(palette) for m in sorted({r["method"] for r in rows}) if m != "diffusion"}}
    for data in summary:
        fig, axes = plt.subplots(1, 3, figsize=(13, 3.4), dpi=110)
        for r in (r for r in rows if r["data"] == data):
            t, c, first = r["trace"], colours[r["method"]], r["seed"] == 0
            x = np.asarray(t["step"]) / max(t["step"] or [1])
            if r["method"].startswith("gan"):
                axes[0].plot(x, t["loss_d"], color=c, lw=1, alpha=0.8, label="GAN: D's RpGAN loss" if first else None)
                axes[0].plot(x, t["loss_g"], color="tab:orange", lw=1, alpha=0.8,
                             label="GAN: G's loss" if first else None)
            else:
                axes[0].plot(x, t["loss"], color=c, lw=1, alpha=0.8, label="diffusion: EDM loss" if first else None)
            axes[1].plot(x, t["grad_norm"], color=c, lw=1, alpha=0.8, label=r["method"] if first else None)
            if r["method"].startswith("gan") and len(colours) > 2:  # a γ sweep: one line per arm is enough
                continue
        axes[0].set(title=f"{data}: training losses, each seed", xlabel="fraction of the run", yscale="log")
        axes[1].set(title="gradient norm (GAN: D's, with R1 + R2)", xlabel="fraction of the run", yscale="log")
        for i, method in enumerate(m for m in summary[data] if m != "real_floor"):
            v = summary[data][method]["fd"]["values"]
            axes[2].scatter([i] * len(v), v, color=colours[method], zorder=3)
            axes[2].bar(i, statistics.fmean(v), color=colours[method], alpha=0.3)
        axes[2].axhline(summary[data]["real_floor"]["fd"], color="k", ls="--", lw=1, label="real floor")
        methods = [m for m in summary[data] if m != "real_floor"]
        axes[2].set(title="Fréchet distance, each seed", xticks=range(len(methods)), xticklabels=methods,
                    yscale="log")
        for ax in axes:
            ax.grid(alpha=0.3)
            ax.legend(fontsize=7)
        fig.tight_layout()
        fig.savefig(where / f"traces-{data}.png")
        plt.close(fig)


# --- main ------------------------------------------------------------------------------------------------

def main() -> None:
    args = parse_args()
    if args.replot:
        saved = json.loads(Path(args.out).read_text())
        figures(saved["runs"], saved["summary"], Path(args.figures))
        return
    seeds, datas, methods = ([int(s) for s in args.seeds.split(",")], args.data.split(","),
                             args.methods.split(","))
    figs = Path(args.figures)
    figs.mkdir(parents=True, exist_ok=True)
    root = Path(args.runs or tempfile.mkdtemp(prefix="kuosan-gan-vs-diffusion-"))
    t0 = time.time()
    spawn = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(args.workers, mp_context=spawn, initializer=_worker_init) as pool:
        pairs = [(m, d) for d in datas for m in methods]
        costs = dict(zip(pairs, pool.map(calibrate, *zip(*pairs), [root] * len(pairs))))
        refs = dict(zip(datas, pool.map(reference, datas, [args.n_eval] * len(datas), [args.n_ref] * len(datas))))
        print(f"CPU seconds per step: {', '.join(f'{m}/{d} {c:.3f}' for (m, d), c in costs.items())}", flush=True)
        gammas = [float(g) for g in args.gamma.split(",")] if args.gamma else [None]
        jobs = [{"method": m, "data": d, "seed": s, "budget": args.budget, "gamma": g if m == "gan" else None,
                 "steps": 10 ** 6 if math.isnan(costs[(m, d)]) else max(5, round(args.budget / costs[(m, d)])),
                 "n_eval": args.n_eval, "root": str(root), "figures": str(figs), "ref": refs[d], "grid": s == seeds[0]}
                for m in methods for d in datas for s in seeds for g in (gammas if m == "gan" else [None])]
        rows = list(pool.map(run_job, jobs))
    summary = summarise(rows, refs)
    print(table(summary))
    figures(rows, summary, figs)
    result = {"budget_cpu_s": args.budget, "seeds": seeds, "n_eval": args.n_eval, "n_ref": args.n_ref,
              "workers": args.workers, "threads_per_run": 1, "cpu_s_per_step": {f"{m}/{d}": c for (m, d), c in
                                                                               costs.items()},
              "diffusion": "demo preset (UNet 32 ch, EDM), Heun 18 steps; warm-up scaled with the steps; emoji: the "
                           "colour demo's latent recipe (autoencoder 30% of the budget, configs/emoji-ldm.json)",
              "gamma": args.gamma,
              "gan": "kuosan.training.gan presets (R3GAN objective, DCGAN-sized)",
              "summary": summary, "runs": [{k: v for k, v in r.items()} for r in rows],
              "wall_s": time.time() - t0, "torch": torch.__version__, "machine": platform.machine(),
              "load_average_end": os.getloadavg()}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=1, default=float))
    print(f"{len(rows)} runs in {result['wall_s'] / 60:.1f} min -> {args.out}, figures in {figs}")


if __name__ == "__main__":
    main()
