"""Who trains the runs of a phase: this process one after another, or a pool of spawned workers.

``jobs`` > 1 trains the independent runs of each phase at once in that many worker processes (all
selection runs, then all final and paired runs, then all Table 6 runs; Figure 6 stays in this
process). The
results equal those of ``jobs`` = 1 but for the ``seconds`` fields, and a probe may resume with
another ``jobs``. The workers are started with "spawn", so a script that calls `probe` with
``jobs`` > 1 needs the ``if __name__ == "__main__":`` guard.
"""

from __future__ import annotations

from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor, as_completed
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path
from typing import Any

import torch

from noisylm.errors import NoisyLMError
from noisylm.probing.protocol.config import ProbeConfig
from noisylm.probing.protocol.data import (
    FeatureViews,
    ProbeData,
    cache_fingerprint,
    load_probe_data,
    with_feature_noise,
)
from noisylm.probing.protocol.training import Task, train_record
from noisylm.workers import end_pool, sigint_blocked, spawn_pool

_Done = Iterator[tuple[int, dict[str, Any]]]


class InProcess:
    """Trains the runs one after another in this process (``jobs`` = 1)."""

    def __init__(
        self, views: FeatureViews, device: torch.device, init_state: dict[str, torch.Tensor] | None
    ) -> None:
        self.views, self.device, self.init_state = views, device, init_state

    def __enter__(self) -> InProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        pass

    def train(self, todo: list[tuple[int, Task, dict[str, Any]]]) -> _Done:
        """(index, record) of each run of ``todo`` as it finishes."""
        for i, task, ids in todo:
            data = self.views.get(task.cache, task.feature_noise)
            yield i, train_record(data, task, ids, self.device, self.init_state)


class WorkerPool:
    """Trains up to ``jobs`` runs at once, each in a worker process with ``threads`` torch threads.

    Workers are started with "spawn" (torch and fork do not mix) when the first run needs one, and
    kept for the whole probe, so each reads each cache once (a task carries the cache's path, not its
    tensors). On an error or Ctrl-C the queued runs are cancelled and the runs in flight are ended (a
    resume trains them again); the finished ones are already in the progress file."""

    def __init__(
        self,
        config: ProbeConfig,
        datasets: list[ProbeData],
        fingerprints: list[str],
        device: torch.device,
        init_state: dict[str, torch.Tensor] | None,
        partial: Path,
    ) -> None:
        self.jobs, self.partial = config.jobs, partial
        self.caches = [data.source for data in datasets]
        self.fingerprints = fingerprints
        # Workers train with the threads a `jobs` = 1 probe would use, so that the numbers are the same.
        threads = config.threads if config.threads is not None else torch.get_num_threads()
        init_bytes = None
        if init_state is not None:
            from safetensors.torch import save

            init_bytes = save(init_state)
        self._threads = threads
        self._initargs = (str(device), init_bytes, config.feature_noise_seed)
        self._pool: ProcessPoolExecutor | None = None

    def __enter__(self) -> WorkerPool:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, *rest: object) -> None:
        pool, self._pool = self._pool, None
        if pool is None:
            return
        end_pool(pool, abandon=exc_type is not None)

    def train(self, todo: list[tuple[int, Task, dict[str, Any]]]) -> _Done:
        """(index, record) of each run of ``todo`` as it finishes, in any order."""
        if not todo:
            return
        if self._pool is None:
            self._pool = spawn_pool(self.jobs, self._threads, _worker_init, self._initargs)
        # Workers are started inside `submit`; see `noisylm.workers.sigint_blocked`.
        with sigint_blocked():
            futures = {
                self._pool.submit(
                    _worker_train, self.caches[task.cache], self.fingerprints[task.cache], task, ids
                ): i
                for i, task, ids in todo
            }
        try:
            for future in as_completed(futures):
                yield futures[future], future.result()  # a worker's error is raised here, as it was
        except BrokenProcessPool:
            raise NoisyLMError(
                f"a probe worker process died (killed or out of memory, or a script calling probe() "
                f"without an `if __name__ == '__main__':` guard); the finished runs are kept in "
                f"{self.partial}/: run it again with --resume, with fewer --jobs if memory is short"
            ) from None


# The state of a worker process, set by `_worker_init`; caches are loaded on first use and kept.
_WORKER: dict[str, Any] = {}


def _worker_init(device: str, init_head: bytes | None, noise_seed: int) -> None:
    init_state = None
    if init_head is not None:
        from safetensors.torch import load

        init_state = load(init_head)
    _WORKER.update(device=torch.device(device), init_state=init_state, noise_seed=noise_seed, data={})


def _worker_train(cache: str, fingerprint: str, task: Task, ids: dict[str, Any]) -> dict[str, Any]:
    """One run in a worker process; its cache is read on the worker's first run of it, then kept (and
    so is each feature-noise copy of it, made as the main process makes it)."""
    clean = _WORKER["data"].get((cache, 0.0))
    if clean is None:
        clean = load_probe_data(cache)
        if cache_fingerprint(clean) != fingerprint:
            raise NoisyLMError(
                f"{cache}: its features changed on disk while the probe ran; restore them, or start "
                "again with --overwrite"
            )
        _WORKER["data"][cache, 0.0] = clean
    key = (cache, float(task.feature_noise))
    if key not in _WORKER["data"]:
        _WORKER["data"][key] = with_feature_noise(clean, task.feature_noise, _WORKER["noise_seed"])
    return train_record(_WORKER["data"][key], task, ids, _WORKER["device"], _WORKER["init_state"])
