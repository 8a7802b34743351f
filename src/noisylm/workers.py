"""Spawned worker processes for the stages that run independent jobs at once: a sweep's runs
(`noisylm.experiments.launch`), its downstream probes and the probe's runs (`noisylm.probing`).

Workers are started with "spawn" (torch and fork do not mix), each with its own number of torch
threads, and kept for the whole stage, so a job costs its work rather than a fresh interpreter
importing torch (4-5 s a process on a small CPU). Ctrl-C is the main process's to handle: the workers
ignore it, and `end_pool` ends the jobs in flight when the stage stops early. A worker whose main
process is gone (kill -9) exits instead of waiting for jobs forever. Scripts that start a pool need
the ``if __name__ == "__main__":`` guard, as with any spawned process.
"""

from __future__ import annotations

import contextlib
import ctypes
import multiprocessing
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ProcessPoolExecutor
from typing import Any


def spawn_pool(
    jobs: int, threads: int, initializer: Callable[..., None] | None = None, initargs: tuple[Any, ...] = ()
) -> ProcessPoolExecutor:
    """A pool of ``jobs`` spawned workers with ``threads`` torch threads each; ``initializer(*initargs)``
    then runs in each worker. Workers start on the first ``submit``: submit under `sigint_blocked`."""
    return ProcessPoolExecutor(
        max_workers=jobs,
        mp_context=multiprocessing.get_context("spawn"),
        initializer=_worker_setup,
        initargs=(threads, os.getpid(), initializer, initargs),
    )


@contextlib.contextmanager
def worker_pool(
    jobs: int, threads: int, initializer: Callable[..., None] | None = None, initargs: tuple[Any, ...] = ()
) -> Iterator[ProcessPoolExecutor]:
    """`spawn_pool` for a ``with`` block: shut down at its end, its jobs in flight ended on an error."""
    pool = spawn_pool(jobs, threads, initializer, initargs)
    try:
        yield pool
    except BaseException:
        end_pool(pool, abandon=True)
        raise
    end_pool(pool, abandon=False)


@contextlib.contextmanager
def sigint_blocked() -> Iterator[None]:
    """Block SIGINT in this thread while worker processes start: they inherit the blocked signal (a
    Ctrl-C goes to the whole process group) until their set-up makes them ignore it for good, so that
    only this process handles a Ctrl-C; one pressed meanwhile reaches this process when the block ends."""
    if not hasattr(signal, "pthread_sigmask"):  # not POSIX
        yield
        return
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)


def end_pool(pool: ProcessPoolExecutor, abandon: bool) -> None:
    """Shut the pool down; with ``abandon`` (an error or Ctrl-C), end the jobs in flight rather than
    wait for them and cancel the queued ones."""
    if abandon:
        # ProcessPoolExecutor has no public way to end its workers before Python 3.14.
        terminate = getattr(pool, "terminate_workers", None)
        if terminate is not None:
            terminate()
        else:
            for process in list((getattr(pool, "_processes", None) or {}).values()):
                process.terminate()
    pool.shutdown(wait=True, cancel_futures=True)


def _worker_setup(
    threads: int, parent: int, initializer: Callable[..., None] | None, initargs: tuple[Any, ...]
) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the main process's to handle
    if hasattr(signal, "pthread_sigmask"):
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})
    import torch

    torch.set_num_threads(threads)
    exit_with_parent(parent)
    if initializer is not None:
        initializer(*initargs)


def exit_with_parent(parent_pid: int) -> None:
    """For a worker's initializer: die with the main process. A main process killed outright (SIGKILL)
    cannot shut its pool down, and its workers would wait on their task queue forever."""
    if sys.platform == "linux":
        # the kernel sends SIGKILL when the parent exits; prctl(PR_SET_PDEATHSIG = 1, SIGKILL)
        with contextlib.suppress(OSError, AttributeError):
            ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL, 0, 0, 0)
    if os.getppid() != parent_pid:  # the parent died before that took effect
        os._exit(1)
    # Everywhere (and in case the forking thread, not the process, is what the kernel watches): poll.
    threading.Thread(target=_watch_parent, args=(parent_pid,), name="parent-watchdog", daemon=True).start()


def _watch_parent(parent_pid: int, interval: float = 0.5) -> None:
    while os.getppid() == parent_pid:  # an orphan is re-parented, so its parent pid changes
        time.sleep(interval)
    os._exit(1)
