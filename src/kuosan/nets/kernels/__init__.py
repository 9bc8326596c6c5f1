"""Fused CPU kernels, compiled on first use, with torch ops as the fallback.

``groupnorm.cpp`` fuses GroupNorm, the per-sample AdaGN scale/shift and SiLU for ``channels_last`` float32 or
bfloat16 tensors, forward and backward: two to three passes over each sample while it sits in the core's
cache, where the same maths in torch ops takes a dozen kernels and reads the activations from memory each
time; it also holds the one-pass scaled residual sum. ``adamw.cpp`` updates many float32 tensors with AdamW
in one parallel pass (:class:`kuosan.training.optim.FusedAdamW`). ``winograd.cpp`` computes 3×3 stride-1
convolutions of ``channels_last`` tensors, forward and both gradients, with Winograd's F(2×2, 3×3) or
F(4×4, 3×3) (2.25× or 4× fewer multiply-adds than the direct convolution oneDNN runs; float32, or bfloat16
products on CPUs with AVX512-BF16), and 1×1 convolutions as matrix products (:class:`kuosan.nets.layers.Conv2d`).

Plain C++ with OpenMP, built once per machine with the system compiler (``c++ -O3 -march=native``) into
``$KUOSAN_CACHE`` (default ``~/.cache/kuosan``) and called through ctypes: no torch headers, about five seconds
to build. Without a compiler, on another device, or with ``KUOSAN_KERNELS=0``, callers use torch ops instead
(:func:`available` and :func:`status` say which); the results agree to float rounding (tests/test_kernels.py,
tests/test_conv_kernels.py).
Numbers: ``kuosan bench --layers`` and benchmarks/results/peers*.json.
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import logging
import os
import platform
import shutil
import subprocess
import tempfile
import threading
from pathlib import Path

import torch
from torch.utils.weak import WeakIdKeyDictionary

from kuosan.errors import KuosanError, cache_root

__all__ = ["available", "loaded", "same_layout", "gn_forward", "gn_backward", "scaled_sum", "adamw_step",
           "conv_ok", "conv_bf16_ok", "winograd_conv", "winograd_conv_backward", "conv1x1", "conv1x1_backward",
           "status"]

log = logging.getLogger(__name__)

_SOURCES = [Path(__file__).with_name(name) for name in ("groupnorm.cpp", "adamw.cpp", "winograd.cpp")]
_DTYPES = {torch.float32: 0, torch.bfloat16: 1}
# -fno-trapping-math: the exp in SiLU converts floats to ints, which GCC only vectorises when it need not
# preserve floating-point exception flags (nothing here reads them).
_FLAGS = ["-O3", "-march=native", "-fno-trapping-math", "-std=c++17", "-fPIC", "-shared", "-fopenmp"]


def _flags() -> list[str]:
    """The compiler flags; ``KUOSAN_KERNEL_ARCH`` replaces ``native`` in ``-march`` (``x86-64-v3``: an AVX2
    build, to run on older CPUs of a cluster or to measure that code path here)."""
    arch = os.environ.get("KUOSAN_KERNEL_ARCH", "").strip()
    return [f"-march={arch}" if arch and f == "-march=native" else f for f in _FLAGS]
_lock = threading.Lock()
_lib: ctypes.CDLL | None = None
_status = "not loaded"


def _cache_dir() -> Path:
    """``$KUOSAN_CACHE/kernels`` (``~`` expanded, as everywhere), else ``$XDG_CACHE_HOME/kuosan/kernels``, else
    ``~/.cache/kuosan/kernels``."""
    if os.environ.get("KUOSAN_CACHE"):
        return cache_root("kernels")
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "kuosan" / "kernels"


def _machine_key() -> str:
    """What the binary depends on: source, compiler, and (for -march=native) the CPU's feature flags."""
    flags = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(("flags", "Features")):
                flags = line
                break
    except OSError:
        pass
    return "\n".join([*(src.read_text() for src in _SOURCES), _compiler() or "", *_flags(), platform.machine(),
                      platform.processor(), flags])


def _compiler() -> str | None:
    return shutil.which(os.environ.get("CXX", "c++")) or shutil.which("g++") or shutil.which("clang++")


def _build(target: Path) -> None:
    cxx = _compiler()
    if cxx is None:
        raise RuntimeError("no C++ compiler (set CXX)")
    target.parent.mkdir(parents=True, exist_ok=True)
    # Build beside the target and rename: concurrent builders (torchrun ranks) never see half a file.
    fd, tmp = tempfile.mkstemp(suffix=".so", dir=target.parent)
    os.close(fd)
    cmd = [cxx, *_flags(), *map(str, _SOURCES), "-o", tmp]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
        if proc.returncode != 0:
            raise RuntimeError(f"{' '.join(cmd)} failed: {proc.stderr.strip()[-500:]}")
        os.replace(tmp, target)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def _load() -> ctypes.CDLL | None:
    global _lib, _status
    if _lib is not None or _status != "not loaded":
        return _lib
    with _lock:
        if _lib is not None or _status != "not loaded":
            return _lib
        if os.environ.get("KUOSAN_KERNELS", "1").strip().lower() in ("0", "false", "no", "off"):
            _status = "disabled (KUOSAN_KERNELS=0)"
            return None
        try:
            digest = hashlib.sha256(_machine_key().encode()).hexdigest()[:16]
            target = _cache_dir() / f"kernels-{digest}.so"
            if not target.is_file():
                try:
                    _build(target)
                except OSError:  # a read-only cache directory: build in the temporary one instead
                    target = Path(tempfile.gettempdir()) / f"kuosan-{os.getuid()}" / target.name
                    if not target.is_file():
                        _build(target)
            lib = ctypes.CDLL(str(target))
            vp, i, lg, f = ctypes.c_void_p, ctypes.c_int, ctypes.c_long, ctypes.c_float
            lib.kuosan_gn_forward.argtypes = [vp, vp, i, lg, lg, lg, lg, vp, vp, vp, vp, f, i, vp, vp]
            lib.kuosan_gn_backward.argtypes = [vp, vp, vp, i, lg, lg, lg, lg, vp, vp, vp, vp, vp, vp, i, vp, vp]
            lib.kuosan_scaled_sum.argtypes = [vp, vp, vp, i, lg, f]
            lib.kuosan_adamw.argtypes = [lg, vp, vp, vp, vp, vp, f, f, f, f, f, f, f]
            lib.kuosan_adamw.restype = i
            lib.kuosan_winograd_forward.argtypes = [i, vp, vp, vp, vp, lg, lg, lg, lg, lg]
            lib.kuosan_winograd_weight_grad.argtypes = [i, vp, vp, vp, vp, lg, lg, lg, lg, lg]
            lib.kuosan_conv1x1_forward.argtypes = [vp, vp, vp, vp, lg, lg, lg]
            lib.kuosan_conv1x1_weight_grad.argtypes = [vp, vp, vp, vp, lg, lg, lg]
            lib.kuosan_winograd_filter.argtypes = [i, vp, lg, lg, lg, lg, lg, lg, i, vp]
            lib.kuosan_winograd_filter_grad.argtypes = [i, vp, vp, lg, lg, lg, lg, lg, lg]
            for fn in (lib.kuosan_winograd_forward, lib.kuosan_winograd_weight_grad, lib.kuosan_winograd_filter,
                       lib.kuosan_winograd_filter_grad, lib.kuosan_conv1x1_forward, lib.kuosan_conv1x1_weight_grad,
                       lib.kuosan_winograd_bf16_supported, lib.kuosan_conv_kernels_native):
                fn.restype = i
            if lib.kuosan_winograd_bf16_supported():
                lib.kuosan_winograd_filter_bf16.argtypes = [i, vp, lg, lg, lg, lg, lg, lg, i, vp]
                lib.kuosan_winograd_forward_bf16.argtypes = [i, vp, vp, vp, vp, lg, lg, lg, lg, lg]
                lib.kuosan_winograd_weight_grad_bf16.argtypes = [i, vp, vp, vp, vp, lg, lg, lg, lg, lg]
                for fn in (lib.kuosan_winograd_filter_bf16, lib.kuosan_winograd_forward_bf16,
                           lib.kuosan_winograd_weight_grad_bf16):
                    fn.restype = i
            lib.kuosan_gn_forward.restype = lib.kuosan_gn_backward.restype = lib.kuosan_scaled_sum.restype = i
            _lib, _status = lib, f"loaded {target}"
        except Exception as exc:  # no compiler, a read-only home, a foreign libgomp: fall back to torch ops
            _status = f"unavailable ({exc})"
            log.info("kuosan: fused kernels %s; using torch ops", _status)
        return _lib


def status() -> str:
    """'loaded <path>', 'disabled …' or 'unavailable (<why>)' (after the first :func:`available`)."""
    _load()
    return _status


def available(x: torch.Tensor) -> bool:
    """Whether the fused kernels can take ``x``: a CPU float32/bfloat16 [B, C, H, W] in ``channels_last``."""
    return (x.device.type == "cpu" and x.dtype in _DTYPES and x.ndim == 4
            and x.is_contiguous(memory_format=torch.channels_last) and _load() is not None)


def _ptr(t: torch.Tensor | None):
    return None if t is None else t.data_ptr()


def _floats(t: torch.Tensor | None, shape) -> torch.Tensor | None:
    return None if t is None else t.detach().to(torch.float32).contiguous().expand(shape).contiguous()


def gn_forward(x: torch.Tensor, groups: int, weight, bias, scale=None, shift=None, eps: float = 1e-5,
               act: bool = False):
    """``silu?(group_norm(x) * (1 + scale) + shift)`` → (y, mean [B, G], rstd [B, G]); y like x."""
    B, C, H, W = x.shape
    y = torch.empty_like(x, memory_format=torch.channels_last)
    mean = torch.empty(B, groups, dtype=torch.float32)
    rstd = torch.empty(B, groups, dtype=torch.float32)
    w, b = _floats(weight, (C,)), _floats(bias, (C,))
    s, t = _floats(scale, (B, C)), _floats(shift, (B, C))
    rc = _lib.kuosan_gn_forward(x.data_ptr(), y.data_ptr(), _DTYPES[x.dtype], B, H * W, C, groups, w.data_ptr(),
                                b.data_ptr(), _ptr(s), _ptr(t), float(eps), int(act), mean.data_ptr(),
                                rstd.data_ptr())
    if rc:
        raise ValueError(f"group norm kernel: {C} channels do not split into {groups} groups")
    return y, mean, rstd


def gn_backward(grad_y: torch.Tensor, x: torch.Tensor, groups: int, weight, bias, scale, shift, mean, rstd,
                act: bool):
    """→ (grad_x like x, s1 = ∂L/∂β [B, C], dgamma = ∂L/∂γ [B, C]) for the forward above."""
    B, C, H, W = x.shape
    grad_y = grad_y.to(x.dtype).contiguous(memory_format=torch.channels_last)
    grad_x = torch.empty_like(x, memory_format=torch.channels_last)
    s1 = torch.empty(B, C, dtype=torch.float32)
    dgamma = torch.empty(B, C, dtype=torch.float32)
    w, b = _floats(weight, (C,)), _floats(bias, (C,))
    s, t = _floats(scale, (B, C)), _floats(shift, (B, C))
    rc = _lib.kuosan_gn_backward(x.data_ptr(), grad_y.data_ptr(), grad_x.data_ptr(), _DTYPES[x.dtype], B, H * W, C,
                                 groups, w.data_ptr(), b.data_ptr(), _ptr(s), _ptr(t), mean.data_ptr(),
                                 rstd.data_ptr(), int(act), s1.data_ptr(), dgamma.data_ptr())
    if rc:
        raise ValueError(f"group norm kernel: {C} channels do not split into {groups} groups")
    return grad_x, s1, dgamma


def scaled_sum(a: torch.Tensor, b: torch.Tensor | None, scale: float) -> torch.Tensor:
    """``(a + b) * scale`` (or ``a * scale``) in one pass, into a new tensor like ``a``; a and b of one dtype
    and the same strides (check with :func:`same_layout`)."""
    out = torch.empty_like(a)
    rc = _lib.kuosan_scaled_sum(a.data_ptr(), _ptr(b), out.data_ptr(), _DTYPES[a.dtype], a.numel(), float(scale))
    if rc:
        raise ValueError(f"scaled sum kernel: unsupported dtype {a.dtype}")
    return out


def same_layout(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Whether the fused kernels can take ``a`` and ``b`` element by element: CPU, one supported dtype, one
    shape, identical strides, and dense (no gaps, no overlaps)."""
    return (a.shape == b.shape and a.dtype == b.dtype and a.stride() == b.stride() and a.device.type == "cpu"
            and a.dtype in _DTYPES and (a.is_contiguous() or a.is_contiguous(memory_format=torch.channels_last))
            and _load() is not None)


def _conv_kernels_on() -> bool:
    """The convolution kernels run where the library was built for AVX512 or AVX2 with FMA (the register
    blockings measured against oneDNN); ``KUOSAN_CONV_KERNELS=0`` leaves every convolution to torch (oneDNN)
    and keeps the other kernels, ``=1`` runs them on any CPU (as the tests do)."""
    setting = os.environ.get("KUOSAN_CONV_KERNELS", "").strip().lower()
    if setting in ("0", "false", "no", "off"):
        return False
    return _load() is not None and (setting in ("1", "true", "yes", "on") or bool(_lib.kuosan_conv_kernels_native()))


def conv_ok(x: torch.Tensor, weight: torch.Tensor) -> bool:
    """Whether :func:`winograd_conv` (3×3 weights) or :func:`conv1x1` (1×1) takes this convolution: CPU
    float32, x [B, Ci, H, W] in ``channels_last``, Ci and Co multiples of 16 (the caller checks stride,
    padding and groups), and ``KUOSAN_CONV_KERNELS`` not 0."""
    return (_conv_kernels_on() and x.device.type == "cpu" and x.dtype == torch.float32
            and weight.dtype == torch.float32
            and x.ndim == 4 and weight.ndim == 4 and tuple(weight.shape[2:]) in ((3, 3), (1, 1))
            and x.shape[1] == weight.shape[1] and x.shape[1] % 16 == 0 and weight.shape[0] % 16 == 0
            and x.is_contiguous(memory_format=torch.channels_last) and _load() is not None)


def winograd_tile(H: int, W: int) -> int:
    """The output tile of the float32 Winograd algorithm for an H×W map: 4 (F(4×4, 3×3), 4× fewer multiply-adds
    than the direct convolution, rounding error about 5e-6 of the largest output) on maps of 24×24 and more
    whose sides split into 4s, else 2 (F(2×2, 3×3), 2.25× fewer, about 3e-7; on 14×14 and 7×7 maps F(4×4)
    was slower: its tiles overhang the map). ``KUOSAN_WINOGRAD_TILE=2`` (or 4) forces one."""
    forced = os.environ.get("KUOSAN_WINOGRAD_TILE", "").strip()
    if forced:
        if forced not in ("2", "4"):
            raise KuosanError(f"KUOSAN_WINOGRAD_TILE={forced}: use 2 or 4 (or leave it unset)")
        return int(forced)
    return 4 if H % 4 == 0 and W % 4 == 0 and H * W >= 576 else 2


def _filter(weight: torch.Tensor, flip: bool, tile: int) -> torch.Tensor:
    Co, Ci = weight.shape[:2]
    n = tile + 2
    U = torch.empty(n * n, Co if flip else Ci, Ci if flip else Co)
    w = weight.detach()
    _lib.kuosan_winograd_filter(tile, w.data_ptr(), *w.stride(), Co, Ci, int(flip), U.data_ptr())
    return U


# Transformed filters of weights used without gradients (sampling, evaluation), kept until the weight changes: at
# batch 1 the transform was a fifth of a forward pass. A weight's version counter moves with every in-place
# update (an optimiser step, an EMA update, load_state_dict); a weight given new memory has a new address. Either
# way the weight is transformed again.
_FILTERS = WeakIdKeyDictionary()
_FILTERS_LOCK = threading.Lock()


def _transformed(make, weight: torch.Tensor, flip: bool, tile: int, keep: bool) -> torch.Tensor:
    if not keep:
        return make(weight, flip, tile)
    key = (make.__name__, flip, tile, weight._version, weight.data_ptr(), tuple(weight.shape), weight.stride())
    with _FILTERS_LOCK:
        held = _FILTERS.get(weight)
        if held is not None and held[0] == key:
            return held[1]
    U = make(weight, flip, tile)
    with _FILTERS_LOCK:
        _FILTERS[weight] = (key, U)
    return U


def winograd_conv(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                  keep_filter: bool = False) -> torch.Tensor:
    """``conv2d(x, weight, bias, padding=1)`` for a 3×3 weight: float32 x (:func:`conv_ok`), or bfloat16 x as
    autocast runs it (:func:`conv_bf16_ok`: float32 weight and bias rounded after the Winograd transform,
    float32 sums, F(2×2, 3×3) only); a ``channels_last`` result of x's dtype. ``keep_filter``: keep the weight's
    transform for the next call while the weight is unchanged (calls without gradients)."""
    B, Ci, H, W = x.shape
    Co = weight.shape[0]
    y = torch.empty(B, Co, H, W, dtype=x.dtype, memory_format=torch.channels_last)
    b = None if bias is None else bias.detach().to(torch.float32).contiguous()
    if x.dtype == torch.bfloat16:
        # held here: a temporary's memory would be freed before the call
        U = _transformed(_filter_bf16, weight, False, 2, keep_filter)
        rc = _lib.kuosan_winograd_forward_bf16(2, x.data_ptr(), U.data_ptr(), _ptr(b), y.data_ptr(), B, H, W, Ci, Co)
    else:
        tile = winograd_tile(H, W)
        U = _transformed(_filter, weight, False, tile, keep_filter)
        rc = _lib.kuosan_winograd_forward(tile, x.data_ptr(), U.data_ptr(), _ptr(b), y.data_ptr(), B, H, W, Ci, Co)
    if rc:
        raise ValueError(f"winograd kernel: {Ci} -> {Co} channels are not multiples of 16")
    return y


def winograd_conv_backward(grad_y: torch.Tensor, x: torch.Tensor, weight: torch.Tensor, need_x: bool = True,
                           need_w: bool = True, need_b: bool = False):
    """(∂L/∂x like x, ∂L/∂weight in the weight's own layout, ∂L/∂bias float32) of :func:`winograd_conv`, each
    None when not needed."""
    B, Ci, H, W = x.shape
    Co = weight.shape[0]
    bf16 = x.dtype == torch.bfloat16
    tile = 2 if bf16 else winograd_tile(H, W)
    grad_y = grad_y.to(x.dtype).contiguous(memory_format=torch.channels_last)
    grad_x = grad_w = grad_b = None
    if need_x:
        grad_x = torch.empty_like(x, memory_format=torch.channels_last)
        U = (_filter_bf16 if bf16 else _filter)(weight, True, tile)
        forward = _lib.kuosan_winograd_forward_bf16 if bf16 else _lib.kuosan_winograd_forward
        forward(tile, grad_y.data_ptr(), U.data_ptr(), None, grad_x.data_ptr(), B, H, W, Co, Ci)
    if need_w:  # the bias gradient in the same pass
        grad_b = torch.empty(Co) if need_b else None
        dU = torch.empty((tile + 2) ** 2, Ci, Co)
        weight_grad = _lib.kuosan_winograd_weight_grad_bf16 if bf16 else _lib.kuosan_winograd_weight_grad
        weight_grad(tile, x.data_ptr(), grad_y.data_ptr(), dU.data_ptr(), _ptr(grad_b), B, H, W, Ci, Co)
        grad_w = torch.empty_like(weight)
        _lib.kuosan_winograd_filter_grad(tile, dU.data_ptr(), grad_w.data_ptr(), *grad_w.stride(), Co, Ci)
    elif need_b:
        grad_b = grad_y.sum((0, 2, 3), dtype=torch.float32)
    return grad_x, grad_w, grad_b


def conv_bf16_ok(x: torch.Tensor, weight: torch.Tensor) -> bool:
    """Whether :func:`winograd_conv` takes this 3×3 convolution in bfloat16: a CPU with AVX512-BF16 (the kernel was
    built for it), x [B, Ci, H, W] float32 or bfloat16 in ``channels_last``, a float32 weight [Co, Ci, 3, 3],
    Ci and Co multiples of 16, and ``KUOSAN_CONV_KERNELS`` not 0."""
    return (_conv_kernels_on() and x.device.type == "cpu" and x.dtype in (torch.float32, torch.bfloat16)
            and weight.dtype == torch.float32
            and x.ndim == 4 and weight.ndim == 4 and tuple(weight.shape[2:]) == (3, 3)
            and x.shape[1] == weight.shape[1] and x.shape[1] % 16 == 0 and weight.shape[0] % 16 == 0
            and x.is_contiguous(memory_format=torch.channels_last) and _load() is not None
            and bool(_lib.kuosan_winograd_bf16_supported()))


@functools.lru_cache(maxsize=None)
def amx() -> bool:
    """Whether this CPU has AMX tiles for bfloat16 that oneDNN may use (Sapphire Rapids and later). There, oneDNN's
    bfloat16 convolution without gradients was 1.4x faster than :func:`winograd_conv`'s bfloat16 path (a forward
    pass of the demo network at batch 64: 148 against 209 ms on 2 cores), so sampling under bfloat16 leaves 3×3
    layers to it; training keeps the kernels (not measured against oneDNN's AMX path)."""
    init = getattr(getattr(torch._C, "_cpu", None), "_init_amx", None)
    try:
        return bool(init()) if init is not None else False
    except Exception:  # an older torch, or a kernel that refuses the tile state: no AMX
        return False


def _filter_bf16(weight: torch.Tensor, flip: bool, tile: int) -> torch.Tensor:
    Co, Ci = weight.shape[:2]
    K, N = (Co, Ci) if flip else (Ci, Co)
    U = torch.empty((tile + 2) ** 2, K // 2, N, dtype=torch.int32)  # pairs of bfloat16 along K
    w = weight.detach()
    _lib.kuosan_winograd_filter_bf16(tile, w.data_ptr(), *w.stride(), Co, Ci, int(flip), U.data_ptr())
    return U


def conv1x1(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """``conv2d(x, weight, bias)`` for a 1×1 weight and what :func:`conv_ok` accepts; ``channels_last`` out."""
    B, Ci, H, W = x.shape
    Co = weight.shape[0]
    y = torch.empty(B, Co, H, W, memory_format=torch.channels_last)
    wt = weight.detach().reshape(Co, Ci).t().contiguous()
    b = None if bias is None else bias.detach().to(torch.float32).contiguous()
    _lib.kuosan_conv1x1_forward(x.data_ptr(), wt.data_ptr(), _ptr(b), y.data_ptr(), B * H * W, Ci, Co)
    return y


def conv1x1_backward(grad_y: torch.Tensor, x: torch.Tensor, weight: torch.Tensor, need_x: bool = True,
                     need_w: bool = True, need_b: bool = False):
    """(∂L/∂x, ∂L/∂weight, ∂L/∂bias) of :func:`conv1x1`, each None when not needed."""
    B, Ci, H, W = x.shape
    Co = weight.shape[0]
    grad_y = grad_y.to(torch.float32).contiguous(memory_format=torch.channels_last)
    grad_x = grad_w = grad_b = None
    if need_x:
        grad_x = torch.empty_like(x, memory_format=torch.channels_last)
        w = weight.detach().reshape(Co, Ci).contiguous()
        _lib.kuosan_conv1x1_forward(grad_y.data_ptr(), w.data_ptr(), None, grad_x.data_ptr(), B * H * W, Co, Ci)
    if need_w:  # the bias gradient in the same pass
        grad_b = torch.empty(Co) if need_b else None
        dwt = torch.empty(Ci, Co)
        _lib.kuosan_conv1x1_weight_grad(x.data_ptr(), grad_y.data_ptr(), dwt.data_ptr(), _ptr(grad_b), B * H * W,
                                        Ci, Co)
        grad_w = torch.empty_like(weight).copy_(dwt.t().reshape(weight.shape))
    elif need_b:
        grad_b = grad_y.sum((0, 2, 3), dtype=torch.float32)
    return grad_x, grad_w, grad_b


def loaded() -> bool:
    """Whether the kernel library is built and loaded (building it on first call)."""
    return _load() is not None


def adamw_step(params, grads, exp_avgs, exp_avg_sqs, *, lr: float, beta1: float, beta2: float, eps: float,
               weight_decay: float, bias_correction1: float, bias_correction2_sqrt: float) -> None:
    """One AdamW update of float32 CPU tensors in place; each tensor's gradient and moments share its strides
    and all are dense (:class:`kuosan.training.optim.FusedAdamW` checks)."""
    n = len(params)
    arrays = [(ctypes.c_void_p * n)(*(t.data_ptr() for t in ts)) for ts in (params, grads, exp_avgs, exp_avg_sqs)]
    sizes = (ctypes.c_long * n)(*(t.numel() for t in params))
    _lib.kuosan_adamw(n, *arrays, sizes, lr, beta1, beta2, eps, weight_decay, bias_correction1, bias_correction2_sqrt)
