"""The fused GroupNorm(+AdaGN)(+SiLU) kernel against float64 torch, its fallback, and the attention helper."""

import os
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F

from kuosan.nets import kernels
from kuosan.nets.layers import attention, group_norm_act
from kuosan.nets.unet import UNet, UNetConfig

needs_compiler = pytest.mark.skipif(kernels._compiler() is None or os.environ.get("KUOSAN_KERNELS") == "0",
                                    reason="no C++ compiler: the fused kernels fall back to torch ops")


def reference(x, groups, w, b, scale, shift, act):
    y = F.group_norm(x, groups, w, b, 1e-5)
    if scale is not None:
        y = y * (1 + scale[:, :, None, None]) + shift[:, :, None, None]
    return F.silu(y) if act else y


def relative_error(a, ref):
    return ((a.double() - ref).abs().max() / ref.abs().max()).item()


CASES = [  # B, C, H, W, groups, act, adaptive
    (4, 32, 8, 8, 8, True, True),
    (3, 64, 5, 5, 32, False, False),
    (2, 96, 7, 6, 32, True, True),
    (5, 6, 3, 3, 2, True, False),      # a channel count without its own unrolled copy
    (2, 48, 4, 4, 16, False, True),
]


@needs_compiler
@pytest.mark.parametrize("dtype,tol", [(torch.float32, 2e-6), (torch.bfloat16, 1.5e-2)])
@pytest.mark.parametrize("case", CASES)
def test_forward_and_backward_match_float64_torch(case, dtype, tol):
    B, C, H, W, G, act, adaptive = case
    g = torch.Generator().manual_seed(sum(case[:5]))
    x = (torch.randn(B, C, H, W, generator=g) * 3 + 5).to(dtype).contiguous(memory_format=torch.channels_last)
    x.requires_grad_()
    assert kernels.available(x), kernels.status()
    w, b = torch.randn(C, generator=g).requires_grad_(), torch.randn(C, generator=g).requires_grad_()
    s = torch.randn(B, C, generator=g).requires_grad_() if adaptive else None
    t = torch.randn(B, C, generator=g).requires_grad_() if adaptive else None
    params = [p for p in (x, w, b, s, t) if p is not None]

    y = group_norm_act(x, G, w, b, 1e-5, s, t, act)
    assert y.dtype == dtype and y.is_contiguous(memory_format=torch.channels_last)
    grad = torch.randn(y.shape, generator=g)
    grads = torch.autograd.grad(y.float(), params, grad)

    p64 = [p.detach().double().requires_grad_() for p in params]
    x64, w64, b64 = p64[:3]
    s64, t64 = (p64[3], p64[4]) if adaptive else (None, None)
    y64 = reference(x64, G, w64, b64, s64, t64, act)
    grads64 = torch.autograd.grad(y64, p64, grad.double())
    assert relative_error(y, y64) < tol
    for name, a, r in zip(["x", "weight", "bias", "scale", "shift"], grads, grads64):
        assert relative_error(a, r) < tol, name


@needs_compiler
def test_statistics_hold_when_the_mean_dwarfs_the_spread():
    # E[x²] - E[x]² in float32 would lose every digit here; the kernel centres per channel first and is
    # as accurate as torch's own float32 GroupNorm (whose error is the float32 rounding of the mean).
    x = (1000 + 0.01 * torch.randn(2, 32, 6, 6, generator=torch.Generator().manual_seed(0)))
    x = x.contiguous(memory_format=torch.channels_last)
    w, b = torch.ones(32), torch.zeros(32)
    exact = reference(x.double(), 8, w.double(), b.double(), None, None, False)
    ours = relative_error(group_norm_act(x, 8, w, b, 1e-5, act=False), exact)
    torch_own = relative_error(F.group_norm(x.contiguous(), 8, w, b, 1e-5), exact)
    assert ours < max(2 * torch_own, 1e-4), (ours, torch_own)


@needs_compiler
def test_the_unet_agrees_with_its_torch_fallback(monkeypatch):
    torch.manual_seed(0)
    net = UNet(UNetConfig(base_channels=32, channel_mults=(1, 2), num_blocks=1, attn_resolutions=(4,),
                          resolution=8, num_classes=3)).to(memory_format=torch.channels_last)
    for p in net.parameters():  # zero-initialised output layers would hide half the network
        torch.nn.init.normal_(p, std=0.1)
    x, c, y = torch.randn(4, 1, 8, 8), torch.randn(4), torch.tensor([0, 1, 2, 3])

    def run():
        net.zero_grad()
        out = net(x, c, y)
        out.square().sum().backward()
        return out.detach(), [p.grad.clone() for p in net.parameters()]

    fused_out, fused_grads = run()
    monkeypatch.setattr(kernels, "available", lambda x: False)
    monkeypatch.setattr(kernels, "conv_ok", lambda x, w: False)
    torch_out, torch_grads = run()
    torch.testing.assert_close(fused_out, torch_out, rtol=1e-4, atol=1e-5)
    for a, b in zip(fused_grads, torch_grads):
        torch.testing.assert_close(a, b, rtol=1e-3, atol=1e-4)


def _status_in_subprocess(env: dict) -> str:
    code = ("import torch; from kuosan.nets import kernels; from kuosan.nets.unet import UNet, UNetConfig;"
            "net = UNet(UNetConfig(base_channels=8, channel_mults=(1,), num_blocks=1, attn_resolutions=(),"
            " resolution=8)).to(memory_format=torch.channels_last);"
            "out = net(torch.randn(2, 1, 8, 8), torch.randn(2)); assert out.isfinite().all();"
            "print(kernels.status())")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env={**os.environ, **env},
                          timeout=300)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.strip()


def test_kernels_can_be_switched_off():
    assert _status_in_subprocess({"KUOSAN_KERNELS": "0"}).startswith("disabled")


def test_without_a_compiler_the_network_falls_back_to_torch_ops(tmp_path):
    status = _status_in_subprocess({"KUOSAN_KERNELS": "1", "CXX": str(tmp_path / "no-such-compiler"),
                                    "KUOSAN_CACHE": str(tmp_path / "cache"), "PATH": str(tmp_path)})
    assert status.startswith("unavailable"), status


@needs_compiler
def test_a_fresh_cache_builds_the_kernel(tmp_path):
    cxx = kernels._compiler()
    status = _status_in_subprocess({"KUOSAN_KERNELS": "1", "KUOSAN_CACHE": str(tmp_path), "CXX": cxx})
    assert status.startswith("loaded"), status
    assert list((tmp_path / "kernels").glob("kernels-*.so"))
    assert not [p for p in (tmp_path / "kernels").iterdir() if not p.name.startswith("kernels-")]  # no temp files


@pytest.mark.parametrize("length", [49, 196])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_attention_matches_torch(length, dtype):
    g = torch.Generator().manual_seed(length)
    q, k, v = (torch.randn(3, 2, length, 16, generator=g).to(dtype) for _ in range(3))
    ref = F.scaled_dot_product_attention(q.double(), k.double(), v.double())
    out = attention(q, k, v)
    assert out.dtype == dtype and out.shape == ref.shape
    assert relative_error(out, ref) < (1e-5 if dtype == torch.float32 else 3e-2)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert attention(q.float(), k.float(), v.float()).dtype in (torch.bfloat16, torch.float32)



@needs_compiler
@pytest.mark.parametrize("gain", [1.0, 40.0, 1000.0])
def test_silu_holds_far_out_in_both_tails(gain):
    # z = ±4·gain: the exponential is clamped and the reciprocal must stay in range (no NaN, no overflow).
    g = torch.Generator().manual_seed(1)
    x = torch.randn(2, 32, 16, 16, generator=g).contiguous(memory_format=torch.channels_last).requires_grad_()
    w, b = torch.full((32,), gain, requires_grad=True), torch.zeros(32, requires_grad=True)
    y = group_norm_act(x, 32, w, b, 1e-5, act=True)
    grad = torch.randn(y.shape, generator=g)
    gx, gw = torch.autograd.grad(y, (x, w), grad)
    x64, w64 = x.detach().double().requires_grad_(), w.detach().double().requires_grad_()
    y64 = reference(x64, 32, w64, b.detach().double(), None, None, True)
    gx64, gw64 = torch.autograd.grad(y64, (x64, w64), grad.double())
    # torch's own float32 ops as the yardstick: at gain 1000 the input gradient cancels to ~1e-4 in both
    x32, w32 = x.detach().clone().requires_grad_(), w.detach().clone().requires_grad_()
    y32 = reference(x32.contiguous(), 32, w32, b.detach(), None, None, True)
    gx32, gw32 = torch.autograd.grad(y32, (x32, w32), grad)
    for a, r, own in ((y, y64, y32), (gx, gx64, gx32), (gw, gw64, gw32)):
        assert a.isfinite().all()
        assert relative_error(a, r) < max(3 * relative_error(own, r), 1e-5)


@needs_compiler
def test_an_unwritable_cache_builds_in_the_temporary_directory(tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    status = _status_in_subprocess({"KUOSAN_KERNELS": "1", "KUOSAN_CACHE": str(blocker / "cache"),
                                    "CXX": kernels._compiler()})
    assert status.startswith("loaded") and "kuosan-" in status, status
