"""Model registry: parameter counts, shapes, initialisation, external bridges, weight files."""

from __future__ import annotations

import socket

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from labelenh.errors import LabelenhError
from labelenh.models import build_model, list_models, register_model
from labelenh.models.cifar_resnet import CifarResNet

# ALGORITHMS.md §6: depth -> (A K=10, B K=10, A K=100, B K=100)
PARAMS = {
    20: (269_722, 272_474, 275_572, 278_324),
    32: (464_154, 466_906, 470_004, 472_756),
    44: (658_586, 661_338, 664_436, 667_188),
    56: (853_018, 855_770, 858_868, 861_620),
    110: (1_727_962, 1_730_714, 1_733_812, 1_736_564),
}
COUNT_CASES = [
    (f"resnet{depth}{suffix}", k, counts[col])
    for depth, counts in PARAMS.items()
    for col, (suffix, k) in enumerate([("a", 10), ("", 10), ("a", 100), ("", 100)])
]


def n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@pytest.fixture
def no_network(monkeypatch):
    """Any attempt to open a connection fails the test."""

    def refuse(*args, **kwargs):
        raise AssertionError("a model build tried to use the network")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


@pytest.mark.parametrize("name,k,expected", COUNT_CASES)
def test_parameter_counts(name: str, k: int, expected: int) -> None:
    assert n_params(build_model(name, k)) == expected


def test_registry_lists_every_depth_and_option() -> None:
    names = list_models()
    for depth in (8, 14, 20, 32, 44, 56, 110):
        assert f"resnet{depth}" in names and f"resnet{depth}a" in names
    assert "shallow" in names
    assert names.index("resnet8") < names.index("resnet14") < names.index("resnet110")


@pytest.mark.parametrize("name", list_models())
def test_forward_shapes(name: str) -> None:
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    # a second forward at K=100 only where it is cheap; the deep nets differ only in fc there
    deep = name.startswith("resnet") and int(name[6:].rstrip("a")) > 20
    for k in (10,) if deep else (10, 100):
        model = build_model(name, k, seed=0).eval()
        with torch.no_grad():
            out = model(x)
        assert out.shape == (2, k) and out.dtype == torch.float32
        assert torch.isfinite(out).all()
    if deep:
        assert build_model(name, 100).fc.out_features == 100


@pytest.mark.parametrize("name", ["resnet20", "resnet20a", "shallow"])
def test_other_sizes_channels_and_channels_last(name: str) -> None:
    g = torch.Generator().manual_seed(1)
    model = build_model(name, 7, in_chans=1, seed=0).eval()
    for size in (28, 64):
        x = torch.randn(3, 1, size, size, generator=g)
        with torch.no_grad():
            out = model(x)
            out_cl = model(x.contiguous(memory_format=torch.channels_last))
        assert out.shape == (3, 7)
        assert torch.allclose(out, out_cl, atol=1e-5)


def test_train_mode_backward() -> None:
    for name in ("resnet8", "shallow"):
        model = build_model(name, 10, seed=0).train()
        x = torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(2))
        F.cross_entropy(model(x), torch.tensor([0, 1, 2, 3])).backward()
        assert all(p.grad is not None for p in model.parameters())


def test_shallow_net_layout() -> None:
    k = 10
    model = build_model("shallow", k)
    convs = 3 * 32 * 9 + 32 + 32 * 64 * 9 + 64 + 64 * 128 * 9 + 128
    bns = 2 * (32 + 64 + 128) + 2 * 128
    fcs = 2048 * 128 + 128 + 128 * k + k
    assert n_params(model) == convs + bns + fcs
    assert model.fc1.in_features == 2048 and model.dropout.p == 0.5
    # dropout is active in train mode only
    x = torch.randn(8, 3, 32, 32, generator=torch.Generator().manual_seed(3))
    model.eval()
    with torch.no_grad():
        assert torch.equal(model(x), model(x))


def test_shortcut_options() -> None:
    a, b = build_model("resnet20a", 10), build_model("resnet20", 10)
    assert n_params(b) - n_params(a) == 2_752
    block = a.layer2[0]
    x = torch.randn(2, 16, 8, 8, generator=torch.Generator().manual_seed(4))
    expected = torch.zeros(2, 32, 4, 4)
    expected[:, 8:24] = x[:, :, ::2, ::2]  # planes // 4 = 8 zero channels on each side
    assert torch.equal(block.shortcut(x), expected)
    conv, bn = b.layer2[0].shortcut
    assert conv.kernel_size == (1, 1) and conv.stride == (2, 2) and conv.bias is None
    assert isinstance(bn, nn.BatchNorm2d)
    assert isinstance(b.layer1[0].shortcut, nn.Identity)


def test_resnet_init_and_no_conv_bias() -> None:
    model = build_model("resnet56", 10, seed=0)
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    assert all(m.bias is None for m in convs)
    w = model.layer3[1].conv1.weight  # fan_out = 64 * 3 * 3
    assert w.std().item() == pytest.approx((2 / (64 * 9)) ** 0.5, rel=0.05)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            assert torch.equal(m.weight, torch.ones_like(m.weight))
            assert torch.equal(m.bias, torch.zeros_like(m.bias))
    with pytest.raises(ValueError):
        CifarResNet(21, 10)


def test_seed_is_deterministic_and_leaves_global_rng_alone() -> None:
    state = torch.random.get_rng_state()
    a = build_model("resnet8", 10, seed=5).state_dict()
    b = build_model("resnet8", 10, seed=5).state_dict()
    c = build_model("resnet8", 10, seed=6).state_dict()
    assert torch.equal(torch.random.get_rng_state(), state)
    assert all(torch.equal(a[key], b[key]) for key in a)
    assert not torch.equal(a["conv1.weight"], c["conv1.weight"])


def test_timm_and_torchvision_build_offline(no_network) -> None:
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(5))
    tm = build_model("timm:resnet18", 100, seed=0).eval()
    assert tm.get_classifier().out_features == 100
    tv = build_model("torchvision:resnet18", 10, seed=0).eval()
    assert tv.fc.out_features == 10
    with torch.no_grad():
        assert tm(x).shape == (2, 100)
        assert tv(x).shape == (2, 10)
    gray = build_model("timm:resnet18", 10, in_chans=1)
    assert gray.conv1.in_channels == 1
    with pytest.raises(LabelenhError, match="in_chans"):
        build_model("torchvision:resnet18", 10, in_chans=1)


@pytest.mark.parametrize("wrap", ["plain", "model", "state_dict_module_prefix"])
def test_weights_round_trip(tmp_path, wrap: str) -> None:
    src = build_model("resnet8", 10, seed=0)
    # make the BN running stats non-trivial, so buffers are checked too
    src.train()
    src(torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(6)))
    state = src.state_dict()
    if wrap == "model":
        obj = {"model": state, "epoch": 3}
    elif wrap == "state_dict_module_prefix":
        obj = {"state_dict": {f"module.{k}": v for k, v in state.items()}}
    else:
        obj = state
    path = tmp_path / "w.pt"
    torch.save(obj, path)
    dst = build_model("resnet8", 10, seed=1, weights=path)
    for key, value in dst.state_dict().items():
        assert torch.equal(value, state[key]), key
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(7))
    src.eval(), dst.eval()
    with torch.no_grad():
        assert torch.equal(src(x), dst(x))


def test_weights_for_timm_model(tmp_path, no_network) -> None:
    src = build_model("timm:resnet18", 10, seed=0)
    torch.save(src.state_dict(), tmp_path / "t.pt")
    dst = build_model("timm:resnet18", 10, seed=1, weights=tmp_path / "t.pt")
    assert torch.equal(dst.fc.weight, src.fc.weight)


def test_mismatched_weights(tmp_path) -> None:
    torch.save(build_model("resnet20", 100).state_dict(), tmp_path / "k100.pt")
    msg = r"k100\.pt do not fit resnet20 with 10 classes: fc\.weight is \[100, 64\], expected \[10, 64\]"
    with pytest.raises(LabelenhError, match=msg):
        build_model("resnet20", 10, weights=tmp_path / "k100.pt")
    torch.save(build_model("resnet32", 10).state_dict(), tmp_path / "r32.pt")
    with pytest.raises(LabelenhError, match=r"r32\.pt do not fit resnet20 .*unexpected layer1\.3"):
        build_model("resnet20", 10, weights=tmp_path / "r32.pt")
    torch.save(build_model("resnet20a", 10).state_dict(), tmp_path / "a.pt")
    with pytest.raises(LabelenhError, match=r"do not fit resnet20 .*missing layer2\.0\.shortcut"):
        build_model("resnet20", 10, weights=tmp_path / "a.pt")


def test_unusable_weight_files(tmp_path) -> None:
    with pytest.raises(LabelenhError, match="nothere.pt does not exist"):
        build_model("resnet8", 10, weights=tmp_path / "nothere.pt")
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(LabelenhError, match="cannot read weights"):
        build_model("resnet8", 10, weights=tmp_path / "junk.pt")
    torch.save([1, 2, 3], tmp_path / "list.pt")
    with pytest.raises(LabelenhError, match="no state_dict"):
        build_model("resnet8", 10, weights=tmp_path / "list.pt")
    torch.save({"conv1.weight": torch.zeros(1), "note": "x"}, tmp_path / "mixed.pt")
    with pytest.raises(LabelenhError, match="not a state_dict"):
        build_model("resnet8", 10, weights=tmp_path / "mixed.pt")


def test_unknown_names_and_bad_arguments() -> None:
    with pytest.raises(LabelenhError, match=r"unknown model 'resnet21'.*resnet20.*timm:<name>"):
        build_model("resnet21", 10)
    with pytest.raises(LabelenhError, match="unknown timm model"):
        build_model("timm:not_a_model_xyz", 10)
    with pytest.raises(LabelenhError, match="unknown torchvision"):
        build_model("torchvision:not_a_model_xyz", 10)
    with pytest.raises(LabelenhError, match="num_classes"):
        build_model("resnet20", 0)
    with pytest.raises(LabelenhError, match="in_chans"):
        build_model("resnet20", 10, in_chans=0)


def test_register_model_refuses_duplicates() -> None:
    with pytest.raises(ValueError, match="twice"):
        register_model("resnet20")(lambda num_classes, in_chans=3: nn.Linear(1, num_classes))
