"""Post-hoc EMA (EDM2, Karras et al. 2024, "Analyzing and Improving the Training Dynamics of Diffusion
Models", §3 and Appendix C): train with two power-function EMAs, keep snapshots of both, and after training
reconstruct the EMA of any length by least squares over the snapshots' averaging profiles.

    posthoc = PosthocEMA(precond)                  # two profiles, σ_rel = 0.05 and 0.10
    posthoc.update(precond, step)                  # after each optimiser step (step counts from 0)
    posthoc.save_snapshot(run_dir, step + 1)       # every N steps: RUN/posthoc-ema/snapshot-NNNNNNN.safetensors
    weights = reconstruct(run_dir, sigma_rel=0.08) # a state dict for precond.load_state_dict

Notation (EDM2 Appendix C). t = 1, 2, … counts the updates; θ_t are the weights after update t.

    β_γ(t) = (1 − 1/t)^(γ+1),  θ̂_t = β_γ(t) θ̂_{t−1} + (1 − β_γ(t)) θ_t          (EDM2, §3)
    p_{t,γ}(τ) = (γ+1) τ^γ / t^(γ+1) on [0, t]: the power-function averaging profile  (§3, Appendix C)
    σ_rel = sqrt((γ+1) / ((γ+2)² (γ+3))): its standard deviation relative to t         (Appendix C)

The product of the β's telescopes, ∏_{r=s+1}^t β_γ(r) = (s/t)^(γ+1), so update s carries the weight
(s^(γ+1) − (s−1)^(γ+1)) / t^(γ+1) = ∫_{s−1}^s p_{t,γ}(τ) dτ: the discrete EMA is *exactly* the profile's
average of the piecewise constant trajectory θ(τ) = θ_⌈τ⌉, θ̂_t = ⟨p_{t,γ}, θ⟩. Reconstruction therefore
finds coefficients x over the stored profiles p_i minimising ‖Σ_i x_i p_i − p_target‖² in L²(0, ∞):
A x = b with A_ij = ⟨p_i, p_j⟩, b_i = ⟨p_i, p_target⟩ in closed form (:func:`profile_inner`), and returns
Σ_i x_i θ̂_i, whose error is at most ‖Σ x_i p_i − p_target‖ · ‖θ‖ (Cauchy–Schwarz).
"""

from __future__ import annotations

import copy
import json
import math
import re
from pathlib import Path

import numpy as np
import torch
from torch import nn

from kuosan.checkpoint import atomic_write_bytes, write_failure
from kuosan.errors import KuosanError

__all__ = ["SIGMA_RELS", "gamma_to_sigma_rel", "sigma_rel_to_gamma", "power_beta", "power_weights",
           "profile_inner", "solve_coefficients", "PowerEMA", "PosthocEMA", "list_snapshots", "reconstruct",
           "SNAPSHOT_DIR"]

SIGMA_RELS = (0.05, 0.10)  # the two profiles EDM2 stores (§3)
SIGMA_REL_MAX = 12 ** -0.5  # γ = 0, a plain running mean; larger σ_rel would weigh early weights more
SNAPSHOT_DIR = "posthoc-ema"
FORMAT = "kuosan-posthoc-ema"
_SNAPSHOT = re.compile(r"^snapshot-(\d{7,})\.safetensors$")


# --- the maths ------------------------------------------------------------------------------------

def gamma_to_sigma_rel(gamma: float) -> float:
    """σ_rel = sqrt((γ+1) / ((γ+2)² (γ+3))), the profile's relative width (EDM2, Appendix C)."""
    return math.sqrt((gamma + 1) / ((gamma + 2) ** 2 * (gamma + 3)))


def sigma_rel_to_gamma(sigma_rel: float) -> float:
    """The γ ≥ 0 of σ_rel: its formula squared and cleared of fractions is γ³ + 7γ² + (16 − σ_rel⁻²)γ + (12 − σ_rel⁻²)
    = 0, whose largest real root it is (the profile's σ_rel falls as γ grows from 0)."""
    if not 0 < sigma_rel <= SIGMA_REL_MAX:
        raise KuosanError(f"σ_rel must be in (0, {SIGMA_REL_MAX:.4f}] (γ ≥ 0), got {sigma_rel}")
    k = sigma_rel ** -2
    roots = np.roots([1.0, 7.0, 16.0 - k, 12.0 - k])
    return float(max(r.real for r in roots if abs(r.imag) < 1e-9))


def power_beta(t: int, gamma: float) -> float:
    """β_γ(t) = (1 − 1/t)^(γ+1), the decay of update t ≥ 1 (EDM2, §3): update 1 copies the weights."""
    return (1.0 - 1.0 / t) ** (gamma + 1)


def power_weights(t: int, gamma: float) -> np.ndarray:
    """The weights of updates 1..t in θ̂_t: (s^(γ+1) − (s−1)^(γ+1)) / t^(γ+1), the profile's mass on [s−1, s]."""
    s = np.arange(1, t + 1, dtype=np.float64)
    return (s / t) ** (gamma + 1) - ((s - 1) / t) ** (gamma + 1)


def profile_inner(t_a, gamma_a, t_b, gamma_b) -> np.ndarray:
    """⟨p_{t_a,γ_a}, p_{t_b,γ_b}⟩ = (γ_a+1)(γ_b+1)/(γ_a+γ_b+1) · m^(γ_a+γ_b+1) / (t_a^(γ_a+1) t_b^(γ_b+1)),
    m = min(t_a, t_b) (EDM2, Appendix C); broadcasts, in logarithms (t^γ overflows for long runs)."""
    t_a, g_a, t_b, g_b = (np.asarray(v, dtype=np.float64) for v in (t_a, gamma_a, t_b, gamma_b))
    m = np.minimum(t_a, t_b)
    log = (np.log((g_a + 1) * (g_b + 1) / (g_a + g_b + 1)) + (g_a + g_b + 1) * np.log(m)
           - (g_a + 1) * np.log(t_a) - (g_b + 1) * np.log(t_b))
    return np.exp(log)


def solve_coefficients(ts, gammas, t_target: float, gamma_target: float) -> tuple[np.ndarray, float]:
    """x minimising ‖Σ_i x_i p_{t_i,γ_i} − p_{t_target,γ_target}‖ (least squares over the stored profiles),
    and that residual norm relative to ‖p_target‖. Times are divided by t_target (the profiles' shapes do
    not change, and A stays of order one)."""
    ts = np.asarray(ts, dtype=np.float64) / t_target
    gammas = np.asarray(gammas, dtype=np.float64)
    A = profile_inner(ts[:, None], gammas[:, None], ts[None, :], gammas[None, :])
    b = profile_inner(ts, gammas, 1.0, gamma_target)
    x = np.linalg.lstsq(A, b, rcond=None)[0]
    target = float(profile_inner(1.0, gamma_target, 1.0, gamma_target))
    residual = max(0.0, float(x @ A @ x - 2 * x @ b) + target)
    return x, math.sqrt(residual / target)


# --- during training ------------------------------------------------------------------------------

class PowerEMA:
    """A shadow copy of a module following the power-function EMA of exponent ``gamma`` (EDM2, §3);
    ``t`` counts its updates. Floating-point buffers are averaged like parameters, others copied."""

    def __init__(self, model: nn.Module, gamma: float):
        self.gamma, self.t = float(gamma), 0
        self.module = copy.deepcopy(model).eval().requires_grad_(False)

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        self.t += 1
        weight = 1.0 - power_beta(self.t, self.gamma)
        ours = [v for v in self.module.state_dict().values()]
        theirs = [v.detach() for v in model.state_dict().values()]
        floats = [(a, b) for a, b in zip(ours, theirs) if a.is_floating_point()]
        torch._foreach_lerp_([a for a, _ in floats], [b for _, b in floats], weight)
        for a, b in zip(ours, theirs):
            if not a.is_floating_point():
                a.copy_(b)


class PosthocEMA:
    """The two power EMAs of EDM2 (σ_rel = 0.05 and 0.10 by default) and their snapshots on disk.

    The snapshot of step N, ``RUN/posthoc-ema/snapshot-NNNNNNN.safetensors``, holds every profile's averaged
    state dict (``"<k>/<name>"`` for profile k) and, in its metadata, the γ and t of each: all that
    :func:`reconstruct` needs, and all that resuming at step N needs (:meth:`restore`)."""

    def __init__(self, model: nn.Module, sigma_rels=SIGMA_RELS):
        self.sigma_rels = tuple(float(s) for s in sigma_rels)
        self.profiles = [PowerEMA(model, sigma_rel_to_gamma(s)) for s in self.sigma_rels]

    def update(self, model: nn.Module, step: int) -> None:
        """After optimiser step ``step`` (from 0): every profile's update ``step + 1``."""
        for p in self.profiles:
            if p.t != step:
                raise KuosanError(f"post-hoc EMA out of step: update {step + 1} after {p.t}; restore it on resume")
            p.update(model)

    def save_snapshot(self, run_dir, step: int) -> Path:
        """Write the snapshot of ``step`` (atomically; an existing one of that step is replaced)."""
        from safetensors.torch import save

        tensors = {f"{k}/{name}": v.detach().cpu().contiguous()
                   for k, p in enumerate(self.profiles) for name, v in p.module.state_dict().items()}
        meta = {"format": FORMAT, "step": str(step), "t": json.dumps([p.t for p in self.profiles]),
                "gammas": json.dumps([p.gamma for p in self.profiles]), "sigma_rels": json.dumps(self.sigma_rels)}
        path = Path(run_dir) / SNAPSHOT_DIR / f"snapshot-{step:07d}.safetensors"
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            return atomic_write_bytes(path, save(tensors, metadata=meta))
        except OSError as e:  # a full disk, a quota: one line, and no partial file (atomic_write_bytes)
            what, fix = write_failure(e)
            raise KuosanError(f"{what} while writing the post-hoc EMA snapshot {path}; {fix} and resume") from None

    def restore(self, run_dir, step: int) -> None:
        """Resume at ``step``: load its snapshot and delete later ones (an abandoned continuation's)."""
        snaps = dict(list_snapshots(run_dir))
        if step not in snaps:
            raise KuosanError(f"no post-hoc EMA snapshot of step {step} in {Path(run_dir) / SNAPSHOT_DIR}; save one "
                              "with every checkpoint")
        meta, tensors = _read_snapshot(snaps[step])
        if [round(g, 9) for g in meta["gammas"]] != [round(p.gamma, 9) for p in self.profiles]:
            raise KuosanError(f"{snaps[step]} holds profiles of σ_rel {meta['sigma_rels']}, not {self.sigma_rels}")
        for k, p in enumerate(self.profiles):
            p.module.load_state_dict({name[len(f"{k}/"):]: v for name, v in tensors.items()
                                      if name.startswith(f"{k}/")})
            p.t = meta["t"][k]
        for later, path in snaps.items():
            if later > step:
                path.unlink(missing_ok=True)


# --- after training -------------------------------------------------------------------------------

def list_snapshots(run_dir) -> list[tuple[int, Path]]:
    """(step, path) of a run's post-hoc EMA snapshots, oldest first."""
    folder = Path(run_dir) / SNAPSHOT_DIR
    found = [(int(m.group(1)), p) for p in folder.glob("snapshot-*.safetensors") if (m := _SNAPSHOT.match(p.name))]
    return sorted(found)


def _read_snapshot(path: Path, tensors: bool = True) -> tuple[dict, dict]:
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            raw = f.metadata() or {}
            if raw.get("format") != FORMAT:
                raise KuosanError(f"{path} is not a post-hoc EMA snapshot")
            meta = {"step": int(raw["step"]), **{k: json.loads(raw[k]) for k in ("t", "gammas", "sigma_rels")}}
            data = {k: f.get_tensor(k) for k in f.keys()} if tensors else {}
    except (OSError, ValueError, KeyError) as e:
        raise KuosanError(f"cannot read the post-hoc EMA snapshot {path}: {e}") from None
    return meta, data


def reconstruct(run_dir, sigma_rel: float, step: int | None = None) -> dict[str, torch.Tensor]:
    """The state dict of the power EMA of ``sigma_rel`` at ``step`` (default: the last snapshot's),
    reconstructed from the snapshots up to it (EDM2, Appendix C)."""
    snaps = [(s, p) for s, p in list_snapshots(run_dir) if step is None or s <= step]
    if not snaps:
        raise KuosanError(f"no post-hoc EMA snapshots{f' up to step {step}' if step else ''} in "
                          f"{Path(run_dir) / SNAPSHOT_DIR}; train with post-hoc EMA snapshots on")
    metas = [_read_snapshot(p, tensors=False)[0] for _, p in snaps]
    ts = [t for m in metas for t in m["t"]]
    gammas = [g for m in metas for g in m["gammas"]]
    x, _ = solve_coefficients(ts, gammas, max(ts), sigma_rel_to_gamma(sigma_rel))
    sums: dict[str, torch.Tensor] = {}
    dtypes: dict[str, torch.dtype] = {}
    k = 0
    for _, path in snaps:  # one snapshot in memory at a time; sums in float64 (the x_i alternate in sign)
        meta, tensors = _read_snapshot(path)
        for name, v in tensors.items():
            j, _, key = name.partition("/")
            if v.is_floating_point():
                term = v.double() * float(x[k + int(j)])
                sums[key] = sums[key] + term if key in sums else term
                dtypes[key] = v.dtype
            else:
                sums[key] = v  # integer buffers (counters): the newest snapshot's
        k += len(meta["t"])
    return {key: v.to(dtypes[key]) if key in dtypes else v for key, v in sums.items()}
