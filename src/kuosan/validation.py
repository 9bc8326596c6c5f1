"""The one validation layer: every number and name a user can pass, whichever door it comes in by (command
line, Python API, config file, web page), is checked here before any work starts. Each check raises
:class:`~kuosan.errors.KuosanError` with one line naming the value; the command line prints that line, the
API raises it. ``prefix`` spells a name as its door does (``--steps`` on the command line, ``steps`` in
Python); the rest of the message is the same.

Config files and ``--section.field`` options are checked by :func:`kuosan.config.validate` on load (types
by :mod:`kuosan.config`, registries through the functions below); sampling requests by
:func:`check_sample_request`.
"""

from __future__ import annotations

import math
import numbers
from typing import Iterable

from kuosan.diffusion.samplers import SAMPLERS
from kuosan.diffusion.schedules import SCHEDULES
from kuosan.diffusion.thresholding import parse_threshold
from kuosan.errors import KuosanError
from kuosan.rng import parse_seeds

__all__ = ["whole", "real", "one_of", "seed_list", "check_sample_request", "LIMITS"]

# Upper bounds of counts: generous for real work, small enough that a typo does not run for days.
LIMITS = {"steps": 10_000, "n": 100_000, "batch": 65_536, "seed": 2 ** 63 - 1, "guidance": 100.0}


def _shown(value) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def whole(value, name: str, lo: int | None = None, hi: int | None = None) -> int:
    """``value`` as an int: a whole number (an int, an integral float, or such a string), within [lo, hi]."""
    ok = not isinstance(value, bool)
    if ok and isinstance(value, str):
        try:
            value = float(value) if any(c in value.lower() for c in ".e") else int(value, 10)
        except ValueError:
            ok = False
    if ok and isinstance(value, numbers.Real) and not isinstance(value, numbers.Integral):
        ok = math.isfinite(value) and float(value).is_integer()
    ok = ok and isinstance(value, numbers.Real)
    if not ok:
        raise KuosanError(f"{name} must be a whole number, got {_shown(value)}")
    value = int(value)
    _in_range(value, name, lo, hi)
    return value


def real(value, name: str, lo: float | None = None, hi: float | None = None) -> float:
    """``value`` as a finite float within [lo, hi]."""
    try:
        out = float(value) if not isinstance(value, bool) else math.nan
    except (TypeError, ValueError, OverflowError):
        out = math.nan
    if not math.isfinite(out):
        raise KuosanError(f"{name} must be a finite number, got {_shown(value)}")
    _in_range(out, name, lo, hi)
    return out


def _in_range(value, name, lo, hi) -> None:
    if lo is not None and hi is not None and not lo <= value <= hi:
        if lo == 1 and value < 1:
            raise KuosanError(f"{name} must be positive, got {value}")
        raise KuosanError(f"{name} must be between {lo} and {hi}, got {value}")
    if lo is not None and value < lo:
        raise KuosanError(f"{name} must be at least {lo}, got {value}")
    if hi is not None and value > hi:
        raise KuosanError(f"{name} {value} is absurdly large (at most {hi})")


def one_of(value, name: str, choices: Iterable[str], what: str = "") -> str:
    """``value`` if it is one of ``choices`` (a registry's names), else one line listing them."""
    choices = sorted(choices)
    if not isinstance(value, str) or value not in choices:
        raise KuosanError(f"unknown {what or name} {_shown(value)}; choose one of {', '.join(choices)}")
    return value


def seed_list(seeds, name: str = "seeds") -> list[int]:
    """Seeds as given to a sampling call: a count, a range string ``"0-63"``, or a list of whole numbers."""
    if isinstance(seeds, bool):
        raise KuosanError(f"{name} must be a count, a range like 0-63 or a list of whole numbers, got {seeds!r}")
    if isinstance(seeds, numbers.Integral):
        return list(range(whole(seeds, f"{name} (a count)", 1, LIMITS["n"])))
    if isinstance(seeds, str):
        out = parse_seeds(seeds)
    else:
        try:
            items = list(seeds)
        except TypeError:
            raise KuosanError(f"{name} must be a count, a range like 0-63 or a list of whole numbers, "
                              f"got {_shown(seeds)}") from None
        out = [whole(s, f"a seed in {name}", 0, LIMITS["seed"]) for s in items]
    if not out:
        raise KuosanError(f"no seeds in {name}")
    if len(out) > LIMITS["n"]:
        raise KuosanError(f"{len(out)} seeds is absurdly many (at most {LIMITS['n']} images a call)")
    bad = [s for s in out if not 0 <= s <= LIMITS["seed"]]
    if bad:
        raise KuosanError(f"seeds must be whole numbers from 0 to 2**63 - 1, got {bad[0]}")
    return out


def check_sample_request(*, n=None, seeds=None, sampler=None, steps=None, schedule=None, guidance=None,
                         batch=None, threshold=None, prefix: str = "") -> dict:
    """Check a sampling request (None means "the model's default") and return it normalised: ``seeds`` as a
    list (``n`` images from seed 0 when only ``n`` is given, 64 when neither), numbers as int/float,
    ``threshold`` parsed."""
    p = prefix
    out = {"sampler": None if sampler is None else one_of(sampler, f"{p}sampler", SAMPLERS, "sampler"),
           "schedule": None if schedule is None else one_of(schedule, f"{p}schedule", SCHEDULES, "schedule"),
           "steps": None if steps is None else whole(steps, f"{p}steps", 1, LIMITS["steps"]),
           "guidance": None if guidance is None else real(guidance, f"{p}guidance", 0, LIMITS["guidance"]),
           "batch": None if batch is None else whole(batch, f"{p}batch", 1, LIMITS["batch"]),
           "threshold": parse_threshold(threshold)}
    count = None if n is None else whole(n, f"{p}n", 1, LIMITS["n"])
    out["seeds"] = seed_list(seeds, f"{p}seeds") if seeds is not None else list(range(count or 64))
    if count is not None and seeds is not None and count != len(out["seeds"]):
        raise KuosanError(f"{p}n {count} disagrees with {p}seeds ({len(out['seeds'])} seeds)")
    return out
