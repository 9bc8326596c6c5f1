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

import inspect
import itertools
import math
import numbers
from collections.abc import Mapping
from pathlib import Path
from typing import Iterable

from kuosan.diffusion.samplers import SAMPLERS
from kuosan.diffusion.schedules import SCHEDULES
from kuosan.diffusion.thresholding import parse_threshold
from kuosan.errors import KuosanError, user_path
from kuosan.rundir import check_not_inside_checkpoint
from kuosan.rng import MAX_SEEDS, SEED_MAX, parse_seeds

__all__ = ["whole", "real", "flag", "one_of", "seed_list", "adapter_list", "check_sampler_options",
           "check_sample_request", "output_dir", "output_file", "LIMITS"]

# Upper bounds of counts: generous for real work, small enough that a typo does not run for days.
LIMITS = {"steps": 10_000, "n": MAX_SEEDS, "batch": 65_536, "seed": SEED_MAX, "guidance": 100.0,
          "adapter_weight": 100.0}


def _shown(value) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _scalar(value):
    """A one-element numpy array or torch tensor as the Python number it holds; anything else unchanged."""
    if getattr(value, "ndim", None) == 0 and callable(getattr(value, "item", None)) and not isinstance(value, str):
        try:
            return value.item()
        except (TypeError, ValueError, RuntimeError):
            return value
    return value


def whole(value, name: str, lo: int | None = None, hi: int | None = None) -> int:
    """``value`` as an int: a whole number (an int, an integral float, a 0-d array or tensor, or such a
    string), within [lo, hi]."""
    value = _scalar(value)
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
    """``value`` as a finite float within [lo, hi] (a number, a 0-d array or tensor, or such a string)."""
    value = _scalar(value)
    try:
        out = float(value) if isinstance(value, (numbers.Real, str)) and not isinstance(value, bool) else math.nan
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


def flag(value, name: str) -> bool:
    """``value`` as a bool: True or False (numpy's too), or the ints 1 and 0; a string like "no" is refused,
    since Python would read every non-empty string as True."""
    value = _scalar(value)
    if isinstance(value, bool) or type(value).__name__ == "bool_":
        return bool(value)
    if isinstance(value, numbers.Integral) and int(value) in (0, 1):
        return bool(value)
    raise KuosanError(f"{name} must be True or False, got {_shown(value)}")


def one_of(value, name: str, choices: Iterable[str], what: str = "") -> str:
    """``value`` if it is one of ``choices`` (a registry's names), else one line listing them."""
    choices = sorted(choices)
    if not isinstance(value, str) or value not in choices:
        raise KuosanError(f"unknown {what or name} {_shown(value)}; choose one of {', '.join(choices)}")
    return value


def seed_list(seeds, name: str = "seeds") -> list[int]:
    """Seeds as given to a sampling call: a count, a range string ``"0-63"``, or a list (a numpy array, a
    tensor) of whole numbers."""
    wrong = f"{name} must be a count, a range like 0-63 or a list of whole numbers, got {_shown(seeds)}"
    seeds = _scalar(seeds)
    if isinstance(seeds, bool) or isinstance(seeds, (bytes, bytearray, Mapping)):
        raise KuosanError(wrong)
    if isinstance(seeds, numbers.Integral):
        return list(range(whole(seeds, f"{name} (a count)", 1, LIMITS["n"])))
    if isinstance(seeds, str):
        out = parse_seeds(seeds)
    else:
        if hasattr(seeds, "__len__") and not hasattr(seeds, "ndim"):
            try:
                if len(seeds) > LIMITS["n"]:
                    raise KuosanError(f"{len(seeds)} seeds is absurdly many (at most {LIMITS['n']} images a call)")
            except TypeError:
                pass
        try:
            items = list(itertools.islice(iter(seeds), LIMITS["n"] + 1))
        except TypeError:
            raise KuosanError(wrong) from None
        out = [whole(s, f"a seed in {name}", 0, LIMITS["seed"]) for s in items]
    if not out:
        raise KuosanError(f"no seeds in {name}")
    if len(out) > LIMITS["n"]:
        raise KuosanError(f"{len(out)} seeds is absurdly many (at most {LIMITS['n']} images a call)")
    bad = [s for s in out if not 0 <= s <= LIMITS["seed"]]
    if bad:
        raise KuosanError(f"seeds must be whole numbers from 0 to 2**63 - 1, got {bad[0]}")
    return out


def adapter_list(adapters, name: str = "adapters") -> list[tuple[str, float]]:
    """LoRA adapters to mix in: paths, or ``(path, weight)`` pairs with a finite weight of at most
    ``LIMITS["adapter_weight"]`` in size (a NaN weight would turn every image black)."""
    if adapters is None:
        return []
    if isinstance(adapters, (str, bytes, Mapping)) or hasattr(adapters, "__fspath__"):
        adapters = [adapters]
    try:
        items = list(adapters)
    except TypeError:
        raise KuosanError(f"{name} must be a list of paths or (path, weight) pairs, got {_shown(adapters)}") from None
    out = []
    for item in items:
        path, weight = (item, 1.0) if isinstance(item, str) or hasattr(item, "__fspath__") else (None, None)
        if path is None:
            if not isinstance(item, (tuple, list)) or len(item) != 2:
                raise KuosanError(f"an adapter is a path or a (path, weight) pair, got {_shown(item)}")
            path, weight = item
        if not (isinstance(path, str) or hasattr(path, "__fspath__")):
            raise KuosanError(f"an adapter's path must be a string or a path, got {_shown(path)}")
        limit = LIMITS["adapter_weight"]
        out.append((str(path), real(weight, f"the weight of adapter {path}", -limit, limit)))
    return out


def _no_nul(path, what: str) -> None:
    """A path with a NUL character names no file on any system (the OS calls refuse it)."""
    if "\x00" in str(path):
        raise KuosanError(f"{what} {str(path)!r} contains a NUL character; give a path without it")


def output_dir(path, what: str = "--out") -> Path:
    """A directory to write into: named, not an existing file, not inside a checkpoint (checked before any
    work, so a long job does not fail at its last step)."""
    if not isinstance(path, (str, Path)) or not str(path).strip():
        raise KuosanError(f"{what} is empty; give an output directory")
    _no_nul(path, what)
    out = user_path(path, what)
    if out.exists() and not out.is_dir():
        raise KuosanError(f"{what} {path} is a file; give a directory")
    check_not_inside_checkpoint(out, what)
    return out


def output_file(path, what: str = "--out", suffix: str | None = ".png") -> Path:
    """A file to write: named (with ``suffix``), not a directory, not inside a checkpoint."""
    if not isinstance(path, (str, Path)) or not str(path).strip():
        raise KuosanError(f"{what} is empty; give a file name")
    _no_nul(path, what)
    out = user_path(path, what)
    if out.is_dir() or not out.name or out.name in (".", ".."):
        raise KuosanError(f"{what} {path} is a directory; give a file name like {what.lstrip('-')}{suffix or ''}")
    if suffix and out.suffix.lower() != suffix:
        raise KuosanError(f"{what} {path} should end in {suffix} (a {suffix[1:].upper()} file is written)")
    check_not_inside_checkpoint(out.parent, what)
    return out


_STANDARD_ARGS = {"denoiser", "x", "sigmas", "extra_args", "callback", "generator"}


def check_sampler_options(sampler: str, options, name: str = "sampler_options") -> dict:
    """Options for a sampler (``{"eta": 0.5}``): a mapping of its own keyword arguments to numbers (finite,
    not negative; an option whose default is infinite may be infinite), or lists of such numbers."""
    if options is None:
        return {}
    if not isinstance(options, Mapping):
        raise KuosanError(f"{name} must be a dict of the sampler's options, got {_shown(options)}")
    fn = SAMPLERS[one_of(sampler, "sampler", SAMPLERS, "sampler")]
    params = {k: v for k, v in inspect.signature(fn).parameters.items() if k not in _STANDARD_ARGS}
    out = {}
    for key, value in options.items():
        if key not in params:
            takes = ", ".join(sorted(params)) or "no options"
            raise KuosanError(f"sampler {sampler} has no option {_shown(key)} (it takes {takes})")
        default = params[key].default
        if isinstance(default, bool):
            out[key] = flag(value, f"{name}[{key!r}]")
        elif isinstance(default, numbers.Integral):
            out[key] = whole(value, f"{name}[{key!r}]", 0, LIMITS["steps"])
        elif isinstance(default, numbers.Real) and default == math.inf and _scalar(value) == math.inf:
            out[key] = math.inf
        elif isinstance(default, numbers.Real):
            out[key] = real(value, f"{name}[{key!r}]", 0, 1e6)
        elif isinstance(value, (list, tuple)):
            out[key] = [real(v, f"a value in {name}[{key!r}]", 0, 1e6) for v in value]
        elif value is None:
            out[key] = None
        else:
            out[key] = real(value, f"{name}[{key!r}]", 0, 1e6)
    return out


# the request fields that override a model's ``sample`` section (kuosan.config.SampleConfig's names)
SAMPLE_FIELDS = ("sampler", "steps", "schedule", "guidance", "guidance_rescale")


def check_sample_request(*, n=None, seeds=None, sampler=None, steps=None, schedule=None, guidance=None,
                         guidance_rescale=None, batch=None, threshold=None, bf16=None, progress=None,
                         prefix: str = "") -> dict:
    """Check a sampling request (None means "the model's default") and return it normalised: ``seeds`` as a
    list (``n`` images from seed 0 when only ``n`` is given, 64 when neither), numbers as int/float,
    ``threshold`` parsed, ``bf16`` a bool, ``progress`` a callable or None."""
    p = prefix
    out = {"sampler": None if sampler is None else one_of(sampler, f"{p}sampler", SAMPLERS, "sampler"),
           "schedule": None if schedule is None else one_of(schedule, f"{p}schedule", SCHEDULES, "schedule"),
           "steps": None if steps is None else whole(steps, f"{p}steps", 1, LIMITS["steps"]),
           "guidance": None if guidance is None else real(guidance, f"{p}guidance", 0, LIMITS["guidance"]),
           # named as the door spells it: --guidance-rescale on the command line, guidance_rescale elsewhere
           "guidance_rescale": None if guidance_rescale is None else real(
               guidance_rescale, f"{p}guidance{'-' if p else '_'}rescale", 0, 1),
           "batch": None if batch is None else whole(batch, f"{p}batch", 1, LIMITS["batch"]),
           "threshold": parse_threshold(threshold),
           "bf16": None if bf16 is None else flag(bf16, f"{p}bf16")}
    if progress is not None and not callable(progress):
        raise KuosanError(f"{p}progress must be a function of the number of images done, got {_shown(progress)}")
    count = None if n is None else whole(n, f"{p}n", 1, LIMITS["n"])
    out["seeds"] = seed_list(seeds, f"{p}seeds") if seeds is not None else list(range(count or 64))
    if count is not None and seeds is not None and count != len(out["seeds"]):
        raise KuosanError(f"{p}n {count} disagrees with {p}seeds ({len(out['seeds'])} seeds)")
    return out
