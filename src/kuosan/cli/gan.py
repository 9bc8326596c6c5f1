"""``kuosan train-gan`` and ``kuosan count-modes``: a GAN baseline with the R3GAN objective, and the StackedMNIST
mode counter. Thin: parse, call :mod:`kuosan.training.gan` and :mod:`kuosan.training.gan_modes`."""

from __future__ import annotations

import argparse
import dataclasses
import json
import typing
from pathlib import Path

from kuosan.cli.options import help_text
from kuosan.errors import KuosanError

TRAIN_EXAMPLES = """examples:
  kuosan train-gan --config fashion-mnist --steps 5000 --out runs/gan-fm        class-conditional, 28x28
  kuosan train-gan --config stacked-mnist --steps 5000 --out runs/gan-smnist    unconditional, 1,000 modes
  kuosan train-gan --config emoji --out runs/gan-emoji                          64x64 colour
  kuosan train-gan --out runs/gan-fm --resume
then, like any kuosan checkpoint (one network evaluation an image):
  kuosan sample --checkpoint runs/gan-fm --n 64 --out samples/
  kuosan evaluate --checkpoint runs/gan-fm --sampler euler --steps 1 --n 1000 --out eval/
  kuosan count-modes --images samples/samples.npz                               (StackedMNIST samples)
presets: fashion-mnist (default), stacked-mnist, emoji; --config also takes a JSON file of the options below
"""

MODES_EXAMPLES = """examples:
  kuosan sample --checkpoint runs/gan-smnist --n 10000 --out s/ && kuosan count-modes --images s/samples.npz
  kuosan count-modes --images stacked-mnist:test          the real floor: modes a perfect model's sample covers
"""


def register(sub) -> None:
    p = sub.add_parser("train-gan", help="train a GAN baseline (R3GAN objective) that kuosan samples and evaluates")
    add_arguments(p)
    p.set_defaults(run=run)
    p = sub.add_parser("count-modes", help="StackedMNIST: modes covered out of 1,000 and KL from uniform",
                       epilog=MODES_EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--images", required=True, help="a samples.npz, an image folder, or a data set spec")
    p.add_argument("--out", default=None, help="also write the counts as JSON to this file")
    p.set_defaults(run=run_count_modes)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``kuosan train-gan``: ``--config``, ``--resume`` and one per config field."""
    from kuosan.training.gan import GANTrainConfig

    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.epilog = TRAIN_EXAMPLES
    parser.add_argument("--config", default="fashion-mnist", help="a preset name or a JSON file (default fashion-mnist)")
    parser.add_argument("--resume", action="store_true",
                        help="continue the run in --out from its newest intact checkpoint (from step 0 if it has none)")
    parser.add_argument("--allow-changes", action="store_true",
                        help="with --resume: accept settings that differ from the run's (recorded in its history.jsonl)")
    hints = typing.get_type_hints(GANTrainConfig)
    for f in dataclasses.fields(GANTrainConfig):
        names = [f"--{f.name}"] + ([f"--{f.name.replace('_', '-')}"] if "_" in f.name else [])
        kind = hints[f.name]
        if kind is bool:
            parser.add_argument(*names, dest=f"gan_{f.name}", type=_boolean, nargs="?", const=True, default=None,
                                metavar="BOOL", help=help_text(GANTrainConfig, f.name))
        else:
            parser.add_argument(*names, dest=f"gan_{f.name}", type=_field_type(kind), default=None,
                                metavar=f.name.upper(), help=help_text(GANTrainConfig, f.name))


def _field_type(tp):
    """An argparse ``type`` for a config field's annotation (Optional[...] unwrapped): int, float or str."""
    if typing.get_origin(tp) is typing.Union:
        tp = next(a for a in typing.get_args(tp) if a is not type(None))
    return tp


def _boolean(text: str) -> bool:
    if text.lower() in ("1", "true", "yes", "on"):
        return True
    if text.lower() in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")


def _base_options(name: str) -> dict:
    from kuosan.training.gan import PRESETS

    if name in PRESETS:
        return dict(PRESETS[name])
    path = Path(name)
    if not path.is_file():
        raise KuosanError(f"--config {name!r} is neither a preset ({', '.join(PRESETS)}) nor a JSON file")
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError, UnicodeDecodeError) as e:
        raise KuosanError(f"cannot read {path}: {str(e).splitlines()[0]}") from None
    if isinstance(data, dict) and data.get("format") == "kuosan-checkpoint":
        data = data.get("train", {})                     # a GAN run's own config.json
    if not isinstance(data, dict):
        raise KuosanError(f"{path} must hold a JSON object of train-gan options")
    return data


def config_from_args(args):
    """The :class:`~kuosan.training.gan.GANTrainConfig` of ``--config`` and the options given."""
    from kuosan.training.gan import GANTrainConfig

    options = _base_options(args.config)
    known = {f.name for f in dataclasses.fields(GANTrainConfig)}
    unknown = sorted(set(options) - known)
    if unknown:
        raise KuosanError(f"unknown train-gan option(s) in {args.config}: {', '.join(unknown)}")
    options.update({k: getattr(args, f"gan_{k}") for k in known if getattr(args, f"gan_{k}", None) is not None})
    try:
        return GANTrainConfig(**options)
    except TypeError as e:
        raise KuosanError(f"bad train-gan options in {args.config}: {e}") from None


def run(args) -> int:
    from kuosan.training.gan import train_gan

    out = train_gan(config_from_args(args), resume=args.resume, allow_changes=args.allow_changes)
    print(f"GAN: {out} (sample it with `kuosan sample --checkpoint {out}`: one network evaluation an image)")
    return 0


def _load_images(spec: str):
    from kuosan.data import load_dataset

    return load_dataset(spec).images


def run_count_modes(args) -> int:
    from kuosan.training.gan_modes import count_modes

    report = count_modes(_load_images(args.images))
    print(f"{report['modes_covered']} of {report['modes']} modes covered by {report['images']} images; "
          f"KL(modes || uniform) = {report['kl_to_uniform']:.4f} nats (a perfect model's sample of this size: "
          f"about {report['expected_kl_floor']:.4f}); largest mode {report['top_mode']:03d} "
          f"({100 * report['max_share']:.2f}% of images)")
    if args.out:
        from kuosan.checkpoint import atomic_write_text

        atomic_write_text(Path(args.out), json.dumps(report, indent=2))
    return 0
