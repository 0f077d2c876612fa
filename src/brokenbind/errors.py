"""Errors a user can fix: printed as one clear line by the CLI instead of a traceback."""


class ConfigError(ValueError):
    """The experiment configuration is inconsistent (pairing, flows, method settings)."""


class DataError(RuntimeError):
    """Input data is missing, malformed or inconsistent."""
