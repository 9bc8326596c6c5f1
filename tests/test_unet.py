import pytest
import torch

from kuosan.config import load_config, resolve_config_path
from kuosan.model import build_model, network_spec
from kuosan.nets import build_network, count_flops, count_parameters


def tiny(**kw):
    fields = dict(in_channels=1, out_channels=1, resolution=28, base_channels=16, channel_mults=(1, 2, 2),
                  num_blocks=1, attn_resolutions=(7,), num_classes=10)
    fields.update(kw)
    return build_network("unet", **fields)


@pytest.mark.parametrize("res,ch", [(28, 1), (8, 1), (32, 3), (30, 4)])
def test_unet_shapes(res, ch):
    net = tiny(in_channels=ch, out_channels=ch, resolution=res, attn_resolutions=(res // 4,))
    x = torch.randn(2, ch, res, res)
    out = net(x, torch.randn(2), torch.tensor([1, 10]))
    assert out.shape == x.shape and out.dtype == torch.float32


def test_fresh_unet_outputs_zero_and_learns_class_dependence():
    net = tiny()
    x = torch.randn(2, 1, 28, 28)
    assert net(x, torch.zeros(2), torch.tensor([0, 1])).abs().max() == 0  # zero-initialised output conv
    for p in net.parameters():
        torch.nn.init.normal_(p, std=0.05) if p.ndim > 1 else None
    a = net(x[:1], torch.zeros(1), torch.tensor([0]))
    b = net(x[:1], torch.zeros(1), torch.tensor([1]))
    null = net(x[:1], torch.zeros(1), torch.tensor([10]))
    assert not torch.allclose(a, b) and not torch.allclose(a, null)


def test_counts_are_reported():
    net = tiny()
    assert count_parameters(net) > 10_000
    flops = count_flops(net, 1, 28, 1, 10)
    assert flops > 1e7
    assert count_flops(net, 1, 28, 4, 10) == pytest.approx(4 * flops, rel=1e-6)


def test_network_spec_keeps_reachable_attention_sizes():
    cfg = load_config(None, {"model.attn_resolutions": "7,3"}, base=resolve_config_path("demo"))
    spec = network_spec(cfg, channels=1, resolution=28, num_classes=10)
    assert spec["fields"]["attn_resolutions"] == (7,)
    model = build_model(spec, cfg.diffusion)
    out = model(torch.randn(2, 1, 28, 28), torch.tensor([0.5, 3.0]), torch.tensor([1, 2]))
    assert out.shape == (2, 1, 28, 28)
