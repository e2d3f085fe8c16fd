"""The one exception type the CLI turns into a one-line message and exit code 2."""


class UsageError(ValueError):
    """A problem with the user's input (a path, a name, a value, a file's content).

    The message names the problem and the fix, on one line. The CLI prints it
    without a traceback and exits with code 2; Python callers catch it as a ValueError.
    """


class Terminated(KeyboardInterrupt):
    """SIGTERM (sent by ``timeout``, CI runners, schedulers), unwound like Ctrl-C so outputs are cleaned up.

    A subclass of ``KeyboardInterrupt`` so every cleanup written for Ctrl-C also runs;
    the CLI exits with 143 (128 + SIGTERM) instead of Ctrl-C's 130.
    """
