"""Errors a user can fix: printed as one clear paragraph by the CLI instead of a traceback."""

import signal

SIGNAL_EXIT = {"SIGTERM": 128 + signal.SIGTERM, "SIGUSR1": 128 + signal.SIGUSR1, "SIGINT": 128 + signal.SIGINT}


class UserError(Exception):
    """Base of the errors a user can fix. A DataLoader worker's error reaches the main process re-created as
    ``type(text)`` with the worker's traceback in ``text`` (torch's ``ExceptionWrapper``); such an error keeps only
    its own message, so that the user still reads one paragraph."""

    def __init__(self, *args: object):
        text = args[0] if len(args) == 1 else None
        marker = f"{type(self).__module__}.{type(self).__qualname__}: "
        if isinstance(text, str) and text.startswith("Caught ") and "\nOriginal Traceback" in text and marker in text:
            args = (text.rsplit(marker, 1)[1].rstrip("\n"),)
        super().__init__(*args)


class ConfigError(UserError, ValueError):
    """The experiment configuration is inconsistent (pairing, flows, method settings, checkpoints)."""


class TrainableBackboneError(ConfigError):
    """A method that fits on backbone features before training was given modalities whose backbones are trainable or
    adapted (LoRA): their features change while training. ``modalities`` names them."""

    def __init__(self, message: str, modalities: list[str] | None = None):
        super().__init__(message)
        self.modalities = modalities or []


class DataError(UserError, RuntimeError):
    """Input data is missing, malformed or inconsistent."""


class StorageError(UserError, OSError):
    """A file the run must write cannot be written: the disk is full, the directory is not writable."""


class Stopped(Exception):
    """A signal stopped the run; ``code`` is the exit code (128 + the signal's number) and the message says where its
    checkpoint is."""

    def __init__(self, message: str, code: int):
        super().__init__(message)
        self.code = code


class DivergenceError(RuntimeError):
    """Training produced NaN or Inf: the run stops at once instead of training, checkpointing or scoring it."""
