"""The small exception hierarchy that user-facing commands convert to one-line errors."""


class CascadeError(Exception):
    """Base class of every error cascade raises on purpose."""


class UserError(CascadeError):
    """Bad input from the user: a path, a name, a value. Printed as one line, exit code 2."""


class DataError(UserError):
    """A data set that cannot be read or holds no images."""


class CheckpointError(UserError):
    """A checkpoint that is missing, malformed or does not match its metadata."""
