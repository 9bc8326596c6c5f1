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


# --- ties on the k-NN ball boundaries -------------------------------------------------------------

def _general_position(n, d=3, seed=0):
    """``n`` points with integer coordinates (every distance computed exactly, by any cdist path) and
    no two distances from a point equal, so that the only ties are the ones a test builds in."""
    x = np.random.default_rng(seed).integers(-10_000, 10_000, size=(n, d)).astype(np.float64)
    sq = ((x[:, None] - x[None]) ** 2).sum(-1)
    assert all(len(np.unique(row)) == n for row in sq)
    return x


def test_density_and_coverage_use_open_balls():
    """Naeem et al. 2020, eq. 3-4, as in their ``prdc`` code: a sample on the boundary of a k-NN ball is
    outside. Closed forms: a tie-free set against itself has density exactly 1 (each ball holds its centre
    and k − 1 neighbours; closed balls would give (k + 1)/k = 1.2 at k = 5); with every point duplicated,
    the k-th neighbour of a point is the (k // 2)-th other point's twin, so density is (k − 1)/k for odd
    k and 1 for even k, and at k = 1 the radius is 0: no ball holds anything."""
    x = _general_position(30)
    for k in (1, 3, 5):
        assert M.density_coverage(x, x, k=k) == (1.0, 1.0)
    twice = np.repeat(x, 2, axis=0)
    assert M.density_coverage(twice, twice, k=5) == (pytest.approx(4 / 5, abs=1e-15), 1.0)
    assert M.density_coverage(twice, twice, k=3) == (pytest.approx(2 / 3, abs=1e-15), 1.0)
    assert M.density_coverage(twice, twice, k=4) == (1.0, 1.0)
    assert M.density_coverage(twice, twice, k=1) == (0.0, 0.0)
    # One fake exactly on the boundary of one real ball (1-D, k = 1: radii 1, 1, 4) and in no other.
    real, fake = np.array([[0.0], [1.0], [5.0]]), np.array([[-1.0], [-1.0]])
    assert M.density_coverage(real, fake, k=1) == (0.0, 0.0)


def test_precision_and_recall_use_closed_balls():
    """Kynkäänniemi et al. 2019, eq. 1 (‖φ − φ'‖ ≤ NND_k(φ')), as in their code: a sample on the
    boundary of a k-NN ball is inside, so a duplicated set against itself keeps precision and recall 1
    even at k = 1, where every radius is 0."""
    x = _general_position(30)
    assert M.precision_recall(x, x, k=3) == (1.0, 1.0)
    twice = np.repeat(x, 2, axis=0)
    assert M.precision_recall(twice, twice, k=1) == (1.0, 1.0)
    real, fake = np.array([[0.0], [1.0], [5.0]]), np.array([[-1.0], [-1.0]])
    assert M.precision_recall(real, fake, k=1)[0] == 1.0  # on the boundary of B(0, 1) only


def test_knn_metrics_match_prdc():
    """Against Naeem et al.'s reference package: density and coverage agree exactly, ties included;
    precision and recall agree wherever no sample sits on a ball boundary (``prdc`` uses open balls
    there too, Kynkäänniemi et al. closed ones, which kuosan follows)."""
    prdc = pytest.importorskip("prdc")
    rng = np.random.default_rng(3)
    real, fake = _general_position(60, d=4, seed=1), _general_position(50, d=4, seed=2)
    fake[:25] = real[rng.choice(60, 25, replace=False)]               # half the fakes copy real samples
    tied = np.concatenate([real[:20], real[:20], real[20:]])           # and a real set with duplicates
    for r, f in ((real, fake), (tied, fake), (tied, tied), (tied, real)):
        for k in (1, 3, 5):
            ref = prdc.compute_prdc(r, f, nearest_k=k)
            assert M.density_coverage(r, f, k=k) == pytest.approx((ref["density"], ref["coverage"]), abs=1e-12)
    a, b = rng.normal(size=(300, 8)), rng.normal(size=(250, 8)) + 0.3  # no ties: all four agree
    ref = prdc.compute_prdc(a, b, nearest_k=5)
    assert M.precision_recall(a, b, k=5) == pytest.approx((ref["precision"], ref["recall"]), abs=1e-12)
    assert M.density_coverage(a, b, k=5) == pytest.approx((ref["density"], ref["coverage"]), abs=1e-12)


# --- MS-SSIM weights ------------------------------------------------------------------------------

def test_ms_ssim_weights_as_printed(monkeypatch):
    """Wang, Simoncelli & Bovik 2003, eq. 7 with the weights of §3.2 as printed (sum 1.0001) for five
    scales, by hand from fixed per-scale terms: l·cs at the coarsest scale, cs at the others. Fewer scales
    renormalise the first M weights."""
    cs = [0.9, 0.8, 0.7, 0.6, 0.5]
    full = [0.85, 0.75, 0.65, 0.55, 0.45]
    calls = []

    def fixed_terms(a, b, window, data_range):
        j = len(calls)
        calls.append(j)
        return torch.full((a.shape[0],), full[j], dtype=torch.float64), torch.full((a.shape[0],), cs[j],
                                                                                      dtype=torch.float64)

    monkeypatch.setattr(M, "_ssim_terms", fixed_terms)
    x = torch.zeros(2, 1, 176, 176, dtype=torch.float64)
    w = (0.0448, 0.2856, 0.3001, 0.2363, 0.1333)
    expected = cs[0] ** w[0] * cs[1] ** w[1] * cs[2] ** w[2] * cs[3] ** w[3] * full[4] ** w[4]
    assert M.ms_ssim(x, x) == pytest.approx(expected, rel=1e-14)  # 176 pixels: 5 scales
    assert len(calls) == 5
    calls.clear()
    w3 = [v / sum(w[:3]) for v in w[:3]]
    expected3 = cs[0] ** w3[0] * cs[1] ** w3[1] * full[2] ** w3[2]
    assert M.ms_ssim(x, x, scales=3) == pytest.approx(expected3, rel=1e-14)


def test_ms_ssim_matches_pytorch_msssim():
    """Five scales, 11-tap window, valid convolutions, weights as printed: pytorch-msssim computes the
    same thing for a single-channel image with even sides (it pads odd ones before pooling), to round-off,
    given the same float64 window (its own is built in float32, which moves cs by ~1e-5); renormalised
    weights would be ~2e-5 off."""
    pytorch_msssim = pytest.importorskip("pytorch_msssim")
    from skimage import data

    a, b = _noisy_pair(data.camera()[:256, :256] / 255.0)
    a, b = torch.tensor(a)[None, None], torch.tensor(b)[None, None]
    g = np.exp(-np.arange(-5.0, 6.0) ** 2 / (2 * 1.5 ** 2))
    window = torch.tensor(g / g.sum()).view(1, 1, 1, 11)
    ref = float(pytorch_msssim.ms_ssim(a, b, data_range=1.0, win=window))
    assert M.ms_ssim(a, b) == pytest.approx(ref, abs=1e-12)
    assert abs(ref ** (1 / 1.0001) - ref) > 1e-5
