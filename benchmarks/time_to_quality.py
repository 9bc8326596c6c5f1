"""Time to quality: the model each recipe gives after 5, 10 and 20 CPU-minutes of training, on Fashion-MNIST.

    .venv/bin/python benchmarks/time_to_quality.py                      # all recipes (about 90 minutes, 2 cores)
    .venv/bin/python benchmarks/time_to_quality.py --recipes diffusers  # one recipe, merged into the results
    .venv/bin/python benchmarks/time_to_quality.py --replot             # the table and plot of saved results

Budgets are **CPU-minutes**: the training process's CPU time, all threads (``time.process_time``), with the
same number of threads for every recipe (default 2), so 20 CPU-minutes are about 10 minutes of a quiet 2-core
machine and a busy machine does not shorten anyone's budget. Sampling and scoring are not counted.

Recipes (unconditional, as the peers' examples are; kuosan conditional as an extra row):

- ``kuosan``: the demo's recipe (``--config demo``: UNet 32 channels, EDM, AdamW lr 2e-3, batch 64), scheduled
  by the clock as ``kuosan demo`` schedules it (learning rate decayed over the budget, ``train.clock cpu``,
  EDM2 power EMA σ_rel 0.14), one run per budget, with EDM2's post-hoc EMA snapshots (``train.posthoc_ema``):
  the rows ``kuosan, post-hoc EMA σ_rel S`` are reconstructions of other EMA lengths from the same run.
  Sampled by UniPC on the Karras grid, 20 steps (20 network evaluations: the lowest error at 20 evaluations in
  ``benchmarks/samplers.py``'s results).
- ``kuosan-cond``: the same, class-conditional (``kuosan demo``'s model), classes cycling when sampled.
- ``diffusers``: ``UNet2DModel`` (block widths 32, 64, 64, two layers a block, attention at 7×7: about
  kuosan's FLOPs) + ``DDPMScheduler`` (1,000 steps, linear betas, ε-prediction) + AdamW, with the defaults of
  diffusers' ``examples/unconditional_image_generation/train_unconditional.py``: lr 1e-4, betas (0.95, 0.999),
  weight decay 1e-6, eps 1e-8, 500 warm-up steps then cosine over 100 epochs, batch 16, gradient clipping 1,
  ``EMAModel`` (max decay 0.9999, warm-up inv_gamma 1, power 3/4). Sampled with
  ``DPMSolverMultistepScheduler`` (from the DDPM config), 20 steps, EMA weights, and with ``DDIMScheduler`` from
  the same config (row ``diffusers, DDIM``): DPM-Solver++ does not clip its x0 predictions as the DDPM and DDIM
  schedulers do (``clip_sample``), and diverged on these checkpoints.
- ``lucidrains``: ``denoising_diffusion_pytorch``'s ``Unet(dim=32, dim_mults=(1, 2, 2))`` + ``GaussianDiffusion``
  (its defaults: 1,000 steps, sigmoid schedule, v-prediction) with its ``Trainer``'s defaults: Adam lr 1e-4,
  betas (0.9, 0.99), batch 16, horizontal flips, gradient clipping 1, ``ema_pytorch.EMA`` decay 0.995 every
  10 steps. The Trainer itself reads an image folder through torchvision, which cannot load beside the CPU
  torch here, so this script runs the same steps with the same pieces. Sampled by its DDIM with
  ``sampling_timesteps=20``, EMA weights.

The peers train once to the longest budget and their EMA weights are saved as each budget is crossed (their
schedules are fixed by steps and epochs, not by a budget). 1,000 samples a checkpoint (seeds 0-999); FD on the
shipped ``fmnist-cnn`` classifier's 128 features against the 10,000 test images; precision and recall
(Kynkäänniemi et al. 2019, k = 3) against 1,000 test images; the floor is 1,000 *training* images scored the
same way. Results: ``benchmarks/results/time_to_quality.json`` (each finished run merged in as it ends) and
``time_to_quality.png``.

Peers (optional; their torchvision requirement would pull a CUDA torch, so without dependencies):
    .venv/bin/pip install diffusers
    .venv/bin/pip install --no-deps denoising-diffusion-pytorch==2.3.4 ema-pytorch==0.8.3 einops==0.8.2 \\
        accelerate==1.15.0 pytorch-fid==0.3.0
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TQDM_DISABLE", "1")  # lucidrains' sampling loop wraps tqdm

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
sys.path.insert(0, str(HERE))

# Changes to kuosan's recipe, each measured against it before it is kept (``--recipes kuosan:lr4e-3,...``):
# config overrides on top of the demo recipe, unconditional, the same clock schedule.
VARIANTS = {
    "lr4e-3": {"train.lr": 4e-3},                                     # the learning rate, doubled
    "lr1e-3": {"train.lr": 1e-3},                                     # and halved
    "batch32": {"train.batch": 32},                                   # twice the steps of half the batch
    "batch128": {"train.batch": 128, "train.lr": 2.83e-3},            # half the steps, lr by the square root
    "pmean-0.6": {"diffusion.p_mean": -0.6},                          # noise levels: more weight to high σ
    "pmean-1.8": {"diffusion.p_mean": -1.8},                          # and to low σ
    "width24": {"model.base_channels": 24},                           # a narrower network, more steps
    "width48": {"model.base_channels": 48},                           # a wider one, fewer steps
}
RECIPES = ("kuosan", "kuosan-cond", "diffusers", "lucidrains", *(f"kuosan:{v}" for v in VARIANTS))
POSTHOC_SIGMA_RELS = (0.05, 0.10, 0.20)
NFE = 20
KUOSAN_SAMPLER = {"sampler": "unipc", "steps": NFE, "schedule": "karras"}


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--recipes", default="kuosan,diffusers,lucidrains,kuosan-cond",
                    help=f"comma-separated, of {', '.join(RECIPES)} (default all)")
    ap.add_argument("--budgets", default="5,10,20", help="CPU-minutes of training (default 5,10,20)")
    ap.add_argument("--cond-budgets", default="10", help="budgets of kuosan-cond (default 10)")
    ap.add_argument("--threads", type=int, default=2, help="threads of every process (default 2)")
    ap.add_argument("--n", type=int, default=1000, help="samples scored a checkpoint (default 1000)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--posthoc", default=",".join(map(str, POSTHOC_SIGMA_RELS)),
                    help="σ_rel reconstructed from kuosan's post-hoc EMA snapshots ('' for none)")
    ap.add_argument("--runs", default=None, help="where the runs go (default: a temporary directory)")
    ap.add_argument("--out", default=str(RESULTS / "time_to_quality.json"))
    ap.add_argument("--plot", default=str(RESULTS / "time_to_quality.png"))
    ap.add_argument("--replot", action="store_true", help="print and plot --out's results; train nothing")
    ap.add_argument("--fresh", action="store_true", help="start --out anew instead of merging into it")
    ap.add_argument("--reuse", action="store_true",
                    help="peers: keep the checkpoints in --runs and the rows in --out; train and score only what is missing")
    # internal: one training process
    ap.add_argument("--train-peer", choices=("diffusers", "lucidrains"), help=argparse.SUPPRESS)
    ap.add_argument("--run", help=argparse.SUPPRESS)
    return ap.parse_args(argv)


def _floats(text: str) -> list[float]:
    return [float(x) for x in text.split(",") if x.strip()]


# --- the peers' training, in their own process ---------------------------------------------------------------

class Diffusers:
    """diffusers' train_unconditional recipe, scaled to 28×28×1 (see the module docstring)."""

    batch = 16

    def __init__(self, n_images: int):
        import torch
        from diffusers import DDPMScheduler, UNet2DModel
        from diffusers.optimization import get_scheduler
        from diffusers.training_utils import EMAModel

        self.model = UNet2DModel(sample_size=28, in_channels=1, out_channels=1, block_out_channels=(32, 64, 64),
                                 layers_per_block=2, down_block_types=("DownBlock2D", "DownBlock2D", "AttnDownBlock2D"),
                                 up_block_types=("AttnUpBlock2D", "UpBlock2D", "UpBlock2D"), norm_num_groups=32)
        self.scheduler = DDPMScheduler(num_train_timesteps=1000, beta_schedule="linear", prediction_type="epsilon")
        self.opt = torch.optim.AdamW(self.model.parameters(), lr=1e-4, betas=(0.95, 0.999), weight_decay=1e-6,
                                     eps=1e-8)
        epochs, per_epoch = 100, -(-n_images // self.batch)
        self.lr = get_scheduler("cosine", optimizer=self.opt, num_warmup_steps=500,
                                num_training_steps=epochs * per_epoch)
        self.ema = EMAModel(self.model.parameters(), decay=0.9999, use_ema_warmup=True, inv_gamma=1.0, power=0.75,
                            model_cls=UNet2DModel, model_config=self.model.config)
        self.model.train()

    def step(self, x_uint8, gen):
        import torch
        import torch.nn.functional as F

        x = x_uint8.float() / 127.5 - 1
        noise = torch.randn(x.shape, generator=gen)
        t = torch.randint(0, self.scheduler.config.num_train_timesteps, (len(x),), generator=gen)
        pred = self.model(self.scheduler.add_noise(x, noise, t), t).sample
        loss = F.mse_loss(pred.float(), noise.float())
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), 1.0)
        self.opt.step()
        self.lr.step()
        self.opt.zero_grad(set_to_none=True)
        self.ema.step(self.model.parameters())
        return loss.item()

    def ema_state(self) -> dict:
        import copy

        shadow = copy.deepcopy(self.model)
        self.ema.copy_to(shadow.parameters())
        return shadow.state_dict()


class Lucidrains:
    """denoising-diffusion-pytorch's Unet + GaussianDiffusion with its Trainer's defaults."""

    batch = 16

    def __init__(self, n_images: int):
        import torch
        from _tv_shim import shim_torchvision

        shim_torchvision()
        from denoising_diffusion_pytorch import GaussianDiffusion, Unet
        from ema_pytorch import EMA

        self.diffusion = GaussianDiffusion(Unet(dim=32, dim_mults=(1, 2, 2), channels=1), image_size=28,
                                           timesteps=1000, sampling_timesteps=NFE)
        self.opt = torch.optim.Adam(self.diffusion.parameters(), lr=1e-4, betas=(0.9, 0.99))
        self.ema = EMA(self.diffusion, beta=0.995, update_every=10)
        self.diffusion.train()

    def step(self, x_uint8, gen):
        import torch

        x = x_uint8.float() / 255  # GaussianDiffusion normalises [0, 1] to [-1, 1] itself
        flip = torch.rand(len(x), generator=gen) < 0.5  # the Trainer's augment_horizontal_flip
        x = torch.where(flip[:, None, None, None], x.flip(-1), x)
        loss = self.diffusion(x)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.diffusion.parameters(), 1.0)
        self.opt.step()
        self.opt.zero_grad(set_to_none=True)
        self.ema.update()
        return loss.item()

    def ema_state(self) -> dict:
        return self.ema.ema_model.state_dict()


PEERS = {"diffusers": Diffusers, "lucidrains": Lucidrains}


def train_peer(name: str, run: Path, budgets: list[float], seed: int, threads: int) -> None:
    """Train ``name`` until the longest budget; save its EMA weights as each budget is crossed."""
    import torch
    from safetensors.torch import save_file

    from kuosan.data import load_dataset

    torch.set_num_threads(threads)
    torch.manual_seed(seed)
    images = load_dataset("fashion-mnist", "train").images
    peer = PEERS[name](len(images))
    gen = torch.Generator().manual_seed(seed + 1)
    run.mkdir(parents=True, exist_ok=True)
    pending, step, epoch, perm, pos, paused = sorted(budgets), 0, 0, None, 0, 0.0
    cpu0, wall0, log = time.process_time(), time.time(), []
    while pending:
        if perm is None or pos + peer.batch > len(perm):  # shuffled epochs, as their data loaders do
            perm, pos = torch.randperm(len(images), generator=torch.Generator().manual_seed(seed * 7919 + epoch)), 0
            epoch += 1
        loss = peer.step(images[perm[pos:pos + peer.batch]], gen)
        pos, step = pos + peer.batch, step + 1
        cpu = time.process_time() - cpu0 - paused
        if step % 50 == 0:
            log.append({"step": step, "loss": loss, "cpu_s": cpu, "wall_s": time.time() - wall0})
        if cpu >= pending[0] * 60:
            t = time.process_time()
            minutes = pending.pop(0)
            save_file({k: v.contiguous() for k, v in peer.ema_state().items()}, str(run / f"{minutes:g}min.safetensors"))
            (run / f"{minutes:g}min.json").write_text(json.dumps(
                {"steps": step, "images": step * peer.batch, "cpu_s": cpu, "wall_s": time.time() - wall0 - paused,
                 "load_average": list(os.getloadavg())}))
            paused += time.process_time() - t
            print(f"{name}: {minutes:g} CPU-min at step {step}", flush=True)
    (run / "log.json").write_text(json.dumps(log))


# The peers' few-step samplers, each as its library configures it for this model. diffusers' DPM-Solver++ from
# the DDPM config does not clip its x0 predictions (DDPMScheduler and DDIMScheduler do: clip_sample) and diverged
# on these checkpoints (values of ±50), so DDIM from the same config, 20 steps, is measured beside it.
PEER_SAMPLERS = {"diffusers": ("dpm-solver++", "ddim"), "lucidrains": ("ddim",)}


def _peer_label(name: str, sampler: str) -> str:
    return name if sampler == PEER_SAMPLERS[name][0] else f"{name}, {sampler.upper()}"


def sample_peer(name: str, path: Path, n: int, seed: int, sampler: str | None = None):
    """n uint8 images [N, 1, 28, 28] from a saved peer checkpoint with its library's 20-step ``sampler``."""
    import torch
    from safetensors.torch import load_file

    weights = load_file(str(path))
    out, batch = [], 250
    if name == "diffusers":
        from diffusers import DDIMScheduler, DPMSolverMultistepScheduler

        peer = Diffusers(1)
        model = peer.model
        model.load_state_dict(weights)
        model.eval()
        kind = DDIMScheduler if sampler == "ddim" else DPMSolverMultistepScheduler
        sched = kind.from_config(peer.scheduler.config)
        for i in range(0, n, batch):
            x = torch.randn(min(batch, n - i), 1, 28, 28, generator=torch.Generator().manual_seed(seed + i))
            sched.set_timesteps(NFE)
            with torch.inference_mode():
                for t in sched.timesteps:
                    x = sched.step(model(x, t).sample, t, x).prev_sample
            out.append(((x / 2 + 0.5).clamp(0, 1) * 255).round().to(torch.uint8))
    else:
        peer = Lucidrains(1)
        peer.diffusion.load_state_dict(weights)
        peer.diffusion.eval()
        for i in range(0, n, batch):
            torch.manual_seed(seed + i)
            with torch.inference_mode():
                x = peer.diffusion.sample(batch_size=min(batch, n - i))
            out.append((x.clamp(0, 1) * 255).round().to(torch.uint8))
    return torch.cat(out)


# --- kuosan ----------------------------------------------------------------------------------------------------

def _kuosan_overrides(run: Path, conditional: bool, seed: int, variant: str = "") -> dict:
    return {"train.data": "fashion-mnist", "train.conditional": conditional, "train.seed": seed,
            "train.out": str(run), "train.clock": "cpu", "train.posthoc_ema": True, "train.sample_every": 0,
            **VARIANTS.get(variant, {})}


def train_kuosan(run: Path, minutes: float, conditional: bool, seed: int, threads: int, variant: str = "") -> dict:
    """One clock-scheduled run of the demo recipe (changed by ``VARIANTS[variant]``) through ``kuosan train``
    (its own process)."""
    import torch

    from kuosan.config import load_config, resolve_config_path
    from kuosan.demo import _time_schedule
    from kuosan.training.loop import train

    torch.set_num_threads(threads)
    overrides = _kuosan_overrides(run, conditional, seed, variant)
    with tempfile.TemporaryDirectory(prefix="ttq-probe-") as tmp:  # CPU seconds a step, for the warm-up
        probe = load_config(None, {**overrides, "train.out": tmp, "train.steps": 12, "train.log_every": 12,
                                   "train.checkpoint_every": 0, "train.posthoc_ema": False,
                                   "sample.sampler": "euler", "sample.steps": 1}, base=resolve_config_path("demo"))
        train(probe, progress=False, log=lambda *a: None)
        cpu_per_step = json.loads((Path(tmp) / "metrics.jsonl").read_text().splitlines()[-1])["time"] / 12
    estimate = max(50, int(minutes * 60 / cpu_per_step))
    base = load_config(None, overrides, base=resolve_config_path("demo"))
    overrides.update(_time_schedule(estimate, minutes * 60, base.train.warmup_steps))
    overrides["train.checkpoint_every"] = max(10, estimate // 12)  # about 12 post-hoc EMA snapshots a run
    cmd = [sys.executable, "-m", "kuosan", "train", "--config", "demo"]
    cmd += [f"--{k}={json.dumps(v) if isinstance(v, bool) else v}" for k, v in overrides.items()]
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    t0, load = time.time(), list(os.getloadavg())
    subprocess.run(cmd, check=True, env=env, stdout=subprocess.DEVNULL)
    from kuosan.checkpoint import resolve_checkpoint
    from kuosan.records import read_train_state

    state = read_train_state(resolve_checkpoint(run))
    return {"steps": state.step, "images": state.step * base.train.batch, "cpu_s": round(float(state.elapsed), 1),
            "wall_s": round(time.time() - t0, 1), "load_average": load, "estimate_steps": estimate,
            "command": " ".join(cmd[1:])}


def sample_kuosan(run: Path, n: int, seed: int, sigma_rel: float | None = None):
    import torch

    import kuosan
    from kuosan.training.posthoc_ema import reconstruct

    pipe = kuosan.load(run, device="cpu")
    if sigma_rel is not None:
        pipe.precond.load_state_dict(reconstruct(run, sigma_rel))
    res = pipe.sample(list(range(seed, seed + n)), batch_size=250, **KUOSAN_SAMPLER)
    return torch.as_tensor(res.images).permute(0, 3, 1, 2).contiguous()


# --- scoring ---------------------------------------------------------------------------------------------------

def reference(n: int) -> dict:
    from gan_vs_diffusion import _load_real, describe, score

    fd_ref = describe("fashion-mnist", _load_real("fashion-mnist", "test", 10000, seed=0))["features"]
    pr_ref = describe("fashion-mnist", _load_real("fashion-mnist", "test", n, seed=2))["features"]
    floor = score("fashion-mnist", describe("fashion-mnist", _load_real("fashion-mnist", "train", n, seed=1)),
                  fd_ref, pr_ref)
    return {"fd": fd_ref, "pr": pr_ref, "floor": floor}


def score_images(images, ref: dict) -> dict:
    from gan_vs_diffusion import describe, score

    s = score("fashion-mnist", describe("fashion-mnist", images), ref["fd"], ref["pr"])
    return {k: s[k] for k in ("fd", "precision", "recall", "class_entropy", "class_coverage")}


# --- the whole benchmark ---------------------------------------------------------------------------------------

def _load_results(path: Path, fresh: bool) -> dict:
    if path.exists() and not fresh:
        return json.loads(path.read_text())
    return {"rows": {}}


def _save(results: dict, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(results, indent=2))
    tmp.replace(path)


def _timed_sample(fn, *args):
    cpu, wall = time.process_time(), time.time()
    images = fn(*args)
    return images, {"sample_cpu_s": round(time.process_time() - cpu, 1), "sample_wall_s": round(time.time() - wall, 1),
                    "sample_images_per_s": round(len(images) / max(1e-9, time.time() - wall), 1)}


def run_all(args) -> dict:
    import platform

    import torch

    from kuosan.runtime import openmp_defaults

    torch.set_num_threads(args.threads)
    omp = {k: os.environ.get(k) for k in ("OMP_WAIT_POLICY", "OMP_NUM_THREADS")}
    ref = reference(args.n)  # imports gan_vs_diffusion, which sets OpenMP defaults for its own single-thread runs
    for k, v in omp.items():  # so that every training process here starts with this process's settings
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v
    out = Path(args.out)
    results = _load_results(out, args.fresh)
    results.update(threads=args.threads, n=args.n, nfe=NFE, torch=torch.__version__, platform=platform.platform(),
                   cpu=platform.processor() or platform.machine(), omp=openmp_defaults(),
                   omp_wait_policy=os.environ.get("OMP_WAIT_POLICY", "(default)"))
    results["floor"] = ref["floor"]
    _save(results, out)
    root = Path(args.runs or tempfile.mkdtemp(prefix="ttq-"))
    budgets, sigma_rels = _floats(args.budgets), _floats(args.posthoc)
    for recipe in [r.strip() for r in args.recipes.split(",") if r.strip()]:
        if recipe not in RECIPES:
            raise SystemExit(f"--recipes: unknown recipe {recipe!r}; choose from {', '.join(RECIPES)}")
        if recipe in PEERS:
            run = root / recipe
            trained = all((run / f"{m:g}min.json").is_file() for m in budgets)
            if not (args.reuse and trained):
                print(f"{recipe}: training to {max(budgets):g} CPU-minutes", flush=True)
                env = {**os.environ, "OMP_NUM_THREADS": str(args.threads)}
                subprocess.run([sys.executable, __file__, "--train-peer", recipe, "--run", str(run), "--budgets",
                                args.budgets, "--threads", str(args.threads), "--seed", str(args.seed)], check=True,
                               env=env)
            for sampler in PEER_SAMPLERS[recipe]:
                label = _peer_label(recipe, sampler)
                for minutes in budgets:
                    if args.reuse and f"{label}@{minutes:g}" in results["rows"]:
                        continue
                    info = json.loads((run / f"{minutes:g}min.json").read_text())
                    images, speed = _timed_sample(sample_peer, recipe, run / f"{minutes:g}min.safetensors", args.n,
                                                  0, sampler)
                    row = {"recipe": label, "sampler": sampler, "minutes": minutes, **info, **speed,
                           **score_images(images, ref)}
                    results["rows"][f"{label}@{minutes:g}"] = row
                    _save(results, out)
                    print(_line(row), flush=True)
            continue
        conditional, variant = recipe == "kuosan-cond", recipe.partition(":")[2]
        for minutes in (_floats(args.cond_budgets) if conditional else budgets):
            run = root / f"{recipe.replace(':', '-')}-{minutes:g}min"
            print(f"{recipe}: training for {minutes:g} CPU-minutes", flush=True)
            info = train_kuosan(run, minutes, conditional, args.seed, args.threads, variant)
            images, speed = _timed_sample(sample_kuosan, run, args.n, 0)
            row = {"recipe": recipe, "minutes": minutes, **info, **speed, **score_images(images, ref)}
            results["rows"][f"{recipe}@{minutes:g}"] = row
            _save(results, out)
            print(_line(row), flush=True)
            for s in ([] if conditional or variant else sigma_rels):
                images, speed = _timed_sample(sample_kuosan, run, args.n, 0, s)
                name = f"kuosan, post-hoc EMA σ_rel {s:g}"
                row = {"recipe": name, "minutes": minutes, **info, **speed, **score_images(images, ref)}
                results["rows"][f"{name}@{minutes:g}"] = row
                _save(results, out)
                print(_line(row), flush=True)
    return results


def _line(row: dict) -> str:
    return (f"{row['recipe']:<32} {row['minutes']:>5g} CPU-min  steps {row['steps']:>6}  FD {row['fd']:8.3f}  "
            f"precision {row['precision']:.3f}  recall {row['recall']:.3f}")


def table(results: dict) -> str:
    rows = results["rows"]
    budgets = sorted({r["minutes"] for r in rows.values()})
    names = list(dict.fromkeys(r["recipe"] for r in rows.values()))
    order = {n: i for i, n in enumerate(("kuosan", "diffusers", "diffusers, DDIM", "lucidrains", "kuosan-cond"))}
    names.sort(key=lambda n: (order.get(n, 10), n))
    head = "| recipe | " + " | ".join(f"{b:g} CPU-min: FD / precision / recall (steps)" for b in budgets) + " |"
    lines = [head, "|---" * (len(budgets) + 1) + "|"]
    for n in names:
        cells = []
        for b in budgets:
            r = rows.get(f"{n}@{b:g}")
            cells.append(f"{r['fd']:.2f} / {r['precision']:.2f} / {r['recall']:.2f} ({r['steps']})" if r else "")
        lines.append(f"| {n} | " + " | ".join(cells) + " |")
    f = results.get("floor")
    if f:
        lines.append(f"| real training images (floor) | {f['fd']:.2f} / {f['precision']:.2f} / {f['recall']:.2f} |"
                     + " |" * (len(budgets) - 1))
    return "\n".join(lines)


def plot(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4), dpi=120)
    by = {}
    for r in results["rows"].values():
        by.setdefault(r["recipe"], []).append((r["minutes"], r["fd"]))
    for name, pts in by.items():
        pts.sort()
        style = ":" if "post-hoc" in name else "-"
        ax.plot(*zip(*pts), style, marker="o", ms=4, label=name)
    if results.get("floor"):
        ax.axhline(results["floor"]["fd"], color="grey", lw=1, ls="--", label="real training images")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xticks(sorted({r["minutes"] for r in results["rows"].values()}))
    ax.get_xaxis().set_major_formatter(matplotlib.ticker.ScalarFormatter())
    ax.get_xaxis().set_minor_formatter(matplotlib.ticker.NullFormatter())
    ax.set_xlabel(f"training CPU-minutes ({results.get('threads', 2)} threads)")
    ax.set_ylabel("FD, fmnist-cnn features (lower is better)")
    ax.set_title(f"Fashion-MNIST, unconditional, {results.get('nfe', NFE)} network evaluations a sample")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.train_peer:
        train_peer(args.train_peer, Path(args.run), _floats(args.budgets), args.seed, args.threads)
        return 0
    results = json.loads(Path(args.out).read_text()) if args.replot else run_all(args)
    print(table(results))
    plot(results, Path(args.plot))
    print(f"results: {args.out}\nplot: {args.plot}")
    return 0


if __name__ == "__main__":
    from kuosan.runtime import openmp_defaults

    openmp_defaults()  # before torch loads OpenMP; the same for every recipe
    sys.exit(main())
