"""LoRA adapters: identity at initialisation, merge/unmerge, training only the adapters, files that
load only onto their base, mixing with weights, removal."""

import pytest
import torch
from torch import nn

from kuosan.diffusion.precond import EDMPrecond
from kuosan.errors import KuosanError
from kuosan.nets.dit import DiT, DiTConfig
from kuosan.nets.lora import (LoRAConv2d, add_lora, adapter_names, load_adapter, lora_layers,
                              mark_only_lora_trainable, merge_lora, mix_adapters, remove_lora, save_adapter,
                              set_adapter_weight, unmerge_lora, weights_checksum)
from kuosan.nets.unet import UNet, UNetConfig

X = torch.randn(3, 1, 8, 8, generator=torch.Generator().manual_seed(0))
SIGMA = torch.tensor([0.2, 1.0, 9.0])
LABELS = torch.tensor([0, 2, 3])


def _unet(seed=0, base=16):
    torch.manual_seed(seed)
    net = UNet(UNetConfig(resolution=8, base_channels=base, channel_mults=(1, 2), num_blocks=1,
                          attn_resolutions=(4,), head_channels=8, num_classes=3))
    with torch.no_grad():
        for p in net.parameters():
            p.normal_(0, 0.2)
    return EDMPrecond(net).eval()


def _randomise_adapters(model, std=0.1):
    with torch.no_grad():
        for n, p in model.named_parameters():
            if ".lora." in n:
                p.normal_(0, std)


def _run(model):
    with torch.no_grad():
        return model(X, SIGMA, LABELS)


def test_zero_initialised_up_projection_leaves_outputs_unchanged():
    unet = _unet()
    ref = _run(unet)
    layers = add_lora(unet, rank=4, targets="attn,conv")
    assert any(n.endswith(".qkv") for n in layers) and any(n.endswith(".conv1") for n in layers)
    assert torch.equal(_run(unet), ref)
    torch.manual_seed(0)
    dit = EDMPrecond(DiT(DiTConfig(in_channels=1, out_channels=1, resolution=8, patch_size=2, depth=2, width=32,
                                   heads=2, num_classes=3))).eval()
    with torch.no_grad():
        for p in dit.parameters():
            p.normal_(0, 0.1)
    ref = _run(dit)
    assert add_lora(dit, rank=2, targets="attn")  # DiT's attention projections are nn.Linear
    assert torch.equal(_run(dit), ref)


def test_merge_then_unmerge_restores_the_base_weights():
    model = _unet()
    base = {k: v.clone() for k, v in model.state_dict().items()}
    add_lora(model, rank=4, alpha=8)
    _randomise_adapters(model)
    adapted = _run(model)
    merge_lora(model)
    torch.testing.assert_close(_run(model), adapted, rtol=1e-5, atol=1e-5)  # same function, one matmul less
    unmerge_lora(model)
    for k, v in base.items():
        torch.testing.assert_close(model.state_dict()[k], v, rtol=0, atol=1e-6)
    torch.testing.assert_close(_run(model), adapted, rtol=0, atol=1e-6)


def test_only_adapters_train():
    model = _unet().train()
    add_lora(model, rank=2)
    trainable = mark_only_lora_trainable(model)
    base = {n: p.detach().clone() for n, p in model.named_parameters()}
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    for _ in range(3):
        loss = model(X, SIGMA, LABELS).square().mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert trainable and all(".lora." in n for n in trainable)
    for n, p in model.named_parameters():
        assert (not torch.equal(p, base[n])) == (n in trainable), n


def test_adapter_file_loads_only_onto_its_base(tmp_path):
    model = _unet()
    base_sum = weights_checksum(model)
    add_lora(model, rank=2, targets="attn")
    _randomise_adapters(model)
    path = save_adapter(model, tmp_path / "a", targets="attn")
    assert weights_checksum(model) == base_sum  # adapters are not part of the base identity
    fresh = _unet()
    load_adapter(fresh, path)
    torch.testing.assert_close(_run(fresh), _run(model), rtol=0, atol=0)
    with pytest.raises(KuosanError, match="trained on base weights"):
        load_adapter(_unet(seed=1), path)
    load_adapter(_unet(seed=1), path, check_base=False)  # same architecture: allowed when asked
    with pytest.raises(KuosanError, match="weight .* this model's is"):
        load_adapter(_unet(base=8), path, check_base=False)
    (tmp_path / "a.safetensors").write_bytes(path.read_bytes()[:-4] + b"0000")
    with pytest.raises(KuosanError, match="checksum"):
        load_adapter(fresh, tmp_path / "a")


def test_mixing_adapters_with_weights(tmp_path):
    torch.manual_seed(0)
    layer = nn.Sequential(nn.Conv2d(2, 4, 3, padding=1))
    x = torch.randn(2, 2, 5, 5)
    paths = []
    for k in range(2):
        add_lora(layer, rank=2, targets="0", name=f"a{k}")
        _randomise_adapters(layer)
        paths.append(save_adapter(layer, tmp_path / f"a{k}", name=f"a{k}", targets="0",
                                  base_sha256=weights_checksum(layer)))
        remove_lora(layer)
    assert type(layer[0]) is nn.Conv2d
    with torch.no_grad():
        base = layer(x)
        deltas = []
        for p in paths:
            load_adapter(layer, p)
            deltas.append(layer(x) - base)
            remove_lora(layer)
        names = mix_adapters(layer, [(paths[0], 0.7), (paths[1], -0.5)])
        assert names == ["a0", "a1"] and isinstance(layer[0], LoRAConv2d)
        torch.testing.assert_close(layer(x), base + 0.7 * deltas[0] - 0.5 * deltas[1], rtol=1e-5, atol=1e-5)
        set_adapter_weight(layer, "a1", 0.0)
        torch.testing.assert_close(layer(x), base + 0.7 * deltas[0], rtol=1e-5, atol=1e-5)
        merge_lora(layer)
        with pytest.raises(KuosanError, match="merged"):
            load_adapter(layer, paths[0])
        remove_lora(layer, "a0")
        assert adapter_names(layer) == ["a1"] and lora_layers(layer)["0"].merged == ["a1"]
        torch.testing.assert_close(layer(x), base, rtol=1e-5, atol=1e-5)
