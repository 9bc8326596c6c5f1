"""``decay_over: time``: the learning rate decays over the share of ``time_limit`` spent, so a run fills its time
whatever the machine's speed; and EDM2's power-function EMA (``ema_sigma_rel``), which needs no run length."""

import json
import math

import pytest
import torch

from kuosan.checkpoint import resolve_checkpoint
from kuosan.config import load_config, resolve_config_path
from kuosan.errors import KuosanError
from kuosan.records import read_train_state
from kuosan.training.ema import EMA
from kuosan.training.loop import lr_at, train
from kuosan.training.posthoc_ema import power_beta, sigma_rel_to_gamma


def _cfg(tmp_path, **overrides):
    base = {"train.out": str(tmp_path / "run"), "train.batch": 16, "train.log_every": 1, "train.sample_every": 0,
            "train.checkpoint_every": 0, "train.warmup_steps": 2, "sample.steps": 2}
    return load_config(None, {**base, **overrides}, base=resolve_config_path("digits-tiny"))


def test_the_decay_follows_the_share_of_the_time_spent(tmp_path):
    t = _cfg(tmp_path, **{"train.decay_over": "time", "train.time_limit": 10.0, "train.steps": 100}).train
    assert lr_at(0, t, 0.9) == pytest.approx(t.lr / 2)  # warm-up still counts steps
    assert lr_at(50, t, 0.0) == pytest.approx(t.lr)
    assert lr_at(50, t, 0.5) == pytest.approx(t.lr * (0.05 + 0.95 * 0.5))
    assert lr_at(5, t, 1.0) == lr_at(99, t, 3.0) == pytest.approx(0.05 * t.lr)  # spent: the floor, whatever the step
    assert lr_at(100, t) == pytest.approx(0.05 * t.lr)  # without a fraction: over the steps, as before


def test_a_run_scheduled_by_time_trains_until_its_time_is_spent(tmp_path):
    cfg = _cfg(tmp_path, **{"train.decay_over": "time", "train.time_limit": 4.0, "train.steps": 10 ** 6,
                            "train.lr_decay": "cosine"})
    run = train(cfg, progress=False, log=lambda *a: None)
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert rows[-1]["time"] >= 4.0 and rows[-1]["step"] < 10 ** 6  # stopped by its time, not by steps
    lrs = [r["lr"] for r in rows if r["step"] > cfg.train.warmup_steps]
    assert all(a >= b for a, b in zip(lrs, lrs[1:]))  # the decay only goes down
    assert lrs[-1] < 0.15 * cfg.train.lr  # and reached its floor (5%) about when the time ran out
    assert read_train_state(resolve_checkpoint(run)).step == rows[-1]["step"]  # the last step was checkpointed


def test_time_needs_a_time_limit_and_sigma_rel_a_width(tmp_path):
    with pytest.raises(KuosanError, match="decay_over time needs train.time_limit"):
        _cfg(tmp_path, **{"train.decay_over": "time"})
    with pytest.raises(KuosanError, match="train.decay_over must be one of"):
        _cfg(tmp_path, **{"train.decay_over": "minutes", "train.time_limit": 5.0})
    for bad in (0.0, 0.5, -0.1):
        with pytest.raises(KuosanError, match="ema_sigma_rel must be in"):
            _cfg(tmp_path, **{"train.ema_sigma_rel": bad})


def test_the_power_ema_is_edm2s_and_averages_a_fixed_share_of_the_run():
    gamma = sigma_rel_to_gamma(0.1)
    assert gamma == pytest.approx(6.94, abs=0.01)  # EDM2's σ_rel = 0.10
    net = torch.nn.Linear(1, 1, bias=False)
    ema = EMA(net, decay=0.999, gamma=gamma)
    assert ema.decay_at(0) == 0.0  # the first update copies the weights
    assert [ema.decay_at(s) for s in (1, 9, 999)] == [power_beta(s + 1, gamma) for s in (1, 9, 999)]
    # weights w_t = t: the power EMA's average of 1..T is (γ+1)/(γ+2) T for any T (its profile ∝ t^γ)
    for T in (200, 2000):
        ema = EMA(net, decay=0.999, gamma=gamma)
        for t in range(1, T + 1):
            with torch.no_grad():
                net.weight.fill_(float(t))
            ema.update(net, t - 1)
        assert ema.module.weight.item() / T == pytest.approx((gamma + 1) / (gamma + 2), rel=0.01)
    assert math.isfinite(ema.decay_at(10 ** 9))


def test_the_demos_schedule_fills_its_budget_when_the_machine_slows_down(tmp_path, monkeypatch):
    """The demo's overrides on a machine that became 4x slower after its speed probe: it still trains for its
    whole time, and its learning rate still reaches the floor when the time is spent."""
    import time

    from kuosan import demo
    from kuosan.training import loop

    probe = 40  # steps the probe's speed predicts for the 3 seconds
    overrides = demo._time_schedule(probe, 3.0, warmup=2)
    assert overrides["train.decay_over"] == "time" and overrides["train.steps"] >= 20 * probe
    step = loop.Run.one_step

    def slow(self, *a, **k):  # each step now takes 4x the 75 ms the probe's speed implies
        time.sleep(0.3)
        return step(self, *a, **k)

    monkeypatch.setattr(loop.Run, "one_step", slow)
    cfg = _cfg(tmp_path, **overrides)
    run = train(cfg, progress=False, log=lambda *a: None)
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert rows[-1]["time"] >= 3.0 and rows[-1]["step"] < probe  # the whole time, fewer steps than predicted
    assert rows[-1]["lr"] < 0.2 * cfg.train.lr


def test_clock_cpu_counts_the_processs_cpu_seconds(tmp_path, monkeypatch):
    """``train.clock cpu``: the time limit, the decay and the recorded time are the process's CPU seconds. The CPU
    clock is replaced by one that advances 0.25 s a reading, so the run's length is a count, not a timing."""
    import time

    readings = iter(0.25 * k for k in range(10 ** 6))
    monkeypatch.setattr(time, "process_time", lambda: next(readings))
    cfg = _cfg(tmp_path, **{"train.clock": "cpu", "train.decay_over": "time", "train.time_limit": 2.0,
                            "train.steps": 10 ** 6})
    run = train(cfg, progress=False, log=lambda *a: None)
    state = read_train_state(resolve_checkpoint(run))
    assert 2.0 <= float(state.elapsed) < 3.0 and state.step < 20  # stopped by the CPU clock's seconds, not wall time
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert all(r["time"] <= float(state.elapsed) for r in rows)
    with pytest.raises(KuosanError, match="train.clock must be one of"):
        _cfg(tmp_path, **{"train.clock": "gpu"})


def _snapshot_tensors(run):
    from safetensors.torch import load_file

    from kuosan.training.posthoc_ema import list_snapshots

    return {step: load_file(str(path)) for step, path in list_snapshots(run)}


def test_posthoc_ema_snapshots_come_with_checkpoints_and_reconstruct_the_runs_own_ema(tmp_path):
    from safetensors.torch import load_file

    from kuosan.training.posthoc_ema import reconstruct

    cfg = _cfg(tmp_path, **{"train.posthoc_ema": True, "train.ema_sigma_rel": 0.10, "train.steps": 12,
                            "train.checkpoint_every": 4})
    run = train(cfg, progress=False, log=lambda *a: None)
    assert sorted(_snapshot_tensors(run)) == [4, 8, 12]
    ema = load_file(str(resolve_checkpoint(run) / "ema.safetensors"))
    got = reconstruct(run, 0.10)  # σ_rel 0.10 is a stored profile: the run's own power EMA of that width
    assert got.keys() == ema.keys()
    for name, v in ema.items():
        if v.is_floating_point():
            torch.testing.assert_close(got[name], v, rtol=0, atol=1e-6)


def test_a_resumed_run_keeps_its_posthoc_ema_profiles_exactly(tmp_path):
    whole = train(_cfg(tmp_path / "a", **{"train.posthoc_ema": True, "train.steps": 8, "train.checkpoint_every": 4,
                                        "train.lr_decay": "constant"}),
                  progress=False, log=lambda *a: None)
    part = _cfg(tmp_path / "b", **{"train.posthoc_ema": True, "train.steps": 4, "train.checkpoint_every": 4,
                                   "train.lr_decay": "constant"})  # the same lr at every step whatever `steps`
    train(part, progress=False, log=lambda *a: None)
    resumed = train(replace_steps(part, 8), resume=True, progress=False, log=lambda *a: None)
    a, b = _snapshot_tensors(whole), _snapshot_tensors(resumed)
    assert sorted(a) == sorted(b) == [4, 8]
    for name, v in a[8].items():
        assert torch.equal(v, b[8][name]), name


def replace_steps(cfg, steps):
    from kuosan.training.loop import replace_train

    return replace_train(cfg, steps=steps)

