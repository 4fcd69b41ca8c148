from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from livedenoise.imaging.synthetic import make_eval_set
from livedenoise.inference.modelio import (
    DEFAULT_MODEL,
    QUALITY_MODEL,
    ModelCard,
    ModelError,
    list_models,
    load_model,
    resolve_model,
    save_model,
)
from livedenoise.inference.nets import build_network
from livedenoise.training.train import psnr_db


@pytest.fixture
def saved(tmp_path):
    torch.manual_seed(0)
    net = build_network("rln")
    card = ModelCard(id="tiny-rln", architecture="rln", task="denoise", training={"loss": "poisson"})
    card = save_model(net, card, tmp_path / "tiny-rln.pt")
    return net.eval(), card, tmp_path / "tiny-rln.pt"


def test_round_trip(saved):
    net, card, path = saved
    loaded, card2 = load_model(path)
    assert card2.id == "tiny-rln" and card2.units == "photoelectrons"
    assert card2.parameters == sum(p.numel() for p in net.parameters())
    assert len(card2.sha256) == 64
    assert not loaded.training
    x = torch.rand(1, 1, 24, 30) * 40
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), net(x))
    on_disk = json.loads(path.with_suffix(".json").read_text())
    assert on_disk["livedenoise_model"] == 1 and "path" not in on_disk


def test_arch_params_round_trip_with_the_activation(tmp_path, rng):
    torch.manual_seed(0)
    net = build_network("rln", activation="relu")
    card = ModelCard(id="tiny-relu", architecture="rln", arch_params={"activation": "relu"}, task="denoise")
    save_model(net, card, tmp_path / "tiny-relu.pt")
    assert json.loads((tmp_path / "tiny-relu.json").read_text())["arch_params"] == {"activation": "relu"}
    loaded, card2 = load_model(tmp_path / "tiny-relu.pt")
    assert card2.arch_params == {"activation": "relu"} and loaded.activation == "relu"
    x = torch.from_numpy(rng.poisson(15.0, (1, 1, 24, 30)).astype("float32"))
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), net.eval()(x), rtol=0, atol=0)


def test_found_by_id_through_the_environment(saved, monkeypatch):
    _, _, path = saved
    monkeypatch.setenv("LIVEDENOISE_MODELS", str(path.parent))
    assert resolve_model("tiny-rln") == path
    assert "tiny-rln" in {c.id for c in list_models()}
    with pytest.raises(FileNotFoundError, match="tiny-rln"):  # the message lists what is installed
        resolve_model("no-such-model")


def test_corrupt_weights(saved):
    _, card, path = saved
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(ModelError, match="corrupt"):
        load_model(path)
    # even without a checksum in the card, unreadable bytes give a clear error
    path.write_bytes(b"not a torch file")
    d = json.loads(path.with_suffix(".json").read_text())
    d["sha256"] = ""
    path.with_suffix(".json").write_text(json.dumps(d))
    with pytest.raises(ModelError, match="cannot be read as weights"):
        load_model(path)


def _edit_card(path, **changes):
    cpath = path.with_suffix(".json")
    d = json.loads(cpath.read_text())
    d.update(changes)
    cpath.write_text(json.dumps(d))


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"architecture": "unet3000"}, "this livedenoise runs"),
        ({"units": "adu"}, "photoelectrons"),
        ({"task": "segment"}, "task"),
        ({"livedenoise_model": 7}, "schema version"),
        ({"architecture": "resunet"}, "do not fit"),  # card says another architecture than the weights
        ({"arch_params": {"bp_channels": 12}}, "do not fit"),
    ],
)
def test_wrong_card(saved, changes, message):
    _, _, path = saved
    _edit_card(path, **changes)
    with pytest.raises(ModelError, match=message):
        load_model(path)


def test_missing_card_and_file(saved):
    _, _, path = saved
    path.with_suffix(".json").unlink()
    with pytest.raises(ModelError, match="no card"):
        load_model(path)
    with pytest.raises(FileNotFoundError):
        load_model(path.parent / "nothing.pt")


def test_save_refuses_an_unwritable_place(tmp_path):
    with pytest.raises(OSError, match="does not exist"):
        save_model(build_network("rln"), ModelCard(id="x", architecture="rln"), tmp_path / "nope" / "x.pt")
    assert not list(tmp_path.iterdir())


# ---------------------------------------------------------------- the shipped models

# minimum gain over the raw frame on fresh held-out frames at 20 e- peak (measured at ship time:
# see the cards' quality.held_out; these margins leave room for frame-to-frame variation)
SHIPPED_MARGIN_DB = {
    "rln-denoise-v1": 5.0,
    "rln-denoise-v2": 5.0,
    "resunet-denoise-v1": 6.0,
    "resunet-live-v1": 6.0,
    "resunet-live-v2": 6.0,
    "resunet-denoise-v2": 6.0,
    "resunet-live-v3": 6.0,
    "resunet-live-v4": 6.0,
    "resunet-live-v5": 6.0,
    "resunet-live-v6": 6.0,
    "resunet-live-v7": 6.0,
    "resunet-live-v8": 6.0,
    "resunet-denoise-v3": 6.0,
    "resunet-denoise-v4": 6.0,
    "resunet-denoise-v5": 6.0,
    "resunet-denoise-v6": 6.0,
    "resunet-denoise-v7": 6.0,
}


@pytest.mark.parametrize("model_id", sorted(SHIPPED_MARGIN_DB))
def test_shipped_model_improves_psnr(model_id):
    module, card = load_model(model_id)
    assert card.task == "denoise" and card.training["command"].startswith("livedenoise train")
    x, t, _ = make_eval_set(3, 96, (20.0, 20.0), seed=31337)
    with torch.no_grad():
        y = module(torch.from_numpy(x[:, None]))[:, 0].numpy()
    gain = np.mean([psnr_db(yi, ti) - psnr_db(xi, ti) for xi, yi, ti in zip(x, y, t)])
    assert gain >= SHIPPED_MARGIN_DB[model_id], f"{model_id}: only {gain:.2f} dB over the raw frame"


def test_default_model_is_the_fast_live_model():
    _, card = load_model(None)
    assert card.id == DEFAULT_MODEL and card.architecture == "resunet" and card.arch_params["unshuffle"] == 4
    # at most half the quality model's time a 512x512 frame, as measured into both cards by
    # tools/train_shipped.py on one machine (absolute figures move with the machine: 48-60 ms on
    # the 2-core Xeon VM of 2026-12-01/02, against the 40 ms; see the README's Speed section)
    _, quality = load_model(QUALITY_MODEL)
    assert card.speed["frame"] == quality.speed["frame"] == "512x512"
    assert card.speed["fp32_2t_ms_median"] < 0.5 * quality.speed["fp32_2t_ms_median"], (
        card.speed,
        quality.speed,
    )


def test_new_models_keep_photon_counts_and_carry_their_real_structure_figures():
    for mid in (DEFAULT_MODEL, QUALITY_MODEL):
        _, card = load_model(mid)
        assert card.arch_params["flux_block"] == 32
        real = card.quality["real"]
        assert real["psnr_db"] > real["baselines_psnr_db"]["tv"]
        # the command of a one-stage run, or every stage of a longer one, and how to run them again
        assert card.training["command"].startswith("livedenoise train")
        assert all(st.startswith("livedenoise train") for st in card.training.get("stages", []))
        assert card.training["reproduce"].startswith(f"python tools/train_shipped.py train {mid}")


def test_rln_v2_is_v1_with_relu_activations():
    m1, c1 = load_model("rln-denoise-v1")
    m2, c2 = load_model("rln-denoise-v2")
    assert c1.arch_params == {} and m1.activation == "softplus"
    assert c2.arch_params == {"activation": "relu"} and m2.activation == "relu"
    assert c2.parameters == c1.parameters
    # same recipe but for the activation
    assert (
        c2.training["command"].replace(" --arch-param 'activation=\"relu\"'", "").replace("v2", "v1")
        == (c1.training["command"])
    )


# -- a card's declared sizes are checked against the weights before anything is built ----------


@pytest.mark.parametrize(
    "changes",
    [
        {"arch_params": {"fp_channels": 100_000, "bp_channels": 200_000}},  # the probe's 1 KB card
        {"arch_params": {"fp_channels": 4000, "bp_channels": 4000, "merge_channels": 4000}},
        {"parameters": 10**9},
    ],
    ids=["widths-beyond-the-weights", "widths-within-the-value-count", "declared-parameter-count"],
)
def test_a_card_declaring_a_huge_network_is_refused_at_once(saved, changes):
    import time

    _, _, path = saved
    _edit_card(path, **changes)
    t = time.perf_counter()
    with pytest.raises(ModelError, match="do not fit"):
        load_model(path)
    assert time.perf_counter() - t < 2.0


def test_a_card_declaring_a_deep_network_is_stopped_while_building(tmp_path):
    import time

    torch.manual_seed(0)
    net = build_network("resunet", channels=[4, 8], mid_blocks=1)
    path = tmp_path / "tiny-res.pt"
    save_model(
        net,
        ModelCard(id="tiny-res", architecture="resunet", arch_params={"channels": [4, 8], "mid_blocks": 1}),
        path,
    )
    n_values = sum(v.numel() for v in net.state_dict().values())
    _edit_card(path, arch_params={"channels": [4, 8], "mid_blocks": n_values - 1})  # within the int bound
    t = time.perf_counter()
    with pytest.raises(ModelError, match="do not fit"):
        load_model(path)
    assert time.perf_counter() - t < 2.0


def test_nan_weights_and_nan_output_are_refused(tmp_path):
    torch.manual_seed(0)
    net = build_network("rln")
    with torch.no_grad():
        net.merge[1][0].weight[0, 0, 0, 0] = float("nan")
    save_model(net, ModelCard(id="nan-w", architecture="rln"), tmp_path / "nan-w.pt")
    with pytest.raises(ModelError, match="NaN or Inf weights"):
        load_model(tmp_path / "nan-w.pt")
    net = build_network("rln")
    with torch.no_grad():
        net.merge[1][1].running_var.fill_(-1.0)  # finite weights, NaN output (sqrt of a negative)
    save_model(net, ModelCard(id="nan-out", architecture="rln"), tmp_path / "nan-out.pt")
    with pytest.raises(ModelError, match="gives NaN or Inf on synthetic"):
        load_model(tmp_path / "nan-out.pt")


# -- models named in control requests stay inside the model folders -------------------------------


def test_resolve_model_request_is_confined_to_the_model_folders(saved, tmp_path, monkeypatch):
    from livedenoise.inference.modelio import resolve_model_request
    from livedenoise.util.paths import PathError

    monkeypatch.delenv("LIVEDENOISE_MODELS", raising=False)
    _, _, path = saved  # tmp_path/tiny-rln.pt
    folder = tmp_path / "models"
    folder.mkdir()
    for suffix in (".pt", ".json"):
        (folder / f"mine{suffix}").write_bytes(path.with_suffix(suffix).read_bytes())
    # allowed: the shipped default, an id in a named folder, a path inside one
    assert resolve_model_request(None).name == f"{DEFAULT_MODEL}.pt"
    assert resolve_model_request(DEFAULT_MODEL).name == f"{DEFAULT_MODEL}.pt"
    assert resolve_model_request("mine", [folder]) == folder / "mine.pt"
    assert resolve_model_request(str(folder / "mine.json"), [folder]) == folder / "mine.pt"
    assert resolve_model_request("mine.pt", [folder]) == folder / "mine.pt"
    # refused: paths outside, whether or not a file is there (same message: no existence oracle)
    errors = {}
    for target in (path, tmp_path / "absent.pt"):
        with pytest.raises(PathError, match="outside the allowed folder") as info:
            resolve_model_request(str(target), [folder])
        errors[target.name] = str(info.value).replace(str(target), "PATH")
    assert errors["tiny-rln.pt"] == errors["absent.pt"]
    with pytest.raises(PathError, match="outside the allowed folder"):
        resolve_model_request("../tiny-rln.pt", [folder])
    (folder / "link.pt").symlink_to(path)
    with pytest.raises(PathError, match="through a symbolic link"):
        resolve_model_request("link.pt", [folder])
    with pytest.raises(PathError, match="NUL byte"):
        resolve_model_request("mine\x00.pt", [folder])
    with pytest.raises(PathError, match="must be a path string"):
        resolve_model_request(["mine"], [folder])
    # an id is never a file of that name in the working folder
    monkeypatch.chdir(tmp_path)
    (tmp_path / "tiny-rln").write_bytes(path.read_bytes())
    with pytest.raises(FileNotFoundError, match="no model 'tiny-rln'"):
        resolve_model_request("tiny-rln", [folder])
    with pytest.raises(FileNotFoundError, match="no model file"):
        resolve_model_request("absent.pt", [folder])


def test_weights_stored_in_float16_load_into_float32_and_compute_alike(tmp_path):
    net = build_network("resunet", channels=(16, 32), mid_blocks=1)
    card = ModelCard(id="half", architecture="resunet", arch_params={"channels": [16, 32], "mid_blocks": 1})
    full = save_model(net, card, tmp_path / "full.pt")
    half = save_model(net, card, tmp_path / "half.pt", weights_dtype="float16")
    assert full.weights_dtype == "float32" and half.weights_dtype == "float16"
    assert (tmp_path / "half.pt").stat().st_size < 0.6 * (tmp_path / "full.pt").stat().st_size  # + headers
    m16, c16 = load_model(tmp_path / "half.pt")
    m32, _ = load_model(tmp_path / "full.pt")
    assert c16.weights_dtype == "float16" and all(p.dtype == torch.float32 for p in m16.parameters())
    x = torch.rand(1, 1, 32, 32) * 50
    with torch.no_grad():
        a, b = m32(x), m16(x)
    assert float((a - b).abs().max()) <= 1e-2 * float(a.abs().max())
    with pytest.raises(ValueError, match="weights_dtype must be one of"):
        save_model(net, card, tmp_path / "x.pt", weights_dtype="int8")
    with torch.no_grad():
        next(net.parameters()).view(-1)[0] = 1e6
    with pytest.raises(ModelError, match="exceed float16's range"):
        save_model(net, card, tmp_path / "big.pt", weights_dtype="float16")
    assert not (tmp_path / "big.pt").exists()
    text = (tmp_path / "half.json").read_text()
    (tmp_path / "half.json").write_text(text.replace('"float16"', '"float32"'))
    with pytest.raises(ModelError, match="holds float16 weights, but its card says 'float32'"):
        load_model(tmp_path / "half.pt")
    (tmp_path / "half.json").write_text(text.replace('"float16"', '"bfloat8"'))
    with pytest.raises(ModelError, match="stores its weights as 'bfloat8'"):
        load_model(tmp_path / "half.pt")
