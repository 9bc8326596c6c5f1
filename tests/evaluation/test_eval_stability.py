"""Training-log analysis on synthetic logs whose answers are known, and the speed probe."""

import json

import numpy as np
import pytest

from kuosan.errors import KuosanError
from kuosan.evaluation.speed import measure, speed_summary
from kuosan.evaluation.stability import EmptyMetricsLog, grad_spikes, loss_trend, read_metrics_log, stability_report

SPIKE_STEPS = (130, 370, 777)


def write_log(path, steps=1000, torn_tail=False):
    rng = np.random.default_rng(0)
    with open(path, "w") as f:
        for step in range(1, steps + 1):
            row = {"step": step, "loss": float(0.5 * np.exp(-step / 400) + 0.05 + 0.002 * rng.random()),
                   "grad_norm": float(1.0 + 0.05 * rng.standard_normal() + (20.0 if step in SPIKE_STEPS else 0.0)),
                   "lr": 1e-3, "nonfinite": int(step > 600) + int(step > 900), "time": step * 0.1,
                   "images_per_s": 640.0}
            if step % 100 == 0:
                row["val_loss_raw"], row["val_loss_ema"] = 0.2 + 0.01 * rng.random(), 0.18
            f.write(json.dumps(row) + "\n")
        if torn_tail:
            f.write('{"step": 1001, "lo')


def test_stability_finds_the_planted_spikes_and_trends(tmp_path):
    path = tmp_path / "metrics.jsonl"
    write_log(path, torn_tail=True)  # a run still writing: its last line is cut
    section, log = stability_report(path)
    assert section["grad_norm"]["spike_steps"] == list(SPIKE_STEPS)
    assert section["nonfinite_steps"] == 2
    assert section["loss"]["log_loss_slope_per_1k_steps_last_half"] < 0
    assert section["loss"]["last_over_first"] < 0.5
    assert section["ema_vs_raw"]["ema_better_fraction_last_half"] == 1.0
    assert section["ema_vs_raw"]["relative_gain_last"] > 0
    assert section["train_images_per_s"] == pytest.approx(640.0)
    assert len(log["val_loss_raw"]) == 10


def test_loss_trend_sees_a_rising_loss():
    steps = np.arange(1, 201, dtype=float)
    assert loss_trend(steps, np.exp(steps / 100))["log_loss_slope_per_1k_steps_last_half"] == pytest.approx(10.0)
    assert loss_trend(steps[:2], steps[:2]) == {"points": 2}


def test_no_spikes_in_constant_gradients():
    assert grad_spikes(np.arange(50.0), np.ones(50))["spikes"] == 0


def test_bad_logs_are_user_errors(tmp_path):
    with pytest.raises(KuosanError, match="not found"):
        read_metrics_log(tmp_path / "none.jsonl")
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"step": 1, "loss": 1}\nnot json\n{"step": 3, "loss": 1}\n')
    with pytest.raises(KuosanError, match=":2 is not JSON"):
        read_metrics_log(bad)


def test_an_empty_log_is_its_own_user_error(tmp_path):
    empty = tmp_path / "metrics.jsonl"
    empty.write_text("\n")  # a run stopped before its first metrics line
    with pytest.raises(EmptyMetricsLog, match="has no records") as caught:
        stability_report(empty)
    assert isinstance(caught.value, KuosanError)


def test_measure_sees_time_and_cpu_memory():
    with measure("cpu") as m:
        block = np.ones(64 * 2 ** 20 // 8)  # 64 MiB, touched
        block.sum()
    assert m.seconds > 0 and m.peak_bytes >= 64 * 2 ** 20
    s = speed_summary(images=10, seconds=2.0, nfe=18, peak_bytes=m.peak_bytes)
    assert s["images_per_s"] == 5.0 and s["ms_per_image"] == 200.0 and s["nfe_total"] == 180


def test_partial_speed_dicts_are_completed():
    from kuosan.evaluation.speed import normalise_speed

    s = normalise_speed({"images_per_s": 50.0, "nfe": 35, "device": "cpu"})
    assert s["ms_per_image"] == 20.0 and s["nfe_per_image"] == 35 and s["images"] is None
    s = normalise_speed({"images": 100, "seconds": 4.0, "nfe": 10})
    assert s["images_per_s"] == 25.0 and s["nfe_total"] == 1000
