"""The one exception type the pipelines raise for bad input (callers print it as a one-line error)."""


class ConfigError(ValueError):
    """Bad user input: a missing or malformed data source, an unknown option, an out-of-range value."""
