"""Consistency tuning and consistency training (``kuosan distill``): a denoiser becomes a generator of one or
two network evaluations.

    kuosan distill --teacher runs/fm --out runs/fm-ect               ECT (Geng et al. 2025) from a trained model
    kuosan distill --method ct --config digits-tiny --out runs/ct    consistency training from scratch

ECT starts the student from the teacher's EMA weights, under the teacher's parameterisation with the
consistency boundary imposed (kind ``consistency`` over EDM, ``consistency-flow`` over flow matching; see
:mod:`kuosan.diffusion.precond`), and tunes it with ECT's loss (:mod:`kuosan.diffusion.consistency`). The
teacher is a kuosan checkpoint or run of either kind, pixel or latent (its autoencoder decodes the student's
samples too), a LoRA run's adapters merged. Consistency training runs the same loss from a random network.

The loop is :mod:`kuosan.training.loop`'s: :class:`DistillRun` is its :class:`~kuosan.training.loop.Run` with
another model and objective, so checkpoints, ``--resume`` (bit-exact, RNG states included), the NaN guard,
SIGTERM, metrics.jsonl and sample grids are the training loop's own. The student's checkpoints are ordinary
kuosan checkpoints: ``sample`` says consistency, 2 steps, so ``kuosan sample``, ``kuosan evaluate`` and
``kuosan.load`` use it as they are; config.json records the teacher (path, weights file, SHA-256) and the
method's settings (``consistency``).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import time
import typing
from dataclasses import dataclass
from pathlib import Path

import torch

from kuosan.config import Config, config_from_dict, config_to_dict, load_config, resolve_config_path
from kuosan.diffusion.consistency import consistency_loss, default_huber_c, stage_at
from kuosan.errors import KuosanError
from kuosan.records import DataRecord, NetworkSpec, RunConfig
from kuosan.rundir import RESUME_IGNORE, RunLock, changed_values, check_not_inside_checkpoint, check_resume, \
    record_history
from kuosan.runtime import resolve_device
from kuosan.training.distributed import ShardedStep, init_distributed, setup_backends
from kuosan.training.ema import EMA
from kuosan.training.loop import (Progress, Run, _check_run_dir, _finish, _nonfinite_message, _open_log,
                                  _progress_bar, _sigterm_as_stop)

__all__ = ["ConsistencyConfig", "Student", "prepare_student", "DistillRun", "distill", "STUDENT_KINDS",
           "DISTILL_TRAIN_DEFAULTS"]

STUDENT_KINDS = {"edm": "consistency", "flow": "consistency-flow"}  # teacher's parameterisation -> student's
_DATA_KEYS = ("data", "data_root", "resolution", "channels", "max_images", "autoencoder", "conditional", "batch")
# A tuning run's settings where they differ from kuosan train's: a pretrained network takes small steps.
DISTILL_TRAIN_DEFAULTS = {"steps": 2000, "lr": 5e-4, "warmup_steps": 50, "lr_decay": "cosine",
                          "ema_decay": 0.999, "log_every": 25, "checkpoint_every": 500, "sample_every": 0,
                          "out": "runs/distill"}


@dataclass(frozen=True)
class ConsistencyConfig:
    method: str = "ect"                    # ect: tune --teacher (ECT); ct: consistency training from scratch (--config)
    p_mean: float = -1.1                   # ln t ~ N(p_mean, p_std²): ECT's noise levels
    p_std: float = 2.0                     # see p_mean
    q: float = 2.0                         # the gap t − r shrinks by q each stage (ECT's mapping)
    k: float = 8.0                         # n(t) = 1 + k·sigmoid(−b·t): wider gaps at small t
    b: float = 1.0                         # see k
    stage_steps: int = 250                 # optimiser steps per stage of the mapping
    max_shrink: float = 256.0              # the gap stops shrinking at n(t)·t / max_shrink (ECT's finest)
    huber_c: typing.Optional[float] = None  # pseudo-Huber c (default: iCT's 0.00054·sqrt(dim); 0: ECT's ‖Δ‖)
    dropout: typing.Optional[float] = None  # network dropout while tuning (default: the teacher's)
    sample_steps: int = 2                  # the student's default number of sampling steps

    def __post_init__(self):
        if self.method not in ("ect", "ct"):
            raise KuosanError(f"--method must be ect or ct, got {self.method!r}")
        for name in ("p_std", "stage_steps", "sample_steps"):
            if not getattr(self, name) > 0:
                raise KuosanError(f"--{name.replace('_', '-')} must be positive, got {getattr(self, name)}")
        if not self.q > 1 or not self.max_shrink >= self.q:
            raise KuosanError(f"--q must be above 1 and at most --max-shrink (the gap shrinks by q each stage, down "
                              f"to a shrink of max_shrink), got {self.q} and {self.max_shrink}")
        if self.k < 0 or self.b < 0 or (self.huber_c is not None and self.huber_c < 0):
            raise KuosanError("--k, --b and --huber-c must be non-negative")
        if self.dropout is not None and not 0 <= self.dropout < 1:
            raise KuosanError(f"--dropout must be in [0, 1), got {self.dropout}")


@dataclass
class Student:
    """What a distill run starts from."""
    cfg: Config                            # the student's sections (diffusion: a consistency kind)
    consistency: ConsistencyConfig         # the method's settings
    spec: dict | None = None               # the network (None: built for the data, consistency training)
    weights: dict | None = None            # the teacher's EMA weights (None: a random start)
    sources: dict = dataclasses.field(default_factory=dict)  # config.json's teacher and autoencoder records


def _student_sections(sections: dict, cc: ConsistencyConfig, train: dict) -> Config:
    """The student's config: the base sections with the consistency kind, ECT's noise levels, the
    consistency sampler and ``train``."""
    diffusion = dict(sections.get("diffusion", {}))
    base = diffusion.get("precond", "edm")
    if base not in STUDENT_KINDS:
        raise KuosanError(f"consistency tuning needs an EDM or flow-matching model, not {base!r}"
                          + ("; it is a consistency model already" if base.startswith("consistency") else ""))
    diffusion.update(precond=STUDENT_KINDS[base], p_mean=cc.p_mean, p_std=cc.p_std)
    model = dict(sections.get("model", {}), **({"dropout": cc.dropout} if cc.dropout is not None else {}))
    guidance = sections.get("sample", {}).get("guidance", 1.0)
    sample = {"sampler": "consistency", "steps": cc.sample_steps, "schedule": "karras", "guidance": guidance}
    return config_from_dict({"model": model, "diffusion": diffusion, "sample": sample, "train": train})


def prepare_student(cc: ConsistencyConfig, train: dict | None = None, *, teacher: str | None = None,
                    config: str | None = None) -> Student:
    """The student of ``teacher`` (method ect) or of the preset or file ``config`` (method ct), with the
    training settings ``train`` over the defaults (ect: :data:`DISTILL_TRAIN_DEFAULTS`; ct: the config's)."""
    train = dict(train or {})
    if cc.method == "ct":
        if teacher is not None or config is None:
            raise KuosanError("--method ct trains from scratch: give --config (a preset or file), not --teacher")
        source = resolve_config_path(config)
        base = config_to_dict(load_config(None if isinstance(source, dict) else source,
                                          base=source if isinstance(source, dict) else None))
        # a preset's representation alignment is for kuosan train's loop (the distillation loop has none)
        return Student(_student_sections(base, cc, {**base["train"], "repa_weight": 0.0, **train}), cc)
    if teacher is None:
        raise KuosanError("--method ect tunes a trained model: give --teacher (a kuosan run or checkpoint)")
    from kuosan.training.finetune import read_parent

    parent = read_parent(teacher)
    tc, info = parent["config"], parent["info"]
    data = {k: tc.get("train", {})[k] for k in _DATA_KEYS if k in tc.get("train", {})}
    if tc.get("autoencoder"):  # where the teacher's autoencoder is now
        data["autoencoder"] = tc["autoencoder"]["path"]
    cfg = _student_sections(tc, cc, {**data, **DISTILL_TRAIN_DEFAULTS, **train})
    spec = json.loads(json.dumps(tc["network"]))
    # the teacher's representation-alignment head trained with it only (kuosan.training.repa): the student goes without
    spec["fields"].pop("align_channels", None)
    tensors = {k: v for k, v in parent["tensors"].items() if ".align_head." not in f".{k}"}
    if cc.dropout is not None and "dropout" in spec["fields"]:
        spec["fields"]["dropout"] = cc.dropout
    sources = {"teacher": {"path": info["path"], "weights": info["weights"], "sha256": info["sha256"],
                           "weights_sha256": info["weights_sha256"], "step": info["step"],
                           "precond": tc["diffusion"].get("precond", "edm")}}
    if tc.get("autoencoder"):
        sources["autoencoder"] = tc["autoencoder"]
    return Student(cfg, cc, spec, tensors, sources)


class DistillRun(Run):
    """The training loop's :class:`~kuosan.training.loop.Run` around a consistency student: its own
    ``__init__`` (the teacher's weights, ECT's objective) and ``one_step`` (the mapping's stage); restoring,
    batches, metrics, checkpoints and sample grids are the loop's."""

    def __init__(self, student: Student, ctx, *, resume: bool, log):
        from kuosan.model import build_model, network_spec
        from kuosan.nets.build import count_flops
        from kuosan.nets.layout import prepare_model
        from kuosan.training.optim import adamw

        cfg, cc = student.cfg, student.consistency
        t = self.t = cfg.train
        self.cfg, self.ctx, self.log, self.out, self.cc = cfg, ctx, log, Path(t.out), cc
        self.device = ctx.device
        torch.manual_seed(t.seed)  # initialisation and dropout
        self._load_data()
        base_kind = {v: k for k, v in STUDENT_KINDS.items()}[cfg.diffusion.precond]
        base = dataclasses.replace(cfg, diffusion=dataclasses.replace(cfg.diffusion, precond=base_kind))
        spec = student.spec or network_spec(base, channels=self.data.channels, resolution=self.data.resolution,
                                            num_classes=self.num_classes)
        self.num_classes = int(spec["fields"].get("num_classes", 0))
        precond = build_model(spec, cfg.diffusion)
        if student.weights is not None and not resume:
            precond.load_state_dict(student.weights)
        precond = precond.to(self.device)
        with torch.random.fork_rng(devices=[]):
            self.flops = count_flops(precond.net, self.data.channels, self.data.resolution, 1, self.num_classes)
        prepare_model(precond)
        self.precond, self.spec = precond, spec
        if t.posthoc_ema:
            raise KuosanError("train.posthoc_ema is for kuosan train; a distillation run keeps one EMA")
        if t.repa_weight:
            raise KuosanError("train.repa_weight is for kuosan train; a distillation run learns from its teacher")
        self.ema, self.posthoc = EMA(precond, t.ema_decay), None
        self.opt = adamw(list(precond.parameters()), lr=t.lr, betas=tuple(t.betas), weight_decay=t.weight_decay)
        self.objective = consistency_loss
        c = default_huber_c(self.data.channels * self.data.resolution ** 2) if cc.huber_c is None else cc.huber_c
        self.obj_kw = {"sigma_min": precond.sigma_min, "p_mean": cc.p_mean, "p_std": cc.p_std, "q": cc.q,
                       "k": cc.k, "b": cc.b, "max_shrink": cc.max_shrink, "c": c, "stage": 0}
        self.noise_gen = torch.Generator(device="cpu").manual_seed(t.seed + 1)
        self.record = self._run_config(student)
        self.run_config = self.record.to_dict()  # its JSON, as written
        self.progress = Progress()
        self.start_clock()

    def _load_data(self) -> None:
        """The data set in memory (a latent model's: its encoded latents), as the training loop holds it."""
        from kuosan.data import load_dataset, to_model_range

        t, self.decoder = self.t, None
        if t.autoencoder:
            from kuosan.latent import encode_dataset, load_autoencoder

            data = encode_dataset(t.autoencoder, t.data, "train", root=t.data_root, max_images=t.max_images,
                                  device=self.device, log=self.log)
            self.decoder = load_autoencoder(data.autoencoder["path"], device=self.device)
        else:
            data = load_dataset(t.data, "train", root=t.data_root, resolution=t.resolution, channels=t.channels,
                                max_images=t.max_images)
        self.data, self.is_latent = data, getattr(data, "is_latent", False)
        self.scale = (lambda x: x) if self.is_latent else to_model_range
        self.images, self.labels = data.images.to(self.device), data.labels.to(self.device)
        self.num_classes = data.num_classes if t.conditional else 0

    def _run_config(self, student: Student) -> RunConfig:
        """config.json: the training loop's record, with the teacher and the method's settings beside it."""
        d = self.data
        data = DataRecord(spec=self.t.data, class_names=tuple(d.class_names), resolution=d.resolution,
                          channels=d.channels, num_classes=self.num_classes)
        extra = {"consistency": {**dataclasses.asdict(self.cc), "huber_c": self.obj_kw["c"]}}
        if "teacher" in student.sources:
            extra["teacher"] = student.sources["teacher"]
        autoencoder = d.autoencoder if self.is_latent else student.sources.get("autoencoder")
        return RunConfig(network=NetworkSpec.from_dict(json.loads(json.dumps(self.spec))), data=data,
                         sections=config_to_dict(self.cfg), autoencoder=autoencoder, extra=extra)

    def one_step(self, sharded, autocast, step: int):
        self.obj_kw["stage"] = stage_at(step, self.cc.stage_steps)
        return super().one_step(sharded, autocast, step)


def _check_recipe(out: Path, saved: dict, now: dict, allow_changes: bool, step: int) -> None:
    """As ``kuosan train --resume``: a changed recipe is refused unless allowed, then recorded; the teacher
    may have moved (its checksum is compared)."""
    changes = check_resume(saved, now, allow_changes=allow_changes, where=str(out),
                           ignore=(*RESUME_IGNORE, "teacher.path"))
    record_history(out, {"event": "resume", "step": step})
    if changes:
        record_history(out, {"event": "changed", "changed": changed_values(saved, now, changes)})


def distill(student: Student, *, resume: bool = False, allow_changes: bool = False, progress: bool = True,
            log=print) -> Path:
    """Tune (or train) the consistency model ``student`` describes; returns the run directory."""
    t, out = student.cfg.train, Path(student.cfg.train.out)
    ctx = init_distributed(resolve_device(t.device))
    setup_backends(ctx.device, t.tf32)
    log = log if ctx.is_main else (lambda *a, **k: None)  # the other ranks tune, rank 0 reports
    lock = RunLock(out, command="distill", enabled=ctx.is_main)
    ctx.from_main(lambda: (check_not_inside_checkpoint(out), lock.acquire()))
    with lock:
        resume = ctx.from_main(lambda: _check_run_dir(out, resume, log))
        run = DistillRun(student, ctx, resume=resume, log=log)            # build
        if resume:                                                        # restore
            saved = run.restore()
            ctx.from_main(lambda: _check_recipe(out, saved, run.run_config, allow_changes, run.progress.step))
        log(run.describe() + f" | {student.consistency.method}: stage every {run.cc.stage_steps} steps, "
            f"q {run.cc.q:g}, c {run.obj_kw['c']:.3g}")
        ctx.from_main(run.write_config)
        if not resume:
            ctx.from_main(lambda: record_history(out, {"event": "start", "steps": t.steps, "seed": t.seed,
                                                       "teacher": student.sources.get("teacher")}))
        autocast = torch.autocast(ctx.device.type, dtype=torch.bfloat16) if t.bf16 else contextlib.nullcontext()
        sharded = ShardedStep(run.precond, ctx, batch=t.batch, batch_per_device=t.batch_per_device,
                              compile=t.compile, seed=t.seed)
        start, step, stop = run.progress.step, run.progress.step, "steps"
        main = ctx.is_main
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
                    _, grad_norm, applied = run.one_step(sharded, autocast, step)
                    if not applied and run.progress.nonfinite >= t.max_nonfinite:
                        stop = "non-finite"
                        break
                    step = run.progress.step = step + 1
                    if bar is not None:
                        bar.update(1)
                    if step % t.log_every == 0 or step == t.steps:         # log
                        log_file.write(json.dumps({**run.metrics(step, grad_norm, window_t),
                                                   "stage": run.obj_kw["stage"]}) + "\n")
                        log_file.flush()
                        run.progress.window_loss, run.progress.window_n, window_t = 0.0, 0, time.time()
                    if ctx.is_main and t.checkpoint_every and step % t.checkpoint_every == 0 and step < t.steps:
                        run.checkpoint(step)                              # checkpoint
                    if ctx.is_main and t.sample_every and step % t.sample_every == 0 and step < t.steps:
                        run.sample_grid(out / "samples" / f"step-{step:07d}.png")
        except KeyboardInterrupt:
            stop = "interrupted"
        finally:
            if bar is not None:
                bar.close()
            log_file.close()
        if stop == "non-finite":                                          # finish
            from kuosan.checkpoint import list_checkpoints

            raise KuosanError(_nonfinite_message(t, step, run.progress.nonfinite, list_checkpoints(out)))
        if ctx.is_main and step > start:
            log(f"stopped at step {step} ({stop}); checkpoint {run.checkpoint(step)}")
        if stop in ("interrupted", "SIGTERM"):
            raise KeyboardInterrupt
        ctx.from_main(lambda: _finish(run, log))
    return out
