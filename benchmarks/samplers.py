"""Sampler accuracy per network evaluation, against a converged solution, beside diffusers' schedulers.

    nice python benchmarks/samplers.py                         # trains a tiny ε-model on digits first
    python benchmarks/samplers.py --checkpoint runs/fm --n 32  # any kuosan checkpoint

For 5, 10, 20 and 50 network evaluations (NFE), every deterministic kuosan sampler turns the same noise
into images; the error is the RMSE (model range [-1, 1]) to the converged ODE solution of that noise
(1,000 Heun steps, 1,999 evaluations). On an ε-prediction model the same network and noise also run
through diffusers' ``DPMSolverMultistepScheduler`` (DPM-Solver++(2M), its defaults) and
``DDIMScheduler`` (η = 0, "trailing" spacing so that it starts at the last timestep like the others,
no clipping), and kuosan's ``dpmpp_2m``/``ddim`` on diffusers' own σ grids as a cross-check.

kuosan's samplers run on three σ grids: ``karras`` (EDM's ρ = 7), ``log-snr`` (uniform in λ = −log σ)
and ``vp-trailing`` (the discrete model's own timesteps, trailing spacing); for non-discrete models the
last is skipped.

Time: each run's wall time and the part of it spent in the network (the denoiser call). The sampler's
own arithmetic is timed apart, by running the same loop on a free denoiser that returns a stored tensor
(best of three), and reported as a fraction of the network time of the real run; the in-run remainder
``wall − network`` is kept too, but on a shared machine it also holds the scheduler's noise.

Quality: for the samplers in ``--fd-samplers`` on the ``--fd-schedule`` grid, and for diffusers' two schedulers,
``--fd-n`` images (seeds 0..n-1, classes cycled, the same noise for every sampler) are generated at each NFE and
compared with the test split through the data set's classifier features (``fmnist-cnn`` / ``mnist-cnn``):
Fréchet distance and conditional accuracy, beside the floor (the same number of real training images against
the same reference). A model whose data set has no classifier gets no quality column.

Writes ``benchmarks/results/samplers.json`` and ``benchmarks/results/samplers.png`` (log-log error
against NFE, and FD against NFE) and prints tables. Without ``--checkpoint`` an ε-prediction model is trained
with ``kuosan.training.loop.train`` from the ``demo`` preset (``--diffusion.precond eps``) on Fashion-MNIST
(``--preset digits-tiny`` for a seconds-long stand-in on scikit-learn's digits) into ``--work`` and reused by
later runs; the same model comes from the command line with
``kuosan train --config demo --diffusion.precond eps --steps 1500 --ema_decay 0.998 --out DIR``.
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import time
from pathlib import Path

import torch

from kuosan.diffusion.samplers import SAMPLERS, STOCHASTIC, nfe
from kuosan.diffusion.schedules import DiscreteVP, append_zero
from kuosan.rng import generators_for_seeds, randn

RESULTS = Path(__file__).parent / "results"
KUOSAN = [s for s in SAMPLERS if s not in STOCHASTIC and s != "ddim"]  # ddim is euler on the ODE


def train_model(work: Path, steps: int, preset: str) -> Path:
    """An ε-prediction model from ``preset``, trained once and kept in ``work``."""
    from kuosan.config import load_config, resolve_config_path
    from kuosan.checkpoint import list_checkpoints
    from kuosan.training.loop import train

    if work.exists() and list_checkpoints(work):
        print(f"using the model already trained in {work}")
        return work
    overrides = {"diffusion.precond": "eps", "train.steps": steps, "train.out": str(work), "train.log_every": 100,
                 "train.sample_every": 0, "train.checkpoint_every": 0, "train.device": "cpu",
                 "train.ema_decay": 0.998}
    cfg = load_config(None, overrides, base=resolve_config_path(preset))
    print(f"training an ε-model ({preset} preset, {cfg.train.data}) for {steps} steps into {work} ...")
    train(cfg, progress=False)
    return work


class Timed:
    """The denoiser (or network), counting calls and the seconds spent inside them."""

    def __init__(self, fn):
        self.fn, self.calls, self.seconds = fn, 0, 0.0

    def __call__(self, *a, **k):
        t0 = time.perf_counter()
        out = self.fn(*a, **k)
        self.seconds += time.perf_counter() - t0
        self.calls += 1
        return out


def steps_for(name: str, budget: int) -> int:
    """The most steps whose evaluations fit in ``budget``."""
    steps = budget
    while steps > 1 and nfe(name, steps) > budget:
        steps -= 1
    return steps


def grid_sigmas(precond, grid: str, steps: int) -> torch.Tensor:
    """σ grid ``grid`` (float32); ``vp-trailing`` is the discrete model's own β schedule, trailing spacing."""
    from kuosan.sampling import sigmas_for

    if grid == "vp-trailing":
        return sigmas_for(precond, "vp-" + precond.schedule.beta_schedule, steps, spacing="trailing").float()
    return sigmas_for(precond, grid, steps).float()


def rmse(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.double() - b.double()).square().mean().sqrt())


def _best_of(fn, repeats=3) -> float:
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def run_kuosan(precond, name, x, sigmas, extra, **options):
    den = Timed(precond)
    t0 = time.perf_counter()
    out = SAMPLERS[name](den, x.clone(), sigmas, extra_args=extra, **options)
    wall = time.perf_counter() - t0
    free = lambda x_, sigma, **k: out  # noqa: E731  (same shapes, no network)
    den.arithmetic = _best_of(lambda: SAMPLERS[name](free, x.clone(), sigmas, extra_args=extra, **options))
    return out, wall, den


def run_diffusers(scheduler, net, x_ve, sigma_max, labels, steps):
    """A diffusers scheduler loop on the VP state x_vp = x / sqrt(1 + σ²); returns kuosan's view at σ = 0."""
    def loop(network):
        scheduler.set_timesteps(steps)
        x = x_ve / math.sqrt(1 + sigma_max ** 2)
        for t in scheduler.timesteps:
            eps = network(x, t.to(torch.float32).expand(x.shape[0]), labels)
            x = scheduler.step(eps, t, x).prev_sample
        return x

    timed = Timed(net)
    t0 = time.perf_counter()
    out = loop(timed)
    wall = time.perf_counter() - t0
    eps = torch.zeros_like(x_ve)
    timed.arithmetic = _best_of(lambda: loop(lambda *a: eps))
    return out, wall, timed


def diffusers_schedulers(vp: DiscreteVP):
    try:
        import diffusers
    except ImportError:
        print("diffusers is not installed: skipping the side-by-side (pip install diffusers)")
        return {}
    common = dict(num_train_timesteps=vp.timesteps, beta_schedule={"linear": "linear",
                  "cosine": "squaredcos_cap_v2"}[vp.beta_schedule])
    return {
        "diffusers DPMSolverMultistep": lambda: diffusers.DPMSolverMultistepScheduler(**common),
        "diffusers DDIM": lambda: diffusers.DDIMScheduler(**common, clip_sample=False, set_alpha_to_one=True,
                                                          timestep_spacing="trailing"),
    }


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", default=None, help="a kuosan checkpoint (default: train a tiny one)")
    parser.add_argument("--preset", default="demo", help="preset of the model trained without --checkpoint")
    parser.add_argument("--work", default=None, help="where that model lives (default runs/bench/samplers-PRESET-eps)")
    parser.add_argument("--train-steps", type=int, default=1500)
    parser.add_argument("--n", type=int, default=64, help="images (seeds 0..n-1)")
    parser.add_argument("--nfe", type=int, nargs="+", default=[5, 10, 20, 50])
    parser.add_argument("--reference-steps", type=int, default=1000)
    parser.add_argument("--schedules", nargs="+", default=["karras", "log-snr", "vp-trailing"],
                        help="kuosan's σ grids (default karras log-snr vp-trailing)")
    parser.add_argument("--fd-n", type=int, default=500, help="images per sampler and NFE for FD (0: no FD)")
    parser.add_argument("--fd-samplers", nargs="+", default=["euler", "heun", "dpmpp_2m", "dpmpp_3m", "unipc"])
    parser.add_argument("--fd-schedule", default=None, help="their σ grid (default vp-trailing, else karras)")
    parser.add_argument("--fd-batch", type=int, default=100)
    parser.add_argument("--fd-thresholds", nargs="*", default=["clip", "0.995"],
                        help="also score --threshold-sampler with these thresholds of the denoised image")
    parser.add_argument("--threshold-sampler", default="dpmpp_2m")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", default=str(RESULTS / "samplers.json"))
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)

    import kuosan
    from kuosan.diffusion.precond import EpsPrecond
    from kuosan.sampling import sigmas_for

    work = Path(args.work or f"runs/bench/samplers-{args.preset}-eps")
    ckpt = args.checkpoint or train_model(work, args.train_steps, args.preset)
    pipe = kuosan.load(ckpt, device="cpu")
    precond = pipe.precond
    shape = pipe.image_shape
    seeds = list(range(args.n))
    x = randn((args.n, *shape), generators_for_seeds(seeds)) * precond.sigma_max
    labels = torch.tensor([s % pipe.num_classes for s in seeds]) if pipe.num_classes else None
    extra = {"class_labels": labels} if labels is not None else {}
    results = []

    with torch.inference_mode():
        print(f"reference: {args.reference_steps} Heun steps on {args.n} images {shape} ...")
        ref_sigmas = sigmas_for(precond, "karras", args.reference_steps).float()
        reference, ref_wall, _ = run_kuosan(precond, "heun", x, ref_sigmas, extra)
        half_sigmas = sigmas_for(precond, "karras", args.reference_steps // 2).float()
        half, _, _ = run_kuosan(precond, "heun", x, half_sigmas, extra)
        ref_error = rmse(half, reference)  # Heun is 2nd order: the reference's own error is about a third of this
        print(f"  {ref_wall:.0f} s; RMSE between {args.reference_steps // 2} and {args.reference_steps} steps: "
              f"{ref_error:.2e}")

        def record(budget, sampler, impl, schedule, steps, evals, out, wall, timed):
            label = sampler if impl == "diffusers" or "grid" in sampler else f"{sampler} [{schedule}]"
            row = {"label": label, "budget": budget, "sampler": sampler, "impl": impl, "schedule": schedule,
                   "steps": steps, "nfe": evals,
                   "rmse": rmse(out, reference), "wall_s": wall, "network_s": timed.seconds,
                   "sampler_s": timed.arithmetic, "sampler_overhead": timed.arithmetic / timed.seconds,
                   "in_run_overhead": (wall - timed.seconds) / timed.seconds}
            results.append(row)
            print(f"  {label:<44} NFE {evals:>3}  RMSE {row['rmse']:.2e}  "
                  f"wall {wall:6.2f} s  sampler {100 * row['sampler_overhead']:5.2f}% of network")

        discrete = isinstance(getattr(precond, "schedule", None), DiscreteVP)
        schedules = [s for s in args.schedules if discrete or not s.startswith("vp-")]
        for budget in args.nfe:
            for schedule in schedules:
                for name in KUOSAN:
                    steps = steps_for(name, budget)
                    sigmas = grid_sigmas(precond, schedule, steps)
                    out, wall, den = run_kuosan(precond, name, x, sigmas, extra)
                    record(budget, name, "kuosan", schedule, steps, den.calls, out, wall, den)

        schedulers = diffusers_schedulers(precond.schedule) if isinstance(precond, EpsPrecond) else {}
        if not isinstance(precond, EpsPrecond):
            print("the side-by-side with diffusers needs an ε-prediction model (--diffusion.precond eps)")
        own = {"diffusers DPMSolverMultistep": "dpmpp_2m", "diffusers DDIM": "ddim"}
        for label, make in schedulers.items():
            for budget in args.nfe:
                sched = make()
                out, wall, timed = run_diffusers(sched, precond.net, x, precond.sigma_max, labels, budget)
                record(budget, label, "diffusers", f"{sched.config.timestep_spacing} timesteps", budget,
                       timed.calls, out, wall, timed)
                # kuosan's sampler on the very grid diffusers used: the same numbers up to float32 rounding
                sigmas = append_zero(precond.schedule.t_to_sigma(sched.timesteps.double())).float()
                out, wall, den = run_kuosan(precond, own[label], x, sigmas, extra)
                record(budget, f"{own[label]} on diffusers' grid", "kuosan", "diffusers' timesteps", budget,
                       den.calls, out, wall, den)

        quality = quality_columns(args, pipe, precond, schedules, schedulers) if args.fd_n else None

    summary = summarise(results, args.nfe)
    if quality:
        summary.update(quality["summary"])
    report = {"checkpoint": str(ckpt), "images": args.n, "shape": list(shape), "nfe": args.nfe,
              "schedules": args.schedules, "reference": {"sampler": "heun", "steps": args.reference_steps,
                                                       "rmse_vs_half_steps": ref_error, "wall_s": ref_wall},
              "threads": args.threads, "platform": platform.platform(), "torch": torch.__version__,
              "results": results, "quality": quality, "summary": summary}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2))
    png = plot(results, out.with_suffix(".png"), quality)
    print_table(results, args.nfe, summary)
    if quality:
        print_quality(quality, args.nfe)
    print(f"wrote {out} and {png}")


def quality_columns(args, pipe, precond, schedules, schedulers):
    """FD and conditional accuracy of ``--fd-n`` images per (sampler, NFE) against the test split."""
    import numpy as np

    from kuosan.diffusion.thresholding import threshold_denoiser
    from kuosan.evaluation.classifier import classifier_for_dataset
    from kuosan.evaluation.diversity import conditional_accuracy
    from kuosan.evaluation.features import get_extractor
    from kuosan.evaluation.metrics import frechet_distance
    from kuosan.evaluation.reference import FeatureSet, reference_features
    from kuosan.images import to_uint8_nhwc

    data = pipe.dataset.split(":")[0]
    name = classifier_for_dataset(data)
    if not name:
        print(f"no classifier features for {data!r}: no Fréchet distance column")
        return None
    ext = get_extractor(name)
    c, r, _ = pipe.image_shape
    ref, _ = reference_features(f"{data}:test", ext, resolution=r, channels=c, log=print)
    real, _ = reference_features(f"{data}:train", ext, resolution=r, channels=c, max_images=args.fd_n, log=print)
    floor = frechet_distance(real.mu, real.sigma, ref.mu, ref.sigma)
    n = args.fd_n
    seeds = list(range(n))
    noise = randn((n, *pipe.image_shape), generators_for_seeds(seeds)) * precond.sigma_max
    labels = torch.tensor([s % pipe.num_classes for s in seeds]) if pipe.num_classes else None
    grid = args.fd_schedule or ("vp-trailing" if "vp-trailing" in schedules else "karras")
    print(f"quality: {n} images per sampler and NFE, {name} features, FD floor (real train vs test) {floor:.3f}")

    def score(make_images):
        t0 = time.perf_counter()
        chunks = []
        for i in range(0, n, args.fd_batch):
            sl = slice(i, i + args.fd_batch)
            chunks.append(make_images(noise[sl], None if labels is None else labels[sl]))
        seconds = time.perf_counter() - t0
        images = np.concatenate([to_uint8_nhwc(x) for x in chunks]).transpose(0, 3, 1, 2)
        feats, probs = ext.run(images)
        fs = FeatureSet.from_features(name, feats, probs)
        row = {"fd": frechet_distance(fs.mu, fs.sigma, ref.mu, ref.sigma), "seconds": seconds}
        if probs is not None and labels is not None:
            row["conditional_accuracy"] = float(conditional_accuracy(probs, labels.numpy()))
        return row

    rows = []
    variants = [(sampler, None) for sampler in args.fd_samplers]
    variants += [(args.threshold_sampler, t) for t in args.fd_thresholds]  # clipping the denoised image
    for sampler, threshold in variants:
        den = threshold_denoiser(precond, threshold)
        for budget in args.nfe:
            steps = steps_for(sampler, budget)
            sigmas = grid_sigmas(precond, grid, steps)
            row = score(lambda x, y: SAMPLERS[sampler](den, x.clone(), sigmas,
                                                       extra_args={} if y is None else {"class_labels": y}))
            suffix = "" if threshold is None else f" +threshold {threshold}"
            rows.append({"label": f"{sampler} [{grid}]{suffix}", "impl": "kuosan", "budget": budget, "steps": steps,
                         "nfe": nfe(sampler, steps), "threshold": threshold, **row})
            print(f"  {rows[-1]['label']:<42} NFE {rows[-1]['nfe']:>3}  FD {row['fd']:.3f}  "
                  f"cond. acc. {row.get('conditional_accuracy', float('nan')):.3f}  {row['seconds']:.0f} s")
    for label, make in schedulers.items():
        for budget in args.nfe:
            def diffusers_images(x, y, budget=budget, make=make):
                out, _, _ = run_diffusers(make(), precond.net, x, precond.sigma_max, y, budget)
                return out
            row = score(diffusers_images)
            rows.append({"label": label, "impl": "diffusers", "budget": budget, "steps": budget, "nfe": budget, **row})
            print(f"  {label:<36} NFE {budget:>3}  FD {row['fd']:.3f}  "
                  f"cond. acc. {row.get('conditional_accuracy', float('nan')):.3f}  {row['seconds']:.0f} s")

    summary = {}
    for budget in args.nfe:
        ours = min((q for q in rows if q["impl"] == "kuosan" and q["budget"] == budget and q.get("threshold") is None),
                   key=lambda q: q["fd"], default=None)  # like for like: diffusers' rows do not clip
        theirs = [q for q in rows if q["label"] == "diffusers DPMSolverMultistep" and q["budget"] == budget]
        entry = {"best_kuosan_fd": ours["label"], "best_kuosan_fd_value": ours["fd"]} if ours else {}
        if theirs:
            entry["diffusers_dpmpp_fd"] = theirs[0]["fd"]
        summary[f"fd_nfe_{budget}"] = entry
    real_acc = None
    if real.probs is not None and real.labels is not None:
        real_acc = float((real.probs.argmax(1) == real.labels).mean())
    return {"extractor": name, "images": n, "schedule": grid, "reference": f"{data}:test ({ref.count} images)",
            "floor_fd": floor, "real_train_accuracy": real_acc, "rows": rows, "summary": summary}


def print_quality(quality, budgets):
    cell = {(q["label"], q["budget"]): q for q in quality["rows"]}
    names = list(dict.fromkeys(q["label"] for q in quality["rows"]))
    head = f"{'sampler [σ grid]':<42}" + "".join(f"{'NFE ' + str(b):>14}" for b in budgets)
    print(f"\nFréchet distance ({quality['extractor']} features, {quality['images']} images vs "
          f"{quality['reference']}; floor {quality['floor_fd']:.3f}) / conditional accuracy")
    print(head)
    print("-" * len(head))
    for name in names:
        cells = ""
        for b in budgets:
            q = cell.get((name, b))
            cells += f"{q['fd']:>8.3f} {q.get('conditional_accuracy', float('nan')):>5.2f}" if q else f"{'-':>14}"
        print(f"{name:<42}{cells}")
    if quality.get("real_train_accuracy") is not None:
        print(f"real training images: conditional accuracy {quality['real_train_accuracy']:.3f}")


def summarise(results, budgets):
    s = {}
    ours = [r for r in results if r["impl"] == "kuosan" and "grid" not in r["sampler"]]
    for budget in budgets:
        best = min((r for r in ours if r["budget"] == budget), key=lambda r: r["rmse"], default=None)
        theirs = [r for r in results if r["sampler"] == "diffusers DPMSolverMultistep" and r["budget"] == budget]
        entry = {"best_kuosan": best["label"], "best_kuosan_rmse": best["rmse"]} if best else {}
        if theirs:
            entry["diffusers_dpmpp_rmse"] = theirs[0]["rmse"]
            entry["kuosan_at_most_diffusers"] = bool(best and best["rmse"] <= theirs[0]["rmse"])
        s[f"nfe_{budget}"] = entry
    last = [r["sampler_overhead"] for r in ours if r["budget"] == max(budgets)]
    if last:
        s["max_sampler_overhead"] = max(last)
    return s


def print_table(results, budgets, summary):
    names = list(dict.fromkeys(r["label"] for r in results))
    cell = {(r["label"], r["budget"]): r for r in results}
    print()
    head = (f"{'sampler [σ grid]':<36}" + "".join(f"{'NFE ' + str(b):>10}" for b in budgets)
            + f"{'overhead':>10}{'wall/NFE':>10}")
    print(head)
    print("-" * len(head))
    for name in names:
        cells = "".join(f"{cell[name, b]['rmse']:>10.2e}" if (name, b) in cell else f"{'-':>10}" for b in budgets)
        last = cell.get((name, max(budgets)))
        tail = f"{100 * last['sampler_overhead']:>9.2f}%{1e3 * last['wall_s'] / last['nfe']:>8.1f}ms" if last else ""
        print(f"{name:<36}{cells}{tail}")
    print("\nRMSE to the converged solution, images in [-1, 1] (heun: the largest NFE within the budget, "
          "2·steps − 1);\noverhead = the sampler's own arithmetic (timed on a free denoiser) / network time, "
          "at the largest budget; wall/NFE = wall time per network evaluation.")
    for k, v in summary.items():
        print(f"  {k}: {v}")


def _colour(label: str) -> str:
    """One colour per sampler in every panel; diffusers' schedulers in black (DPM-Solver++) and grey."""
    if label.startswith("diffusers"):
        return "black" if "DPM" in label else "gray"
    name = label.split(" [")[0]
    return f"C{KUOSAN.index(name) % 10}" if name in KUOSAN else "C9"


def plot(results, png: Path, quality=None) -> Path:
    """One log-log panel per kuosan σ grid, with diffusers' schedulers drawn dashed in each; FD last."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    grids = list(dict.fromkeys(r["schedule"] for r in results if r["impl"] == "kuosan" and "grid" not in r["sampler"]))
    panels = len(grids) + bool(quality)
    fig, axes = plt.subplots(1, panels, figsize=(5 * panels, 4.5), squeeze=False)
    for ax, grid in zip(axes[0], grids):
        lines = [r["label"] for r in results if r["schedule"] == grid and r["impl"] == "kuosan"]
        lines += [r["label"] for r in results if r["impl"] == "diffusers"]
        for label in dict.fromkeys(lines):
            rows = sorted((r for r in results if r["label"] == label), key=lambda r: r["budget"])
            diff = rows[0]["impl"] == "diffusers"
            ax.loglog([r["nfe"] for r in rows], [r["rmse"] for r in rows], "--" if diff else "-", marker="o", ms=3,
                      color=_colour(label), label=label.replace(f" [{grid}]", ""))
        ax.set_title(f"kuosan on the {grid} grid")
        ax.set_xlabel("network evaluations (NFE)")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=7)
    axes[0][0].set_ylabel("RMSE to the converged ODE solution")
    if quality:
        ax = axes[0][-1]
        for label in dict.fromkeys(q["label"] for q in quality["rows"]):
            rows = sorted((q for q in quality["rows"] if q["label"] == label), key=lambda q: q["budget"])
            diff = rows[0]["impl"] == "diffusers"
            style = "--" if diff else ":" if rows[0].get("threshold") else "-"
            ax.loglog([q["nfe"] for q in rows], [q["fd"] for q in rows], style, marker="o", ms=3,
                      color=_colour(label), label=label)
        ax.axhline(quality["floor_fd"], color="green", lw=0.8, ls=":", label="real-data floor")
        ax.set_title(f"Fréchet distance ({quality['extractor']}, {quality['images']} images)")
        ax.set_xlabel("network evaluations (NFE)")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(png, dpi=110)
    plt.close(fig)
    return png


if __name__ == "__main__":
    main()
