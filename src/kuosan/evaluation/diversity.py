"""Diversity of a generated set, judged by a data-set classifier and by feature distances.

Every function returns plain dicts of floats so a report can hold the generated value beside the same
value for real images (the floor).
"""

import numpy as np

from kuosan.evaluation.metrics import pairwise_distances, reduce_rows

MISSING_SHARE = 0.25  # a class is "missing" below a quarter of its expected share 1/K
MIN_PER_CLASS = 5     # fewer samples than 5 per class: too few to call a collapse


def class_distribution(probs, num_classes=None):
    """Predicted-class histogram with entropy, coverage and a mode-collapse flag.

    - ``entropy_normalized``: Shannon entropy of the predicted-class shares divided by ``log K`` (1 = uniform);
    - ``coverage``: share of classes predicted at least ``MISSING_SHARE / K`` of the time;
    - ``mode_collapse``: some class is missing in that sense (``None`` with fewer than ``MIN_PER_CLASS · K`` images);
    - ``classifier_score``: ``exp E_x KL(p(y|x) || p(y))``, the Inception Score's formula (Salimans et al. 2016)
      on the data-set classifier: between 1 and ``K``, higher for confident and varied predictions.
    """
    probs = np.asarray(probs, dtype=np.float64)
    k = num_classes or probs.shape[1]
    n = len(probs)
    counts = np.bincount(probs.argmax(1), minlength=k) if n else np.zeros(k, dtype=int)
    share = counts / max(n, 1)
    nz = share[share > 0]
    entropy = float(-(nz * np.log(nz)).sum())
    present = share >= MISSING_SHARE / k
    enough = n >= MIN_PER_CLASS * k
    marginal = probs.mean(0) if n else np.full(k, 1.0 / k)
    kl = (probs * (np.log(np.clip(probs, 1e-12, None)) - np.log(np.clip(marginal, 1e-12, None)))).sum(1)
    return {
        "images": int(n),
        "counts": counts.tolist(),
        "share": share.tolist(),
        "entropy_normalized": entropy / np.log(k) if k > 1 else 1.0,
        "coverage": float(present.mean()),
        "missing_classes": [int(c) for c in np.flatnonzero(~present)] if enough else [],
        "mode_collapse": bool((~present).any()) if enough else None,
        "max_share": float(share.max()) if n else float("nan"),
        "mean_confidence": float(probs.max(1).mean()) if n else float("nan"),
        "classifier_score": float(np.exp(kl.mean())) if n else float("nan"),
    }


def mean_pairwise_distance(features, max_items=500, seed=0):
    """Mean Euclidean distance over distinct pairs (a random subset of ``max_items`` when larger)."""
    x = np.asarray(features, dtype=np.float64)
    if len(x) > max_items:
        x = x[np.random.default_rng(seed).choice(len(x), max_items, replace=False)]
    if len(x) < 2:
        return float("nan")
    d = pairwise_distances(x, x)
    return float(d.sum() / (len(x) * (len(x) - 1)))


def intra_class_diversity(gen_feats, gen_classes, real_feats, real_classes, num_classes):
    """Per class, the generated set's mean pairwise feature distance over the real set's.

    Classes are the classifier's predictions on both sides, so the two are judged the same way.
    A ratio near 1 matches real variety; well below 1 means samples of a class look alike.
    """
    ratios, per_class = [], {}
    for c in range(num_classes):
        g = mean_pairwise_distance(gen_feats[gen_classes == c])
        r = mean_pairwise_distance(real_feats[real_classes == c])
        ratio = g / r if np.isfinite(g) and np.isfinite(r) and r > 0 else float("nan")
        per_class[c] = {"generated": g, "real": r, "ratio": ratio}
        if np.isfinite(ratio):
            ratios.append(ratio)
    return {"mean_ratio": float(np.mean(ratios)) if ratios else float("nan"),
            "min_ratio": float(np.min(ratios)) if ratios else float("nan"),
            "classes_compared": len(ratios),
            "per_class": per_class}


def conditional_accuracy(probs, requested):
    """Share of samples whose predicted class is the class they were generated for."""
    requested = np.asarray(requested)
    if len(requested) != len(probs):
        raise ValueError(f"{len(requested)} labels for {len(probs)} images")
    if not len(requested):
        return float("nan")
    return float((np.asarray(probs).argmax(1) == requested).mean())


def nearest_train_distances(feats, train_feats):
    """Distance from each row of ``feats`` to its nearest row in ``train_feats``."""
    return reduce_rows(feats, train_feats, lambda d, rows: d.min(axis=1))


def memorisation(gen_nn, real_nn):
    """Generated-to-train nearest-neighbour distances against held-out-real-to-train ones.

    ``suspect_fraction``: share of generated images closer to a training image than 99% of held-out real
    images are (about 0.01 for a model that does not copy); ``median_ratio`` well below 1 suggests copying.
    """
    gen_nn, real_nn = np.asarray(gen_nn), np.asarray(real_nn)
    if not len(gen_nn) or not len(real_nn):
        return {}
    q01 = float(np.quantile(real_nn, 0.01))
    return {
        "generated_median": float(np.median(gen_nn)),
        "real_median": float(np.median(real_nn)),
        "median_ratio": float(np.median(gen_nn) / np.median(real_nn)) if np.median(real_nn) > 0 else float("nan"),
        "real_q01": q01,
        "suspect_fraction": float((gen_nn < q01).mean()),
        "closest": float(gen_nn.min()),
    }
