from __future__ import annotations

import itertools

import numpy as np
import pytest

from livedenoise.imaging.synthetic import (
    SyntheticPatches,
    add_noise,
    make_eval_set,
    make_frame,
    make_phantom,
)


def test_eval_set_is_reproducible_and_seeded():
    a = make_eval_set(3, 48, (5, 50), seed=7)
    b = make_eval_set(3, 48, (5, 50), seed=7)
    c = make_eval_set(3, 48, (5, 50), seed=8)
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_array_equal(a[1], b[1])
    assert a[2] == b[2]
    assert not np.array_equal(a[1], c[1])


def test_eval_set_shapes_units_and_levels():
    x, t, params = make_eval_set(4, 40, (20, 20), task="denoise", seed=1)
    assert x.shape == t.shape == (4, 40, 40)
    assert x.dtype == t.dtype == np.float32
    assert len(params) == 4
    for p, ti in zip(params, t):
        assert p["peak_e"] == 20
        # the bright end sits at the peak level above the background
        assert np.percentile(ti, 99.9) == pytest.approx(20 + p["background_e"], rel=0.02)
        assert ti.min() >= p["background_e"] - 1e-4
        assert {"psf", "sigma_px", "gain_adu_per_e", "read_var_e2"} <= set(p)


def test_held_out_differs_from_training_stream():
    held, _, _ = make_eval_set(2, 32, (10, 10), seed=0, held_out=True)
    train, _, _ = make_eval_set(2, 32, (10, 10), seed=0, held_out=False)
    assert not np.array_equal(held, train)


def test_noise_is_unbiased_poisson_plus_read_noise():
    rng = np.random.default_rng(3)
    expected = np.full((256, 256), 10.0, np.float32)
    noisy, cam = add_noise(rng, expected)
    assert noisy.dtype == np.float32
    assert noisy.mean() == pytest.approx(10.0, abs=0.1)
    # shot noise variance 10 plus read-noise variance (per-pixel, a few noisy pixels), plus quantisation
    assert 10 + 0.5 * cam["read_var_e2"] < noisy.var() < 10 + 3 * cam["read_var_e2"] + 2
    assert (noisy < 0).any() or cam["read_var_e2"] < 0.6  # read noise gives small negatives, like a camera


def test_deconvolve_target_is_sharper():
    rng = np.random.default_rng(4)
    x, t_deconv, p = make_frame(rng, 64, 50.0, task="deconvolve")
    rng = np.random.default_rng(4)
    _, t_denoise, _ = make_frame(rng, 64, 50.0, task="denoise")
    # same object, narrower PSF: more high-frequency energy
    grad = lambda a: np.abs(np.diff(a, axis=0)).mean() + np.abs(np.diff(a, axis=1)).mean()  # noqa: E731
    assert grad(t_deconv) > grad(t_denoise)


@pytest.mark.parametrize("family", ["dots", "rings", "filaments", "blobs", "cells"])
def test_each_structure_family_draws_something(family):
    img = make_phantom(np.random.default_rng(5), 48, {family: 1.0})
    assert img.shape == (48, 48) and img.dtype == np.float32
    assert img.max() > 0 and np.isfinite(img).all()


def test_patch_stream_yields_training_triples():
    s = SyntheticPatches(patch=24, seed=11, pool=4, peak_e_range=(2, 200))
    got = list(itertools.islice(iter(s), 12))
    again = list(
        itertools.islice(iter(SyntheticPatches(patch=24, seed=11, pool=4, peak_e_range=(2, 200))), 12)
    )
    for (x, t, r), (x2, _, _) in zip(got, again):
        assert x.shape == t.shape == (24, 24)
        assert x.dtype == t.dtype == np.float32
        assert r == 1.0
        assert (t >= 0).all()
        np.testing.assert_array_equal(x, x2)
    assert len({float(t.max()) for _, t, _ in got}) > 6  # photon levels vary patch to patch


def test_bad_arguments():
    with pytest.raises(ValueError, match="task"):
        make_eval_set(1, 16, task="segment")
    with pytest.raises(ValueError, match="peak_e_range"):
        make_eval_set(1, 16, (10, 1))
    with pytest.raises(ValueError, match="structure"):
        make_phantom(np.random.default_rng(0), 16, {"galaxies": 1.0})
    with pytest.raises(ValueError, match="patch"):
        SyntheticPatches(patch=4)
