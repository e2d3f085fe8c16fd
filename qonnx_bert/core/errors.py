"""The one exception type the CLI turns into a one-line message and exit code 2."""

import re

# Library messages name a setting by its Python parameter in backticks (`data_dir`, `limit=0`); the
# command line words the ones it has a flag for as that flag (``as_flags``). Other backticked text
# (`qonnx calibrate`) is left as it is.
_SETTING = re.compile(r"`([a-z][a-z0-9_]*)(=([^`]*))?`")


def as_flags(message: str, flags: set[str]) -> str:
    """``message`` with each backticked setting in ``flags`` written as ``--flag`` (and its value)."""

    def word(m: re.Match) -> str:
        if m[1] not in flags:
            return m[0]
        flag = "--" + m[1].replace("_", "-")
        return f"{flag} {m[3]}" if m[2] else flag

    return _SETTING.sub(word, message)


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
