"""Worker processes that stop with the command: Ctrl-C or SIGTERM ends them too, cleaned up.

``concurrent.futures``' pool would wait, on the way out, for every running job to finish
(minutes) and leave the workers running when only this process is signalled;
``multiprocessing.Pool`` terminates them on exit. Workers ignore Ctrl-C (the terminal sends
it to them too; this process ends them) and turn SIGTERM into a quiet exit that runs their
cleanup, so a job's half-written files are removed. Used by ``qonnx bench --jobs`` and
``qonnx demo``.
"""

from __future__ import annotations

import importlib
import multiprocessing
import signal
import sys
from collections.abc import Callable, Iterable, Iterator
from multiprocessing.pool import AsyncResult

from qonnx_bert.core.console import configure as configure_console


class WorkerPool:
    """``jobs`` workers. ``start``: the multiprocessing start method (None: the platform's; ``spawn``
    after torch has run, whose thread pools a fork would copy mid-state). A spawned worker starts with
    default logging, so ``verbose`` (True/False) gives it the command line's setting, and ``preload``
    names a module it imports at once (its imports then overlap the caller's work)."""

    def __init__(self, jobs: int, *, start: str | None = None, verbose: bool | None = None, preload: str = ""):
        self.jobs, self.start, self.verbose, self.preload = jobs, start, verbose, preload

    def __enter__(self) -> WorkerPool:
        context = multiprocessing.get_context(self.start)
        self.pool = context.Pool(self.jobs, initializer=_worker_setup, initargs=(self.verbose, self.preload))
        return self

    def __exit__(self, *exc) -> bool:
        self.pool.terminate()  # every job is done on success; on failure the running ones stop now
        self.pool.join()
        return False

    def map(self, fn: Callable, items: Iterable) -> Iterator:
        return self.pool.imap(fn, items)

    def submit(self, fn: Callable, *args) -> AsyncResult:
        """``fn(*args)`` in a worker; ``.get()`` waits for its result (or raises its error)."""
        return self.pool.apply_async(fn, args)


def _worker_setup(verbose: bool | None, preload: str) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, _worker_exit)
    if verbose is not None:
        configure_console(verbose)
    if preload:
        importlib.import_module(preload)


def _worker_exit(signum, frame):
    # Once: a second SIGTERM (the pool's terminate repeats it) must not interrupt the exit's own cleanup,
    # e.g. torch's atexit handlers, which would print their traceback.
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    sys.exit(128 + signum)  # SystemExit unwinds through the job's cleanup; the pool reports no traceback for it
