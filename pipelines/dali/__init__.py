"""The DALI backend: the graph, its augmentation suite (suite.py) and the loader (loader.py)."""

# The options build_loader("dali", ...) takes (declared here so that listing them needs no DALI import).
OPTIONS = {
    "augment_backend": "'dali' (default: the policy runs in the DALI graph) or 'rkd' (pipelines.augment on DALI's "
                       "output, in the device stage)",
    "decode_device": "'mixed' (nvJPEG; default with a CUDA device) or 'cpu'",
    "prefetch_queue_depth": "batches DALI prepares ahead (default 2)",
    "declare_ahead": "True: declare the next epoch's graph in a background thread (default: on CUDA with the "
                     "policy in the graph)",
}
