"""`noisylm.workers`: the spawned processes that train a sweep's runs, its probes and the probe's runs."""

from __future__ import annotations

import os
import signal
import time
from concurrent.futures.process import BrokenProcessPool

import pytest
import torch

from noisylm.workers import sigint_blocked, worker_pool


def test_workers_have_their_threads_ignore_ctrl_c_and_are_kept():
    with worker_pool(2, threads=1) as pool:
        with sigint_blocked():
            threads = [pool.submit(torch.get_num_threads) for _ in range(4)]
            handlers = [pool.submit(signal.getsignal, signal.SIGINT) for _ in range(4)]
            pids = [pool.submit(os.getpid) for _ in range(8)]
        assert [f.result() for f in threads] == [1] * 4
        assert [f.result() for f in handlers] == [signal.SIG_IGN] * 4  # Ctrl-C is the sweep's to handle
        assert 1 <= len({f.result() for f in pids}) <= 2  # eight jobs, at most two processes
        assert os.getpid() not in {f.result() for f in pids}


def test_an_error_in_the_block_ends_the_jobs_in_flight():
    with pytest.raises(KeyError), worker_pool(1, threads=1) as pool:
        future = pool.submit(time.sleep, 600)  # would hold the pool for 10 minutes
        while not future.running():
            time.sleep(0.01)
        raise KeyError("the sweep stops")
    assert isinstance(future.exception(timeout=60), BrokenProcessPool)  # ended, not waited for
