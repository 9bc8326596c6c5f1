"""``kuosan train``: a config (preset or file) and ``--section.field value`` overrides -> a training run."""

from __future__ import annotations

import argparse
import json

from kuosan.cli.options import add_config_options, config_overrides
from kuosan.config import load_config, preset_names, resolve_config_path

EXAMPLES = """examples:
  kuosan train --config fashion-mnist --steps 2000 --out runs/fm
  kuosan train --config demo --train.lr 1e-3 --bf16
  kuosan train --config runs/fm/config.json --resume --out runs/fm
  kuosan train --config my.yaml --lr 1e-3 --model.base_channels 96
  kuosan train --init-from runs/fm --data mnist --out runs/mnist                  fine-tune (lr / 10)
  kuosan train --init-from runs/fm --data mnist --freeze "down.*,mid.*" --out runs/mnist-top
  kuosan train --init-from runs/fm --data mnist --lora-rank 8 --out runs/mnist-lora
  kuosan train --config fashion-mnist --autoencoder runs/ae-fm --sigma_data 1 --out runs/ldm-fm
  kuosan train --model dit --model.patch_size 2 --diffusion.precond flow --out runs/dit
A bare name sets the training field when several sections have it (--steps is --train.steps).
"""


def register(sub) -> None:
    p = sub.add_parser("train", help="train a model from a config and --key value overrides",
                       usage="kuosan train [--config FILE|PRESET] [--resume [--allow-changes]] "
                             "[--section.field VALUE ...]",
                       description="Train a diffusion model. Settings come from the defaults, then --config, "
                                   "then the options below, in that order.",
                       epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter, allow_abbrev=False)
    p.add_argument("--config", default="fashion-mnist",
                   help=f"a JSON/YAML/TOML file, a run's config.json, or a preset: {', '.join(preset_names())} "
                        "(default fashion-mnist)")
    p.add_argument("--resume", action="store_true",
                   help="continue the run in --out from its newest intact checkpoint (from step 0 if it has none)")
    p.add_argument("--allow-changes", action="store_true",
                   help="with --resume: accept settings that differ from the run's (recorded in its history.jsonl)")
    add_config_options(p)
    p.set_defaults(run=run, accepts_overrides=True)


def _base_config(name: str):
    """(sections to start from, whether it is a run's own config.json) for ``--config``."""
    source = resolve_config_path(name)
    if isinstance(source, dict):
        return source, None, False
    if source.suffix == ".json":  # a run's own config.json (with network/data sections) is accepted too
        try:
            data = json.loads(source.read_text())
        except ValueError:
            data = None
        if isinstance(data, dict) and data.get("format") == "kuosan-checkpoint":
            return {k: data[k] for k in ("model", "diffusion", "sample", "train") if k in data}, None, True
    return None, source, False


def run(args) -> int:
    from kuosan.training.finetune import finetune_config
    from kuosan.training.loop import train

    overrides = config_overrides(args) + list(getattr(args, "extra_overrides", []))
    base, path, run_config = _base_config(args.config)
    cfg = load_config(path, overrides, base=base)
    if cfg.train.init_from and not run_config:  # a run's config.json holds the fine-tuning settings already
        cfg = finetune_config(cfg, overrides)
    train(cfg, resume=args.resume, allow_changes=args.allow_changes)
    return 0
