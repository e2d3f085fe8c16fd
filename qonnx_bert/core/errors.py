"""The one exception type the CLI turns into a one-line message and exit code 2."""


class UsageError(ValueError):
    """A problem with the user's input (a path, a name, a value, a file's content).

    The message names the problem and the fix, on one line. The CLI prints it
    without a traceback and exits with code 2; Python callers catch it as a ValueError.
    """
