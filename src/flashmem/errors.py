"""The one exception type users see: a message that says what is wrong and with which input."""


class FlashmemError(Exception):
    """A user-facing error. The CLI prints its message (no traceback) and exits with status 2."""
