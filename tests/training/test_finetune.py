"""Fine-tuning on pairs: patches, split by pair, a tiny run that lowers the held-out deviance."""

from __future__ import annotations

import json

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from livedenoise.acquisition.collect import collect_pairs
from livedenoise.acquisition.pairs import PairDataset, PairsError
from livedenoise.training.finetune import FinetuneConfig, PairPatches, finetune, load_pairs, split_pairs


@pytest.fixture(autouse=True)
def one_thread():
    """One torch thread: on a shared 2-core machine, two threads contend and run ~5x slower."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    from livedenoise.drivers.simcam import load_sim_core

    core, camera = load_sim_core(sensor_shape=(96, 96), seed=11)
    core.setProperty("Camera", "Motion", 0.0)
    out = tmp_path_factory.mktemp("pairs") / "ds"
    collect_pairs(core, out, short_ms=5.0, long_ms=50.0, pairs=6, calibration=camera.true_calibration())
    return PairDataset(out)


@pytest.fixture(scope="module")
def init_model(tmp_path_factory):
    from livedenoise.inference.modelio import ModelCard, save_model
    from livedenoise.inference.nets import build_network

    torch.manual_seed(0)
    module = build_network("rln")
    path = tmp_path_factory.mktemp("models") / "rln-untrained"
    card = ModelCard(id="rln-untrained", architecture="rln", training={"data": "none (test)"})
    save_model(module, card, path)
    return path.with_suffix(".pt")


def test_split_is_by_pair_and_patches_are_aligned(dataset, rng):
    train, val = split_pairs(dataset.pairs, 0.34, rng)
    assert len(val) == 2 and len(train) == 4
    assert not {p["id"] for p in train} & {p["id"] for p in val}
    loaded = load_pairs(dataset, train)
    patches = PairPatches(loaded, 32, rng)
    x, y, r = next(patches)
    assert x.shape == y.shape == (32, 32) and x.dtype == np.float32 and r == 10.0
    # same crop of both frames: the long patch is ~ r x the short one where the signal is
    xs, ys, rs = patches.batch(16)
    assert tuple(xs.shape) == (16, 1, 32, 32) and tuple(rs.shape) == (16,)
    assert float(ys.mean() / xs.mean()) == pytest.approx(10.0, rel=0.1)
    corr = np.corrcoef(xs.numpy().ravel(), ys.numpy().ravel())[0, 1]
    assert corr > 0.3  # aligned crops correlate (misaligned ones of this scene do not as much)
    with pytest.raises(PairsError, match="at least 2 usable pairs"):
        split_pairs(dataset.pairs[:1], 0.2, rng)


def test_tiny_finetune_lowers_heldout_deviance(dataset, init_model, tmp_path):
    cfg = FinetuneConfig(
        steps=40, batch=4, patch=32, lr=3e-3, eval_every=10, patience=3, val_fraction=0.34, seed=1
    )
    out = tmp_path / "rln-ft"
    module, card, history = finetune(dataset, init_model, out, cfg, progress=False)
    before, after = history["before"], history["after"]
    assert after["poisson_deviance"] < before["poisson_deviance"]
    saved = json.loads(out.with_suffix(".json").read_text())
    assert saved["id"] == "rln-ft"
    ds_rec = saved["training"]["dataset"]
    assert ds_rec["pairs"] == 6 and ds_rec["index_sha256"] == dataset.index_sha256
    assert len(ds_rec["heldout_pairs"]) == 2 and not set(ds_rec["heldout_pairs"]) & set(ds_rec["train_pairs"])
    assert saved["training"]["init_model"]["id"] == "rln-untrained"
    held = saved["quality"]["heldout_pairs"]
    assert held["after"]["poisson_deviance"] == after["poisson_deviance"] and held["deviance_change"] < 0
    from livedenoise.inference.modelio import load_model

    reloaded, rcard = load_model(out.with_suffix(".pt"))
    assert rcard.id == "rln-ft"


def test_finetune_config_errors():
    with pytest.raises(ValueError, match="val_fraction=1.5"):
        FinetuneConfig(val_fraction=1.5)


def test_train_cli_pairs(dataset, init_model, tmp_path, capsys):
    from livedenoise.cli import main

    out = tmp_path / "rln-cli.pt"
    rc = main(
        [
            "train",
            "--pairs",
            str(dataset.path),
            "--init",
            str(init_model),
            "-o",
            str(out),
            "--steps",
            "6",
            "--batch",
            "2",
            "--patch",
            "32",
            "--threads",
            "1",
            "--no-progress",
        ]
    )
    assert rc == 0
    assert "held-out Poisson deviance" in capsys.readouterr().out
    card = json.loads(out.with_suffix(".json").read_text())
    assert (
        card["id"] == "rln-cli"
        and card["training"]["steps"] == 6
        and card["training"]["config"]["lr"] == 3e-4
    )
    # a folder that is not a dataset: a clear error, exit status 2
    assert (
        main(["train", "--pairs", str(tmp_path), "--init", str(init_model), "-o", str(tmp_path / "x.pt")])
        == 2
    )
    assert "not a paired dataset" in capsys.readouterr().err
