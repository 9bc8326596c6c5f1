"""``kuosan evaluate``: quality, diversity, stability and speed in one report (:mod:`kuosan.evaluation`)."""

from __future__ import annotations

import argparse

from kuosan.evaluation import cli as eval_cli


def register(sub) -> None:
    p = sub.add_parser("evaluate", help="quality, diversity, stability and speed in one report",
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    eval_cli.add_arguments(p)
    p.set_defaults(run=eval_cli.run)
