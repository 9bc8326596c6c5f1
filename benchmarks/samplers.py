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

Writes ``benchmarks/results/samplers.json`` and ``benchmarks/results/samplers.png`` (log-log error
against NFE) and prints a table. Without ``--checkpoint`` a model is trained with
``kuosan.training.loop.train`` on ``digits`` (the ``digits-tiny`` preset with ``--diffusion.precond eps``)
into ``--work`` and reused by later runs.
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


def train_tiny(work: Path, steps: int) -> Path:
    """A small ε-prediction model on scikit-learn's digits (8×8), trained once and kept in ``work``."""
    from kuosan.config import load_config, resolve_config_path
    from kuosan.training.checkpoint import list_checkpoints
    from kuosan.training.loop import train

    if work.exists() and list_checkpoints(work):
        print(f"using the model already trained in {work}")
        return work
    overrides = {"diffusion.precond": "eps", "train.steps": steps, "train.out": str(work), "train.log_every": 100,
                 "train.sample_every": 0, "train.checkpoint_every": 0, "train.device": "cpu"}
    cfg = load_config(None, overrides, base=resolve_config_path("digits-tiny"))
    print(f"training a tiny ε-model on digits for {steps} steps into {work} ...")
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
    parser.add_argument("--work", default="runs/bench/samplers-digits-eps", help="where the tiny model lives")
    parser.add_argument("--train-steps", type=int, default=400)
    parser.add_argument("--n", type=int, default=64, help="images (seeds 0..n-1)")
    parser.add_argument("--nfe", type=int, nargs="+", default=[5, 10, 20, 50])
    parser.add_argument("--reference-steps", type=int, default=1000)
    parser.add_argument("--schedules", nargs="+", default=["karras", "log-snr", "vp-trailing"],
                        help="kuosan's σ grids (default karras log-snr vp-trailing)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", default=str(RESULTS / "samplers.json"))
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)

    import kuosan
    from kuosan.diffusion.precond import EpsPrecond
    from kuosan.sampling import sigmas_for

    ckpt = args.checkpoint or train_tiny(Path(args.work), args.train_steps)
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
                    if schedule == "vp-trailing":
                        sigmas = sigmas_for(precond, "vp-" + precond.schedule.beta_schedule, steps, spacing="trailing")
                    else:
                        sigmas = sigmas_for(precond, schedule, steps)
                    out, wall, den = run_kuosan(precond, name, x, sigmas.float(), extra)
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

    summary = summarise(results, args.nfe)
    report = {"checkpoint": str(ckpt), "images": args.n, "shape": list(shape), "nfe": args.nfe,
              "schedules": args.schedules, "reference": {"sampler": "heun", "steps": args.reference_steps,
                                                       "rmse_vs_half_steps": ref_error, "wall_s": ref_wall},
              "threads": args.threads, "platform": platform.platform(), "torch": torch.__version__,
              "results": results, "summary": summary}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2))
    png = plot(results, out.with_suffix(".png"))
    print_table(results, args.nfe, summary)
    print(f"wrote {out} and {png}")


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


def plot(results, png: Path) -> Path:
    """One log-log panel per kuosan σ grid, with diffusers' schedulers drawn dashed in each."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    grids = list(dict.fromkeys(r["schedule"] for r in results if r["impl"] == "kuosan" and "grid" not in r["sampler"]))
    fig, axes = plt.subplots(1, len(grids), figsize=(5 * len(grids), 4.5), sharey=True, squeeze=False)
    for ax, grid in zip(axes[0], grids):
        lines = [r["label"] for r in results if r["schedule"] == grid and r["impl"] == "kuosan"]
        lines += [r["label"] for r in results if r["impl"] == "diffusers"]
        for label in dict.fromkeys(lines):
            rows = sorted((r for r in results if r["label"] == label), key=lambda r: r["budget"])
            diff = rows[0]["impl"] == "diffusers"
            ax.loglog([r["nfe"] for r in rows], [r["rmse"] for r in rows], "--" if diff else "-", marker="o", ms=3,
                      color="black" if "DPM" in label else "gray" if diff else None,
                      label=label.replace(f" [{grid}]", ""))
        ax.set_title(f"kuosan on the {grid} grid")
        ax.set_xlabel("network evaluations (NFE)")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=7)
    axes[0][0].set_ylabel("RMSE to the converged ODE solution")
    fig.tight_layout()
    fig.savefig(png, dpi=110)
    plt.close(fig)
    return png


if __name__ == "__main__":
    main()
