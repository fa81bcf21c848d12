"""The exception types the pipelines raise for bad input (callers print them as one-line errors)."""


class ConfigError(ValueError):
    """Bad user input: a missing or malformed data source, an unknown option, an out-of-range value."""


class EmptyEpochError(ConfigError):
    """A training split whose per-rank share holds no full batch (callers may name their own batch-size flag)."""
