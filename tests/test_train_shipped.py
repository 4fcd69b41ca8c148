"""tools/train_shipped.py: what ``finish`` writes into the card of a model trained in stages."""

from __future__ import annotations

import importlib.util
import shlex
from pathlib import Path

import pytest

from livedenoise.inference.modelio import ModelCard, load_model, save_model
from livedenoise.inference.nets import build_network

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def tool(tmp_path, monkeypatch):
    spec = importlib.util.spec_from_file_location("train_shipped", ROOT / "tools" / "train_shipped.py")
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    monkeypatch.setattr(mod, "ROOT", tmp_path)
    (tmp_path / "models").mkdir()
    return mod


def _trained(tmp_path: Path, model_id: str) -> None:
    """A model as ``livedenoise train`` leaves it, before ``finish``."""
    card = ModelCard(
        id=model_id,
        architecture="rln",
        training={"command": "livedenoise train --arch rln", "init": f"models/{model_id}.pt"},
        quality={
            "validation": {"psnr_db": 20.0, "start": {"model": f"models/{model_id}.pt", "psnr_db": 19.0}}
        },
    )
    save_model(build_network("rln"), card, tmp_path / "models" / f"{model_id}.pt")


STAGE = ["--arch", "rln", "--task", "denoise", "--steps", "4"]


def test_finish_records_every_stage_as_it_runs_and_the_previous_stages_output(tool, tmp_path, monkeypatch):
    monkeypatch.setitem(
        tool.SHIPPED, "two", [[*STAGE, "--init", "models/one.pt"], [*STAGE, "--init", "models/two.pt"]]
    )
    monkeypatch.setitem(tool.AFTER_TRAINING, "two", {"flux_block": 16})
    _trained(tmp_path, "two")
    tool.finish("two")
    tool.finish("two")  # run again: says the same once
    _, card = load_model(tmp_path / "models" / "two.pt")
    stages = card.training["stages"]
    # each stage whole, runnable in order: the arguments train() gives the CLI, output and checkpoints included
    assert [shlex.split(st)[1:] for st in stages] == tool.stage_commands("two")
    assert all(st.startswith("livedenoise train ") and "-o models/two.pt" in st for st in stages)
    assert "--checkpoint-dir runs/two-stage2" in stages[1]
    after = "models/two.pt after stage 1 (the previous stage's output)"
    assert card.training["init"] == after and card.quality["validation"]["start"]["model"] == after
    assert card.training["reproduce"] == "python tools/train_shipped.py train two (runs the stages in order)"
    assert card.description.count("Output stage set after training") == 1
    assert card.arch_params["flux_block"] == 16


def test_finish_leaves_a_one_stage_card_without_stages(tool, tmp_path, monkeypatch):
    monkeypatch.setitem(tool.SHIPPED, "one", [*STAGE, "--init", "models/zero.pt"])
    monkeypatch.setitem(tool.AFTER_TRAINING, "one", {"flux_block": 16})
    _trained(tmp_path, "one")
    tool.finish("one")
    _, card = load_model(tmp_path / "models" / "one.pt")
    assert "stages" not in card.training
    assert card.training["init"] == "models/one.pt"  # as train wrote it
    assert card.training["reproduce"] == "python tools/train_shipped.py train one"


def test_a_soup_is_the_mean_of_its_runs_weights_with_every_run_recorded(tool, tmp_path, monkeypatch):
    import torch

    run = [*STAGE, "--val-size", "2"]
    monkeypatch.setitem(tool.SHIPPED, "s", run)
    monkeypatch.setitem(tool.SOUP_MEMBERS, "s", [[*run, "--seed", "5"]])
    monkeypatch.setitem(tool.AFTER_TRAINING, "s", {"flux_block": 16})
    _trained(tmp_path, "s")
    (tmp_path / "runs").mkdir()
    torch.manual_seed(1)
    other = build_network("rln")
    save_model(other, ModelCard(id="s-member2", architecture="rln"), tmp_path / "runs" / "s-member2.pt")
    first, _ = load_model(tmp_path / "models" / "s.pt")
    expected = {
        k: (v + other.state_dict()[k]) / 2 if v.is_floating_point() else v
        for k, v in first.state_dict().items()
    }
    tool.average_members("s")
    averaged, _ = load_model(tmp_path / "models" / "s.pt")  # as measured: before finish sets flux_block
    tool.finish("s")
    module, card = load_model(tmp_path / "models" / "s.pt")
    for k, v in module.state_dict().items():
        assert torch.allclose(v, expected[k], atol=1e-6) and v.dtype == expected[k].dtype, k
    soup = card.training["soup"]
    assert [shlex.split(r)[1:] for r in soup["runs"]] == tool.stage_commands("s") + tool.member_commands("s")
    assert "-o runs/s-member2.pt" in soup["runs"][1] and len(soup["validation_psnr_db"]) == 2
    # the validation figures are the mean's, on the first run's frames (its seed, not the member's)
    from livedenoise.cli import build_parser
    from livedenoise.cli.train import train_config
    from livedenoise.training.train import _default_val, evaluate_psnr

    vx, vt, vr = _default_val(train_config(build_parser("train").parse_args(tool.stage_commands("s")[0])))
    v = card.quality["validation"]
    assert v["frames"] == 2 and "loss" not in v
    assert v["psnr_db"] == round(evaluate_psnr(averaged.eval(), vx, vt, vr)["psnr_db"], 3)
    assert soup["validation_psnr_db"][1] == round(evaluate_psnr(other.eval(), vx, vt, vr)["psnr_db"], 3)
    assert soup["time_s"] == 0.0  # neither stand-in run recorded a training time
    # averaging again would weigh the first run twice: refused, saying how to start afresh
    with pytest.raises(SystemExit, match="already the mean of 2 runs"):
        tool.average_members("s")
    assert card.description.count("the mean of 2 runs") == 1
    assert card.training["reproduce"].endswith("(trains every run of training.soup, then averages them)")


def test_a_soup_refuses_runs_of_another_network(tool, tmp_path, monkeypatch):
    monkeypatch.setitem(tool.SHIPPED, "s", [*STAGE, "--val-size", "2"])
    monkeypatch.setitem(tool.SOUP_MEMBERS, "s", [[*STAGE, "--seed", "5"]])
    _trained(tmp_path, "s")
    (tmp_path / "runs").mkdir()
    save_model(
        build_network("rln", activation="relu"),
        ModelCard(id="x", architecture="rln", arch_params={"activation": "relu"}),
        tmp_path / "runs" / "s-member2.pt",
    )
    with pytest.raises(SystemExit, match="another network"):
        tool.average_members("s")
