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


def parse_seeds(text: str | int | Sequence[int]) -> list[int]:
    """``"0-63"`` → 0..63, ``"1,5,9"`` → [1, 5, 9], ``"0-3,10"`` → [0, 1, 2, 3, 10]."""
    from kuosan.errors import KuosanError

    if isinstance(text, int):
        return [text]
    if not isinstance(text, str):
        return [int(s) for s in text]
    seeds: list[int] = []
    try:
        for part in text.split(","):
            part = part.strip()
            if "-" in part[1:]:
                lo, hi = part.split("-", 1) if not part.startswith("-") else (part, "")
                lo_i, hi_i = int(lo), int(hi)
                if hi_i < lo_i:
                    raise ValueError
                if hi_i - lo_i >= 100_000:
                    raise KuosanError(f"seed range {part} is absurdly long (at most 100000 seeds)")
                seeds.extend(range(lo_i, hi_i + 1))
            elif part:
                seeds.append(int(part))
    except ValueError:
        raise KuosanError(f"cannot read seeds {text!r}: use a range like 0-63 or a list like 1,5,9") from None
    if not seeds:
        raise KuosanError(f"no seeds in {text!r}")
    if min(seeds) < 0:
        raise KuosanError("seeds must be non-negative")
    return seeds
