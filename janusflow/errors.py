"""Errors the package raises for bad input; each message names what was wrong and where.

The command line turns these into one-line messages and a non-zero exit, never a traceback.
"""


class JanusFlowError(Exception):
    """Base class of every error caused by the user's input, files or settings."""


class InputError(JanusFlowError, ValueError):
    """A bad image, prompt, question or argument."""


class ConfigError(JanusFlowError, ValueError):
    """A configuration that is malformed or inconsistent."""


class CheckpointError(JanusFlowError, ValueError):
    """A checkpoint folder with missing, unexpected, mis-shaped or unreadable weights."""


class JanusFlowWarning(UserWarning):
    """Something the user should know that changes no result they asked for (e.g. a model's default
    that could not apply); the command line prints it as one line."""
