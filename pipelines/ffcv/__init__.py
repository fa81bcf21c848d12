"""The FFCV backend: .beton conversion, cache and validation (beton.py) and the loader over it (loader.py)."""
