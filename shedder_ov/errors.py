"""One exception type for bad input: the CLI prints its message as one line and exits 2."""


class ShedderError(Exception):
    """A user-facing error: the message names the offending field/file and what is allowed."""
