"""WorkerPool never waits for ever: not on a dead worker, not on a worker whose exit would block.

Each case runs in its own Python process under a time limit, so a regression fails here
instead of hanging the suite (a hang is what these guard against). Spawned workers, as in
``qonnx demo``: they import the script as ``__mp_main__`` to find its functions.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

HEADER = """
import atexit, os, signal, sys, time
from pathlib import Path
from qonnx_bert.core.workers import WorkerDied, WorkerPool
"""
LIMIT_S = 120  # spawning two workers that import qonnx_bert takes a few seconds


def _run(tmp_path, body: str) -> subprocess.CompletedProcess:
    script = tmp_path / "pool_case.py"
    script.write_text(HEADER + textwrap.dedent(body))
    return subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=LIMIT_S, cwd=tmp_path)


def test_a_worker_killed_inside_a_job_raises_instead_of_waiting_for_ever(tmp_path):
    done = _run(
        tmp_path,
        """
        def die():
            os.kill(os.getpid(), signal.SIGKILL)

        if __name__ == "__main__":
            with WorkerPool(2, start="spawn") as pool:
                try:
                    pool.result(pool.submit(die))
                except WorkerDied as err:
                    print("raised:", err)
        """,
    )
    assert done.returncode == 0, done.stderr
    assert "raised: a worker process ended (signal 9; out of memory?)" in done.stdout


def test_the_pool_closes_although_a_worker_exit_handler_would_block(tmp_path):
    # A library's exit handler that never returns (as native teardown can): the worker must not run it.
    done = _run(
        tmp_path,
        """
        def hang_at_exit(item):
            atexit.register(time.sleep, 3600)
            return item

        if __name__ == "__main__":
            with WorkerPool(2, start="spawn") as pool:
                print(sum(pool.map(hang_at_exit, range(4))))
            print("closed")
        """,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["6", "closed"]
    assert "Traceback" not in done.stderr and "Exception ignored" not in done.stderr


@pytest.mark.parametrize("how", ["error in the caller", "SIGTERM to the caller"])
def test_a_running_job_is_stopped_through_its_cleanup(tmp_path, how):
    # The caller leaves while a job runs: the job's `finally` runs (as atomic_output's removal of its
    # temporary file does), the worker ends, and nothing prints a traceback.
    done = _run(
        tmp_path,
        f"""
        def slow(folder):
            part = Path(folder, "part")
            part.write_text("half")
            try:
                time.sleep(3600)
            finally:
                part.unlink()

        def on_term(signum, frame):
            raise KeyboardInterrupt

        if __name__ == "__main__":
            signal.signal(signal.SIGTERM, on_term)
            try:
                with WorkerPool(2, start="spawn") as pool:
                    pool.submit(slow, os.getcwd())
                    while not Path("part").exists():
                        time.sleep(0.1)
                    if {how!r} == "error in the caller":
                        raise RuntimeError("caller failed")
                    os.kill(os.getpid(), signal.SIGTERM)
                    time.sleep(3600)
            except (RuntimeError, KeyboardInterrupt) as err:
                print("left:", type(err).__name__, Path("part").exists())
        """,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.split()[-1] == "False"
    assert "Traceback" not in done.stderr
