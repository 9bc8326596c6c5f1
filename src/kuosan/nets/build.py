"""Build a network from its config and measure it."""

from __future__ import annotations

import dataclasses
import math
from typing import Callable

import torch
from torch import nn

from kuosan.errors import KuosanError

__all__ = ["build_network", "count_parameters", "count_flops", "flops_of", "NETWORKS"]


def _unet(fields: dict) -> nn.Module:
    from kuosan.nets.unet import UNet, UNetConfig

    return UNet(UNetConfig(**fields))


def _dit(fields: dict) -> nn.Module:
    from kuosan.nets.dit import DiT, DiTConfig

    return DiT(DiTConfig(**fields))


def _gan(fields: dict) -> nn.Module:
    from kuosan.nets.gan import GANConfig, GANPair

    return GANPair(GANConfig(**fields))


NETWORKS = {"unet": _unet, "dit": _dit, "gan": _gan}


def network_fields(kind: str) -> set[str]:
    """The keyword arguments a network kind accepts (for config validation)."""
    if kind == "unet":
        from kuosan.nets.unet import UNetConfig

        return {f.name for f in dataclasses.fields(UNetConfig)}
    if kind == "dit":
        from kuosan.nets.dit import DiTConfig

        return {f.name for f in dataclasses.fields(DiTConfig)}
    if kind == "gan":
        from kuosan.nets.gan import GANConfig

        return {f.name for f in dataclasses.fields(GANConfig)}
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


def _attention_flops(q_shape, k_shape, v_shape, *args, out_shape=None, **kwargs) -> int:
    """softmax(Q Kᵀ) V: two batched matmuls, 2·N·M·D and 2·N·M·D_v for each of the leading dimensions
    (batch, heads); the softmax is not counted."""
    lead, m = math.prod(q_shape[:-1]), k_shape[-2]
    return 2 * lead * m * (q_shape[-1] + v_shape[-1])


def _attention_backward_flops(grad_out_shape, q_shape, k_shape, v_shape, *args, out_shape=None, **kwargs) -> int:
    """dV, dP, dQ and dK: four matmuls, twice the forward's FLOPs (the recomputed scores are not counted)."""
    return 2 * _attention_flops(q_shape, k_shape, v_shape)


def flops_of(fn: Callable[[], object]) -> int:
    """Floating-point operations of the matmuls, convolutions and attention that ``fn()`` runs (a multiply-add
    counts 2), by torch's counter; ``fn`` may run a backward pass too."""
    from torch.utils import flop_counter

    # torch's counter knows the CUDA attention kernels but not the CPU ones that F.scaled_dot_product_attention
    # dispatches to: count them with the same formulas (batched matmuls).
    aten, custom = torch.ops.aten, {}
    if hasattr(aten, "_scaled_dot_product_flash_attention_for_cpu"):
        custom[aten._scaled_dot_product_flash_attention_for_cpu] = _attention_flops
        custom[aten._scaled_dot_product_flash_attention_for_cpu_backward] = _attention_backward_flops
    counter = flop_counter.FlopCounterMode(display=False, custom_mapping=custom)
    with counter:
        fn()
    return int(counter.get_total_flops())


@torch.no_grad()
def count_flops(net: nn.Module, in_channels: int, resolution: int, batch: int = 1,
                num_classes: int = 0) -> int:
    """Floating-point operations of one forward pass of ``net`` on zeros (a multiply-add counts 2)."""
    device = next(net.parameters()).device
    x = torch.zeros(batch, in_channels, resolution, resolution, device=device)
    c = torch.zeros(batch, device=device)
    labels = torch.zeros(batch, dtype=torch.long, device=device) if num_classes else None
    return flops_of(lambda: net(x, c, labels))
