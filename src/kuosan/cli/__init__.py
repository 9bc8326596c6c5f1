"""The ``kuosan`` command line: one thin module per command group (parse, call the library, print one
line on error). Each module's ``register(subparsers)`` adds its command and sets ``run`` to the function
that executes it; :func:`main` turns user mistakes into ``kuosan: error: <one line>`` and exit status 2."""

from __future__ import annotations

import argparse
import sys
import warnings

# On a busy machine idle OpenMP threads sleep instead of spinning: there spinning threads steal each
# other's cores (a 2-thread training step measured up to 8× slower, benchmarks/results/distributed-passive.json);
# on a quiet one they spin briefly, as GNU OpenMP does by default (kuosan.runtime.openmp_defaults). Must run
# before torch starts its thread pool; kuosan.runtime does not import torch.
from kuosan.runtime import openmp_defaults  # noqa: E402

openmp_defaults()

from kuosan import __version__  # noqa: E402
from kuosan.cli import bench, data, demo, distill, edit, evaluate, export, gan, latent, lora, sample, serve, train  # noqa: E402
from kuosan.errors import KuosanError  # noqa: E402

__all__ = ["main", "build_parser", "one_line", "Parser", "COMMANDS"]

COMMANDS = (demo, train, distill, gan, sample, evaluate, edit, serve, data, latent, lora, export, bench)  # the order of `kuosan --help`

EXAMPLES = """examples:
  kuosan demo                                   train on Fashion-MNIST for ~10 minutes, write runs/demo/
  kuosan train --config fashion-mnist --steps 2000 --out runs/fm
  kuosan train --config runs/fm/config.json --resume --out runs/fm
  kuosan sample --checkpoint runs/fm --n 64 --sampler heun --steps 18 --class 3 --guidance 2.0 --out samples/
  kuosan evaluate --checkpoint runs/fm --n 1000 --reference fashion-mnist:test --out eval/
  kuosan data fashion-mnist:test                show what a data set spec loads
  kuosan train --init-from runs/fm --data mnist --out runs/mnist     fine-tune (lr / 10, --freeze "down.*")
  kuosan train --init-from runs/fm --data mnist --lora-rank 8 --out runs/mnist-lora    LoRA adapters
  kuosan sample --checkpoint runs/fm --adapter runs/mnist-lora/adapter.safetensors:0.8 --out samples/
  kuosan train-autoencoder --data fashion-mnist --out runs/ae-fm      then, in its latent space:
  kuosan train --config fashion-mnist --autoencoder runs/ae-fm --sigma_data 1 --out runs/ldm-fm
one process per GPU (or CPU share) with torchrun; --batch is global:
  torchrun --nproc_per_node=4 -m kuosan train --config fashion-mnist --batch 256 --out runs/fm4
  torchrun --nproc_per_node=4 -m kuosan sample --checkpoint runs/fm4 --seeds 0-9999 --out samples/
`kuosan COMMAND --help` lists every option of a command.
"""


_LINE_BREAKS = "\n\r\v\f\x1c\x1d\x1e\x85\u2028\u2029"  # what str.splitlines() splits at


def one_line(text) -> str:
    """``text`` with its line breaks written as escapes (``\\n``): a message quoting what the user typed
    stays on one line."""
    return "".join(repr(c)[1:-1] if c in _LINE_BREAKS else c for c in str(text))


class Parser(argparse.ArgumentParser):
    """An argument parser whose usage errors are one line, ``kuosan: error: <problem> (see `kuosan CMD
    --help`)``, exit status 2, like every other error of the command line; ``--help`` is argparse's own.
    Subcommand parsers are of this class too (``add_subparsers`` makes its parsers of the parent's type)."""

    def error(self, message):
        self.exit(2, f"kuosan: error: {one_line(message)} (see `{one_line(self.prog)} --help`)\n")


def _chosen_parser(parser: argparse.ArgumentParser, args) -> argparse.ArgumentParser:
    """The innermost (sub)command parser that ``args`` came through: its --help is the one to point at."""
    while True:
        subs = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
        chosen = subs[0].choices.get(getattr(args, subs[0].dest, None)) if subs else None
        if chosen is None:
            return parser
        parser = chosen


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="kuosan", description="Train, sample and evaluate diffusion models.", epilog=EXAMPLES,
                    formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"kuosan {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for module in COMMANDS:
        module.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    from kuosan.runtime import tune_allocator

    tune_allocator()
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    warnings.formatwarning = lambda msg, cat, *a, **k: f"kuosan: warning: {msg}\n"
    try:
        if extra and not getattr(args, "accepts_overrides", False):
            _chosen_parser(parser, args).error(f"unrecognized arguments: {' '.join(extra)}")
        if args.command is None:
            parser.print_help()
            return 0
        if extra:
            args.extra_overrides = extra  # `kuosan train`: the config loader names an unknown key, with a hint
        return args.run(args)
    except KuosanError as e:
        print(f"kuosan: error: {one_line(e)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("kuosan: interrupted", file=sys.stderr)
        return 130
    except OSError as e:  # a path the user gave: missing, not writable, a file where a folder should be
        where = f": {e.filename}" if e.filename else ""
        print(f"kuosan: error: {one_line(f'{e.strerror or e}{where}')}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
