"""Distances between image sets (on features) and between image pairs (on pixels).

Feature metrics take float arrays ``[N, D]`` (numpy or torch) and work in float64:
Fréchet distance, KID, precision/recall, density/coverage. Pixel metrics take images in [0, 1],
``[N, C, H, W]``: PSNR, SSIM and MS-SSIM, each averaged over the images of the batch.
"""

import numpy as np
import torch
import torch.nn.functional as F


def _f64(x):
    """numpy float64 view of a numpy array or a torch tensor."""
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu().numpy()
    return np.asarray(x, dtype=np.float64)


# --- Fréchet distance ------------------------------------------------------------------------------

def gaussian_stats(features):
    """Mean ``[D]`` and covariance ``[D, D]`` (float64, ``N - 1`` denominator) of ``features [N, D]``."""
    x = _f64(features)
    if len(x) < 2:
        raise ValueError(f"need at least 2 feature vectors for a covariance, got {len(x)}")
    return x.mean(axis=0), np.cov(x, rowvar=False)


def _psd_sqrt(sigma):
    """Symmetric square root of a covariance; negative round-off eigenvalues clipped to 0."""
    w, v = np.linalg.eigh((sigma + sigma.T) / 2)
    return (v * np.sqrt(np.clip(w, 0, None))) @ v.T


def frechet_distance(mu1, sigma1, mu2, sigma2):
    """Fréchet distance between N(mu1, sigma1) and N(mu2, sigma2) (Dowson & Landau 1982; FID, Heusel et al. 2017).

    ``d² = |mu1 - mu2|² + Tr(sigma1 + sigma2 - 2 (sigma1 sigma2)^½)``. The trace of the matrix square root
    is computed as ``Σ √λ`` over the eigenvalues λ of the symmetric PSD matrix ``√sigma1 sigma2 √sigma1``,
    which has the same spectrum as ``sigma1 sigma2``: no complex parts, and singular covariances
    (fewer samples than dimensions) are fine.
    """
    mu1, mu2, sigma1, sigma2 = _f64(mu1), _f64(mu2), np.atleast_2d(_f64(sigma1)), np.atleast_2d(_f64(sigma2))
    if mu1.shape != mu2.shape or sigma1.shape != sigma2.shape:
        raise ValueError(f"shapes differ: mu {mu1.shape} vs {mu2.shape}, sigma {sigma1.shape} vs {sigma2.shape}")
    root1 = _psd_sqrt(sigma1)
    lam = np.linalg.eigvalsh(root1 @ sigma2 @ root1)
    tr_covmean = np.sqrt(np.clip(lam, 0, None)).sum()
    diff = mu1 - mu2
    return float(max(diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2 * tr_covmean, 0.0))


def frechet_distance_features(feats1, feats2):
    """Fréchet distance between the Gaussians fitted to two feature sets."""
    return frechet_distance(*gaussian_stats(feats1), *gaussian_stats(feats2))


# --- KID -------------------------------------------------------------------------------------------

def _poly_kernel(x, y):
    """Cubic polynomial kernel ``k(x, y) = (x·y / d + 1)³`` (Bińkowski et al. 2018, §3)."""
    return (x @ y.T / x.shape[1] + 1) ** 3


def _mmd2_unbiased(x, y):
    """Unbiased MMD² estimate (Gretton et al. 2012, eq. 3) for equal-size samples."""
    m = len(x)
    k_xx, k_yy, k_xy = _poly_kernel(x, x), _poly_kernel(y, y), _poly_kernel(x, y)
    off_diag = (k_xx.sum() - np.trace(k_xx) + k_yy.sum() - np.trace(k_yy)) / (m * (m - 1))
    return off_diag - 2 * k_xy.mean()


def kid(feats1, feats2, subset_size=1000, subsets=100, seed=0):
    """Kernel Inception Distance (Bińkowski et al. 2018): mean and std of MMD² over random subsets.

    Each subset draws ``m = min(subset_size, N1, N2)`` vectors without replacement from each set, so small
    sets work (with a noisier estimate; when both sets are no larger than the subset, every subset is the
    whole set and the std is 0). Returns ``(nan, nan)`` when either set has fewer than 2 vectors.
    """
    x, y = _f64(feats1), _f64(feats2)
    m = min(subset_size, len(x), len(y))
    if m < 2:
        return float("nan"), float("nan")
    rng = np.random.default_rng(seed)
    values = [_mmd2_unbiased(x[rng.choice(len(x), m, replace=False)], y[rng.choice(len(y), m, replace=False)])
              for _ in range(subsets)]
    return float(np.mean(values)), float(np.std(values))


# --- k-NN manifold metrics ------------------------------------------------------------------------

def pairwise_distances(a, b):
    """Euclidean distances ``[len(a), len(b)]`` in float64 (small sets; large ones go through ``reduce_rows``)."""
    return reduce_rows(a, b, lambda d, rows: d)


def reduce_rows(a, b, fn, chunk=1024):
    """``concat(fn(cdist(a[rows], b), rows))`` over row chunks: k-NN statistics in bounded memory.

    Each chunk is a float64 ``[<=chunk, len(b)]`` distance block; ``fn`` reduces it along axis 1.
    """
    a, b = torch.from_numpy(_f64(a)), torch.from_numpy(_f64(b))
    parts = [fn(torch.cdist(a[i:i + chunk], b).numpy(), slice(i, i + chunk)) for i in range(0, len(a), chunk)]
    return np.concatenate(parts) if parts else np.zeros(0)


def knn_radii(x, k):
    """Distance from each row of ``x`` to its k-th nearest neighbour in ``x``, itself excluded."""
    # Column 0 of a sorted row is the point itself (distance 0), so index k is the k-th neighbour.
    return reduce_rows(x, x, lambda d, rows: np.partition(d, k, axis=1)[:, k])


def _clamp_k(k, *sets):
    return min(k, min(len(s) for s in sets) - 1)


def precision_recall(real, fake, k=3):
    """Improved precision and recall (Kynkäänniemi et al. 2019, eq. 1-2) with k-NN balls.

    Precision: share of ``fake`` inside at least one real ball ``B(x_i, NND_k(x_i))``; recall: share of
    ``real`` inside at least one fake ball. ``k`` is clamped below the set sizes; ``(nan, nan)`` with
    fewer than 2 vectors on a side. Returns ``(precision, recall)``.

    The balls are closed: a sample at exactly ``NND_k`` from a centre counts as inside (``<=``), as in
    eq. 1 of the paper (``‖φ − φ'‖ ≤ ‖φ' − NN_k(φ')‖``) and in its authors' code (NVlabs'
    improved-precision-and-recall-metric and stylegan2-ada-pytorch). Naeem et al.'s ``prdc`` package uses
    open balls (``<``) for its precision and recall, so the two differ only on ties, i.e. with duplicated
    samples: a set with every point repeated, scored against itself with k = 1, has precision and recall
    1 here and 0 in ``prdc``. Density and coverage (:func:`density_coverage`) follow ``prdc``, their
    reference, and use open balls.
    """
    real, fake = _f64(real), _f64(fake)
    k = _clamp_k(k, real, fake)
    if k < 1:
        return float("nan"), float("nan")
    r_real, r_fake = knn_radii(real, k), knn_radii(fake, k)
    precision = reduce_rows(fake, real, lambda d, rows: (d <= r_real[None, :]).any(axis=1)).mean()
    recall = reduce_rows(real, fake, lambda d, rows: (d <= r_fake[None, :]).any(axis=1)).mean()
    return float(precision), float(recall)


def density_coverage(real, fake, k=5):
    """Density and coverage (Naeem et al. 2020, eq. 3-4), with k-NN balls around the real samples only.

    Density: mean number of real balls containing each fake sample, divided by ``k`` (about 1 when the
    distributions match; can exceed 1). Coverage: share of real balls containing at least one fake sample.
    Returns ``(density, coverage)``.

    The balls are open: a fake sample at exactly ``NND_k(x_i)`` from ``x_i`` is outside (strict ``<``), as
    in the paper's reference code (the ``prdc`` package of Naeem et al., ``compute_density`` and
    ``compute_coverage``). Then a tie-free set scored against itself has density exactly 1 (each ball holds
    its centre and k − 1 neighbours, the k-th lies on its boundary); closed balls would give (k + 1)/k.
    With every point of a set duplicated (and the points otherwise in general position), the set against
    itself has density (k − 1)/k for odd k and 1 for even k. (Precision and recall,
    :func:`precision_recall`, keep the closed balls of their own paper.)
    """
    real, fake = _f64(real), _f64(fake)
    k = _clamp_k(k, real, fake)
    if k < 1:
        return float("nan"), float("nan")
    r_real = knn_radii(real, k)
    balls_per_fake = reduce_rows(fake, real, lambda d, rows: (d < r_real[None, :]).sum(axis=1))
    covered = reduce_rows(real, fake, lambda d, rows: d.min(axis=1) < r_real[rows])
    return float(balls_per_fake.mean() / k), float(covered.mean())


# --- pixel metrics --------------------------------------------------------------------------------

def _images(a, b):
    a = torch.as_tensor(a, dtype=torch.float64) if not isinstance(a, torch.Tensor) else a.detach().double().cpu()
    b = torch.as_tensor(b, dtype=torch.float64) if not isinstance(b, torch.Tensor) else b.detach().double().cpu()
    if a.shape != b.shape or a.dim() != 4:
        raise ValueError(f"expected two [N, C, H, W] batches of the same shape, "
                         f"got {list(a.shape)} and {list(b.shape)}")
    return a, b


def psnr(a, b, data_range=1.0):
    """Peak signal-to-noise ratio in dB, ``10 log10(R² / MSE)`` per image, averaged over the batch.

    Identical images give ``inf`` (their MSE is 0).
    """
    a, b = _images(a, b)
    mse = ((a - b) ** 2).flatten(1).mean(1)
    with np.errstate(divide="ignore"):
        return float(np.mean(10 * np.log10(data_range ** 2 / mse.numpy())))


def _gaussian_window(size, sigma):
    x = torch.arange(size, dtype=torch.float64) - (size - 1) / 2
    g = torch.exp(-x ** 2 / (2 * sigma ** 2))
    return g / g.sum()


def _ssim_terms(a, b, window, data_range):
    """Per-image mean SSIM and mean contrast-structure term (Wang et al. 2004, eq. 13 with C3 = C2/2).

    Local statistics use a separable Gaussian window over the valid region only (no padding), so a
    ``w``-tap window drops ``(w - 1) / 2`` pixels at each border, as scikit-image does.
    """
    c = a.shape[1]
    gy = window.view(1, 1, -1, 1).repeat(c, 1, 1, 1)
    gx = window.view(1, 1, 1, -1).repeat(c, 1, 1, 1)

    def blur(x):
        return F.conv2d(F.conv2d(x, gy, groups=c), gx, groups=c)

    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    mu_a, mu_b = blur(a), blur(b)
    var_a = blur(a * a) - mu_a ** 2
    var_b = blur(b * b) - mu_b ** 2
    cov = blur(a * b) - mu_a * mu_b
    cs = (2 * cov + c2) / (var_a + var_b + c2)
    luminance = (2 * mu_a * mu_b + c1) / (mu_a ** 2 + mu_b ** 2 + c1)
    return (luminance * cs).flatten(1).mean(1), cs.flatten(1).mean(1)


def _window_size(side, preferred=11):
    """The largest odd window not above ``preferred`` that fits in ``side`` pixels."""
    size = min(preferred, side if side % 2 else side - 1)
    if size < 1:
        raise ValueError(f"images of side {side} are too small for SSIM")
    return size


def ssim(a, b, data_range=1.0, sigma=1.5, window_size=11):
    """Structural similarity (Wang et al. 2004) with an 11-tap Gaussian window, σ = 1.5, averaged over the batch.

    Matches ``skimage.metrics.structural_similarity(..., gaussian_weights=True, sigma=1.5,
    use_sample_covariance=False, data_range=1)``; images smaller than 11 pixels get the largest odd window
    that fits.
    """
    a, b = _images(a, b)
    window = _gaussian_window(_window_size(min(a.shape[-2:]), window_size), sigma)
    return float(_ssim_terms(a, b, window, data_range)[0].mean())


# MS-SSIM scale weights (Wang, Simoncelli & Bovik 2003, §3.2), as printed there: they sum to 1.0001,
# and are used unnormalised with all five scales, as in pytorch-msssim and torchmetrics.
MS_SSIM_WEIGHTS = (0.0448, 0.2856, 0.3001, 0.2363, 0.1333)


def ms_ssim(a, b, data_range=1.0, sigma=1.5, scales=None, window_size=None):
    """Multi-scale SSIM (Wang, Simoncelli & Bovik 2003, eq. 7), averaged over the batch.

    ``MS-SSIM = l_M^β_M · Π_j cs_j^β_j`` over ``M`` scales, halving the image (2×2 average pool) between scales.
    The standard setting (5 scales, 11-tap window) needs sides of at least 176 pixels; for small images:

    - the window shrinks to 7 taps (σ = 1.5 kept, ±2σ) when the side is below 176;
    - only the scales whose side still covers the window are used (28×28 -> 3 scales: 28, 14, 7), and the
      first ``M`` weights are renormalised to sum to 1 (a weighted geometric mean again: the same value at
      every scale scores that value).

    With all five scales (``scales=None`` on sides of at least 176, or ``scales=5``) the weights are those
    printed in the paper, ``MS_SSIM_WEIGHTS``, not renormalised (they sum to 1.0001), as in pytorch-msssim
    and torchmetrics; renormalising would shift a score of 0.8 by about 2e-5.

    Negative ``cs`` values are clamped to 0 before the fractional powers (as torchmetrics' ``normalize="relu"``).
    """
    a, b = _images(a, b)
    side = min(a.shape[-2:])
    if window_size is None:
        window_size = 11 if side >= 11 * 2 ** 4 else 7
    window_size = _window_size(side, window_size)
    if scales is None:
        scales = 1
        while scales < len(MS_SSIM_WEIGHTS) and side // 2 ** scales >= window_size:
            scales += 1
    weights = torch.tensor(MS_SSIM_WEIGHTS[:scales], dtype=torch.float64)
    if scales < len(MS_SSIM_WEIGHTS):  # truncated: renormalise; all five: as printed
        weights = weights / weights.sum()
    window = _gaussian_window(window_size, sigma)
    result = torch.ones(a.shape[0], dtype=torch.float64)
    for j in range(scales):
        full, cs = _ssim_terms(a, b, window, data_range)
        last = j == scales - 1
        result = result * (full if last else cs).clamp(min=0) ** weights[j]
        if not last:
            a, b = F.avg_pool2d(a, 2), F.avg_pool2d(b, 2)
    return float(result.mean())
