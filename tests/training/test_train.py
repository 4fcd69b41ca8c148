from __future__ import annotations

import itertools

import numpy as np
import pytest

from livedenoise.training.train import TrainConfig, batches, lr_at, train


def _tiny(**kw):
    base = dict(
        architecture="rln",
        patch=32,
        batch=4,
        steps=30,
        epoch_steps=15,
        lr=5e-3,
        warmup_steps=5,
        val_size=4,
        val_px=32,
        seed=3,
        threads=1,
    )
    base.update(kw)
    return TrainConfig(**base)


def _untrained_val_loss(cfg):
    import torch

    from livedenoise.inference.nets import build_network
    from livedenoise.training.losses import poisson_loss
    from livedenoise.training.train import _default_val

    torch.manual_seed(cfg.seed)
    net = build_network(cfg.architecture).eval()
    vx, vt, _ = _default_val(cfg)
    with torch.no_grad():
        return float(poisson_loss(net(torch.from_numpy(vx[:, None])), torch.from_numpy(vt[:, None])))


def test_tiny_training_lowers_validation_loss():
    cfg = _tiny()
    module, card, history = train(cfg, progress=False)
    assert [h["step"] for h in history] == [15, 30]
    assert not module.training
    assert history[-1]["val_loss"] < 0.7 * _untrained_val_loss(cfg)
    assert card.architecture == "rln" and card.task == "denoise"
    assert card.training["loss"] == "poisson" and card.training["seed"] == 3
    assert card.quality["validation"]["psnr_db"] > card.quality["validation"]["raw_psnr_db"] - 10


def test_checkpoint_and_resume(tmp_path):
    cfg = _tiny(steps=6, epoch_steps=3, checkpoint_dir=str(tmp_path))
    _, _, h1 = train(cfg, progress=False)
    assert (tmp_path / "last.pt").is_file()
    _, _, h2 = train(_tiny(steps=9, epoch_steps=3, checkpoint_dir=str(tmp_path), resume=True), progress=False)
    assert [h["step"] for h in h2] == [3, 6, 9]  # history carried over, 3 more steps
    assert h2[:2] == h1


def test_paired_data_source_with_exposure_ratio(rng):
    # a "paired acquisition": the target is a 4x longer exposure of the same field
    def pairs():
        while True:
            lam = rng.uniform(2, 20, (32, 32)).astype(np.float32)
            yield rng.poisson(lam).astype(np.float32), rng.poisson(4 * lam).astype(np.float32), 4.0

    lam = rng.uniform(2, 20, (4, 32, 32)).astype(np.float32)
    val = (rng.poisson(lam).astype(np.float32), (4 * lam).astype(np.float32), np.full(4, 4.0, np.float32))
    module, card, history = train(_tiny(steps=4, epoch_steps=4), data=pairs(), val_data=val, progress=False)
    assert np.isfinite(history[-1]["val_loss"])


def test_batches_groups_and_checks_shapes():
    src = [(np.zeros((8, 8)), np.ones((8, 8)), 1.0)] * 3
    x, t, r = next(batches(src, 5))  # a finite source is restarted
    assert x.shape == (5, 1, 8, 8) and t.shape == (5, 1, 8, 8) and r.shape == (5,)
    bad = [(np.zeros((8, 8)), np.zeros((8, 8)), 1.0), (np.zeros((9, 9)), np.zeros((9, 9)), 1.0)]
    with pytest.raises(ValueError, match="share a shape"):
        next(batches(bad, 2))
    with pytest.raises(ValueError, match="yields nothing"):
        next(batches([], 2))


def test_config_validation_and_schedule():
    with pytest.raises(ValueError, match="architecture"):
        TrainConfig(architecture="vgg")
    with pytest.raises(ValueError, match="loss"):
        TrainConfig(loss="l1")
    with pytest.raises(ValueError, match="peak_e_range"):
        TrainConfig(peak_e_range=(0, 10))
    cfg = TrainConfig(steps=100, warmup_steps=10, lr=1.0)
    lrs = [lr_at(cfg, s) for s in range(100)]
    assert lrs[0] < lrs[9] == pytest.approx(1.0)
    assert all(a >= b for a, b in itertools.pairwise(lrs[10:]))
    assert lrs[-1] < 0.05


def test_cli_train_writes_a_model(tmp_path):
    from livedenoise.cli import main
    from livedenoise.inference.modelio import load_model

    out = tmp_path / "cli-rln.pt"
    rc = main(
        [
            "train",
            "--arch",
            "rln",
            "--steps",
            "4",
            "--epoch-steps",
            "4",
            "--batch",
            "2",
            "--patch",
            "32",
            "--val-size",
            "2",
            "--no-progress",
            "-o",
            str(out),
        ]
    )
    assert rc == 0
    _, card = load_model(out)
    assert card.id == "cli-rln"
    assert card.training["command"].startswith("livedenoise train --arch rln --task denoise --loss poisson")
    assert "--steps 4" in card.training["command"]


def test_cli_train_records_the_rln_activation(tmp_path):
    import shlex

    from livedenoise.cli import main
    from livedenoise.inference.modelio import load_model

    out = tmp_path / "relu-rln.pt"
    rc = main(
        [
            "train",
            "--arch",
            "rln",
            "--arch-param",
            "activation=relu",
            "--steps",
            "2",
            "--epoch-steps",
            "2",
            "--batch",
            "2",
            "--patch",
            "32",
            "--val-size",
            "2",
            "--no-progress",
            "-o",
            str(out),
        ]
    )
    assert rc == 0
    module, card = load_model(out)
    assert card.arch_params == {"activation": "relu"} and module.activation == "relu"
    # the recorded command parses back to the same argument (shell quoting of the JSON value)
    cmd = shlex.split(card.training["command"])
    assert cmd[cmd.index("--arch-param") + 1] == 'activation="relu"'


@pytest.mark.parametrize(
    ("arch", "task", "loss"), [("rln", "deconvolve", "mse_ssim"), ("resunet", "denoise", "mse")]
)
def test_other_tasks_losses_and_architectures_train(arch, task, loss):
    params = {"channels": [8, 16], "mid_blocks": 1} if arch == "resunet" else {}
    module, card, history = train(
        _tiny(architecture=arch, arch_params=params, task=task, loss=loss, steps=3, epoch_steps=3, batch=2),
        progress=False,
    )
    assert card.task == task and card.training["loss"] == loss and card.arch_params == params
    assert np.isfinite(history[-1]["val_loss"]) and np.isfinite(history[-1]["val_psnr_db"])
