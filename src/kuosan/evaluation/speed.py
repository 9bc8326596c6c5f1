"""Timing and peak memory of a piece of work, on CPU or CUDA.

    with measure("cuda") as m:
        out = pipe.sample(...)
    speed = speed_summary(images=len(out.images), seconds=m.seconds, nfe=out.nfe, peak=m.peak_bytes, device="cuda")

CPU peak memory is the process's peak resident set size: on Linux the peak is reset first by writing ``5``
to ``/proc/self/clear_refs`` and read back from ``VmHWM`` in ``/proc/self/status``; elsewhere it falls back
to ``resource.getrusage`` (peak since the process started). CUDA peak memory is
``torch.cuda.max_memory_allocated`` after ``torch.cuda.reset_peak_memory_stats``.
"""

import time
from contextlib import contextmanager
from dataclasses import dataclass

import torch


def _read_vm_hwm():
    """Peak RSS in bytes from ``/proc/self/status`` (Linux), or ``None``."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def _reset_cpu_peak():
    """Reset the kernel's peak-RSS counter; ``True`` when it worked."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def _cpu_peak_bytes():
    peak = _read_vm_hwm()
    if peak is not None:
        return peak
    try:
        import resource
        import sys

        rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return rss if sys.platform == "darwin" else rss * 1024  # bytes on macOS, KiB on Linux
    except (ImportError, OSError):
        return None


@dataclass
class Measurement:
    seconds: float = 0.0
    peak_bytes: int | None = None
    memory_kind: str = ""


@contextmanager
def measure(device="cpu"):
    """Time the ``with`` body (synchronising CUDA) and record its peak memory on ``device``."""
    device = torch.device(device)
    result = Measurement()
    cuda = device.type == "cuda"
    if cuda:
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        result.memory_kind = "torch.cuda.max_memory_allocated"
    else:
        result.memory_kind = "peak RSS (VmHWM)" if _reset_cpu_peak() else "peak RSS since process start"
    start = time.perf_counter()
    try:
        yield result
    finally:
        if cuda:
            torch.cuda.synchronize(device)
        result.seconds = time.perf_counter() - start
        result.peak_bytes = torch.cuda.max_memory_allocated(device) if cuda else _cpu_peak_bytes()


def normalise_speed(speed):
    """Complete a caller's speed dict (any of ``images``, ``seconds``, ``images_per_s``, ``ms_per_image``,
    ``nfe``/``nfe_per_image``, ``peak_bytes``/``peak_memory_mib``, ``device``, ``what``) into the report's form."""
    s = dict(speed)
    images, seconds, rate = s.get("images"), s.get("seconds"), s.get("images_per_s")
    if images is not None and seconds is not None:
        out = speed_summary(images, seconds, s.get("nfe", s.get("nfe_per_image")), s.get("peak_bytes"),
                            s.get("device", "cpu"), s.get("memory_kind", ""), s.get("what", "sampling"))
        if s.get("peak_memory_mib") is not None and out["peak_memory_mib"] is None:
            out["peak_memory_mib"] = s["peak_memory_mib"]
        return out
    if rate is None and s.get("ms_per_image"):
        rate = 1000.0 / s["ms_per_image"]
    nfe = s.get("nfe", s.get("nfe_per_image"))
    ms = s.get("ms_per_image", 1000.0 / rate if rate else None)
    return {"what": s.get("what", "sampling"), "device": str(s.get("device", "cpu")), "images": images,
            "seconds": seconds, "images_per_s": rate, "ms_per_image": ms,
            "nfe_per_image": None if nfe is None else int(nfe),
            "nfe_total": None if nfe is None or images is None else int(nfe) * int(images),
            "peak_memory_mib": s.get("peak_memory_mib"), "memory_kind": s.get("memory_kind", "")}


def speed_summary(images, seconds, nfe=None, peak_bytes=None, device="cpu", memory_kind="", what="sampling"):
    """A report section: images/s, ms per image, network evaluations, peak memory."""
    images_per_s = images / seconds if seconds > 0 else float("nan")
    return {
        "what": what,
        "device": str(device),
        "images": int(images),
        "seconds": float(seconds),
        "images_per_s": float(images_per_s),
        "ms_per_image": float(1000 * seconds / images) if images else float("nan"),
        "nfe_per_image": None if nfe is None else int(nfe),
        "nfe_total": None if nfe is None else int(nfe) * int(images),
        "peak_memory_mib": None if peak_bytes is None else peak_bytes / 2 ** 20,
        "memory_kind": memory_kind,
    }
