"""The CUB-200 preset: the official PiCO image pipeline, ImageNet normalisation and the
refusal to train without pretrained weights. Nothing is downloaded: a tiny image folder
stands in for CUB-200 and a randomly initialised state dict for the ImageNet weights."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision.transforms as T
import torchvision.transforms.v2.functional as TF
from hydra import compose, initialize_config_module
from omegaconf import OmegaConf
from PIL import Image
from torchvision.models import resnet18

from pico.data.augment import build_augment
from pico.data.sources import load_data
from pico.experiment import build_experiment
from pico.models.factory import build_backbone, check_pretrained

IMAGENET_MEAN = [0.485, 0.456, 0.406]
IMAGENET_STD = [0.229, 0.224, 0.225]
#: (height, width) of the fixture's images: landscape, portrait, odd margins, square
SIZES = [(300, 400), (280, 261), (257, 371), (256, 256)]


def preset(*overrides: str):
    with initialize_config_module("pico.configs", version_base="1.3"):
        return compose(
            "train", overrides=["+presets=cub200_q0.05", "run_dir=x", "data.root=/d", *overrides]
        )


def smooth_image(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """A photo-like RGB image: coarse noise upsampled (PIL filters agree best there)."""
    coarse = rng.integers(0, 256, (height // 16 + 1, width // 16 + 1, 3), dtype=np.uint8)
    return np.asarray(Image.fromarray(coarse).resize((width, height), Image.BILINEAR))


def make_folder(root: Path) -> dict[str, list[np.ndarray]]:
    """Two classes, one image of every size in SIZES per split, in loader order."""
    rng = np.random.default_rng(0)
    out: dict[str, list[np.ndarray]] = {}
    for split in ("train", "test"):
        out[split] = []
        for name in ("a", "b"):
            (root / split / name).mkdir(parents=True)
            for i, (h, w) in enumerate(SIZES):
                array = smooth_image(rng, h, w)
                Image.fromarray(array).save(root / split / name / f"{i}.png")
                out[split].append(array)
    return out


def op_names(recipe) -> list[str]:
    return [op._target_.rsplit(".", 1)[1] for op in recipe]


def test_preset_composes_to_the_official_pipeline():
    cfg = preset()
    assert cfg.data.image_size == 256 and cfg.data.source.image_size == 256
    assert cfg.data.source.keep_aspect is True
    assert list(cfg.data.mean) == IMAGENET_MEAN and list(cfg.data.std) == IMAGENET_STD
    assert op_names(cfg.aug.weak) == [
        "RandomResizedCrop",
        "RandomHorizontalFlip",
        "ColorJitter",
        "RandomGrayscale",
    ]
    assert op_names(cfg.aug.strong) == [
        "RandomResizedCrop",
        "RandomHorizontalFlip",
        "RandAugment",
        "Cutout",
    ]
    for view in ("weak", "strong", "contrastive"):
        crop = cfg.aug[view][0]
        assert crop.size == 224 and list(crop.scale) == [0.08, 1.0]
        assert "ratio" not in crop  # torchvision's (3/4, 4/3), the op's default
    jitter = OmegaConf.to_container(cfg.aug.weak[2])
    assert jitter == {
        "_target_": "pico.data.augment.ColorJitter",
        **{"brightness": 0.4, "contrast": 0.4, "saturation": 0.4, "hue": 0.1, "p": 0.8},
    }
    assert cfg.aug.weak[3].p == 0.2 and cfg.aug.strong[2].num_ops == 3
    assert op_names(cfg.aug.test) == ["Resize", "CenterCrop"]
    assert cfg.aug.test[0].size == 256 and cfg.aug.test[1].size == 224
    assert cfg.model._target_ == "pico.models.imagenet_resnet" and cfg.model.depth == 18
    assert cfg.model.pretrained is True and cfg.model.weights is None
    x = torch.randint(0, 256, (2, 3, 256, 256), dtype=torch.uint8)
    for view in ("weak", "strong", "contrastive", "test"):
        out = build_augment(cfg.aug[view], IMAGENET_MEAN, IMAGENET_STD)(x)
        assert out.shape == (2, 3, 224, 224), view


def test_image_folder_through_the_preset_gives_the_official_test_view(tmp_path):
    originals = make_folder(tmp_path)
    cfg = preset(f"data.root={tmp_path}", "data.source.num_threads=1")
    bundle = load_data(cfg.data)
    assert bundle.input_shape == (3, 256, 256)
    assert (list(bundle.mean), list(bundle.std)) == (IMAGENET_MEAN, IMAGENET_STD)
    test_view = build_augment(cfg.aug.test, bundle.mean, bundle.std)
    got = test_view(bundle.test.inputs)
    mean = torch.tensor(IMAGENET_MEAN).view(3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(3, 1, 1)
    official_pil = T.Compose(
        [T.Resize(256), T.CenterCrop(224), T.ToTensor(), T.Normalize(IMAGENET_MEAN, IMAGENET_STD)]
    )
    for i, array in enumerate(originals["test"]):
        image = torch.from_numpy(array.copy()).permute(2, 0, 1)
        # stored: shorter side 256 and the central square, from the original image
        resized = TF.resize(image, [256], antialias=True)
        assert torch.equal(bundle.test.inputs[i], TF.center_crop(resized, [256, 256]))
        # the official test view on the original, with torchvision's tensor resize: exact
        official = (TF.center_crop(resized, [224, 224]).float() / 255 - mean) / std
        torch.testing.assert_close(got[i], official)
        # and with PIL, as the official code runs it: within one grey level
        grey_levels = ((got[i] - official_pil(Image.fromarray(array))) * std * 255).abs()
        assert grey_levels.max() <= 1 + 1e-3, SIZES[i % len(SIZES)]
    for view in ("weak", "strong"):
        out = build_augment(cfg.aug[view], bundle.mean, bundle.std)(bundle.train.inputs)
        assert out.shape == (len(bundle.train), 3, 224, 224)


def test_preset_refuses_to_start_without_pretrained_weights(tmp_path):
    refusal = r"model\.pretrained=true.*model\.weights=FILE.*model\.pretrained=false to train"
    cfg = preset()
    with pytest.raises(ValueError, match=refusal):
        build_backbone(cfg.model, (3, 256, 256), "image")
    # refused before the data is read: data.root=/d does not exist
    with pytest.raises(ValueError, match=refusal):
        build_experiment(cfg)
    check_pretrained(preset("model.init_from=CKPT").model)  # a checkpoint counts
    net = build_backbone(preset("model.pretrained=false").model, (3, 256, 256), "image")
    assert net.out_dim == 512  # scratch training, asked for explicitly


def test_preset_loads_local_weights(tmp_path):
    torch.manual_seed(0)
    path = tmp_path / "resnet18.pt"
    state = resnet18(weights=None).state_dict()
    torch.save(state, path)
    net = build_backbone(preset(f"model.weights={path}").model, (3, 256, 256), "image")
    assert torch.equal(net.conv1.weight, state["conv1.weight"])


def test_given_statistics_are_checked(tmp_path):
    make_folder(tmp_path)
    for overrides, found in (
        (["data.std=null"], r"data\.mean=\[0\.485, 0\.456, 0\.406\] and data\.std=None"),
        (["data.mean=[0.5,0.5]", "data.std=[0.2,0.2]"], r"one value per channel \(3 here\)"),
        (["data.std=[0.2,0.0,0.2]"], "positive stds"),
    ):
        cfg = preset(f"data.root={tmp_path}", "data.source.num_threads=1", *overrides)
        with pytest.raises(ValueError, match=found):
            load_data(cfg.data)
    cfg = preset(
        f"data.root={tmp_path}", "data.source.num_threads=1", "data.mean=null", "data.std=null"
    )
    own = load_data(cfg.data)
    assert list(own.mean) != IMAGENET_MEAN and len(own.mean) == 3
