"""Classical baselines: the GAT and its exact unbiased inverse, and that each baseline denoises."""

from __future__ import annotations

import numpy as np
import pytest

from livedenoise.imaging.metrics import psnr
from livedenoise.imaging.psf import convolve_fft, gaussian_psf
from livedenoise.imaging.synthetic import make_eval_set
from livedenoise.training import baselines


@pytest.mark.parametrize("read_var", [0.0, 2.0])
@pytest.mark.parametrize("y", [0.2, 1.0, 4.0, 20.0, 150.0, 800.0])
def test_gat_exact_inverse_round_trip_on_expectations(
    rng: np.random.Generator, read_var: float, y: float
) -> None:
    """inverse(E[f(z) | y]) == y: the defining property of the exact unbiased inverse."""
    z = rng.poisson(y, 400_000) + rng.normal(0, np.sqrt(read_var), 400_000)
    d = np.array([baselines.gat_forward(z, read_var).astype(np.float64).mean()])
    assert float(baselines.gat_inverse(d, read_var)[0]) == pytest.approx(y, rel=0.01, abs=0.01)


def test_gat_stabilises_variance(rng: np.random.Generator) -> None:
    for y in (5.0, 50.0, 500.0):
        z = rng.poisson(y, 100_000) + rng.normal(0, 1.5, 100_000)
        assert np.var(baselines.gat_forward(z, 1.5**2)) == pytest.approx(1.0, abs=0.08)


def test_closed_form_inverse_agrees_at_high_counts() -> None:
    d = baselines.gat_forward(np.array([50.0, 250.0, 2000.0]), 1.0)
    np.testing.assert_allclose(
        baselines.gat_inverse(d, 1.0), baselines.gat_inverse_closed_form(d, 1.0), rtol=2e-3
    )


@pytest.fixture(scope="module")
def frames() -> tuple[np.ndarray, np.ndarray, list]:
    return make_eval_set(2, 96, (8.0, 40.0), "denoise", seed=5)


@pytest.mark.parametrize("name", ["nlm", "gat-nlm", "tv", "gat-tv", "gat-bm3d"])
def test_each_baseline_improves_psnr(frames, name: str) -> None:
    ok, why = baselines.available_baselines("denoise")[name]
    if not ok:
        pytest.skip(why)
    xs, ts, ps = frames
    k = 1 if name == "gat-bm3d" else len(xs)  # BM3D is slow: one frame
    for x, t, p in zip(xs[:k], ts[:k], ps[:k]):
        est = baselines.run_baseline(name, x, read_var_e2=p["read_var_e2"])
        assert est.shape == x.shape and est.dtype == np.float32 and est.min() >= 0
        assert psnr(est, t) > psnr(x, t) + 3.0, name


def test_richardson_lucy_sharpens_a_blurred_frame(rng: np.random.Generator) -> None:
    obj = np.zeros((64, 64), np.float32)
    obj[4::8, 4::8] = 40000.0  # bright beads: RL must sharpen them towards the narrow-PSF target
    obj += 5
    psf = gaussian_psf(2.0)
    narrow = gaussian_psf(1.0)
    target = convolve_fft(obj, narrow)
    blurred = convolve_fft(obj, psf)
    noisy = rng.poisson(blurred).astype(np.float32)
    for name, n in (("rl", 10), ("gat-nlm-rl", 10)):
        est = baselines.run_baseline(name, noisy, read_var_e2=0.0, psf=psf, target_psf=narrow, iterations=n)
        assert psnr(est, target) > psnr(noisy, target) + 1.0, name


def test_unknown_and_bad_input() -> None:
    with pytest.raises(ValueError, match="unknown baseline"):
        baselines.run_baseline("median", np.zeros((8, 8), np.float32))
    with pytest.raises(ValueError, match="NaN"):
        baselines.tv(np.full((8, 8), np.nan, np.float32))
    with pytest.raises(ValueError, match="PSF"):
        baselines.richardson_lucy(np.ones((8, 8), np.float32))


def test_tune_picks_the_best_grid_value(frames) -> None:
    xs, ts, ps = frames
    res = baselines.tune([(xs[0], ts[0], ps[0]["read_var_e2"], None)], ["tv"])
    scores = res["tv"]["scores"]
    assert res["tv"]["best"] == max(scores, key=scores.get) and len(scores) == len(
        baselines.TUNING_GRID["tv"][1]
    )
