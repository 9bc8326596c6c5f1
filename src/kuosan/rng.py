"""Randomness, injected: one generator per seed, so image k is the same whatever the batch size.

A "generator" argument anywhere in kuosan may be ``None`` (the global RNG), one
``torch.Generator`` (the whole batch draws from it), or a list of generators, one per sample.
"""

from __future__ import annotations

from typing import Sequence

import torch

__all__ = ["generators_for_seeds", "randn", "randn_like", "parse_seeds"]

Generator = torch.Generator | Sequence[torch.Generator] | None


def generators_for_seeds(seeds: Sequence[int], device: str | torch.device = "cpu") -> list[torch.Generator]:
    """One CPU generator per seed. Noise is drawn on the CPU and moved, so a seed gives the
    same image on every device."""
    return [torch.Generator("cpu").manual_seed(int(s)) for s in seeds]


def randn(shape: Sequence[int], generator: Generator = None, device=None,
          dtype=torch.float32) -> torch.Tensor:
    """Standard normal noise of ``shape``; with a list of generators, row i comes from generator i."""
    if isinstance(generator, (list, tuple)):
        if len(generator) != shape[0]:
            raise ValueError(f"{len(generator)} generators for a batch of {shape[0]}")
        rows = [torch.randn(tuple(shape[1:]), generator=g, dtype=dtype, device="cpu") for g in generator]
        return torch.stack(rows).to(device)
    if generator is not None and generator.device.type == "cpu":
        return torch.randn(tuple(shape), generator=generator, dtype=dtype).to(device)
    return torch.randn(tuple(shape), generator=generator, dtype=dtype, device=device)


def randn_like(x: torch.Tensor, generator: Generator = None) -> torch.Tensor:
    return randn(x.shape, generator, device=x.device, dtype=x.dtype)


SEED_MAX = 2 ** 63 - 1   # torch.Generator.manual_seed takes a signed 64-bit seed
MAX_SEEDS = 100_000      # seeds one call may ask for: a typo ("0-9999999") must not run for days


def parse_seeds(text: str | int | Sequence[int]) -> list[int]:
    """``"0-63"`` → 0..63, ``"1,5,9"`` → [1, 5, 9], ``"0-3,10"`` → [0, 1, 2, 3, 10]; an int or a list of
    ints as they are. Every seed is a whole number from 0 to :data:`SEED_MAX`, at most :data:`MAX_SEEDS` of
    them; anything else is a one-line :class:`~kuosan.errors.KuosanError`."""
    from kuosan.errors import KuosanError

    if isinstance(text, str):
        seeds = _parse_seed_text(text)
    elif isinstance(text, int) and not isinstance(text, bool):
        seeds = [text]
    elif isinstance(text, (bytes, bytearray)) or not hasattr(text, "__iter__"):
        raise KuosanError(f"cannot read seeds {_short(text)}: use a range like 0-63 or a list like 1,5,9")
    else:
        seeds = []
        for s in text:
            if isinstance(s, bool) or not isinstance(s, int):
                raise KuosanError(f"a seed is a whole number, got {_short(s)}")
            seeds.append(s)
            if len(seeds) > MAX_SEEDS:
                raise KuosanError(f"absurdly many seeds (at most {MAX_SEEDS} a call)")
    if not seeds:
        raise KuosanError(f"no seeds in {_short(text)}")
    if min(seeds) < 0:
        raise KuosanError("seeds must be non-negative")
    if max(seeds) > SEED_MAX:
        raise KuosanError(f"seed {max(seeds)} is too large (seeds go from 0 to 2**63 - 1)")
    return seeds


def _parse_seed_text(text: str) -> list[int]:
    from kuosan.errors import KuosanError

    seeds: list[int] = []
    try:
        for part in text.split(","):
            part = part.strip()
            if "-" in part[1:]:
                lo, hi = part.split("-", 1) if not part.startswith("-") else (part, "")
                lo_i, hi_i = int(lo), int(hi)
                if hi_i < lo_i:
                    raise ValueError
                if hi_i - lo_i >= MAX_SEEDS:
                    raise KuosanError(f"seed range {_short(part)} is absurdly long (at most {MAX_SEEDS} seeds)")
                seeds.extend(range(lo_i, hi_i + 1))
            elif part:
                seeds.append(int(part))
            if len(seeds) > MAX_SEEDS:
                raise KuosanError(f"seeds {_short(text)} are absurdly many (at most {MAX_SEEDS} a call)")
    except ValueError:
        raise KuosanError(f"cannot read seeds {_short(text)}: use a range like 0-63 or a list like 1,5,9") from None
    return seeds


def _short(value) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."
