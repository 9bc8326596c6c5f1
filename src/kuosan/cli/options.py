"""Command-line options built from the config dataclasses, so that ``--help`` shows every field with the
comment and default written beside it in :mod:`kuosan.config` (one fact, one place).

Why a short generator over :func:`dataclasses.fields` rather than tyro or jsonargparse: kuosan's
configuration already has its own loader (file < preset < ``--key value`` overrides, with typed,
one-line errors and "did you mean" hints), and both libraries would parse the values a second time
with different rules and error messages. What was missing was only the *listing*; this module adds
every field to argparse as a documented option whose value is handed to that loader unchanged.
"""

from __future__ import annotations

import argparse
import dataclasses
import typing

from kuosan.config import SECTIONS, SampleConfig, field_docs, option_owner

__all__ = ["add_config_options", "add_sample_options", "add_device", "config_overrides", "help_text"]

_SECTION_HELP = {"model": "the network", "diffusion": "parameterisation, noise levels and training loss",
                 "sample": "the model's default sampling settings", "train": "data, optimiser, schedule, run files"}


def help_text(cls, name: str, default=dataclasses.MISSING) -> str:
    """A field's comment and default, escaped for argparse."""
    doc = field_docs(cls).get(name, "")
    if default is dataclasses.MISSING:
        default = {f.name: f.default for f in dataclasses.fields(cls)}[name]
    shown = list(default) if isinstance(default, tuple) else default
    return f"{doc} (default {shown!r})".replace("%", "%%").strip()


class _Override(argparse.Action):
    """Collects ``--section.field VALUE`` in the order given, as overrides for :func:`kuosan.config.load_config`."""

    def __call__(self, parser, namespace, values, option_string=None):
        pairs = list(getattr(namespace, "config_overrides", None) or [])
        pairs.append((self.metavar_key, values))
        namespace.config_overrides = pairs


def _metavar(tp) -> str:
    if typing.get_origin(tp) is typing.Union:
        tp = next(a for a in typing.get_args(tp) if a is not type(None))
    return {bool: "BOOL", int: "N", float: "X", tuple: "A,B,..."}.get(tp, "TEXT")


def add_config_options(parser: argparse.ArgumentParser) -> None:
    """One option per config field, grouped by section: ``--train.lr``, and ``--lr`` where the bare name is
    unambiguous (as :func:`kuosan.config.apply_overrides` reads it), with hyphenated spellings too."""
    for section, cls in SECTIONS.items():
        group = parser.add_argument_group(f"{section} ({_SECTION_HELP[section]})")
        hints = typing.get_type_hints(cls)
        for f in dataclasses.fields(cls):
            names = [f"--{section}.{f.name}"]
            for bare in {f.name, f.name.replace("_", "-")}:
                if option_owner(bare) == (section, f.name):
                    names.insert(0, f"--{bare}")
            if option_owner(section) == (section, f.name):  # --model dit is --model.kind dit
                names.insert(0, f"--{section}")
            flag = hints[f.name] is bool  # --bf16 alone means --bf16 true
            action = group.add_argument(*sorted(set(names), key=lambda n: (len(n), n)), action=_Override,
                                        nargs="?" if flag else None, const="true" if flag else None,
                                        default=argparse.SUPPRESS,
                                        metavar=_metavar(hints[f.name]), help=help_text(cls, f.name))
            action.metavar_key = f"{section}.{f.name}"


def config_overrides(args) -> list[str]:
    """The config options given on the command line, as ``["--section.field=value", ...]`` in order."""
    return [f"--{key}={value}" for key, value in getattr(args, "config_overrides", None) or []]


def add_sample_options(parser, *, sampler=None, steps=None, where="the model's own"):
    """``--sampler --steps --schedule --guidance --guidance-rescale``: default None means ``where`` setting (a
    checkpoint's ``sample`` section, whose own defaults are :class:`kuosan.config.SampleConfig`'s)."""
    from kuosan.diffusion.samplers import SAMPLERS
    from kuosan.diffusion.schedules import SCHEDULES

    d = SampleConfig()
    group = parser.add_argument_group("sampling")

    def fallback(name, given):
        return given if given is not None else f"{where}, else {getattr(d, name)}"

    group.add_argument("--sampler", default=sampler, choices=None, metavar="NAME",
                       help=f"one of {', '.join(sorted(SAMPLERS))} (default: {fallback('sampler', sampler)})")
    group.add_argument("--steps", type=int, default=steps, metavar="N",
                       help=f"{field_docs(SampleConfig)['steps']} (default: {fallback('steps', steps)})")
    group.add_argument("--schedule", default=None, metavar="NAME",
                       help=f"σ grid: {', '.join(SCHEDULES)} (default: {fallback('schedule', None)})")
    group.add_argument("--guidance", type=float, default=None, metavar="W",
                       help=f"{field_docs(SampleConfig)['guidance']} (default: {fallback('guidance', None)})")
    group.add_argument("--guidance-rescale", type=float, default=None, metavar="R",
                       help=f"{field_docs(SampleConfig)['guidance_rescale']} "
                            f"(default: {fallback('guidance_rescale', None)})")
    return group


def add_device(parser) -> None:
    parser.add_argument("--device", default="auto", help="auto (default: CUDA if present), cpu, cuda, cuda:N")
