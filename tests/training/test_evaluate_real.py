"""The real-structure evaluation (`livedenoise evaluate --real`) on a tiny configuration."""

from __future__ import annotations

import json

import numpy as np
import pytest

from livedenoise.cli import main
from livedenoise.training.evaluate_real import (
    REAL_DIR,
    RealEvalConfig,
    _level_check,
    evaluate_real,
    format_real_markdown,
    load_real_crops,
    make_real_frames,
)
from livedenoise.training.real_figure import FIGURE_METHODS, figure_methods, write_real_figure

TINY = {
    "crops": ["nuclei-dsb", "dendrites-purkinje"],
    "size": 32,
    "peaks": (5.0, 50.0),
    "backgrounds": (0.0, 10.0),
    "psfs": ("gauss-0.8", "airy-na0.75"),
}


def test_shipped_crops_have_provenance_and_stay_small():
    index = json.loads((REAL_DIR / "SOURCES.json").read_text())
    files = {e["file"] for e in index["images"]}
    assert len(files) >= 5
    for e in index["images"]:
        assert (REAL_DIR / e["file"]).is_file()
        assert e["package"] and e["origin"] and len(e["member_sha256"]) == 64
    assert (REAL_DIR / "README.md").is_file()
    assert list((REAL_DIR / "LICENSES").glob("*.txt"))
    total = sum(p.stat().st_size for p in REAL_DIR.rglob("*") if p.is_file())
    assert total < 3_000_000
    crops = load_real_crops()
    for name, img in crops.items():
        assert img.shape == (256, 256) and img.dtype == np.float32, name
        assert img.min() >= 0 and np.percentile(img, 99.9) == pytest.approx(1.0, rel=0.02)


def test_frames_are_a_seeded_grid_with_the_truth_at_the_peak():
    cfg = RealEvalConfig(models=[], baselines=[], **TINY)
    a, b = make_real_frames(cfg), make_real_frames(cfg)
    assert len(a) == 4
    assert {(f["peak_e"], f["background_e"]) for f in a} == {(5, 0), (50, 0), (5, 10), (50, 10)}
    for fa, fb in zip(a, b):
        np.testing.assert_array_equal(fa["x"], fb["x"])
        t = fa["truth"]
        assert np.percentile(t, 99.9) == pytest.approx(fa["peak_e"] + fa["background_e"], rel=0.02)
        assert t.min() >= fa["background_e"] - 1e-4
    other = make_real_frames(RealEvalConfig(models=[], baselines=[], seed=1, **TINY))
    assert not np.array_equal(a[0]["x"], other[0]["x"])


def test_unknown_crop_or_psf_is_refused():
    with pytest.raises(ValueError, match="unknown PSF"):
        RealEvalConfig(psfs=("nope",))
    with pytest.raises(ValueError, match="unknown real crop"):
        load_real_crops(["nope"])


def test_level_check_says_which_part_missed_and_by_how_much():
    def row(bias, truth, bg_bias, bg_truth):
        return {"bias_e": bias, "truth_mean_e": truth, "bg_bias_e": bg_bias, "bg_truth_e": bg_truth}

    # whole frames at 20 e-: 0.5 % is 0.1 e-; background regions at 1 e-: the 0.05 e- floor applies
    assert _level_check([row(0.08, 20.0, 0.04, 1.0), row(-0.02, 20.0, 0.05, 1.0)]) == (True, [])
    kept, why = _level_check([row(0.08, 20.0, 0.06, 1.0), row(0.04, 20.0, 0.08, 1.0)])
    assert kept is False and why == ["background regions +0.070 e-/px (allowed ±0.050)"]
    kept, why = _level_check([row(-0.3, 20.0, None, None), row(-0.1, 20.0, None, None)])
    assert kept is False and why == ["whole frames -0.200 e-/px (allowed ±0.100)"]
    assert _level_check([]) == (None, [])
    assert _level_check([row(float("nan"), 20.0, None, None)])[0] is False  # a NaN frame never passes


def test_evaluate_real_reports_psnr_bias_and_time(tmp_path):
    cfg = RealEvalConfig(
        models=["rln-denoise-v2"], baselines=["tv"], engine_options={"precision": "fp32"}, **TINY
    )
    report = evaluate_real(cfg, progress=False)
    assert report["methods"] == ["raw", "rln-denoise-v2", "tv"]
    for m in report["methods"]:
        s = report["summary"][m]
        assert s["n"] == 4 and np.isfinite(s["psnr"])
        assert abs(s["bias_rel"]) < 0.5
        for p in ("5.0", "50.0"):
            assert report["by_peak"][m][p]["n"] == 2
    # the raw frame is unbiased up to noise: its flux bias is small
    assert abs(report["summary"]["raw"]["bias_rel"]) < 0.05
    assert report["summary"]["tv"]["psnr"] > report["summary"]["raw"]["psnr"]
    assert report["ms_per_frame"]["rln-denoise-v2"] > 0
    # counts kept per level (on 32-pixel frames even the raw frame's noise can miss 0.05 e-)
    for m in report["methods"]:
        assert isinstance(report["summary"][m]["levels_not_kept"], list)
        assert sorted(report["summary"][m]["levels_not_kept_why"]) == sorted(
            report["summary"][m]["levels_not_kept"]
        )
        for level in report["by_peak"][m].values():
            assert level["level_kept"] in (True, False)
    text = format_real_markdown(report)
    assert "Flux bias" in text and "| rln-denoise-v2 |" in text
    assert "- raw: " in text and "- tv: " in text
    png = tmp_path / "fig.png"
    write_real_figure(report, png)
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    json.dumps({k: v for k, v in report.items() if k != "examples"})  # the JSON report is JSON


def test_cli_real_writes_table_and_figure_and_refuses_to_overwrite(tmp_path, capsys):
    png, js = tmp_path / "real.png", tmp_path / "real.json"
    argv = [
        "evaluate", "--real", "--size", "32", "--peaks", "5,50", "--backgrounds", "0,10",
        "--crops", "nuclei-u2os", "--psfs", "gauss-0.8", "--models", "none", "--baselines", "tv",
        "--figure", str(png), "--json", str(js), "--no-progress",
    ]  # fmt: skip
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "PSNR (dB) per peak" in out and "| tv |" in out
    assert png.is_file() and json.loads(js.read_text())["summary"]["tv"]["n"] == 4
    assert main(argv) == 2  # exists: needs --force
    assert "--force" in capsys.readouterr().err
    assert main([*argv, "--force"]) == 0


def test_two_models_of_one_id_are_reported_apart(tmp_path):
    """A fine-tuned copy beside its original (one card id): each under the name it was asked by."""
    import shutil

    from livedenoise.inference.modelio import resolve_model

    src = resolve_model("rln-denoise-v2")
    copy = tmp_path / "rln-denoise-v2.pt"
    shutil.copy(src, copy)
    shutil.copy(src.with_suffix(".json"), copy.with_suffix(".json"))
    report = evaluate_real(
        RealEvalConfig(models=["rln-denoise-v2", str(copy)], baselines=[], **TINY), progress=False
    )
    assert {"rln-denoise-v2", str(copy)} <= set(report["summary"])
    assert report["summary"]["rln-denoise-v2"]["psnr"] == report["summary"][str(copy)]["psnr"]
    with pytest.raises(ValueError, match="listed twice"):
        evaluate_real(RealEvalConfig(models=["rln-denoise-v2", "rln-denoise-v2"], baselines=[], **TINY))


def test_models_run_as_a_self_ensemble_when_asked(capsys):
    plain = evaluate_real(RealEvalConfig(models=["rln-denoise-v2"], baselines=[], **TINY), progress=False)
    ens = evaluate_real(
        RealEvalConfig(models=["rln-denoise-v2"], baselines=[], ensemble=4, **TINY), progress=False
    )
    name = "rln-denoise-v2 (ensemble 4)"
    assert ens["methods"] == ["raw", name]
    assert ens["summary"]["raw"]["psnr"] == plain["summary"]["raw"]["psnr"]  # the same frames
    assert ens["summary"][name]["psnr"] != plain["summary"]["rln-denoise-v2"]["psnr"]
    with pytest.raises(ValueError, match="one of 1, 2, 4, 8"):
        RealEvalConfig(ensemble=3)
    assert main(["evaluate", "--ensemble", "4", "--models", "none", "--n", "1"]) == 2
    assert "--real evaluations of the denoise task only" in capsys.readouterr().err


def test_figure_shows_the_shipped_models_the_best_others_and_every_baseline():
    from livedenoise.inference.modelio import DEFAULT_MODEL, QUALITY_MODEL

    others = [f"old-{i}" for i in range(10)]
    models = [others[0], DEFAULT_MODEL, *others[1:], f"{QUALITY_MODEL} (ensemble 8)"]
    baselines = ["tv", "gat-nlm", "gat-bm3d"]
    psnr = {m: 30.0 + i * 0.1 for i, m in enumerate(others)}  # old-9 best, then old-8
    psnr.update({DEFAULT_MODEL: 20.0, f"{QUALITY_MODEL} (ensemble 8)": 21.0, "tv": 25, "gat-nlm": 26})
    psnr["gat-bm3d"] = 27.0
    report = {
        "methods": ["raw", *models, *baselines],
        "models": {m: {} for m in models},
        "summary": {m: {"psnr": v} for m, v in psnr.items()},
    }
    shown = figure_methods(report)
    assert len(shown) == FIGURE_METHODS
    # in the report's order: the shipped ones (however they score), the 3 best others, the baselines
    assert shown == [DEFAULT_MODEL, "old-7", "old-8", "old-9", f"{QUALITY_MODEL} (ensemble 8)", *baselines]
    few = {**report, "methods": ["raw", "old-0", "tv"]}
    assert figure_methods(few) == ["old-0", "tv"]  # up to the limit: every method
