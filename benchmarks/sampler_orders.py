"""Empirical convergence orders of the DPM-Solver++ multistep samplers on exact denoisers.

    python benchmarks/sampler_orders.py                    # a few seconds on one core
    python benchmarks/sampler_orders.py --steps 16 32 64 128 256 512

kuosan's ``dpmpp_3m`` (and ``dpmpp_3m_sde``, whose η = 0 case it is) integrates the quadratic through the
last three denoiser outputs exactly: a third-order method. k-diffusion's ``sample_dpmpp_3m_sde`` (also its
deterministic 3M when run with η = 0), and the samplers derived from it in other tools, let the second
divided difference enter with half its weight, which makes them second order; the two give different images
under the same name. This script measures the order of both, beside ``dpmpp_2m``:

- Problems: data N(μ, s²) (the exact denoiser D(x; σ) = μ + s²/(s² + σ²)(x − μ) and the closed-form ODE
  solution x(σ) = μ + ((s² + σ²)/(s² + σ0²))^½ (x0 − μ)), and a two-component Gaussian mixture in 2-D whose
  exact denoiser is the posterior mean, written out below; its reference solution is classical RK4 in
  t = log σ on dx/dt = x − D(x; e^t) with ``--ref-steps`` steps (checked against half as many).
- Each sampler takes ``--n`` starts x0 = σ_max z on a ``karras`` (EDM, ρ = 7) and an ``exponential``
  (uniform in log σ) grid from :mod:`kuosan.diffusion.schedules`, with N steps; the error is that of the
  state at σ_min, just before the final jump to σ = 0 (which only applies D), as the median over the starts
  of |x_N − x(σ_min)| (the median so that the few mixture starts on the boundary between the two basins,
  which may change mode, do not decide).
- Order: log2(e_N / e_2N) for each doubling, and the least-squares slope of −log2 e against log2 N.

Every multistep sampler here starts with one first-order and one second-order step. Those two steps leave
errors of O(h²) and O(h³) that the remaining steps carry to the end, so the global error of a whole run is
a·h³ + b·h² with |b| ≪ |a| (at σ_max the denoiser's output hardly changes over a step). b·h² shows only
at small errors: on the karras grid not before ~256 steps (errors ~1e-6), on the exponential grid, whose
first steps are longer in λ, from ~64-128 steps (errors ~1e-5 to 1e-7). The row "3m, exact start" shows it:
the same third-order steps started from the exact state and denoiser outputs at the first three grid points
keep order 3 there.

The half-weighted variant is written here from its description, beside kuosan's own: with λ = −log σ, step
h, nodes u_0 = 0 > u_1 > u_2 (earlier λ's minus the current one), Newton's interpolating quadratic
P(u) = D_0 + δ1·u + δ2·u(u − u_1) (δ1 = (D_0 − D_1)/(u_0 − u_1) and δ2 the second divided difference), and
the moments m_k = ∫_0^h e^{u−h} u^k du, the exact integral of P is

    x_next = e^{−h} x + m_0 D_0 + m_1 P'(0) + m_2 δ2,    P'(0) = δ1 − u_1 δ2;

the variant keeps m_1 P'(0) and puts m_2 δ2 / 2 in the last term. Its local error is then about
m_2 D''/4 ≈ h³ D''/12 per step, so O(h²) overall. The first two steps are of order 1 and 2 in both. The
same function with the full weight is checked to reproduce kuosan's ``dpmpp_3m`` (``consistency`` in the
JSON), so that the two rows differ by that one factor only.

Prints a table and writes ``benchmarks/results/sampler_orders.json``.
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import time
from pathlib import Path

import torch

from kuosan.diffusion.samplers import SAMPLERS
from kuosan.diffusion.schedules import get_sigmas

RESULTS = Path(__file__).parent / "results" / "sampler_orders.json"
SIGMA_MIN, SIGMA_MAX = 0.02, 20.0


# --- exact denoisers -------------------------------------------------------------------------------

class Gaussian:
    """Data N(μ, s²) in every dimension: the exact denoiser and the closed-form ODE solution."""

    dim = 1

    def __init__(self, mu=0.3, s=0.5):
        self.mu, self.s = mu, s

    def __call__(self, x, sigma, **kw):
        sigma = float(sigma)
        return self.mu + self.s ** 2 / (self.s ** 2 + sigma ** 2) * (x - self.mu)

    def solve(self, x0, sigma0, sigma):
        return self.mu + ((self.s ** 2 + sigma ** 2) / (self.s ** 2 + sigma0 ** 2)) ** 0.5 * (x0 - self.mu)


class TwoGaussians:
    """Data π_1 N(μ_1, s_1² I) + π_2 N(μ_2, s_2² I): D(x; σ) = Σ_k γ_k(x) [μ_k + s_k²/(s_k² + σ²)(x − μ_k)],
    γ_k ∝ π_k N(x; μ_k, (s_k² + σ²) I). Nonlinear in x, so no sampler is exact on it. ``solve`` is RK4
    in t = log σ on dx/dt = x − D(x; e^t), ``ref_steps`` steps per log(σ_max/σ_min)."""

    dim = 2

    def __init__(self, weights=(0.35, 0.65), means=((-1.5, 0.5), (1.2, -0.8)), stds=(0.3, 0.5),
                 ref_steps=4000):
        self.log_w = torch.tensor(weights, dtype=torch.float64).log()
        self.means = torch.tensor(means, dtype=torch.float64)   # [K, d]
        self.var0 = torch.tensor(stds, dtype=torch.float64) ** 2  # [K]
        self.ref_steps = ref_steps

    def __call__(self, x, sigma, **kw):
        var = self.var0 + float(sigma) ** 2                                # [K]
        diff = x[:, None, :] - self.means[None]                            # [B, K, d]
        logp = self.log_w - x.shape[1] / 2 * var.log() - diff.square().sum(-1) / (2 * var)
        gamma = logp.softmax(dim=1)                                        # [B, K]
        post = self.means[None] + (self.var0 / var)[None, :, None] * diff  # [B, K, d]
        return (gamma[..., None] * post).sum(1)

    def solve(self, x0, sigma0, sigma):
        t0, t1 = math.log(sigma0), math.log(sigma)
        steps = max(8, math.ceil(self.ref_steps * abs(t1 - t0) / math.log(SIGMA_MAX / SIGMA_MIN)))
        dt, x = (t1 - t0) / steps, x0.clone()
        f = lambda x, t: x - self(x, math.exp(t))  # noqa: E731
        for i in range(steps):
            t = t0 + i * dt
            k1 = f(x, t)
            k2 = f(x + dt / 2 * k1, t + dt / 2)
            k3 = f(x + dt / 2 * k2, t + dt / 2)
            k4 = f(x + dt * k3, t + dt)
            x = x + dt / 6 * (k1 + 2 * k2 + 2 * k3 + k4)
        return x


# --- the half-weighted variant, and the exact start ------------------------------------------------

@torch.no_grad()
def sample_3m_local(denoiser, x, sigmas, *, second_weight=1.0, start=None, callback=None):
    """DPM-Solver++(3M) written with divided differences (module docstring), the u²-moment term scaled by
    ``second_weight``: 1 is the exact integral of the quadratic (kuosan's ``dpmpp_3m``), 1/2 the
    half-weighted variant. ``start = (x(σ_2), [D(x(σ_1); σ_1), D(x(σ_0); σ_0)])`` skips the two low-order
    starting steps."""
    s = sigmas.tolist()
    lams, history, first = [], [], 0  # newest first
    if start is not None:
        x, history = start
        lams, first = [-math.log(s[1]), -math.log(s[0])], 2
    for i in range(first, len(s) - 1):
        d0 = denoiser(x, sigmas[i])
        if s[i + 1] == 0:
            x = d0
        else:
            lam, h = -math.log(s[i]), math.log(s[i] / s[i + 1])
            m0 = -math.expm1(-h)  # ∫_0^h e^{u−h} du
            m1 = h - m0           # ∫ e^{u−h} u du
            m2 = h * h - 2 * m1   # ∫ e^{u−h} u² du
            x_next = x * math.exp(-h) + d0 * m0
            if len(history) == 1:
                u1 = lams[0] - lam
                x_next = x_next + (d0 - history[0]) / (0 - u1) * m1
            elif len(history) == 2:
                u1, u2 = lams[0] - lam, lams[1] - lam
                delta1 = (d0 - history[0]) / (0 - u1)
                delta1_prev = (history[0] - history[1]) / (u1 - u2)
                delta2 = (delta1 - delta1_prev) / (0 - u2)
                x_next = x_next + (delta1 - u1 * delta2) * m1 + delta2 * (second_weight * m2)
            x = x_next
            lams, history = [lam, *lams][:2], [d0, *history][:2]
        if callback is not None:
            callback({"i": i, "x": x, "sigma": sigmas[i], "sigma_next": sigmas[i + 1], "denoised": d0})
    return x


def exact_start(problem, x0, sigmas):
    """The exact state at σ_2 and the denoiser's outputs at the exact states at σ_1 and σ_0."""
    x1 = problem.solve(x0, float(sigmas[0]), float(sigmas[1]))
    x2 = problem.solve(x1, float(sigmas[1]), float(sigmas[2]))
    return x2, [problem(x1, sigmas[1]), problem(x0, sigmas[0])]


def _kuosan(name, **kw):
    return lambda problem, x0, sigmas, cb: SAMPLERS[name](problem, x0.clone(), sigmas, callback=cb, **kw)


METHODS = {
    "dpmpp_2m": _kuosan("dpmpp_2m"),
    "dpmpp_3m": _kuosan("dpmpp_3m"),
    "dpmpp_3m_sde (eta=0)": _kuosan("dpmpp_3m_sde", eta=0.0),
    "3m, half second difference": lambda problem, x0, sigmas, cb: sample_3m_local(
        problem, x0.clone(), sigmas, second_weight=0.5, callback=cb),
    "3m, exact start": lambda problem, x0, sigmas, cb: sample_3m_local(
        problem, None, sigmas, start=exact_start(problem, x0, sigmas), callback=cb),
}


# --- measurement -----------------------------------------------------------------------------------

def state_at_sigma_min(method, problem, x0, sigmas):
    """The sampler's state after the step that reaches the last nonzero σ."""
    seen = {}

    def cb(info):
        if float(info["sigma_next"]) == float(sigmas[-2]):
            seen["x"] = info["x"]

    method(problem, x0, sigmas, cb)
    return seen["x"]


def slopes(steps, errors):
    pairwise = [math.log2(errors[j] / errors[j + 1]) / math.log2(steps[j + 1] / steps[j])
                for j in range(len(steps) - 1)]
    lx, ly = [math.log2(n) for n in steps], [-math.log2(e) for e in errors]
    mx, my = sum(lx) / len(lx), sum(ly) / len(ly)
    fit = sum((a - mx) * (b - my) for a, b in zip(lx, ly)) / sum((a - mx) ** 2 for a in lx)
    return pairwise, fit


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, nargs="+", default=[16, 32, 64, 128, 256])
    parser.add_argument("--n", type=int, default=512, help="starts (trajectories) per problem")
    parser.add_argument("--ref-steps", type=int, default=4000,
                        help="RK4 steps of the mixture's reference solution over the whole σ range")
    parser.add_argument("--grids", nargs="+", default=["karras", "exponential"])
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    t_start = time.perf_counter()

    report = {"sigma_min": SIGMA_MIN, "sigma_max": SIGMA_MAX, "steps": args.steps, "n": args.n,
              "error": "median over starts of |x_N - x(sigma_min)| (Euclidean), float64",
              "order": "log2(e_N / e_2N) per doubling; fitted_order: least-squares slope of -log2 e on log2 N",
              "platform": platform.platform(), "torch": torch.__version__, "problems": {}}
    problems = {"gaussian (1-D, closed form)": Gaussian(),
                "two-gaussian mixture (2-D, RK4)": TwoGaussians(ref_steps=args.ref_steps)}
    for pname, problem in problems.items():
        g = torch.Generator().manual_seed(0)
        x0 = torch.randn(args.n, problem.dim, generator=g, dtype=torch.float64) * SIGMA_MAX
        exact = problem.solve(x0, SIGMA_MAX, SIGMA_MIN)
        if isinstance(problem, Gaussian):
            ref_note = "closed form"
        else:
            coarse = TwoGaussians(ref_steps=args.ref_steps // 2).solve(x0, SIGMA_MAX, SIGMA_MIN)
            ref_note = (f"RK4 in log sigma, {args.ref_steps} steps; median |difference| to "
                        f"{args.ref_steps // 2} steps: {(exact - coarse).norm(dim=1).median().item():.1e}")
        entry = {"reference": ref_note, "grids": {}}
        consistency = 0.0
        for grid in args.grids:
            rows = {name: {"errors": []} for name in METHODS}
            for n in args.steps:
                sigmas = get_sigmas(grid, n, SIGMA_MIN, SIGMA_MAX)
                for name, method in METHODS.items():
                    xn = state_at_sigma_min(method, problem, x0, sigmas)
                    rows[name]["errors"].append((xn - exact).norm(dim=1).median().item())
                    if name == "dpmpp_3m":
                        local = state_at_sigma_min(lambda p, x, sg, cb: sample_3m_local(p, x.clone(), sg, callback=cb),
                                                   problem, x0, sigmas)
                        consistency = max(consistency, (local - xn).abs().max().item())
            for r in rows.values():
                r["orders"], r["fitted_order"] = slopes(args.steps, r["errors"])
            entry["grids"][grid] = rows
        entry["consistency"] = (f"max |local 3M with the full second-difference weight - kuosan dpmpp_3m| "
                                f"over all runs: {consistency:.1e}")
        report["problems"][pname] = entry
    report["seconds"] = time.perf_counter() - t_start

    for pname, entry in report["problems"].items():
        print(f"\n{pname}; reference: {entry['reference']}\n{entry['consistency']}")
        for grid, rows in entry["grids"].items():
            print(f"  {grid} grid, sigma {SIGMA_MIN}..{SIGMA_MAX}: median error at sigma_min after N steps, "
                  f"and order log2(e_N / e_2N)")
            head = "".join(f"{'N=' + str(n):>10}" for n in args.steps)
            pairs = "".join(f"{str(a) + '>' + str(b):>9}" for a, b in zip(args.steps, args.steps[1:]))
            print(f"  {'sampler':<28}{head}  |{pairs}    fit")
            for name, r in rows.items():
                errs = "".join(f"{e:>10.2e}" for e in r["errors"])
                ords = "".join(f"{o:>9.2f}" for o in r["orders"])
                print(f"  {name:<28}{errs}  |{ords}  {r['fitted_order']:5.2f}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"\n{report['seconds']:.1f} s; wrote {args.out}")


if __name__ == "__main__":
    main()
