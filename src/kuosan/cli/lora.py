"""``kuosan lora``: inspect LoRA adapter files and merge adapters into a plain checkpoint.

examples:
  kuosan lora info runs/mnist-lora/adapter.safetensors
  kuosan lora merge --checkpoint runs/fm --adapter runs/mnist-lora/adapter.safetensors --out runs/mnist-merged
  kuosan lora merge --checkpoint runs/fm --adapter a.safetensors:0.7 --adapter b.safetensors:0.5 --out runs/mix
  kuosan lora merge --checkpoint runs/mnist-lora --out runs/mnist-merged     # a LoRA run's own adapters
"""

from __future__ import annotations

import argparse
from pathlib import Path

from kuosan.errors import KuosanError
from kuosan.records import RUN_FORMAT, read_train_state

__all__ = ["register", "add_arguments", "run", "parse_adapter"]


def parse_adapter(text: str) -> tuple[str, float]:
    """``PATH`` or ``PATH:WEIGHT`` -> (path, weight); the weight a finite number (NaN would blacken every image)."""
    from kuosan.validation import LIMITS, real

    path, _, tail = text.rpartition(":")
    if path:
        try:
            weight = float(tail)
        except ValueError:
            if Path(path).exists() and not Path(text).exists():
                raise KuosanError(f"adapter weight {tail!r} in {text!r} is not a number; write PATH:0.8") from None
        else:
            limit = LIMITS["adapter_weight"]
            return path, real(weight, f"the weight of adapter {path}", -limit, limit)
    return text, 1.0


def register(sub) -> None:
    p = sub.add_parser("lora", help="inspect LoRA adapters, merge them into a checkpoint")
    add_arguments(p)
    p.set_defaults(run=run)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.epilog = __doc__.split("\n\n", 1)[1]
    sub = parser.add_subparsers(dest="lora_command", metavar="ACTION")
    p = sub.add_parser("info", help="describe an adapter file")
    p.add_argument("adapter", help="an adapter .safetensors (with its .json beside it) or a LoRA run directory")
    p = sub.add_parser("merge", help="merge adapters into a checkpoint's weights and save a plain checkpoint")
    p.add_argument("--checkpoint", required=True, help="the base: a checkpoint, run or diffusers directory")
    p.add_argument("--adapter", action="append", default=[], metavar="PATH[:WEIGHT]",
                   help="an adapter to merge, with an optional mixing weight (repeatable)")
    p.add_argument("--any-base", action="store_true",
                   help="apply adapters trained on other weights of the same architecture")
    p.add_argument("--out", required=True, help="run directory to write (its checkpoints/step-*)")


def _info(args) -> int:
    from kuosan.nets.lora import read_adapter

    tensors, meta = read_adapter(args.adapter)
    n = sum(t.numel() for t in tensors.values())
    base = meta.get("base") or {}
    print(f"LoRA adapter {meta.get('name')!r}: rank {meta['rank']}, alpha {meta['alpha']:g}, "
          f"{len(meta['layers'])} layers, {n / 1e6:.3f} M parameters")
    print(f"  targets: {', '.join(meta.get('targets') or [])}")
    print(f"  base weights: {meta['base_sha256'][:16]}… ({base.get('path') or 'path not recorded'})")
    if meta.get("replaces"):
        print(f"  replaces: {', '.join(meta['replaces'])}")
    return 0


def _merge(args) -> int:
    import kuosan
    from kuosan.nets.lora import lora_layers, merge_lora, mix_adapters, remove_lora
    from kuosan.checkpoint import save_checkpoint

    from kuosan.validation import output_dir

    out = output_dir(args.out)
    if out.exists() and any(out.iterdir()):
        raise KuosanError(f"--out {out} is not empty; choose another directory")
    adapters = [parse_adapter(a) for a in args.adapter]
    pipe = kuosan.load(args.checkpoint, device="cpu")
    precond = pipe.precond
    names = mix_adapters(precond, adapters, check_base=not args.any_base) if adapters else []
    if not lora_layers(precond):
        raise KuosanError("nothing to merge: give --adapter, or a LoRA run as --checkpoint")
    merge_lora(precond)
    remove_lora(precond, keep_merged=True)
    weights = {k: v.detach().cpu().contiguous() for k, v in precond.state_dict().items()}
    parent = {"path": str(Path(pipe.path).resolve()), "merged_adapters": [
        {"path": str(Path(p).resolve()), "weight": w, "name": n} for (p, w), n in zip(adapters, names)]}
    record = pipe.record.replace(lora=None, source=None, parent=parent, format=RUN_FORMAT)
    state = read_train_state(pipe.path)  # None for a model without training state (a diffusers directory)
    ckpt = save_checkpoint(out, state.step if state is not None else 0, config=record.to_dict(), model=weights,
                           ema=weights)
    what = f"{len(names)} adapter(s)" if names else "the run's adapters"
    print(f"merged {what} into {ckpt}")
    return 0


def run(args) -> int:
    if args.lora_command == "info":
        return _info(args)
    if args.lora_command == "merge":
        return _merge(args)
    raise KuosanError("kuosan lora: give an action, info or merge (see kuosan lora --help)")
