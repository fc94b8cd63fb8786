"""Batched, on-device data augmentation.

Whole datasets stay on the training device as ``uint8`` tensors; every op here
transforms a whole float batch at once with its own random parameters per sample,
instead of per-image PIL transforms in loader workers.

Conventions shared by every op:

* images are float batches ``(B, C, H, W)`` with values in ``[0, 1]``; tabular ops
  take ``(B, D)``;
* ``forward(x, generator=None)`` draws the per-sample parameters with
  :meth:`BatchOp.sample_params` and applies them with :meth:`BatchOp.apply`. All random
  numbers come from ``generator`` (which must live on ``x.device``) or, when it is
  ``None``, from torch's default generator for that device;
* no Python loop over samples and no host-device synchronisation, so the same code
  runs on CPU and CUDA and stays asynchronous on the GPU.

Colour ops follow ``torchvision.transforms.v2.functional`` on float tensors
(grayscale weights 0.2989/0.587/0.114, clamped blends, HSV hue rotation).
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from hydra.utils import instantiate
from omegaconf import DictConfig, ListConfig, OmegaConf
from torch import Tensor, nn

Params = dict[str, Tensor]

GRAY_WEIGHTS = (0.2989, 0.587, 0.114)


# ---------------------------------------------------------------------------
# random draws and checks


def uniform(
    shape: Sequence[int],
    low: float,
    high: float,
    generator: torch.Generator | None,
    device: torch.device | str | None,
) -> Tensor:
    """Uniform samples in ``[low, high)`` drawn from ``generator`` on ``device``."""
    u = torch.rand(tuple(shape), generator=generator, device=device)
    return u.mul_(high - low).add_(low)


def bernoulli(
    batch_size: int, p: float, generator: torch.Generator | None, device: torch.device | str | None
) -> Tensor:
    """Boolean mask of ``batch_size`` independent draws that are true with probability ``p``."""
    return torch.rand(batch_size, generator=generator, device=device) < p


def _probability(name: str, p: float) -> float:
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"{name} must be a probability in [0, 1], got {p}")
    return float(p)


def _interval(name: str, value: Sequence[float], low: float = -math.inf) -> tuple[float, float]:
    vals = tuple(float(v) for v in value)
    if len(vals) != 2 or not low <= vals[0] <= vals[1]:
        raise ValueError(
            f"{name} must be a pair [min, max] with {low} <= min <= max, got {list(value)}"
        )
    return vals[0], vals[1]


def _check_images(x: Tensor, op: str) -> None:
    if x.dim() != 4 or not x.is_floating_point():
        raise ValueError(
            f"{op} expects a float image batch (B, C, H, W) in [0, 1], got {x.dim()}-d "
            f"{x.dtype}; wrap the ops in BatchAugment, which converts uint8 images"
        )


def _check_color_channels(x: Tensor, op: str) -> None:
    if x.shape[1] not in (1, 3):
        raise ValueError(f"{op} supports 1 or 3 channels, got {x.shape[1]}")


# ---------------------------------------------------------------------------
# batched image functions (per-sample parameters have shape (B,))


def _per_sample(value: Tensor, x: Tensor) -> Tensor:
    """Reshape a (B,) parameter so it broadcasts against ``x`` of shape (B, ...)."""
    return value.to(x.dtype).view(-1, *([1] * (x.dim() - 1)))


def rgb_to_gray(x: Tensor) -> Tensor:
    """Luma (B, 1, H, W) of an RGB batch; a 1-channel batch is returned as is."""
    if x.shape[1] == 1:
        return x
    r, g, b = x.unbind(1)
    return (GRAY_WEIGHTS[0] * r + GRAY_WEIGHTS[1] * g + GRAY_WEIGHTS[2] * b).unsqueeze(1)


def blend(x: Tensor, other: Tensor, factor: Tensor) -> Tensor:
    """``clamp(factor * x + (1 - factor) * other, 0, 1)`` with a per-sample ``factor``."""
    f = _per_sample(factor, x)
    return (f * x + (1.0 - f) * other).clamp_(0.0, 1.0)


def adjust_hue(x: Tensor, shift: Tensor) -> Tensor:
    """Rotate the HSV hue of an RGB batch by ``shift`` (per sample, in turns).

    Value (max channel) and chroma (max - min) are kept; the three channels are rebuilt
    from the rotated hue with the piecewise-linear HSV formula.
    """
    r, g, b = x.unbind(1)
    vmax, _ = x.max(1)
    vmin, _ = x.min(1)
    chroma = vmax - vmin
    safe = torch.where(chroma > 0, chroma, torch.ones_like(chroma))
    hue = torch.where(
        vmax == r,
        (g - b) / safe,
        torch.where(vmax == g, (b - r) / safe + 2.0, (r - g) / safe + 4.0),
    )
    hue6 = torch.remainder(hue + 6.0 * _per_sample(shift, hue), 6.0)
    channels = []
    for offset in (5.0, 3.0, 1.0):
        k = torch.remainder(hue6 + offset, 6.0)
        ramp = torch.minimum(k, 4.0 - k).clamp_(0.0, 1.0)
        channels.append(vmax - chroma * ramp)
    return torch.stack(channels, 1)


def warp(x: Tensor, grid: Tensor, mode: str = "bilinear", padding: str = "zeros") -> Tensor:
    """Sample ``x`` at the normalised coordinates ``grid`` (B, H_out, W_out, 2)."""
    return F.grid_sample(x, grid.to(x.dtype), mode=mode, padding_mode=padding, align_corners=False)


def affine_grid(matrix: Tensor, height: int, width: int) -> Tensor:
    """Sampling grid of per-sample inverse affine maps given in pixel units.

    ``matrix`` (B, 3, 3) maps output to input coordinates, both measured in pixels from
    the image centre (pixel ``j`` has centre ``j + 0.5 - width / 2``).
    """
    scale = torch.tensor([width / 2.0, height / 2.0], dtype=matrix.dtype, device=matrix.device)
    theta = matrix[:, :2, :].clone()
    # normalised = pixel / (size / 2): conjugate the linear part, rescale the shift
    theta[:, :, :2] *= scale.view(1, 1, 2) / scale.view(1, 2, 1)
    theta[:, :, 2] /= scale.view(1, 2)
    batch = matrix.shape[0]
    return F.affine_grid(theta, [batch, 1, height, width], align_corners=False)


# ---------------------------------------------------------------------------
# ops


class BatchOp(nn.Module, ABC):
    """A random batched transform: ``forward = apply(x, sample_params(x.shape, ...))``."""

    @abstractmethod
    def sample_params(
        self,
        shape: Sequence[int],
        generator: torch.Generator | None = None,
        device: torch.device | str | None = None,
    ) -> Params:
        """Per-sample random parameters for a batch of ``shape``, as tensors on ``device``."""

    @abstractmethod
    def apply(self, x: Tensor, params: Params) -> Tensor:
        """Transform ``x`` with explicit per-sample ``params`` (deterministic)."""

    def forward(self, x: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """Transform ``x`` with parameters drawn from ``generator``."""
        return self.apply(x, self.sample_params(x.shape, generator, x.device))


class RandomResizedCrop(BatchOp):
    """Crop a random box and resize it (bilinear), torchvision ``RandomResizedCrop`` rules.

    Box area is uniform in ``scale`` times the image area and its log aspect ratio
    uniform in ``log(ratio)``; the first of 10 draws that fits is used (integer sides,
    uniform integer offset), otherwise a central crop clamped to ``ratio``. The crop is
    resized to ``size`` (default: the input size) with one sampling grid per sample;
    sample positions are clamped to the box, exactly as resizing the cropped image
    (no antialiasing, which only matters when ``size`` is smaller than the box).
    """

    attempts = 10

    def __init__(
        self,
        scale: Sequence[float] = (0.2, 1.0),
        ratio: Sequence[float] = (3 / 4, 4 / 3),
        size: int | Sequence[int] | None = None,
    ) -> None:
        super().__init__()
        self.scale = _interval("scale", scale, 0.0)
        if self.scale[1] > 1.0 or self.scale[1] == 0.0:
            raise ValueError(f"scale must lie in (0, 1] (fractions of the image area), got {scale}")
        self.ratio = _interval("ratio", ratio, 0.0)
        if self.ratio[0] == 0.0:
            raise ValueError(f"ratio must be positive, got {ratio}")
        if size is None:
            self.size: tuple[int, int] | None = None
        else:
            sizes = (int(size), int(size)) if isinstance(size, int) else tuple(int(s) for s in size)
            if len(sizes) != 2 or min(sizes) < 1:
                raise ValueError(f"size must be a positive int or [height, width], got {size}")
            self.size = (sizes[0], sizes[1])

    def _fallback(self, height: int, width: int) -> tuple[int, int]:
        in_ratio = width / height
        if in_ratio < self.ratio[0]:
            w = width
            h = round(w / self.ratio[0])
        elif in_ratio > self.ratio[1]:
            h = height
            w = round(h * self.ratio[1])
        else:
            h, w = height, width
        return h, w

    def sample_params(self, shape, generator=None, device=None) -> Params:
        """``top``, ``left``, ``height``, ``width`` of each box (int64, pixels)."""
        batch, height, width = shape[0], shape[-2], shape[-1]
        area = uniform((batch, self.attempts), *self.scale, generator, device) * (height * width)
        log_ratio = uniform(
            (batch, self.attempts), math.log(self.ratio[0]), math.log(self.ratio[1]), generator, device
        )
        aspect = torch.exp(log_ratio)
        w = torch.round(torch.sqrt(area * aspect))
        h = torch.round(torch.sqrt(area / aspect))
        fits = (w >= 1) & (w <= width) & (h >= 1) & (h <= height)
        first = fits.to(torch.uint8).argmax(1, keepdim=True)
        found = fits.any(1)
        fh, fw = self._fallback(height, width)
        h = torch.where(found, h.gather(1, first).squeeze(1), torch.full_like(found, fh, dtype=h.dtype))
        w = torch.where(found, w.gather(1, first).squeeze(1), torch.full_like(found, fw, dtype=w.dtype))
        u = torch.rand(batch, 2, generator=generator, device=device)
        top = torch.where(found, torch.floor(u[:, 0] * (height - h + 1)), (height - h) // 2)
        left = torch.where(found, torch.floor(u[:, 1] * (width - w + 1)), (width - w) // 2)
        return {"top": top.long(), "left": left.long(), "height": h.long(), "width": w.long()}

    def apply(self, x: Tensor, params: Params) -> Tensor:
        _check_images(x, "RandomResizedCrop")
        height, width = x.shape[-2:]
        out_h, out_w = self.size or (height, width)

        def axis(start: Tensor, length: Tensor, out: int, full: int) -> Tensor:
            start = start.to(x.dtype).unsqueeze(1)
            length = length.to(x.dtype).unsqueeze(1)
            centres = torch.arange(out, device=x.device, dtype=x.dtype).add_(0.5)
            pos = start + centres * (length / out) - 0.5
            pos = torch.minimum(torch.maximum(pos, start), start + length - 1.0)
            return (2.0 * pos + 1.0) / full - 1.0

        gx = axis(params["left"], params["width"], out_w, width)
        gy = axis(params["top"], params["height"], out_h, height)
        batch = x.shape[0]
        grid = torch.stack(
            (gx.unsqueeze(1).expand(batch, out_h, out_w), gy.unsqueeze(2).expand(batch, out_h, out_w)),
            dim=-1,
        )
        return warp(x, grid, padding="border")


class RandomHorizontalFlip(BatchOp):
    """Mirror each sample left-right with probability ``p``."""

    def __init__(self, p: float = 0.5) -> None:
        super().__init__()
        self.p = _probability("p", p)

    def sample_params(self, shape, generator=None, device=None) -> Params:
        """``flip``: bool (B,)."""
        return {"flip": bernoulli(shape[0], self.p, generator, device)}

    def apply(self, x: Tensor, params: Params) -> Tensor:
        _check_images(x, "RandomHorizontalFlip")
        return torch.where(params["flip"].view(-1, 1, 1, 1), x.flip(-1), x)


class RandomTranslate(BatchOp):
    """Shift each sample by whole pixels, independently uniform in ``[-max_pixels, max_pixels]``
    on each axis, filling the uncovered border with 0."""

    def __init__(self, max_pixels: int = 1) -> None:
        super().__init__()
        if int(max_pixels) != max_pixels or max_pixels < 0:
            raise ValueError(f"max_pixels must be a non-negative integer, got {max_pixels}")
        self.max_pixels = int(max_pixels)

    def sample_params(self, shape, generator=None, device=None) -> Params:
        """``dy``, ``dx``: int64 (B,); content moves down / right by that many pixels."""
        span = 2 * self.max_pixels + 1
        u = torch.rand(shape[0], 2, generator=generator, device=device)
        shift = torch.floor(u * span).long() - self.max_pixels
        return {"dy": shift[:, 0], "dx": shift[:, 1]}

    def apply(self, x: Tensor, params: Params) -> Tensor:
        _check_images(x, "RandomTranslate")
        m = self.max_pixels
        batch, channels, height, width = x.shape
        padded = F.pad(x, (m, m, m, m))
        rows = torch.arange(height, device=x.device) + m - params["dy"].view(-1, 1)
        cols = torch.arange(width, device=x.device) + m - params["dx"].view(-1, 1)
        padded = padded.gather(2, rows.view(batch, 1, height, 1).expand(-1, channels, -1, width + 2 * m))
        return padded.gather(3, cols.view(batch, 1, 1, width).expand(-1, channels, height, -1))


def _jitter_range(name: str, value: float | Sequence[float], center: float) -> tuple[float, float]:
    if isinstance(value, (int, float)):
        if value < 0:
            raise ValueError(f"{name} must be non-negative, got {value}")
        low, high = center - value, center + value
        return (max(0.0, low), high) if center == 1.0 else (low, high)
    return _interval(name, value, 0.0 if center == 1.0 else -0.5)


class ColorJitter(BatchOp):
    """Random brightness, contrast, saturation and hue with probability ``p`` per sample.

    Factors follow torchvision: a number ``b`` means a factor uniform in
    ``[max(0, 1 - b), 1 + b]`` (hue: a shift uniform in ``[-h, h]`` turns, ``h <= 0.5``),
    a pair gives the range directly. Like torchvision, the four adjustments run in a
    random order, drawn independently per sample (all four are evaluated in each of four
    slots and selected per sample, so there is no data-dependent branching). On
    1-channel images only brightness and contrast apply.
    """

    def __init__(
        self,
        brightness: float | Sequence[float] = 0.4,
        contrast: float | Sequence[float] = 0.4,
        saturation: float | Sequence[float] = 0.4,
        hue: float | Sequence[float] = 0.1,
        p: float = 0.8,
    ) -> None:
        super().__init__()
        self.brightness = _jitter_range("brightness", brightness, 1.0)
        self.contrast = _jitter_range("contrast", contrast, 1.0)
        self.saturation = _jitter_range("saturation", saturation, 1.0)
        self.hue = _jitter_range("hue", hue, 0.0)
        if not -0.5 <= self.hue[0] <= self.hue[1] <= 0.5:
            raise ValueError(f"hue shifts must lie in [-0.5, 0.5], got {hue}")
        self.p = _probability("p", p)

    def sample_params(self, shape, generator=None, device=None) -> Params:
        """Factors (B,) ``brightness``/``contrast``/``saturation``, ``hue`` shift (B,),
        ``order`` (B, 4) permutation of op ids (0 brightness, 1 contrast, 2 saturation,
        3 hue) and ``apply`` bool (B,). Samples not jittered get identity factors."""
        batch = shape[0]
        active = bernoulli(batch, self.p, generator, device)
        factors = {}
        for name, rng, identity in (
            ("brightness", self.brightness, 1.0),
            ("contrast", self.contrast, 1.0),
            ("saturation", self.saturation, 1.0),
            ("hue", self.hue, 0.0),
        ):
            value = uniform((batch,), *rng, generator, device)
            factors[name] = torch.where(active, value, torch.full_like(value, identity))
        order = torch.rand(batch, 4, generator=generator, device=device).argsort(1)
        return {**factors, "order": order, "apply": active}

    def apply(self, x: Tensor, params: Params) -> Tensor:
        _check_images(x, "ColorJitter")
        _check_color_channels(x, "ColorJitter")
        rgb = x.shape[1] == 3
        use_hue = rgb and self.hue != (0.0, 0.0)
        ones = torch.ones_like(params["brightness"])
        zeros = torch.zeros_like(ones)
        for slot in range(4):
            op = params["order"][:, slot]
            # brightness, contrast and saturation are all x' = a x + b gray + c mean(gray)
            a = torch.where(op == 0, params["brightness"], ones)
            a = torch.where(op == 1, params["contrast"], a)
            c = torch.where(op == 1, 1.0 - params["contrast"], zeros)
            gray = rgb_to_gray(x)
            mean = gray.mean((1, 2, 3))
            y = _per_sample(a, x) * x + _per_sample(c * mean, x)
            if rgb:
                a = torch.where(op == 2, params["saturation"], a)
                b = torch.where(op == 2, 1.0 - params["saturation"], zeros)
                y = _per_sample(a, x) * x + _per_sample(b, x) * gray + _per_sample(c * mean, x)
            x = y.clamp_(0.0, 1.0)
            if use_hue:
                x = torch.where((op == 3).view(-1, 1, 1, 1), adjust_hue(x, params["hue"]), x)
        return x


class RandomGrayscale(BatchOp):
    """Replace an RGB sample by its luma in all three channels with probability ``p``
    (1-channel images pass through)."""

    def __init__(self, p: float = 0.2) -> None:
        super().__init__()
        self.p = _probability("p", p)

    def sample_params(self, shape, generator=None, device=None) -> Params:
        """``gray``: bool (B,)."""
        return {"gray": bernoulli(shape[0], self.p, generator, device)}

    def apply(self, x: Tensor, params: Params) -> Tensor:
        _check_images(x, "RandomGrayscale")
        _check_color_channels(x, "RandomGrayscale")
        if x.shape[1] == 1:
            return x
        return torch.where(params["gray"].view(-1, 1, 1, 1), rgb_to_gray(x).expand_as(x), x)


class GaussianBlur(BatchOp):
    """Gaussian blur with a per-sample ``sigma`` (uniform in ``sigma``), probability ``p``.

    The kernel side is ``kernel_frac`` of the shorter image side, rounded down and made
    odd (at least 3), e.g. 3 at 32 px, 9 at 96 px, 23 at 224 px; borders are reflected.
    Implemented as a separable grouped convolution with one kernel per sample.
    """

    def __init__(
        self, sigma: Sequence[float] = (0.1, 2.0), p: float = 0.5, kernel_frac: float = 0.1
    ) -> None:
        super().__init__()
        self.sigma = _interval("sigma", sigma, 0.0)
        if self.sigma[0] <= 0:
            raise ValueError(f"sigma must be positive, got {sigma}")
        if not 0 < kernel_frac <= 1:
            raise ValueError(f"kernel_frac must lie in (0, 1], got {kernel_frac}")
        self.p = _probability("p", p)
        self.kernel_frac = float(kernel_frac)

    def kernel_size(self, height: int, width: int) -> int:
        """Odd kernel side used for images of this size."""
        k = max(3, int(self.kernel_frac * min(height, width)))
        return k if k % 2 else k + 1

    def sample_params(self, shape, generator=None, device=None) -> Params:
        """``sigma`` (B,) and ``apply`` bool (B,)."""
        batch = shape[0]
        active = bernoulli(batch, self.p, generator, device)
        return {"sigma": uniform((batch,), *self.sigma, generator, device), "apply": active}

    def apply(self, x: Tensor, params: Params) -> Tensor:
        _check_images(x, "GaussianBlur")
        batch, channels, height, width = x.shape
        k = self.kernel_size(height, width)
        if k // 2 >= min(height, width):
            raise ValueError(
                f"GaussianBlur kernel {k} is too large for {height}x{width} images; "
                "lower kernel_frac"
            )
        taps = torch.arange(k, device=x.device, dtype=x.dtype) - (k - 1) / 2
        sigma = params["sigma"].to(x.dtype).view(-1, 1)
        kernel = torch.softmax(-0.5 * (taps / sigma) ** 2, dim=1)  # (B, k), sums to 1
        kernel = kernel.repeat_interleave(channels, 0)
        flat = F.pad(x.reshape(1, batch * channels, height, width), [k // 2] * 4, mode="reflect")
        flat = F.conv2d(flat, kernel.view(-1, 1, k, 1), groups=batch * channels)
        flat = F.conv2d(flat, kernel.view(-1, 1, 1, k), groups=batch * channels)
        blurred = flat.view(batch, channels, height, width)
        return torch.where(params["apply"].view(-1, 1, 1, 1), blurred, x)


class Cutout(BatchOp):
    """Fill one square per sample with ``fill``.

    The side is uniform in ``[0, max_frac * min(H, W)]`` pixels and the centre uniform
    over the image; the square may be clipped by the border. A pixel is covered when its
    centre lies in ``[c - side/2, c + side/2)`` on both axes. ``fill=0.5`` (mid gray,
    close to PiCO's (125, 123, 114)) is the default; 0 suits dark-background images.
    """

    def __init__(self, max_frac: float = 0.5, fill: float = 0.5) -> None:
        super().__init__()
        if not 0.0 <= max_frac <= 1.0:
            raise ValueError(f"max_frac must lie in [0, 1], got {max_frac}")
        self.max_frac = float(max_frac)
        self.fill = float(fill)

    def sample_params(self, shape, generator=None, device=None) -> Params:
        """``side``, ``cy``, ``cx`` (B,) in pixels."""
        batch, height, width = shape[0], shape[-2], shape[-1]
        u = torch.rand(batch, 3, generator=generator, device=device)
        side = u[:, 0] * (self.max_frac * min(height, width))
        return {"side": side, "cy": u[:, 1] * height, "cx": u[:, 2] * width}

    def apply(self, x: Tensor, params: Params) -> Tensor:
        _check_images(x, "Cutout")
        height, width = x.shape[-2:]
        half = params["side"].to(x.dtype).view(-1, 1) / 2

        def covered(centre: Tensor, size: int) -> Tensor:
            pos = torch.arange(size, device=x.device, dtype=x.dtype) + 0.5
            c = centre.to(x.dtype).view(-1, 1)
            return (pos >= c - half) & (pos < c + half)

        mask = covered(params["cy"], height).unsqueeze(2) & covered(params["cx"], width).unsqueeze(1)
        return x.masked_fill(mask.unsqueeze(1), self.fill)


class GaussianNoise(BatchOp):
    """Add independent N(0, std^2) noise to every feature (tabular data)."""

    def __init__(self, std: float = 0.1) -> None:
        super().__init__()
        if std < 0:
            raise ValueError(f"std must be non-negative, got {std}")
        self.std = float(std)

    def sample_params(self, shape, generator=None, device=None) -> Params:
        """``noise``: standard normal draws of ``shape``."""
        return {"noise": torch.randn(tuple(shape), generator=generator, device=device)}

    def apply(self, x: Tensor, params: Params) -> Tensor:
        return x + self.std * params["noise"].to(x.dtype)


class FeatureDropout(BatchOp):
    """Set each feature to 0 independently with probability ``p`` (no rescaling)."""

    def __init__(self, p: float = 0.1) -> None:
        super().__init__()
        self.p = _probability("p", p)

    def sample_params(self, shape, generator=None, device=None) -> Params:
        """``drop``: bool mask of ``shape``."""
        return {"drop": torch.rand(tuple(shape), generator=generator, device=device) < self.p}

    def apply(self, x: Tensor, params: Params) -> Tensor:
        return x.masked_fill(params["drop"], 0.0)


# ---------------------------------------------------------------------------
# pipelines


class BatchAugment(nn.Module):
    """A view recipe: ``uint8 -> float / 255``, the ops in order, then normalisation.

    Float inputs are used as they are. ``mean``/``std`` (per channel for images, per
    feature for tabular data) normalise the result when given.
    """

    def __init__(
        self, ops: Sequence[nn.Module], mean: Sequence[float] = (), std: Sequence[float] = ()
    ) -> None:
        super().__init__()
        self.ops = nn.ModuleList(ops)
        mean_t = torch.tensor([float(m) for m in mean], dtype=torch.float32)
        std_t = torch.tensor([float(s) for s in std], dtype=torch.float32)
        if mean_t.shape != std_t.shape:
            raise ValueError(
                f"mean has {len(mean_t)} values but std has {len(std_t)}; give one of each "
                "per channel (or neither)"
            )
        if (std_t <= 0).any():
            raise ValueError(f"std must be positive, got {std_t.tolist()}")
        self.register_buffer("mean", mean_t, persistent=False)
        self.register_buffer("std", std_t, persistent=False)

    def forward(self, x: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """One augmented, normalised view of the batch ``x``."""
        if x.dtype == torch.uint8:
            x = x.float().div_(255.0)
        elif not x.is_floating_point():
            raise ValueError(f"BatchAugment expects uint8 or float inputs, got {x.dtype}")
        for op in self.ops:
            x = op(x, generator)
        if self.mean.numel():
            if x.dim() < 2 or x.shape[1] != self.mean.numel():
                raise ValueError(
                    f"normalisation has {self.mean.numel()} channels but the batch has shape "
                    f"{tuple(x.shape)}; mean/std need one value per channel (dim 1)"
                )
            view = (1, -1) + (1,) * (x.dim() - 2)
            x = (x - self.mean.to(x.dtype).view(view)) / self.std.to(x.dtype).view(view)
        return x


def build_augment(
    recipe: Sequence[Any] | ListConfig | None,
    mean: Sequence[float] = (),
    std: Sequence[float] = (),
) -> BatchAugment:
    """Instantiate a recipe (a list of op configs with ``_target_``) as a :class:`BatchAugment`."""
    if recipe is None:
        recipe = []
    if isinstance(recipe, (str, bytes, DictConfig)) or not isinstance(
        recipe, (Sequence, ListConfig)
    ):
        raise ValueError(
            f"an augmentation recipe must be a list of op configs, got {type(recipe).__name__}"
        )
    ops = []
    for i, item in enumerate(recipe):
        node = OmegaConf.create(item) if isinstance(item, dict) else item
        if not isinstance(node, DictConfig) or "_target_" not in node:
            raise ValueError(
                f"augmentation op {i} must be a mapping with a `_target_` "
                f"(e.g. pico.data.augment.RandomHorizontalFlip), got {item!r}"
            )
        ops.append(instantiate(node, _convert_="all"))
    return BatchAugment(ops, mean=mean, std=std)
