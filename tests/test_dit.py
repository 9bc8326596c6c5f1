import pytest
import torch

from kuosan.diffusion.guidance import classifier_free_guidance
from kuosan.errors import KuosanError
from kuosan.nets.build import build_network, count_flops
from kuosan.nets.dit import FREQ_DIM, DiT, DiTConfig, sincos_pos_embed_2d


def _dit(**kw):
    base = dict(in_channels=1, out_channels=1, resolution=8, patch_size=2, depth=2, width=32, heads=4)
    return DiT(DiTConfig(**{**base, **kw}))


def _perturb(net, std=0.1, seed=0):
    """Move every weight off its (partly zero) initialisation, so each path carries signal."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in net.parameters():
            p.add_(torch.randn(p.shape, generator=g) * std)
    return net


@pytest.mark.parametrize("resolution,patch,channels,pos", [
    (28, 2, 1, "sincos"), (28, 4, 1, "learned"), (28, 7, 3, "sincos"), (30, 4, 3, "sincos"),
    (30, 4, 1, "learned"), (8, 2, 4, "sincos"), (8, 1, 4, "learned"), (32, 4, 4, "sincos"), (5, 2, 3, "sincos"),
])
def test_output_shapes(resolution, patch, channels, pos):
    net = _perturb(_dit(in_channels=channels, out_channels=channels, resolution=resolution, patch_size=patch,
                        pos_embed=pos, num_classes=10))
    x = torch.randn(3, channels, resolution, resolution)
    out = net(x, torch.rand(3), torch.tensor([0, 9, 10]))
    assert out.shape == x.shape and torch.isfinite(out).all()
    assert net(x, torch.rand(3)).shape == x.shape  # no labels: the null class


def test_out_channels_may_differ():
    assert _dit(in_channels=4, out_channels=8)(torch.randn(2, 4, 8, 8), torch.rand(2)).shape == (2, 8, 8, 8)


def test_fresh_blocks_are_the_identity_and_fresh_net_outputs_zero():
    net = _dit(num_classes=5)
    h = torch.randn(3, 16, 32)
    emb = net.embed(torch.rand(3), torch.tensor([0, 1, 5]))
    assert emb.abs().sum() > 0
    for block in net.blocks:  # adaLN-Zero: every gate α is 0
        assert torch.equal(block(h, emb), h)
    assert torch.equal(net(torch.randn(3, 1, 8, 8), torch.rand(3)), torch.zeros(3, 1, 8, 8))


def test_class_and_noise_condition_the_output():
    net = _perturb(_dit(num_classes=3)).eval()
    x, c = torch.randn(1, 1, 8, 8).expand(4, -1, -1, -1), torch.full((4,), 0.5)
    out = net(x, c, torch.tensor([0, 1, 2, 3]))
    for i in range(4):
        for j in range(i + 1, 4):
            assert not torch.allclose(out[i], out[j], atol=1e-4), (i, j)
    assert torch.allclose(net(x, c, None), out[3:].expand(4, -1, -1, -1), atol=1e-6)  # None = the null row
    assert not torch.allclose(net(x, torch.full((4,), 0.1), None), net(x, c, None), atol=1e-4)


def test_null_class_serves_classifier_free_guidance():
    from kuosan.diffusion.flow import FlowPrecond

    p = FlowPrecond(_perturb(_dit(num_classes=3))).eval()
    x, sigma, y = torch.randn(2, 1, 8, 8) * 3, torch.tensor([3.0, 0.5]), torch.tensor([0, 2])
    guided = classifier_free_guidance(p, 2.5, null_label=3)(x, sigma, class_labels=y)
    d_c, d_u = p(x, sigma, y), p(x, sigma, torch.tensor([3, 3]))
    assert torch.allclose(guided, d_u + 2.5 * (d_c - d_u), atol=1e-5)


def test_unpatchify_puts_each_token_on_its_patch():
    net = _dit(resolution=8, patch_size=2, out_channels=3)
    tokens = torch.zeros(1, 16, 2 * 2 * 3)
    tokens[0, 6] = torch.arange(12.0) + 1  # row 1, column 2 of the 4×4 grid
    img = net.unpatchify(tokens)
    mask = torch.zeros(8, 8, dtype=torch.bool)
    mask[2:4, 4:6] = True
    assert (img[0, :, mask] != 0).all() and (img[0, :, ~mask] == 0).all()
    assert sorted(img[0, :, mask].flatten().tolist()) == list(range(1, 13))


def test_sizes_the_patch_does_not_divide_are_padded_and_cropped():
    """Resolution 6 with patch 4 runs on an 8×8 (2×2-token) grid and crops back to 6×6."""
    net = _perturb(_dit(resolution=6, patch_size=4)).eval()
    x = torch.randn(2, 1, 6, 6)
    out = net(x, torch.rand(2))
    assert out.shape == (2, 1, 6, 6) and net.pos_embed.shape == (1, 4, 32)
    with pytest.raises(KuosanError, match="built for 6x6"):
        net(torch.randn(2, 1, 8, 8), torch.rand(2))


def test_sincos_position_codes_depend_on_offsets_only():
    pe = sincos_pos_embed_2d(64, 6).double().reshape(6, 6, 64)
    dot = lambda a, b: float(pe[a] @ pe[b])  # noqa: E731
    # cos(ω p)cos(ω q) + sin(ω p)sin(ω q) = cos(ω (p − q)): the inner product is translation invariant
    assert dot((0, 0), (2, 1)) == pytest.approx(dot((3, 4), (5, 5)), abs=1e-5)
    assert dot((1, 5), (4, 2)) == pytest.approx(dot((0, 3), (3, 0)), abs=1e-5)
    assert (pe.reshape(36, 64) @ pe.reshape(36, 64).T).diagonal().allclose(torch.full((36,), 32.0, dtype=torch.float64), atol=1e-5)


@pytest.mark.parametrize("kw,match", [(dict(width=30, heads=4), "multiple of heads"),
                                      (dict(width=18, heads=6), "divisible by 4"),
                                      (dict(pos_embed="rope"), "sincos"),
                                      (dict(patch_size=16), "larger than")])
def test_bad_configs_are_clear_errors(kw, match):
    with pytest.raises(KuosanError, match=match):
        _dit(**kw)


def test_flop_count_includes_attention():
    """Analytic count of a DiT forward at batch 1 (multiply-add = 2; norms and activations not counted)."""
    C, R, p, D, depth, cls = 3, 8, 2, 32, 2, 5
    net = _dit(in_channels=C, out_channels=C, resolution=R, patch_size=p, depth=depth, width=D, num_classes=cls)
    N = (R // p) ** 2
    patch = 2 * N * C * p * p * D
    embed = 2 * (FREQ_DIM * D + D * D)
    block = 2 * D * 6 * D + 2 * N * (3 * D * D + D * D + 2 * 4 * D * D) + 2 * 2 * N * N * D
    final = 2 * D * 2 * D + 2 * N * D * p * p * C
    assert count_flops(net, C, R, 1, cls) == patch + embed + depth * block + final


def test_built_from_the_training_config():
    from kuosan.config import load_config
    from kuosan.diffusion.flow import FlowPrecond
    from kuosan.model import build_model, network_spec

    cfg = load_config(None, ["--model.kind", "dit", "--diffusion.precond", "flow", "--model.patch_size", "4",
                             "--model.depth", "1", "--model.width", "16", "--model.heads", "2", "--dropout", "0",
                             "--model.mlp_ratio", "2", "--model.pos_embed", "learned"])
    spec = network_spec(cfg, channels=4, resolution=16, num_classes=0)  # e.g. latents of a 128² image
    assert spec["fields"] == dict(patch_size=4, depth=1, width=16, heads=2, dropout=0.0, mlp_ratio=2.0,
                                  pos_embed="learned", in_channels=4, out_channels=4, resolution=16, num_classes=0,
                                  noise_scale=1000.0)
    model = build_model(spec, cfg.diffusion)
    assert isinstance(model, FlowPrecond) and isinstance(model.net, DiT)
    assert isinstance(model.net.pos_embed, torch.nn.Parameter)  # learned
    assert model.net.blocks[0].mlp[0].out_features == 32  # mlp_ratio · width
    assert model(torch.randn(2, 4, 16, 16), torch.tensor([1.0, 10.0])).shape == (2, 4, 16, 16)
    assert isinstance(build_network("dit", **spec["fields"]), DiT)


def test_tiny_training_run_samples(tmp_path):
    import kuosan
    from kuosan.config import load_config, resolve_config_path
    from kuosan.training.loop import train

    overrides = ["--model.kind", "dit", "--diffusion.precond", "flow", "--model.patch_size", "2",
                 "--model.depth", "2", "--model.width", "32", "--model.heads", "2", "--steps", "5",
                 "--batch", "16", "--sample.steps", "3", "--log_every", "5", "--checkpoint_every", "0",
                 "--out", str(tmp_path / "run"), "--device", "cpu"]
    cfg = load_config(None, overrides, base=resolve_config_path("digits-tiny"))
    run = train(cfg, progress=False, log=lambda *a: None)
    assert (run / "samples.png").is_file()
    pipe = kuosan.load(run, device="cpu")
    assert pipe.config["network"]["kind"] == "dit" and pipe.config["diffusion"]["precond"] == "flow"
    result = pipe.sample([0, 1, 2], class_labels=[3, 4, 5], steps=3, guidance=2.0)
    assert result.images.shape == (3, 8, 8, 1)
    again = pipe.sample([1], class_labels=[4], steps=3, guidance=2.0)
    assert (again.images[0] == result.images[1]).all()  # image k depends on seed k only
