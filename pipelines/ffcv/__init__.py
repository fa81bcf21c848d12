"""The FFCV backend: .beton conversion, cache and validation (beton.py) and the loader over it (loader.py)."""

from .beton import convert_to_beton, read_beton, recorded_source

__all__ = ["convert_to_beton", "read_beton", "recorded_source"]
