"""The Winograd 3×3 and the 1×1 convolution kernels (kuosan.nets.layers.Conv2d) against float64 torch."""

import os
import platform
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from kuosan.nets import kernels
from kuosan.nets.layers import Conv2d

needs_compiler = pytest.mark.skipif(kernels._compiler() is None or os.environ.get("KUOSAN_KERNELS") == "0",
                                    reason="no C++ compiler: the convolutions fall back to torch's")

@pytest.fixture(autouse=True)
def conv_kernels_on(monkeypatch):
    """Builds without AVX512 or AVX2 leave convolutions to torch by default: test the kernels anyway."""
    monkeypatch.setenv("KUOSAN_CONV_KERNELS", "1")


# kernel, Ci, Co, H, W, batch: odd and unequal sides leave partial tiles at the right and bottom edges
CASES = [(3, 32, 32, 28, 28, 3), (3, 64, 16, 7, 9, 2), (3, 16, 48, 5, 6, 2), (3, 128, 64, 14, 14, 2),
         (3, 48, 32, 13, 12, 1), (1, 64, 32, 9, 9, 3), (1, 96, 192, 7, 5, 2), (1, 16, 16, 3, 3, 1)]
# |error| / max |exact|: F(2×2, 3×3) rounds less than oneDNN's direct convolution (about 1e-6 here), F(4×4, 3×3)
# about 5x more (its transforms hold 1/6, 1/24 and 8); float32 rounding either way.
TOL = {2: 2e-6, 4: 2e-5}


def relative_error(a, ref):
    return ((a.double() - ref).abs().max() / ref.abs().max()).item()


@needs_compiler
@pytest.mark.parametrize("tile", [2, 4])
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("case", CASES)
def test_forward_and_gradients_match_float64_torch(case, bias, tile, monkeypatch):
    monkeypatch.setenv("KUOSAN_WINOGRAD_TILE", str(tile))
    k, ci, co, h, w, batch = case
    g = torch.Generator().manual_seed(sum(case))
    conv = Conv2d(ci, co, k, padding=k // 2, bias=bias).to(memory_format=torch.channels_last)
    with torch.no_grad():
        for p in conv.parameters():
            p.copy_(torch.randn(p.shape, generator=g))
    x = torch.randn(batch, ci, h, w, generator=g).contiguous(memory_format=torch.channels_last).requires_grad_()
    assert kernels.conv_ok(x, conv.weight), kernels.status()
    y = conv(x)
    assert y.is_contiguous(memory_format=torch.channels_last) and y.grad_fn.name() == "_KernelConvBackward"
    grad = torch.randn(y.shape, generator=g)
    params = [x, conv.weight] + ([conv.bias] if bias else [])
    grads = torch.autograd.grad(y, params, grad)

    p64 = [p.detach().double().requires_grad_() for p in params]
    y64 = F.conv2d(p64[0], p64[1], p64[2] if bias else None, padding=k // 2)
    grads64 = torch.autograd.grad(y64, p64, grad.double())
    tol = TOL[tile] if k == 3 else 2e-6
    assert relative_error(y, y64) < tol
    for name, a, r in zip(["x", "weight", "bias"], grads, grads64):
        assert relative_error(a, r) < tol, name
    assert grads[1].stride() == conv.weight.stride()  # the optimiser's fused update wants one layout

    with torch.no_grad():  # inference takes the kernel without a graph
        assert torch.equal(conv(x), y.detach())


@needs_compiler
def test_the_tile_follows_the_map_size(monkeypatch):
    monkeypatch.delenv("KUOSAN_WINOGRAD_TILE", raising=False)
    assert kernels.winograd_tile(28, 28) == 4 and kernels.winograd_tile(32, 32) == 4
    assert kernels.winograd_tile(14, 14) == 2 and kernels.winograd_tile(8, 8) == 2
    assert kernels.winograd_tile(30, 30) == 2  # 4 would waste most of the last row of tiles
    monkeypatch.setenv("KUOSAN_WINOGRAD_TILE", "2")
    assert kernels.winograd_tile(28, 28) == 2


@pytest.mark.parametrize("make,shape", [
    (lambda: Conv2d(24, 32, 3, padding=1), (2, 24, 8, 8)),            # 24 input channels: not a multiple of 16
    (lambda: Conv2d(32, 32, 3, stride=2, padding=1), (2, 32, 8, 8)),  # strided
    (lambda: Conv2d(32, 32, 3, padding=2, dilation=2), (2, 32, 8, 8)),
    (lambda: Conv2d(32, 32, 4, padding=1), (2, 32, 8, 8)),
])
def test_what_the_kernels_do_not_take_is_torchs_convolution(make, shape):
    torch.manual_seed(0)
    conv = make().to(memory_format=torch.channels_last)
    x = torch.randn(shape).contiguous(memory_format=torch.channels_last).requires_grad_()
    y = conv(x)
    assert y.grad_fn.name() != "_KernelConvBackward"
    torch.testing.assert_close(y, conv._conv_forward.__func__(conv, x, conv.weight, conv.bias))
    torch.testing.assert_close(y, F.conv2d(x, conv.weight, conv.bias, conv.stride, conv.padding, conv.dilation))


def test_nchw_inputs_and_other_autocast_dtypes_take_torchs_convolution():
    conv = Conv2d(32, 32, 3, padding=1)
    x = torch.randn(2, 32, 8, 8, requires_grad=True)  # NCHW
    assert conv(x).grad_fn.name() != "_KernelConvBackward"
    conv = conv.to(memory_format=torch.channels_last)
    with torch.autocast("cpu", dtype=torch.float16):
        y = conv(x.contiguous(memory_format=torch.channels_last))
    assert y.dtype == torch.float16 and y.grad_fn.name() != "_KernelConvBackward"
    if not kernels.conv_bf16_ok(x.contiguous(memory_format=torch.channels_last), conv.weight):  # no AVX512-BF16
        with torch.autocast("cpu", dtype=torch.bfloat16):
            y = conv(x.contiguous(memory_format=torch.channels_last))
        assert y.dtype == torch.bfloat16 and y.grad_fn.name() != "_KernelConvBackward"


def test_the_state_dict_is_nn_conv2ds():
    ours, theirs = Conv2d(32, 16, 3, padding=1), nn.Conv2d(32, 16, 3, padding=1)
    theirs.load_state_dict(ours.state_dict())
    ours.load_state_dict(theirs.state_dict())
    assert isinstance(ours, nn.Conv2d) and list(ours.state_dict()) == ["weight", "bias"]


needs_bf16 = pytest.mark.skipif(not (kernels.loaded() and kernels._lib.kuosan_winograd_bf16_supported()),
                                reason="the CPU has no AVX512-BF16: bfloat16 convolutions stay oneDNN's")


@needs_bf16
@pytest.mark.parametrize("case", [c for c in CASES if c[0] == 3])
def test_bfloat16_autocast_stays_as_close_as_onednns_bfloat16(case, monkeypatch):
    monkeypatch.setenv("KUOSAN_WINOGRAD_TILE", "4")  # ignored in bfloat16: F(2×2, 3×3) only
    _, ci, co, h, w, batch = case
    g = torch.Generator().manual_seed(sum(case))
    conv = Conv2d(ci, co, 3, padding=1).to(memory_format=torch.channels_last)
    x = torch.randn(batch, ci, h, w, generator=g).contiguous(memory_format=torch.channels_last).requires_grad_()
    grad = torch.randn(batch, co, h, w, generator=g)
    x64, w64, b64 = (t.detach().double().requires_grad_() for t in (x, conv.weight, conv.bias))
    y64 = F.conv2d(x64, w64, b64, padding=1)
    exact = [y64, *torch.autograd.grad(y64, (x64, w64, b64), grad.double())]

    errors = {}
    for name, fast in (("kernel", True), ("onednn", False)):
        conv._fast = fast
        with torch.autocast("cpu", dtype=torch.bfloat16):
            y = conv(x)
        assert y.dtype == torch.bfloat16
        assert (y.grad_fn.name() == "_KernelConvBackward") == fast
        grads = torch.autograd.grad(y, (x, conv.weight, conv.bias), grad.to(y.dtype))
        assert grads[1].dtype == torch.float32 and grads[1].stride() == conv.weight.stride()
        errors[name] = [relative_error(a, r) for a, r in zip([y, *grads], exact)]
    for ours, theirs in zip(errors["kernel"], errors["onednn"]):  # both about 2^-8 (bfloat16's rounding)
        assert ours < max(2 * theirs, 4e-3), errors


def test_a_bad_tile_setting_is_named(monkeypatch):
    from kuosan.errors import KuosanError

    monkeypatch.setenv("KUOSAN_WINOGRAD_TILE", "3")
    with pytest.raises(KuosanError, match="KUOSAN_WINOGRAD_TILE=3: use 2 or 4"):
        kernels.winograd_tile(28, 28)


def test_the_convolution_kernels_can_be_switched_off_alone(monkeypatch):
    conv = Conv2d(32, 32, 3, padding=1).to(memory_format=torch.channels_last)
    x = torch.randn(2, 32, 8, 8).contiguous(memory_format=torch.channels_last).requires_grad_()
    monkeypatch.setenv("KUOSAN_CONV_KERNELS", "0")
    assert conv(x).grad_fn.name() != "_KernelConvBackward"
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert conv(x).grad_fn.name() != "_KernelConvBackward"


def test_flop_counters_see_torchs_convolution():
    from torch.utils.flop_counter import FlopCounterMode

    conv = Conv2d(32, 32, 3, padding=1).to(memory_format=torch.channels_last)
    x = torch.randn(2, 32, 8, 8).contiguous(memory_format=torch.channels_last)
    with FlopCounterMode(display=False) as counter:
        conv(x)
    assert counter.get_total_flops() == 2 * 2 * 32 * 32 * 9 * 8 * 8


PORTABLE = """
import ctypes, sys, torch, torch.nn.functional as F
from kuosan.nets import kernels
lib = ctypes.CDLL(sys.argv[1])
assert lib.kuosan_conv_kernels_native() == 1
kernels._load()
kernels._lib = lib  # the wrappers' argument types are set on the native build's handle: set them here too
vp, lg, i = ctypes.c_void_p, ctypes.c_long, ctypes.c_int
lib.kuosan_winograd_filter.argtypes = [i, vp, lg, lg, lg, lg, lg, lg, i, vp]
lib.kuosan_winograd_forward.argtypes = [i, vp, vp, vp, vp, lg, lg, lg, lg, lg]
torch.manual_seed(0)
x = torch.randn(2, 32, 9, 7).contiguous(memory_format=torch.channels_last)
w, b = torch.randn(16, 32, 3, 3), torch.randn(16)
ref = F.conv2d(x.double(), w.double(), b.double(), padding=1)
err = ((kernels.winograd_conv(x, w, b).double() - ref).abs().max() / ref.abs().max()).item()
assert err < 2e-6, err
print("ok")
"""


@needs_compiler
@pytest.mark.skipif(platform.machine() not in ("x86_64", "AMD64"), reason="an x86-64 check")
def test_an_avx2_build_compiles_and_computes(tmp_path):
    # The AVX2 register blocking must build and compute right (a build error there would take the GroupNorm
    # and AdamW kernels down with it); the native build here is AVX512.
    flags = [f if f != "-march=native" else "-march=x86-64-v3" for f in kernels._FLAGS]
    target = tmp_path / "avx2.so"
    proc = subprocess.run([kernels._compiler(), *flags, *map(str, kernels._SOURCES), "-o", str(target)],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    cpuinfo = Path("/proc/cpuinfo")
    if not cpuinfo.is_file() or "avx2" not in cpuinfo.read_text():
        return  # built; whether this CPU could run it is unknown
    run = subprocess.run([sys.executable, "-c", PORTABLE, str(target)], capture_output=True, text=True, timeout=300)
    assert run.returncode == 0 and "ok" in run.stdout, run.stderr[-2000:]


@needs_compiler
@pytest.mark.parametrize("k", [1, 3])
def test_a_frozen_weight_still_gets_its_bias_gradient(k):
    conv = Conv2d(32, 16, k, padding=k // 2).to(memory_format=torch.channels_last)
    conv.weight.requires_grad_(False)
    x = torch.randn(2, 32, 6, 6).contiguous(memory_format=torch.channels_last)
    grad = torch.randn(2, 16, 6, 6)
    conv(x).backward(grad)
    assert conv.weight.grad is None
    torch.testing.assert_close(conv.bias.grad, grad.sum((0, 2, 3)))


@needs_compiler
def test_without_gradients_the_transformed_filter_is_kept_until_the_weight_changes(monkeypatch):
    calls = []
    real = kernels._filter
    monkeypatch.setattr(kernels, "_filter", lambda *a: calls.append(1) or real(*a))
    g = torch.Generator().manual_seed(3)
    conv = Conv2d(32, 32, 3, padding=1).to(memory_format=torch.channels_last).requires_grad_(False)  # sampling
    x = torch.randn(2, 32, 12, 12, generator=g).contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        first = conv(x)
        assert torch.equal(conv(x), first) and len(calls) == 1  # the second call reused the transform
        conv.weight.mul_(0.5)  # an in-place update (an EMA update, load_state_dict)
        halved = conv(x)
        assert len(calls) == 2
        assert relative_error(halved, F.conv2d(x, conv.weight, conv.bias, padding=1).double()) < TOL[2]
    conv.requires_grad_(True)  # a weight that trains: every call transforms it, with or without gradients
    with torch.no_grad():
        conv(x)
    conv(x)
    assert len(calls) == 4
    with torch.inference_mode():  # sampling a model whose weights still require gradients
        conv(x)
        conv(x)
        assert len(calls) == 4  # the weight is unchanged since its transform was kept: reused
    with torch.no_grad():
        conv.weight.add_(1.0)
    with torch.inference_mode():
        conv(x)
        conv(x)
        assert len(calls) == 5


@needs_compiler
def test_the_fused_optimiser_step_moves_the_version_counters():
    """kuosan's AdamW kernel writes through pointers; the weights' versions must move as an in-place op's do,
    or a cached transform (and autograd's saved-tensor check) would see stale weights."""
    from kuosan.training.optim import adamw

    conv = Conv2d(32, 32, 3, padding=1).to(memory_format=torch.channels_last)
    opt = adamw(conv.parameters(), lr=1e-3)
    x = torch.randn(2, 32, 8, 8).contiguous(memory_format=torch.channels_last)
    with torch.inference_mode():
        before = conv(x).clone()
    conv(x).square().mean().backward()
    versions = [p._version for p in conv.parameters()]
    opt.step()
    assert all(p._version > v for p, v in zip(conv.parameters(), versions))
    with torch.inference_mode():
        assert not torch.equal(conv(x), before)  # the step's weights, not a transform of the old ones
        torch.testing.assert_close(conv(x), F.conv2d(x, conv.weight, conv.bias, padding=1), rtol=0, atol=1e-4)


def test_sampling_in_bfloat16_leaves_3x3_layers_to_onednn_where_the_cpu_has_amx(monkeypatch):
    conv = Conv2d(32, 32, 3, padding=1).to(memory_format=torch.channels_last)
    x = torch.randn(2, 32, 8, 8).contiguous(memory_format=torch.channels_last)
    used = []
    monkeypatch.setattr(kernels, "winograd_conv", lambda *a, **k: used.append(1) or F.conv2d(*a, padding=1))
    monkeypatch.setattr(kernels, "conv_bf16_ok", lambda *a: True)
    for amx, expected in ((True, 0), (False, 1)):
        used.clear()
        monkeypatch.setattr(kernels, "amx", lambda: amx)
        with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
            conv(x)
        assert len(used) == expected, amx
