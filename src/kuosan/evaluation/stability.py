"""Training stability from a run's ``metrics.jsonl`` (one JSON object per line, written by the training loop).

Fields read: ``step``, ``loss``, ``grad_norm``, ``lr``, ``nonfinite`` (cumulative skipped steps), ``time``,
``images_per_s``; on some lines ``val_loss_raw`` and ``val_loss_ema`` (a fixed held-out batch's loss with
the raw and the EMA weights). Missing fields are skipped, not guessed.
"""

import json
import math
from pathlib import Path

import numpy as np

from kuosan.errors import KuosanError

MAD_TO_STD = 1.4826  # MAD of a Gaussian times this is its standard deviation


class EmptyMetricsLog(KuosanError):
    """The log exists but holds no record yet (a run stopped before its first metrics line)."""


def read_metrics_log(path):
    """The log as a dict of numpy arrays keyed by field, each with its own ``<field>_step`` array."""
    path = Path(path)
    if not path.is_file():
        raise KuosanError(f"metrics log {str(path)!r} not found "
                          "(a training run writes metrics.jsonl in its run directory)")
    rows, lines = [], path.read_text().splitlines()
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            if number == len(lines):  # a torn last line from a run still writing
                break
            raise KuosanError(f"{path}:{number} is not JSON ({exc.msg}); each line must be one JSON object") from None
        if not isinstance(row, dict) or "step" not in row:
            raise KuosanError(f"{path}:{number} must be a JSON object with a 'step' field")
        rows.append(row)
    if not rows:
        raise EmptyMetricsLog(f"metrics log {path} has no records")
    columns = {}
    for row in rows:
        for key, value in row.items():
            if key != "step" and isinstance(value, (int, float)) and not isinstance(value, bool):
                columns.setdefault(key, ([], []))
                columns[key][0].append(row["step"])
                columns[key][1].append(float(value))
    out = {}
    for key, (steps, values) in columns.items():
        out[key] = np.asarray(values, dtype=np.float64)
        out[key + "_step"] = np.asarray(steps, dtype=np.float64)
    return out


def loss_trend(steps, loss, window_frac=0.1):
    """Slope of ``log(loss)`` per 1,000 steps over the last half (least squares) and last/first window ratio."""
    ok = np.isfinite(loss) & (loss > 0)
    steps, loss = steps[ok], loss[ok]
    if len(loss) < 4:
        return {"points": int(len(loss))}
    half = len(loss) // 2
    s, y = steps[half:], np.log(loss[half:])
    slope = np.polyfit(s, y, 1)[0] * 1000 if np.ptp(s) > 0 else float("nan")
    w = max(1, int(len(loss) * window_frac))
    first, last = float(loss[:w].mean()), float(loss[-w:].mean())
    return {
        "points": int(len(loss)),
        "log_loss_slope_per_1k_steps_last_half": float(slope),
        "first_window_mean": first,
        "last_window_mean": last,
        "last_over_first": last / first,
        "still_decreasing": bool(slope < 0),
    }


def grad_spikes(steps, grad_norm, k=6.0):
    """Gradient-norm spikes: values above ``median + k · 1.4826 · MAD`` (a robust ``k``-sigma rule)."""
    ok = np.isfinite(grad_norm)
    g = grad_norm[ok]
    if len(g) == 0:
        return {"points": 0}
    median = float(np.median(g))
    mad = float(np.median(np.abs(g - median)))
    threshold = median + k * MAD_TO_STD * mad
    spikes = steps[ok][g > threshold]
    return {
        "points": int(len(g)),
        "median": median,
        "mad": mad,
        "k": k,
        "threshold": threshold,
        "spikes": int(len(spikes)),
        "spike_fraction": float(len(spikes) / len(g)),
        "spike_steps": [int(s) for s in spikes[:20]],
        "max": float(g.max()),
        "nonfinite_values": int((~ok).sum()),
    }


def ema_vs_raw(log):
    """Held-out loss with EMA versus raw weights: last values, and how often EMA is better."""
    if "val_loss_raw" not in log or "val_loss_ema" not in log:
        return None
    raw = dict(zip(log["val_loss_raw_step"], log["val_loss_raw"]))
    pairs = [(s, raw[s], e) for s, e in zip(log["val_loss_ema_step"], log["val_loss_ema"]) if s in raw]
    if not pairs:
        return None
    steps, r, e = (np.asarray(v) for v in zip(*pairs))
    half = len(r) // 2
    return {
        "points": len(pairs),
        "last_step": int(steps[-1]),
        "last_raw": float(r[-1]),
        "last_ema": float(e[-1]),
        "relative_gain_last": float((r[-1] - e[-1]) / r[-1]) if r[-1] else float("nan"),
        "ema_better_fraction_last_half": float((e[half:] < r[half:]).mean()),
    }


def stability_report(path, spike_k=6.0):
    """The stability section of a report, from a ``metrics.jsonl`` path."""
    log = read_metrics_log(path)
    out = {"log": str(path)}
    if "loss" in log:
        out["steps"] = int(log["loss_step"][-1])
        out["loss"] = loss_trend(log["loss_step"], log["loss"])
    if "grad_norm" in log:
        out["grad_norm"] = grad_spikes(log["grad_norm_step"], log["grad_norm"], spike_k)
    if "nonfinite" in log:
        out["nonfinite_steps"] = int(log["nonfinite"][-1])
    ema = ema_vs_raw(log)
    if ema is not None:
        out["ema_vs_raw"] = ema
    if "images_per_s" in log:
        v = log["images_per_s"][len(log["images_per_s"]) // 2:]
        out["train_images_per_s"] = float(np.nanmean(v)) if len(v) else float("nan")
    if "time" in log:
        out["train_seconds"] = float(log["time"][-1])
    return out, log


def stability_flags(section):
    """Short warnings a reader should see first."""
    flags = []
    loss = section.get("loss", {})
    if loss.get("log_loss_slope_per_1k_steps_last_half", -1) > 0.05:
        flags.append("loss rising over the last half of training")
    if not math.isfinite(loss.get("last_window_mean", 0.0)):
        flags.append("loss is not finite")
    if section.get("nonfinite_steps", 0) > 0:
        flags.append(f"{section['nonfinite_steps']} non-finite steps skipped")
    spikes = section.get("grad_norm", {})
    if spikes.get("spike_fraction", 0) > 0.01:
        flags.append(f"gradient-norm spikes on {100 * spikes['spike_fraction']:.1f}% of logged steps")
    return flags
