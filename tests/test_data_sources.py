"""load_data, the digits source, channel statistics and the configs/data group."""

from __future__ import annotations

from pathlib import Path

import hydra.utils
import numpy as np
import pytest
import torch
from omegaconf import OmegaConf
from sklearn.datasets import load_digits as sklearn_digits

from pico.data.bundle import Split, stratified_split
from pico.data.digits import load_digits
from pico.data.sources import SOURCES, SourceData, channel_stats, load_data
from pico.pll.candidates import generate_candidates

DATA_CONFIGS = Path(__file__).resolve().parents[1] / "configs" / "data"
MODELS = {"convnet", "resnet18", "resnet34", "resnet50", "mlp", "resnet18_imagenet"}
AUGS = {"digits", "grayscale28", "cifar", "tabular", "natural", "svhn", "imagenet"}
EXPECTED = {  # config -> (model, aug)
    "digits": ("convnet", "digits"),
    "mnist": ("convnet", "grayscale28"),
    "fashion_mnist": ("convnet", "grayscale28"),
    "cifar10": ("resnet18", "cifar"),
    "cifar100": ("resnet18", "cifar"),
    "cifar100_h": ("resnet18", "cifar"),
    "cifar10_folder": ("resnet18", "cifar"),
    "image_folder": ("resnet18", "cifar"),
    "svhn": ("resnet18", "svhn"),
    "stl10": ("resnet18", "natural"),
    "hf": ("resnet18", "cifar"),
    "mat": ("mlp", "tabular"),
    "cub200": ("resnet18_imagenet", "imagenet"),
    "plcifar10": ("resnet18", "cifar"),
}


def digits_cfg(seed: int = 0, **data_overrides):
    """The digits.yaml data node, resolved against a root config holding ``seed``."""
    root = OmegaConf.merge({"seed": seed}, OmegaConf.load(DATA_CONFIGS / "digits.yaml"))
    root.pop("defaults")
    for key, value in data_overrides.items():
        OmegaConf.update(root, f"data.{key}", value, merge=False)
    return root.data


def row_keys(inputs: torch.Tensor) -> list[bytes]:
    return sorted(row.numpy().tobytes() for row in inputs)


# --- channel_stats ---------------------------------------------------------------------


def test_channel_stats_matches_numpy():
    gen = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (37, 3, 5, 4), dtype=torch.uint8, generator=gen)
    mean, std = channel_stats(images, chunk_elements=8 * 3 * 5 * 4)
    ref = images.numpy().astype(np.float64) / 255.0
    np.testing.assert_allclose(mean, ref.mean(axis=(0, 2, 3)), rtol=1e-12)
    np.testing.assert_allclose(std, ref.std(axis=(0, 2, 3)), rtol=1e-10)


def test_channel_stats_rejects_bad_shape():
    with pytest.raises(ValueError, match="N, C, H, W"):
        channel_stats(torch.zeros(4, 8, dtype=torch.uint8))


# --- digits ----------------------------------------------------------------------------


def test_load_digits_pixels_split_and_stats():
    data = load_digits(test_fraction=0.2, seed=0)
    raw = sklearn_digits()
    assert data.train.inputs.dtype == torch.uint8 and data.train.inputs.shape[1:] == (1, 8, 8)
    assert data.train.targets.dtype == torch.int64
    assert len(data.train) + len(data.test) == len(raw.target)
    expected = np.rint(raw.images * 255.0 / 16.0).astype(np.uint8)[:, None]
    # every original image appears exactly once across train and test
    both = torch.cat([data.train.inputs, data.test.inputs])
    assert row_keys(both) == row_keys(torch.from_numpy(expected))
    assert int(both.max()) == 255
    counts = np.bincount(raw.target, minlength=10)
    test_counts = np.bincount(data.test.targets.numpy(), minlength=10)
    np.testing.assert_array_equal(test_counts, np.rint(0.2 * counts))
    ref = data.train.inputs.numpy().astype(np.float64) / 255.0
    assert data.mean == pytest.approx((ref.mean(),))
    assert data.std == pytest.approx((ref.std(),))
    assert data.class_names == [str(d) for d in range(10)] and data.kind == "image"


def test_load_digits_seed_changes_split():
    a, b, c = load_digits(seed=1), load_digits(seed=1), load_digits(seed=2)
    assert torch.equal(a.test.inputs, b.test.inputs)
    assert not torch.equal(a.test.inputs, c.test.inputs)


# --- load_data on digits.yaml ----------------------------------------------------------


def test_load_data_digits_yaml_shapes_partition_and_candidates():
    bundle = load_data(digits_cfg(seed=0))
    source = load_digits(test_fraction=0.2, seed=0)
    assert bundle.name == "digits" and bundle.num_classes == 10 and bundle.kind == "image"
    assert bundle.input_shape == (1, 8, 8) and bundle.mean == source.mean
    assert len(bundle.train) + len(bundle.val) == len(source.train)
    # train / val / test partition the whole data set
    parts = torch.cat([bundle.train.inputs, bundle.val.inputs, bundle.test.inputs])
    assert row_keys(parts) == row_keys(torch.cat([source.train.inputs, source.test.inputs]))
    # the held-out rows are the seeded stratified split of the source's train rows
    keep, held = stratified_split(source.train.targets, 0.1, 0)
    assert set(keep.tolist()).isdisjoint(held.tolist())
    assert torch.equal(bundle.val.inputs, source.train.inputs[held])
    assert torch.equal(bundle.train.inputs, source.train.inputs[keep])
    # stratified: every class in val, about 10% of each
    train_counts = np.bincount(source.train.targets.numpy(), minlength=10)
    val_counts = np.bincount(bundle.val.targets.numpy(), minlength=10)
    assert (val_counts > 0).all()
    np.testing.assert_array_equal(val_counts, np.rint(0.1 * train_counts))
    # candidates on train and val, the generator's rows split the same way
    full = generate_candidates("uniform", source.train.targets, 10, seed=0, q=0.3)
    assert bundle.train.candidates is not None and bundle.val.candidates is not None
    assert bundle.train.candidates.dtype == torch.bool
    assert torch.equal(bundle.train.candidates, full[keep])
    assert torch.equal(bundle.val.candidates, full[held])
    for split in (bundle.train, bundle.val):
        assert split.candidates[torch.arange(len(split)), split.targets].all()
    mean_size = float(bundle.train.candidates.sum(1).float().mean())
    assert abs(mean_size - (1 + 0.3 * 9)) < 0.2
    assert bundle.test.candidates is None


def test_load_data_same_seed_same_result_other_seed_differs():
    a, b, c = load_data(digits_cfg(3)), load_data(digits_cfg(3)), load_data(digits_cfg(4))
    for name in ("train", "val", "test"):
        sa, sb = getattr(a, name), getattr(b, name)
        assert torch.equal(sa.inputs, sb.inputs) and torch.equal(sa.targets, sb.targets)
    assert torch.equal(a.train.candidates, b.train.candidates)
    assert torch.equal(a.val.candidates, b.val.candidates)
    assert not torch.equal(a.val.inputs, c.val.inputs)


def test_load_data_without_candidates_and_custom_val_fraction():
    bundle = load_data(digits_cfg(candidates=None, val_fraction=0.25))
    assert bundle.train.candidates is None and bundle.val.candidates is None
    total = len(bundle.train) + len(bundle.val)
    assert abs(len(bundle.val) / total - 0.25) < 0.01


def test_load_data_short_source_name():
    cfg = digits_cfg()
    cfg.source._target_ = "digits"
    assert "digits" in SOURCES
    bundle = load_data(cfg)
    assert torch.equal(bundle.test.inputs, load_digits(seed=0).test.inputs)


def test_load_data_candidates_from_npz_and_csv(tmp_path):
    source = load_digits(seed=0)
    n = len(source.train)
    gen = torch.Generator().manual_seed(5)
    cands = torch.rand(n, 10, generator=gen) < 0.2
    cands[torch.arange(n), source.train.targets] = True
    np.savez(tmp_path / "c.npz", candidates=cands.numpy())
    rows = [";".join(str(j) for j in torch.nonzero(r).flatten().tolist()) for r in cands]
    (tmp_path / "c.csv").write_text(
        "index,candidates\n" + "".join(f"{i},{r}\n" for i, r in enumerate(rows))
    )
    keep, held = stratified_split(source.train.targets, 0.1, 0)
    for name in ("c.npz", "c.csv"):
        bundle = load_data(digits_cfg(candidates={"name": "file", "path": str(tmp_path / name)}))
        assert torch.equal(bundle.train.candidates, cands[keep])
        assert torch.equal(bundle.val.candidates, cands[held])


def test_load_data_candidate_file_errors(tmp_path):
    missing = tmp_path / "nope.npz"
    with pytest.raises(ValueError, match=r"nope\.npz.*data\.candidates\.path"):
        load_data(digits_cfg(candidates={"name": "file", "path": str(missing)}))
    other = tmp_path / "c.txt"
    other.write_text("0\n")
    with pytest.raises(ValueError, match=r"\.npz or \.csv"):
        load_data(digits_cfg(candidates={"name": "file", "path": str(other)}))
    with pytest.raises(ValueError, match="needs a path"):
        load_data(digits_cfg(candidates={"name": "file"}))
    with pytest.raises(ValueError, match="needs a `name`"):
        load_data(digits_cfg(candidates={"q": 0.3}))


def fake_source_with_candidates() -> SourceData:
    inputs = torch.zeros(20, 1, 2, 2, dtype=torch.uint8)
    targets = torch.arange(20) % 2
    cands = torch.ones(20, 2, dtype=torch.bool)
    return SourceData(Split(inputs, targets, cands), Split(inputs, targets), ["a", "b"])


def test_load_data_keeps_source_candidates_and_rejects_a_second_set():
    target = f"{__name__}.fake_source_with_candidates"
    cfg = OmegaConf.create({"name": "x", "source": {"_target_": target}, "candidates": None})
    bundle = load_data(cfg)
    assert bundle.val.candidates is not None and bundle.val.candidates.all()
    assert len(bundle.val) == 2
    cfg.candidates = {"name": "uniform", "q": 0.3}
    with pytest.raises(ValueError, match=r"data\.candidates=null"):
        load_data(cfg)


def test_load_data_rejects_non_source_target():
    cfg = OmegaConf.create({"source": {"_target_": "builtins.dict"}})
    with pytest.raises(ValueError, match="not SourceData"):
        load_data(cfg)
    with pytest.raises(ValueError, match="_target_"):
        load_data(OmegaConf.create({"source": {"seed": 0}}))


# --- configs/data ----------------------------------------------------------------------


def test_every_data_config_is_listed():
    assert {p.stem for p in DATA_CONFIGS.glob("*.yaml")} == set(EXPECTED)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_data_config_loads_with_omegaconf(name):
    path = DATA_CONFIGS / f"{name}.yaml"
    assert path.read_text().startswith("# @package _global_\n")
    cfg = OmegaConf.load(path)
    data = cfg.data
    assert data.name == name
    if name == "cifar100_h":  # extends cifar100 through its defaults list
        assert cfg.defaults[0] == "cifar100"
        assert dict(data.candidates) == {"name": "hierarchical", "q": 0.5}
        return
    assert OmegaConf.to_container(data, resolve=False)["seed"] == "${seed}"
    overrides = {k: v for d in cfg.defaults for k, v in d.items()}
    assert (overrides["override /model"], overrides["override /aug"]) == EXPECTED[name]
    assert overrides["override /model"] in MODELS and overrides["override /aug"] in AUGS
    assert data.val_fraction == 0.1
    assert callable(hydra.utils.get_method(data.source._target_))
    if name in ("mat", "plcifar10"):  # the file carries the candidate sets
        assert data.candidates is None
    elif name == "cub200":  # the paper's CUB-200 setting
        assert dict(data.candidates) == {"name": "uniform", "q": 0.05}
    else:
        assert dict(data.candidates) == {"name": "uniform", "q": 0.3}
    for required in ("root", "path"):
        if name in ("cifar10_folder", "image_folder", "cub200") and required == "root":
            assert OmegaConf.is_missing(data, "root")
        if name in ("hf", "mat") and required == "path":
            assert OmegaConf.is_missing(data, "path")
    if name == "plcifar10":
        assert OmegaConf.is_missing(data, "candidates_file")


@pytest.fixture(scope="module")
def hydra_config_dir(tmp_path_factory) -> Path:
    """A config tree with the real data group and stub model/aug groups."""
    root = tmp_path_factory.mktemp("conf")
    (root / "data").mkdir()
    for path in DATA_CONFIGS.glob("*.yaml"):
        (root / "data" / path.name).write_text(path.read_text())
    for group, options in (("model", MODELS), ("aug", AUGS)):
        (root / group).mkdir()
        for option in options:
            (root / group / f"{option}.yaml").write_text(f"choice: {option}\n")
    (root / "trainer" / "optimizer").mkdir(parents=True)
    for option in ("sgd", "adam"):
        (root / "trainer" / "optimizer" / f"{option}.yaml").write_text(f"choice: {option}\n")
    (root / "trainer" / "default.yaml").write_text("defaults:\n  - optimizer: sgd\n  - _self_\n")
    (root / "train.yaml").write_text(
        "defaults:\n  - model: convnet\n  - aug: digits\n  - trainer: default\n"
        "  - data: digits\n  - _self_\nseed: 7\n"
    )
    return root


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_data_config_composes_with_hydra(hydra_config_dir, name):
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(str(hydra_config_dir), version_base=None):
        cfg = compose("train", overrides=[f"data={name}"])
    assert (cfg.model.choice, cfg.aug.choice) == EXPECTED[name]
    assert cfg.data.name == name and cfg.data.seed == 7
    if name == "cifar100_h":
        assert cfg.data.source.name == "cifar100"
        assert dict(cfg.data.candidates) == {"name": "hierarchical", "q": 0.5}
    if name == "fashion_mnist":
        assert cfg.data.source.root is None
    if name in ("mnist", "cifar10"):
        assert cfg.data.source.root == cfg.data.root and cfg.data.source.download is False


def test_digits_config_through_hydra_loads(hydra_config_dir):
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(str(hydra_config_dir), version_base=None):
        cfg = compose("train", overrides=["data=digits", "data.candidates.q=0.5"])
    bundle = load_data(cfg.data)
    source = load_digits(seed=7)
    keep, _ = stratified_split(source.train.targets, 0.1, 7)
    full = generate_candidates("uniform", source.train.targets, 10, seed=7, q=0.5)
    assert torch.equal(bundle.train.candidates, full[keep])
