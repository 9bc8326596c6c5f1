"""The training loop: one function, read top to bottom.

Data order, noise and dropout are all derived from the seed, and their generator states are saved
with every checkpoint, so a resumed run continues exactly as an uninterrupted one would.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import os
import signal
import sys
import threading
import time
from pathlib import Path

import torch

from kuosan.config import Config, config_to_dict
from kuosan.errors import KuosanError
from kuosan.checkpoint import (atomic_write_text, decode_rng, encode_rng, list_checkpoints, read_checkpoint,
                               resolve_checkpoint, save_checkpoint)
from kuosan.runtime import resolve_device
from kuosan.training.distributed import ShardedStep, init_distributed, setup_backends
from kuosan.training.ema import EMA

__all__ = ["train", "batch_indices", "lr_at"]


def _quiet(*args, **kwargs) -> None:
    """The log of ranks other than 0: they train, rank 0 reports."""


def batch_indices(step: int, batch: int, n: int, seed: int) -> torch.Tensor:
    """Indices of the images in step ``step``'s batch: epochs are seeded permutations of the data,
    walked in order, so the position in the data is a function of the step alone."""
    start, out = step * batch, []
    while len(out) < batch:
        epoch, offset = divmod(start, n)
        perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed * 1_000_003 + epoch))
        take = perm[offset:offset + batch - len(out)]
        out.extend(take.tolist())
        start += len(take)
    return torch.tensor(out)


def lr_at(step: int, cfg) -> float:
    """Linear warm-up to ``lr``, then constant, cosine or linear decay to 5% at ``steps``."""
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    if cfg.lr_decay == "constant":
        return cfg.lr
    progress = min(1.0, (step - cfg.warmup_steps) / max(1, cfg.steps - cfg.warmup_steps))
    shape = 0.5 * (1 + math.cos(math.pi * progress)) if cfg.lr_decay == "cosine" else 1 - progress
    return cfg.lr * (0.05 + 0.95 * shape)


def _class_grid_labels(num_classes: int, per_class: int) -> list[int] | None:
    if num_classes == 0:
        return None
    return [c for c in range(num_classes) for _ in range(per_class)]


def sample_grid(precond, cfg: Config, spec: dict, path: Path, per_class: int = 10, decoder=None) -> Path:
    """One row per class (or an 8×8 grid when unconditional), fixed seeds, EMA weights; ``decoder``
    (a :class:`kuosan.latent.LatentAutoencoder`) turns a latent model's samples into pixels."""
    from kuosan.images import make_grid, save_png, to_uint8_nhwc
    from kuosan.sampling import generate

    f = spec["fields"]
    labels = _class_grid_labels(f["num_classes"], per_class)
    n = len(labels) if labels else 64
    x = generate(precond, shape=(f["in_channels"], f["resolution"], f["resolution"]), seeds=range(n),
                 class_labels=labels, sampler=cfg.sample.sampler, steps=cfg.sample.steps,
                 schedule=cfg.sample.schedule, rho=cfg.sample.rho, guidance=cfg.sample.guidance,
                 null_label=f["num_classes"] or None, batch_size=128)
    pics = to_uint8_nhwc(x) if decoder is None else decoder.decode_nhwc(x)
    grid = make_grid(pics, nrow=per_class if labels else 8)
    return save_png(grid, path, scale=2)


def _check_run_dir(out: Path, resume: bool, log) -> bool:
    """True when there is a checkpoint to resume from. ``--resume`` before the first checkpoint (a
    run killed early) starts from step 0, so resuming after a crash always works."""
    if out.exists() and not out.is_dir():
        raise KuosanError(f"--out {out} is a file; give a directory for the run")
    has_checkpoint = bool(list_checkpoints(out))
    if has_checkpoint and not resume:
        raise KuosanError(f"{out} already holds a training run; pass --resume to continue it, "
                          "or choose another --out")
    if resume and not has_checkpoint:
        log(f"--resume: no checkpoint in {out} yet, starting from step 0")
    return has_checkpoint


def _spec_difference(saved: dict, now: dict) -> str:
    """What differs between two network specs, for the error message."""
    now = json.loads(json.dumps(now))  # tuples as the checkpoint's JSON has them: lists
    if not isinstance(saved, dict) or saved.get("kind") != now["kind"]:
        return f"network {saved.get('kind') if isinstance(saved, dict) else None!r} there, {now['kind']!r} now"
    a, b = saved.get("fields", {}), now["fields"]
    diffs = [f"{k} {a.get(k)!r} there, {b.get(k)!r} now" for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)]
    return "; ".join(diffs) or "the network differs"


def _nonfinite_message(t, step: int, nonfinite: int, checkpoints: list[Path]) -> str:
    """One line: what happened, the likely cause, and what was kept."""
    if t.bf16:
        cause = (f"bfloat16 overflow (run without --bf16) or a learning rate too high for this model "
                 f"(--lr {t.lr:g}; try {t.lr / 4:g})")
    else:
        cause = f"a learning rate too high for this model (--lr {t.lr:g}; try {t.lr / 4:g})"
    if t.grad_clip <= 0:
        cause += ", with gradient clipping off (set --grad_clip 1)"
    kept = (f"the last good checkpoint {checkpoints[-1].name} is unchanged; fix the cause and pass --resume"
            if checkpoints else "no checkpoint was written; fix the cause and start again")
    return (f"training stopped at step {step}: {nonfinite} non-finite losses or gradients "
            f"(train.max_nonfinite = {t.max_nonfinite}); likely cause: {cause}; {kept}")


def _truncate_log(path: Path, step: int) -> None:
    """Keep the metrics lines up to ``step`` (a killed run may have written later ones, or half a line)."""
    kept = []
    for line in path.read_text(errors="replace").splitlines():
        try:
            rec = json.loads(line)
        except ValueError:
            continue
        if isinstance(rec, dict) and isinstance(rec.get("step"), int) and rec["step"] <= step:
            kept.append(line)
    atomic_write_text(path, "".join(line + "\n" for line in kept))


def _run_config(cfg: Config, spec: dict, data) -> dict:
    out = {"format": "kuosan-checkpoint", "version": 1, "network": spec,
           **config_to_dict(cfg),
           "data": {"spec": cfg.train.data, "class_names": list(data.class_names),
                    "resolution": data.resolution, "channels": data.channels,
                    "num_classes": spec["fields"]["num_classes"]}}
    if getattr(data, "is_latent", False):  # path, checksum and scale of the autoencoder that decodes samples
        out["autoencoder"] = data.autoencoder
    return out


def train(cfg: Config, *, resume: bool = False, progress: bool = True, log=print) -> Path:
    """Train a model as ``cfg`` says; returns the run directory (``cfg.train.out``)."""
    from kuosan.data import load_dataset, to_model_range
    from kuosan.diffusion.objectives import loss_for
    from kuosan.finetune import finish_transfer, prepare_transfer
    from kuosan.model import build_model, network_spec
    from kuosan.nets.build import count_flops, count_parameters
    from kuosan.nets.layout import prepare_model
    from kuosan.training.optim import adamw, match_state_layout

    t = cfg.train
    out = Path(t.out)
    # Under torchrun: one process per device, rank 0 alone reads and writes the run (see distributed.py).
    ctx = init_distributed(resolve_device(t.device))
    device, main = ctx.device, ctx.is_main
    setup_backends(device, t.tf32)
    if not main:
        log = _quiet
    resume = ctx.from_main(lambda: _check_run_dir(out, resume, log))
    torch.manual_seed(t.seed)  # network initialisation and dropout

    # --- data, held in memory as uint8 on the device -------------------------------------------
    if t.autoencoder:  # latent diffusion (Rombach et al. 2022): the data set's scaled latents, encoded once
        from kuosan.latent import encode_dataset

        data = encode_dataset(t.autoencoder, t.data, "train", root=t.data_root, max_images=t.max_images,
                              device=device, log=log)
    else:
        data = load_dataset(t.data, "train", root=t.data_root, resolution=t.resolution, channels=t.channels,
                            max_images=t.max_images)
    scale = (lambda x: x) if getattr(data, "is_latent", False) else to_model_range  # latents: already scaled
    images, labels = data.images.to(device), data.labels.to(device)
    num_classes = data.num_classes if t.conditional else 0

    # --- model, EMA, optimiser ------------------------------------------------------------------
    spec = network_spec(cfg, channels=data.channels, resolution=data.resolution, num_classes=num_classes)
    try:
        precond = build_model(spec, cfg.diffusion).to(device)
        # transfer learning: parent weights, LoRA adapters, frozen parameters (kuosan.finetune)
        precond, spec, transfer = prepare_transfer(precond, spec, cfg, num_classes=num_classes, resume=resume,
                                                   device=device, log=log)
        with torch.random.fork_rng(devices=[]):  # a forward pass would draw dropout from the training RNG
            flops = count_flops(precond.net, data.channels, data.resolution, 1, num_classes)
    except (ValueError, RuntimeError, AssertionError, TypeError) as e:  # settings no network can take
        raise KuosanError(f"the model settings cannot build a {spec['kind']} for {data.channels}x{data.resolution}x"
                          f"{data.resolution} images: {str(e).splitlines()[0] if str(e) else type(e).__name__}; "
                          "check --model.*") from None
    prepare_model(precond)  # UNets compute in channels_last (faster convolutions; same keys and outputs)
    ema = EMA(precond, t.ema_decay)  # a copy: channels_last too
    trainable = [p for p in precond.parameters() if p.requires_grad]  # fine-tuning may freeze some
    opt = adamw(trainable, lr=t.lr, betas=tuple(t.betas), weight_decay=t.weight_decay)
    objective = loss_for(precond)
    obj_kw = ({"p_mean": cfg.diffusion.p_mean, "p_std": cfg.diffusion.p_std} if cfg.diffusion.precond == "edm"
              else {"min_snr_gamma": cfg.diffusion.min_snr_gamma} if cfg.diffusion.precond != "flow" else {})
    noise_gen = torch.Generator(device="cpu").manual_seed(t.seed + 1)
    run_config = {**_run_config(cfg, spec, data), **transfer}
    decoder = None
    if getattr(data, "is_latent", False):
        from kuosan.latent import load_autoencoder

        decoder = load_autoencoder(data.autoencoder["path"], device=device)
    start_step, nonfinite, elapsed_before = 0, 0, 0.0
    window_loss, window_n = 0.0, 0  # the metrics line's running mean, saved so a resume continues it

    if resume:
        def read():
            found = resolve_checkpoint(out, require_state=True)
            return found, read_checkpoint(found, training_state=True)

        ckpt, saved = ctx.from_main(read)  # sent to the other ranks: no shared file system needed
        if saved["config"].get("network") != json.loads(json.dumps(spec)):
            raise KuosanError(f"cannot resume {out}: its checkpoint {ckpt.name} has another architecture "
                              f"({_spec_difference(saved['config'].get('network'), spec)}); drop the changed "
                              "options or choose another --out")
        st = saved["state"]
        try:
            precond.load_state_dict(saved["model"])
            ema.load_state_dict(saved["ema"] if saved["ema"] is not None else saved["model"])
            if saved["optimizer"] is None:
                raise KeyError("optimizer.safetensors")
            opt.load_state_dict(saved["optimizer"])
            match_state_layout(opt)  # channels_last weights, NCHW moments on disk (see kuosan.training.optim.adamw)
            start_step, nonfinite, elapsed_before = int(st["step"]), int(st["nonfinite"]), float(st["elapsed"])
            window_loss, window_n = float(st.get("window_loss", 0.0)), int(st.get("window_n", 0))
            noise_gen.set_state(decode_rng(st["rng_noise"]))
            torch.set_rng_state(decode_rng(st["rng_torch"]))
            if device.type == "cuda" and "rng_cuda" in st:
                torch.cuda.set_rng_state(decode_rng(st["rng_cuda"]), device)
        except (KeyError, ValueError, TypeError, RuntimeError) as e:
            raise KuosanError(f"cannot resume from {ckpt}: its training state does not fit this run "
                              f"({str(e).splitlines()[0] if str(e) else type(e).__name__})") from None
        log(f"resuming {out} from step {start_step} ({ckpt.name})")

    n_params = count_parameters(precond)
    log(f"data: {data.name}, {len(data)} images {data.channels}x{data.resolution}x{data.resolution}, "
        f"{data.num_classes} classes | model: {spec['kind']}, {n_params / 1e6:.2f} M parameters, "
        f"{flops / 1e9:.3f} GFLOP per image per forward | device: {device}"
        f"{ctx.describe(t.batch, t.batch_per_device)}")

    def prepare_out() -> None:
        try:
            out.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise KuosanError(f"cannot create --out {out}: {e.strerror or e}") from None
        for leftover in out.glob(".*.tmp[0-9]*"):  # half-written metrics.jsonl/config.json of a killed run
            leftover.unlink(missing_ok=True)
        atomic_write_text(out / "config.json", json.dumps(run_config, indent=2))

    ctx.from_main(prepare_out)

    # A fixed held-out batch (same images, same noise every time) to compare raw and EMA weights.
    val_gen = torch.Generator().manual_seed(t.seed + 2)
    val_idx = torch.randperm(len(data), generator=val_gen)[:min(64, len(data))]
    val_x0, val_labels = scale(images[val_idx]), labels[val_idx] if num_classes else None

    def val_loss(model) -> float:
        model.eval()
        with torch.no_grad(), torch.random.fork_rng(devices=[]):
            g = torch.Generator().manual_seed(t.seed + 3)
            value = float(objective(model, val_x0, val_labels, generator=g, **obj_kw).mean())
        precond.train()
        return value

    def checkpoint(step: int) -> Path:
        state = {"nonfinite": nonfinite, "elapsed": elapsed_before + (time.time() - t0),
                 "rng_noise": encode_rng(noise_gen.get_state()), "rng_torch": encode_rng(torch.get_rng_state()),
                 "seed": t.seed, "data_position": step * t.batch,
                 "window_loss": window_loss, "window_n": window_n}
        if device.type == "cuda":
            state["rng_cuda"] = encode_rng(torch.cuda.get_rng_state(device))
        return save_checkpoint(out, step, config=run_config, model=precond.state_dict(), ema=ema.state_dict(),
                               optimizer=opt, state=state, keep=t.keep_checkpoints)

    log_path = out / "metrics.jsonl"
    if main and not resume and log_path.exists():
        log_path.unlink()
    elif main and resume and log_path.exists():  # drop lines written after the checkpoint we resume from
        _truncate_log(log_path, start_step)
    log_file = open(log_path if main else os.devnull, "a")

    autocast = (torch.autocast(device.type, dtype=torch.bfloat16) if t.bf16 else contextlib.nullcontext())
    if t.bf16 and device.type == "cpu" and main and not torch.ops.mkldnn._is_mkldnn_bf16_supported():
        log("note: this CPU has no native bfloat16 (AVX512-BF16 or AMX): --bf16 will run slower than float32")
    # This rank's rows of each global batch, DDP, gradient accumulation, torch.compile; with one
    # process and none of these it is the plain forward and backward pass.
    sharded = ShardedStep(precond, ctx, batch=t.batch, batch_per_device=t.batch_per_device,
                          compile=t.compile, seed=t.seed)
    bar = None
    if progress and main:
        from tqdm import tqdm

        bar = tqdm(total=t.steps, initial=start_step, desc="train", unit="step", dynamic_ncols=True,
                   disable=not sys.stderr.isatty() and os.environ.get("KUOSAN_PROGRESS") != "1")

    # --- the loop -------------------------------------------------------------------------------
    t0 = time.time()
    window_t = time.time()
    step = start_step
    stop_reason = "steps"
    precond.train()
    interrupted = []
    old_handler = (signal.getsignal(signal.SIGTERM)
                   if threading.current_thread() is threading.main_thread() else None)
    if old_handler is not None:
        signal.signal(signal.SIGTERM, lambda *a: interrupted.append("SIGTERM"))
    try:
        while step < t.steps:
            reason = ("time limit" if t.time_limit is not None and elapsed_before + time.time() - t0 >= t.time_limit
                      else interrupted[0] if interrupted else None)
            reason = ctx.agree_stop(reason)  # every rank stops at the same step
            if reason is not None:
                stop_reason = reason
                break
            idx = batch_indices(step, t.batch, len(data), t.seed).to(device)
            x0 = scale(images[idx])
            y = None
            if num_classes:
                y = labels[idx].clone()
                if cfg.diffusion.label_dropout > 0:
                    drop = torch.rand(len(idx), generator=noise_gen) < cfg.diffusion.label_dropout
                    y[drop.to(device)] = num_classes  # the null class
            for group in opt.param_groups:
                group["lr"] = lr_at(step, t)
            # Every rank holds the global batch; it draws all of its noise and runs its own rows.
            loss = sharded.step(objective, x0, y, noise_gen, obj_kw, autocast, opt, step)  # the global mean
            grad_norm = torch.nn.utils.clip_grad_norm_(precond.parameters(),
                                                       t.grad_clip if t.grad_clip > 0 else float("inf"))
            if not (torch.isfinite(loss) and torch.isfinite(grad_norm)):
                nonfinite += 1  # skip the update; the weights stay as they were
                opt.zero_grad(set_to_none=True)
                log(f"step {step}: non-finite {'loss' if not torch.isfinite(loss) else 'gradient'}, "
                    f"step skipped ({nonfinite} so far)")
                if nonfinite >= t.max_nonfinite:
                    stop_reason = "non-finite"
                    break
            else:
                opt.step()
                ema.update(precond, step)
                window_loss += float(loss.detach())
                window_n += 1
            step += 1
            if bar is not None:
                bar.update(1)
                if window_n:
                    bar.set_postfix(loss=f"{window_loss / window_n:.4f}")
            if step % t.log_every == 0 or step == t.steps:
                now = time.time()
                rec = {"step": step, "loss": window_loss / max(1, window_n), "grad_norm": float(grad_norm),
                       "lr": lr_at(step - 1, t), "nonfinite": nonfinite,
                       "time": elapsed_before + now - t0,
                       "images_per_s": window_n * t.batch / max(1e-9, now - window_t)}
                if t.checkpoint_every and step % t.checkpoint_every == 0 or step == t.steps:
                    rec["val_loss_raw"], rec["val_loss_ema"] = val_loss(precond), val_loss(ema.module)
                log_file.write(json.dumps(rec) + "\n")
                log_file.flush()
                window_loss, window_n, window_t = 0.0, 0, time.time()
            if main and t.checkpoint_every and step % t.checkpoint_every == 0 and step < t.steps:
                checkpoint(step)
            if main and t.sample_every and step % t.sample_every == 0 and step < t.steps:
                with torch.random.fork_rng(devices=[]):  # sampling must not move the training RNG
                    sample_grid(ema.module, cfg, spec, out / "samples" / f"step-{step:07d}.png", decoder=decoder)
    except KeyboardInterrupt:
        stop_reason = "interrupted"
    finally:
        if old_handler is not None:
            signal.signal(signal.SIGTERM, old_handler)
        if bar is not None:
            bar.close()
        log_file.close()

    if stop_reason == "non-finite":
        raise KuosanError(_nonfinite_message(t, step, nonfinite, list_checkpoints(out)))
    if main and step > start_step:
        ckpt = checkpoint(step)
        finish_transfer(ema.module, out, run_config, log)  # a LoRA run's adapter file
        log(f"stopped at step {step} ({stop_reason}); checkpoint {ckpt}")
    if stop_reason in ("interrupted", "SIGTERM"):
        raise KeyboardInterrupt

    def finish() -> None:
        grid = sample_grid(ema.module, cfg, spec, out / "samples.png", decoder=decoder)
        plot_losses(log_path, out / "loss.png")
        log(f"sample grid: {grid}")

    ctx.from_main(finish)  # the other ranks return when the run directory is complete
    return out


def plot_losses(log_path: Path, png: Path) -> Path | None:
    """Loss (and held-out raw/EMA loss) against step, log scale."""
    rows = [json.loads(ln) for ln in Path(log_path).read_text().splitlines() if ln.strip()]
    if not rows:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.5), dpi=120)
    ax.plot([r["step"] for r in rows], [r["loss"] for r in rows], label="training loss", lw=1)
    for key, label in (("val_loss_raw", "held-out, raw"), ("val_loss_ema", "held-out, EMA")):
        pts = [(r["step"], r[key]) for r in rows if key in r]
        if pts:
            ax.plot(*zip(*pts), "o-", ms=3, label=label)
    ax.set_yscale("log")
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(png)
    plt.close(fig)
    return png


def replace_train(cfg: Config, **changes) -> Config:
    return dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, **changes))
