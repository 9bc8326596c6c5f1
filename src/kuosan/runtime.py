"""The process's runtime: the device, the allocator and OpenMP threads (process-level, safe by default on CPU).

This module imports torch only inside the functions that need it, so ``openmp_defaults`` can run
before torch is first imported (OpenMP reads its environment once, when torch loads it).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys

__all__ = ["resolve_device", "tune_allocator", "openmp_defaults", "openmp_policy", "configure_threads", "shard_slice"]

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
    """On a busy machine, let OpenMP worker threads sleep at once when idle (``OMP_WAIT_POLICY=PASSIVE``).

    By default GNU OpenMP (torch's on Linux) spins a while between parallel regions. On a machine
    whose cores are shared with other busy processes, a spinning or descheduled worker makes each of
    the network's hundreds of parallel regions wait for a scheduler time slice: here, under load 7–12
    on 2 cores, a 2-thread training step took 7× as long as a 1-thread one with the default policy and
    1.4× with PASSIVE (benchmarks/results/peers_threads_alternated_*.json). On a quiet machine the
    sleeping costs more than it saves: waking the workers at every region made one-step sampling of the
    demo network 1.3× slower at batch 64 (312 against 411 images/s) and 2.3× slower for one image (37
    against 16 ms; ``benchmarks/realtime.py``, load average under 0.5). So PASSIVE is set only when the
    1-minute load average is at least the usable core count (:func:`openmp_policy`). For the command
    line and scripts; it must run before ``import torch``. Returns what it set. Respects
    ``OMP_WAIT_POLICY`` / ``GOMP_SPINCOUNT`` set by the user, and ``KUOSAN_NO_OMP_DEFAULTS=1``.
    """
    if os.environ.get("KUOSAN_NO_OMP_DEFAULTS") == "1" or "torch" in sys.modules:
        return {}
    if any(k in os.environ for k in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT")):
        return {}
    try:
        load, cores = os.getloadavg()[0], len(os.sched_getaffinity(0))
    except (OSError, AttributeError):  # no load average (not Unix): the safe choice for a shared machine
        load, cores = float("inf"), 1
    chosen = openmp_policy(load, cores)
    os.environ.update(chosen)
    return chosen


def openmp_policy(load: float, cores: int) -> dict[str, str]:
    """The OpenMP settings :func:`openmp_defaults` makes for this load average and core count."""
    return {"OMP_WAIT_POLICY": "PASSIVE"} if load >= max(1, cores) else {}


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


def resolve_device(name: str = "auto"):
    """``auto`` (CUDA if present, else CPU), ``cpu``, ``cuda`` or ``cuda:N`` as a ``torch.device``;
    anything else is refused with one line."""
    import torch

    from kuosan.errors import KuosanError

    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except (RuntimeError, TypeError, ValueError):
        device = None
    if device is None or device.type not in ("cpu", "cuda"):
        raise KuosanError(f"unknown device {name!r}; use auto, cpu, cuda or cuda:N")
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise KuosanError(f"--device {name} was asked for, but no CUDA GPU is available; use --device cpu")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise KuosanError(f"--device {name}: there are only {torch.cuda.device_count()} CUDA GPUs "
                              f"(cuda:0 to cuda:{torch.cuda.device_count() - 1})")
    return device


def shard_slice(batch: int, rank: int, world: int) -> slice:
    """Rank ``rank``'s rows of a global batch (torch.distributed): contiguous, sizes ⌊B/W⌋ or ⌈B/W⌉."""
    return slice(rank * batch // world, (rank + 1) * batch // world)
