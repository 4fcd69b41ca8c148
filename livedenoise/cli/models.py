"""`livedenoise models`: list the installed models."""

from __future__ import annotations

import argparse

from livedenoise.inference.modelio import DEFAULT_MODEL, QUALITY_MODEL, list_models, load_model, model_dirs

HELP = "list installed restoration models (id, architecture, task, quality, speed)"
DESCRIPTION = """\
List the models livedenoise can load: the shipped ones and those in the folders named by
the LIVEDENOISE_MODELS environment variable (separated by ':'). Pass an id to --model of
demo, serve, denoise or bench. The default live model is marked with '*'.

Example:

  livedenoise models
  livedenoise models --json          # full model cards
  livedenoise models --check         # also load each one and verify its checksum
"""


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--json", action="store_true", help="print the full model cards as JSON")
    p.add_argument("--check", action="store_true", help="load every model (verifies checksums and weights)")


def _quality(card) -> str:
    real = card.quality.get("real")
    if real and real.get("psnr_db") is not None:
        return f"{real['psnr_db']:.1f} dB on real structures"
    dec = card.quality.get("real_deconvolution")
    if dec and dec.get("gain_over_richardson_lucy_db") is not None:
        return f"{dec['gain_over_richardson_lucy_db']:+.1f} dB vs best Richardson-Lucy"
    held = card.quality.get("held_out", {}).get("mean_5_100_e")
    if held:
        return f"{held['psnr_db']:.1f} dB (raw {held['raw_psnr_db']:.1f}) @5-100e-"
    val = card.quality.get("validation")
    if val:
        return f"val {val.get('psnr_db')} dB (raw {val.get('raw_psnr_db')})"
    return "-"


def _speed(card) -> str:
    s = card.speed or {}
    parts = [f"{k[: -len('_ms_median')]} {v:.0f} ms" for k, v in s.items() if k.endswith("_ms_median")]
    return (", ".join(parts) + f" @{s.get('frame', '?')}") if parts else "-"


def run(args: argparse.Namespace) -> int:
    import json

    cards = list_models()
    if args.json:
        print(json.dumps([dict(c.to_dict(), path=c.path) for c in cards], indent=2))
        return 0
    if not cards:
        print("no models found in: " + ", ".join(str(d) for d in model_dirs()))
        return 1
    rows = [("id", "arch", "task", "params", "quality (PSNR)", "speed (CPU)", "path")]
    for c in cards:
        mark = "*" if c.id == DEFAULT_MODEL else "q" if c.id == QUALITY_MODEL else " "
        rows.append(
            (
                mark + c.id,
                c.architecture,
                c.task,
                f"{c.parameters / 1e3:.1f}k",
                _quality(c),
                _speed(c),
                str(c.path),
            )
        )
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for r in rows:
        print("  ".join(v.ljust(w) for v, w in zip(r, widths)).rstrip())
    failed = 0
    if args.check:
        for c in cards:
            try:
                load_model(c.path)
                print(f"ok      {c.id}")
            except Exception as exc:
                failed += 1
                print(f"FAILED  {c.id}: {exc}")
    print(
        f"\n* = default live model ({DEFAULT_MODEL}), q = quality model ({QUALITY_MODEL}; the daemon runs it where "
        "it keeps up with the camera); searched: " + ", ".join(str(d) for d in model_dirs())
    )
    return 1 if failed else 0
