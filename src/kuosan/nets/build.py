"""Build a network from its config and measure it."""

from __future__ import annotations

import dataclasses

import torch
from torch import nn

from kuosan.errors import KuosanError

__all__ = ["build_network", "count_parameters", "count_flops", "NETWORKS"]


def _unet(fields: dict) -> nn.Module:
    from kuosan.nets.unet import UNet, UNetConfig

    return UNet(UNetConfig(**fields))


NETWORKS = {"unet": _unet}


def network_fields(kind: str) -> set[str]:
    """The keyword arguments a network kind accepts (for config validation)."""
    if kind == "unet":
        from kuosan.nets.unet import UNetConfig

        return {f.name for f in dataclasses.fields(UNetConfig)}
    if kind == "dit":
        from kuosan.nets.dit import DiTConfig

        return {f.name for f in dataclasses.fields(DiTConfig)}
    raise KuosanError(f"unknown network {kind!r}; choose one of {', '.join(sorted(NETWORKS))}")


def build_network(kind: str, **fields) -> nn.Module:
    """A freshly initialised network of ``kind`` ('unet', …) with the given config fields."""
    if kind not in NETWORKS:
        raise KuosanError(f"unknown network {kind!r}; choose one of {', '.join(sorted(NETWORKS))}")
    unknown = set(fields) - network_fields(kind)
    if unknown:
        raise KuosanError(f"unknown {kind} setting(s): {', '.join(sorted(unknown))}")
    for key in ("channel_mults", "attn_resolutions"):
        if key in fields and fields[key] is not None:
            fields[key] = tuple(fields[key])
    return NETWORKS[kind](fields)


def count_parameters(module: nn.Module, trainable_only: bool = False) -> int:
    return sum(p.numel() for p in module.parameters() if p.requires_grad or not trainable_only)


@torch.no_grad()
def count_flops(net: nn.Module, in_channels: int, resolution: int, batch: int = 1,
                num_classes: int = 0) -> int:
    """Floating-point operations of one forward pass (a multiply-add counts 2), by torch's counter."""
    from torch.utils.flop_counter import FlopCounterMode

    device = next(net.parameters()).device
    x = torch.zeros(batch, in_channels, resolution, resolution, device=device)
    c = torch.zeros(batch, device=device)
    labels = torch.zeros(batch, dtype=torch.long, device=device) if num_classes else None
    counter = FlopCounterMode(display=False)
    with counter:
        net(x, c, labels)
    return int(counter.get_total_flops())
