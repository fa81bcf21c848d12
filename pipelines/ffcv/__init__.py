"""The FFCV backend: .beton conversion, cache and validation (beton.py), the crop-flip decoder (decoder.py), the
fixes to FFCV 1.0.2 the loader applies (fixes.py) and the loader (loader.py)."""

# The options build_loader("ffcv", ...) takes (declared here so that listing them needs no FFCV import).
OPTIONS = {
    "order": "'random' (default: the shared per-epoch shuffle and rank shards) or 'quasi_random' (FFCV's page-local "
             "order on a fixed shard of this rank)",
    "os_cache": "True (default): read the .beton through the OS page cache; False: FFCV's process cache",
    "batches_ahead": "batches FFCV prepares ahead of the consumer (default 3)",
    "write_mode": "how a converted source stores images: 'raw', 'jpg' or 'proportion' (default: by source)",
    "max_resolution": "longest side of the images a converted source stores (default: as they are)",
    "jpeg_quality": "JPEG quality 1..100 of images a converted source re-encodes (default 90)",
    "cache_dir": "folder of converted sources (default: the pipelines cache, $RKD_CACHE_DIR/beton)",
}
