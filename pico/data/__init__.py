"""Data sources and in-memory splits: every source ends as a :class:`DataBundle`."""

from __future__ import annotations

from pico.data.bundle import DataBundle, Split, stratified_split
from pico.data.digits import load_digits
from pico.data.folder import decode_images, load_image_folder
from pico.data.hf import load_hf
from pico.data.sources import SOURCES, SourceData, channel_stats, load_data
from pico.data.tabular import load_pll_mat_source
from pico.data.vision import load_torchvision

__all__ = [
    "SOURCES",
    "DataBundle",
    "SourceData",
    "Split",
    "channel_stats",
    "decode_images",
    "load_data",
    "load_digits",
    "load_hf",
    "load_image_folder",
    "load_pll_mat_source",
    "load_torchvision",
    "stratified_split",
]
