"""Worker processes that stop with the command: Ctrl-C or SIGTERM ends them too, cleaned up.

``concurrent.futures``' pool would wait, on the way out, for every running job to finish
(minutes) and leave the workers running when only this process is signalled;
``multiprocessing.Pool`` terminates them on exit. Two things it does not do are added here:

- a worker never runs the interpreter's shutdown. Library teardown at exit (C++ destructors
  of ONNX Runtime's QNN backend, torch's atexit handlers) can block, and a worker that
  blocks there blocks the pool's ``join`` for ever. A closed pool's workers run
  multiprocessing's cleanup, then leave at their first exit handler; a worker signalled during
  a job unwinds the job (its half-written files are removed), then leaves with ``os._exit``;
  an idle one leaves at once.
- a worker that dies inside a job (killed by the out-of-memory killer, a crash in a native
  library) raises ``WorkerDied`` in the caller; ``Pool`` would replace the worker and leave
  the job's result waiting for ever.

Workers ignore Ctrl-C (the terminal sends it to them too; this process ends them). Used by
``qonnx bench --jobs`` and ``qonnx demo``.
"""

from __future__ import annotations

import atexit
import importlib
import multiprocessing
import os
import signal
import time
from collections.abc import Callable, Iterable, Iterator
from multiprocessing.pool import AsyncResult

from qonnx_bert.core.console import configure as configure_console

POLL_S = 0.5  # how often a wait looks at the workers' health
CLOSE_S = 10  # how long a closing pool waits for a worker to leave by itself before it is signalled


class WorkerDied(RuntimeError):
    """A worker process ended while it ran a job: the job's result will never come."""


class WorkerPool:
    """``jobs`` workers. ``start``: the multiprocessing start method (None: the platform's; ``spawn``
    after torch has run, whose thread pools a fork would copy mid-state). A spawned worker starts with
    default logging, so ``verbose`` (True/False) gives it the command line's setting, and ``preload``
    names a module it imports at once (its imports then overlap the caller's work)."""

    def __init__(self, jobs: int, *, start: str | None = None, verbose: bool | None = None, preload: str = ""):
        self.jobs, self.start, self.verbose, self.preload = jobs, start, verbose, preload

    def __enter__(self) -> WorkerPool:
        context = multiprocessing.get_context(self.start)
        before = set(multiprocessing.active_children())
        self.pool = context.Pool(self.jobs, initializer=_worker_setup, initargs=(self.verbose, self.preload))
        self.workers = [p for p in multiprocessing.active_children() if p not in before]  # Pool starts them now
        return self

    def __exit__(self, exc_type, *exc) -> bool:
        if exc_type is None:  # every job is done: the workers leave through multiprocessing's own cleanup
            self.pool.close()
            deadline = time.monotonic() + CLOSE_S
            for worker in self.workers:
                worker.join(max(0.0, deadline - time.monotonic()))
        self.pool.terminate()  # on failure the running jobs stop now; on success, any worker still there
        self.pool.join()
        return False

    def map(self, fn: Callable, items: Iterable) -> Iterator:
        """``fn(item)`` for each item, in order, computed on the workers."""
        for job in [self.submit(fn, item) for item in items]:
            yield self.result(job)

    def submit(self, fn: Callable, *args) -> AsyncResult:
        """``fn(*args)`` in a worker; ``result`` waits for it."""
        return self.pool.apply_async(_run_job, (fn, args))

    def result(self, job: AsyncResult):
        """The job's return value (or its error, raised here); ``WorkerDied`` if a worker died meanwhile."""
        while not job.ready():
            job.wait(POLL_S)
            dead = [p for p in self.workers if p.exitcode is not None]
            if dead and not job.ready():
                code = dead[0].exitcode
                how = f"signal {-code}" if code < 0 else f"exit code {code}"
                raise WorkerDied(f"a worker process ended ({how}; out of memory?) while running a job")
        return job.get()


class _Terminated(BaseException):
    """SIGTERM inside a job: unwinds it through its cleanup (not an ``Exception``, so no job catches it)."""


_in_job = False


def _run_job(fn: Callable, args: tuple):
    global _in_job
    _in_job = True
    try:
        return fn(*args)
    except _Terminated:
        os._exit(128 + signal.SIGTERM)  # the job's cleanup has run; skip the interpreter's shutdown
    finally:
        _in_job = False


def _worker_setup(verbose: bool | None, preload: str) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, _worker_exit)
    if verbose is not None:
        configure_console(verbose)
    if preload:
        importlib.import_module(preload)
    # Registered last, so it runs first when the pool closes: the results are already sent.
    atexit.register(os._exit, 0)


def _worker_exit(signum, frame):
    if not _in_job:
        os._exit(128 + signum)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)  # the pool's terminate may repeat it during the cleanup
    raise _Terminated
