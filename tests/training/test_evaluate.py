"""`livedenoise evaluate` on a tiny held-out set: every row and column, JSON, bad options."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from livedenoise.cli import main
from livedenoise.training.evaluate import DEFAULT_BINS, EvalConfig, evaluate, format_markdown


def test_evaluate_cli_table_has_all_rows(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "eval.json"
    rc = main(
        [
            "evaluate",
            "--n",
            "1",
            "--size",
            "48",
            "--models",
            "passthrough",
            "--engine",
            "passthrough",
            "--baselines",
            "tv,gat-nlm,nlm",
            "--json",
            str(out),
            "--no-progress",
        ]
    )
    assert rc == 0
    text = capsys.readouterr().out
    rows = {line.split("|")[1].strip() for line in text.splitlines() if line.startswith("| ")}
    assert {"raw", "passthrough", "tv", "gat-nlm", "nlm"} <= rows
    header = next(line for line in text.splitlines() if line.startswith("| method"))
    for label, _ in DEFAULT_BINS:
        assert f"{label} e-" in header
    assert "mean PSNR" in header and "ms/frame" in header
    assert "Best model passthrough" in text
    report = json.loads(out.read_text())
    assert report["methods"] == ["raw", "passthrough", "tv", "gat-nlm", "nlm"]
    for m in report["methods"]:
        assert set(report["results"][m]) == {lab for lab, _ in DEFAULT_BINS}
        assert set(report["summary"][m]) == {"psnr", "ssim", "nrmse", "kd"}
    # the baselines really restore: better than raw; the passthrough engine does (almost) nothing
    s = report["summary"]
    assert s["tv"]["psnr"] > s["raw"]["psnr"] + 3
    assert abs(s["passthrough"]["psnr"] - s["raw"]["psnr"]) < 1.0
    assert report["ms_per_frame"]["tv"] > 0 and report["target"]["met"] is False


def test_deconvolve_task_runs_richardson_lucy() -> None:
    cfg = EvalConfig(
        models=[],
        baselines=["rl", "gat-nlm-rl"],
        n=1,
        size=48,
        task="deconvolve",
        bins=(("10", (10.0, 10.0)),),
    )
    report = evaluate(cfg, progress=False)
    assert report["methods"] == ["raw", "rl", "gat-nlm-rl"]
    assert report["summary"]["rl"]["psnr"] > report["summary"]["raw"]["psnr"]
    assert "| rl |" in format_markdown(report)


@pytest.mark.parametrize(
    ("argv", "match"),
    [
        (["--seed", "777"], "tuning seed"),
        (["--baselines", "median"], "unknown baseline"),
        (["--n", "0"], "--n must be"),
        (["--models", "no-such-model-xyz", "--engine", "passthrough"], "passthrough engine runs no model"),
    ],
)
def test_bad_options(argv: list[str], match: str, capsys: pytest.CaptureFixture) -> None:
    assert main(["evaluate", "--size", "48", "--n", "1", "--no-progress", *argv]) == 2
    assert match in capsys.readouterr().err
