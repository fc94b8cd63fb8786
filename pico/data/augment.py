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
  runs on CPU and CUDA and stays asynchronous on the GPU;
* ops never modify their input.

Ops applied to only some samples go through :func:`masked_apply`: on CUDA the op runs
on the whole batch and the result is selected per sample (static shapes, no sync); on
CPU only the chosen samples are gathered, transformed and scattered back, which made
RandAugment about 4x and ColorJitter about 3x faster there (256 x 3 x 32 x 32, one
thread). Elementwise selection uses ``lerp`` and comparisons write 0/1 floats, because
``torch.where`` and bool tensors are several times slower than float arithmetic on CPU.

:class:`BatchAugment` draws the parameters of all its ops first and then runs them in
:meth:`BatchAugment.transform`, a function of tensors alone that ``torch.compile`` can
fuse (``trainer.compile=true`` on CUDA).

Colour ops follow ``torchvision.transforms.v2.functional`` on float tensors
(grayscale weights 0.2989/0.587/0.114, clamped blends, HSV hue rotation); the tests
check every op against it.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from functools import partial
from typing import Any

import torch
import torch.nn.functional as F
from hydra.utils import instantiate
from omegaconf import DictConfig, ListConfig, OmegaConf
from torch import Tensor, nn

Params = dict[str, Tensor]
Shape = Sequence[int]
Device = torch.device | str | None

GRAY_WEIGHTS = (0.2989, 0.587, 0.114)


# ---------------------------------------------------------------------------
# random draws and checks


def uniform(
    shape: Sequence[int],
    low: float,
    high: float,
    generator: torch.Generator | None,
    device: Device,
) -> Tensor:
    """Uniform samples in ``[low, high)`` drawn from ``generator`` on ``device``."""
    u = torch.rand(tuple(shape), generator=generator, device=device)
    return u.mul_(high - low).add_(low)


def bernoulli(
    batch_size: int, p: float, generator: torch.Generator | None, device: Device
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


def check_images(x: Tensor, op: str) -> None:
    """Raise ``ValueError`` unless ``x`` is a float image batch (B, C, H, W)."""
    if x.dim() != 4 or not x.is_floating_point():
        raise ValueError(
            f"{op} expects a float image batch (B, C, H, W) in [0, 1], got {x.dim()}-d "
            f"{x.dtype}; wrap the ops in BatchAugment, which converts uint8 images"
        )


def check_color_channels(x: Tensor, op: str) -> None:
    """Raise ``ValueError`` unless ``x`` has 1 or 3 channels."""
    if x.shape[1] not in (1, 3):
        raise ValueError(f"{op} supports 1 or 3 channels, got {x.shape[1]}")


# ---------------------------------------------------------------------------
# batched image functions (per-sample parameters have shape (B,))


def per_sample(value: Tensor, x: Tensor) -> Tensor:
    """Reshape a (B,) parameter or mask so it broadcasts against ``x`` of shape (B, ...)."""
    if value.is_floating_point():
        value = value.to(x.dtype)
    return value.view(-1, *([1] * (x.dim() - 1)))


def select(mask: Tensor, a: Tensor, b: Tensor) -> Tensor:
    """``a`` where ``mask`` (bool or 0/1, broadcastable) else ``b``, for finite values.

    Written as ``lerp``, which is exact for weights 0 and 1 and several times faster
    than ``torch.where`` on CPU.
    """
    return torch.lerp(b, a, mask.to(b.dtype))


def greater_equal(a: Tensor, b: Tensor | float) -> Tensor:
    """``a >= b`` as 0/1 values of ``a.dtype`` (bool results are slow to produce on CPU)."""
    shape = torch.broadcast_shapes(a.shape, b.shape if isinstance(b, Tensor) else ())
    return torch.ge(a, b, out=torch.empty(shape, dtype=a.dtype, device=a.device))


def masked_apply(
    x: Tensor, mask: Tensor, fn: Callable[..., Tensor], *params: Tensor, inplace: bool = False
) -> Tensor:
    """``fn(x, *params)`` for the samples where ``mask`` (B,) is true, ``x`` for the others.

    ``params`` are per-sample tensors (B, ...). On CPU only the selected samples are
    computed and written back (into ``x`` itself when ``inplace``); elsewhere ``fn`` runs
    on the whole batch and the result is selected per sample, which keeps the shapes
    static and needs no host-device synchronisation (also under ``torch.compile``, whose
    graphs need static shapes).
    """
    if x.device.type != "cpu" or torch.compiler.is_compiling():
        return select(per_sample(mask, x), fn(x, *params), x)
    index = mask.nonzero().squeeze(1)
    if len(index) == 0:
        return x
    if len(index) == len(x):
        return fn(x, *params)
    out = fn(x.index_select(0, index), *(p.index_select(0, index) for p in params))
    return x.index_copy_(0, index, out) if inplace else x.index_copy(0, index, out)


def rgb_to_gray(x: Tensor) -> Tensor:
    """Luma (B, 1, H, W) of an RGB batch; a 1-channel batch is returned as is."""
    if x.shape[1] == 1:
        return x
    r, g, b = x.unbind(1)
    gray = torch.mul(r, GRAY_WEIGHTS[0]).add_(g, alpha=GRAY_WEIGHTS[1])
    return gray.add_(b, alpha=GRAY_WEIGHTS[2]).unsqueeze(1)


def blend(x: Tensor, other: Tensor, factor: Tensor) -> Tensor:
    """``clamp(factor * x + (1 - factor) * other, 0, 1)`` with a per-sample ``factor``."""
    f = per_sample(factor, x)
    return (f * x).add_((1.0 - f) * other).clamp_(0.0, 1.0)


def adjust_hue(x: Tensor, shift: Tensor) -> Tensor:
    """Rotate the HSV hue of an RGB batch by ``shift`` (per sample, in turns).

    Value (max channel) and chroma (max - min) are kept; each channel is rebuilt from the
    rotated hue ``h`` (in sixths) as ``max - chroma * clamp(2 - d, 0, 1)``, where ``d`` is
    the circular distance from ``h`` to 3 (red), 5 (green) or 1 (blue).
    """
    r, g, b = x.unbind(1)
    vmax, vmin = x.amax(1), x.amin(1)
    chroma = vmax - vmin
    inv = chroma.clamp(min=1e-12).reciprocal_()
    is_r = greater_equal(r, vmax)
    is_g = greater_equal(g, vmax).mul_(1.0 - is_r)
    # hue in sixths: red max (g-b)/c, green max (b-r)/c + 2, blue max (r-g)/c + 4
    hue = (r - g).mul_(inv).add_(4.0)
    hue.addcmul_(is_r, (g - b).mul_(inv).sub_(hue))
    hue.addcmul_(is_g, (b - r).mul_(inv).add_(2.0).sub_(hue))
    hue.add_(per_sample(shift, hue), alpha=6.0)
    hue.sub_(torch.floor(hue * (1.0 / 6.0)).mul_(6.0))
    channels = []
    for centre in (3.0, 5.0, 1.0):
        dist = (hue - centre).abs_()
        dist = torch.minimum(dist, 6.0 - dist)
        channels.append(vmax - chroma * dist.neg_().add_(2.0).clamp_(0.0, 1.0))
    return torch.stack(channels, 1)


def warp(x: Tensor, grid: Tensor, mode: str = "bilinear", padding: str = "zeros") -> Tensor:
    """Sample ``x`` at the normalised coordinates ``grid`` (B, H_out, W_out, 2)."""
    return F.grid_sample(x, grid.to(x.dtype), mode=mode, padding_mode=padding, align_corners=False)


def affine_grid(matrix: Tensor, height: int, width: int) -> Tensor:
    """Sampling grid (B, H, W, 2) of per-sample inverse affine maps given in pixels.

    ``matrix`` (B, 3, 3) maps output to input coordinates, both measured in pixels from
    the image centre (pixel ``j`` has centre ``j + 0.5 - width / 2``); the grid holds the
    input positions normalised for ``grid_sample(..., align_corners=False)``.
    """
    kw: dict[str, Any] = {"dtype": matrix.dtype, "device": matrix.device}
    xs = torch.arange(width, **kw).add_(0.5 - width / 2).view(1, 1, 1, width)
    ys = torch.arange(height, **kw).add_(0.5 - height / 2).view(1, 1, height, 1)
    # the map's two rows in normalised input units, as (B, 2, 3, 1, 1) coefficients
    rows = torch.stack((matrix[:, 0] / (width / 2), matrix[:, 1] / (height / 2)), 1)
    rows = rows.view(-1, 2, 3, 1, 1)
    grid = torch.addcmul(rows[:, :, 0] * xs + rows[:, :, 2], rows[:, :, 1], ys)  # (B, 2, H, W)
    return grid.permute(0, 2, 3, 1).contiguous()


# ---------------------------------------------------------------------------
# ops


class BatchOp(nn.Module, ABC):
    """A random batched transform: ``forward = apply(x, sample_params(x.shape, ...))``."""

    @abstractmethod
    def sample_params(
        self, shape: Shape, generator: torch.Generator | None = None, device: Device = None
    ) -> Params:
        """Per-sample random parameters for a batch of ``shape``, as tensors on ``device``."""

    # the transform is named apply, as in the ops' public API; it shadows nn.Module.apply(fn)
    # (recursive initialisation), which mypy reports as an incompatible override here and in
    # every op
    @abstractmethod
    def apply(self, x: Tensor, params: Params) -> Tensor:  # type: ignore[override]
        """Transform ``x`` with explicit per-sample ``params`` (deterministic)."""

    def output_shape(self, shape: Shape) -> Shape:
        """Shape of the result for an input of ``shape`` (unchanged unless overridden)."""
        return shape

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

    def sample_params(
        self, shape: Shape, generator: torch.Generator | None = None, device: Device = None
    ) -> Params:
        """``top``, ``left``, ``height``, ``width`` of each box (int64, pixels)."""
        batch, height, width = shape[0], shape[-2], shape[-1]
        area = uniform((batch, self.attempts), *self.scale, generator, device) * (height * width)
        log_ratio = uniform(
            (batch, self.attempts),
            math.log(self.ratio[0]),
            math.log(self.ratio[1]),
            generator,
            device,
        )
        aspect = torch.exp(log_ratio)
        w = torch.round(torch.sqrt(area * aspect))
        h = torch.round(torch.sqrt(area / aspect))
        fits = (w >= 1) & (w <= width) & (h >= 1) & (h <= height)
        first = fits.to(torch.uint8).argmax(1, keepdim=True)
        found = fits.any(1)
        fh, fw = self._fallback(height, width)
        h = torch.where(
            found, h.gather(1, first).squeeze(1), torch.full_like(found, fh, dtype=h.dtype)
        )
        w = torch.where(
            found, w.gather(1, first).squeeze(1), torch.full_like(found, fw, dtype=w.dtype)
        )
        u = torch.rand(batch, 2, generator=generator, device=device)
        top = torch.where(found, torch.floor(u[:, 0] * (height - h + 1)), (height - h) // 2)
        left = torch.where(found, torch.floor(u[:, 1] * (width - w + 1)), (width - w) // 2)
        return {"top": top.long(), "left": left.long(), "height": h.long(), "width": w.long()}

    def output_shape(self, shape: Shape) -> Shape:
        return (*shape[:-2], *(self.size or shape[-2:]))

    def apply(self, x: Tensor, params: Params) -> Tensor:  # type: ignore[override]  # see BatchOp
        check_images(x, "RandomResizedCrop")
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
            (
                gx.unsqueeze(1).expand(batch, out_h, out_w),
                gy.unsqueeze(2).expand(batch, out_h, out_w),
            ),
            dim=-1,
        )
        return warp(x, grid, padding="border")


def shorter_side_size(height: int, width: int, size: int) -> tuple[int, int]:
    """Output (height, width) of torchvision's ``Resize(size)``: the shorter side becomes
    ``size``, the longer one ``int(size * longer / shorter)``."""
    if height <= width:
        return size, int(size * width / height)
    return int(size * height / width), size


class Resize(BatchOp):
    """Resize the shorter side to ``size``, keeping the aspect ratio (torchvision
    ``Resize(size)``), bilinear with antialiasing; images already that size pass as is.
    Deterministic."""

    def __init__(self, size: int) -> None:
        super().__init__()
        if int(size) != size or size < 1:
            raise ValueError(f"Resize size must be a positive integer, got {size}")
        self.size = int(size)

    def sample_params(
        self, shape: Shape, generator: torch.Generator | None = None, device: Device = None
    ) -> Params:
        """No parameters."""
        return {}

    def output_shape(self, shape: Shape) -> Shape:
        return (*shape[:-2], *shorter_side_size(shape[-2], shape[-1], self.size))

    def apply(self, x: Tensor, params: Params) -> Tensor:  # type: ignore[override]  # see BatchOp
        check_images(x, "Resize")
        size = shorter_side_size(x.shape[-2], x.shape[-1], self.size)
        if tuple(x.shape[-2:]) == size:
            return x
        return F.interpolate(x, size=size, mode="bilinear", align_corners=False, antialias=True)


class CenterCrop(BatchOp):
    """Crop the central ``size`` box (an int for a square, or [height, width]), with
    torchvision ``CenterCrop``'s offsets ``round((H - h) / 2)``. Deterministic."""

    def __init__(self, size: int | Sequence[int]) -> None:
        super().__init__()
        sizes = (int(size), int(size)) if isinstance(size, int) else tuple(int(s) for s in size)
        if len(sizes) != 2 or min(sizes) < 1:
            raise ValueError(
                f"CenterCrop size must be a positive int or [height, width], got {size}"
            )
        self.size = (sizes[0], sizes[1])

    def sample_params(
        self, shape: Shape, generator: torch.Generator | None = None, device: Device = None
    ) -> Params:
        """No parameters."""
        return {}

    def output_shape(self, shape: Shape) -> Shape:
        return (*shape[:-2], *self.size)

    def apply(self, x: Tensor, params: Params) -> Tensor:  # type: ignore[override]  # see BatchOp
        check_images(x, "CenterCrop")
        (height, width), (out_h, out_w) = x.shape[-2:], self.size
        if out_h > height or out_w > width:
            raise ValueError(
                f"CenterCrop({list(self.size)}) needs images of at least {out_h}x{out_w}, got "
                f"{height}x{width}; store the images larger (data.image_size) or crop smaller"
            )
        top, left = round((height - out_h) / 2), round((width - out_w) / 2)
        return x[..., top : top + out_h, left : left + out_w]


class RandomHorizontalFlip(BatchOp):
    """Mirror each sample left-right with probability ``p``."""

    def __init__(self, p: float = 0.5) -> None:
        super().__init__()
        self.p = _probability("p", p)

    def sample_params(
        self, shape: Shape, generator: torch.Generator | None = None, device: Device = None
    ) -> Params:
        """``flip``: bool (B,)."""
        return {"flip": bernoulli(shape[0], self.p, generator, device)}

    def apply(self, x: Tensor, params: Params) -> Tensor:  # type: ignore[override]  # see BatchOp
        check_images(x, "RandomHorizontalFlip")
        return masked_apply(x, params["flip"], lambda v: v.flip(-1))


class RandomTranslate(BatchOp):
    """Shift each sample by whole pixels, independently uniform in ``[-max_pixels, max_pixels]``
    on each axis, filling the uncovered border with 0."""

    def __init__(self, max_pixels: int = 1) -> None:
        super().__init__()
        if int(max_pixels) != max_pixels or max_pixels < 0:
            raise ValueError(f"max_pixels must be a non-negative integer, got {max_pixels}")
        self.max_pixels = int(max_pixels)

    def sample_params(
        self, shape: Shape, generator: torch.Generator | None = None, device: Device = None
    ) -> Params:
        """``dy``, ``dx``: int64 (B,); content moves down / right by that many pixels."""
        span = 2 * self.max_pixels + 1
        u = torch.rand(shape[0], 2, generator=generator, device=device)
        shift = torch.floor(u * span).long() - self.max_pixels
        return {"dy": shift[:, 0], "dx": shift[:, 1]}

    def apply(self, x: Tensor, params: Params) -> Tensor:  # type: ignore[override]  # see BatchOp
        check_images(x, "RandomTranslate")
        m = self.max_pixels
        batch, channels, height, width = x.shape
        padded = F.pad(x, (m, m, m, m)).flatten(2)
        rows = torch.arange(height, device=x.device) + m - params["dy"].view(-1, 1)
        cols = torch.arange(width, device=x.device) + m - params["dx"].view(-1, 1)
        index = (rows.unsqueeze(2) * (width + 2 * m) + cols.unsqueeze(1)).view(batch, 1, -1)
        return padded.gather(2, index.expand(-1, channels, -1)).view_as(x)


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
    random order, drawn independently per sample: in each of four slots every sample
    gets its own op. Brightness, contrast and saturation are all
    ``x' = clamp(a x + b gray + c mean(gray))``, so one fused pass per slot serves them
    (identity coefficients for samples doing something else), and the hue rotation runs
    through :func:`masked_apply`. On 1-channel images only brightness and contrast apply.
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

    def sample_params(
        self, shape: Shape, generator: torch.Generator | None = None, device: Device = None
    ) -> Params:
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

    def apply(self, x: Tensor, params: Params) -> Tensor:  # type: ignore[override]  # see BatchOp
        check_images(x, "ColorJitter")
        check_color_channels(x, "ColorJitter")
        rgb = x.shape[1] == 3
        use_hue = rgb and self.hue != (0.0, 0.0)
        ones = torch.ones_like(params["brightness"])
        zeros = torch.zeros_like(ones)
        for slot in range(4):
            op = params["order"][:, slot]
            # brightness, contrast and saturation are all x' = a x + b gray + c mean(gray);
            # samples whose op in this slot is another one get a = 1, b = c = 0 (exact no-op)
            a = torch.where(op == 0, params["brightness"], ones)
            a = torch.where(op == 1, params["contrast"], a)
            c = torch.where(op == 1, 1.0 - params["contrast"], zeros)
            gray = rgb_to_gray(x)
            shift = per_sample(c, x) * gray.mean((1, 2, 3), keepdim=True)
            if rgb:
                a = torch.where(op == 2, params["saturation"], a)
                b = torch.where(op == 2, 1.0 - params["saturation"], zeros)
                shift = shift + per_sample(b, x) * gray
            # the first slot allocates the output; later slots update it in place
            x = x.mul_(per_sample(a, x)) if slot else x * per_sample(a, x)
            x.add_(shift).clamp_(0.0, 1.0)
            if use_hue:
                hue = (op == 3) & params["apply"]
                x = masked_apply(x, hue, adjust_hue, params["hue"], inplace=True)
        return x


class RandomGrayscale(BatchOp):
    """Replace an RGB sample by its luma in all three channels with probability ``p``
    (1-channel images pass through)."""

    def __init__(self, p: float = 0.2) -> None:
        super().__init__()
        self.p = _probability("p", p)

    def sample_params(
        self, shape: Shape, generator: torch.Generator | None = None, device: Device = None
    ) -> Params:
        """``gray``: bool (B,)."""
        return {"gray": bernoulli(shape[0], self.p, generator, device)}

    def apply(self, x: Tensor, params: Params) -> Tensor:  # type: ignore[override]  # see BatchOp
        check_images(x, "RandomGrayscale")
        check_color_channels(x, "RandomGrayscale")
        if x.shape[1] == 1:
            return x
        return masked_apply(x, params["gray"], lambda v: rgb_to_gray(v).repeat(1, 3, 1, 1))


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

    def sample_params(
        self, shape: Shape, generator: torch.Generator | None = None, device: Device = None
    ) -> Params:
        """``sigma`` (B,) and ``apply`` bool (B,)."""
        batch = shape[0]
        active = bernoulli(batch, self.p, generator, device)
        return {"sigma": uniform((batch,), *self.sigma, generator, device), "apply": active}

    def apply(self, x: Tensor, params: Params) -> Tensor:  # type: ignore[override]  # see BatchOp
        check_images(x, "GaussianBlur")
        height, width = x.shape[-2:]
        k = self.kernel_size(height, width)
        if k // 2 >= min(height, width):
            raise ValueError(
                f"GaussianBlur kernel {k} is too large for {height}x{width} images; "
                "lower kernel_frac"
            )
        return masked_apply(x, params["apply"], partial(_blur, size=k), params["sigma"])


def _blur(x: Tensor, sigma: Tensor, size: int) -> Tensor:
    """Separable Gaussian blur, one ``sigma`` per sample, reflected borders."""
    batch, channels, height, width = x.shape
    taps = torch.arange(size, device=x.device, dtype=x.dtype) - (size - 1) / 2
    kernel = torch.softmax(-0.5 * (taps / sigma.to(x.dtype).view(-1, 1)) ** 2, dim=1)
    kernel = kernel.repeat_interleave(channels, 0)  # (B * C, size), rows sum to 1
    flat = F.pad(x.reshape(1, batch * channels, height, width), [size // 2] * 4, mode="reflect")
    flat = F.conv2d(flat, kernel.view(-1, 1, size, 1), groups=batch * channels)
    flat = F.conv2d(flat, kernel.view(-1, 1, 1, size), groups=batch * channels)
    return flat.view_as(x)


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

    def sample_params(
        self, shape: Shape, generator: torch.Generator | None = None, device: Device = None
    ) -> Params:
        """``side``, ``cy``, ``cx`` (B,) in pixels."""
        batch, height, width = shape[0], shape[-2], shape[-1]
        u = torch.rand(batch, 3, generator=generator, device=device)
        side = u[:, 0] * (self.max_frac * min(height, width))
        return {"side": side, "cy": u[:, 1] * height, "cx": u[:, 2] * width}

    def apply(self, x: Tensor, params: Params) -> Tensor:  # type: ignore[override]  # see BatchOp
        check_images(x, "Cutout")
        height, width = x.shape[-2:]
        half = params["side"].to(x.dtype).view(-1, 1) / 2

        def covered(centre: Tensor, size: int) -> Tensor:
            pos = torch.arange(size, device=x.device, dtype=x.dtype) + 0.5
            c = centre.to(x.dtype).view(-1, 1)
            return ((pos >= c - half) & (pos < c + half)).to(x.dtype)

        rows = covered(params["cy"], height).view(-1, 1, height, 1)
        cols = covered(params["cx"], width).view(-1, 1, 1, width)
        return select(rows * cols, torch.full((), self.fill, dtype=x.dtype, device=x.device), x)


class GaussianNoise(BatchOp):
    """Add independent N(0, std^2) noise to every feature (tabular data).

    With ``per_feature=True`` the noise of each feature is scaled by that feature's
    standard deviation in the batch: z-scored features get ``std`` as before, while a
    raw 0/1 indicator that is on in 1 % of the rows gets about a tenth of it, instead of
    noise ten times its own spread that would drown the few features a sparse row has.
    The ``data=mat`` views keep absolute noise, whose size regularises (docs/evidence.md,
    "The tabular recipe").
    """

    def __init__(self, std: float = 0.1, per_feature: bool = False) -> None:
        super().__init__()
        if std < 0:
            raise ValueError(f"std must be non-negative, got {std}")
        self.std = float(std)
        self.per_feature = per_feature

    def sample_params(
        self, shape: Shape, generator: torch.Generator | None = None, device: Device = None
    ) -> Params:
        """``noise``: standard normal draws of ``shape``."""
        return {"noise": torch.randn(tuple(shape), generator=generator, device=device)}

    def apply(self, x: Tensor, params: Params) -> Tensor:  # type: ignore[override]  # see BatchOp
        noise = params["noise"].to(x.dtype)
        if self.per_feature:
            return x + self.std * x.std(dim=0, correction=0, keepdim=True) * noise
        return x + self.std * noise


class FeatureDropout(BatchOp):
    """Set each feature to 0 independently with probability ``p`` (no rescaling)."""

    def __init__(self, p: float = 0.1) -> None:
        super().__init__()
        self.p = _probability("p", p)

    def sample_params(
        self, shape: Shape, generator: torch.Generator | None = None, device: Device = None
    ) -> Params:
        """``drop``: bool mask of ``shape``."""
        return {"drop": torch.rand(tuple(shape), generator=generator, device=device) < self.p}

    def apply(self, x: Tensor, params: Params) -> Tensor:  # type: ignore[override]  # see BatchOp
        return x * (~params["drop"]).to(x.dtype)


# ---------------------------------------------------------------------------
# pipelines


class BatchAugment(nn.Module):
    """A view recipe: ``uint8 -> float / 255``, the ops in order, then normalisation.

    Float inputs are used as they are. ``mean``/``std`` (per channel for images, per
    feature for tabular data) normalise the result when given.
    """

    # buffers (register_buffer in __init__), declared for the type checker
    mean: Tensor
    std: Tensor

    def __init__(
        self, ops: Sequence[BatchOp], mean: Sequence[float] = (), std: Sequence[float] = ()
    ) -> None:
        super().__init__()
        for i, op in enumerate(ops):
            if not isinstance(op, BatchOp):
                raise ValueError(
                    f"augmentation op {i} is a {type(op).__name__}, not a BatchOp; write it as "
                    "a subclass of pico.data.augment.BatchOp (sample_params + apply)"
                )
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

    def sample_params(
        self, shape: Shape, generator: torch.Generator | None = None, device: Device = None
    ) -> list[Params]:
        """The parameters of every op for a batch of ``shape``, drawn in op order."""
        params = []
        for op in self.ops:
            assert isinstance(op, BatchOp)  # checked in __init__
            params.append(op.sample_params(shape, generator, device))
            shape = op.output_shape(shape)
        return params

    def forward(self, x: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """One augmented, normalised view of the batch ``x``."""
        return self.transform(x, self.sample_params(x.shape, generator, x.device))

    def compile_transform(self, mode: str = "default") -> None:
        """Run :meth:`transform` through ``torch.compile`` with ``mode`` from now on (the
        random draws stay eager: a compiled graph cannot take a ``torch.Generator``). Meant
        for CUDA, where it fuses the ops' many small kernels; on CPU the eager ops gather
        only the samples an op applies to, which a compiled graph cannot."""
        # an instance attribute in place of the method, on purpose
        self.transform = torch.compile(  # type: ignore[method-assign]
            BatchAugment.transform.__get__(self), mode=mode
        )

    def transform(self, x: Tensor, params: Sequence[Params]) -> Tensor:
        """The recipe with explicit per-op ``params`` (deterministic)."""
        if x.dtype == torch.uint8:
            x = x.float().div_(255.0)
        elif not x.is_floating_point():
            raise ValueError(f"BatchAugment expects uint8 or float inputs, got {x.dtype}")
        for op, op_params in zip(self.ops, params, strict=True):
            assert isinstance(op, BatchOp)  # checked in __init__
            x = op.apply(x, op_params)
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
