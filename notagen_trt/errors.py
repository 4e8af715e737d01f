"""User-facing errors: the CLI prints them as one line and exits with status 2."""


class NotaGenError(Exception):
    """A problem the user can fix; the message names the file or value and the fix."""


class CheckpointError(NotaGenError):
    """A checkpoint that cannot be loaded as a NotaGen model."""
