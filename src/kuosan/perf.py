"""Speed settings: the allocator and OpenMP (process-level, safe by default on CPU) and model layout.

This module imports torch only inside the functions that need it, so ``openmp_defaults`` can run
before torch is first imported (OpenMP reads its environment once, when torch loads it).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys

__all__ = ["tune_allocator", "openmp_defaults", "configure_threads", "prepare_model", "to_channels_last"]

# mallopt parameter numbers from glibc's <malloc.h>
_M_TRIM_THRESHOLD, _M_TOP_PAD, _M_MMAP_THRESHOLD = -1, -2, -3


def tune_allocator() -> bool:
    """Keep large freed buffers in the heap instead of returning them to the system.

    glibc serves big allocations with mmap and unmaps them on free, so every training step
    page-faults its activations back in. Raising the mmap threshold to glibc's maximum (32 MiB on
    64-bit) and the trim threshold makes the heap keep them. Respects ``MALLOC_*`` variables the
    user set, and does nothing off Linux/glibc or with ``KUOSAN_NO_MALLOPT=1``. Returns whether
    the settings were applied.
    """
    if not sys.platform.startswith("linux") or os.environ.get("KUOSAN_NO_MALLOPT") == "1":
        return False
    if any(k in os.environ for k in ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_", "MALLOC_TOP_PAD_")):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    ok = mallopt(_M_MMAP_THRESHOLD, 32 * 1024 * 1024) == 1
    ok &= mallopt(_M_TRIM_THRESHOLD, 1 << 30) == 1
    ok &= mallopt(_M_TOP_PAD, 256 * 1024 * 1024) == 1
    return bool(ok)


def openmp_defaults() -> dict[str, str]:
    """Let OpenMP worker threads sleep at once when idle (``OMP_WAIT_POLICY=PASSIVE``) unless set.

    By default GNU OpenMP (torch's on Linux) spins a while between parallel regions. On a machine
    whose cores are shared with other busy processes, a spinning or descheduled worker makes each of
    the network's hundreds of parallel regions wait for a scheduler time slice: here, under load 7–12
    on 2 cores, a 2-thread training step took 7× as long as a 1-thread one with the default policy and
    1.4× with PASSIVE (benchmarks/results/peers_threads_alternated_*.json). On an idle machine the
    cost is a wake-up per region (microseconds). For scripts and benchmarks (``kuosan``'s command line
    sets the same default itself); it must run before ``import torch``. Returns what it set. Respects
    ``OMP_WAIT_POLICY`` / ``GOMP_SPINCOUNT`` set by the user, and ``KUOSAN_NO_OMP_DEFAULTS=1``.
    """
    if os.environ.get("KUOSAN_NO_OMP_DEFAULTS") == "1" or "torch" in sys.modules:
        return {}
    if any(k in os.environ for k in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT")):
        return {}
    os.environ["OMP_WAIT_POLICY"] = "PASSIVE"
    return {"OMP_WAIT_POLICY": "PASSIVE"}


def configure_threads(threads: int | None = None) -> int:
    """Set torch's intra-op threads: ``threads`` if given, else a fair share of a busy machine.

    torch starts one thread per core. When other processes already keep the cores busy, extra threads
    mostly wait for each other at every operation's barrier (see :func:`openmp_defaults` for the
    numbers measured here). So when the 1-minute load average exceeds the usable cores, the default
    is cores² / load threads (2 cores under load 4 or more: 1 thread), else torch's own choice; the
    load average lags, so a machine that was busy a minute ago keeps the full count until the load
    passes the core count. ``KUOSAN_THREADS=N`` sets N; a user's ``OMP_NUM_THREADS`` stays in force.
    Returns the number of threads in use.
    """
    import torch

    if threads is None:
        if os.environ.get("KUOSAN_THREADS", "").isdigit():
            threads = max(1, int(os.environ["KUOSAN_THREADS"]))
        elif "OMP_NUM_THREADS" in os.environ:
            return torch.get_num_threads()  # the user's choice, already read by OpenMP
        else:
            threads = _fair_share(torch.get_num_threads())
    torch.set_num_threads(threads)
    return threads


def _fair_share(default: int) -> int:
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    try:
        load = os.getloadavg()[0]
    except OSError:  # no load average on this system
        return default
    if load <= cores:
        return default
    return max(1, min(default, round(cores * cores / load)))


def prepare_model(model, channels_last: bool = True, compile: bool = False):
    """Put ``model``'s layout-aware networks in ``channels_last`` (and optionally compile it), in place.

    kuosan's UNet computes in the layout of its weights (``UNet.memory_format``), so this is all that
    training and sampling need: inputs may stay NCHW (the network converts its input, and returns the
    output in the input's layout). Only submodules that declare ``computes_in_weight_layout`` are
    converted (a UNet inside a preconditioner, say); others (DiT, autoencoders) are left as they are.
    Parameter names, values and state-dict keys are unchanged, and ``load_state_dict`` keeps the
    layout. ``channels_last=False`` converts back to NCHW. ``compile=True`` uses ``nn.Module.compile``
    (keys unchanged too); measure first: on this 2-core CPU it compiled for minutes and then ran
    slower than eager (benchmarks/results/peers_compile.json). Returns ``model``.
    """
    import torch

    fmt = torch.channels_last if channels_last else torch.contiguous_format
    for module in model.modules():
        if getattr(module, "computes_in_weight_layout", False):
            module.to(memory_format=fmt)
    if compile:
        model.compile()
    return model


def to_channels_last(x):
    """A 4-D tensor in ``channels_last`` layout (a copy only if it is not already); others unchanged."""
    import torch

    if getattr(x, "ndim", 0) == 4:
        return x.contiguous(memory_format=torch.channels_last)
    return x


def adamw(params, **kwargs):
    """AdamW (Loshchilov & Hutter 2019, Algorithm 2) as fast as this machine allows, same maths and state as
    ``torch.optim.AdamW``: on CPU :class:`kuosan.training.optim.FusedAdamW` (one parallel pass over all
    parameters: 2.7 ms a step for a 1.7 M-parameter UNet on 2 cores, where torch's fused kernel takes 12 and
    its for-loop 19; benchmarks/profile_step.py), elsewhere torch's fused kernel where it runs (CUDA), else its
    for-loop. After ``load_state_dict`` call :func:`match_state_layout` (moments read back from a file are
    NCHW beside ``channels_last`` weights)."""
    import torch

    def as_list(ps):
        return [ps] if isinstance(ps, torch.Tensor) else list(ps)

    # Read generators once, here: torch reads them again when it builds the groups.
    groups = [dict(g, params=as_list(g["params"])) if isinstance(g, dict) else g for g in as_list(params)]
    tensors = [p for g in groups for p in (g["params"] if isinstance(g, dict) else [g])]
    if tensors and all(p.device.type == "cpu" for p in tensors):
        from kuosan.training.optim import FusedAdamW

        return FusedAdamW(groups, **kwargs)
    if tensors and all(p.device.type == "cuda" and p.is_floating_point() for p in tensors):
        try:
            return torch.optim.AdamW(groups, fused=True, **kwargs)
        except (RuntimeError, TypeError, ValueError):  # an older torch without the fused kernel
            pass
    return torch.optim.AdamW(groups, **kwargs)


def match_state_layout(opt) -> None:
    """Give every optimiser state tensor its parameter's memory layout (in place; values unchanged).

    Checkpoints store tensors in the default layout; a UNet's weights are ``channels_last``. The for-loop
    AdamW does not mind; torch's fused one does (torch 2.13: moments are then applied to the wrong elements)
    and kuosan's takes torch's slower path, so the trainers call this after loading an optimiser state."""
    import torch

    for group in opt.param_groups:
        for p in group["params"]:
            state = opt.state.get(p, {})
            for key, value in state.items():
                if isinstance(value, torch.Tensor) and value.shape == p.shape and value.stride() != p.stride():
                    state[key] = torch.empty_like(p, dtype=value.dtype).copy_(value)
