from __future__ import annotations

import numpy as np
import pytest
import torch

from livedenoise.inference.nets import ARCHITECTURES, build_network, count_parameters, fuse_for_inference

SMALL = {"rln": {}, "resunet": {"channels": [8, 16, 16], "mid_blocks": 1}}
# every architecture at its small size, plus the RLN's fast ReLU variant
VARIANTS = {
    **{a: (a, SMALL[a]) for a in ARCHITECTURES},
    "rln-relu": ("rln", {"activation": "relu"}),
    "resunet-unshuffle": ("resunet", {"channels": [8, 16], "mid_blocks": 1, "unshuffle": 4}),
}


@pytest.fixture(params=sorted(VARIANTS))
def net(request):
    torch.manual_seed(0)
    arch, params = VARIANTS[request.param]
    return build_network(arch, **params)


@pytest.mark.parametrize("shape", [(1, 1, 33, 47), (2, 1, 16, 16), (1, 1, 9, 70)])
def test_shapes_and_non_negative_for_odd_sizes(net, shape, rng):
    x = torch.from_numpy(rng.poisson(8.0, shape).astype("float32")) - 1.5  # small negatives, like read noise
    with torch.no_grad():
        y = net.eval()(x)
    assert y.shape == x.shape
    assert y.dtype == torch.float32
    assert torch.isfinite(y).all()
    assert (y >= 0).all()


def test_zero_and_negative_frames_stay_finite(net):
    with torch.no_grad():
        for x in (torch.zeros(1, 1, 20, 20), torch.full((1, 1, 20, 20), -5.0)):
            y = net.eval()(x)
            assert torch.isfinite(y).all() and (y >= 0).all()


def test_gradients_reach_every_parameter(net, rng):
    x = torch.from_numpy(rng.poisson(20.0, (2, 1, 32, 32)).astype("float32"))
    net.train()
    net(x).mean().backward()
    attention_with_grad = 0
    for name, p in net.named_parameters():
        assert p.grad is not None, name
        assert torch.isfinite(p.grad).all(), name
        if (
            ".fc1." in name or ".fc2.weight" in name
        ):  # channel attention: a ReLU gate may be off for this input
            attention_with_grad += int(p.grad.abs().sum() > 0)
            continue
        assert p.grad.abs().sum() > 0, f"no gradient reaches {name}"
    if any(".fc1." in n for n, _ in net.named_parameters()):
        assert attention_with_grad > 0


def test_fused_inference_matches_eval(net, rng):
    x = torch.from_numpy(rng.poisson(30.0, (1, 1, 40, 40)).astype("float32"))
    net.train()
    for _ in range(2):  # move the batch-norm running statistics away from their initial values
        net(x * 2)
    net.eval()
    fused = fuse_for_inference(net)
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in fused.modules())
    with torch.no_grad():
        torch.testing.assert_close(fused(x), net(x), rtol=1e-4, atol=1e-4)


def test_default_sizes_match_the_papers():
    rln = build_network("rln")
    res = build_network("resunet")
    assert 4_000 <= count_parameters(rln) <= 20_000
    assert 1_000_000 <= count_parameters(res) <= 2_000_000
    assert not any(m.bias is not None for m in rln.modules() if isinstance(m, torch.nn.Conv2d))


def test_bad_input_and_names():
    with pytest.raises(ValueError, match="unknown architecture"):
        build_network("unet3000")
    with pytest.raises(ValueError, match=r"\(N, 1, H, W\)"):
        build_network("rln")(torch.zeros(1, 3, 16, 16))
    with pytest.raises(ValueError, match="odd"):
        build_network("rln", kernel=4)


def _activations(net):
    return [type(m).__name__ for m in net.modules() if isinstance(m, (torch.nn.Softplus, torch.nn.ReLU))]


def test_rln_activation_choice(rng):
    soft, relu = build_network("rln"), build_network("rln", activation="relu")
    assert soft.activation == "softplus" and relu.activation == "relu"
    # same parameters (a v1 state dict fits either), softplus everywhere by default
    assert list(soft.state_dict()) == list(relu.state_dict())
    assert set(_activations(soft)) == {"Softplus"} and len(_activations(soft)) == 15
    # relu everywhere except the two forward projections' last layer (the RL ratio's denominators)
    # and the output layer
    acts = _activations(relu)
    assert acts.count("Softplus") == 3 and acts.count("ReLU") == 12
    for proj in (relu.fp_est, relu.fp_upd):
        assert isinstance(proj.layers[2][2], torch.nn.Softplus)
    assert isinstance(relu.merge[1][2], torch.nn.Softplus) and isinstance(relu.merge[0][2], torch.nn.ReLU)
    assert isinstance(relu.up[2], torch.nn.ReLU)
    assert all(
        isinstance(proj.layers[i][2], torch.nn.ReLU) for proj in (relu.bp_est, relu.bp_upd) for i in range(3)
    )
    assert "activation=relu" in repr(relu)
    # the activation changes the function: same weights, different output
    relu.load_state_dict(soft.state_dict())
    x = torch.from_numpy(rng.poisson(10.0, (1, 1, 32, 32)).astype("float32"))
    with torch.no_grad():
        a, b = soft.eval()(x), relu.eval()(x)
    assert (b >= 0).all() and not torch.allclose(a, b)
    with pytest.raises(ValueError, match=r"unknown RLN activation 'gelu'; expected one of softplus, relu"):
        build_network("rln", activation="gelu")


def test_relu_variant_outputs_are_non_negative_and_dead_units_stay_rare(rng):
    """ReLU hidden layers: every intermediate >= 0, and most of them alive on a real frame."""
    torch.manual_seed(0)
    net = build_network("rln", activation="relu").eval()
    outs = []
    hooks = [
        m.register_forward_hook(lambda _m, _i, o: outs.append(o))
        for m in net.modules()
        if isinstance(m, (torch.nn.ReLU, torch.nn.Softplus))
    ]
    x = torch.from_numpy(rng.poisson(12.0, (1, 1, 48, 48)).astype("float32"))
    with torch.no_grad():
        y = net(x)
    for h in hooks:
        h.remove()
    assert len(outs) == 15 and (y >= 0).all()
    assert all((o >= 0).all() for o in outs)
    alive = np.mean([float((o > 0).float().mean()) for o in outs])
    assert alive > 0.3, f"only {alive:.0%} of the activations are non-zero"


def test_unshuffle_front_end_runs_the_u_net_on_fewer_pixels(rng):
    """With ``unshuffle=r`` the head sees r*r channels at 1/r resolution and the output is full size."""
    torch.manual_seed(0)
    net = build_network("resunet", channels=[8, 16], mid_blocks=1, unshuffle=2).eval()
    assert net.head.in_channels == 4 and net.tail.out_channels == 4
    assert net.multiple == 4
    seen = []
    net.enc[0].register_forward_hook(lambda m, i, o: seen.append(tuple(o.shape)))
    x = torch.from_numpy(rng.poisson(20.0, (1, 1, 30, 42)).astype("float32"))
    with torch.no_grad():
        y = net(x)
    assert y.shape == x.shape
    assert seen == [(1, 8, 16, 22)]  # padded to 32 x 44, then folded 2x
    # at initialisation the network is close to the identity (a residual in the Anscombe domain)
    assert float((y - x).abs().mean()) < 0.2 * float(x.mean())
    with pytest.raises(ValueError, match="unshuffle"):
        build_network("resunet", unshuffle=0)


@pytest.mark.parametrize("arch, params", [("rln", {}), ("resunet", {"channels": [8, 16], "mid_blocks": 1})])
def test_flux_block_keeps_the_frames_local_counts(arch, params, rng):
    """With ``flux_block`` the output's block means follow the input's (unbiased) means, not the net's."""
    torch.manual_seed(0)
    plain = build_network(arch, **params).eval()
    kept = build_network(arch, **params, flux_block=16).eval()
    kept.load_state_dict(plain.state_dict())  # no parameters of its own: the same weights load
    x = torch.from_numpy(rng.poisson(3.0, (1, 1, 64, 80)).astype("float32"))
    with torch.no_grad():
        y0, y1 = plain(x), kept(x)
    assert y1.shape == x.shape and (y1 >= 0).all()
    assert abs(float(y1.mean() - x.mean())) < 0.02 * float(x.mean())
    assert abs(float(y1.mean() - x.mean())) <= abs(float(y0.mean() - x.mean()))
    with pytest.raises(ValueError, match="flux_block"):
        build_network(arch, flux_block=-1)


def test_resunet_skip_carries_the_rounding_the_body_saw():
    """The residual skip adds the Anscombe image as the body saw it: rounded in bf16, exact in fp32."""
    from livedenoise.inference.nets.resunet import _as_seen_by_body

    z = torch.linspace(0.5, 50.0, 2001)
    assert _as_seen_by_body(z, z - 4.0) is z  # float32, no autocast: untouched
    rounded = (z - 4.0).to(torch.bfloat16).float() + 4.0
    assert not torch.equal(rounded, z)  # the test range is coarse enough for bf16 to round it
    assert torch.equal(_as_seen_by_body(z, (z - 4.0).to(torch.bfloat16)), rounded)
    with torch.autocast("cpu", dtype=torch.bfloat16):  # training and the CUDA engine's autocast
        assert torch.equal(_as_seen_by_body(z, z - 4.0), rounded)


def test_shipped_resunet_in_bf16_is_nearly_as_close_to_the_truth_at_high_counts(rng):
    """bf16 rounds ``z - 4`` to steps of 1/4 at 500 e-; with the exact ``z`` on the skip that
    rounding reached the output unfiltered: +12 % rms error for the quality model on a bright
    uniform region (now +1.5 %)."""
    import copy

    from livedenoise.inference.modelio import load_model

    module, _ = load_model("resunet-denoise-v6")
    fp32 = fuse_for_inference(module)
    bf16 = copy.deepcopy(fp32).to(torch.bfloat16)
    x = torch.from_numpy(rng.poisson(500.0, (2, 1, 128, 128)).astype(np.float32))
    with torch.inference_mode():
        err32 = float((fp32(x) - 500.0).pow(2).mean().sqrt())
        err16 = float((bf16(x) - 500.0).pow(2).mean().sqrt())
    assert err16 < 1.05 * err32, (err16, err32)
