"""PNG plots for an evaluation report (matplotlib's object API: no pyplot, no display, no global backend)."""

from pathlib import Path

import numpy as np


def _figure(width=6.0, height=3.6):
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), dpi=110, layout="constrained")


def _save(fig, path):
    path = Path(path)
    fig.savefig(path)
    return path.name


def sample_grid(images_uint8, path, title="", columns=10, rows=6):
    """The first ``columns × rows`` images, in a grid. ``images_uint8``: ``[N, C, H, W]``."""
    x = np.asarray(images_uint8[: columns * rows])
    if not len(x):
        return None
    n, c, h, w = x.shape
    rows = int(np.ceil(n / columns))
    cols = min(n, columns)
    grid = np.full((rows * (h + 1) + 1, cols * (w + 1) + 1, c), 255, dtype=np.uint8)
    for i, img in enumerate(x):
        r, q = divmod(i, cols)
        grid[1 + r * (h + 1): 1 + r * (h + 1) + h, 1 + q * (w + 1): 1 + q * (w + 1) + w] = img.transpose(1, 2, 0)
    fig = _figure(min(2 + cols * 0.6, 10), min(1 + rows * 0.6, 8))
    ax = fig.add_subplot()
    ax.imshow(grid[..., 0] if c == 1 else grid, cmap="gray" if c == 1 else None, vmin=0, vmax=255,
              interpolation="nearest")
    ax.set_axis_off()
    ax.set_title(title, fontsize=9)
    return _save(fig, path)


def class_bars(generated_share, real_share, class_names, path):
    """Predicted-class shares of the generated set beside the real floor's."""
    fig = _figure()
    ax = fig.add_subplot()
    k = len(generated_share)
    xs = np.arange(k)
    ax.bar(xs - 0.2, generated_share, 0.4, label="generated")
    if real_share is not None:
        ax.bar(xs + 0.2, real_share, 0.4, label="real (same size)")
    ax.axhline(1 / k, color="gray", lw=0.8, ls="--", label="uniform")
    ax.set_xticks(xs, (class_names or [str(i) for i in range(k)])[:k], rotation=45, ha="right", fontsize=8)
    ax.set_ylabel("share of images (classifier)")
    ax.legend(fontsize=8)
    return _save(fig, path)


def nn_histogram(generated_nn, real_nn, path, feature_name):
    """Distances to the nearest training image: generated versus held-out real."""
    fig = _figure()
    ax = fig.add_subplot()
    both = np.concatenate([generated_nn, real_nn])
    bins = np.linspace(both.min(), both.max(), 40) if both.size and np.ptp(both) > 0 else 10
    ax.hist(real_nn, bins=bins, alpha=0.6, density=True, label="held-out real -> train")
    ax.hist(generated_nn, bins=bins, alpha=0.6, density=True, label="generated -> train")
    ax.set_xlabel(f"nearest-neighbour distance ({feature_name} features)")
    ax.legend(fontsize=8)
    return _save(fig, path)


def loss_curve(log, path):
    """Training loss (log scale) with a moving average, and held-out raw/EMA losses when logged."""
    fig = _figure()
    ax = fig.add_subplot()
    steps, loss = log["loss_step"], log["loss"]
    ok = np.isfinite(loss) & (loss > 0)
    ax.plot(steps[ok], loss[ok], lw=0.5, alpha=0.4, label="loss")
    w = max(1, ok.sum() // 50)
    if ok.sum() > 2 * w:
        smooth = np.convolve(loss[ok], np.ones(w) / w, mode="valid")
        ax.plot(steps[ok][w - 1:], smooth, lw=1.5, label=f"moving average ({w})")
    for key, style in (("val_loss_raw", "o-"), ("val_loss_ema", "s-")):
        if key in log:
            ax.plot(log[key + "_step"], log[key], style, ms=3, lw=1, label=key.replace("val_loss_", "held-out, "))
    ax.set_yscale("log")
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.legend(fontsize=8)
    return _save(fig, path)


def grad_norm_curve(log, threshold, path):
    """Gradient norm per logged step, the spike threshold, and the spikes."""
    fig = _figure()
    ax = fig.add_subplot()
    steps, g = log["grad_norm_step"], log["grad_norm"]
    ok = np.isfinite(g)
    ax.plot(steps[ok], g[ok], lw=0.6, label="grad norm")
    if threshold is not None:
        ax.axhline(threshold, color="red", lw=0.8, ls="--", label="spike threshold")
        spikes = ok & (g > threshold)
        ax.plot(steps[spikes], g[spikes], "rx", ms=5, label="spikes")
    ax.set_yscale("log")
    ax.set_xlabel("step")
    ax.set_ylabel("gradient norm")
    ax.legend(fontsize=8)
    return _save(fig, path)
