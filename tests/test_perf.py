"""The fast paths compute the same thing: fused GroupNorm, channels_last layout, unchanged checkpoints.

No timings are asserted here (benchmarks/ measures speed); these tests check that the optimised
network is the textbook one, whatever its layout, and that its parameters keep their names.
"""

import json

import pytest
import torch
from torch.nn import functional as F

from kuosan.nets.layers import group_norm_act
from kuosan.nets.unet import Attention, ResBlock, UNet, UNetConfig
from kuosan.nets.layout import prepare_model, to_channels_last
from kuosan.runtime import configure_threads, openmp_defaults

CL = torch.channels_last
CFG = UNetConfig(in_channels=3, out_channels=3, resolution=16, base_channels=16, channel_mults=(1, 2),
                 num_blocks=1, attn_resolutions=(8,), head_channels=8, num_classes=4)


def randomised(net, seed=0):
    """Zero-initialised layers would hide errors: give every parameter a random value."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in net.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.2)
    return net


def inputs(batch=3, seed=1):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(batch, 3, 16, 16, generator=g), torch.randn(batch, generator=g),
            torch.tensor([0, 2, 4][:batch]))


@pytest.mark.parametrize("layout", ["nchw", "channels_last"])
@pytest.mark.parametrize("act,adaptive", [(False, False), (True, False), (True, True)])
def test_group_norm_act_matches_torch_ops_and_gradients(layout, act, adaptive):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 8, 5, 5, generator=g, dtype=torch.float64) * 3 + 1
    x = (to_channels_last(x) if layout == "channels_last" else x).requires_grad_()
    w, b = (torch.randn(8, generator=g, dtype=torch.float64).requires_grad_() for _ in range(2))
    s, t = ((torch.randn(2, 8, generator=g, dtype=torch.float64).requires_grad_() for _ in range(2))
            if adaptive else (None, None))

    ref = F.group_norm(x, 4, w, b)
    if adaptive:
        ref = ref * (1 + s[:, :, None, None]) + t[:, :, None, None]
    ref = F.silu(ref) if act else ref
    out = group_norm_act(x, 4, w, b, 1e-5, s, t, act)
    torch.testing.assert_close(out, ref)
    assert out.is_contiguous(memory_format=CL if layout == "channels_last" else torch.contiguous_format)
    leaves = [x, w, b] + ([s, t] if adaptive else [])
    assert torch.autograd.gradcheck(lambda *a: group_norm_act(a[0], 4, a[1], a[2], 1e-5, *(a[3:] or (None, None)),
                                                              act=act), leaves)


def test_resblock_is_the_textbook_formula():
    block = randomised(ResBlock(8, 16, 12, 0.0))
    x, emb = torch.randn(2, 8, 6, 6), torch.randn(2, 12)
    scale, shift = block.emb(F.silu(emb))[:, :, None, None].chunk(2, dim=1)
    h = block.conv1(F.silu(F.group_norm(x, block.norm1.num_groups, block.norm1.weight, block.norm1.bias)))
    h = F.group_norm(h, block.norm2.num_groups, block.norm2.weight, block.norm2.bias) * (1 + scale) + shift
    ref = (block.skip(x) + block.conv2(F.silu(h))) * 2 ** -0.5
    torch.testing.assert_close(block(x, emb), ref, atol=1e-5, rtol=1e-5)


def test_attention_keeps_the_qkv_channel_order():
    """qkv's output channels are [q | k | v], each [head 0 | head 1 | …]: LoRA and checkpoints rely on it."""
    attn = randomised(Attention(16, 8))
    x = torch.randn(2, 16, 4, 4)
    B, C, N = 2, 16, 16
    qkv = attn.qkv(F.group_norm(x, attn.norm.num_groups, attn.norm.weight, attn.norm.bias)).reshape(B, 3, 2, 8, N)
    q, k, v = qkv[:, 0], qkv[:, 1], qkv[:, 2]                                # (B, heads, d, N)
    weights = torch.softmax(q.transpose(-1, -2) @ k / 8 ** 0.5, dim=-1)     # (B, heads, N, N)
    h = (v @ weights.transpose(-1, -2)).reshape(B, C, 4, 4)
    ref = (x + attn.proj(h)) * 2 ** -0.5
    torch.testing.assert_close(attn(x), ref, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(attn.to(memory_format=CL)(to_channels_last(x)), ref, atol=1e-5, rtol=1e-5)


def test_channels_last_network_matches_nchw_outputs_and_gradients():
    torch.manual_seed(0)
    nchw = randomised(UNet(CFG))
    fast = prepare_model(randomised(UNet(CFG)))
    assert fast.memory_format() == CL and nchw.memory_format() == torch.contiguous_format
    x, c, y = inputs()
    out_ref = nchw(x, c, y)
    for given in (x, to_channels_last(x)):  # either input layout; the output comes back in it
        out = fast(given, c, y)
        torch.testing.assert_close(out, out_ref, atol=1e-4, rtol=1e-4)
        assert out.stride() == given.stride()
    out_ref.square().sum().backward()
    fast(x, c, y).square().sum().backward()
    for (name, p), q in zip(nchw.named_parameters(), fast.parameters()):
        torch.testing.assert_close(q.grad, p.grad, atol=1e-3, rtol=1e-3, msg=name)


def test_channels_last_network_under_bf16_autocast_runs_and_keeps_dtypes():
    net = prepare_model(randomised(UNet(CFG)))
    x, c, y = inputs()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = net(x, c, y)
        out.float().square().mean().backward()
    ref = randomised(UNet(CFG))(x, c, y)
    assert torch.isfinite(out).all() and (out.float() - ref).abs().max() < 0.1 * ref.abs().max()
    assert all(p.grad is not None and p.grad.dtype == torch.float32 for p in net.parameters())


def test_state_dict_keys_are_unchanged_and_a_checkpoint_loads_in_either_layout(tmp_path):
    from kuosan.checkpoint import _write_safetensors
    from safetensors.torch import load_file

    saved = randomised(UNet(CFG))
    keys = list(saved.state_dict())
    # the names other code relies on: LoRA targets (qkv, proj, conv1, conv2) and the norms
    for key, shape in (("down.0.0.conv1.weight", (16, 16, 3, 3)), ("down.0.0.conv2.weight", (16, 16, 3, 3)),
                       ("down.2.1.qkv.weight", (96, 32, 1, 1)), ("down.2.1.proj.weight", (32, 32, 1, 1)),
                       ("down.0.0.norm1.weight", (16,)), ("mid.1.norm.bias", (32,)),
                       ("up.0.0.skip.weight", (32, 64, 1, 1))):
        assert saved.state_dict()[key].shape == shape, key
    _write_safetensors(tmp_path / "model.safetensors", prepare_model(saved).state_dict())
    x, c, y = inputs()
    expected = saved(x, c, y)
    for channels_last in (False, True):
        net = prepare_model(UNet(CFG), channels_last=channels_last)
        net.load_state_dict(load_file(str(tmp_path / "model.safetensors")), strict=True)
        assert list(net.state_dict()) == keys
        assert net.memory_format() == (CL if channels_last else torch.contiguous_format)  # loading keeps layout
        torch.testing.assert_close(net(x, c, y), expected, atol=1e-4, rtol=1e-4)


def test_prepare_model_keeps_values_and_to_channels_last_leaves_other_tensors():
    net = randomised(UNet(CFG))
    before = {k: v.clone() for k, v in net.state_dict().items()}
    prepare_model(net)
    for k, v in net.state_dict().items():
        assert torch.equal(v, before[k]), k
    assert net.conv_out.weight.is_contiguous(memory_format=CL)
    other = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3))  # not layout-aware: left as it is
    assert prepare_model(other)[0].weight.is_contiguous()
    prepare_model(net, channels_last=False)
    assert net.memory_format() == torch.contiguous_format
    v = torch.randn(3, 4)
    assert to_channels_last(v) is v
    assert to_channels_last(torch.randn(2, 3, 4, 4)).is_contiguous(memory_format=CL)


def test_openmp_defaults_never_act_after_torch_is_loaded(monkeypatch):
    monkeypatch.delenv("OMP_WAIT_POLICY", raising=False)
    assert openmp_defaults() == {}  # torch is already imported in this process: too late to matter
    assert "OMP_WAIT_POLICY" not in __import__("os").environ


def test_configure_threads_obeys_kuosan_threads_and_never_goes_below_one(monkeypatch):
    before = torch.get_num_threads()
    try:
        monkeypatch.setenv("KUOSAN_THREADS", "1")
        assert configure_threads() == 1 == torch.get_num_threads()
        monkeypatch.delenv("KUOSAN_THREADS")
        monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
        assert 1 <= configure_threads() <= max(1, before)
    finally:
        torch.set_num_threads(before)


def test_default_threads_are_a_fair_share_only_when_the_machine_is_oversubscribed(monkeypatch):
    from kuosan import runtime as perf

    monkeypatch.setattr(perf.os, "sched_getaffinity", lambda pid: {0, 1, 2, 3}, raising=False)
    for load, expected in ((0.5, 4), (4.0, 4), (8.0, 2), (16.0, 1), (100.0, 1)):
        monkeypatch.setattr(perf.os, "getloadavg", lambda load=load: (load, load, load))
        assert perf._fair_share(4) == expected, load


def test_bench_runs_on_a_tiny_model_and_writes_ratios(tmp_path):
    pytest.importorskip("diffusers")
    import argparse

    from kuosan import bench

    cfg = tmp_path / "tiny.json"
    cfg.write_text(json.dumps({"model": {"base_channels": 32, "channel_mults": [1, 2], "num_blocks": 1,
                                         "attn_resolutions": [4], "dropout": 0.0}}))
    p = argparse.ArgumentParser()
    bench.add_arguments(p)
    out = tmp_path / "bench.json"
    args = p.parse_args(["--config", str(cfg), "--batch", "2", "--resolution", "8", "--rounds", "1",
                         "--sample-steps", "2", "--sample-rounds", "1", "--peers", "diffusers",
                         "--layouts", "channels_last,nchw-bf16", "--out", str(out)])
    assert bench.run(args) == 0
    result = json.loads(out.read_text())
    rows = result["summary"]["rows"]
    assert set(rows) == {"kuosan-channels_last", "kuosan-nchw-bf16", "diffusers"}
    assert rows["diffusers"]["train_images_speedup_vs_diffusers"] == pytest.approx(1.0)
    assert all(r["gflop_forward"] > 0 and r["sample_images_per_s"] > 0 for r in rows.values())


def test_flop_counter_counts_cpu_attention_forward_and_backward():
    """torch's counter has no formula for the CPU attention kernels; ours: Q Kᵀ and P V forward, twice that
    backward (dV, dP, dQ, dK)."""
    from kuosan.nets.build import flops_of

    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, 3, n, 8, generator=g).requires_grad_() for n in (16, 12, 12))
    forward = 2 * (2 * 3 * 16 * 12 * 8) * 2
    assert flops_of(lambda: F.scaled_dot_product_attention(q, k, v)) == forward
    assert flops_of(lambda: F.scaled_dot_product_attention(q, k, v).sum().backward()) == 3 * forward


def test_the_package_core_does_not_import_the_benchmark_harness():
    """kuosan.bench sits above everything; only the command line (kuosan.cli) reaches it."""
    import ast
    from pathlib import Path

    import kuosan

    root = Path(kuosan.__file__).parent
    offenders = []
    for path in root.rglob("*.py"):
        if path.relative_to(root).parts[0].removesuffix(".py") in ("bench", "cli"):
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import) else
                     [node.module or ""] + [f"{node.module}.{a.name}" for a in node.names]
                     if isinstance(node, ast.ImportFrom) else [])
            if any(n == "kuosan.bench" or n.startswith("kuosan.bench.") for n in names):
                offenders.append(str(path.relative_to(root)))
    assert not offenders


def test_fused_adamw_after_a_reload_matches_the_loop_implementation():
    """A reloaded optimiser state is NCHW beside channels_last weights; match_state_layout realigns it
    (without it torch's fused CPU AdamW applies the moments to the wrong elements)."""
    from kuosan.training.optim import adamw, match_state_layout

    g = torch.Generator().manual_seed(0)
    start = torch.randn(8, 4, 3, 3, generator=g).contiguous(memory_format=torch.channels_last)
    grads = [torch.randn(8, 4, 3, 3, generator=g).contiguous(memory_format=torch.channels_last) for _ in range(3)]

    def run(make, reload):
        p = start.clone(memory_format=torch.channels_last).requires_grad_()
        opt = make([p])
        for i, grad in enumerate(grads):
            p.grad = grad.clone(memory_format=torch.channels_last)
            opt.step()
            if i == 0 and reload:  # as if read back from optimizer.safetensors
                sd = opt.state_dict()
                for st in sd["state"].values():
                    st.update({k: v.contiguous() for k, v in st.items() if v.ndim == 4})
                opt.load_state_dict(sd)
                match_state_layout(opt)
        return p.detach()

    loop = run(lambda ps: torch.optim.AdamW(ps, lr=0.1, foreach=False), reload=False)
    fused = run(lambda ps: torch.optim.AdamW(ps, lr=0.1, fused=True), reload=True)  # what adamw() uses on CUDA
    ours = run(lambda ps: adamw(ps, lr=0.1), reload=True)
    torch.testing.assert_close(ours, loop, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(fused, loop, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("weight_decay", [0.0, 0.05])
def test_kuosan_adamw_matches_torch_and_shares_its_state(weight_decay):
    from kuosan.nets import kernels
    from kuosan.training.optim import adamw
    from kuosan.training.optim import FusedAdamW

    g = torch.Generator().manual_seed(0)
    shapes = [(16, 8, 3, 3), (16,), (5, 7), (40000,)]  # the last spans several work items
    start = [torch.randn(s, generator=g) for s in shapes]
    start[0] = start[0].contiguous(memory_format=torch.channels_last)
    grads = [[torch.randn(s, generator=g) for s in shapes] for _ in range(4)]

    def run(make):
        ps = [t.clone(memory_format=torch.preserve_format).requires_grad_() for t in start]
        opt = make(ps)
        for step_grads in grads:
            for p, gr in zip(ps, step_grads):
                p.grad = torch.empty_like(p).copy_(gr)  # the parameter's layout, as autograd makes it
            opt.step()
        return ps, opt

    kw = dict(lr=0.01, betas=(0.9, 0.99), weight_decay=weight_decay)
    ours, opt = run(lambda ps: adamw(ps, **kw))
    ref, ref_opt = run(lambda ps: torch.optim.AdamW(ps, foreach=False, **kw))
    assert isinstance(opt, FusedAdamW) and kernels.loaded()
    for a, b in zip(ours, ref):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    # The state is torch's: it loads into torch's AdamW and back.
    sd = opt.state_dict()
    assert set(sd["state"][0]) == set(ref_opt.state_dict()["state"][0])
    torch.testing.assert_close(sd["state"][3]["exp_avg_sq"], ref_opt.state_dict()["state"][3]["exp_avg_sq"])
    assert float(sd["state"][0]["step"]) == 4


def test_kuosan_adamw_falls_back_to_torch_for_what_its_kernel_does_not_take():
    from kuosan.training.optim import adamw

    p = torch.randn(6, 5, dtype=torch.float64, requires_grad=True)
    q = p.detach().clone().requires_grad_()
    opt, ref = adamw([p], lr=0.1, amsgrad=True), torch.optim.AdamW([q], lr=0.1, amsgrad=True)
    for _ in range(3):
        p.grad = torch.ones_like(p)
        q.grad = torch.ones_like(q)
        opt.step()
        ref.step()
    torch.testing.assert_close(p, q)


def test_adamw_keeps_every_parameter_of_groups_given_as_generators():
    from kuosan.training.optim import adamw

    a, b = torch.nn.Linear(3, 4), torch.nn.Linear(4, 2)
    opt = adamw([{"params": a.parameters()}, {"params": b.parameters()}], lr=0.1)
    assert [len(g["params"]) for g in opt.param_groups] == [2, 2]
    opt = adamw(a.parameters(), lr=0.1)
    assert sum(len(g["params"]) for g in opt.param_groups) == 2


def test_openmp_policy_sleeps_only_on_a_busy_machine():
    from kuosan.runtime import openmp_policy

    assert openmp_policy(0.3, 2) == {}  # quiet: GNU OpenMP's own brief spinning
    assert openmp_policy(1.9, 2) == {}
    assert openmp_policy(2.0, 2) == {"OMP_WAIT_POLICY": "PASSIVE"}
    assert openmp_policy(9.0, 2) == {"OMP_WAIT_POLICY": "PASSIVE"}
    assert openmp_policy(0.5, 0) == {}  # a core count of 0 (unknown) counts as one
    assert openmp_policy(1.0, 0) == {"OMP_WAIT_POLICY": "PASSIVE"}
