"""Numerical faults: a non-finite loss or gradient is caught at its step, the step is skipped and
counted, and repeated faults stop training with one line naming the likely cause, leaving the last
good checkpoint byte for byte as it was."""

import json
from pathlib import Path

import pytest
import torch

import kuosan.diffusion.objectives as objectives
from kuosan.cli import main
from kuosan.config import load_config
from kuosan.training.loop import _nonfinite_message

ARGS = ["train", "--config", "digits-tiny", "--batch", "8", "--checkpoint_every", "3", "--log_every", "1",
        "--max_images", "200", "--sample.steps", "2"]


class _NaNGrad(torch.autograd.Function):
    """Identity forward; NaN gradients backward (a finite loss whose backward pass blows up)."""

    @staticmethod
    def forward(ctx, x):
        return x.clone()

    @staticmethod
    def backward(ctx, g):
        return g * float("nan")


def faulty_objective(monkeypatch, bad_steps, kind="loss"):
    """Wrap the real objective so that training calls number ``bad_steps`` (0-based, counting from
    the first training call of this process) return a NaN loss or NaN gradients."""
    real = objectives.loss_for
    calls = {"n": 0}

    def loss_for(precond):
        inner = real(precond)

        def objective(*args, **kwargs):
            loss = inner(*args, **kwargs)
            if not torch.is_grad_enabled():  # the held-out loss, not a training step
                return loss
            i, calls["n"] = calls["n"], calls["n"] + 1
            if i in bad_steps:
                return loss * float("nan") if kind == "loss" else _NaNGrad.apply(loss)
            return loss
        return objective

    monkeypatch.setattr(objectives, "loss_for", loss_for)


def _bytes(run: Path) -> dict:
    return {str(p.relative_to(run)): p.read_bytes() for p in sorted((run / "checkpoints").rglob("*")) if p.is_file()}


@pytest.fixture
def trained(tmp_path, capsys):
    out = tmp_path / "run"
    assert main([*ARGS, "--steps", "6", "--out", str(out)]) == 0
    capsys.readouterr()
    return out


@pytest.mark.parametrize("kind", ["loss", "gradient"])
def test_repeated_faults_stop_with_one_line_and_leave_the_checkpoint_intact(trained, capsys, monkeypatch, kind):
    before = _bytes(trained)
    faulty_objective(monkeypatch, bad_steps=range(1000), kind=kind)
    code = main([*ARGS, "--steps", "20", "--max_nonfinite", "3", "--out", str(trained), "--resume"])
    captured = capsys.readouterr()
    assert code == 2
    err = captured.err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("kuosan: error: training stopped at step 8: 3 non-finite")
    assert "learning rate" in err[0] and "--lr 0.002" in err[0] and "step-0000006 is unchanged" in err[0]
    assert "Traceback" not in captured.err + captured.out
    skipped = [ln for ln in captured.out.splitlines() if "step skipped" in ln]
    assert skipped == [f"step {s}: non-finite {kind}, step skipped ({k} so far)" for k, s in ((1, 6), (2, 7), (3, 8))]
    assert _bytes(trained) == before


def test_a_single_fault_is_skipped_and_counted(tmp_path, capsys, monkeypatch):
    out = tmp_path / "run"
    faulty_objective(monkeypatch, bad_steps={4})
    assert main([*ARGS, "--steps", "6", "--out", str(out)]) == 0
    assert "step 4: non-finite loss, step skipped (1 so far)" in capsys.readouterr().out
    state = json.loads((out / "checkpoints" / "step-0000006" / "state.json").read_text())
    assert state["nonfinite"] == 1
    from safetensors.torch import load_file

    opt = load_file(str(out / "checkpoints" / "step-0000006" / "optimizer.safetensors"))
    assert float(opt["0.step"]) == 5  # six steps, one skipped: AdamW updated five times
    rows = [json.loads(ln) for ln in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["nonfinite"] for r in rows] == [0, 0, 0, 0, 1, 1]
    weights = load_file(str(out / "checkpoints" / "step-0000006" / "model.safetensors"))
    assert all(torch.isfinite(w).all() for w in weights.values())


def test_faults_before_any_checkpoint_say_so(tmp_path, capsys, monkeypatch):
    faulty_objective(monkeypatch, bad_steps=range(1000))
    assert main([*ARGS, "--steps", "20", "--max_nonfinite", "2", "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err
    assert "no checkpoint was written" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_the_message_names_precision_when_bf16_is_on():
    t = load_config(None, ["--bf16", "--grad_clip", "0"]).train
    msg = _nonfinite_message(t, 10, 20, [Path("step-0000005")])
    assert "bfloat16" in msg and "--bf16" in msg and "--grad_clip 1" in msg and "step-0000005" in msg
    assert "\n" not in msg
