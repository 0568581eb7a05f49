"""One exception type for user-facing mistakes.

Anything raised as :class:`FmrilmError` is a problem with the user's input (a bad file, a bad
parameter, a folder in the wrong state). The CLI prints its message on one line and exits
non-zero; any other exception is a bug and keeps its traceback.
"""


class FmrilmError(Exception):
    """A user-facing error: the message names the bad file or parameter and what was expected."""
