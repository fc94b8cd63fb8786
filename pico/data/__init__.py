"""Data sources and in-memory splits: every source ends as a :class:`DataBundle`.

The loaders and the GPU augmentation read Hydra configs, so they load on first use:
importing this package (or :class:`DataBundle`) needs neither Hydra nor OmegaConf.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from pico._lazy import lazy_exports
from pico.data.bundle import DataBundle, Split, stratified_split
from pico.data.color import normalize_lab, rgb_to_lab

if TYPE_CHECKING:
    from pico.data.augment import BatchAugment, build_augment
    from pico.data.digits import load_digits
    from pico.data.folder import decode_images, load_image_folder
    from pico.data.hf import load_hf
    from pico.data.plcifar10 import load_plcifar10
    from pico.data.randaugment import RandAugment
    from pico.data.sources import SOURCES, SourceData, channel_stats, load_data
    from pico.data.tabular import load_pll_mat_source
    from pico.data.vision import load_torchvision

__getattr__, __dir__ = lazy_exports(
    __name__,
    {
        "BatchAugment": "pico.data.augment",
        "build_augment": "pico.data.augment",
        "load_digits": "pico.data.digits",
        "decode_images": "pico.data.folder",
        "load_image_folder": "pico.data.folder",
        "load_hf": "pico.data.hf",
        "load_plcifar10": "pico.data.plcifar10",
        "RandAugment": "pico.data.randaugment",
        "SOURCES": "pico.data.sources",
        "SourceData": "pico.data.sources",
        "channel_stats": "pico.data.sources",
        "load_data": "pico.data.sources",
        "load_pll_mat_source": "pico.data.tabular",
        "load_torchvision": "pico.data.vision",
    },
)

__all__ = [
    "SOURCES",
    "BatchAugment",
    "DataBundle",
    "RandAugment",
    "SourceData",
    "Split",
    "build_augment",
    "channel_stats",
    "decode_images",
    "load_data",
    "load_digits",
    "load_hf",
    "load_image_folder",
    "load_plcifar10",
    "load_pll_mat_source",
    "load_torchvision",
    "normalize_lab",
    "rgb_to_lab",
    "stratified_split",
]
