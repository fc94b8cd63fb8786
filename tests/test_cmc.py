"""CMC: the RGB -> L*a*b* conversion, the view split, the pair sets of the two objectives,
the loss against naive float64 loops, the memory update, the method, its config and
resume."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from conftest import assert_exact_resume, method_config, step_info
from hydra import compose, initialize_config_module
from torch import Tensor, nn

from pico.baselines.cmc import CMC, ViewSplit, cmc_loss, directed_pairs, view_pairs
from pico.data.color import LAB_RANGE, normalize_lab, rgb_to_lab
from pico.engine.method import Batch, TaskInfo
from pico.models.convnet import SmallConvNet
from pico.models.vit import VisionTransformer

DT = torch.float64
INFO = step_info()


# --- RGB -> L*a*b* -----------------------------------------------------------------------


def _naive_lab_pixel(r: float, g: float, b: float) -> tuple[float, float, float]:
    """One pixel by the textbook formulas, in Python floats (float64)."""

    def linear(c: float) -> float:
        return c / 12.92 if c <= 0.04045 else ((c + 0.055) / 1.055) ** 2.4

    rl, gl, bl = linear(r), linear(g), linear(b)
    x = (0.412453 * rl + 0.357580 * gl + 0.180423 * bl) / 0.95047
    y = (0.212671 * rl + 0.715160 * gl + 0.072169 * bl) / 1.0
    z = (0.019334 * rl + 0.119193 * gl + 0.950227 * bl) / 1.08883

    def f(t: float) -> float:
        return t ** (1 / 3) if t > 216 / 24389 else (24389 / 27 * t + 16) / 116

    return 116 * f(y) - 16, 500 * (f(x) - f(y)), 200 * (f(y) - f(z))


def test_lab_matches_a_naive_per_pixel_float64_loop() -> None:
    gen = torch.Generator().manual_seed(0)
    rgb = torch.rand(2, 3, 4, 5, generator=gen, dtype=DT)
    rgb[0, :, 0, 0] = 0.01  # below the sRGB linear threshold
    rgb[0, :, 0, 1] = torch.tensor([0.002, 0.0, 0.003])  # Y below (6/29)^3: linear f
    got = rgb_to_lab(rgb)
    assert got.shape == rgb.shape and got.dtype == DT
    for n in range(2):
        for i in range(4):
            for j in range(5):
                want = torch.tensor(_naive_lab_pixel(*rgb[n, :, i, j].tolist()), dtype=DT)
                torch.testing.assert_close(got[n, :, i, j], want, rtol=1e-10, atol=1e-10)


# scikit-image's rgb2lab of the cube's corners (D65, 2 degrees), by hand from its formulas
CORNERS = {
    (1.0, 1.0, 1.0): (100.0, 0.0, 0.0),
    (0.0, 0.0, 0.0): (0.0, 0.0, 0.0),
    (1.0, 0.0, 0.0): (53.2408, 80.0925, 67.2032),
    (0.0, 1.0, 0.0): (87.7347, -86.1827, 83.1793),
    (0.0, 0.0, 1.0): (32.2970, 79.1875, -107.8602),
    (1.0, 1.0, 0.0): (97.1393, -21.5537, 94.4780),
    (1.0, 0.0, 1.0): (60.3199, 98.2343, -60.8249),
}


def test_lab_of_the_cube_corners_and_its_range() -> None:
    rgb = torch.tensor(list(CORNERS), dtype=DT).T[:, :, None]  # (3, 7, 1)
    got = rgb_to_lab(rgb)[:, :, 0].T
    want = torch.tensor(list(CORNERS.values()), dtype=DT)
    torch.testing.assert_close(got, want, atol=2e-2, rtol=0)
    grid = torch.linspace(0, 1, 11, dtype=DT)
    cube = torch.cartesian_prod(grid, grid, grid).T[:, :, None]
    lab = rgb_to_lab(cube)
    for channel, (low, high) in enumerate(LAB_RANGE):
        assert lab[channel].min() == pytest.approx(low, abs=2e-3)  # attained at a corner
        assert lab[channel].max() == pytest.approx(high, abs=2e-3)
    scaled = normalize_lab(lab)
    assert scaled.min() >= -1 - 1e-4 and scaled.max() <= 1 + 1e-4
    torch.testing.assert_close(normalize_lab(torch.tensor([[[50.0]], [[6.025]], [[-6.6895]]])),
                               torch.zeros(3, 1, 1), atol=1e-6, rtol=0)  # fmt: skip


def test_lab_clamps_keeps_low_precision_dtypes_and_refuses_bad_input() -> None:
    rgb = torch.tensor([1.5, -0.2, 0.3])[:, None, None]
    torch.testing.assert_close(rgb_to_lab(rgb), rgb_to_lab(rgb.clamp(0, 1)))
    half = rgb_to_lab(torch.rand(3, 2, 2, dtype=torch.bfloat16))
    assert half.dtype == torch.bfloat16 and torch.isfinite(half.float()).all()
    with pytest.raises(ValueError, match=r"\(\.\.\., 3, H, W\)"):
        rgb_to_lab(torch.rand(1, 4, 4))
    with pytest.raises(ValueError, match="divide uint8 images by 255"):
        rgb_to_lab(torch.zeros(3, 2, 2, dtype=torch.uint8))


# --- the view split ----------------------------------------------------------------------


def test_halves_split_images_by_rows_and_rows_by_features() -> None:
    x = torch.arange(2 * 1 * 5 * 3, dtype=torch.float32).reshape(2, 1, 5, 3)
    split = ViewSplit("auto", (1, 5, 3), "image")
    assert split.rule == "halves" and split.shapes == [(1, 2, 3), (1, 3, 3)]
    top, bottom = split(x)
    assert torch.equal(top, x[:, :, :2]) and torch.equal(bottom, x[:, :, 2:])
    rows = torch.randn(4, 7)
    split = ViewSplit("auto", (7,), "tabular")
    assert split.rule == "halves" and split.shapes == [(3,), (4,)]
    first, second = split(rows)
    assert torch.equal(first, rows[:, :3]) and torch.equal(second, rows[:, 3:])
    assert ViewSplit("halves", (8,)).kind == "tabular"  # the kind read from the shape


def test_interleaved_split_takes_even_then_odd_rows_or_features() -> None:
    x = torch.randn(2, 1, 5, 3)
    split = ViewSplit("interleaved", (1, 5, 3), "image")
    assert split.shapes == [(1, 3, 3), (1, 2, 3)]
    even, odd = split(x)
    assert torch.equal(even, x[:, :, 0::2]) and torch.equal(odd, x[:, :, 1::2])
    rows = torch.randn(4, 7)
    split = ViewSplit("interleaved", (7,), "tabular")
    assert split.shapes == [(4,), (3,)]
    even, odd = split(rows)
    assert torch.equal(even, rows[:, 0::2]) and torch.equal(odd, rows[:, 1::2])


def test_lab_split_undoes_the_normalisation_and_cuts_l_from_ab() -> None:
    mean, std = (0.4, 0.5, 0.6), (0.2, 0.25, 0.3)
    raw = torch.rand(3, 3, 4, 4, generator=torch.Generator().manual_seed(1))
    x = (raw - torch.tensor(mean)[:, None, None]) / torch.tensor(std)[:, None, None]
    lab = normalize_lab(rgb_to_lab(raw))
    split = ViewSplit("auto", (3, 4, 4), "image", mean, std)
    assert split.rule == "lab" and split.shapes == [(1, 4, 4), (2, 4, 4)]
    l_view, ab_view = split(x)
    torch.testing.assert_close(l_view, lab[:, :1], atol=1e-5, rtol=0)
    torch.testing.assert_close(ab_view, lab[:, 1:], atol=1e-5, rtol=0)
    three = ViewSplit("l_a_b", (3, 4, 4), "image", mean, std)
    assert three.shapes == [(1, 4, 4)] * 3
    for got, want in zip(three(x), lab.split(1, dim=1), strict=True):
        torch.testing.assert_close(got, want, atol=1e-5, rtol=0)
    unnormalised = ViewSplit("lab", (3, 4, 4), "image")  # no mean/std: inputs on 0-1
    torch.testing.assert_close(unnormalised(raw)[1], lab[:, 1:])


def test_bad_splits_are_clear_errors() -> None:
    with pytest.raises(ValueError, match="split must be one of"):
        ViewSplit("rows", (1, 8, 8), "image")
    with pytest.raises(ValueError, match=r"needs 3-channel images.*use split=halves"):
        ViewSplit("lab", (1, 8, 8), "image")
    with pytest.raises(ValueError, match="needs 3-channel images"):
        ViewSplit("l_a_b", (12,), "tabular")
    with pytest.raises(ValueError, match="at least 2 of them"):
        ViewSplit("halves", (1, 1, 8), "image")
    with pytest.raises(ValueError, match="at least 2 of them"):
        ViewSplit("interleaved", (1,), "tabular")
    with pytest.raises(ValueError, match="one mean and one std per RGB channel"):
        ViewSplit("lab", (3, 4, 4), "image", (0.5,), (0.5,))
    with pytest.raises(ValueError, match="image inputs of 3 dimension"):
        ViewSplit("halves", (8, 8), "image")


# --- the objectives ----------------------------------------------------------------------


def test_core_view_and_full_graph_pair_sets() -> None:
    assert view_pairs(2, "core") == view_pairs(2, "full") == [(0, 1)]
    assert view_pairs(3, "core") == [(0, 1), (0, 2)]
    assert view_pairs(3, "full") == [(0, 1), (0, 2), (1, 2)]
    assert view_pairs(4, "core") == [(0, 1), (0, 2), (0, 3)]
    assert len(view_pairs(5, "full")) == 10
    assert directed_pairs([(0, 1), (1, 2)]) == [(0, 1), (1, 0), (1, 2), (2, 1)]
    with pytest.raises(ValueError, match="objective must be one of"):
        view_pairs(3, "star")
    with pytest.raises(ValueError, match="at least 2 views"):
        view_pairs(1, "core")


def _unit(*shape: int, seed: int) -> Tensor:
    gen = torch.Generator().manual_seed(seed)
    return F.normalize(torch.randn(*shape, generator=gen, dtype=DT), dim=-1)


def _naive_loss(z, banks, index, pairs, t, noise_index=None, log_z=None) -> Tensor:
    """Sum over pairs and both directions of the batch mean of the paper's per-example
    loss, with probabilities (no log-space tricks), one example at a time."""
    n = banks.shape[1]
    total = torch.zeros((), dtype=DT)
    d = 0
    for i, j in pairs:
        for a, b in ((i, j), (j, i)):
            direction = torch.zeros((), dtype=DT)
            for r, row in enumerate(index.tolist()):
                scores = [torch.exp((z[a][r] * banks[b][s]).sum() / t) for s in range(n)]
                if noise_index is None:
                    direction = direction - torch.log(scores[row] / sum(scores))
                    continue
                k = noise_index.shape[1]
                zed = math.exp(float(log_z[d]))
                p = scores[row] / zed
                direction = direction - torch.log(p / (p + k / n))
                for s in noise_index[r].tolist():
                    pn = scores[s] / zed
                    direction = direction - torch.log(1 - pn / (pn + k / n))
            total = total + direction / len(index)
            d += 1
    return total


@pytest.mark.parametrize("objective", ["core", "full"])
@pytest.mark.parametrize("nce", [False, True])
def test_loss_matches_naive_loop_in_value_and_gradient(objective: str, nce: bool) -> None:
    views, n, dim, t = 3, 7, 4, 0.3
    z = [_unit(4, dim, seed=v).requires_grad_(True) for v in range(views)]
    banks = _unit(views, n, dim, seed=10)
    index = torch.tensor([3, 0, 6, 3])
    pairs = view_pairs(views, objective)
    noise_index = log_z = None
    if nce:
        noise_index = torch.randint(0, n, (4, 5), generator=torch.Generator().manual_seed(2))
        log_z = torch.linspace(1.5, 2.5, 2 * len(pairs), dtype=DT)
    got = cmc_loss(z, banks, index, pairs, t, noise_index, log_z)
    want = _naive_loss(z, banks, index, pairs, t, noise_index, log_z)
    assert got.dtype == torch.float32  # computed in float32, like the training step
    torch.testing.assert_close(got, want.float(), rtol=1e-5, atol=1e-5)
    for g, w in zip(torch.autograd.grad(got, z), torch.autograd.grad(want, z), strict=True):
        torch.testing.assert_close(g.double(), w, rtol=1e-4, atol=1e-5)


def test_full_graph_adds_the_pairs_without_the_core_view() -> None:
    z = [_unit(3, 4, seed=v) for v in range(3)]
    banks, index = _unit(3, 5, 4, seed=4), torch.tensor([0, 2, 4])
    core = cmc_loss(z, banks, index, view_pairs(3, "core"))
    full = cmc_loss(z, banks, index, view_pairs(3, "full"))
    torch.testing.assert_close(full - core, cmc_loss(z, banks, index, [(1, 2)]))
    with pytest.raises(ValueError, match="one normaliser per direction"):
        cmc_loss(z, banks, index, [(0, 1)], noise_index=torch.zeros(3, 2, dtype=torch.long))
    with pytest.raises(ValueError, match="one \\(N, D\\) bank per view"):
        cmc_loss(z[:2], banks, index, [(0, 1)])


# --- the method ---------------------------------------------------------------------------


def _factory(shape: tuple[int, ...]) -> nn.Module:
    return SmallConvNet(shape[0], widths=(4, 6))


def _task(shape=(1, 4, 4), num_train=10, kind="image", factory=_factory, **kw) -> TaskInfo:
    return TaskInfo(10, num_train, shape, kind, make_backbone=factory, **kw)


def _method(seed=0, shape=(1, 4, 4), num_train=10, **kwargs) -> CMC:
    torch.manual_seed(seed)
    kw = {key: kwargs.pop(key) for key in ("mean", "std", "kind") if key in kwargs}
    return CMC(nn.Identity(), _task(shape, num_train, **kw), proj_dim=8, **kwargs)


def _batch(index: list[int], shape=(1, 4, 4), seed: int = 1) -> Batch:
    x = torch.rand(len(index), *shape, generator=torch.Generator().manual_seed(seed))
    return Batch(torch.tensor(index), [x])


def test_one_encoder_per_view_with_the_view_channels() -> None:
    rgb = _method(shape=(3, 4, 4), mean=(0.5,) * 3, std=(0.25,) * 3)
    encoders = rgb.backbone.encoders
    assert [enc.blocks[0].convs[0].in_channels for enc in encoders] == [1, 2]
    assert rgb.split == "lab" and rgb.pairs == [(0, 1)] and rgb.exact
    three = _method(shape=(3, 4, 4), split="l_a_b", objective="full")
    assert [enc.blocks[0].convs[0].in_channels for enc in three.backbone.encoders] == [1, 1, 1]
    assert three.pairs == [(0, 1), (0, 2), (1, 2)] and three.log_z.shape == (6,)
    assert _method(shape=(3, 4, 4), split="l_a_b").pairs == [(0, 1), (0, 2)]
    tabular = CMC(nn.Identity(), _task((9,), kind="tabular", factory=lambda s: _linear(s, 5)))
    assert [enc[0].in_features for enc in tabular.backbone.encoders] == [4, 5]
    assert tabular.backbone.out_dim == 10 and tabular.memory_bank.shape == (2, 10, 128)
    defaults = CMC(nn.Identity(), _task())
    assert (defaults.temperature, defaults.bank_momentum, defaults.num_noise) == (0.07, 0.5, 10)
    assert defaults.heads[0].out_features == 128 and defaults.objective == "core"
    assert CMC.views == ("contrastive",)


def _linear(shape: tuple[int, ...], out: int) -> nn.Module:
    net = nn.Sequential(nn.Linear(shape[0], out))
    net.out_dim = out  # type: ignore[assignment]
    return net


def test_step_is_the_loss_of_each_views_embedding_and_evaluation_concatenates() -> None:
    method = _method(shape=(3, 4, 4), split="l_a_b", objective="full")
    batch = _batch([1, 5, 8], shape=(3, 4, 4))
    loss = method.training_step(batch, INFO)["loss"]
    (x,) = batch.views
    views = method.backbone.split(x)
    z = [
        F.normalize(head(enc(v)), dim=1)
        for head, enc, v in zip(method.heads, method.backbone.encoders, views, strict=True)
    ]
    want = cmc_loss(z, method.memory_bank, batch.index, method.pairs, 0.07)
    torch.testing.assert_close(loss, want)
    loss.backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in method.optim_parameters())
    method.eval()  # BatchNorm with running statistics from here on
    views = method.backbone.split(x)
    z = [
        F.normalize(head(enc(v)), dim=1)
        for head, enc, v in zip(method.heads, method.backbone.encoders, views, strict=True)
    ]
    features = method.features(x)
    encoders = method.backbone.encoders
    want = torch.cat([enc(v) for enc, v in zip(encoders, views, strict=True)], dim=1)
    torch.testing.assert_close(features, want)
    assert features.shape == (3, 18)
    embedding = method.embed(x)
    torch.testing.assert_close(embedding, torch.cat(z, dim=1).detach() / math.sqrt(3))
    torch.testing.assert_close(embedding.norm(dim=1), torch.ones(3))
    bank = method.knn_bank()
    assert bank.shape == (10, 24)
    torch.testing.assert_close(bank[4, 8:16] * math.sqrt(3), method.memory_bank[1, 4])


def test_each_views_bank_moves_to_its_own_embedding_by_the_paper_rule() -> None:
    method = _method(bank_momentum=0.3)
    before = method.memory_bank.clone()
    batch = _batch([2, 7, 4])
    method.training_step(batch, INFO)
    with torch.no_grad():
        z = method.embed_views(batch.views[0])
    method.after_optimizer_step(INFO)
    for view in range(2):
        for r, row in enumerate([2, 7, 4]):
            mixed = 0.3 * before[view, row] + 0.7 * z[view][r]
            torch.testing.assert_close(method.memory_bank[view, row], mixed / mixed.norm())
        untouched = [i for i in range(10) if i not in (2, 7, 4)]
        assert torch.equal(method.memory_bank[view, untouched], before[view, untouched])
    moved = method.memory_bank.clone()
    method.after_optimizer_step(INFO)  # nothing pending: the bank stays
    assert torch.equal(method.memory_bank, moved)


def test_nce_normalisers_are_estimated_once_per_direction_and_kept() -> None:
    n, k = 30, 6
    method = _method(num_train=n, exact=False, num_noise=k, temperature=0.5)
    assert not method.exact and method.num_noise == k
    batch = _batch([1, 4, 28])
    bank = method.memory_bank.clone()
    torch.manual_seed(5)
    loss = method.training_step(batch, INFO)["loss"]
    torch.manual_seed(5)
    noise = torch.randint(0, n, (3, k))
    with torch.no_grad():
        z = method.embed_views(batch.views[0])
    for d, (a, b) in enumerate([(0, 1), (1, 0)]):
        sims = torch.stack([(z[a][r] * bank[b][s]).sum() / 0.5 for r in range(3) for s in noise[r]])
        log_z = math.log(n * sims.exp().mean().item())
        assert method.log_z[d].item() == pytest.approx(log_z, rel=1e-5)
    torch.testing.assert_close(
        loss, cmc_loss(z, bank, batch.index, [(0, 1)], 0.5, noise, method.log_z)
    )
    assert bool(method.log_z_known)
    kept = method.log_z.clone()
    method.training_step(_batch([0, 2], seed=9), INFO)
    assert torch.equal(method.log_z, kept)
    # a loaded normaliser is kept, not estimated again
    fresh = _method(num_train=n, exact=False, num_noise=k, temperature=0.5, seed=3)
    fresh.load_state_dict(method.state_dict())
    fresh.training_step(batch, INFO)
    assert torch.equal(fresh.log_z, kept)


def test_loss_decreases_on_a_fixed_batch() -> None:
    method = _method(num_train=16)
    batch = _batch(list(range(16)))
    optimizer = torch.optim.SGD(method.optim_parameters(), lr=0.1, momentum=0.9)
    losses = []
    for _ in range(20):
        loss = method.training_step(batch, INFO)["loss"]
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        method.after_optimizer_step(INFO)
        losses.append(loss.item())
    assert sum(losses[-5:]) / 5 < 0.9 * sum(losses[:5]) / 5


def test_colour_views_train_on_vits_and_halves_name_the_shape_a_vit_refuses() -> None:
    def vit(shape: tuple[int, ...]) -> nn.Module:
        return VisionTransformer(shape[0], shape[1:], patch_size=2, width=8, depth=1, heads=2)

    torch.manual_seed(0)
    method = CMC(nn.Identity(), _task((3, 4, 4), factory=vit), proj_dim=8)
    loss = method.training_step(_batch([0, 3, 5], shape=(3, 4, 4)), INFO)["loss"]
    loss.backward()
    assert torch.isfinite(loss)
    assert all(p.grad is not None for p in method.backbone.parameters())
    with pytest.raises(ValueError, match=r"gives views of shapes .*\(1, 2, 4\).*square images"):
        CMC(nn.Identity(), _task((1, 4, 4), factory=vit))


def test_bad_arguments_raise_value_error() -> None:
    with pytest.raises(ValueError, match="temperature must be > 0"):
        _method(temperature=0.0)
    with pytest.raises(ValueError, match="bank_momentum must lie in"):
        _method(bank_momentum=1.5)
    with pytest.raises(ValueError, match="proj_dim must be >= 1"):
        CMC(nn.Identity(), _task(), proj_dim=0)
    with pytest.raises(ValueError, match="num_noise must be >= 1"):
        _method(num_noise=0)
    with pytest.raises(ValueError, match="objective must be one of"):
        _method(objective="star")
    with pytest.raises(ValueError, match="make_backbone=fn"):
        CMC(nn.Identity(), _task(factory=None))
    with pytest.raises(ValueError, match=r"needs TaskInfo\.input_shape"):
        CMC(nn.Identity(), TaskInfo(10, 10, make_backbone=_factory))


# --- config and runs -----------------------------------------------------------------------


def test_method_config_holds_the_paper_values() -> None:
    cfg = method_config("cmc")
    assert cfg.eval.select_metric == "val/knn_top1" and cfg.eval.knn.enabled
    assert cfg.eval.linear_probe
    node = cfg.method
    assert (node.split, node.objective, node.proj_dim) == ("auto", "core", 128)
    assert node.temperature == 0.07
    assert (node.bank_momentum, node.num_noise, node.exact) == (0.5, 4096, None)


def test_digits_run_composes_with_the_paper_optimizer() -> None:
    with initialize_config_module("pico.configs", version_base="1.3"):
        cfg = compose("train", overrides=["data=digits", "method=cmc", "method.objective=full"])
    assert cfg.trainer.optimizer.lr == pytest.approx(0.03 * 64 / 256)
    assert cfg.trainer.optimizer.weight_decay == 1e-4
    assert cfg.trainer.epochs == 100 and cfg.method.objective == "full"


def test_resume_from_mid_run_checkpoint_matches_uninterrupted_run(make_config, tmp_path) -> None:
    final = assert_exact_resume(make_config, tmp_path, "method=cmc")
    assert final["method"]["memory_bank"].shape[0] == 2
    assert any(k.startswith("backbone.encoders.1.") for k in final["method"])


def test_export_refuses_the_per_view_backbone_and_names_parts_backbone(make_config) -> None:
    from pico.experiment import build_experiment
    from pico.export import check_rebuilds

    for name in ("cmc", "instdisc"):
        cfg = make_config(f"method={name}")
        exp = build_experiment(cfg)
        shape, kind = exp.bundle.input_shape, exp.bundle.kind
        if name == "instdisc":  # one model: the export rebuilds it
            check_rebuilds(exp.method, cfg.model, shape, kind)
            continue
        with pytest.raises(ValueError, match="supports parts=backbone for it"):
            check_rebuilds(exp.method, cfg.model, shape, kind)
