"""The ``qonnx`` command line: a thin layer over the library.

Each subcommand lives in ``qonnx_bert/commands/<name>.py`` with ``register(subparsers)``
that adds its parser and sets ``func``. A ``UsageError`` becomes one line on stderr
and exit code 2, with no traceback. Ctrl-C exits with 130 and SIGTERM with 143, both
after the same cleanup (no temporary file or new empty folder is left behind). A worker process
that dies inside a job (out of memory, a native crash) is one line and exit code 1.
"""

from __future__ import annotations

import argparse
import importlib
import os
import signal
import sys

from qonnx_bert import __version__
from qonnx_bert.core.console import configure as configure_console
from qonnx_bert.core.errors import Terminated, UsageError, as_flags
from qonnx_bert.core.workers import WorkerDied

COMMANDS = (
    "export",
    "calibrate",
    "quantize",
    "eval",
    "check",
    "compile",
    "demo",
    "models",
    "estimators",
    "bench",
    "debug",
    "outliers",
    "report",
    "qat",
)


class _Parser(argparse.ArgumentParser):
    """Bad arguments are one line too (argparse's default adds the usage block)."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message}; see {self.prog} --help\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="qonnx", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"qonnx-bert {__version__}")
    parser.add_argument(
        "-v", "--verbose", action="store_true", help="show debug messages and third-party logs and warnings"
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in COMMANDS:
        importlib.import_module(f"qonnx_bert.commands.{name}").register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # never reach a model hub at run time
    import onnxruntime

    onnxruntime.set_default_logger_severity(3)  # ORT's warnings about our own graphs are noise to users
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as done:  # --help, --version, or a bad argument (already reported)
        return int(done.code or 0)
    configure_console(args.verbose)  # third-party loggers (onnx_ir, onnxscript, torch...) only with -v
    previous = signal.signal(signal.SIGTERM, _terminate)
    try:
        return int(args.func(args) or 0)
    except UsageError as err:
        # the command's own options: a setting the library names in backticks is worded as its flag
        print(f"qonnx {args.command}: error: {as_flags(str(err), set(vars(args)))}", file=sys.stderr)
        return 2
    except WorkerDied as err:
        print(f"qonnx {args.command}: error: {err}", file=sys.stderr)
        return 1
    except Terminated:
        print(f"qonnx {args.command}: terminated", file=sys.stderr)
        return 143
    except KeyboardInterrupt:
        print(f"qonnx {args.command}: interrupted", file=sys.stderr)
        return 130
    finally:
        signal.signal(signal.SIGTERM, previous)


def _terminate(signum, frame):
    """SIGTERM raises in the main thread, so the work unwinds through the same cleanup as Ctrl-C."""
    raise Terminated


if __name__ == "__main__":
    sys.exit(main())
