"""Metrics on known values, and SSIM against scikit-image's reference implementation."""

from __future__ import annotations

import numpy as np
import pytest

from livedenoise.imaging.metrics import kolmogorov_distance, mse, nrmse, psnr, ssim


@pytest.fixture
def ref(rng: np.random.Generator) -> np.ndarray:
    from scipy.ndimage import gaussian_filter

    return (gaussian_filter(rng.random((64, 80)), 2) * 400 + 10).astype(np.float32)


def test_identical_images(ref: np.ndarray) -> None:
    assert psnr(ref, ref) == float("inf")
    assert ssim(ref, ref) == pytest.approx(1.0, abs=1e-12)
    assert nrmse(ref, ref) == 0.0
    assert kolmogorov_distance(ref, ref) == 0.0


def test_known_mse_gives_known_psnr() -> None:
    ref = np.zeros((10, 10))
    ref[0, 0] = 100.0  # data range 100
    x = ref + 2.0  # MSE 4
    assert mse(x, ref) == pytest.approx(4.0)
    assert psnr(x, ref) == pytest.approx(10 * np.log10(100**2 / 4))  # 33.98 dB
    # the range comes from the reference only: outliers in x do not change the scale
    y = ref.copy()
    y[5, 5] = 1e4
    assert psnr(y, ref) == pytest.approx(10 * np.log10(100**2 / (1e8 / 100)))


def test_nrmse_known_value() -> None:
    ref = np.full((4, 4), 10.0)
    assert nrmse(ref * 1.1, ref) == pytest.approx(0.1)


def test_ssim_matches_scikit_image(ref: np.ndarray, rng: np.random.Generator) -> None:
    from skimage.metrics import structural_similarity

    x = ref + rng.normal(0, 20, ref.shape)
    r = float(ref.max() - ref.min())
    expected = structural_similarity(
        x, ref.astype(np.float64), data_range=r, gaussian_weights=True, sigma=1.5, use_sample_covariance=False
    )
    assert ssim(x, ref) == pytest.approx(expected, abs=1e-9)
    assert 0 < ssim(x, ref) < 1


def test_kolmogorov_distance_known_values() -> None:
    a = np.arange(100.0).reshape(10, 10)
    assert kolmogorov_distance(a + 1000, a) == 1.0  # disjoint histograms
    assert kolmogorov_distance(a + 10, a) == pytest.approx(0.10)  # shifted by 10 of 100 values
    assert kolmogorov_distance(a[:, ::-1], a) == 0.0  # position does not matter


def test_noise_lowers_scores(ref: np.ndarray, rng: np.random.Generator) -> None:
    small = ref + rng.normal(0, 2, ref.shape)
    big = ref + rng.normal(0, 20, ref.shape)
    assert psnr(small, ref) > psnr(big, ref)
    assert ssim(small, ref) > ssim(big, ref)
    assert nrmse(small, ref) < nrmse(big, ref)


@pytest.mark.parametrize(
    ("x", "ref", "match"),
    [
        (np.zeros((4, 4)), np.zeros((4, 5)), "shape"),
        (np.zeros((4, 4)), np.ones((4, 4)), "constant"),
        (np.full((4, 4), np.nan), np.eye(4), "NaN"),
    ],
)
def test_bad_input(x: np.ndarray, ref: np.ndarray, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        psnr(x, ref)
