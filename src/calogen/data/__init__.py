"""Shower data: file I/O (showerdata and legacy layouts), packing, clustering, normalisation."""

from calogen.data.io import ShowerFile, ShowerWriter, read_showers, write_showers
from calogen.data.packed import PackedPoints, pack, unpack

__all__ = [
    "PackedPoints",
    "ShowerFile",
    "ShowerWriter",
    "pack",
    "read_showers",
    "unpack",
    "write_showers",
]
