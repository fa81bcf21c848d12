"""The DALI backend: the graph, its augmentation suite and the loader (loader.py)."""
