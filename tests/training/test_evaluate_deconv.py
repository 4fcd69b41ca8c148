"""Deconvolution on real structures (`livedenoise evaluate --real --task deconvolve`), tiny configuration."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from livedenoise.cli import main
from livedenoise.imaging.psf import named_psf
from livedenoise.inference.modelio import ModelCard, save_model
from livedenoise.inference.nets import build_network
from livedenoise.training.evaluate_deconv import (
    RealDeconvConfig,
    evaluate_real_deconv,
    format_deconv_markdown,
    model_psf,
)
from livedenoise.training.train import TrainConfig, _psf_record

TINY = {
    "crops": ["nuclei-dsb", "dendrites-purkinje"],
    "size": 32,
    "peaks": (5.0, 100.0),
    "backgrounds": (0.0, 10.0),
}


def _model(path, task="deconvolve", psf="airy-na1.4"):
    torch.manual_seed(0)
    net = build_network("rln")
    training = {"psf": _psf_record(TrainConfig(task=task, psf=psf))} if psf else {}
    save_model(net, ModelCard(id=path.stem, architecture="rln", task=task, training=training), path)
    return str(path)


def test_the_card_records_the_psf_and_the_target():
    rec = _psf_record(TrainConfig(task="deconvolve", psf="airy-na1.4"))
    assert (
        rec["name"] == "airy-na1.4" and rec["na"] == 1.4 and rec["sigma_px"] == pytest.approx(1.2, abs=0.05)
    )
    assert "sigma 0.6 px" in rec["target"]
    with pytest.raises(ValueError, match="unknown PSF"):
        TrainConfig(psf="confocal")


def test_rl_is_given_its_best_count_per_peak(tmp_path):
    model = _model(tmp_path / "dec.pt")
    cfg = RealDeconvConfig(model=model, iterations=(1, 3, 10), engine_options={"precision": "fp32"}, **TINY)
    rep = evaluate_real_deconv(cfg, progress=False)
    assert rep["psf"]["name"] == "airy-na1.4"
    assert len(rep["frames"]) == 4
    for p in ("5.0", "100.0"):
        best = rep["rl_best_iterations"][p]
        frames = [i for i, f in enumerate(rep["frames"]) if f["peak_e"] == float(p)]
        per_count = {n: np.mean([rep["psnr"][f"rl-{n}"][i] for i in frames]) for n in (1, 3, 10)}
        assert per_count[best] == max(per_count.values())
        assert rep["by_peak"]["rl-best"][p] == pytest.approx(per_count[best])
    assert rep["gain_db"] == pytest.approx(rep["summary"][rep["model"]] - rep["summary"]["rl-best"])
    # RL undoes blur: at 100 e- its best is above the blurred raw frame
    assert rep["by_peak"]["rl-best"]["100.0"] > rep["by_peak"]["raw"]["100.0"]
    text = format_deconv_markdown(rep)
    assert "best count per peak" in text and "RL's best count" in text
    json.dumps(rep)


def test_models_without_a_fixed_psf_are_refused_with_a_reason(tmp_path):
    with pytest.raises(ValueError, match="task 'deconvolve'"):
        model_psf("rln-denoise-v2")
    with pytest.raises(ValueError, match="--psf NAME"):
        model_psf(_model(tmp_path / "blind.pt", psf=None))


def test_cli_prints_the_table_and_writes_json(tmp_path, capsys):
    model = _model(tmp_path / "dec.pt")
    out = tmp_path / "d.json"
    args = ["evaluate", "--real", "--task", "deconvolve", "--models", model, "--size", "32"]
    args += [
        "--crops",
        "nuclei-dsb",
        "--peaks",
        "20",
        "--backgrounds",
        "1",
        "--no-progress",
        "--json",
        str(out),
    ]
    assert main(args) == 0
    text = capsys.readouterr().out
    assert "Richardson-Lucy, best count per peak" in text and "over Richardson-Lucy" in text
    assert json.loads(out.read_text())["psf"]["name"] == "airy-na1.4"
    assert main(args) == 2  # the JSON exists: refused without --force
    assert "--force" in capsys.readouterr().err
    assert (
        main(["evaluate", "--real", "--task", "deconvolve", "--models", "rln-denoise-v2", "--size", "32"])
        == 2
    )
    assert "task 'deconvolve'" in capsys.readouterr().err


def test_training_with_a_fixed_psf_blurs_every_patch_alike():
    from livedenoise.imaging.synthetic import SyntheticPatches, make_eval_set

    kernel, _ = named_psf("airy-na0.75")
    stream = iter(
        SyntheticPatches(32, "deconvolve", seed=1, psf="airy-na0.75", background="sample", psf_range="wide")
    )
    x, t, r = next(stream)
    assert x.shape == t.shape == (32, 32) and r == 1.0
    xs, ts, params = make_eval_set(2, 32, (50, 50), "deconvolve", seed=3, psf="airy-na0.75")
    assert all(p["name"] == "airy-na0.75" for p in params)
    assert kernel.sum() == pytest.approx(1.0, abs=1e-5)


def test_the_shipped_deconvolution_rln_beats_richardson_lucy_at_its_best_count():
    """rln-deconvolve-v2 on real structures blurred by its PSF, at a few and at many photons, on a dark
    and a bright background: above RL given its best iteration count per peak (the whole 25-frame grid
    measured +3.1 dB; this small one leaves room for the draw)."""
    cfg = RealDeconvConfig(
        model="rln-deconvolve-v2",
        crops=["nuclei-u2os", "puncta-hybiss", "chromatin-terra"],
        size=96,
        peaks=(5.0, 100.0),
        backgrounds=(0.0, 10.0),
        iterations=(1, 2, 3, 5, 8),
        engine_options={"precision": "fp32", "threads": 1},
    )
    rep = evaluate_real_deconv(cfg, progress=False)
    assert rep["gain_db"] > 1.0, rep["by_peak"]
    for p in ("5.0", "100.0"):
        assert rep["by_peak"][rep["model"]][p] > rep["by_peak"]["rl-best"][p], p
