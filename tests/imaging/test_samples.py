"""Sample-like synthetic data: structure families, backgrounds 0-30 e-, wide PSF range."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from livedenoise.imaging import samples
from livedenoise.imaging.synthetic import SAMPLE_MIX, SyntheticPatches, make_frame, make_phantom


@pytest.mark.parametrize("family", samples.SAMPLE_FAMILIES)
def test_each_family_is_finite_nonnegative_and_seeded(family):
    a = make_phantom(np.random.default_rng(3), 64, {family: 1.0})
    b = make_phantom(np.random.default_rng(3), 64, {family: 1.0})
    c = make_phantom(np.random.default_rng(4), 64, {family: 1.0})
    assert a.shape == (64, 64) and a.dtype == np.float32
    assert np.isfinite(a).all() and a.min() >= 0 and a.max() > 0
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)


def test_default_frames_are_the_legacy_frames():
    a = make_frame(np.random.default_rng(5), 48, 20.0)
    b = make_frame(np.random.default_rng(5), 48, 20.0, background="legacy", psf_range="legacy")
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_array_equal(a[1], b[1])


def test_sample_frames_cover_backgrounds_up_to_30_e_and_wide_psfs():
    levels, sigmas = [], []
    for i in range(40):
        rng = np.random.default_rng(100 + i)
        x, t, p = make_frame(rng, 48, 10.0, mix=SAMPLE_MIX, background="sample", psf_range="wide")
        assert np.isfinite(x).all() and t.min() >= 0
        levels.append(p["background_e"])
        sigmas.append(p["sigma_px"])
    assert min(levels) < 0.3 and max(levels) > 10 and max(levels) <= samples.BACKGROUND_MAX_E
    assert min(sigmas) < 1.0 and max(sigmas) > 1.8


def test_background_has_drift_and_haze():
    obj = np.zeros((64, 64), np.float32)
    obj[20:40, 20:40] = 1.0
    found_haze = False
    for i in range(20):
        bg, p = samples.sample_background(np.random.default_rng(i), obj, 100.0)
        assert bg.shape == obj.shape and bg.min() >= 0
        found_haze |= p["haze_frac"] > 0 and float(bg[30, 30]) > float(bg[2, 2])
    assert found_haze


def test_unknown_variants_are_refused():
    with pytest.raises(ValueError, match="background"):
        make_frame(np.random.default_rng(0), 32, 5.0, background="flat")
    with pytest.raises(ValueError, match="psf_range"):
        SyntheticPatches(patch=16, psf_range="narrow")


def test_sample_patch_stream_is_seeded():
    def take(seed):
        s = SyntheticPatches(
            patch=16, seed=seed, pool=2, mix=dict(SAMPLE_MIX), background="sample", psf_range="wide"
        )
        return np.stack([n for n, _, _ in itertools.islice(iter(s), 4)])

    np.testing.assert_array_equal(take(1), take(1))
    assert not np.array_equal(take(1), take(2))
