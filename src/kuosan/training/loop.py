"""The training loop: :func:`train` reads top to bottom (build, restore, one step, log, checkpoint,
finish); :class:`Run` holds the pieces and names each step.

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
from kuosan.images import make_grid, save_png, to_uint8_nhwc
from kuosan.model import read_model_checkpoint
from kuosan.records import DataRecord, NetworkSpec, RunConfig
from kuosan.sampling import generate
from kuosan.errors import KuosanError
from kuosan.checkpoint import (atomic_write_text, decode_rng, encode_rng, list_checkpoints, resolve_checkpoint,
                               save_checkpoint)
from kuosan.runtime import resolve_device
from kuosan.training.distributed import ShardedStep, init_distributed, setup_backends
from kuosan.training.ema import EMA
from kuosan.training.optim import match_state_layout
from kuosan.rundir import RunLock, changed_values, check_not_inside_checkpoint, check_resume, record_history

__all__ = ["train", "Run", "Progress", "batch_indices", "lr_at"]


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


def lr_at(step: int, cfg, fraction: float | None = None) -> float:
    """Linear warm-up to ``lr``, then constant, cosine or linear decay to 5% at ``steps``; or, given
    ``fraction`` (the share of the run done, as ``decay_over: time`` measures it), to 5% at fraction 1."""
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    if cfg.lr_decay == "constant":
        return cfg.lr
    if fraction is not None:
        progress = min(1.0, max(0.0, fraction))
    else:
        progress = min(1.0, (step - cfg.warmup_steps) / max(1, cfg.steps - cfg.warmup_steps))
    shape = 0.5 * (1 + math.cos(math.pi * progress)) if cfg.lr_decay == "cosine" else 1 - progress
    return cfg.lr * (0.05 + 0.95 * shape)


GRID_ROWS = 16   # a model of more classes (ImageNet-like) shows this many, spread evenly over its classes


def _class_grid_labels(num_classes: int, per_class: int) -> list[int] | None:
    if num_classes == 0:
        return None
    rows = range(num_classes) if num_classes <= GRID_ROWS else \
        [round(i * (num_classes - 1) / (GRID_ROWS - 1)) for i in range(GRID_ROWS)]
    return [c for c in rows for _ in range(per_class)]


def sample_grid(precond, cfg: Config, spec: dict, path: Path, per_class: int = 10, decoder=None) -> Path:
    """One row per class (at most :data:`GRID_ROWS`, spread over the classes; an 8×8 grid when unconditional),
    fixed seeds, EMA weights; ``decoder``
    (a :class:`kuosan.latent.LatentAutoencoder`) turns a latent model's samples into pixels."""
    f = spec["fields"]
    labels = _class_grid_labels(f["num_classes"], per_class)
    n = len(labels) if labels else 64
    x = generate(precond, cfg.sample, shape=(f["in_channels"], f["resolution"], f["resolution"]), seeds=range(n),
                 class_labels=labels, null_label=f["num_classes"] or None, batch_size=128)
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


def _run_config(cfg: Config, spec: dict, data, transfer: dict) -> RunConfig:
    """The run's config.json: the network, the config sections, the data, and how it was made."""
    record = DataRecord(spec=cfg.train.data, class_names=tuple(data.class_names), resolution=data.resolution,
                        channels=data.channels, num_classes=spec["fields"]["num_classes"])
    return RunConfig(network=NetworkSpec.from_dict(json.loads(json.dumps(spec))), data=record,
                     sections=config_to_dict(cfg), lora=transfer.get("lora"), parent=transfer.get("parent"),
                     # path, checksum and scale of the autoencoder that decodes a latent model's samples
                     autoencoder=data.autoencoder if getattr(data, "is_latent", False) else None)


@dataclasses.dataclass
class Progress:
    """What a checkpoint's state.json records of the loop, so that a resumed run continues exactly."""
    step: int = 0
    nonfinite: int = 0                     # non-finite steps skipped so far
    elapsed_before: float = 0.0            # seconds trained before this process started
    window_loss: float = 0.0               # running sum of the metrics line's mean loss
    window_n: int = 0
    window_align: float = 0.0              # ... and of its alignment term (train.repa_weight), same steps


class Run:
    """One training run's pieces, built from the config: data, model, EMA, optimiser, objective, generators.
    :func:`train` calls its steps in order; each is one concept of the loop."""

    alignment = None  # representation alignment (kuosan.training.repa), when train.repa_weight > 0

    def __init__(self, cfg: Config, ctx, *, resume: bool, log):
        from kuosan.data import load_dataset, to_model_range
        from kuosan.diffusion.objectives import loss_for
        from kuosan.training.finetune import prepare_transfer
        from kuosan.model import build_model, network_spec
        from kuosan.nets.build import count_flops
        from kuosan.nets.layout import prepare_model
        from kuosan.training.optim import adamw

        t = self.t = cfg.train
        self.cfg, self.ctx, self.log, self.out = cfg, ctx, log, Path(t.out)
        device = self.device = ctx.device
        torch.manual_seed(t.seed)  # network initialisation and dropout
        # --- data, held in memory as uint8 on the device ---
        if t.autoencoder:  # latent diffusion (Rombach et al. 2022): the data set's scaled latents, encoded once
            from kuosan.latent import encode_dataset

            data = encode_dataset(t.autoencoder, t.data, "train", root=t.data_root, max_images=t.max_images,
                                  device=device, log=log)
        else:
            data = load_dataset(t.data, "train", root=t.data_root, resolution=t.resolution, channels=t.channels,
                                max_images=t.max_images)
        self.data, self.is_latent = data, getattr(data, "is_latent", False)
        self.scale = (lambda x: x) if self.is_latent else to_model_range  # latents: already scaled
        self.images, self.labels = data.images.to(device), data.labels.to(device)
        self.num_classes = data.num_classes if t.conditional else 0
        # --- model, EMA, optimiser ---
        spec = network_spec(cfg, channels=data.channels, resolution=data.resolution, num_classes=self.num_classes)
        if t.repa_weight > 0:  # REPA's projection head lives in the network (saved, resumed, averaged with it)
            from kuosan.training.repa import TEACHER_CHANNELS

            spec["fields"]["align_channels"] = TEACHER_CHANNELS
        try:
            precond = build_model(spec, cfg.diffusion).to(device)
            # transfer learning: parent weights, LoRA adapters, frozen parameters (kuosan.training.finetune)
            precond, spec, transfer = prepare_transfer(precond, spec, cfg, num_classes=self.num_classes,
                                                       resume=resume, device=device, log=log,
                                                       class_names=data.class_names if self.num_classes else None)
            with torch.random.fork_rng(devices=[]):  # a forward pass would draw dropout from the training RNG
                self.flops = count_flops(precond.net, data.channels, data.resolution, 1, self.num_classes)
        except (ValueError, RuntimeError, AssertionError, TypeError) as e:  # settings no network can take
            raise KuosanError(f"the model settings cannot build a {spec['kind']} for {data.channels}x"
                              f"{data.resolution}x{data.resolution} images: "
                              f"{str(e).splitlines()[0] if str(e) else type(e).__name__}; check --model.*") from None
        prepare_model(precond)  # UNets compute in channels_last (faster convolutions; same keys and outputs)
        self.precond, self.spec = precond, spec
        gamma = None
        if t.ema_sigma_rel is not None:
            from kuosan.training.posthoc_ema import sigma_rel_to_gamma

            gamma = sigma_rel_to_gamma(t.ema_sigma_rel)
        self.ema = EMA(precond, t.ema_decay, gamma=gamma)  # a copy: channels_last too
        self.posthoc = None
        if t.posthoc_ema:  # EDM2's two profiles; any EMA length is reconstructed after training (posthoc_ema.py)
            from kuosan.training.posthoc_ema import PosthocEMA

            self.posthoc = PosthocEMA(precond)
        if t.decay_over == "time" and ctx.enabled:
            raise KuosanError("train.decay_over time runs in one process: each process's clock would give its "
                              "own learning rate; use decay_over steps under torchrun")
        self.lr = t.lr
        trainable = [p for p in precond.parameters() if p.requires_grad]  # fine-tuning may freeze some
        self.opt = adamw(trainable, lr=t.lr, betas=tuple(t.betas), weight_decay=t.weight_decay)
        self.objective = loss_for(precond)
        d = cfg.diffusion
        self.obj_kw = ({"p_mean": d.p_mean, "p_std": d.p_std} if d.precond == "edm"
                       else {"min_snr_gamma": d.min_snr_gamma} if d.precond != "flow" else {})
        self.noise_gen = torch.Generator(device="cpu").manual_seed(t.seed + 1)
        self.record = _run_config(cfg, spec, data, transfer)
        self.run_config = self.record.to_dict()  # its JSON, as written
        self.decoder = None
        if self.is_latent:
            from kuosan.latent import load_autoencoder

            self.decoder = load_autoencoder(data.autoencoder["path"], device=device)
        if t.repa_weight > 0:
            self.alignment = self._alignment(data, ctx)
            self._aligned = self.alignment.objective(self.objective)
        self.progress = Progress()
        self.start_clock()  # again when the loop starts

    @property
    def train_objective(self):
        """What the optimiser steps on: the diffusion objective, plus the alignment term when it is on."""
        return self._aligned if self.alignment is not None else self.objective

    def _alignment(self, data, ctx):
        """Representation alignment (:mod:`kuosan.training.repa`): the teacher's features of every training image
        (for a latent model, of the images its latents were encoded from), and the hook on the middle block."""
        from kuosan.data import load_dataset
        from kuosan.training.repa import Alignment, site_side, teacher_targets

        t = self.t
        if ctx.enabled:  # batch_per_device and compile are refused with the config (kuosan.config.validate)
            raise KuosanError("train.repa_weight runs in one process (not under torchrun): its targets follow the "
                              "whole batch through one forward pass")
        if self.is_latent:
            c, res, _ = self.decoder.image_shape
            images = load_dataset(t.data, "train", root=t.data_root, resolution=res, channels=c,
                                  max_images=t.max_images).images
        else:
            images = data.images
        if len(images) != len(data):
            raise KuosanError(f"representation alignment: {len(images)} images for {len(data)} latents; "
                              "re-encode the data set")
        side = site_side(data.resolution, len(self.cfg.model.channel_mults))
        targets = teacher_targets(images, side, device=self.device, log=self.log)
        return Alignment(self.precond.net, targets, t.repa_weight)

    def clock(self) -> float:
        """``train.clock``: wall seconds, or this process's CPU seconds (all threads), which a busy machine
        does not spend for it."""
        return time.process_time() if self.t.clock == "cpu" else time.time()

    def start_clock(self) -> None:
        self.t0, self.clock0 = time.time(), self.clock()

    def describe(self) -> str:
        from kuosan.nets.build import count_parameters

        d, t = self.data, self.t
        return (f"data: {d.name}, {len(d)} images {d.channels}x{d.resolution}x{d.resolution}, "
                f"{d.num_classes} classes | model: {self.spec['kind']}, {count_parameters(self.precond) / 1e6:.2f} M "
                f"parameters, {self.flops / 1e9:.3f} GFLOP per image per forward | device: {self.device}"
                f"{self.ctx.describe(t.batch, t.batch_per_device)}")

    # --- restore ---------------------------------------------------------------------------------
    def restore(self) -> dict:
        """Load the newest intact checkpoint of ``out`` into the run (weights, EMA, optimiser, RNG states,
        counters); returns the run config it was written with."""
        def read():
            found = resolve_checkpoint(self.out, require_state=True)
            return found, read_model_checkpoint(found, training_state=True)

        ckpt, saved = self.ctx.from_main(read)  # sent to the other ranks: no shared file system needed
        if saved["record"].network != self.record.network:
            raise KuosanError(f"cannot resume {self.out}: its checkpoint {ckpt.name} has another architecture "
                              f"({_spec_difference(saved['record'].network.to_dict(), self.spec)}); drop the "
                              "changed options or choose another --out")
        st = saved["state"]
        try:
            self.precond.load_state_dict(saved["model"])
            self.ema.load_state_dict(saved["ema"] if saved["ema"] is not None else saved["model"])
            if saved["optimizer"] is None:
                raise KeyError("optimizer.safetensors")
            self.opt.load_state_dict(saved["optimizer"])
            match_state_layout(self.opt)  # channels_last weights, NCHW moments on disk (see training.optim.adamw)
            self.progress = Progress(st.step, int(st.nonfinite), float(st.elapsed), float(st.get("window_loss", 0.0)),
                                     int(st.get("window_n", 0)), float(st.get("window_align", 0.0)))
            if self.posthoc is not None:
                self.posthoc.restore(self.out, st.step)
            self.noise_gen.set_state(decode_rng(st.rng_noise))
            torch.set_rng_state(decode_rng(st.rng_torch))
            if self.device.type == "cuda" and st.rng_cuda is not None:
                torch.cuda.set_rng_state(decode_rng(st.rng_cuda), self.device)
        except (KeyError, ValueError, TypeError, RuntimeError) as e:
            raise KuosanError(f"cannot resume from {ckpt}: its training state does not fit this run "
                              f"({str(e).splitlines()[0] if str(e) else type(e).__name__})") from None
        self.log(f"resuming {self.out} from step {self.progress.step} ({ckpt.name})")
        return saved["config"]  # the JSON it was written with, for the recipe check

    def write_config(self) -> None:
        """Create ``out`` and write the run's config.json (rank 0)."""
        try:
            self.out.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise KuosanError(f"cannot create --out {self.out}: {e.strerror or e}") from None
        for leftover in self.out.glob(".*.tmp[0-9]*"):  # half-written metrics.jsonl/config.json of a killed run
            leftover.unlink(missing_ok=True)
        atomic_write_text(self.out / "config.json", json.dumps(self.run_config, indent=2))

    # --- one step ----------------------------------------------------------------------------------
    def batch(self, step: int):
        """The global batch of ``step``: images in the model's range and labels (some made null for CFG)."""
        idx = batch_indices(step, self.t.batch, len(self.data), self.t.seed).to(self.device)
        if self.alignment is not None:
            self.alignment.select(idx)
        x0, y = self.scale(self.images[idx]), None
        if self.num_classes:
            y = self.labels[idx].clone()
            if self.cfg.diffusion.label_dropout > 0:
                drop = torch.rand(len(idx), generator=self.noise_gen) < self.cfg.diffusion.label_dropout
                y[drop.to(self.device)] = self.num_classes  # the null class
        return x0, y

    def one_step(self, sharded, autocast, step: int):
        """One optimiser step; returns (loss, gradient norm, whether the update was applied)."""
        x0, y = self.batch(step)
        self.lr = lr_at(step, self.t, self.time_fraction())
        for group in self.opt.param_groups:
            group["lr"] = self.lr
        # Every rank holds the global batch; it draws all of its noise and runs its own rows.
        loss = sharded.step(self.train_objective, x0, y, self.noise_gen, self.obj_kw, autocast, self.opt, step)
        if self.alignment is not None:  # the log's loss is the diffusion loss alone, comparable across runs
            loss = loss - self.alignment.weight * self.alignment.last
        grad_norm = torch.nn.utils.clip_grad_norm_(self.precond.parameters(),
                                                   self.t.grad_clip if self.t.grad_clip > 0 else float("inf"))
        p = self.progress
        if not (torch.isfinite(loss) and torch.isfinite(grad_norm)):
            p.nonfinite += 1  # skip the update; the weights stay as they were
            self.opt.zero_grad(set_to_none=True)
            if self.posthoc is not None:  # the profiles average over steps: this one's weights are the last ones
                self.posthoc.update(self.precond, step)
            self.log(f"step {step}: non-finite {'loss' if not torch.isfinite(loss) else 'gradient'}, "
                     f"step skipped ({p.nonfinite} so far)")
            return loss, grad_norm, False
        self.opt.step()
        self.ema.update(self.precond, step)
        if self.posthoc is not None:
            self.posthoc.update(self.precond, step)
        p.window_loss += float(loss.detach())
        p.window_n += 1
        if self.alignment is not None:
            p.window_align += self.alignment.last
        return loss, grad_norm, True

    # --- log, checkpoint ---------------------------------------------------------------------------
    def val_loss(self, model) -> float:
        """The loss on a fixed held-out batch (same images, same noise every time): raw against EMA weights."""
        if not hasattr(self, "_val"):
            val_gen = torch.Generator().manual_seed(self.t.seed + 2)
            idx = torch.randperm(len(self.data), generator=val_gen)[:min(64, len(self.data))]
            self._val = self.scale(self.images[idx]), self.labels[idx] if self.num_classes else None
        model.eval()
        with torch.no_grad(), torch.random.fork_rng(devices=[]):
            g = torch.Generator().manual_seed(self.t.seed + 3)
            value = float(self.objective(model, *self._val, generator=g, **self.obj_kw).mean())
        self.precond.train()
        return value

    def metrics(self, step: int, grad_norm, window_t: float) -> dict:
        """The metrics-log line after ``step`` (the window's mean loss; held-out losses at checkpoints)."""
        t, p, now = self.t, self.progress, time.time()
        rec = {"step": step, "loss": p.window_loss / max(1, p.window_n), "grad_norm": float(grad_norm),
               "lr": self.lr, "nonfinite": p.nonfinite, "time": self.elapsed(),
               "images_per_s": p.window_n * t.batch / max(1e-9, now - window_t)}
        if self.alignment is not None:
            rec["repa_loss"] = p.window_align / max(1, p.window_n)
        if t.checkpoint_every and step % t.checkpoint_every == 0 or step == t.steps:
            rec["val_loss_raw"], rec["val_loss_ema"] = self.val_loss(self.precond), self.val_loss(self.ema.module)
        return rec

    def checkpoint(self, step: int) -> Path:
        p = self.progress
        state = {"nonfinite": p.nonfinite, "elapsed": self.elapsed(),
                 "rng_noise": encode_rng(self.noise_gen.get_state()), "rng_torch": encode_rng(torch.get_rng_state()),
                 "seed": self.t.seed, "data_position": step * self.t.batch,
                 "window_loss": p.window_loss, "window_n": p.window_n}
        if self.alignment is not None:
            state["window_align"] = p.window_align
        if self.device.type == "cuda":
            state["rng_cuda"] = encode_rng(torch.cuda.get_rng_state(self.device))
        if self.posthoc is not None:  # first: a checkpoint on disk always has its snapshot
            self.posthoc.save_snapshot(self.out, step)
        return save_checkpoint(self.out, step, config=self.run_config, model=self.precond.state_dict(),
                               ema=self.ema.state_dict(), optimizer=self.opt, state=state, keep=self.t.keep_checkpoints)

    def sample_grid(self, path: Path) -> Path:
        with torch.random.fork_rng(devices=[]):  # sampling must not move the training RNG
            return sample_grid(self.ema.module, self.cfg, self.spec, path, decoder=self.decoder)

    def elapsed(self) -> float:
        """Seconds trained so far (``train.clock``'s): this process's and those of the runs it resumed."""
        return self.progress.elapsed_before + self.clock() - self.clock0

    def time_fraction(self) -> float | None:
        """With ``decay_over: time``, the share of ``time_limit`` spent."""
        return self.elapsed() / self.t.time_limit if self.t.decay_over == "time" else None

    def stop_reason(self, interrupted: list) -> str | None:
        t = self.t
        timed_out = t.time_limit is not None and self.elapsed() >= t.time_limit
        return self.ctx.agree_stop("time limit" if timed_out else interrupted[0] if interrupted else None)


def _open_log(run: Run, resume: bool, main: bool):
    """The metrics log, appended to; on resume without the lines written after the checkpoint."""
    path = run.out / "metrics.jsonl"
    if main and not resume and path.exists():
        path.unlink()
    elif main and resume and path.exists():
        _truncate_log(path, run.progress.step)
    return open(path if main else os.devnull, "a")


def _progress_bar(run: Run, enabled: bool):
    if not enabled:
        return None
    from tqdm import tqdm

    return tqdm(total=run.t.steps, initial=run.progress.step, desc="train", unit="step", dynamic_ncols=True,
                disable=not sys.stderr.isatty() and os.environ.get("KUOSAN_PROGRESS") != "1")


@contextlib.contextmanager
def _sigterm_as_stop(interrupted: list):
    """SIGTERM asks the loop to stop at the next step (and write a checkpoint) instead of killing it."""
    main_thread = threading.current_thread() is threading.main_thread()
    old = signal.getsignal(signal.SIGTERM) if main_thread else None
    if old is not None:
        signal.signal(signal.SIGTERM, lambda *a: interrupted.append("SIGTERM"))
    try:
        yield
    finally:
        if old is not None:
            signal.signal(signal.SIGTERM, old)


# Parameterisations made by another trainer: what to run instead.
OTHER_TRAINERS = {
    "gan": "a GAN is trained by kuosan train-gan (kuosan train-gan --help)",
    "consistency": "a consistency model is tuned from a trained model by kuosan distill --teacher RUN",
    "consistency-flow": "a consistency model is tuned from a trained model by kuosan distill --teacher RUN",
}


def train(cfg: Config, *, resume: bool = False, allow_changes: bool = False, progress: bool = True,
          log=print) -> Path:
    """Train a model as ``cfg`` says; returns the run directory (``cfg.train.out``)."""
    from kuosan.training.finetune import finish_transfer

    other = OTHER_TRAINERS.get(cfg.diffusion.precond)
    if other:  # a checkpoint of that kind loads and samples like any other; kuosan train cannot make one
        raise KuosanError(f"diffusion.precond {cfg.diffusion.precond!r} is not trained by kuosan train; {other}")
    t, out = cfg.train, Path(cfg.train.out)
    # Under torchrun: one process per device, rank 0 alone reads and writes the run (see distributed.py).
    ctx = init_distributed(resolve_device(t.device))
    main = ctx.is_main
    setup_backends(ctx.device, t.tf32)
    log = log if main else _quiet
    lock = RunLock(out, command="train", enabled=main)  # one writer per run directory

    def claim() -> None:
        check_not_inside_checkpoint(out)
        lock.acquire()

    ctx.from_main(claim)  # a refusal reaches every rank as the same error
    with lock:
        resume = ctx.from_main(lambda: _check_run_dir(out, resume, log))
        run = Run(cfg, ctx, resume=resume, log=log)                       # build
        if resume:                                                        # restore
            saved_config = run.restore()
            ctx.from_main(lambda: _check_recipe(out, saved_config, run.run_config, allow_changes, run.progress.step))
        log(run.describe())
        ctx.from_main(run.write_config)
        if not resume:
            ctx.from_main(lambda: record_history(out, {"event": "start", "steps": t.steps, "seed": t.seed}))
        autocast = torch.autocast(ctx.device.type, dtype=torch.bfloat16) if t.bf16 else contextlib.nullcontext()
        if t.bf16 and ctx.device.type == "cpu" and main and not torch.ops.mkldnn._is_mkldnn_bf16_supported():
            log("note: this CPU has no native bfloat16 (AVX512-BF16 or AMX): --bf16 will run slower than float32")
        # This rank's rows of each global batch, DDP, gradient accumulation, torch.compile; with one
        # process and none of these it is the plain forward and backward pass.
        sharded = ShardedStep(run.precond, ctx, batch=t.batch, batch_per_device=t.batch_per_device,
                              compile=t.compile, seed=t.seed)
        start, step, stop = run.progress.step, run.progress.step, "steps"
        log_file, bar, interrupted = _open_log(run, resume, main), _progress_bar(run, progress and main), []
        run.start_clock()
        window_t = run.t0
        run.precond.train()
        try:
            with _sigterm_as_stop(interrupted):
                while step < t.steps:                                     # the loop
                    if (reason := run.stop_reason(interrupted)) is not None:
                        stop = reason
                        break
                    loss, grad_norm, applied = run.one_step(sharded, autocast, step)
                    if not applied and run.progress.nonfinite >= t.max_nonfinite:
                        stop = "non-finite"
                        break
                    step += 1
                    run.progress.step = step
                    if bar is not None:
                        bar.update(1)
                        if run.progress.window_n:
                            bar.set_postfix(loss=f"{run.progress.window_loss / run.progress.window_n:.4f}")
                    if step % t.log_every == 0 or step == t.steps:         # log
                        log_file.write(json.dumps(run.metrics(step, grad_norm, window_t)) + "\n")
                        log_file.flush()
                        run.progress.window_loss, run.progress.window_align, run.progress.window_n = 0.0, 0.0, 0
                        window_t = time.time()
                    if main and t.checkpoint_every and step % t.checkpoint_every == 0 and step < t.steps:
                        run.checkpoint(step)                              # checkpoint
                    if main and t.sample_every and step % t.sample_every == 0 and step < t.steps:
                        run.sample_grid(out / "samples" / f"step-{step:07d}.png")
        except KeyboardInterrupt:
            stop = "interrupted"
        finally:
            if bar is not None:
                bar.close()
            log_file.close()
        if stop == "non-finite":                                          # finish
            raise KuosanError(_nonfinite_message(t, step, run.progress.nonfinite, list_checkpoints(out)))
        if main and step > start:
            ckpt = run.checkpoint(step)
            finish_transfer(run.ema.module, out, run.run_config, log)  # a LoRA run's adapter file
            log(f"stopped at step {step} ({stop}); checkpoint {ckpt}")
        if stop in ("interrupted", "SIGTERM"):
            raise KeyboardInterrupt
        ctx.from_main(lambda: _finish(run, log))  # the other ranks return when the run directory is complete
    return out


def _finish(run: Run, log) -> None:
    grid = run.sample_grid(run.out / "samples.png")
    plot_losses(run.out / "metrics.jsonl", run.out / "loss.png")
    log(f"sample grid: {grid}")


def _check_recipe(out: Path, saved: dict, now: dict, allow_changes: bool, step: int) -> None:
    """A resumed run keeps its recipe unless the user accepts the changes, which go into its history."""
    changes = check_resume(saved, now, allow_changes=allow_changes, where=str(out))
    record_history(out, {"event": "resume", "step": step})
    if changes:
        record_history(out, {"event": "changed", "changed": changed_values(saved, now, changes)})


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
