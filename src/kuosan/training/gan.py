"""GAN training with the R3GAN objective (Huang et al. 2024, "The GAN is dead; long live the GAN! A Modern
GAN Baseline", §2): the relativistic pairing loss with zero-centred gradient penalties on real and fake data.

Notation (paper -> code), for a discriminator D, real x, fake x̃ = G(z) of the same class y:
    RpGAN loss of D    softplus(−(D(x) − D(x̃)))        -> :func:`relativistic_d_loss`
    RpGAN loss of G    softplus(−(D(x̃) − D(x)))        -> :func:`relativistic_g_loss` (its mirror)
    R1, R2             ‖∇ₓD(x)‖², ‖∇ₓ̃D(x̃)‖²            -> :func:`zero_centered_penalty` (Mescheder et al. 2018, §4.1)
    D's objective      RpGAN + γ/2 · (R1 + R2)          -> :func:`d_objective`
The relativistic loss is Jolicoeur-Martineau 2019's RpGAN with f = softplus(−·); R3GAN's point is that with
both penalties it converges locally where either alone does not. Optimiser: Adam with β1 = 0; learning rate,
γ and β2 follow cosines over ``steps`` as in R3GAN's presets, from (lr, γ, 0.9) to (lr/4, γ/10, 0.99). R3GAN
starts at lr = 2e-4 for networks 10-100× larger trained on millions of images; for runs of a few hundred to
a few thousand steps on a CPU, 1e-3 reached a far lower Fréchet distance (4.1 against 31.0 after 300 steps on
Fashion-MNIST, docs/diffusion-vs-gan.md), so that is the default. The generator's weights are averaged (EMA)
for sampling.

:func:`train_gan` reads top to bottom like :func:`kuosan.training.loop.train` (build, restore, the loop,
checkpoint, finish), with :class:`Run` naming each step: crash-safe checkpoints, exact resume (data order,
latents and their generator states are functions of the seed and are saved), a guard against non-finite
steps, a progress bar, ``metrics.jsonl`` and SIGTERM as a request to checkpoint and stop.

The checkpoint is a kuosan model: config.json's network is ``gan`` (the generator, with its discriminator
beside it, :mod:`kuosan.nets.gan`) and its parameterisation ``gan`` (:class:`kuosan.diffusion.precond.GANPrecond`),
with a ``sample`` section of one Euler step, so ``kuosan sample``, ``kuosan evaluate`` and ``kuosan.load``
take it unchanged and make each image with one network evaluation.
"""

from __future__ import annotations

import dataclasses
import json
import math
import time
import typing
from dataclasses import dataclass
from pathlib import Path

import torch
from torch.nn import functional as F

from kuosan.config import Config, DiffusionConfig, SampleConfig, config_to_dict
from kuosan.errors import KuosanError

__all__ = ["GANTrainConfig", "PRESETS", "GAN_SAMPLE", "relativistic_d_loss", "relativistic_g_loss",
           "zero_centered_penalty", "d_objective", "g_objective", "cosine", "gamma_at", "gan_spec", "Run", "train_gan"]

BETA1 = 0.0                                # Adam's β1 (R3GAN's presets: no momentum)
GAN_SAMPLE = SampleConfig(sampler="euler", steps=1, schedule="karras", guidance=1.0)  # one evaluation an image
GAN_DIFFUSION = DiffusionConfig(precond="gan", sigma_max=1.0, label_dropout=0.0)     # x = z: D(z; 1) = G(z)


@dataclass(frozen=True)
class GANTrainConfig:
    data: str = "fashion-mnist"            # training images: any data set spec (kuosan.data.load_dataset)
    data_root: typing.Optional[str] = None  # directory of the data set's files, if not the default
    resolution: typing.Optional[int] = None  # resize images to this size (default: the data's own; 28, 32, 64)
    channels: typing.Optional[int] = None  # 1 or 3 (default: the data's own)
    max_images: typing.Optional[int] = None  # use only the first N training images
    conditional: bool = True               # class-conditional G (embedding) and D (projection)
    z_dim: int = 64                        # latent size (R3GAN's NoiseDimension)
    g_channels: int = 64                   # generator width next to the image (doubles per level inwards)
    d_channels: int = 64                   # discriminator width next to the image (doubles per level inwards)
    max_channels: int = 512                # cap on either network's width
    gamma: float = 1.0                     # γ of the penalty γ/2·(R1 + R2) at the start (R3GAN: 0.05-150)
    gamma_final: typing.Optional[float] = None  # γ at `steps` after a cosine decay (default γ/10, as R3GAN)
    lr: float = 1e-3                       # Adam learning rate at the start (R3GAN: 2e-4 at batch 512; see below)
    lr_final: float = 2.5e-4               # learning rate at `steps` after a cosine decay (R3GAN: start / 4)
    beta2: float = 0.9                     # Adam β2 at the start (β1 is 0)
    beta2_final: float = 0.99              # Adam β2 at `steps`
    batch: int = 64                        # real (and fake) images per step
    steps: int = 5000                      # iterations, each a D step then a G step
    time_limit: typing.Optional[float] = None  # stop after this many seconds (a checkpoint is written)
    ema_decay: float = 0.999               # EMA of the generator (with warm-up, see training.ema)
    seed: int = 0                          # makes the run reproducible
    log_every: int = 50                    # steps between metrics-log lines
    sample_every: int = 1000               # steps between sample grids (0 = only at the end)
    checkpoint_every: int = 500            # steps between checkpoints (0 = only at the end)
    keep_checkpoints: int = 3              # how many recent checkpoints to keep
    max_nonfinite: int = 20                # stop after this many skipped non-finite steps
    out: str = "runs/gan"                  # output directory
    device: str = "auto"                   # auto | cpu | cuda | cuda:N


# Presets for `kuosan train-gan --config NAME` (γ: R3GAN's range is 0.05 (CIFAR-10) to 2 (FFHQ-64) at 32-64 px).
PRESETS = {
    "fashion-mnist": {"data": "fashion-mnist", "conditional": True, "out": "runs/gan-fashion-mnist"},
    "stacked-mnist": {"data": "stacked-mnist", "conditional": False, "out": "runs/gan-stacked-mnist"},
    "emoji": {"data": "emoji", "conditional": True, "resolution": 64, "gamma": 2.0, "batch": 32,
              "out": "runs/gan-emoji"},     # 64×64 colour: DCGAN's 4-level layout, FFHQ-64's γ
}


def check_config(cfg: GANTrainConfig) -> None:
    """Reject settings that cannot work, with a message naming the option."""
    for name in ("batch", "steps", "z_dim", "g_channels", "d_channels", "max_channels", "log_every",
                 "keep_checkpoints", "max_nonfinite"):
        if getattr(cfg, name) < 1:
            raise KuosanError(f"--{name} must be positive, got {getattr(cfg, name)}")
    for name in ("gamma", "sample_every", "checkpoint_every") + (("gamma_final",) if cfg.gamma_final is not None
                                                                 else ()):
        if getattr(cfg, name) < 0:
            raise KuosanError(f"--{name} must be non-negative, got {getattr(cfg, name)}")
    if not (0 < cfg.lr <= 1 and 0 < cfg.lr_final <= 1):
        raise KuosanError(f"--lr and --lr_final must be in (0, 1], got {cfg.lr} and {cfg.lr_final}")
    if not (0 <= cfg.beta2 < 1 and 0 <= cfg.beta2_final < 1 and 0 <= cfg.ema_decay < 1):
        raise KuosanError("--beta2, --beta2_final and --ema_decay must be in [0, 1)")
    if cfg.time_limit is not None and cfg.time_limit <= 0:
        raise KuosanError(f"--time_limit must be positive, got {cfg.time_limit}")
    if not 0 <= cfg.seed < 2 ** 32:
        raise KuosanError(f"--seed must be a whole number from 0 to 2**32 - 1, got {cfg.seed}")


# --- the objective (R3GAN, Huang et al. 2024, §2) ------------------------------------------------------

def relativistic_d_loss(real_logits: torch.Tensor, fake_logits: torch.Tensor) -> torch.Tensor:
    """softplus(−(D(x) − D(x̃))) per pair [B]: D wants each real above its paired fake."""
    return F.softplus(-(real_logits - fake_logits))


def relativistic_g_loss(real_logits: torch.Tensor, fake_logits: torch.Tensor) -> torch.Tensor:
    """softplus(−(D(x̃) − D(x))) per pair [B]: the mirror, G wants each fake above its paired real."""
    return F.softplus(-(fake_logits - real_logits))


def zero_centered_penalty(logits: torch.Tensor, inputs: torch.Tensor) -> torch.Tensor:
    """‖∇ D‖² per sample [B] at ``inputs`` (R1 on reals, R2 on fakes), kept differentiable (create_graph),
    so that its gradient reaches D's weights: a second derivative through D."""
    (grad,) = torch.autograd.grad(logits.sum(), inputs, create_graph=True)
    return grad.square().flatten(1).sum(1)


def d_objective(D, real: torch.Tensor, fake: torch.Tensor, labels, gamma: float):
    """The discriminator's loss per pair [B], RpGAN + γ/2 · (R1 + R2), and its parts (detached)."""
    x = torch.cat([real, fake]).detach().requires_grad_(True)     # [2B]: reals, then their paired fakes
    logits = D(x, None if labels is None else torch.cat([labels, labels]))
    real_logits, fake_logits = logits.chunk(2)
    r1, r2 = zero_centered_penalty(logits, x).chunk(2)             # one backward: samples do not interact
    adversarial = relativistic_d_loss(real_logits, fake_logits)
    loss = adversarial + gamma / 2 * (r1 + r2)
    parts = {"loss_d": adversarial.mean(), "r1": r1.mean(), "r2": r2.mean(),
             "logit_gap": (real_logits - fake_logits).mean()}
    return loss, {k: float(v.detach()) for k, v in parts.items()}


def g_objective(D, real: torch.Tensor, fake: torch.Tensor, labels) -> torch.Tensor:
    """The generator's loss per pair [B]; D's logits of the reals need no graph."""
    with torch.no_grad():
        real_logits = D(real, labels)
    return relativistic_g_loss(real_logits, D(fake, labels))


def cosine(step: int, steps: int, start: float, end: float) -> float:
    """``start`` at step 0 to ``end`` at ``steps`` along half a cosine, then ``end`` (R3GAN's schedules)."""
    progress = min(1.0, step / max(1, steps))
    return end + (start - end) * 0.5 * (1 + math.cos(math.pi * progress))


def gamma_at(step: int, cfg: GANTrainConfig) -> float:
    """γ at ``step``: a cosine from ``gamma`` to ``gamma_final`` (default γ/10)."""
    return cosine(step, cfg.steps, cfg.gamma, cfg.gamma / 10 if cfg.gamma_final is None else cfg.gamma_final)


def gan_spec(cfg: GANTrainConfig, *, channels: int, resolution: int, num_classes: int) -> dict:
    """The network spec of config.json for a GAN on data of this shape."""
    fields = {"in_channels": channels, "out_channels": channels, "resolution": resolution,
              "num_classes": num_classes, "z_dim": cfg.z_dim, "g_channels": cfg.g_channels,
              "d_channels": cfg.d_channels, "max_channels": cfg.max_channels}
    return {"kind": "gan", "fields": fields}


def run_config(cfg: GANTrainConfig, spec: dict, data) -> dict:
    """config.json: a kuosan model (network, diffusion: precond gan, sample: one Euler step) and the GAN recipe."""
    return {"format": "kuosan-checkpoint", "version": 1, "network": spec,
            "diffusion": config_to_dict(GAN_DIFFUSION), "sample": config_to_dict(GAN_SAMPLE),
            "train": json.loads(json.dumps(dataclasses.asdict(cfg))),
            "data": {"spec": cfg.data, "class_names": list(data.class_names), "resolution": data.resolution,
                     "channels": data.channels, "num_classes": spec["fields"]["num_classes"]}}


# --- the run --------------------------------------------------------------------------------------------

_WINDOW = ("loss", "loss_d", "loss_g", "r1", "r2", "logit_gap", "grad_norm_d", "grad_norm_g")


@dataclass
class Progress:
    """What a checkpoint's state.json records of the loop, so that a resumed run continues exactly."""
    step: int = 0
    nonfinite: int = 0                     # non-finite steps skipped so far
    elapsed_before: float = 0.0            # seconds trained before this process started
    window: dict = dataclasses.field(default_factory=dict)  # running sums of the metrics line, and "n"


class Run:
    """One GAN run's pieces: data, the generator/discriminator pair, EMA, the optimiser, the latent generator.
    :func:`train_gan` calls its steps in order."""

    def __init__(self, cfg: GANTrainConfig, *, log):
        from kuosan.data import load_dataset, to_model_range
        from kuosan.model import build_model
        from kuosan.nets.build import count_flops
        from kuosan.runtime import resolve_device
        from kuosan.training.ema import EMA
        from kuosan.training.optim import adamw

        self.t, self.log, self.out = cfg, log, Path(cfg.out)
        device = self.device = resolve_device(cfg.device)
        torch.manual_seed(cfg.seed)                                   # network initialisation
        data = self.data = load_dataset(cfg.data, "train", root=cfg.data_root, resolution=cfg.resolution,
                                        channels=cfg.channels, max_images=cfg.max_images)
        self.scale = to_model_range
        self.images, self.labels = data.images.to(device), data.labels.to(device)
        self.num_classes = data.num_classes if cfg.conditional else 0
        self.spec = gan_spec(cfg, channels=data.channels, resolution=data.resolution, num_classes=self.num_classes)
        precond = self.precond = build_model(self.spec, GAN_DIFFUSION).to(device)
        self.G, self.D = precond.net.generator, precond.net.discriminator
        self.ema = EMA(precond, cfg.ema_decay)   # the generator's average (the discriminator's copy is unused)
        self.opt = adamw([{"params": list(self.G.parameters())}, {"params": list(self.D.parameters())}],
                         lr=cfg.lr, betas=(BETA1, cfg.beta2), weight_decay=0.0, eps=1e-8)
        self.noise_gen = torch.Generator(device="cpu").manual_seed(cfg.seed + 1)   # latents
        self.run_config = run_config(cfg, self.spec, data)
        self.flops = count_flops(precond.net, data.channels, data.resolution, 1, self.num_classes)
        self.progress = Progress()
        self.t0 = time.time()

    def describe(self) -> str:
        from kuosan.nets.build import count_parameters

        d = self.data
        return (f"data: {d.name}, {len(d)} images {d.channels}x{d.resolution}x{d.resolution}, "
                f"{self.num_classes} classes | GAN: G {count_parameters(self.G) / 1e6:.2f} M, "
                f"D {count_parameters(self.D) / 1e6:.2f} M parameters, {self.flops / 1e9:.4f} GFLOP per image "
                f"| device: {self.device}")

    def write_config(self) -> None:
        from kuosan.checkpoint import atomic_write_text

        try:
            self.out.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise KuosanError(f"cannot create --out {self.out}: {e.strerror or e}") from None
        atomic_write_text(self.out / "config.json", json.dumps(self.run_config, indent=2))

    # --- restore ------------------------------------------------------------------------------------
    def restore(self) -> dict:
        """Weights, EMA, optimiser, generator states and counters of the newest intact checkpoint."""
        from kuosan.checkpoint import decode_rng, resolve_checkpoint
        from kuosan.model import read_model_checkpoint
        from kuosan.training.optim import match_state_layout

        ckpt = resolve_checkpoint(self.out, require_state=True)
        saved = read_model_checkpoint(ckpt, weights="model", training_state=True)
        if saved["config"].get("network") != json.loads(json.dumps(self.spec)):
            raise KuosanError(f"cannot resume {self.out}: its checkpoint {ckpt.name} has another architecture; "
                              "drop the changed network options or choose another --out")
        st = saved["state"]
        try:
            self.precond.load_state_dict(saved["model"])
            self.ema.load_state_dict(saved["ema"] if saved["ema"] is not None else saved["model"])
            if saved["optimizer"] is None:
                raise KeyError("optimizer.safetensors")
            self.opt.load_state_dict(saved["optimizer"])
            match_state_layout(self.opt)
            self.progress = Progress(int(st.get("step")), int(st.get("nonfinite")), float(st.get("elapsed")),
                                     dict(st.get("window") or {}))
            self.noise_gen.set_state(decode_rng(st.get("rng_noise")))
            torch.set_rng_state(decode_rng(st.get("rng_torch")))
        except (KeyError, ValueError, TypeError, RuntimeError) as e:
            raise KuosanError(f"cannot resume from {ckpt}: its training state does not fit this run "
                              f"({str(e).splitlines()[0] if str(e) else type(e).__name__})") from None
        self.log(f"resuming {self.out} from step {self.progress.step} ({ckpt.name})")
        return saved["config"]

    # --- one step -------------------------------------------------------------------------------------
    def batch(self, step: int):
        """Reals in [-1, 1] and their labels (the fakes' labels too: R3GAN pairs each real with a fake of
        its class), and two latent draws, for the D and the G step."""
        from kuosan.training.loop import batch_indices

        idx = batch_indices(step, self.t.batch, len(self.data), self.t.seed).to(self.device)
        y = self.labels[idx] if self.num_classes else None
        z = torch.randn(2, len(idx), self.t.z_dim, generator=self.noise_gen).to(self.device)
        return self.scale(self.images[idx]), y, z[0], z[1]

    def _apply(self, loss: torch.Tensor, params: list) -> tuple[float, float, bool]:
        """Backward and one optimiser step on ``params`` (the others have no gradient); skipped if not finite."""
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        norm = float(torch.nn.utils.clip_grad_norm_(params, float("inf")))
        ok = math.isfinite(float(loss.detach())) and math.isfinite(norm)
        if ok:
            self.opt.step()
        self.opt.zero_grad(set_to_none=True)
        return float(loss.detach()), norm, ok

    def _schedule(self, step: int) -> None:
        """Learning rate and β2 of ``step`` (R3GAN's cosines), in both networks' parameter groups."""
        t = self.t
        for group in self.opt.param_groups:
            group["lr"] = cosine(step, t.steps, t.lr, t.lr_final)
            group["betas"] = (BETA1, cosine(step, t.steps, t.beta2, t.beta2_final))

    def one_step(self, step: int) -> bool:
        """A D step (RpGAN + γ/2·(R1 + R2)), then a G step (RpGAN's mirror); False if either was not finite."""
        real, y, z_d, z_g = self.batch(step)
        self._schedule(step)
        with torch.no_grad():
            fake = self.G.forward_latent(z_d, y)
        loss_d, parts = d_objective(self.D, real, fake, y, gamma_at(step, self.t))
        d_value, d_norm, d_ok = self._apply(loss_d.mean(), list(self.D.parameters()))
        g_ok = False
        if d_ok:                                                      # a broken D step skips the G step too
            self.D.requires_grad_(False)                              # the G step leaves D as it is
            try:
                loss_g = g_objective(self.D, real, self.G.forward_latent(z_g, y), y).mean()
                g_value, g_norm, g_ok = self._apply(loss_g, list(self.G.parameters()))
            finally:
                self.D.requires_grad_(True)
        if not (d_ok and g_ok):
            self.progress.nonfinite += 1
            self.log(f"step {step}: non-finite {'discriminator' if not d_ok else 'generator'} loss or gradient, "
                     f"update skipped ({self.progress.nonfinite} so far)")
            return False
        self.ema.update(self.precond, step)
        values = {"loss": d_value, **parts, "loss_g": g_value, "grad_norm_d": d_norm, "grad_norm_g": g_norm}
        w = self.progress.window
        for key in _WINDOW:
            w[key] = w.get(key, 0.0) + values[key]
        w["n"] = w.get("n", 0) + 1
        return True

    # --- log, checkpoint ------------------------------------------------------------------------------
    def metrics(self, step: int, window_t: float) -> dict:
        """The metrics line after ``step``: window means of the losses, penalties and gradient norms."""
        t, p, now = self.t, self.progress, time.time()
        n = max(1, p.window.get("n", 0))
        rec = {"step": step, **{k: p.window.get(k, 0.0) / n for k in _WINDOW}}
        rec.update(grad_norm=rec["grad_norm_d"], lr=cosine(step - 1, t.steps, t.lr, t.lr_final),
                   gamma=gamma_at(step - 1, t), nonfinite=p.nonfinite,
                   time=p.elapsed_before + now - self.t0,
                   images_per_s=p.window.get("n", 0) * t.batch / max(1e-9, now - window_t))
        return rec

    def checkpoint(self, step: int) -> Path:
        from kuosan.checkpoint import encode_rng, save_checkpoint

        p = self.progress
        state = {"nonfinite": p.nonfinite, "elapsed": p.elapsed_before + (time.time() - self.t0),
                 "rng_noise": encode_rng(self.noise_gen.get_state()), "rng_torch": encode_rng(torch.get_rng_state()),
                 "seed": self.t.seed, "data_position": step * self.t.batch, "window": dict(p.window)}
        return save_checkpoint(self.out, step, config=self.run_config, model=self.precond.state_dict(),
                               ema=self.ema.state_dict(), optimizer=self.opt, state=state,
                               keep=self.t.keep_checkpoints)

    def sample_grid(self, path: Path) -> Path:
        from kuosan.training.loop import sample_grid

        with torch.random.fork_rng(devices=[]):
            return sample_grid(self.ema.module, Config(sample=GAN_SAMPLE), self.spec, path)

    def stop_reason(self, interrupted: list) -> str | None:
        t = self.t
        if t.time_limit is not None and self.progress.elapsed_before + time.time() - self.t0 >= t.time_limit:
            return "time limit"
        return interrupted[0] if interrupted else None


def train_gan(cfg: GANTrainConfig, *, resume: bool = False, allow_changes: bool = False, progress: bool = True,
              log=print) -> Path:
    """Train a GAN as ``cfg`` says; returns the run directory (``cfg.out``)."""
    from kuosan.rundir import RunLock, check_not_inside_checkpoint, record_history
    from kuosan.training.loop import (_check_recipe, _check_run_dir, _open_log, _progress_bar, _sigterm_as_stop,
                                      plot_losses)

    check_config(cfg)
    t, out = cfg, Path(cfg.out)
    check_not_inside_checkpoint(out)
    with RunLock(out, command="train-gan"):                               # one writer per run directory
        resume = _check_run_dir(out, resume, log)
        run = Run(cfg, log=log)                                           # build
        if resume:                                                        # restore
            saved = run.restore()
            _check_recipe(out, saved, run.run_config, allow_changes, run.progress.step)
        log(run.describe())
        run.write_config()
        if not resume:
            record_history(out, {"event": "start", "steps": t.steps, "seed": t.seed})
        start, step, stop = run.progress.step, run.progress.step, "steps"
        log_file, bar, interrupted = _open_log(run, resume, True), _progress_bar(run, progress), []
        run.t0 = window_t = time.time()
        try:
            with _sigterm_as_stop(interrupted):
                while step < t.steps:                                     # the loop
                    if (reason := run.stop_reason(interrupted)) is not None:
                        stop = reason
                        break
                    if not run.one_step(step) and run.progress.nonfinite >= t.max_nonfinite:
                        stop = "non-finite"
                        break
                    step = run.progress.step = step + 1
                    if bar is not None:
                        bar.update(1)
                    if step % t.log_every == 0 or step == t.steps:         # log
                        rec = run.metrics(step, window_t)
                        log_file.write(json.dumps(rec) + "\n")
                        log_file.flush()
                        if bar is not None:
                            bar.set_postfix(d=f"{rec['loss_d']:.3f}", g=f"{rec['loss_g']:.3f}")
                        run.progress.window, window_t = {}, time.time()
                    if t.checkpoint_every and step % t.checkpoint_every == 0 and step < t.steps:
                        run.checkpoint(step)                              # checkpoint
                    if t.sample_every and step % t.sample_every == 0 and step < t.steps:
                        run.sample_grid(out / "samples" / f"step-{step:07d}.png")
        except KeyboardInterrupt:
            stop = "interrupted"
        finally:
            if bar is not None:
                bar.close()
            log_file.close()
        if stop == "non-finite":                                          # finish
            from kuosan.checkpoint import list_checkpoints

            kept = list_checkpoints(out)
            raise KuosanError(f"training stopped at step {step}: {run.progress.nonfinite} non-finite steps "
                              f"(--max_nonfinite {t.max_nonfinite}); likely cause: a learning rate or γ too high "
                              f"(--lr {t.lr:g}, --gamma {t.gamma:g}); "
                              + (f"the last good checkpoint {kept[-1].name} is unchanged; fix the cause and pass "
                                 "--resume" if kept else "no checkpoint was written; fix the cause and start again"))
        if step > start:
            ckpt = run.checkpoint(step)
            log(f"stopped at step {step} ({stop}); checkpoint {ckpt}")
        if stop in ("interrupted", "SIGTERM"):
            raise KeyboardInterrupt
        log(f"sample grid: {run.sample_grid(out / 'samples.png')}")
        plot_losses(out / "metrics.jsonl", out / "loss.png")
    return out
