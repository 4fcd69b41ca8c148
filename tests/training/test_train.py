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
    net = build_network(cfg.architecture, **cfg.arch_params).eval()
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


def test_a_run_in_stages_keeps_the_schedule_of_its_steps(tmp_path):
    from livedenoise.training.train import lr_at

    cfg = _tiny(steps=9, epoch_steps=3, stop_after=6, checkpoint_dir=str(tmp_path))
    _, card, h1 = train(cfg, progress=False)
    assert [h["step"] for h in h1] == [3, 6]
    assert h1[-1]["lr"] == pytest.approx(lr_at(cfg, 5))  # the 9-step schedule, not a 6-step one
    _, _, h2 = train(_tiny(steps=9, epoch_steps=3, checkpoint_dir=str(tmp_path), resume=True), progress=False)
    assert [h["step"] for h in h2] == [3, 6, 9]
    with pytest.raises(ValueError, match="stop_after"):
        _tiny(steps=9, stop_after=10)


def test_resume_with_another_loss_is_refused(tmp_path):
    """A best loss on another scale (the PSNR loss is about -35) would never be beaten: refused."""
    train(_tiny(steps=6, epoch_steps=3, checkpoint_dir=str(tmp_path), loss="psnr"), progress=False)
    with pytest.raises(ValueError, match="trained with --loss psnr, not poisson"):
        train(_tiny(steps=9, epoch_steps=3, checkpoint_dir=str(tmp_path), resume=True), progress=False)
    _, card, h = train(
        _tiny(steps=9, epoch_steps=3, checkpoint_dir=str(tmp_path), resume=True, loss="psnr"), progress=False
    )
    assert [r["step"] for r in h] == [3, 6, 9] and card.training["grad_clip"] == 1.0


def test_resume_on_other_validation_frames_measures_the_best_afresh(tmp_path, caplog):
    """A best loss measured on other validation frames is not compared with the new frames' losses."""
    import torch

    train(_tiny(steps=6, epoch_steps=3, checkpoint_dir=str(tmp_path)), progress=False)
    ck = torch.load(tmp_path / "last.pt", weights_only=True)
    ck["best_loss"] = -1.0  # a best no loss on any frames can beat
    torch.save(ck, tmp_path / "last.pt")
    same = _tiny(steps=9, epoch_steps=3, checkpoint_dir=str(tmp_path), resume=True)
    _, card, _ = train(same, progress=False)
    assert card.training["best_step"] == 6  # same frames: the checkpoint's best stands
    ck["best_loss"] = -1.0
    torch.save(ck, tmp_path / "last.pt")
    other = _tiny(steps=9, epoch_steps=3, checkpoint_dir=str(tmp_path), resume=True, val_size=5)
    with caplog.at_level("WARNING", logger="livedenoise"):
        _, card, _ = train(other, progress=False)
    assert "validation set changed" in caplog.text
    assert card.training["best_step"] >= 6 and card.quality["validation"]["frames"] == 5


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


_TINY = [
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
]


def test_cli_train_refuses_to_overwrite_without_force(tmp_path, capsys):
    from livedenoise.cli import main

    out = tmp_path / "m.pt"
    out.write_bytes(b"a model someone needs")
    assert main(["train", "--arch", "rln", *_TINY, "-o", str(out)]) == 2
    err = capsys.readouterr().err
    assert "already exist" in err and "--force" in err
    assert out.read_bytes() == b"a model someone needs"
    card_only = tmp_path / "c.json"
    card_only.write_text("{}")
    assert main(["train", "--arch", "rln", *_TINY, "-o", str(tmp_path / "c.pt")]) == 2
    assert main(["train", "--pairs", str(tmp_path), "-o", str(out)]) == 2  # fine-tuning too
    assert out.read_bytes() == b"a model someone needs"


def test_cli_train_records_where_it_started(tmp_path):
    from livedenoise.cli import main
    from livedenoise.inference.modelio import load_model

    out = tmp_path / "from-v2.pt"
    rc = main(
        [
            "train",
            "--arch",
            "rln",
            "--arch-param",
            "activation=relu",
            "--init",
            "rln-denoise-v2",
            *_TINY,
            "-o",
            str(out),
        ]
    )
    assert rc in (0, 1)
    _, card = load_model(out if out.exists() else tmp_path / "from-v2.worse.pt")
    start = card.quality["validation"]["start"]
    assert start["model"] == "rln-denoise-v2" and start["psnr_db"] > card.quality["validation"]["raw_psnr_db"]


def test_a_worse_model_warns_and_does_not_replace_a_named_one(tmp_path, monkeypatch, capsys):
    import torch

    import livedenoise.cli.train as train_mod  # the command calls the name it imported
    from livedenoise.cli import main
    from livedenoise.inference.modelio import ModelCard, load_model, save_model
    from livedenoise.inference.nets import build_network

    torch.manual_seed(0)
    named = tmp_path / "lab-model.pt"
    save_model(build_network("rln"), ModelCard(id="lab-model", architecture="rln"), named)
    before = named.read_bytes()

    def worse_training(config, progress=True):
        card = ModelCard(
            id=config.model_id,
            architecture="rln",
            training={"time_s": 1.0},
            quality={
                "validation": {"psnr_db": 20.0, "raw_psnr_db": 22.0, "start": {"model": "x", "psnr_db": 28.0}}
            },
        )
        return build_network("rln"), card, []

    monkeypatch.setattr(train_mod, "train", worse_training)
    rc = main(["train", "--arch", "rln", *_TINY, "--force", "-o", str(named)])
    err = capsys.readouterr().err
    assert rc == 1
    assert (
        "warning: the new model is worse: validation PSNR 20.00 dB is below its starting model x (28.00 dB)"
        in err
    )
    assert "below the raw frames' 22.00 dB" in err and "was NOT replaced" in err and "--accept-worse" in err
    assert named.read_bytes() == before  # the named model stays
    _, aside = load_model(tmp_path / "lab-model.worse.pt")
    assert len(aside.quality["worse_than"]) == 2
    # a new file is written (with the warning), and --accept-worse replaces on purpose
    assert main(["train", "--arch", "rln", *_TINY, "-o", str(tmp_path / "new.pt")]) == 0
    assert "worse" in capsys.readouterr().err and (tmp_path / "new.pt").exists()
    assert main(["train", "--arch", "rln", *_TINY, "--force", "--accept-worse", "-o", str(named)]) == 0
    assert named.read_bytes() != before


def test_an_init_model_takes_a_new_output_stage_and_refuses_other_changes():
    module, card, _ = train(
        _tiny(init="rln-denoise-v2", arch_params={"flux_block": 8}, steps=2, epoch_steps=2), progress=False
    )
    assert card.arch_params["flux_block"] == 8 and module.flux_block == 8
    assert card.arch_params["activation"] == "relu"  # the rest is the init model's
    with pytest.raises(ValueError, match="activation='softplus' cannot change the --init model"):
        train(
            _tiny(init="rln-denoise-v2", arch_params={"activation": "softplus"}, steps=2, epoch_steps=2),
            progress=False,
        )


def test_prefetch_gives_the_same_items_in_order_and_raises_the_sources_errors():
    from livedenoise.training.train import Prefetch

    p = Prefetch(iter(range(50)), 3)
    assert list(p) == list(range(50))
    with pytest.raises(StopIteration):  # and again after the end, never a hang
        next(p)
    p.close()

    def broken():
        yield 1
        raise OSError("disk gone")

    p = Prefetch(broken(), 2)
    assert next(p) == 1
    for _ in range(2):  # every later next() raises it again
        with pytest.raises(OSError, match="disk gone"):
            next(p)
    p.close()
    endless = Prefetch(itertools.count(), 2)  # a producer blocked on a full queue stops on close
    assert next(endless) == 0
    endless.close()
    assert not endless._thread.is_alive()
    with pytest.raises(StopIteration):  # nothing made ahead is handed out after close
        next(endless)
    with pytest.raises(ValueError, match="depth"):
        Prefetch(iter(()), 0)


def test_prefetched_data_trains_exactly_as_without(monkeypatch):
    import torch

    from livedenoise.training import train as train_module

    made = []
    real = train_module.Prefetch

    def counting(it, depth):
        made.append(depth)
        return real(it, depth)

    monkeypatch.setattr(train_module, "Prefetch", counting)
    a, _, ha = train(_tiny(steps=4, epoch_steps=4), progress=False)
    assert made == []
    b, card, hb = train(_tiny(steps=4, epoch_steps=4, prefetch=2), progress=False)
    assert made == [2]  # the batches did come through the prefetching thread
    assert card.training["prefetch"] == 2 and card.training["precision"] == "fp32"
    assert [h["val_loss"] for h in ha] == [h["val_loss"] for h in hb]
    for (k, va), vb in zip(a.state_dict().items(), b.state_dict().values()):
        assert torch.equal(va, vb), k


@pytest.mark.parametrize("arch", ["rln", "resunet"])
def test_bf16_training_keeps_float32_weights_and_learns(arch):
    import torch

    kw = {"arch_params": {"channels": [8, 16]}} if arch == "resunet" else {}
    cfg = _tiny(architecture=arch, precision="bf16", steps=20, epoch_steps=10, **kw)
    module, card, history = train(cfg, progress=False)
    assert card.training["precision"] == "bf16" and card.training["host"]["cpu"]
    assert all(p.dtype == torch.float32 for p in module.parameters())
    fp32, _, _ = train(_tiny(architecture=arch, steps=20, epoch_steps=10, **kw), progress=False)
    differ = [not torch.equal(a, b) for a, b in zip(module.state_dict().values(), fp32.state_dict().values())]
    assert any(differ)  # the same run in bfloat16 is another computation (autocast was on)
    assert history[-1]["val_loss"] < 0.7 * _untrained_val_loss(cfg)


def test_training_precision_and_prefetch_are_checked():
    with pytest.raises(ValueError, match="precision"):
        TrainConfig(precision="fp16")
    with pytest.raises(ValueError, match="prefetch"):
        TrainConfig(prefetch=-1)


SHORT_RUN = ["--steps", "2", "--epoch-steps", "2", "--batch", "2", "--patch", "32", "--val-size", "2"]


def _cli_train(out, *options: str) -> int:
    """``livedenoise train`` of a tiny RLN run with ``options``, written to ``out``; its exit code."""
    from livedenoise.cli import main

    return main(["train", "--arch", "rln", *options, *SHORT_RUN, "--no-progress", "-o", str(out)])


def test_cli_train_records_bf16_and_prefetch_and_refuses_them_for_pairs(tmp_path, capsys):
    from livedenoise.cli import main
    from livedenoise.inference.modelio import load_model

    out = tmp_path / "bf.pt"
    rc = _cli_train(out, "--precision", "bf16", "--prefetch", "2")
    assert rc == 0
    _, card = load_model(out)
    assert "--precision bf16 --prefetch 2" in card.training["command"]
    assert card.training["precision"] == "bf16" and card.training["prefetch"] == 2
    rc = main(["train", "--pairs", str(tmp_path), "--precision", "bf16", "-o", str(tmp_path / "p.pt")])
    assert rc != 0
    assert "--precision and --prefetch apply to training on synthetic data" in capsys.readouterr().err


def test_cli_train_with_the_psnr_loss_records_it_and_refuses_it_for_pairs(tmp_path, capsys):
    from livedenoise.cli import main
    from livedenoise.inference.modelio import load_model

    out = tmp_path / "psnr.pt"
    rc = _cli_train(out, "--loss", "psnr")
    assert rc == 0
    _, card = load_model(out)
    assert card.training["loss"] == "psnr" and "--loss psnr" in card.training["command"]
    # the validation loss is minus the validation frames' mean PSNR
    val = card.quality["validation"]
    assert val["loss"] == pytest.approx(-val["psnr_db"], abs=0.01)
    for mode in (["--pairs", str(tmp_path)], ["--self-supervised", str(tmp_path / "f.tif")]):
        rc = main(["train", *mode, "--loss", "psnr", "-o", str(tmp_path / "p.pt")])
        assert rc != 0
        assert "--loss psnr applies to training on synthetic data" in capsys.readouterr().err


@pytest.mark.parametrize("key", ["bg_bias_weight", "dark_bias_weight"])
@pytest.mark.parametrize("bad", [-1.0, float("nan"), float("inf")])
def test_bias_weights_must_be_finite_and_not_negative(key, bad):
    with pytest.raises(ValueError, match=f"{key} must be a finite number >= 0"):
        TrainConfig(**{key: bad})


def test_background_bias_weight_is_recorded_and_kept_on_resume(tmp_path):
    _, card, _ = train(
        _tiny(steps=6, epoch_steps=3, checkpoint_dir=str(tmp_path), bg_bias_weight=30.0), progress=False
    )
    assert card.training["bg_bias_weight"] == 30.0
    # the validation loss includes the term (a best loss on another scale): resuming without it is refused
    with pytest.raises(ValueError, match="trained with --bg-bias-weight 30, not 0"):
        train(_tiny(steps=9, epoch_steps=3, checkpoint_dir=str(tmp_path), resume=True), progress=False)
    _, card, h = train(
        _tiny(steps=9, epoch_steps=3, checkpoint_dir=str(tmp_path), resume=True, bg_bias_weight=30.0),
        progress=False,
    )
    assert [r["step"] for r in h] == [3, 6, 9]
    _, card0, _ = train(_tiny(steps=3, epoch_steps=3), progress=False)
    assert "bg_bias_weight" not in card0.training  # off: cards as before
    # the validation loss holds the term: the same starting model scores higher with it
    from livedenoise.inference.modelio import save_model

    save_model(*train(_tiny(steps=3, epoch_steps=3), progress=False)[:2], tmp_path / "start.pt")
    start = [
        train(
            _tiny(steps=3, epoch_steps=3, init=str(tmp_path / "start.pt"), bg_bias_weight=w), progress=False
        )[1].quality["validation"]["start"]["loss"]
        for w in (0.0, 1e4)
    ]
    assert start[1] > start[0]


def test_cli_train_with_a_background_bias_weight_records_it_and_refuses_it_for_pairs(tmp_path, capsys):
    from livedenoise.cli import main
    from livedenoise.inference.modelio import load_model

    out = tmp_path / "bg.pt"
    rc = _cli_train(out, "--loss", "psnr", "--bg-bias-weight", "30")
    assert rc == 0
    _, card = load_model(out)
    assert (
        card.training["bg_bias_weight"] == 30.0
        and "--loss psnr --bg-bias-weight 30 " in card.training["command"]
    )
    for mode in (["--pairs", str(tmp_path)], ["--self-supervised", str(tmp_path / "f.tif")]):
        rc = main(["train", *mode, "--bg-bias-weight", "30", "-o", str(tmp_path / "p.pt")])
        assert rc != 0
        assert "--bg-bias-weight needs noise-free targets" in capsys.readouterr().err
    rc = _cli_train(tmp_path / "n.pt", "--bg-bias-weight", "-2")
    assert rc != 0 and "--bg-bias-weight must be a finite number >= 0" in capsys.readouterr().err
    assert not (tmp_path / "n.pt").exists()


def test_dark_bias_weight_is_recorded_and_kept_on_resume(tmp_path):
    _, card, _ = train(
        _tiny(steps=4, epoch_steps=2, checkpoint_dir=str(tmp_path), dark_bias_weight=1000.0), progress=False
    )
    assert card.training["dark_bias_weight"] == 1000.0 and card.training["dark_bias_background_e"] == 1.0
    with pytest.raises(ValueError, match="trained with --dark-bias-weight 1000, not 0"):
        train(_tiny(steps=6, epoch_steps=2, checkpoint_dir=str(tmp_path), resume=True), progress=False)
    assert "dark_bias_weight" not in train(_tiny(steps=2, epoch_steps=2), progress=False)[1].training


def test_keep_last_outputs_the_final_steps_weights_not_the_best_epochs(tmp_path):
    """A checkpoint whose best no later epoch can beat, resumed to the end: with the default the output is
    that best epoch's weights, with keep="last" the final step's, and the card's figures are the output's."""
    import shutil

    import torch

    with pytest.raises(ValueError, match="unknown keep"):
        TrainConfig(keep="first")
    train(_tiny(steps=4, epoch_steps=2, checkpoint_dir=str(tmp_path / "start")), progress=False)
    ck = torch.load(tmp_path / "start" / "last.pt", weights_only=True)
    ck["best_loss"] = -1e9  # step 4's weights stay the best
    torch.save(ck, tmp_path / "start" / "last.pt")
    out = {}
    for keep in ("best", "last"):
        shutil.copytree(tmp_path / "start", tmp_path / keep)
        cfg = _tiny(steps=6, epoch_steps=2, keep=keep, checkpoint_dir=str(tmp_path / keep), resume=True)
        module, card, hist = train(cfg, progress=False)
        final = torch.load(tmp_path / keep / "last.pt", weights_only=True)["model"]
        out[keep] = (module.state_dict(), card, hist, final)
    weights, card, _, final = out["best"]
    assert card.training["best_step"] == 4 and "kept" not in card.training
    assert all(torch.equal(weights[k], ck["best_model"][k].cpu()) for k in weights)
    assert any(not torch.equal(weights[k], final[k].cpu()) for k in weights)  # step 6 moved them
    weights, card, hist, final = out["last"]
    assert card.training["kept"] == "last" and card.training["output_step"] == 6
    assert card.training["best_step"] == 4  # still recorded
    assert all(torch.equal(weights[k], final[k].cpu()) for k in weights)
    assert hist[-1]["step"] == 6
    assert card.quality["validation"]["loss"] == pytest.approx(round(hist[-1]["val_loss"], 5))


def test_cli_train_dark_bias_and_keep_are_in_the_command_and_refused_for_pairs(tmp_path, capsys):
    from livedenoise.cli import main
    from livedenoise.inference.modelio import load_model

    out = tmp_path / "dark.pt"
    rc = _cli_train(out, "--dark-bias-weight", "1000", "--keep", "last")
    assert rc == 0
    _, card = load_model(out)
    cmd = card.training["command"]
    assert "--dark-bias-weight 1000 --keep last " in cmd and card.training["kept"] == "last"
    for mode in (["--pairs", str(tmp_path)], ["--self-supervised", str(tmp_path / "f.tif")]):
        rc = main(["train", *mode, "--dark-bias-weight", "10", "-o", str(tmp_path / "p.pt")])
        assert rc != 0 and "--dark-bias-weight needs noise-free targets" in capsys.readouterr().err
        rc = main(["train", *mode, "--keep", "last", "-o", str(tmp_path / "p.pt")])
        assert rc != 0 and "--keep applies to training on synthetic data" in capsys.readouterr().err
    rc = _cli_train(tmp_path / "n.pt", "--dark-bias-weight", "nan")
    assert rc != 0 and "--dark-bias-weight must be a finite number >= 0" in capsys.readouterr().err
    assert not (tmp_path / "n.pt").exists()
