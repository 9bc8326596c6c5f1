"""Timing for ``kuosan bench``: alternated rounds, the reference kernels (ceilings), compile time and the
layer-level comparisons of ``--layers``.

Contenders are timed in one process in alternation (A B C A B C …, medians), because absolute times on a
shared machine drift from minute to minute while ratios taken in the same seconds hold.
"""

from __future__ import annotations

import statistics
import time
from typing import Callable

import torch

__all__ = ["alternate", "ceilings", "warm_compiled", "layer_fns"]


def alternate(fns: dict[str, Callable], rounds: int, warmup: int = 1) -> dict[str, dict]:
    """Time each function once per round, in turn, after ``warmup`` untimed calls each."""
    for f in fns.values():
        for _ in range(warmup):
            f()
    times: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(rounds):
        for k, f in fns.items():
            t0 = time.perf_counter()
            f()
            times[k].append(time.perf_counter() - t0)
    return {k: {"median_s": statistics.median(v), "min_s": min(v), "all_s": [round(t, 4) for t in v]}
            for k, v in times.items()}


def _fp32(f: Callable) -> Callable:
    """``f`` with autocast off: the float32 ceilings stay float32 under ``--bf16``."""
    def run():
        with torch.autocast("cpu", enabled=False):
            return f()
    return run


def ceilings(batch: int, res: int) -> dict[str, tuple[Callable, int]]:
    """The reference kernels: 3×3 conv 64→64 (both layouts; and bfloat16 channels_last, the ceiling of the
    bfloat16 contenders) and a 2048² matmul, with their FLOPs."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(batch, 64, res, res, generator=g)
    conv = torch.nn.Conv2d(64, 64, 3, padding=1).requires_grad_(False)
    conv_cl = torch.nn.Conv2d(64, 64, 3, padding=1).requires_grad_(False).to(memory_format=torch.channels_last)
    conv_bf = torch.nn.Conv2d(64, 64, 3, padding=1).requires_grad_(False).to(torch.bfloat16,
                                                                            memory_format=torch.channels_last)
    x_cl = x.contiguous(memory_format=torch.channels_last)
    x_bf = x_cl.to(torch.bfloat16)
    a = torch.randn(2048, 2048, generator=g)
    conv_flops = 2 * batch * 64 * 64 * 9 * res * res
    return {"conv3x3_nchw": (_fp32(lambda: conv(x)), conv_flops),
            "conv3x3_channels_last": (_fp32(lambda: conv_cl(x_cl)), conv_flops),
            "conv3x3_channels_last_bf16": (lambda: conv_bf(x_bf), conv_flops),
            "matmul_2048": (_fp32(lambda: a @ a), 2 * 2048 ** 3)}


def _seconds(f: Callable) -> float:
    t0 = time.perf_counter()
    f()
    return time.perf_counter() - t0


def warm_compiled(contenders: list, skip_train: bool, log) -> dict:
    """Compile time: the first forward and training step of the compiled contenders."""
    out = {}
    for c in contenders:
        if not c.info.get("compile"):
            continue
        out[f"{c.name}_forward"] = _seconds(c.forward)
        if not skip_train:
            out[f"{c.name}_train_step"] = _seconds(c.train_step)
        log(f"{c.name}: first calls (compilation) took " + ", ".join(f"{k.split('_', 1)[1]} {v:.1f} s"
                                                                      for k, v in out.items()))
    return out


def _no_grad(f, *args):
    with torch.inference_mode():
        return f(*args)


def _norm_fns(batch: int, res: int) -> dict[str, Callable]:
    """GroupNorm + scale/shift + SiLU (a ResBlock's second norm), torch's ops vs ours, both layouts."""
    from torch.nn import functional as F

    from kuosan.nets.layers import group_norm_act

    g = torch.Generator().manual_seed(0)
    x = torch.randn(batch, 64, res, res, generator=g)
    w, b = torch.randn(64, generator=g), torch.randn(64, generator=g)
    s, t = torch.randn(batch, 64, generator=g) * 0.1, torch.randn(batch, 64, generator=g)
    for p in (w, b, s, t):
        p.requires_grad_()

    def torch_ops(x):
        return F.silu(F.group_norm(x, 32, w, b) * (1 + s[:, :, None, None]) + t[:, :, None, None])

    def ours(x):
        return group_norm_act(x, 32, w, b, 1e-5, s, t, act=True)

    fns = {}
    for layout, fmt in (("nchw", torch.contiguous_format), ("channels_last", torch.channels_last)):
        xf = x.contiguous(memory_format=fmt).requires_grad_()
        for name, f in (("torch", torch_ops), ("kuosan", ours)):
            fns[f"{name}_{layout}_forward"] = lambda f=f, xf=xf: _no_grad(f, xf)
            fns[f"{name}_{layout}_forward_backward"] = lambda f=f, xf=xf: f(xf).sum().backward()
    return fns


def _conv_fns(batch: int, res: int) -> dict[str, Callable]:
    """A 3×3 convolution 64→64 (channels_last) at ``res`` and ``res // 2``: torch's (oneDNN's direct
    convolution) against kuosan's Winograd kernels, float32 and, where the CPU has native bfloat16, under
    bfloat16 autocast."""
    from kuosan.nets.layers import Conv2d

    precisions = ["fp32"] + (["bf16"] if torch.ops.mkldnn._is_mkldnn_bf16_supported() else [])
    g = torch.Generator().manual_seed(0)
    fns = {}
    for side in (res, res // 2):
        conv = Conv2d(64, 64, 3, padding=1).to(memory_format=torch.channels_last)
        x = torch.randn(batch, 64, side, side, generator=g).contiguous(memory_format=torch.channels_last)
        x.requires_grad_()
        for precision in precisions:
            for name, fast in (("torch", False), ("kuosan", True)):
                def forward(conv=conv, x=x, fast=fast, bf16=precision == "bf16"):
                    conv._fast = fast
                    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                        return conv(x)
                key = f"conv3x3_{side}x{side}_{name}_{precision}"
                fns[f"{key}_forward"] = lambda forward=forward: _no_grad(forward)
                fns[f"{key}_forward_backward"] = lambda forward=forward: forward().float().sum().backward()
    return fns


def layer_fns(batch: int, res: int) -> dict[str, Callable]:
    """``--layers``: the GroupNorm variants in both layouts, then the 3×3 convolutions."""
    return {**_norm_fns(batch, res), **_conv_fns(batch, res)}
