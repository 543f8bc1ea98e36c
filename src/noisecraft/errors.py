"""The library's own error types. The CLI turns these (and ValueError/FileNotFoundError) into
one line on stderr and exit code 2."""


class NoisecraftError(Exception):
    """Base class for noisecraft's own errors."""


class DataError(NoisecraftError, ValueError):
    """A data file or folder is missing, unreadable or inconsistent; the message names it."""


class RunError(NoisecraftError, ValueError):
    """A run directory is missing, foreign or corrupt; the message names the file."""
