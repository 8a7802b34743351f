"""A reduced real sweep shared by test_sweep, test_reporting, test_rundir and test_scheduler
(`pytest_plugins` there).

Four runs of the `tiny` GPT (clean, uniform at α = 0.05 and 0.2, Gaussian at 0.2) for 12 iterations on
the session's small Shakespeare shard set, evaluated on it, on each run's noise and on the Python
tutorial. float32 on one thread, so that a resumed run reproduces an uninterrupted one bitwise.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from noisylm.experiments import SweepConfig

TINY_TRAIN = {
    "model": "tiny",
    "batch_size": 4,
    "max_iters": 12,
    "warmup_iters": 2,
    "learning_rate": 3e-3,
    "min_lr": 3e-4,
    "eval_interval": 4,
    "eval_iters": 2,
    "checkpoint_interval": 4,
    "keep_checkpoints": 5,
    "dtype": "float32",
    "device": "cpu",
    "threads": 1,
    "progress": False,
    "tensorboard": False,
}
RUNS = ["clean", "uniform-a0.05", "uniform-a0.2", "gaussian-a0.2"]


def tiny_sweep_config(data: Path, docs: Path) -> SweepConfig:
    return SweepConfig(
        name="tiny",
        data=str(data),
        domains={"docs": str(docs)},
        noise=[{"kind": "uniform", "alphas": [0.05, 0.2]}, {"kind": "gaussian", "alphas": [0.2]}],
        train=dict(TINY_TRAIN),
    )


@pytest.fixture
def tiny_config(shakespeare_bytes, python_docs_bytes) -> Callable[[], SweepConfig]:
    """A factory of fresh reduced sweep configs on the session's shard sets."""
    return lambda: tiny_sweep_config(shakespeare_bytes, python_docs_bytes)


@pytest.fixture(scope="session")
def finished_sweep(tmp_path_factory, shakespeare_bytes, python_docs_bytes) -> Path:
    """A finished reduced sweep directory (read-only; copy it to change it)."""
    from noisylm.experiments import sweep

    out = tmp_path_factory.mktemp("fixture-sweeps") / "tiny"
    summary = sweep(tiny_sweep_config(shakespeare_bytes, python_docs_bytes), out)
    if summary["counts"]["finished"] != len(RUNS):
        raise RuntimeError(f"the reduced sweep did not finish: {summary}")
    return out
