"""Set and pair metrics against independent references (scipy, scikit-image) and known truths."""

import numpy as np
import pytest
import scipy.linalg
import torch

from kuosan.evaluation import metrics as M

skimage_metrics = pytest.importorskip("skimage.metrics")


def scipy_frechet(mu1, s1, mu2, s2):
    """The textbook formula with scipy's general matrix square root."""
    covmean = scipy.linalg.sqrtm(s1 @ s2)
    return float(((mu1 - mu2) ** 2).sum() + np.trace(s1) + np.trace(s2) - 2 * np.trace(covmean.real))


@pytest.mark.parametrize("n1,n2,d", [(400, 300, 32), (20, 30, 64)])  # full rank, then singular covariances
def test_frechet_distance_matches_scipy(n1, n2, d):
    rng = np.random.default_rng(0)
    a = rng.normal(size=(n1, d))
    b = rng.normal(size=(n2, d)) @ rng.normal(size=(d, d)) * 0.3 + 0.5
    stats = (*M.gaussian_stats(a), *M.gaussian_stats(b))
    assert M.frechet_distance(*stats) == pytest.approx(scipy_frechet(*stats), rel=1e-6)


def test_frechet_distance_of_known_gaussians():
    # Commuting covariances: d² = |Δμ|² + Σ (√a - √b)².
    mu1, mu2 = np.zeros(3), np.array([1.0, 2.0, 0.0])
    s1, s2 = np.diag([1.0, 4.0, 9.0]), np.diag([4.0, 4.0, 1.0])
    expected = 5.0 + (1 - 2) ** 2 + 0 + (3 - 1) ** 2
    assert M.frechet_distance(mu1, s1, mu2, s2) == pytest.approx(expected)
    assert M.frechet_distance(mu1, s1, mu1, s1) == pytest.approx(0.0, abs=1e-9)


def _noisy_pair(image, seed=0, noise=0.1):
    rng = np.random.default_rng(seed)
    return image, np.clip(image + rng.normal(scale=noise, size=image.shape), 0, 1)


def test_ssim_and_psnr_match_scikit_image():
    from skimage import data

    gray, gray_noisy = _noisy_pair(data.camera()[::8, ::8] / 255.0)
    rgb, rgb_noisy = _noisy_pair(data.astronaut()[::8, ::8] / 255.0, seed=1)
    opts = dict(gaussian_weights=True, sigma=1.5, use_sample_covariance=False, data_range=1.0)
    assert M.ssim(gray[None, None], gray_noisy[None, None]) == pytest.approx(
        skimage_metrics.structural_similarity(gray, gray_noisy, **opts), abs=1e-9)
    chw = lambda x: x.transpose(2, 0, 1)[None]  # noqa: E731
    assert M.ssim(chw(rgb), chw(rgb_noisy)) == pytest.approx(
        skimage_metrics.structural_similarity(rgb, rgb_noisy, channel_axis=2, **opts), abs=1e-9)
    assert M.psnr(gray[None, None], gray_noisy[None, None]) == pytest.approx(
        skimage_metrics.peak_signal_noise_ratio(gray, gray_noisy, data_range=1.0), rel=1e-9)


def test_batch_metrics_average_per_image():
    from skimage import data

    a, b = _noisy_pair(data.camera()[::8, ::8] / 255.0)
    c, d = _noisy_pair(data.camera()[::8, ::8] / 255.0, seed=2, noise=0.3)
    batch = torch.tensor(np.stack([a, c]))[:, None], torch.tensor(np.stack([b, d]))[:, None]
    for metric in (M.ssim, M.psnr):
        one_by_one = (metric(a[None, None], b[None, None]) + metric(c[None, None], d[None, None])) / 2
        assert metric(*batch) == pytest.approx(one_by_one)


def test_ms_ssim_small_images_and_torchmetrics_agreement():
    from skimage import data
    from torchmetrics.functional.image import multiscale_structural_similarity_index_measure as tm_ms_ssim

    x = torch.rand(4, 1, 28, 28, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    assert M.ms_ssim(x, x) == pytest.approx(1.0)
    slight, heavy = (x + 0.05 * torch.randn_like(x)).clamp(0, 1), (x + 0.3 * torch.randn_like(x)).clamp(0, 1)
    assert 1.0 > M.ms_ssim(x, slight) > M.ms_ssim(x, heavy) > 0
    assert M.ms_ssim(x[..., :8, :8], slight[..., :8, :8]) > 0  # 8×8 digits: one scale, 7-tap window
    # Large images use the standard 5 scales and 11-tap window: agree with torchmetrics up to border handling.
    a, b = _noisy_pair(data.camera()[:256, :256] / 255.0)
    a, b = torch.tensor(a)[None, None], torch.tensor(b)[None, None]
    assert M.ms_ssim(a, b) == pytest.approx(float(tm_ms_ssim(a, b, data_range=1.0)), abs=3e-3)


def test_kid_near_zero_for_same_distribution_and_safe_when_tiny():
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(600, 16)), rng.normal(size=(600, 16))
    mean, std = M.kid(a, b, subset_size=200, subsets=20)
    assert abs(mean) < 3 * std + 1e-3
    shifted, _ = M.kid(a, b + 0.5, subset_size=200, subsets=20)
    assert shifted > 0.5
    assert np.isnan(M.kid(a[:1], b[:5])[0])          # one vector: no unbiased estimate
    assert np.isfinite(M.kid(a[:3], b[:2], subset_size=1000)[0])  # smaller than the subset size


def test_precision_recall_on_gaussians_with_known_overlap():
    rng = np.random.default_rng(0)
    real, fake = rng.normal(size=(1000, 4)), rng.normal(size=(1000, 4))
    p, r = M.precision_recall(real, fake, k=3)
    assert p > 0.9 and r > 0.9
    assert M.precision_recall(real, fake + 20, k=3) == (0.0, 0.0)
    half = np.concatenate([fake[:500], fake[500:] + 20])  # half the fakes far from any real sample
    p, r = M.precision_recall(real, half, k=3)
    assert p == pytest.approx(0.5, abs=0.05) and r > 0.8
    assert all(np.isnan(M.precision_recall(real[:1], fake)))


def test_density_coverage_truths():
    rng = np.random.default_rng(1)
    real, fake = rng.normal(size=(1000, 4)), rng.normal(size=(1000, 4))
    density, coverage = M.density_coverage(real, fake, k=5)
    assert 0.8 < density < 1.2 and coverage > 0.9
    assert M.density_coverage(real, fake + 20, k=5) == (0.0, 0.0)
    # Every fake on one real point: coverage is tiny however many fakes there are.
    _, coverage = M.density_coverage(real, np.repeat(real[:1], 100, axis=0), k=5)
    assert coverage <= 0.01
