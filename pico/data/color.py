"""Colour-space conversion on batched tensors: sRGB to CIE L*a*b* (D65 white).

The formulas are the standard ones (IEC 61966-2-1 for sRGB, CIE 1976 for L*a*b*), with
the sRGB-to-XYZ matrix and the D65 white point that scikit-image's ``rgb2lab`` uses, so
the values agree with it: white is (100, 0, 0), pure red about (53.24, 80.09, 67.20).
"""

from __future__ import annotations

import torch
from torch import Tensor

#: linear sRGB -> CIE XYZ (D65), rows X, Y, Z
RGB_TO_XYZ = (
    (0.412453, 0.357580, 0.180423),
    (0.212671, 0.715160, 0.072169),
    (0.019334, 0.119193, 0.950227),
)
#: the D65 reference white in XYZ (Y = 1)
WHITE_D65 = (0.95047, 1.0, 1.08883)
#: (low, high) of L*, a* and b* over the sRGB cube: L* spans 0-100; a* runs from green
#: (0, 1, 0) to magenta (1, 0, 1), b* from blue (0, 0, 1) to yellow (1, 1, 0)
LAB_RANGE = ((0.0, 100.0), (-86.183, 98.233), (-107.857, 94.478))

_EPSILON = (6 / 29) ** 3  # where the cube root meets the linear segment
_SLOPE = 1 / (3 * (6 / 29) ** 2)


def _check_rgb(rgb: Tensor) -> None:
    if rgb.ndim < 3 or rgb.shape[-3] != 3:
        raise ValueError(
            f"rgb_to_lab needs RGB images of shape (..., 3, H, W), got {tuple(rgb.shape)}"
        )
    if not rgb.is_floating_point():
        raise ValueError(
            f"rgb_to_lab needs float images on the 0-1 scale, got dtype {rgb.dtype}; "
            "divide uint8 images by 255"
        )


def rgb_to_lab(rgb: Tensor) -> Tensor:
    """CIE L*a*b* (D65) of sRGB images ``(..., 3, H, W)`` on the 0-1 scale.

    Values outside [0, 1] are clamped first (sRGB is defined on the unit cube). Returns
    the same shape and dtype, channels L* (0-100), a* and b* (ranges in
    :data:`LAB_RANGE`). Float16 and bfloat16 inputs are converted in float32.
    """
    _check_rgb(rgb)
    dtype = rgb.dtype
    x = rgb.clamp(0.0, 1.0)
    if dtype in (torch.float16, torch.bfloat16):
        x = x.float()
    # sRGB gamma -> linear light
    linear = torch.where(x > 0.04045, ((x + 0.055) / 1.055).pow(2.4), x / 12.92)
    matrix = torch.tensor(RGB_TO_XYZ, dtype=x.dtype, device=x.device)
    white = torch.tensor(WHITE_D65, dtype=x.dtype, device=x.device)
    xyz = torch.einsum("ij,...jhw->...ihw", matrix, linear) / white[:, None, None]
    # cube root above (6/29)^3, the linear segment below (clamped so cbrt never sees < 0)
    f = torch.where(xyz > _EPSILON, xyz.clamp_min(_EPSILON).pow(1 / 3), xyz * _SLOPE + 4 / 29)
    fx, fy, fz = f.unbind(dim=-3)
    lab = torch.stack([116 * fy - 16, 500 * (fx - fy), 200 * (fy - fz)], dim=-3)
    return lab.to(dtype)


def normalize_lab(lab: Tensor) -> Tensor:
    """L*a*b* channels ``(..., 3, H, W)`` mapped linearly from :data:`LAB_RANGE` onto
    [-1, 1] (the scaling of the CMC reference code)."""
    low = torch.tensor([r[0] for r in LAB_RANGE], dtype=lab.dtype, device=lab.device)
    high = torch.tensor([r[1] for r in LAB_RANGE], dtype=lab.dtype, device=lab.device)
    centre, half = (high + low) / 2, (high - low) / 2
    return (lab - centre[:, None, None]) / half[:, None, None]
