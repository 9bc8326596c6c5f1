"""``kuosan distill``: consistency tuning of a trained model (ECT), or consistency training from scratch; the
student samples in one or two network evaluations (sampler ``consistency``)."""

from __future__ import annotations

import argparse
import dataclasses
import typing

from kuosan.cli.options import help_text

EXAMPLES = """examples:
  kuosan distill --teacher runs/fm --out runs/fm-ect                    ECT from a trained model (EDM or flow)
  kuosan distill --teacher runs/fm --out runs/fm-ect --resume           continue it after a crash or a stop
  kuosan distill --teacher runs/fm --steps 4000 --q 4 --time-limit 600 --out runs/fm-ect
  kuosan distill --method ct --config digits-tiny --steps 2000 --out runs/ct     consistency training, no teacher
  kuosan sample --checkpoint runs/fm-ect --n 64 --out samples/          2 steps (its default); --steps 1: one step
  kuosan evaluate --checkpoint runs/fm-ect --n 1000 --reference fashion-mnist:test --out eval/
"""

# The training settings a distill run takes (the data, model and parameterisation are the teacher's).
TRAIN_OPTIONS = ("steps", "time_limit", "batch", "batch_per_device", "lr", "warmup_steps", "lr_decay", "ema_decay",
                 "grad_clip", "weight_decay", "betas", "seed", "log_every", "sample_every", "checkpoint_every",
                 "keep_checkpoints", "max_nonfinite", "bf16", "device", "data_root", "max_images")


def _metavar(tp) -> str:
    tp = next((a for a in typing.get_args(tp) if a is not type(None)), tp)
    return {bool: "BOOL", int: "N", float: "X", tuple: "A,B"}.get(tp, "TEXT")


def _parser(tp):
    """argparse's ``type`` for a field of type ``tp`` (an Optional one also takes "none")."""
    optional = type(None) in typing.get_args(tp)
    base = next((a for a in typing.get_args(tp) if a is not type(None)), tp)

    def parse(text: str):
        return None if optional and text.lower() in ("none", "null") else base(text)
    parse.__name__ = base.__name__  # argparse's message: "invalid float value: 'x'"
    return parse


def register(sub) -> None:
    from kuosan.config import TrainConfig
    from kuosan.training.distill import DISTILL_TRAIN_DEFAULTS, ConsistencyConfig

    p = sub.add_parser("distill", help="consistency tuning (ECT): a model that samples in 1-2 steps",
                       description="Tune a trained kuosan model into a consistency model (Easy Consistency Tuning, "
                                   "Geng et al. 2025), or train one from scratch; it samples in one or two network "
                                   "evaluations.", epilog=EXAMPLES,
                       formatter_class=argparse.RawDescriptionHelpFormatter, allow_abbrev=False)
    p.add_argument("--teacher", default=None, help="the model to tune: a kuosan run or checkpoint directory")
    p.add_argument("--config", default=None, help="--method ct: a preset or config file for network and data")
    p.add_argument("--out", required=True, help="the student's run directory")
    p.add_argument("--resume", action="store_true", help="continue the run in --out from its newest checkpoint")
    p.add_argument("--allow-changes", action="store_true", help="with --resume: accept changed settings")
    group = p.add_argument_group("consistency (the method)")
    hints = typing.get_type_hints(ConsistencyConfig)
    for f in dataclasses.fields(ConsistencyConfig):
        choices = ("ect", "ct") if f.name == "method" else None
        group.add_argument(f"--{f.name.replace('_', '-')}", dest=f"cc_{f.name}", default=None, choices=choices,
                           type=_parser(hints[f.name]), metavar=None if choices else _metavar(hints[f.name]),
                           help=help_text(ConsistencyConfig, f.name))
    group = p.add_argument_group("training (defaults of a tuning run; --method ct: the config's)")
    hints = typing.get_type_hints(TrainConfig)
    for name in TRAIN_OPTIONS:
        default = DISTILL_TRAIN_DEFAULTS.get(name, dataclasses.MISSING)
        text = help_text(TrainConfig, name, default) if name != "batch" else \
            "images per optimiser step, over all processes (default: the teacher's)"
        group.add_argument(f"--{name.replace('_', '-')}", dest=f"train_{name}", default=None,
                           metavar=_metavar(hints[name]), help=text)
    p.set_defaults(run=run)


def _consistency_config(args):
    from kuosan.training.distill import ConsistencyConfig

    given = {f.name: getattr(args, f"cc_{f.name}") for f in dataclasses.fields(ConsistencyConfig)}
    return ConsistencyConfig(**{k: v for k, v in given.items() if v is not None})


def run(args) -> int:
    from kuosan.training.distill import distill, prepare_student

    train = {name: getattr(args, f"train_{name}") for name in TRAIN_OPTIONS
             if getattr(args, f"train_{name}") is not None}
    student = prepare_student(_consistency_config(args), {**train, "out": args.out}, teacher=args.teacher,
                              config=args.config)
    distill(student, resume=args.resume, allow_changes=args.allow_changes)
    return 0
