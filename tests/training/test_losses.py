from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from livedenoise.imaging.metrics import psnr
from livedenoise.training.losses import (
    LOSSES,
    background_bias,
    mse_loss,
    mse_ssim_loss,
    poisson_kl,
    poisson_loss,
    psnr_loss,
    ssim,
    with_background_bias,
    with_dark_bias,
)


@pytest.mark.parametrize(
    ("a", "b", "expected"),
    [
        (2.0, 1.0, 2 * math.log(2) - 2 + 1),
        (1.0, 2.0, math.log(0.5) - 1 + 2),
        (5.0, 5.0, 0.0),
        (0.0, 3.0, 3.0),  # 0 log 0 = 0
        (10.0, 12.5, 10 * math.log(10 / 12.5) - 10 + 12.5),
    ],
)
def test_poisson_kl_closed_form(a, b, expected):
    got = poisson_kl(torch.tensor([a], dtype=torch.float64), torch.tensor([b], dtype=torch.float64), eps=0.0)
    assert float(got) == pytest.approx(expected, abs=1e-12)


def test_poisson_kl_matches_the_sum_over_counts():
    # KL(Pois(a) || Pois(b)) computed from the distributions themselves
    a, b = 3.0, 4.5
    k = torch.arange(0, 80, dtype=torch.float64)
    log_pa = k * math.log(a) - a - torch.lgamma(k + 1)
    log_pb = k * math.log(b) - b - torch.lgamma(k + 1)
    direct = float((log_pa.exp() * (log_pa - log_pb)).sum())
    assert float(
        poisson_kl(torch.tensor(a, dtype=torch.float64), torch.tensor(b, dtype=torch.float64), 0.0)
    ) == (pytest.approx(direct, rel=1e-9))


def test_poisson_loss_is_the_nll_plus_a_constant(rng):
    t = torch.from_numpy(rng.poisson(7.0, (2, 1, 8, 8)).astype("float64"))
    offsets = []
    for scale in (0.5, 1.0, 2.0):
        pred = torch.full_like(t, 7.0 * scale)
        nll = F.poisson_nll_loss(pred, t, log_input=False, full=False, eps=1e-6)
        offsets.append(float(poisson_loss(pred, t) - nll))
    assert offsets[0] == pytest.approx(offsets[1], abs=1e-9)
    assert offsets[1] == pytest.approx(offsets[2], abs=1e-9)


def test_poisson_loss_with_exposure_ratio():
    pred = torch.full((1, 1, 4, 4), 3.0, dtype=torch.float64)
    target = torch.full((1, 1, 4, 4), 12.0, dtype=torch.float64)  # 4x longer exposure of the same rate
    assert float(poisson_loss(pred, target, ratio=4.0)) == pytest.approx(0.0, abs=1e-5)
    per_sample = torch.tensor([4.0], dtype=torch.float64)
    assert float(poisson_loss(pred, target, ratio=per_sample)) == pytest.approx(0.0, abs=1e-5)
    with pytest.raises(ValueError, match="ratio"):
        poisson_loss(pred, target, ratio=0.0)


def test_minimum_at_the_expectation_and_gradient_there():
    t = torch.tensor([[[[0.0, 0.5, 3.0, 250.0]]]], dtype=torch.float64)
    pred = t.clone().requires_grad_(True)
    loss = poisson_loss(pred, t)
    loss.backward()
    assert loss.item() == pytest.approx(0.0, abs=1e-6)
    # zero-count pixels pull the prediction down (gradient 1/n), the others are at their optimum
    assert pred.grad[0, 0, 0, 1:].abs().max() < 1e-5


def test_zero_targets_and_negative_inputs_are_finite():
    pred = torch.tensor([[[[-0.2, 0.0, 1.0]]]], requires_grad=True)
    target = torch.tensor([[[[0.0, -0.1, 0.0]]]])
    loss = poisson_loss(pred, target)
    loss.backward()
    assert torch.isfinite(loss.detach()) and torch.isfinite(pred.grad).all()


def test_ssim_and_mse_ssim(rng):
    x = torch.from_numpy(rng.random((1, 1, 32, 32)).astype("float32"))
    assert float(ssim(x, x)) == pytest.approx(1.0, abs=1e-5)
    assert float(ssim(x, torch.roll(x, 3, dims=-1))) < 0.5
    assert float(mse_ssim_loss(x * 50, x * 50)) == pytest.approx(0.0, abs=1e-4)
    assert float(mse_ssim_loss(x * 50 + 5, x * 50)) > 0.01
    assert float(mse_loss(x * 50, x * 50)) == 0.0
    assert set(LOSSES) == {"poisson", "mse", "psnr", "mse_ssim"}


def test_psnr_loss_is_minus_the_mean_psnr_of_the_samples(rng):
    """Each sample's PSNR against its own target's range, as the evaluation computes it, averaged in dB."""
    t = torch.from_numpy(
        (rng.random((3, 1, 16, 16)) * np.array([2.0, 50.0, 500.0])[:, None, None, None]).astype("float64")
    )
    p = t + torch.from_numpy(rng.normal(0, 1, t.shape))
    expected = -np.mean([psnr(p[i, 0].numpy(), t[i, 0].numpy()) for i in range(3)])
    assert float(psnr_loss(p, t)) == pytest.approx(expected, abs=1e-6)
    # the exposure ratio scales the prediction, as in the other losses
    assert float(psnr_loss(p / 4.0, t, ratio=4.0)) == pytest.approx(expected, abs=1e-6)
    # a target whose range is under 1 e- (a dim patch): its own range, as metrics.psnr takes it
    dim = t[:1] / 10
    noisy = dim + 0.01
    assert float(psnr_loss(noisy, dim)) == pytest.approx(
        -psnr(noisy[0, 0].numpy(), dim[0, 0].numpy()), abs=1e-6
    )


def test_psnr_loss_weighs_samples_alike_in_decibels():
    """Halving one sample's error gains the same whatever its photon level; mse_loss only sees the dim one."""
    t = torch.stack([torch.full((1, 8, 8), 2.0), torch.full((1, 8, 8), 500.0)])
    t[:, :, 0, 0] = 0.0  # a range for each sample
    err = torch.stack([torch.full((1, 8, 8), 0.5), torch.full((1, 8, 8), 2.0)])

    def gain(loss, k):
        halved = err.clone()
        halved[k] /= 2
        return float(loss(t + err, t) - loss(t + halved, t))

    assert gain(psnr_loss, 0) == pytest.approx(gain(psnr_loss, 1), rel=1e-6)
    assert gain(psnr_loss, 0) == pytest.approx(20 * math.log10(2) / 2, rel=1e-6)
    assert gain(mse_loss, 0) > 1000 * gain(mse_loss, 1)


def test_psnr_loss_is_finite_on_a_perfect_sample():
    t = torch.rand(2, 1, 8, 8, dtype=torch.float64) * 10
    p = t.clone().requires_grad_(True)
    loss = psnr_loss(p, t)
    loss.backward()
    assert math.isfinite(float(loss.detach())) and torch.isfinite(p.grad).all()


def test_background_bias_is_the_mean_error_over_each_samples_dark_pixels():
    """The region: target within 2 % of its range above its minimum; errors on the structure do not count."""
    t = torch.zeros(2, 1, 8, 8, dtype=torch.float64)
    t[:, :, 2:5, 2:5] = 100.0  # structure on a flat background
    t[1] += 30.0  # the second sample on 30 e- of background
    t[1, 0, 0, 0] = 30.0 + 1.5  # 1.5 % of the range above the minimum: still background
    p = t.clone()
    p[:, :, 2:5, 2:5] += 5.0  # structure too bright: not counted
    p[0, 0, 6, :] += 0.8  # 8 of the 55 background pixels of sample 0 lifted by 0.8 e-
    p[1] -= 0.2  # sample 1 everywhere 0.2 e- too dark
    b = background_bias(p, t)
    assert b.shape == (2,)
    assert float(b[0]) == pytest.approx(8 * 0.8 / 55, abs=1e-6) and float(b[1]) == pytest.approx(
        -0.2, abs=1e-6
    )
    # in the input exposure's units: a target exposure 4x as long
    assert torch.allclose(background_bias(p / 4.0, t, ratio=4.0), b)


def test_with_background_bias_adds_the_weighted_squared_bias(rng):
    t = torch.from_numpy(rng.random((3, 1, 16, 16)) * 50)
    p = t + torch.from_numpy(rng.normal(0.1, 1.0, t.shape))
    loss = with_background_bias(psnr_loss, 30.0)
    expected = float(psnr_loss(p, t)) + 30.0 * float((background_bias(p, t) ** 2).mean())
    assert float(loss(p, t)) == pytest.approx(expected, rel=1e-6)  # the bias in float32
    # extra arguments (RLN's estimate) reach the wrapped loss
    seen = {}
    with_background_bias(lambda p, t, r, **kw: seen.update(kw) or p.sum() * 0, 1.0)(p, t, estimate=p)
    assert "estimate" in seen
    # a background lifted by 0.2 e-: the term pulls it down harder than the PSNR loss alone
    dark = t <= t.flatten(1).min(1).values.view(-1, 1, 1, 1) + 0.02 * 50
    grads = []
    for fn in (psnr_loss, loss):
        q = (t + 0.2 * dark).requires_grad_(True)
        fn(q, t).backward()
        grads.append(float(q.grad[dark].sum()))
    assert grads[1] > grads[0] > 0
    for bad in (0.0, -1.0, float("nan")):
        with pytest.raises(ValueError, match="weight must be > 0"):
            with_background_bias(psnr_loss, bad)


def test_background_bias_term_can_leave_out_dim_samples():
    """min_range_e: samples whose target spans fewer photoelectrons do not count (their darkest pixels are
    chosen by their extremes, where any smoothing estimate reads above them)."""
    t = torch.zeros(2, 1, 8, 8, dtype=torch.float64)
    t[0, :, 2:5, 2:5] = 5.0
    t[1, :, 2:5, 2:5] = 100.0
    p = t + 0.5
    zero = lambda p, t, r, **kw: p.sum() * 0  # noqa: E731
    assert float(with_background_bias(zero, 2.0, min_range_e=0.0)(p, t)) == pytest.approx(2.0 * 0.25)
    # by default (BG_MIN_RANGE_E, 20 e-) the 5 e- sample counts 0 in the batch's mean
    assert float(with_background_bias(zero, 2.0)(p, t)) == pytest.approx(2.0 * 0.25 / 2)


def test_dark_bias_term_is_the_squared_batch_mean_over_dark_background_samples():
    """Dark: the background region's target mean under 1 e- and a range of 20 e- or more; the batch mean of
    their background errors is squared (each sample's noise cancels), the others do not count."""
    t = torch.zeros(4, 1, 8, 8, dtype=torch.float64)
    t[:, :, 2:5, 2:5] = 100.0
    t[2] += 10.0  # 10 e- of background: not dark
    t[3, :, 2:5, 2:5] = 5.0  # dark but spanning 5 e-: left out
    p = t.clone()
    p[0] += 0.3  # background errors +0.3 and -0.1 (and the structure's, not counted)
    p[1] -= 0.1
    p[2] += 2.0
    p[3] += 2.0
    zero = lambda p, t, r, **kw: p.sum() * 0  # noqa: E731
    assert float(with_dark_bias(zero, 1000.0)(p, t)) == pytest.approx(1000.0 * 0.1**2)
    # opposite errors cancel: the per-sample noise the term is made to ignore
    q = t.clone()
    q[0] += 0.2
    q[1] -= 0.2
    assert float(with_dark_bias(zero, 1000.0)(q, t)) == pytest.approx(0.0, abs=1e-9)
    # no dark sample in the batch: nothing added; the wrapped loss and its extra arguments pass through
    seen = {}
    base = lambda p, t, r, **kw: seen.update(kw) or p.sum() * 0 + 7.0  # noqa: E731
    assert float(with_dark_bias(base, 1000.0)(p[2:3], t[2:3], estimate=p)) == pytest.approx(7.0)
    assert "estimate" in seen
    # in the input exposure's units, as the other terms
    assert float(with_dark_bias(zero, 1000.0)(p / 4.0, t, ratio=4.0)) == pytest.approx(10.0)
    # its gradient pulls a lifted dark background down
    r = (t[:2] + 0.3).requires_grad_(True)
    with_dark_bias(zero, 1000.0)(r, t[:2]).backward()
    dark = t[:2] <= 2.0
    assert float(r.grad[dark].min()) > 0 and float(r.grad[~dark].abs().max()) == 0.0
    for bad in (0.0, -1.0, float("nan")):
        with pytest.raises(ValueError, match="weight must be > 0"):
            with_dark_bias(zero, bad)
