from __future__ import annotations

from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf
from torch import nn

from pico.models import MLPEncoder, SmallConvNet, build_backbone, cifar_resnet, mlp_head

CONFIG_DIR = Path(__file__).resolve().parents[1] / "configs" / "model"


def _assert_all_grads(model: nn.Module) -> None:
    for name, p in model.named_parameters():
        assert p.grad is not None, f"no gradient for {name}"
        assert torch.isfinite(p.grad).all(), f"non-finite gradient for {name}"
    assert any(p.grad.abs().sum() > 0 for p in model.parameters())


@pytest.mark.parametrize(("depth", "out_dim"), [(18, 512), (34, 512), (50, 2048)])
def test_cifar_resnet_stem_and_out_dim(depth: int, out_dim: int) -> None:
    net = cifar_resnet(depth, in_channels=1)
    assert net.out_dim == out_dim
    assert net.conv1.kernel_size == (3, 3)
    assert net.conv1.stride == (1, 1)
    assert net.conv1.padding == (1, 1)
    assert net.conv1.bias is None
    assert net.conv1.in_channels == 1
    assert isinstance(net.maxpool, nn.Identity)
    assert isinstance(net.fc, nn.Identity)
    assert not any(isinstance(m, nn.MaxPool2d) for m in net.modules())


def test_cifar_resnet_gradients_flow() -> None:
    torch.manual_seed(0)
    net = cifar_resnet(18)
    out = net(torch.randn(2, 3, 16, 16))
    assert out.shape == (2, 512)
    out.square().sum().backward()
    _assert_all_grads(net)


def test_cifar_resnet_on_32_and_8_keeps_resolution_in_first_stage() -> None:
    net = cifar_resnet(18).eval()
    seen: list[torch.Size] = []
    net.layer1.register_forward_hook(lambda m, i, o: seen.append(o.shape))
    with torch.no_grad():
        assert net(torch.randn(1, 3, 32, 32)).shape == (1, 512)
        assert net(torch.randn(2, 3, 8, 8)).shape == (2, 512)
    assert seen == [torch.Size([1, 64, 32, 32]), torch.Size([2, 64, 8, 8])]


def test_cifar_resnet_zero_init_residual() -> None:
    net = cifar_resnet(18, zero_init_residual=True)
    assert all(block.bn2.weight.abs().sum() == 0 for block in net.layer1)


def test_cifar_resnet_bad_depth() -> None:
    with pytest.raises(ValueError, match="18, 34 or 50"):
        cifar_resnet(101)


@pytest.mark.parametrize("size", [8, 28])
@pytest.mark.parametrize("convs", [1, 2])
def test_small_convnet_shapes_and_grads(size: int, convs: int) -> None:
    torch.manual_seed(0)
    net = SmallConvNet(in_channels=1, widths=(8, 16, 24), convs_per_block=convs)
    n_convs = sum(isinstance(m, nn.Conv2d) for m in net.modules())
    assert n_convs == 3 * convs
    assert net.out_dim == 24
    out = net(torch.randn(4, 1, size, size))
    assert out.shape == (4, 24)
    out.sum().backward()
    _assert_all_grads(net)


def test_small_convnet_pools_between_blocks_while_possible() -> None:
    net = SmallConvNet(widths=(4, 4, 4, 4)).eval()
    sizes: list[tuple[int, int]] = []
    for block in net.blocks:
        block.register_forward_hook(lambda m, i, o: sizes.append(tuple(o.shape[-2:])))
    with torch.no_grad():
        net(torch.randn(1, 1, 8, 8))
    # 8 -> 4 -> 2 -> 1, and the last block never pools
    assert sizes == [(4, 4), (2, 2), (1, 1), (1, 1)]


def test_small_convnet_matches_manual_global_pool() -> None:
    net = SmallConvNet(in_channels=3, widths=(6, 10)).eval()
    x = torch.randn(2, 3, 8, 8)
    with torch.no_grad():
        manual = net.blocks(x).flatten(2).mean(-1)
        assert torch.allclose(net(x), manual)


def _conv_macs_per_image(net: nn.Module, shape: tuple[int, ...]) -> int:
    """Multiply-accumulates of every Conv2d for one input, counted with hooks."""
    macs: list[int] = []

    def hook(m: nn.Conv2d, _inp: object, out: torch.Tensor) -> None:
        k = m.kernel_size[0] * m.kernel_size[1] * m.in_channels // m.groups
        macs.append(out[0].numel() * k)

    handles = [m.register_forward_hook(hook) for m in net.modules() if isinstance(m, nn.Conv2d)]
    with torch.no_grad():
        net.eval()(torch.randn(1, *shape))
    for h in handles:
        h.remove()
    return sum(macs)


def test_small_convnet_is_cheap() -> None:
    # default: 8*8*9*32 + 4*4*9*32*64 + 2*2*9*64*128 MACs for one 8x8 digit (~0.6 M), so a
    # batch of 64 runs forward+backward in a few ms on a CPU core
    expected = 8 * 8 * 9 * 32 + 4 * 4 * 9 * 32 * 64 + 2 * 2 * 9 * 64 * 128
    assert _conv_macs_per_image(SmallConvNet(), (1, 8, 8)) == expected
    assert expected < 1_000_000
    assert _conv_macs_per_image(SmallConvNet(convs_per_block=2), (1, 8, 8)) > 3 * expected


def test_small_convnet_bad_args() -> None:
    with pytest.raises(ValueError, match="widths"):
        SmallConvNet(widths=())
    with pytest.raises(ValueError, match="convs_per_block"):
        SmallConvNet(convs_per_block=0)


def test_mlp_encoder_structure_and_grads() -> None:
    torch.manual_seed(0)
    enc = MLPEncoder(10, hidden=(16, 8), batch_norm=True, dropout=0.1)
    assert enc.out_dim == 8
    kinds = [type(m).__name__ for m in enc.net]
    assert kinds == ["Linear", "BatchNorm1d", "ReLU", "Dropout"] * 2
    out = enc(torch.randn(5, 10))
    assert out.shape == (5, 8)
    assert (out >= 0).all()
    out.sum().backward()
    _assert_all_grads(enc)


def test_mlp_encoder_without_bn_matches_reference() -> None:
    enc = MLPEncoder(3, hidden=(4,), batch_norm=False)
    x = torch.randn(6, 3)
    lin = enc.net[0]
    assert torch.allclose(enc(x), torch.relu(x @ lin.weight.T + lin.bias))


def test_mlp_encoder_bad_args() -> None:
    with pytest.raises(ValueError, match="hidden"):
        MLPEncoder(3, hidden=())
    with pytest.raises(ValueError, match="dropout"):
        MLPEncoder(3, dropout=1.0)


def test_mlp_head_layers() -> None:
    pico_head = mlp_head(512, 512, 128)
    assert [type(m).__name__ for m in pico_head] == ["Linear", "ReLU", "Linear"]
    assert pico_head[0].bias is not None
    byol = mlp_head(16, 32, 8, num_layers=2, batch_norm=True)
    assert [type(m).__name__ for m in byol] == ["Linear", "BatchNorm1d", "ReLU", "Linear"]
    single = mlp_head(16, 32, 8, num_layers=1)
    assert len(single) == 1
    assert isinstance(single[0], nn.Linear)
    assert (single[0].in_features, single[0].out_features) == (16, 8)
    deep = mlp_head(16, 32, 8, num_layers=3, batch_norm=True, last_batch_norm=True)
    assert sum(isinstance(m, nn.Linear) for m in deep) == 3
    assert isinstance(deep[-1], nn.BatchNorm1d)
    assert not deep[-1].affine


def test_mlp_head_forward_matches_reference_and_grads() -> None:
    head = mlp_head(5, 7, 3)
    x = torch.randn(4, 5, requires_grad=True)
    out = head(x)
    ref = torch.relu(x @ head[0].weight.T + head[0].bias) @ head[2].weight.T + head[2].bias
    assert torch.allclose(out, ref, atol=1e-6)
    out.sum().backward()
    _assert_all_grads(head)
    assert x.grad is not None


def test_mlp_head_bad_layers() -> None:
    with pytest.raises(ValueError, match="num_layers"):
        mlp_head(4, 4, 4, num_layers=0)


@pytest.mark.parametrize(
    ("name", "shape", "kind", "out_dim"),
    [
        ("convnet", (1, 8, 8), "image", 128),
        ("resnet18", (3, 16, 16), "image", 512),
        ("resnet50", (3, 16, 16), "image", 2048),
        ("mlp", (20,), "tabular", 256),
    ],
)
def test_build_backbone_from_yaml(name: str, shape: tuple[int, ...], kind: str, out_dim: int):
    cfg = OmegaConf.load(CONFIG_DIR / f"{name}.yaml")
    assert "in_channels" not in cfg
    assert "in_dim" not in cfg
    model = build_backbone(cfg, shape, kind).eval()
    assert model.out_dim == out_dim
    with torch.no_grad():
        assert model(torch.randn(2, *shape)).shape == (2, out_dim)


def test_resnet34_yaml_has_depth() -> None:
    assert OmegaConf.load(CONFIG_DIR / "resnet34.yaml").depth == 34


def test_build_backbone_passes_sizes_from_plain_dict() -> None:
    conv = build_backbone(
        {"_target_": "pico.models.SmallConvNet", "widths": [4, 6]}, (3, 8, 8), "image"
    )
    assert conv.blocks[0].convs[0].in_channels == 3
    assert conv.out_dim == 6
    mlp = build_backbone({"_target_": "pico.models.MLPEncoder", "hidden": [5]}, (7,), "tabular")
    assert mlp.net[0].in_features == 7


def test_build_backbone_kind_mismatch() -> None:
    with pytest.raises(ValueError, match="use model=mlp for tabular data"):
        build_backbone({"_target_": "pico.models.cifar_resnet", "depth": 18}, (20,), "tabular")
    with pytest.raises(ValueError, match="image backbone"):
        build_backbone({"_target_": "pico.models.MLPEncoder"}, (1, 8, 8), "image")


def test_build_backbone_bad_config() -> None:
    with pytest.raises(ValueError, match="_target_"):
        build_backbone({"widths": [4]}, (1, 8, 8), "image")
    with pytest.raises(ValueError, match="cannot be imported"):
        build_backbone({"_target_": "pico.models.NoSuchNet"}, (1, 8, 8), "image")
    with pytest.raises(ValueError, match="'image' or 'tabular'"):
        build_backbone({"_target_": "pico.models.SmallConvNet"}, (1, 8, 8), "audio")
    with pytest.raises(ValueError, match=r"\(C, H, W\)"):
        build_backbone({"_target_": "pico.models.SmallConvNet"}, (64,), "image")
    with pytest.raises(ValueError, match="out_dim"):
        build_backbone(
            {"_target_": "torch.nn.Conv2d", "out_channels": 2, "kernel_size": 1}, (1, 8, 8), "image"
        )


def test_imagenet_resnet_loads_local_weights_and_rejects_mismatch(tmp_path):
    import torchvision

    from pico.models import imagenet_resnet

    reference = torchvision.models.resnet18(weights=None)
    path = tmp_path / "r18.pt"
    torch.save(reference.state_dict(), path)
    net = imagenet_resnet(18, weights=str(path))
    assert net.out_dim == 512
    torch.testing.assert_close(net.conv1.weight, reference.conv1.weight)
    assert net(torch.randn(2, 3, 64, 64)).shape == (2, 512)
    with pytest.raises(ValueError, match="does not match ResNet-34"):
        imagenet_resnet(34, weights=str(path))
    with pytest.raises(ValueError, match="does not exist"):
        imagenet_resnet(18, weights=str(tmp_path / "missing.pt"))


def test_narrow_cifar_resnet_scales_every_stage() -> None:
    torch.manual_seed(0)
    net = cifar_resnet(18, width=16)
    assert net.out_dim == 128
    widths = [getattr(net, f"layer{i}")[0].conv1.out_channels for i in range(1, 5)]
    assert widths == [16, 32, 64, 128] and net.conv1.out_channels == 16
    full = sum(p.numel() for p in cifar_resnet(18).parameters())
    narrow = sum(p.numel() for p in net.parameters())
    assert 12 < full / narrow < 20  # conv weights scale with width squared
    out = net(torch.randn(2, 3, 32, 32))
    out.sum().backward()
    _assert_all_grads(net)
    assert cifar_resnet(50, width=16).out_dim == 512


def test_narrow_resnet_config_builds_a_quarter_width_network() -> None:
    cfg = OmegaConf.load(CONFIG_DIR / "resnet18_narrow.yaml")
    net = build_backbone(cfg, (3, 32, 32), "image")
    assert net.out_dim == 128


def test_cifar_resnet_refuses_a_zero_width() -> None:
    with pytest.raises(ValueError, match=r"model\.width=0 must be a positive"):
        cifar_resnet(18, width=0)
