"""Batched augmentation: ops against torchvision / naive loops, parameter statistics,
reproducibility, the BatchAugment wrapper and every recipe in configs/aug."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import torchvision.transforms.v2.functional as TF
from omegaconf import OmegaConf
from scipy import stats
from torchvision.transforms.v2 import InterpolationMode

from pico.data import augment as A
from pico.data import randaugment as R

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
CONFIG_DIR = Path(__file__).resolve().parents[1] / "configs" / "aug"
BILINEAR = InterpolationMode.BILINEAR


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Tiny batches gain nothing from intra-op threads; on a busy 2-core machine every
    parallel region can stall for a scheduler slice, so run this module on one thread."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _gen(seed: int, device: str = "cpu") -> torch.Generator:
    return torch.Generator(device=device).manual_seed(seed)


def _images(b: int = 6, c: int = 3, h: int = 32, w: int = 32, seed: int = 0) -> torch.Tensor:
    """Smooth-ish random images in [0, 1] (local averages of noise)."""
    g = torch.Generator().manual_seed(seed)
    noise = torch.rand(b, c, h + 2, w + 2, generator=g)
    return F.avg_pool2d(noise, 3, 1).clamp(0, 1)


def _uint8_images(b: int = 6, c: int = 3, h: int = 32, w: int = 32, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (b, c, h, w), generator=g, dtype=torch.uint8)


def _per_image(fn, x: torch.Tensor, *args) -> torch.Tensor:
    """Apply ``fn(image, *arg_i)`` sample by sample (the naive reference)."""
    return torch.stack([fn(x[i], *(a[i] for a in args)) for i in range(len(x))])


def _binomial_ok(hits: int, n: int, p: float) -> bool:
    return abs(hits - n * p) <= 5 * math.sqrt(n * p * (1 - p)) + 1


# ---------------------------------------------------------------------------
# geometry


def test_resized_crop_matches_torchvision():
    x = _images(8, h=32, w=40)
    for size, op in (
        ((32, 40), A.RandomResizedCrop()),
        ((48, 56), A.RandomResizedCrop(size=(48, 56))),
    ):
        p = op.sample_params(x.shape, _gen(1))
        ref = torch.stack(
            [
                TF.resized_crop(
                    x[i],
                    int(p["top"][i]),
                    int(p["left"][i]),
                    int(p["height"][i]),
                    int(p["width"][i]),
                    list(size),
                    antialias=False,
                )
                for i in range(len(x))
            ]
        )
        torch.testing.assert_close(op.apply(x, p), ref, atol=1e-5, rtol=0)


def test_resized_crop_fallback_is_a_central_crop():
    # an area of 100% at aspect 2 never fits a square image: torchvision's fallback
    op = A.RandomResizedCrop(scale=(1.0, 1.0), ratio=(2.0, 2.0))
    p = op.sample_params((5, 3, 32, 32), _gen(0))
    assert p["width"].tolist() == [32] * 5 and p["height"].tolist() == [16] * 5
    assert p["top"].tolist() == [8] * 5 and p["left"].tolist() == [0] * 5


@pytest.mark.parametrize("hw", [(40, 30), (30, 52), (24, 24), (17, 70)])
def test_resize_and_center_crop_match_torchvision(hw):
    x = _images(3, h=hw[0], w=hw[1])
    resize = A.Resize(24)
    out = resize(x)
    ref = TF.resize(x, [24], interpolation=BILINEAR, antialias=True)
    torch.testing.assert_close(out, ref, atol=1e-6, rtol=0)
    assert tuple(resize.output_shape(x.shape)) == out.shape
    for size in (20, (18, 11), (24, 24), (13, 12)):
        crop = A.CenterCrop(size)
        sizes = [size, size] if isinstance(size, int) else list(size)
        got = crop(out)
        assert torch.equal(got, TF.center_crop(out, sizes))  # odd margins round as there
        assert tuple(crop.output_shape(out.shape)) == got.shape


def test_resize_keeps_images_of_its_size_and_center_crop_refuses_small_ones():
    x = _images(2, h=24, w=30)
    assert A.Resize(24)(x) is x
    with pytest.raises(ValueError, match=r"at least 32x32, got 24x30; store the images larger"):
        A.CenterCrop(32)(x)
    for make in (lambda: A.Resize(0), lambda: A.Resize(2.5), lambda: A.CenterCrop((3, 0))):
        with pytest.raises(ValueError, match="positive"):
            make()


def test_resized_crop_area_statistics():
    n, side = 20000, 1000
    square = A.RandomResizedCrop(scale=(0.2, 1.0), ratio=(1.0, 1.0))
    p = square.sample_params((n, 1, side, side), _gen(3))
    area = (p["height"] * p["width"]).double() / side**2
    assert area.min() >= 0.2 - 0.003 and area.max() <= 1.0
    # uniform on [0.2, 1]: mean 0.6, sd 0.8 / sqrt(12)
    assert abs(area.mean().item() - 0.6) < 5 * 0.8 / math.sqrt(12 * n)
    assert stats.kstest(area.numpy(), "uniform", args=(0.2, 0.8)).pvalue > 1e-3

    op = A.RandomResizedCrop(scale=(0.2, 1.0), ratio=(3 / 4, 4 / 3))
    p = op.sample_params((n, 3, 32, 32), _gen(4))
    h, w = p["height"], p["width"]
    assert (p["top"] >= 0).all() and (p["top"] + h <= 32).all()
    assert (p["left"] >= 0).all() and (p["left"] + w <= 32).all()
    area = (h * w).double() / 1024
    assert area.min() > 0.15 and area.max() <= 1.0
    ratio = w.double() / h
    assert ratio.min() > 0.7 and ratio.max() < 1.42
    # offsets are uniform over the free room: mean top = (32 - h) / 2
    assert abs((p["top"] - (32 - h) / 2).double().mean()) < 0.15


@pytest.mark.parametrize("device", DEVICES)
def test_hflip_and_share(device):
    x = _images(4).to(device)
    out = A.RandomHorizontalFlip(p=1.0)(x, _gen(0, device))
    torch.testing.assert_close(out, TF.horizontal_flip(x), atol=0, rtol=0)
    torch.testing.assert_close(A.RandomHorizontalFlip(p=0.0)(x, _gen(0, device)), x)
    flips = A.RandomHorizontalFlip(p=0.3).sample_params((20000,), _gen(1, device), device)
    assert _binomial_ok(int(flips["flip"].sum()), 20000, 0.3)


def test_translate_matches_loop_and_is_uniform():
    x = _images(10, c=2, h=8, w=9)
    op = A.RandomTranslate(max_pixels=2)
    p = op.sample_params(x.shape, _gen(5))
    ref = torch.zeros_like(x)
    for i in range(len(x)):
        dy, dx = int(p["dy"][i]), int(p["dx"][i])
        for r in range(8):
            for c in range(9):
                if 0 <= r - dy < 8 and 0 <= c - dx < 9:
                    ref[i, :, r, c] = x[i, :, r - dy, c - dx]
    torch.testing.assert_close(op.apply(x, p), ref, atol=0, rtol=0)
    shifts = op.sample_params((25000, 1, 8, 8), _gen(6))
    for key in ("dy", "dx"):
        counts = torch.bincount(shifts[key] + 2, minlength=5).numpy()
        assert len(counts) == 5
        assert stats.chisquare(counts).pvalue > 1e-3


# ---------------------------------------------------------------------------
# colour


def _jitter_reference(x, p):
    """Torchvision ops per sample in that sample's drawn order."""
    out = []
    for i in range(len(x)):
        img = x[i]
        for op in p["order"][i].tolist():
            if op == 0:
                img = TF.adjust_brightness(img, float(p["brightness"][i]))
            elif op == 1:
                img = TF.adjust_contrast(img, float(p["contrast"][i]))
            elif op == 2:
                img = TF.adjust_saturation(img, float(p["saturation"][i]))
            else:
                img = TF.adjust_hue(img, float(p["hue"][i]))
        out.append(img)
    return torch.stack(out)


@pytest.mark.parametrize("channels", [3, 1])
def test_color_jitter_matches_torchvision_in_drawn_order(channels):
    x = _images(24, c=channels)
    op = A.ColorJitter(brightness=0.6, contrast=0.6, saturation=0.6, hue=0.4, p=1.0)
    p = op.sample_params(x.shape, _gen(2))
    torch.testing.assert_close(op.apply(x, p), _jitter_reference(x, p), atol=2e-5, rtol=0)


def test_color_jitter_fixed_factor_and_probability():
    x = _images(400, seed=1)
    op = A.ColorJitter(brightness=(1.5, 1.5), contrast=(1, 1), saturation=(1, 1), hue=(0, 0), p=0.8)
    out = op(x, _gen(3))
    bright = (x * 1.5).clamp(0, 1)
    changed = (out - x).abs().amax((1, 2, 3)) > 0
    assert torch.equal(out[changed], bright[changed])
    assert torch.equal(out[~changed], x[~changed])
    assert _binomial_ok(int(changed.sum()), 400, 0.8)


def test_color_jitter_parameter_statistics():
    n = 20000
    op = A.ColorJitter(brightness=0.4, contrast=0.2, saturation=0.3, hue=0.1, p=0.8)
    p = op.sample_params((n, 3, 4, 4), _gen(4))
    active = p["apply"]
    assert _binomial_ok(int(active.sum()), n, 0.8)
    for key, (low, high) in (
        ("brightness", (0.6, 1.4)),
        ("contrast", (0.8, 1.2)),
        ("saturation", (0.7, 1.3)),
        ("hue", (-0.1, 0.1)),
    ):
        v = p[key][active]
        assert v.min() >= low and v.max() <= high
        assert stats.kstest(v.numpy(), "uniform", args=(low, high - low)).pvalue > 1e-3
        identity = 0.0 if key == "hue" else 1.0
        assert (p[key][~active] == identity).all()
    order = p["order"]
    assert (order.sort(1).values == torch.arange(4)).all()  # permutations
    for slot in range(4):
        assert stats.chisquare(torch.bincount(order[:, slot], minlength=4).numpy()).pvalue > 1e-3
    # brightness never goes below 0 even for a range wider than 1
    assert A.ColorJitter(brightness=1.5).brightness == (0.0, 2.5)


def test_hue_matches_torchvision_on_edge_cases():
    # gray pixels, saturated primaries and ties between channels
    levels = torch.tensor([0.0, 0.5, 1.0])
    grid = torch.cartesian_prod(levels, levels, levels).T.reshape(1, 3, 3, 9)
    x = torch.cat([grid, _images(1, h=3, w=9)])
    for shift in (-0.5, -0.2, 0.0, 0.13, 0.5):
        out = A.adjust_hue(x, torch.full((2,), shift))
        torch.testing.assert_close(out, TF.adjust_hue(x, shift), atol=2e-6, rtol=0)


@pytest.mark.parametrize("device", DEVICES)
def test_grayscale_matches_torchvision_and_share(device):
    x = _images(4).to(device)
    out = A.RandomGrayscale(p=1.0)(x, _gen(0, device))
    torch.testing.assert_close(
        out, TF.rgb_to_grayscale(x, num_output_channels=3), atol=1e-6, rtol=0
    )
    one = x[:, :1]
    assert torch.equal(A.RandomGrayscale(p=1.0)(one, _gen(0, device)), one)
    p = A.RandomGrayscale(p=0.2).sample_params((20000,), _gen(1, device), device)
    assert _binomial_ok(int(p["gray"].sum()), 20000, 0.2)


@pytest.mark.parametrize("size,kernel", [(32, 3), (96, 9), (224, 23), (8, 3)])
def test_blur_kernel_size(size, kernel):
    assert A.GaussianBlur(kernel_frac=0.1).kernel_size(size, size + 5) == kernel


def test_blur_matches_torchvision_per_sample_sigma():
    x = _images(6, h=40, w=40)
    op = A.GaussianBlur(sigma=(0.1, 2.0), p=1.0, kernel_frac=0.2)
    p = op.sample_params(x.shape, _gen(7))
    k = op.kernel_size(40, 40)
    ref = torch.stack(
        [TF.gaussian_blur(x[i], [k, k], [float(p["sigma"][i])] * 2) for i in range(len(x))]
    )
    torch.testing.assert_close(op.apply(x, p), ref, atol=1e-5, rtol=0)
    share = A.GaussianBlur(p=0.5).sample_params((20000,), _gen(8))["apply"]
    assert _binomial_ok(int(share.sum()), 20000, 0.5)


def test_cutout_matches_loop_and_side_is_uniform():
    x = _images(12, h=20, w=24)
    op = A.Cutout(max_frac=0.5, fill=0.25)
    p = op.sample_params(x.shape, _gen(9))
    ref = x.clone()
    for i in range(len(x)):
        half, cy, cx = p["side"][i] / 2, p["cy"][i], p["cx"][i]
        for r in range(20):
            for c in range(24):
                if cy - half <= r + 0.5 < cy + half and cx - half <= c + 0.5 < cx + half:
                    ref[i, :, r, c] = 0.25
    torch.testing.assert_close(op.apply(x, p), ref, atol=0, rtol=0)
    big = op.sample_params((20000, 1, 20, 24), _gen(10))
    assert stats.kstest(big["side"].numpy(), "uniform", args=(0, 10)).pvalue > 1e-3
    assert stats.kstest(big["cy"].numpy(), "uniform", args=(0, 20)).pvalue > 1e-3
    assert stats.kstest(big["cx"].numpy(), "uniform", args=(0, 24)).pvalue > 1e-3


# ---------------------------------------------------------------------------
# RandAugment


def test_randaugment_functions_match_torchvision():
    x = _images(5)
    u8 = _uint8_images(5, seed=3)
    xq = u8.float() / 255
    torch.testing.assert_close(R.autocontrast(x), TF.autocontrast(x), atol=1e-6, rtol=0)
    const = torch.full((1, 3, 4, 4), 0.3)
    torch.testing.assert_close(R.autocontrast(const), TF.autocontrast(const))
    # equalize on 8-bit data, a narrow-range image and a constant (step == 0) image
    narrow = (u8 // 5 + 100).float() / 255
    for img in (xq, narrow, torch.full((1, 3, 4, 4), 77 / 255)):
        torch.testing.assert_close(R.equalize(img), TF.equalize(img), atol=1e-6, rtol=0)
    bits = torch.tensor([1.0, 4.0, 5.0, 7.0, 8.0])
    ref = _per_image(lambda im, b: TF.posterize(im, int(b)), xq, bits)
    torch.testing.assert_close(R.posterize(xq, bits), ref, atol=1e-6, rtol=0)
    thr = torch.tensor([0.0, 0.2, 0.5, 0.9, 1.0])
    ref = _per_image(lambda im, t: TF.solarize(im, float(t)), xq, thr)
    torch.testing.assert_close(R.solarize(xq, thr), ref, atol=0, rtol=0)
    f = torch.tensor([0.05, 0.3, 0.5, 0.95, 1.7])
    tv = [TF.adjust_brightness, TF.adjust_saturation, TF.adjust_contrast, TF.adjust_sharpness]
    for kind, fn in enumerate(tv):
        ref = _per_image(lambda im, v, fn=fn: fn(im, float(v)), x, f)
        out = R.enhance(x, torch.full((5,), kind), f)
        torch.testing.assert_close(out, ref, atol=1e-6, rtol=0)
    # one kind per sample
    kinds = torch.tensor([3, 0, 2, 1, 3])
    ref = torch.stack([tv[k](x[i], float(f[i])) for i, k in enumerate(kinds.tolist())])
    torch.testing.assert_close(R.enhance(x, kinds, f), ref, atol=1e-6, rtol=0)


def _geometric(name: str, mags, x, interpolation="bilinear"):
    ra = R.RandAugment(num_ops=len(mags), ops=[name], interpolation=interpolation)
    b = len(x)
    params = {
        "ops": torch.zeros(b, len(mags), dtype=torch.long),
        "magnitudes": torch.tensor([mags] * b),
    }
    return ra.apply(x, params)


def test_randaugment_geometry_matches_torchvision():
    x = _images(3, h=24, w=30)
    h, w = 24, 30
    close = {"atol": 2e-5, "rtol": 0}
    torch.testing.assert_close(
        _geometric("Rotate", [20.0], x), TF.rotate(x, 20.0, BILINEAR), **close
    )
    for name, shear in (("ShearX", [0.25, 0.0]), ("ShearY", [0.0, -0.3])):
        deg = [math.degrees(math.atan(s)) for s in shear]
        ref = TF.affine(x, 0.0, [0, 0], 1.0, deg, BILINEAR, center=[0, 0])
        torch.testing.assert_close(_geometric(name, [shear[0] or shear[1]], x), ref, **close)
    ref = TF.affine(x, 0.0, [0.2 * w, 0], 1.0, [0.0, 0.0], BILINEAR)
    torch.testing.assert_close(_geometric("TranslateX", [0.2], x), ref, **close)
    ref = TF.affine(x, 0.0, [0, -0.1 * h], 1.0, [0.0, 0.0], BILINEAR)
    torch.testing.assert_close(_geometric("TranslateY", [-0.1], x), ref, **close)
    # geometric ops compose into one map: two rotations add up
    torch.testing.assert_close(
        _geometric("Rotate", [12.0, -30.0], x), TF.rotate(x, -18.0, BILINEAR), **close
    )
    # nearest: the same pixels as torchvision's nearest up to rounding ties
    near = _geometric("Rotate", [17.0], x, "nearest")
    assert (near == TF.rotate(x, 17.0)).float().mean() > 0.99


def test_randaugment_photometric_sequence_matches_loop():
    names = [n for n in R.RANGES if n not in R.GEOMETRIC]
    ra = R.RandAugment(num_ops=3, ops=names)
    x = (_uint8_images(40, seed=4).float() / 255).contiguous()
    p = ra.sample_params(x.shape, _gen(11))
    tv = {
        "AutoContrast": lambda im, m: TF.autocontrast(im),
        "Equalize": lambda im, m: TF.equalize(im),
        "Identity": lambda im, m: im,
        "Brightness": TF.adjust_brightness,
        "Color": TF.adjust_saturation,
        "Contrast": TF.adjust_contrast,
        "Sharpness": TF.adjust_sharpness,
        "Posterize": lambda im, m: TF.posterize(im, int(m)),
        "Solarize": TF.solarize,
    }
    ref = []
    for i in range(len(x)):
        img = x[i]
        for k, m in zip(p["ops"][i].tolist(), p["magnitudes"][i].tolist(), strict=True):
            img = tv[names[k]](img, m)
        ref.append(img)
    # Equalize bins at 1/255: after earlier float ops a value may land on the other side
    # of a bin edge than in torchvision, so compare most pixels exactly, all closely
    out = ra.apply(x, p)
    diff = (out - torch.stack(ref)).abs()
    assert (diff < 1e-5).float().mean() > 0.995
    assert diff.mean() < 1e-3


def test_randaugment_parameter_statistics():
    n = 14000
    ra = R.RandAugment(num_ops=3)
    p = ra.sample_params((n, 3, 32, 32), _gen(12))
    ops, mags = p["ops"], p["magnitudes"]
    assert ops.shape == (n, 3) and mags.shape == (n, 3)
    counts = torch.bincount(ops.flatten(), minlength=14).numpy()
    assert len(counts) == 14 and stats.chisquare(counts).pvalue > 1e-3
    for k, name in enumerate(ra.op_names):
        low, high = R.RANGES[name]
        v = mags[ops == k]
        assert v.min() >= low and v.max() <= high
        assert abs(v.mean().item() - (low + high) / 2) < 5 * (high - low) / math.sqrt(12 * len(v))
    # a subset of ops: only those are drawn
    sub = R.RandAugment(num_ops=2, ops=["Rotate", "Equalize"])
    q = sub.sample_params((1000, 3, 8, 8), _gen(13))
    assert set(q["ops"].unique().tolist()) == {0, 1}


def test_randaugment_keeps_range_and_identity():
    x = _images(64)
    out = R.RandAugment(num_ops=3)(x, _gen(14))
    assert out.min() >= 0 and out.max() <= 1 and out.dtype == torch.float32
    assert torch.equal(R.RandAugment(num_ops=2, ops=["Identity"])(x, _gen(0)), x)
    assert torch.equal(R.RandAugment(num_ops=0)(x, _gen(0)), x)


# ---------------------------------------------------------------------------
# helpers, tabular ops


@pytest.mark.parametrize("device", DEVICES)
def test_masked_apply_and_select(device):
    x = _images(9).to(device)
    mask = torch.tensor([True, False, True, True, False, False, True, False, True], device=device)
    factor = torch.linspace(1, 8, 9, device=device)
    fn = R.OTHER_PHOTOMETRIC["Posterize"]
    ref = torch.where(mask.view(-1, 1, 1, 1), fn(x, factor), x)
    torch.testing.assert_close(A.masked_apply(x, mask, fn, factor), ref, atol=1e-6, rtol=0)
    before = x.clone()
    A.masked_apply(x, mask, fn, factor)
    assert torch.equal(x, before)  # not in place unless asked
    none = torch.zeros(9, dtype=torch.bool, device=device)
    assert torch.equal(A.masked_apply(x, none, fn, factor), x)
    a, b = torch.rand(4, 5, device=device), torch.rand(4, 5, device=device)
    m = torch.rand(4, 5, device=device) > 0.5
    assert torch.equal(A.select(m, a, b), torch.where(m, a, b))
    assert torch.equal(A.greater_equal(a, b), (a >= b).float())


def test_tabular_ops():
    n, d = 4000, 25
    x = torch.randn(n, d)
    noisy = A.GaussianNoise(std=0.2)(x, _gen(0)) - x
    assert abs(noisy.std().item() - 0.2) < 0.005 and abs(noisy.mean().item()) < 0.005
    out = A.FeatureDropout(p=0.3)(x, _gen(1))
    dropped = out == 0
    assert _binomial_ok(int(dropped.sum()), n * d, 0.3)
    assert torch.equal(out[~dropped], x[~dropped])


def test_per_feature_noise_follows_each_feature_spread():
    n = 4000
    gen = _gen(2)
    dense = 3 * torch.randn(n, 1, generator=gen)
    sparse = (torch.rand(n, 1, generator=gen) < 0.01).float()
    x = torch.cat([dense, sparse, torch.zeros(n, 1)], dim=1)
    noise = A.GaussianNoise(std=0.2, per_feature=True)(x, _gen(3)) - x
    spread = x.std(dim=0, correction=0)
    for j in range(2):
        assert abs(noise[:, j].std().item() / (0.2 * spread[j].item()) - 1) < 0.05
    assert torch.equal(noise[:, 2], torch.zeros(n))  # a constant feature stays as it is
    # one row: no spread, no noise
    assert torch.equal(A.GaussianNoise(std=0.2, per_feature=True)(x[:1], _gen(4)), x[:1])


# ---------------------------------------------------------------------------
# every op: reproducible, shape/dtype preserving, generator-only randomness

ALL_IMAGE_OPS = [
    A.RandomResizedCrop(),
    A.RandomResizedCrop(size=24),
    A.RandomHorizontalFlip(),
    A.RandomTranslate(2),
    A.ColorJitter(),
    A.RandomGrayscale(),
    A.GaussianBlur(),
    A.Cutout(),
    R.RandAugment(3),
    R.RandAugment(2, interpolation="bilinear"),
]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("op", ALL_IMAGE_OPS, ids=lambda op: type(op).__name__)
def test_ops_reproducible_and_well_formed(op, device):
    op = op.to(device)
    x = _images(16, h=32, w=32).to(device)
    state = torch.random.get_rng_state()
    a = op(x, _gen(0, device))
    b = op(x, _gen(0, device))
    c = op(x, _gen(1, device))
    assert torch.equal(torch.random.get_rng_state(), state)  # generator only
    assert torch.equal(a, b)
    assert not torch.equal(a, c)
    expected = (16, 3, 24, 24) if getattr(op, "size", None) else x.shape
    assert a.shape == expected and a.dtype == torch.float32 and a.device == x.device
    assert torch.isfinite(a).all() and a.min() >= 0 and a.max() <= 1
    assert torch.equal(x, _images(16, h=32, w=32).to(device))  # input untouched


def test_ops_reject_bad_input_and_arguments():
    with pytest.raises(ValueError, match="BatchAugment"):
        A.RandomHorizontalFlip()(_uint8_images(2))
    with pytest.raises(ValueError, match="channels"):
        A.ColorJitter()(torch.rand(2, 4, 8, 8))
    bad = [
        lambda: A.RandomHorizontalFlip(p=1.5),
        lambda: A.RandomResizedCrop(scale=(0.5, 0.2)),
        lambda: A.RandomResizedCrop(scale=(0.2, 1.5)),
        lambda: A.ColorJitter(hue=0.7),
        lambda: A.ColorJitter(brightness=-1),
        lambda: A.GaussianBlur(sigma=(0.0, 1.0)),
        lambda: A.RandomTranslate(-1),
        lambda: R.RandAugment(ops=["Rotate", "Zoom"]),
        lambda: R.RandAugment(interpolation="bicubic"),
    ]
    for make in bad:
        with pytest.raises(ValueError):
            make()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_no_host_device_sync_on_cuda():
    augs = [A.BatchAugment([op], (0.5,) * 3, (0.2,) * 3).cuda() for op in ALL_IMAGE_OPS]
    x = _uint8_images(32).cuda()
    gen = _gen(0, "cuda")
    for aug in augs:  # warm up outside the checked region
        aug(x, gen)
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        for aug in augs:
            aug(x, gen)
    finally:
        torch.cuda.set_sync_debug_mode(0)


# ---------------------------------------------------------------------------
# BatchAugment and the recipes


def test_batch_augment_scaling_and_normalisation():
    u8 = _uint8_images(4)
    mean, std = (0.4, 0.5, 0.6), (0.2, 0.25, 0.3)
    out = A.BatchAugment([], mean, std)(u8)
    ref = (u8.float() / 255 - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(
        1, 3, 1, 1
    )
    torch.testing.assert_close(out, ref, atol=1e-6, rtol=0)
    xf = torch.rand(4, 3, 5, 5)
    assert torch.equal(A.BatchAugment([])(xf), xf)  # float input used as is
    tab = torch.randn(6, 2)
    torch.testing.assert_close(
        A.BatchAugment([], (1.0, -1.0), (2.0, 4.0))(tab),
        (tab - torch.tensor([1.0, -1.0])) / torch.tensor([2.0, 4.0]),
    )
    flip = A.BatchAugment([A.RandomHorizontalFlip(p=1.0)])
    torch.testing.assert_close(flip(u8), u8.flip(-1).float() / 255)
    with pytest.raises(ValueError, match="one value per channel"):
        A.BatchAugment([], (0.5,), (0.5,))(u8)
    with pytest.raises(ValueError, match="std"):
        A.BatchAugment([], (0.5, 0.5), (0.5,))
    with pytest.raises(ValueError, match="uint8 or float"):
        A.BatchAugment([])(torch.zeros(2, 3, dtype=torch.int64))


def test_build_augment_from_plain_lists_and_errors():
    aug = A.build_augment(
        [{"_target_": "pico.data.augment.RandomHorizontalFlip", "p": 1.0}], (0.0,), (1.0,)
    )
    x = _images(2, c=1)
    assert isinstance(aug, A.BatchAugment) and torch.equal(aug(x), x.flip(-1))
    assert len(A.build_augment(None).ops) == 0
    with pytest.raises(ValueError, match="_target_"):
        A.build_augment([{"p": 0.5}])
    with pytest.raises(ValueError, match="list"):
        A.build_augment("pico.data.augment.Cutout")


SHAPES = {
    "digits": (1, 8, 8),
    "grayscale28": (1, 28, 28),
    "cifar": (3, 32, 32),
    "natural": (3, 96, 96),
    "svhn": (3, 32, 32),
    "tabular": (20,),
    "imagenet": (3, 256, 256),
}
#: recipes whose views change the image size, and the shape they make
RESIZED = {"imagenet": (3, 224, 224)}
#: multi-crop local recipes (SwAV, DINO) and the smaller shape they make
LOCAL = {"digits": (1, 4, 4), "cifar": (3, 16, 16), "imagenet": (3, 96, 96)}


@pytest.mark.parametrize("name", sorted(SHAPES))
def test_every_recipe_builds_and_runs(name):
    cfg = OmegaConf.load(CONFIG_DIR / f"{name}.yaml")
    local = {"local"} if name in LOCAL else set()
    assert set(cfg) == {"weak", "strong", "contrastive", "test", *local}
    assert (len(cfg.test) == 0) == (name not in RESIZED)  # test views only normalise, or resize
    shape = SHAPES[name]
    if name == "tabular":
        x, stat = torch.randn(8, *shape), ((), ())
    else:
        x = _uint8_images(8, *shape)
        stat = ((0.5,) * shape[0], (0.25,) * shape[0])
    for recipe in ("weak", "strong", "contrastive", "test", *local):
        aug = A.build_augment(cfg[recipe], *stat)
        out = aug(x, _gen(0))
        want = LOCAL[name] if recipe == "local" else RESIZED.get(name, shape)
        assert out.shape == (len(x), *want) and out.dtype == torch.float32
        assert torch.isfinite(out).all()
        assert torch.equal(out, aug(x, _gen(0)))
        if recipe != "test":
            assert not torch.equal(out, aug(x, _gen(1))), (name, recipe)


def test_digit_views_stay_mild():
    # most of a digit's ink survives the strong view (translation keeps 7/9 of the rows)
    cfg = OmegaConf.load(CONFIG_DIR / "digits.yaml")
    from sklearn.datasets import load_digits

    images = torch.from_numpy(load_digits().images[:200]).float().div(16).unsqueeze(1)
    strong = A.build_augment(cfg.strong)
    kept = strong(images, _gen(0)).sum((1, 2, 3)) / images.sum((1, 2, 3))
    assert kept.median() > 0.75
    assert np.isfinite(kept.numpy()).all()
