"""Fine-tuning from a parent checkpoint: class-embedding resize, architecture checks, freezing, the
parent record, fine-tuning defaults, and the training loop's transfer hook (with LoRA)."""

import dataclasses
import hashlib
from types import SimpleNamespace

import pytest
import torch

from kuosan.config import TrainConfig, config_to_dict, load_config, resolve_config_path
from kuosan.errors import KuosanError
from kuosan.training.finetune import (FINETUNE_WARMUP, finetune_config, finish_transfer, freeze, init_from, prepare_transfer, resize_classes)
from kuosan.model import build_model, network_spec
from kuosan.nets.lora import load_adapter, weights_checksum
from kuosan.checkpoint import save_checkpoint


def _cfg(**model):
    overrides = {f"model.{k}": v for k, v in model.items()}
    return load_config(None, overrides, base=resolve_config_path("digits-tiny"))


def _model(cfg, num_classes, seed=0):
    """A tiny UNet precond with random (non-zero) weights everywhere, so outputs depend on all of them."""
    spec = network_spec(cfg, channels=1, resolution=8, num_classes=num_classes)
    torch.manual_seed(seed)
    precond = build_model(spec, cfg.diffusion)
    with torch.no_grad():
        for p in precond.parameters():
            p.normal_(0, 0.2)
    return precond, spec


def _save_parent(tmp_path, num_classes, name="parent", data="digits", class_names=None, **model):
    cfg = _cfg(**model)
    precond, spec = _model(cfg, num_classes)
    names = class_names or [str(k) for k in range(num_classes)]
    config = {"format": "kuosan-checkpoint", "version": 1, "network": spec, **config_to_dict(cfg),
              "data": {"spec": data, "class_names": names, "resolution": 8, "channels": 1,
                       "num_classes": num_classes}}
    run = tmp_path / name
    sd = precond.state_dict()
    save_checkpoint(run, 5, config=config, model=sd, ema=sd)
    return run, precond.eval()


X = torch.randn(4, 1, 8, 8, generator=torch.Generator().manual_seed(3))
SIGMA = torch.tensor([0.1, 0.7, 2.0, 20.0])


def _out(precond, labels):
    with torch.no_grad():
        return precond.eval()(X, SIGMA, torch.as_tensor(labels) if labels is not None else None)


@pytest.mark.parametrize("new", [5, 2])
def test_class_resize_keeps_known_classes_and_the_null_class(tmp_path, new):
    run, parent = _save_parent(tmp_path, 3)
    child, _ = _model(_cfg(), new, seed=1)
    info = init_from(child, run, num_classes=new)
    for k in range(min(3, new)):
        assert torch.equal(_out(child, [k] * 4), _out(parent, [k] * 4))
    assert torch.equal(_out(child, [new] * 4), _out(parent, [3] * 4))  # the null row moved to the new last index
    assert torch.equal(_out(child, None), _out(parent, None))
    if new > 3:  # new classes start as the unconditional model
        assert torch.equal(_out(child, [4] * 4), _out(parent, [3] * 4))
    assert info["num_classes"] == 3 and "null row 3 -> " + str(new) in info["classes"]


def test_finer_classes_start_from_the_class_they_lie_in(tmp_path):
    """The 9 emoji classes fine-tuned on emoji:sub: "animal-bird" starts as "animals", not as whichever of
    the parent's classes had its index; any other pair keeps rows by index."""
    from kuosan.data import emoji
    from kuosan.training.finetune import class_sources

    subs = emoji.SUBCATEGORIES
    run, parent = _save_parent(tmp_path, 9, data="emoji", class_names=emoji.CLASS_NAMES)
    child, _ = _model(_cfg(), len(subs), seed=1)
    info = init_from(child, run, num_classes=len(subs), class_names=subs, data="emoji:sub")
    animals, bird = emoji.CLASS_NAMES.index("animals"), subs.index("animal-bird")
    assert torch.equal(_out(child, [bird] * 4), _out(parent, [animals] * 4))
    for k in (0, 14, len(subs) - 1):           # the first face, the first people subcategory, the last object
        assert torch.equal(_out(child, [k] * 4), _out(parent, [emoji.groups_of(subs)[k]] * 4))
    assert torch.equal(_out(child, [len(subs)] * 4), _out(parent, [9] * 4))  # the null row moved last
    assert "78 finer classes, each from its class's row" in info["classes"]
    assert class_sources(emoji.CLASS_NAMES, subs, "emoji:sub") == emoji.groups_of(subs)
    assert class_sources(emoji.CLASS_NAMES, subs, "digits") is None           # not a finer labelling
    assert class_sources([str(k) for k in range(9)], subs, "emoji:sub") is None   # the parent is not the 9
    assert class_sources(emoji.CLASS_NAMES, emoji.CLASS_NAMES, "emoji") is None
    assert class_sources(emoji.CLASS_NAMES, ["no such emoji"], "emoji:fine") is None
    # without the class names (an older caller) the rows stay by index
    child, _ = _model(_cfg(), len(subs), seed=1)
    init_from(child, run, num_classes=len(subs))
    assert torch.equal(_out(child, [bird] * 4), _out(parent, [9] * 4))  # a new class: the null row
    # the training loop's hook passes the data's classes and spec on, with LoRA adapters too
    for rank in (0, 2):
        child, spec = _model(_cfg(), len(subs), seed=1)
        t = SimpleNamespace(init_from=str(run), lora_rank=rank, lora_alpha=None, lora_targets="attn,conv",
                            freeze=None, out=str(tmp_path / f"sub-{rank}"), data="emoji:sub")
        child, _, extra = prepare_transfer(child, spec, SimpleNamespace(train=t), num_classes=len(subs),
                                           class_names=subs, log=lambda *a: None)
        assert torch.equal(_out(child, [bird] * 4), _out(parent, [animals] * 4)), rank
        assert "each from its class's row" in extra["parent"]["classes"]


def test_unconditional_parent_and_unconditional_child_start_as_the_parent(tmp_path):
    run, parent = _save_parent(tmp_path, 0, "uncond")
    child, _ = _model(_cfg(), 4, seed=1)
    init_from(child, run, num_classes=4)
    for k in (0, 3, 4):
        assert torch.equal(_out(child, [k] * 4), _out(parent, None))
    run, parent = _save_parent(tmp_path, 3, "cond")
    child, _ = _model(_cfg(), 0, seed=1)
    init_from(child, run, num_classes=0)  # the null row is folded into the embedding bias
    torch.testing.assert_close(_out(child, None), _out(parent, [3] * 4), rtol=1e-5, atol=1e-5)
    # resize_classes does the same in place
    resize_classes(parent, 0)
    torch.testing.assert_close(_out(parent, None), _out(child, None), rtol=1e-5, atol=1e-5)


def test_parent_record_and_refusals(tmp_path):
    run, parent = _save_parent(tmp_path, 3)
    child, _ = _model(_cfg(), 3, seed=1)
    info = init_from(child, run, num_classes=3)
    ema = run / "checkpoints" / "step-0000005" / "ema.safetensors"
    assert info["weights"] == "ema.safetensors" and info["step"] == 5
    assert info["sha256"] == hashlib.sha256(ema.read_bytes()).hexdigest()
    assert info["weights_sha256"] == weights_checksum(parent)
    wide, _ = _model(_cfg(base_channels=8), 3)
    with pytest.raises(KuosanError, match="base_channels 16 there, 8 here"):
        init_from(wide, run, num_classes=3)
    cfg = _cfg()
    eps = build_model(network_spec(cfg, channels=1, resolution=8, num_classes=3),
                      {**config_to_dict(cfg)["diffusion"], "precond": "eps"})
    with pytest.raises(KuosanError, match="parameterisation.*--diffusion.precond edm"):
        init_from(eps, run, num_classes=3)
    with pytest.raises(KuosanError, match="never downloads"):
        init_from(child, "google/ddpm-cifar10-32", num_classes=3)


def test_frozen_parameters_do_not_move():
    precond, _ = _model(_cfg(), 3)
    frozen = freeze(precond, "down.*, mid.*")
    assert frozen and all(n.startswith(("net.down.", "net.mid.")) for n in frozen)
    before = {n: p.detach().clone() for n, p in precond.named_parameters()}
    opt = torch.optim.AdamW([p for p in precond.parameters() if p.requires_grad], lr=1e-2, weight_decay=0.1)
    for _ in range(3):
        loss = precond.train()(X, SIGMA, torch.tensor([0, 1, 2, 3])).square().mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    for n, p in precond.named_parameters():
        assert torch.equal(p, before[n]) == (n in frozen), n
    with pytest.raises(KuosanError, match="match no parameter"):
        freeze(precond, "encoder.*")
    with pytest.raises(KuosanError, match="every parameter"):
        freeze(precond, "*")


HAS_CONFIG = "init_from" in {f.name for f in dataclasses.fields(TrainConfig)}


@pytest.mark.skipif(not HAS_CONFIG, reason="needs train.init_from in TrainConfig (the config.py patch)")
def test_finetune_config_takes_the_parent_and_lowers_the_lr(tmp_path):
    run, _ = _save_parent(tmp_path, 3, base_channels=8)

    def cli(*args):  # what `kuosan train --config fashion-mnist ARGS` does
        cfg = load_config(None, list(args), base=resolve_config_path("fashion-mnist"))
        return cfg, finetune_config(cfg, list(args))

    cfg, ft = cli("--init-from", str(run), "--data", "mnist")
    assert ft.model.base_channels == 8 and tuple(ft.model.channel_mults) == (1, 2)
    assert ft.train.resolution == 8 and ft.train.lr == pytest.approx(cfg.train.lr / 10)
    assert ft.train.warmup_steps == FINETUNE_WARMUP and ft.train.data == "mnist"
    _, ft = cli("--init-from", str(run), "--lr", "3e-4", "--model.dropout", "0.3")
    assert ft.train.lr == 3e-4 and ft.model.dropout == 0.3 and ft.model.base_channels == 8


def test_transfer_hook_with_lora_writes_an_adapter_that_loads_only_on_its_base(tmp_path):
    run, parent = _save_parent(tmp_path, 3)
    cfg = _cfg()
    child, spec = _model(cfg, 3, seed=1)
    t = SimpleNamespace(init_from=str(run), lora_rank=2, lora_alpha=None, lora_targets="attn,conv", freeze=None,
                        out=str(tmp_path / "lora-run"))
    child, spec, extra = prepare_transfer(child, spec, SimpleNamespace(train=t), num_classes=3, log=lambda *a: None)
    assert torch.equal(_out(child, [1] * 4), _out(parent, [1] * 4))  # zero-initialised up-projections
    trainable = [n for n, p in child.named_parameters() if p.requires_grad]
    assert trainable and all(".lora." in n for n in trainable)
    assert extra["parent"]["path"].endswith("step-0000005") and extra["lora"]["base_sha256"] == weights_checksum(parent)
    with torch.no_grad():
        for n, p in child.named_parameters():
            if n.endswith("up.weight"):
                p.normal_(0, 0.05)
    path = finish_transfer(child, t.out, {"network": spec, **extra}, log=lambda *a: None)
    assert path.stat().st_size < 0.5 * (run / "checkpoints" / "step-0000005" / "model.safetensors").stat().st_size
    import kuosan

    base = kuosan.load(run, device="cpu").precond
    load_adapter(base, path)
    torch.testing.assert_close(_out(base, [1] * 4), _out(child, [1] * 4))
    other, _ = _model(cfg, 3, seed=7)
    with pytest.raises(KuosanError, match="trained on base weights"):
        load_adapter(other, path)


@pytest.mark.parametrize("data,trains_classes", [("digits", False), ("digits:test", False), ("mnist", True)])
def test_lora_trains_the_class_embedding_when_the_data_set_changes(tmp_path, data, trains_classes):
    """Same class count, other data set: the classes mean something else, so their embedding trains too."""
    run, _ = _save_parent(tmp_path, 3)
    child, spec = _model(_cfg(), 3, seed=1)
    t = SimpleNamespace(init_from=str(run), lora_rank=2, lora_alpha=None, lora_targets="attn,conv", freeze=None,
                        out=str(tmp_path / "lora-run"), data=data)
    child, spec, extra = prepare_transfer(child, spec, SimpleNamespace(train=t), num_classes=3, log=lambda *a: None)
    trainable = {n for n, p in child.named_parameters() if p.requires_grad}
    assert any(n.endswith("class_emb.weight") for n in trainable) == trains_classes
    assert bool(extra["lora"]["trains"]) == trains_classes
    assert all(".lora." in n or n.endswith("class_emb.weight") for n in trainable)


@pytest.mark.skipif(not HAS_CONFIG, reason="needs the config.py / loop.py / cli.py / model.py transfer patches")
def test_command_line_fine_tune_lora_merge_and_resume(tmp_path):
    import kuosan
    from kuosan.cli import main
    from kuosan.checkpoint import resolve_checkpoint
    from kuosan.model import read_model_checkpoint

    quick = ["--checkpoint_every", "0", "--log_every", "1", "--sample.steps", "1", "--sample_every", "0"]
    parent, lora, ft, merged = (str(tmp_path / n) for n in ("parent", "lora", "ft", "merged"))
    assert main(["train", "--config", "digits-tiny", "--out", parent, "--steps", "3", *quick]) == 0
    assert main(["train", "--config", "digits-tiny", "--init-from", parent, "--lora-rank", "2", "--steps", "2",
                 "--out", lora, *quick]) == 0
    saved = read_model_checkpoint(resolve_checkpoint(lora))["config"]
    assert saved["train"]["lr"] == pytest.approx(2e-4) and saved["train"]["warmup_steps"] == FINETUNE_WARMUP
    assert saved["parent"]["path"].endswith("step-0000003") and saved["lora"]["rank"] == 2
    adapter = tmp_path / "lora" / "adapter.safetensors"
    with_adapter = kuosan.load(parent, device="cpu", adapters=[adapter]).precond
    run = kuosan.load(lora, device="cpu").precond
    torch.testing.assert_close(_out(run, [1] * 4), _out(with_adapter, [1] * 4))
    assert main(["sample", "--checkpoint", parent, "--adapter", f"{adapter}:0.5", "--n", "2", "--steps", "1",
                 "--out", str(tmp_path / "s")]) == 0
    assert main(["lora", "merge", "--checkpoint", lora, "--out", merged]) == 0
    torch.testing.assert_close(_out(kuosan.load(merged, device="cpu").precond, [1] * 4), _out(run, [1] * 4),
                               rtol=1e-4, atol=1e-4)
    assert main(["train", "--config", str(tmp_path / "lora" / "config.json"), "--resume", "--out", lora,
                 "--steps", "3", *quick]) == 0
    assert main(["train", "--config", "digits-tiny", "--init-from", parent, "--freeze", "down.*", "--steps", "2",
                 "--out", ft, *quick]) == 0
    before = read_model_checkpoint(resolve_checkpoint(parent))["weights"]
    after = read_model_checkpoint(resolve_checkpoint(ft), weights="model")["weights"]
    assert all(torch.equal(after[k], before[k]) for k in before if k.startswith("net.down."))
    assert not all(torch.equal(after[k], before[k]) for k in before if k.startswith("net.up."))
