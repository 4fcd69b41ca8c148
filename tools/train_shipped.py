"""Train, measure and write the models shipped in ``models/`` (the exact reproducible commands).

Usage (from the repository root)::

    python tools/train_shipped.py train rln-denoise-v1       # train with the exact command below
    python tools/train_shipped.py measure rln-denoise-v1     # held-out quality + CPU speed into the card
    python tools/train_shipped.py speed                      # only re-measure the speed (quiet machine)
    python tools/train_shipped.py all                        # train + measure every shipped model
    python tools/train_shipped.py real                       # real-structure figures into the cards
    python tools/train_shipped.py table                      # the README's model table, from the cards
    python tools/train_shipped.py table --check              # exit 1 if the README's table is stale

``train`` runs ``livedenoise train`` with the arguments in ``SHIPPED`` (the same string
ends up in the card's ``training.command``). ``measure`` adds to the card:

- ``quality.held_out``: PSNR against the noise-free expected image on a held-out
  synthetic set (another seed range and structure mix than training), per peak level,
  for the raw frame and the model;
- ``speed``: milliseconds per 512x512 frame with the CPU engine, fp32 and bf16 (bf16 only
  where it passed validation against fp32), with the machine and its load.

``real`` runs ``livedenoise evaluate --real`` (all 25 frames, GAT+BM3D on every frame when the
``bm3d`` package is installed) over every shipped denoising model and writes each one's figures
(mean PSNR, per peak, per background, flux bias, the baselines' means on the same frames) into
``quality.real``; for a deconvolution model it runs ``evaluate --real --task deconvolve`` and writes
``quality.real_deconvolution``. ``table`` writes the README's model table (between the
``<!-- model-table -->`` markers) from the cards alone.
"""

from __future__ import annotations

import argparse
import os
import platform
import shlex
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


# set in the card after training (they have no weights): photon counts kept at that scale
AFTER_TRAINING: dict[str, dict] = {
    "resunet-live-v1": {"flux_block": 32},
    "resunet-live-v2": {"flux_block": 32},
    "resunet-live-v3": {"flux_block": 32},
    "resunet-live-v4": {"flux_block": 32},
    "resunet-live-v5": {"flux_block": 32},
    "resunet-live-v6": {"flux_block": 32},
    "resunet-live-v7": {"flux_block": 32},
    "resunet-live-v8": {"flux_block": 32},
    "resunet-denoise-v2": {"flux_block": 32},
    "resunet-denoise-v3": {"flux_block": 32},
    "resunet-denoise-v4": {"flux_block": 32},
    "resunet-denoise-v5": {"flux_block": 32},
    "resunet-denoise-v6": {"flux_block": 32},
    "resunet-denoise-v7": {"flux_block": 32},
    "rln-deconvolve-v1": {"flux_block": 16},
    "rln-deconvolve-v2": {"flux_block": 16},
}


# stored in float16 after training (half the file; loaded back into float32): finish() converts
# them and records the held-out PSNR of both in the card (quality.float16_weights)
STORED_AS: dict[str, str] = {
    "resunet-live-v3": "float16",
    "resunet-live-v4": "float16",
    "resunet-live-v5": "float16",
    "resunet-live-v6": "float16",
    "resunet-live-v7": "float16",
    "resunet-live-v8": "float16",
    "resunet-denoise-v3": "float16",
    "resunet-denoise-v4": "float16",
    "resunet-denoise-v5": "float16",
    "resunet-denoise-v6": "float16",
    "resunet-denoise-v7": "float16",
}


def _from_model(
    recipe: list[str], init_id: str, model_id: str, *, steps: str, lr: str, seed: str
) -> list[str]:
    """``recipe`` run on from the shipped ``init_id`` (``--init models/<init_id>.pt``, its network and its
    flux step, which stays on while training) on a new schedule, as ``model_id``."""
    out = list(recipe)
    task = out.index("--task")  # the network is the init model's: the recipe's --arch-param go
    flux = [a for k, v in AFTER_TRAINING.get(init_id, {}).items() for a in ("--arch-param", f"{k}={v}")]
    out[:task] = ["--arch", out[1], "--init", f"models/{init_id}.pt", *flux]
    return _with(out, {"--steps": steps, "--lr": lr, "--seed": seed, "--id": model_id})


def _with(recipe: list[str], values: dict[str, str]) -> list[str]:
    """``recipe`` with the value that follows each flag of ``values`` replaced."""
    out = list(recipe)
    for flag, value in values.items():
        out[out.index(flag) + 1] = value
    return out


def _variant(recipe: list[str], steps: str, *after_steps: str) -> list[str]:
    """``recipe`` with its ``--steps`` value replaced and ``after_steps`` inserted right after it."""
    out = _with(recipe, {"--steps": steps})
    k = out.index("--steps")
    out[k + 2 : k + 2] = after_steps
    return out


# training on a CPU with AMX: the passes in bfloat16 (weights and loss in float32), two batches made ahead
BF16_TRAINING = ["--precision", "bf16", "--prefetch", "2"]
# the background-bias term trades a little synthetic validation PSNR for the counts on purpose (the v6
# cards' quality.worse_than): without --accept-worse a rerun beside the shipped file would be set aside
BG_BIAS_TRAINING = ["--bg-bias-weight", "30", "--accept-worse"]

# both bias terms (the per-patch background term and the batch's dark-background mean) with the last
# step's weights: the terms trade synthetic validation for the counts, so the best validation epoch
# is not the one wanted
BIAS_TRAINING = [*BG_BIAS_TRAINING, "--dark-bias-weight", "1000", "--keep", "last"]


def _whole_frame_stage(recipe: list[str], init_id: str, model_id: str, seed: str) -> list[str]:
    """A stage on 256² patches, batch 2 (the pixels of 128² x 8): 2400 steps at lr 5e-5 from ``init_id``.

    Patches as large as the frames the evaluation scores: the channel attention's global means and
    the coarsest level (8x8 at 256² for the 4x-unshuffled network, 4x4 at 128²) then see what they
    see at inference.
    """
    return [
        *_with(
            _from_model(recipe, init_id, model_id, steps="2400", lr="5e-05", seed=seed),
            {"--loss": "psnr", "--epoch-steps": "300", "--patch": "256", "--batch": "2"},
        ),
        *BIAS_TRAINING,
        *BF16_TRAINING,
    ]


# the recipes of the staged models; their stages differ in the schedule's length and how they start
LIVE_RECIPE: list[str] = [
    "--arch",
    "resunet",
    "--arch-param",
    "channels=[32,64,128,256]",
    "--arch-param",
    "unshuffle=4",
    "--arch-param",
    "mid_blocks=2",
    "--task",
    "denoise",
    "--loss",
    "poisson",
    "--steps",
    "5000",
    "--epoch-steps",
    "250",
    "--batch",
    "16",
    "--patch",
    "128",
    "--lr",
    "0.001",
    "--lr-schedule",
    "cosine",
    "--peak-range",
    "1",
    "500",
    "--data",
    "sample",
    "--seed",
    "3",
    "--val-size",
    "24",
    "--threads",
    "1",
    "--id",
    "resunet-live-v1",
]
# the quality model's recipe is the live one with a 2x unshuffle, a longer schedule, half the batch
QUALITY_RECIPE: list[str] = [
    "unshuffle=2" if arg == "unshuffle=4" else arg
    for arg in _with(
        LIVE_RECIPE,
        {"--steps": "7000", "--batch": "8", "--lr": "0.0015", "--seed": "4", "--id": "resunet-denoise-v2"},
    )
]

SHIPPED: dict[str, list[str] | list[list[str]]] = {
    # the fast live model: ~5k parameters, RL structure
    "rln-denoise-v1": [
        "--arch",
        "rln",
        "--task",
        "denoise",
        "--loss",
        "poisson",
        "--steps",
        "1000",
        "--epoch-steps",
        "100",
        "--batch",
        "16",
        "--patch",
        "64",
        "--lr",
        "0.005",
        "--lr-schedule",
        "cosine",
        "--peak-range",
        "1",
        "500",
        "--seed",
        "1",
        "--val-size",
        "24",
        "--threads",
        "1",
        "--id",
        "rln-denoise-v1",
    ],
    # v1's recipe with ReLU hidden layers (softplus only on the RL ratio's denominators and the output layer):
    # ~35% faster on a CPU, the live default
    "rln-denoise-v2": [
        "--arch",
        "rln",
        "--arch-param",
        'activation="relu"',
        "--task",
        "denoise",
        "--loss",
        "poisson",
        "--steps",
        "1000",
        "--epoch-steps",
        "100",
        "--batch",
        "16",
        "--patch",
        "64",
        "--lr",
        "0.005",
        "--lr-schedule",
        "cosine",
        "--peak-range",
        "1",
        "500",
        "--seed",
        "1",
        "--val-size",
        "24",
        "--threads",
        "1",
        "--id",
        "rln-denoise-v2",
    ],
    # the quality model: ~1.2M parameters, U-Net of residual channel-attention blocks
    "resunet-denoise-v1": [
        "--arch",
        "resunet",
        "--task",
        "denoise",
        "--loss",
        "poisson",
        "--steps",
        "800",
        "--epoch-steps",
        "100",
        "--batch",
        "8",
        "--patch",
        "64",
        "--lr",
        "0.0015",
        "--lr-schedule",
        "cosine",
        "--peak-range",
        "1",
        "500",
        "--seed",
        "2",
        "--val-size",
        "24",
        "--threads",
        "1",
        "--id",
        "resunet-denoise-v1",
    ],
    # the fast live model: RESUNET with a 4x pixel-unshuffle front end, sample-like data, in two stages
    # (its schedule lengthened to 8000 steps at step 1750); a first run at lr 0.002 diverged after
    # ~900 steps; flux_block=32 is set in the card after training (AFTER_TRAINING)
    "resunet-live-v1": [
        _variant(LIVE_RECIPE, "5000", "--stop-after", "1750"),
        _variant(LIVE_RECIPE, "8000", "--resume"),
    ],
    # the live default since 2026-12-01: resunet-live-v1 trained on, 6000 steps at lr 0.0005 (a new
    # cosine schedule, another seed), with its flux step on while training
    "resunet-live-v2": _from_model(
        LIVE_RECIPE, "resunet-live-v1", "resunet-live-v2", steps="6000", lr="0.0005", seed="7"
    ),
    # the live default since 2026-12-02: resunet-live-v2 trained on, 4000 steps at lr 0.0003 (a new
    # cosine schedule, another seed)
    "resunet-live-v3": _from_model(
        LIVE_RECIPE, "resunet-live-v2", "resunet-live-v3", steps="4000", lr="0.0003", seed="8"
    ),
    # the live default since 2026-12-06: resunet-live-v3 trained on, 5000 steps at lr 0.0003 (a new cosine
    # schedule, another seed), the passes in bfloat16 (AMX), batches made ahead
    "resunet-live-v4": [
        *_from_model(LIVE_RECIPE, "resunet-live-v3", "resunet-live-v4", steps="5000", lr="0.0003", seed="9"),
        *BF16_TRAINING,
    ],
    # v4 trained on with the evaluation's own figure of merit as the loss (minus each patch's PSNR
    # against its range, averaged in dB: --loss psnr), in bf16
    "resunet-live-v5": [
        *_with(
            _from_model(
                LIVE_RECIPE, "resunet-live-v4", "resunet-live-v5", steps="5000", lr="0.0003", seed="10"
            ),
            {"--loss": "psnr"},
        ),
        *BF16_TRAINING,
    ],
    # the quality model: RESUNET with a 2x pixel-unshuffle front end, four levels, sample-like data, in
    # three stages: a 4500-step schedule to step 1500, lengthened to 7000 steps to step 3250 (lengthened
    # again to 10000 it diverged at lr ~1.3e-3), then 4000 steps from those weights at lr 0.0005
    "resunet-denoise-v2": [
        _variant(QUALITY_RECIPE, "4500", "--stop-after", "1500"),
        _variant(QUALITY_RECIPE, "7000", "--resume", "--stop-after", "3250"),
        [
            "--arch",
            "resunet",
            "--init",
            "models/resunet-denoise-v2.pt",
            "--data",
            "sample",
            "--patch",
            "128",
            "--batch",
            "8",
            "--steps",
            "4000",
            "--epoch-steps",
            "250",
            "--lr",
            "0.0005",
            "--lr-schedule",
            "cosine",
            "--seed",
            "6",
            "--val-size",
            "24",
            "--threads",
            "1",
            "--id",
            "resunet-denoise-v2",
        ],
    ],
    # the quality model since 2026-12-02: resunet-denoise-v2 trained on, 4500 steps at lr 0.0003 (a new
    # cosine schedule, another seed), with its flux step on while training
    "resunet-denoise-v3": _from_model(
        QUALITY_RECIPE, "resunet-denoise-v2", "resunet-denoise-v3", steps="4500", lr="0.0003", seed="8"
    ),
    # the quality model since 2026-12-06: resunet-denoise-v3 trained on, 8000 steps at lr 0.0003 (a new
    # cosine schedule, another seed), the passes in bfloat16 (AMX: 2-3x faster steps), batches made ahead
    "resunet-denoise-v4": [
        *_from_model(
            QUALITY_RECIPE, "resunet-denoise-v3", "resunet-denoise-v4", steps="8000", lr="0.0003", seed="9"
        ),
        *BF16_TRAINING,
    ],
    # v4 trained on with --loss psnr in two stages: 8000 steps at lr 3e-4, then 4000 at 2e-4 from those weights
    "resunet-denoise-v5": [
        [
            *_with(
                _from_model(
                    QUALITY_RECIPE,
                    "resunet-denoise-v4",
                    "resunet-denoise-v5",
                    steps="8000",
                    lr="0.0003",
                    seed="10",
                ),
                {"--loss": "psnr"},
            ),
            *BF16_TRAINING,
        ],
        [
            *_with(
                _from_model(
                    QUALITY_RECIPE,
                    "resunet-denoise-v5",
                    "resunet-denoise-v5",
                    steps="4000",
                    lr="0.0002",
                    seed="11",
                ),
                {"--loss": "psnr"},
            ),
            *BF16_TRAINING,
        ],
    ],
    # v5 trained on with a penalty on each bright patch's mean error over its background region
    # (--bg-bias-weight: dark backgrounds next to structure read +0.07-0.11 e- bright with v5)
    "resunet-live-v6": [
        *_with(
            _from_model(
                LIVE_RECIPE, "resunet-live-v5", "resunet-live-v6", steps="2000", lr="0.0001", seed="12"
            ),
            {"--loss": "psnr"},
        ),
        *BG_BIAS_TRAINING,
        *BF16_TRAINING,
    ],
    # the batch's mean background error over its dark-background patches as well (the per-patch term
    # sees mostly the flux stage's noise there), and the last step's weights (BIAS_TRAINING)
    "resunet-live-v7": [
        *_with(
            _from_model(
                LIVE_RECIPE, "resunet-live-v6", "resunet-live-v7", steps="1500", lr="5e-05", seed="17"
            ),
            {"--loss": "psnr", "--epoch-steps": "250"},
        ),
        *BIAS_TRAINING,
        *BF16_TRAINING,
    ],
    "resunet-denoise-v6": [
        *_with(
            _from_model(
                QUALITY_RECIPE,
                "resunet-denoise-v5",
                "resunet-denoise-v6",
                steps="4000",
                lr="0.0002",
                seed="13",
            ),
            {"--loss": "psnr"},
        ),
        *BG_BIAS_TRAINING,
        *BF16_TRAINING,
    ],
    # resunet-live-v7 / resunet-denoise-v6 trained on whole 256² patches (_whole_frame_stage), the
    # quality model in two such stages, the second from the first's output. On real structure (fp32,
    # 2026-12-07): live 34.68 -> 34.88 dB; quality 35.35 -> 35.38 -> 35.42 dB. A further stage gave
    # +0.02 dB for the live model with its 0 e- background lifted past 0.05 e-, +0.01 dB for the
    # quality model: not kept
    "resunet-live-v8": _whole_frame_stage(LIVE_RECIPE, "resunet-live-v7", "resunet-live-v8", "25"),
    "resunet-denoise-v7": [
        _whole_frame_stage(QUALITY_RECIPE, "resunet-denoise-v6", "resunet-denoise-v7", "23"),
        _whole_frame_stage(QUALITY_RECIPE, "resunet-denoise-v7", "resunet-denoise-v7", "24"),
    ],
    # deconvolution: the paper's RLN (softplus) for one microscope (1.4 NA, 520 nm, 65 nm pixels);
    # flux_block=16 is set in the card after training (see AFTER_TRAINING)
    "rln-deconvolve-v1": [
        "--arch",
        "rln",
        "--task",
        "deconvolve",
        "--psf",
        "airy-na1.4",
        "--loss",
        "poisson",
        "--steps",
        "3000",
        "--epoch-steps",
        "250",
        "--batch",
        "16",
        "--patch",
        "64",
        "--lr",
        "0.005",
        "--lr-schedule",
        "cosine",
        "--peak-range",
        "1",
        "500",
        "--data",
        "sample",
        "--seed",
        "5",
        "--val-size",
        "24",
        "--threads",
        "1",
        "--id",
        "rln-deconvolve-v1",
    ],
}

# the deconvolution RLN trained on with the PSNR loss: the Poisson loss weighs each pixel by its
# inverse rate, so dim frames and bright ones pull unevenly; each patch's PSNR counts alike in dB
# (v1 with 1500 such steps at lr 2e-3: 30.12 dB on blurred real structure against 26.80, Richardson-
# Lucy at its best count per peak 27.22; 2026-12-07)
SHIPPED["rln-deconvolve-v2"] = _with(
    _from_model(
        SHIPPED["rln-deconvolve-v1"],
        "rln-deconvolve-v1",
        "rln-deconvolve-v2",
        steps="3000",
        lr="0.002",
        seed="6",
    ),
    {"--loss": "psnr"},
)

# Models whose weights are the mean of the weights of two or more runs from the same start (a "model
# soup", Wortsman et al. 2022: fine-tunings of one network, averaged, lie in one basin and the mean is
# usually better than each). SHIPPED holds the first run's stages; these are the other runs, each its
# own training written to runs/ID-memberN.pt; train() averages them into models/ID.pt before finish().
SOUP_MEMBERS: dict[str, list[list[str]]] = {
    # the v6 stage (4000 steps at 2e-4) averaged with a short run at 1e-4: on real structure 35.32 and
    # 35.32 dB alone, 35.35 dB averaged (2026-12-07), background counts kept by all three
    "resunet-denoise-v6": [
        [
            *_with(
                _from_model(
                    QUALITY_RECIPE,
                    "resunet-denoise-v5",
                    "resunet-denoise-v6-member2",
                    steps="800",
                    lr="0.0001",
                    seed="12",
                ),
                {"--loss": "psnr", "--epoch-steps": "200"},
            ),
            *BG_BIAS_TRAINING,
            *BF16_TRAINING,
        ]
    ],
}

EVAL_PEAKS_E = (2.0, 5.0, 10.0, 20.0, 50.0, 100.0, 300.0)
EVAL_FRAMES_PER_PEAK = 8
EVAL_SIZE = 128
EVAL_SEED = 2024


def stages(model_id: str) -> list[list[str]]:
    """The ``livedenoise train`` arguments of each stage of a shipped model (one for most)."""
    spec = SHIPPED[model_id]
    return [list(spec)] if all(isinstance(a, str) for a in spec) else [list(st) for st in spec]


def stage_commands(model_id: str) -> list[list[str]]:
    """The whole ``livedenoise train`` arguments of each stage, as :func:`train` runs them in order."""
    out = []
    for i, stage in enumerate(stages(model_id)):
        # a stage that starts from another model's weights (--init) is a new run: its own checkpoints
        ckpt = f"runs/{model_id}" if "--init" not in stage else f"runs/{model_id}-stage{i + 1}"
        out.append(["train", *stage, "--checkpoint-dir", ckpt, "-o", f"models/{model_id}.pt", "--force"])
    return out


def member_commands(model_id: str) -> list[list[str]]:
    """The whole ``livedenoise train`` arguments of each further run of a soup (:data:`SOUP_MEMBERS`)."""
    return [
        [
            "train",
            *run,
            "--checkpoint-dir",
            f"runs/{model_id}-member{i}",
            "-o",
            f"runs/{model_id}-member{i}.pt",
            "--force",
        ]
        for i, run in enumerate(SOUP_MEMBERS.get(model_id, []), start=2)
    ]


def train(model_id: str) -> None:
    from livedenoise.cli import main

    for args in stage_commands(model_id) + member_commands(model_id):
        rc = main(args)
        if rc:
            raise SystemExit(rc)
    if model_id in SOUP_MEMBERS:
        average_members(model_id)
    if model_id in AFTER_TRAINING:
        finish(model_id)


def average_members(model_id: str) -> None:
    """Set ``models/ID.pt`` to the mean of its weights and its soup members' (:data:`SOUP_MEMBERS`).

    The card stays the first run's, with ``training.soup`` (every run's whole command, in order) and
    the validation figures measured again on the first run's validation frames, for the mean and for
    each run.
    """
    from livedenoise.cli import build_parser
    from livedenoise.cli.train import train_config, worse_than
    from livedenoise.inference.modelio import load_model, save_model
    from livedenoise.training.train import _default_val, evaluate_psnr

    first = ROOT / "models" / f"{model_id}.pt"
    runs = [first] + [ROOT / cmd[cmd.index("-o") + 1] for cmd in member_commands(model_id)]
    loaded = [load_model(p) for p in runs]
    module, card = loaded[0]
    if "soup" in card.training:  # a second mean would weigh the first run's weights again
        raise SystemExit(
            f"{first} is already the mean of {len(card.training['soup']['runs'])} runs: run "
            f"`python tools/train_shipped.py train {model_id}` to train them and average them afresh"
        )
    for (_, c), p in zip(loaded[1:], runs[1:]):
        if (c.architecture, dict(c.arch_params)) != (card.architecture, dict(card.arch_params)):
            raise SystemExit(f"{p} is another network than {first}: its weights cannot be averaged")
    # the first run's validation frames (as train() draws them from its arguments)
    vx, vt, vr = _default_val(train_config(build_parser("train").parse_args(stage_commands(model_id)[-1])))

    def val(m) -> dict:
        ev = evaluate_psnr(m.eval(), vx, vt, vr)
        return {"psnr_db": round(ev["psnr_db"], 3), "raw_psnr_db": round(ev["raw_psnr_db"], 3)}

    each = [val(m)["psnr_db"] for m, _ in loaded]  # before the first run's module takes the mean
    states = [m.state_dict() for m, _ in loaded]  # the mean is made whole before it is loaded
    module.load_state_dict(
        {
            k: sum(st[k] for st in states) / len(states) if v.is_floating_point() else v
            for k, v in states[0].items()
        }
    )
    commands = [*stage_commands(model_id), *member_commands(model_id)]
    card.training["soup"] = {
        "method": f"the mean of the weights of {len(runs)} runs from the same start (a model soup)",
        "runs": [shlex.join(["livedenoise", *c]) for c in commands],
        "validation_psnr_db": each,
        "time_s": round(sum(float(c.training.get("time_s", 0.0)) for _, c in loaded), 1),
    }
    card.description = (card.description + " " if card.description else "") + (
        "The training fields are the first run's; training.soup lists every run."
    )
    v = card.quality.setdefault("validation", {})
    v.update({"frames": len(vx), **val(module)})
    v.pop("loss", None)  # the first run's best loss: not the mean's
    card.quality.pop("worse_than", None)
    worse = worse_than(card.quality)
    if worse:
        card.quality["worse_than"] = worse
        for w in worse:
            print(f"{model_id} (the mean): {w}", file=sys.stderr)
    card.description += f" Weights: the mean of {len(runs)} runs' (tools/train_shipped.py SOUP_MEMBERS)."
    save_model(module, card, first, weights_dtype=card.weights_dtype)


def finish(model_id: str) -> None:
    """Set the output stage of a trained model (:data:`AFTER_TRAINING`) in its card and save it again."""
    import torch

    from livedenoise.inference.modelio import load_model, save_model
    from livedenoise.inference.nets import build_network

    module, card = load_model(ROOT / "models" / f"{model_id}.pt")
    card.arch_params = {**card.arch_params, **AFTER_TRAINING[model_id]}
    net = build_network(card.architecture, **card.arch_params)
    net.load_state_dict(module.state_dict())  # the flux-keeping step has no weights of its own
    said = f"Output stage set after training: {AFTER_TRAINING[model_id]} (tools/train_shipped.py finish)."
    if said not in (card.description or ""):  # finish run again on a finished model says it once
        card.description = (card.description + " " if card.description else "") + said
    card.training["reproduce"] = f"python tools/train_shipped.py train {model_id}"
    if model_id in SOUP_MEMBERS:
        card.training["reproduce"] += " (trains every run of training.soup, then averages them)"
    runs = stage_commands(model_id)
    if len(runs) > 1:  # the card's command is the last stage's: record them all, runnable in order
        card.training["stages"] = [shlex.join(["livedenoise", *st]) for st in runs]
        card.training["reproduce"] += " (runs the stages in order)"
        own, last = f"models/{model_id}.pt", runs[-1]
        if "--init" in last and last[last.index("--init") + 1] == own:
            after = f"{own} after stage {len(runs) - 1} (the previous stage's output)"
            card.training["init"] = after
            start = card.quality.get("validation", {}).get("start")
            if isinstance(start, dict):
                start["model"] = after
    dtype = STORED_AS.get(model_id, card.weights_dtype)
    if dtype != card.weights_dtype:
        # the network as load_model will give it back: the weights rounded to the stored dtype
        rounded = build_network(card.architecture, **card.arch_params)
        rounded.load_state_dict(
            {
                k: v.to(getattr(torch, dtype)).float() if v.is_floating_point() else v
                for k, v in net.state_dict().items()
            }
        )
        card.description += f" Weights stored as {dtype} (tools/train_shipped.py STORED_AS)."
        card.quality[f"{dtype}_weights"] = {
            "held_out_mean_5_100_psnr_db": {
                "float32": measure_quality(net.eval())["mean_5_100_e"]["psnr_db"],
                dtype: measure_quality(rounded.eval())["mean_5_100_e"]["psnr_db"],
            }
        }
    save_model(net, card, ROOT / "models" / f"{model_id}.pt", weights_dtype=dtype)


def measure_quality(module, task: str = "denoise") -> dict:
    import numpy as np

    from livedenoise.imaging.synthetic import make_eval_set
    from livedenoise.training.train import evaluate_psnr

    per_peak = {}
    for i, peak in enumerate(EVAL_PEAKS_E):
        x, t, _ = make_eval_set(EVAL_FRAMES_PER_PEAK, EVAL_SIZE, (peak, peak), task, seed=EVAL_SEED + i)
        ev = evaluate_psnr(module, x, t)
        per_peak[f"{peak:g}"] = {
            "raw_psnr_db": round(ev["raw_psnr_db"], 2),
            "psnr_db": round(ev["psnr_db"], 2),
        }
    band = [v for k, v in per_peak.items() if 5 <= float(k) <= 100]
    return {
        "set": (
            f"held-out synthetic (livedenoise.imaging.synthetic.make_eval_set, held_out mix, seed {EVAL_SEED}+i), "
            f"{EVAL_FRAMES_PER_PEAK} frames of {EVAL_SIZE}x{EVAL_SIZE} per peak level; "
            "PSNR vs the noise-free expected image, data range = max - min"
        ),
        "per_peak_e": per_peak,
        "mean_5_100_e": {
            "raw_psnr_db": round(float(np.mean([v["raw_psnr_db"] for v in band])), 2),
            "psnr_db": round(float(np.mean([v["psnr_db"] for v in band])), 2),
        },
    }


def measure_speed(model_path: str, size: int = 512, repeats: int = 20) -> dict:
    """Median and fastest time per frame of the CPU engine, fp32 and bf16, 2 and 1 threads.

    Timed by :func:`livedenoise.app.bench.bench_engine`, the harness behind ``livedenoise bench``.
    """
    from livedenoise.app.bench import bench_engine
    from livedenoise.inference.engines.torch_cpu import TorchCPUEngine

    out: dict = {"frame": f"{size}x{size}"}
    for threads in (2, 1):
        for precision in ("fp32", "bf16"):
            eng = TorchCPUEngine(model_path, precision=precision, threads=threads)
            try:
                r = bench_engine(eng, (size, size), repeats, warmup=3)
            finally:
                eng.close()
            desc = r["engine"]
            if precision == "bf16" and desc["precision"] != "bf16":
                out["bf16"] = f"not used: {desc['precision_reason']}"
                continue
            key = f"{precision}_{threads}t"
            out[f"{key}_ms_median"] = round(r["latency_ms_p50"], 1)
            out[f"{key}_ms_min"] = round(r["latency_ms_min"], 1)
            if precision == "bf16":
                out["bf16_validation"] = desc["precision_reason"]
    from livedenoise.util.cpu import cpu_flags, cpu_model

    load = os.getloadavg()
    amx = "with AMX" if "amx_bf16" in cpu_flags() else "without AMX"
    out["machine"] = (
        f"{cpu_model()} ({platform.machine()}, {amx}), {os.cpu_count()} cores, shared with other "
        f"jobs (load average {load[0]:.1f}) at {time.strftime('%Y-%m-%d %H:%M')}"
    )
    return out


def measure(model_id: str, quality: bool = True) -> None:
    from livedenoise.inference.modelio import load_model, save_model

    module, card = load_model(ROOT / "models" / f"{model_id}.pt")
    if quality and card.task == "denoise":
        card.quality["held_out"] = measure_quality(module)
    card.speed = measure_speed(str(ROOT / "models" / f"{model_id}.pt"))
    save_model(module, card, ROOT / "models" / f"{model_id}.pt", weights_dtype=card.weights_dtype)
    q = card.quality.get("held_out", {}).get("mean_5_100_e", {})
    print(
        f"{model_id}: held-out 5-100 e- mean PSNR {q.get('psnr_db')} dB (raw {q.get('raw_psnr_db')} dB); "
        f"speed {card.speed}"
    )


def _r(v, nd: int = 2):
    return None if v is None else round(float(v), nd)


def measure_real(ids: list[str], figure: str | None = None) -> None:
    """Real-structure figures of the shipped models into their cards (see the module docstring)."""
    from livedenoise.inference.modelio import load_model, save_model
    from livedenoise.training.baselines import available_baselines
    from livedenoise.training.evaluate_deconv import RealDeconvConfig, evaluate_real_deconv
    from livedenoise.training.evaluate_real import (
        RealEvalConfig,
        evaluate_real,
        format_real_markdown,
    )
    from livedenoise.training.real_figure import write_real_figure

    cards = {m: load_model(ROOT / "models" / f"{m}.pt") for m in ids}
    denoise = [m for m in ids if cards[m][1].task == "denoise"]
    results: dict[str, dict] = {}
    if denoise:
        avail = available_baselines("denoise")
        baselines = [b for b in ("tv", "gat-nlm", "gat-bm3d") if avail[b][0]]
        paths = [str(ROOT / "models" / f"{m}.pt") for m in denoise]
        # the cards' figures in fp32 on every machine (bf16, where a machine's cached probe chose it,
        # moves them by ~0.05 dB)
        cfg = RealEvalConfig(models=paths, baselines=baselines, engine_options={"precision": "fp32"})
        rep = evaluate_real(cfg, progress=True)
        print(format_real_markdown(rep))
        if figure:
            write_real_figure(rep, figure)
            print(f"wrote {figure}")
        date = time.strftime("%Y-%m-%d")
        for m in denoise:
            s = rep["summary"][m]
            results[m] = {
                "real": {
                    "set": (
                        f"livedenoise evaluate --real: {len(rep['frames'])} frames of 256x256 (7 real crops x "
                        "peaks 2,5,20,100,500 e- x backgrounds 0,1,3,10,30 e-, PSFs gauss-0.8, airy-na1.4, "
                        f"airy-na0.75), seed 0, {date}"
                    ),
                    "psnr_db": _r(s["psnr"]),
                    "per_peak_psnr_db": {k: _r(v["psnr"]) for k, v in rep["by_peak"][m].items()},
                    "per_background_psnr_db": {k: _r(v["psnr"]) for k, v in rep["by_background"][m].items()},
                    "max_abs_flux_bias_pct": _r(100 * s["max_abs_bias_rel"]),
                    "background_bias_e_per_background": {
                        k: _r(v["bg_bias_e"], 3) for k, v in rep["by_background"][m].items()
                    },
                    "counts_kept_pct": _r(100 * s["kept"], 0),
                    "levels_not_kept": s["levels_not_kept"],
                    "baselines_psnr_db": {b: _r(rep["summary"][b]["psnr"]) for b in baselines},
                    "ms_per_256_frame": _r(rep["ms_per_frame"][m], 1),
                }
            }
    for m in ids:
        module, card = cards[m]
        if card.task == "deconvolve":
            rep = evaluate_real_deconv(
                RealDeconvConfig(
                    model=str(ROOT / "models" / f"{m}.pt"), engine_options={"precision": "fp32"}
                ),
                progress=True,
            )
            results[m] = {
                "real_deconvolution": {
                    "set": f"livedenoise evaluate --real --task deconvolve: {len(rep['frames'])} frames of 256x256, "
                    f"blurred by {rep['psf']['name']}, truth seen through a Gaussian of sigma "
                    f"{rep['psf']['target_sigma_px']:.2f} px, seed 0, {time.strftime('%Y-%m-%d')}",
                    "psnr_db": _r(rep["summary"][rep["model"]]),
                    "richardson_lucy_best_psnr_db": _r(rep["summary"]["rl-best"]),
                    "richardson_lucy_best_iterations": rep["rl_best_iterations"],
                    "gain_over_richardson_lucy_db": _r(rep["gain_db"]),
                    "richardson_lucy_best_single_count": rep["rl_best_single"],
                    "richardson_lucy_best_single_psnr_db": _r(rep["summary"][f"rl-{rep['rl_best_single']}"]),
                    "per_peak_psnr_db": {k: _r(v) for k, v in rep["by_peak"][rep["model"]].items()},
                    "raw_psnr_db": _r(rep["summary"]["raw"]),
                }
            }
        if m in results:
            card.quality.update(results[m])
            save_model(module, card, ROOT / "models" / f"{m}.pt", weights_dtype=card.weights_dtype)
            print(f"{m}: {results[m]}")


TABLE_BEGIN = "<!-- model-table: generated by `python tools/train_shipped.py table` from models/*.json -->"
TABLE_END = "<!-- /model-table -->"


def _network(card) -> str:
    p = card.arch_params
    if card.architecture == "resunet":
        r = int(p.get("unshuffle", 1))
        ch = "-".join(str(c) for c in p.get("channels", (32, 64, 128)))
        front = f", {r}× pixel-unshuffle" if r > 1 else ""
        return f"RESUNET {ch}{front}"
    act = p.get("activation", "softplus")
    return "RLN, ReLU hidden layers" if act == "relu" else "RLN, softplus (as in the paper)"


def model_table() -> str:
    """The README's model table, from the cards in models/ alone."""
    from livedenoise.inference.modelio import DEFAULT_MODEL, QUALITY_MODEL, list_models

    cards = [c for c in list_models() if c.path and Path(c.path).resolve().parent == ROOT / "models"]
    order = {DEFAULT_MODEL: 0, QUALITY_MODEL: 1}
    cards.sort(key=lambda c: (order.get(c.id, 2), c.task != "denoise", c.id))
    rows = [
        "| model | task, network | parameters | real structures: mean PSNR (GAT+BM3D on the same frames) "
        "| photon counts kept (whole frames and background regions, every level) "
        "| 512² on a 2-core CPU (engine p50, 2 threads; hosts differ) | reproduce |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for c in cards:
        role = {DEFAULT_MODEL: " (live default on the CPU)", QUALITY_MODEL: " (quality)"}.get(c.id, "")
        real, dec = c.quality.get("real"), c.quality.get("real_deconvolution")
        if real:
            ref = real.get("baselines_psnr_db", {}).get("gat-bm3d")
            quality = f"{real['psnr_db']:.2f} dB" + (f" ({ref:.2f} dB)" if ref is not None else "")
            bad = real.get("levels_not_kept", [])
            kept = "yes, at every peak and background" if not bad else "no: " + ", ".join(bad)
        elif dec:
            quality = (
                f"deconvolution: {dec['psnr_db']:.2f} dB, {dec['gain_over_richardson_lucy_db']:+.2f} dB over "
                f"Richardson–Lucy at its best count per peak ({dec['richardson_lucy_best_psnr_db']:.2f} dB)"
            )
            kept = "–"
        else:
            quality, kept = "not measured", "–"
        sp = c.speed or {}
        ms = {
            prec: sp[f"{prec}_2t_ms_median"]
            for prec in ("fp32", "bf16")
            if isinstance(sp.get(f"{prec}_2t_ms_median"), (int, float))
        }
        best = min(ms, key=ms.__getitem__) if ms else None
        amx = " (AMX)" if "with AMX" in str(sp.get("machine", "")) else ""
        speed = f"{ms[best]:.0f} ms, {best}{amx}" if best else "–"
        psf = c.training.get("psf")
        task = f"{c.task} ({psf['name']})" if isinstance(psf, dict) else c.task
        n = c.parameters
        params = f"{n / 1e6:.2f}M" if n >= 1e6 else f"{n / 1e3:.0f}k" if n >= 1e4 else f"{n / 1e3:.1f}k"
        rows.append(
            f"| `{c.id}`{role} | {task}, {_network(c)} | {params} | {quality} | {kept} | {speed} "
            f"| `python tools/train_shipped.py train {c.id}` |"
        )
    return "\n".join(rows)


def write_table(check: bool) -> int:
    readme = ROOT / "README.md"
    text = readme.read_text(encoding="utf-8")
    if TABLE_BEGIN not in text or TABLE_END not in text:
        print(f"README.md lacks the markers {TABLE_BEGIN!r} ... {TABLE_END!r}", file=sys.stderr)
        return 1
    head, rest = text.split(TABLE_BEGIN, 1)
    _, tail = rest.split(TABLE_END, 1)
    new = f"{head}{TABLE_BEGIN}\n{model_table()}\n{TABLE_END}{tail}"
    if check:
        if new != text:
            print("README.md's model table differs from the cards: run `python tools/train_shipped.py table`")
            return 1
        return 0
    readme.write_text(new, encoding="utf-8")
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument(
        "action",
        choices=("train", "measure", "speed", "all", "real", "table"),
        help="speed: re-measure only the speed (e.g. on a quiet machine)",
    )
    p.add_argument("models", nargs="*", help=f"model ids (default: all of {', '.join(SHIPPED)})")
    p.add_argument("--check", action="store_true", help="table: only check that the README is current")
    p.add_argument("--figure", help="real: also write the evaluation's figure (PNG) here")
    a = p.parse_args(argv)
    os.chdir(ROOT)
    if a.action == "table":
        return write_table(a.check)
    ids = a.models or list(SHIPPED)
    unknown = [m for m in ids if m not in SHIPPED]
    if unknown:
        p.error(f"unknown model ids {unknown}; shipped: {', '.join(SHIPPED)}")
    if a.action in ("measure", "speed", "real"):
        absent = [m for m in ids if not (ROOT / "models" / f"{m}.pt").is_file()]
        if absent and a.models:
            p.error(f"not trained here yet (no models/ID.pt): {', '.join(absent)}; `train` them first")
        ids = [m for m in ids if m not in absent]  # all of SHIPPED: the ones that are here
    if a.action == "real":
        measure_real(ids, a.figure)
        return 0
    for m in ids:
        if a.action in ("train", "all"):
            train(m)
        if a.action in ("measure", "all"):
            measure(m)
        elif a.action == "speed":
            measure(m, quality=False)
    return 0


if __name__ == "__main__":
    sys.exit(main())
