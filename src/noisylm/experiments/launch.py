"""`sweep()`: prepare the data of every run, write the plan, then train the runs (or print the commands
that train them) and keep the summary current.

    sweep_dir/
      sweep.json          the resolved sweep config, the plan (one entry per run), provenance
      data/<name>/        shard sets: `clean`, one per noisy run, one per extra domain
      configs/<run>.json  the TrainConfig of each run (what `--print-commands` launches)
      runs/<run>/         one trainer run directory per grid point
      summary.json, summary.md   status and final numbers of every run
      commands.sh         with `--print-commands`: one `noisylm train` command per unfinished run

Running the same sweep again resumes it: finished runs (``summary.json`` with status "finished" in the
run directory) are skipped, interrupted runs continue from their last checkpoint.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import shlex
import subprocess
import sys
import threading
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path
from typing import Any

from noisylm.artifacts import (
    atomic_write_json,
    atomic_write_text,
    first_difference,
    provenance,
    read_json,
)
from noisylm.errors import NoisyLMError, UsageError
from noisylm.experiments.config import DownstreamConfig, SweepConfig, load_sweep_config
from noisylm.experiments.plan import (
    SWEEP_FORMAT,
    PlannedRun,
    has_checkpoint,
    relative_to_sweep,
    run_status,
    train_config_for,
)
from noisylm.experiments.progress import SweepProgress
from noisylm.experiments.summary import write_summary
from noisylm.workers import sigint_blocked, worker_pool


def sweep(
    config: SweepConfig | str | os.PathLike,
    out_dir: str | os.PathLike,
    *,
    overrides: list[str] | None = None,
    overwrite: bool = False,
    print_commands: bool = False,
    only: list[str] | None = None,
    retry_failed: bool = False,
    downstream: bool = False,
    progress: bool | None = None,
) -> dict[str, Any]:
    """Run (or resume) every run of the sweep in ``out_dir``; return the sweep summary.

    ``config`` is a `SweepConfig`, a preset name or a config file (then ``overrides`` apply).
    ``print_commands``: prepare the data and each run's TrainConfig, run nothing, and return the summary
    with ``"commands"``, one shell command per unfinished run, for a cluster scheduler, and
    ``"command_runs"``, the names of those runs.
    ``only``: train just these runs (the others keep their status). ``retry_failed``: train runs whose
    last attempt failed again (from their last checkpoint when they have one).
    ``downstream``: run the downstream stage (`noisylm.experiments.downstream`) after training, with the
    config's ``[downstream]`` settings or the defaults; it also runs when the config has that section.
    ``progress``: show every running run's progress and the sweep's (`SweepProgress`: bars in a
    terminal, occasional plain lines in a log); None = the recipe's ``train.progress`` (default on).
    """
    if not isinstance(config, SweepConfig):
        config = load_sweep_config(config, overrides)
    elif overrides:
        raise UsageError("overrides apply to a preset or config file, not to a SweepConfig object")
    if downstream and config.downstream is None:
        config = dataclasses.replace(config, downstream=DownstreamConfig())
    if config.downstream is not None and not print_commands:
        from noisylm.probing.datasets import load_dataset

        d = config.downstream  # its dataset is checked before hours of training, not after
        load_dataset(d.dataset, seed=d.split_seed, max_train=d.max_train, max_test=d.max_test)
    out = Path(out_dir)
    grid = config.grid()
    if only:
        unknown = sorted(set(only) - {r.name for r in grid})
        if unknown:
            raise UsageError(f"unknown run(s) {unknown}; the grid has: {', '.join(r.name for r in grid)}")
    _claim_sweep_dir(out, config, overwrite)

    clean, domains = _prepare_data(config, out, grid)
    # The grid places every shard set under data/; a clean corpus prepared elsewhere stays where it is.
    plan = [
        r if r.kind is not None else dataclasses.replace(r, data=relative_to_sweep(clean, out)) for r in grid
    ]
    atomic_write_json(
        out / "sweep.json",
        {
            "format": SWEEP_FORMAT,
            "name": config.name,
            "config": config.to_dict(),
            "clean_run": "clean" if config.clean else None,
            "domains": {name: relative_to_sweep(path, out) for name, path in domains.items()},
            "runs": [run.entry() for run in plan],
            "provenance": provenance(config.to_dict(), config.seed),
        },
    )
    for run in plan:
        atomic_write_json(
            out / run.train_config, train_config_for(config, out / run.data, domains, run.replicate)
        )

    if print_commands:
        unfinished = [
            run
            for run in plan
            if run_status(out / run.run_dir) != "finished" and (not only or run.name in only)
        ]
        commands = [train_command(config, out / run.train_config, out / run.run_dir) for run in unfinished]
        summary = write_summary(out)
        summary["commands"] = commands
        summary["command_runs"] = [run.name for run in unfinished]
        atomic_write_text(out / "commands.sh", "\n".join(["#!/bin/sh", "set -e", *commands]) + "\n")
        return summary

    todo = [run for run in plan if not only or run.name in only]
    jobs = []
    for index, run in enumerate(todo, 1):
        status = run_status(out / run.run_dir)
        if status == "finished" or (status == "failed" and not retry_failed):
            print(f"[{index}/{len(todo)}] {run.name}: {status}, skipped", file=sys.stderr)
        else:
            jobs.append((f"[{index}/{len(todo)}] {run.name}", run, status))
    show = bool(config.train.get("progress", True)) if progress is None else progress
    monitor = SweepProgress(len(jobs)) if show and jobs else None
    with monitor or contextlib.nullcontext():
        probed: dict[str, Any] = {}  # downstream work done while the sweep trained (parallel only)
        if config.parallel > 1 and len(jobs) > 1:
            probed = _run_parallel(config, out, jobs, monitor)
        else:
            for job in jobs:
                _run_job(config, out, *job, monitor=monitor)
    summary = write_summary(out)
    if config.downstream is not None:
        from noisylm.experiments.downstream import downstream_stage

        summary["downstream"] = downstream_stage(out, config.downstream, done=probed)
    return summary


_SUMMARY_LOCK = threading.Lock()


def _run_parallel(
    config: SweepConfig, out: Path, jobs: list, monitor: SweepProgress | None
) -> dict[str, Any]:
    """``config.parallel`` runs at a time, each in a spawned worker process with one torch thread; the
    workers are kept for the whole sweep, so a run costs its training, not a fresh interpreter
    importing torch (4-5 s a run on a small CPU). A thread per worker hands it runs in order. With a
    ``[downstream]`` stage, each selected run's probes are queued as soon as it has trained (so the
    core left idle by an odd last run probes); returns those results for `downstream_stage`."""
    from concurrent.futures import ThreadPoolExecutor

    from noisylm.experiments.downstream import EarlyProbes

    slots = min(config.parallel, len(jobs))
    threads = ThreadPoolExecutor(max_workers=slots)
    try:
        with worker_pool(slots, threads=1) as workers:
            early = EarlyProbes(out, config.downstream, workers) if config.downstream is not None else None

            def one(job: tuple) -> None:
                _run_job(config, out, *job, workers=workers, monitor=monitor)
                if early is not None:
                    early.run_finished(job[1].name)

            list(threads.map(one, jobs))
            return early.results() if early is not None else {}
    except BaseException:  # Ctrl-C or an error: the workers were ended; let the runs in flight say so
        threads.shutdown(wait=True, cancel_futures=True)
        raise
    finally:
        threads.shutdown(wait=True)


def _run_job(
    config: SweepConfig,
    out: Path,
    label: str,
    run: PlannedRun,
    status: str,
    workers: ProcessPoolExecutor | None = None,
    monitor: SweepProgress | None = None,
) -> None:
    run_dir = out / run.run_dir
    verb = "resuming" if status == "interrupted" else "training"
    print(f"{label}: {verb} in {run_dir}", file=sys.stderr, flush=True)
    if monitor is not None:
        total = int(read_json(out / run.train_config, "run config").get("max_iters", 0) or 0)
        monitor.start(run.name, run_dir, total)
    try:
        if workers is None:
            # The sweep's monitor shows the run; the trainer's own bar would draw a second one.
            quiet = monitor is not None
            _train_one(config, out / run.train_config, run_dir, resume=has_checkpoint(run_dir), quiet=quiet)
        else:
            _train_in_worker(workers, out / run.train_config, run_dir, resume=has_checkpoint(run_dir))
        print(f"{label}: {run_status(run_dir)}", file=sys.stderr, flush=True)
    except NoisyLMError as exc:
        _record_failure(run_dir, str(exc))
        print(f"{label}: failed: {exc}", file=sys.stderr, flush=True)
    except _Stopped as exc:
        print(f"{label}: {exc}", file=sys.stderr, flush=True)
    finally:
        if monitor is not None:
            monitor.finish(run.name, run_status(run_dir))
        with _SUMMARY_LOCK:  # parallel runs finish in worker threads; one summary writer at a time
            write_summary(out)


def _claim_sweep_dir(out: Path, config: SweepConfig, overwrite: bool) -> None:
    """Refuse a directory that holds something else or a sweep with different settings."""
    sweep_json = out / "sweep.json"
    if sweep_json.is_file():
        previous = read_json(sweep_json, "sweep config").get("config", {})
        differs = _config_difference(previous, config.to_dict())
        if differs and not overwrite:
            raise NoisyLMError(
                f"{out} holds a sweep made with different settings ({differs}); "
                "use another output directory, or pass --overwrite to start it again"
            )
        if differs:
            _remove_tree(out)
    elif out.exists() and any(out.iterdir()):
        if not overwrite:
            raise NoisyLMError(
                f"output {out} exists and is not a sweep directory; choose another or pass --overwrite"
            )
        _remove_tree(out)
    out.mkdir(parents=True, exist_ok=True)


def _config_difference(old: dict[str, Any], new: dict[str, Any]) -> str:
    """The first setting that changes results between two sweep configs ('' when none)."""
    return first_difference(_results_only(old), _results_only(new))


# Settings that change how runs are launched or logged, not their numbers: a sweep may resume with others
# (the downstream stage reads the finished runs and changes none of them).
LAUNCH_ONLY = {"launcher", "nproc_per_node", "downstream"}
# Keys added to the sweep config later, with the value a sweep written before them had.
ADDED_KEYS = {"replicates": 1}
TRAIN_LAUNCH_ONLY = {"progress", "tensorboard", "wandb_project", "wandb_run_name", "threads", "log_interval"}


def _results_only(config: dict[str, Any]) -> dict[str, Any]:
    kept = {**ADDED_KEYS, **{k: v for k, v in config.items() if k not in LAUNCH_ONLY}}
    train = kept.get("train")
    if isinstance(train, dict):
        kept["train"] = {k: v for k, v in train.items() if k not in TRAIN_LAUNCH_ONLY}
    return kept


def _remove_tree(path: Path) -> None:
    import shutil

    shutil.rmtree(path)


# --------------------------------------------------------------------------------------------------
# Data: the clean corpus, one noisy shard set per run, the extra domains


def _prepare_data(config: SweepConfig, out: Path, grid: list[PlannedRun]) -> tuple[Path, dict[str, Path]]:
    """Prepare (once) every shard set of the sweep; return the clean corpus and the extra domains."""
    if config.data is None:
        raise UsageError(
            f"sweep {config.name!r} has no clean corpus; set data = a bundled corpus name or a shard set "
            "made with `noisylm prepare` (e.g. --set data=/data/openwebtext)"
        )
    from noisylm.data.shards import ShardSet

    clean = _corpus(config.data, out / "data" / "clean", config.tokenizer)
    clean_set = ShardSet.open(clean)
    # Bundled domains are tokenized like the clean corpus, whichever way that was prepared (a trained
    # BPE is reused from the clean shard set, so that every domain shares its ids).
    trained = clean if clean_set.tokenizer_record() else None
    domains = {
        name: _corpus(source, out / "data" / name, clean_set.tokenizer, tokenizer_from=trained)
        for name, source in config.domains.items()
    }
    for name, path in domains.items():
        other = ShardSet.open(path)
        if (
            other.tokenizer != clean_set.tokenizer
            or other.vocab_size != clean_set.vocab_size
            or other.tokenizer_record().get("tokenizer_sha256")
            != clean_set.tokenizer_record().get("tokenizer_sha256")
        ):
            raise NoisyLMError(
                f"domain {name!r} ({path}) uses tokenizer {other.tokenizer} but the clean corpus uses "
                f"{clean_set.tokenizer}; prepare both with the same --tokenizer"
            )
    for run in grid:
        if run.kind is None:
            continue
        target = out / run.data
        if not (target / "manifest.json").is_file():
            print(f"injecting {run.kind} noise at alpha={run.alpha:g} -> {target}", file=sys.stderr)
            _inject(clean, target, run, config)
    return clean, domains


def _corpus(source: str, target: Path, tokenizer: str, tokenizer_from: Path | None = None) -> Path:
    """A shard set for ``source``: an existing prepared directory, or a bundled corpus prepared once."""
    path = Path(source).expanduser()
    if (path / "manifest.json").is_file():
        return path
    from noisylm.data.corpora import bundled_corpora

    if source not in bundled_corpora():
        raise UsageError(
            f"{source!r} is neither a shard set (no manifest.json) nor a bundled corpus "
            f"({', '.join(bundled_corpora())}); prepare it first with `noisylm prepare`"
        )
    if not (target / "manifest.json").is_file():
        from noisylm.data.preparation import prepare

        print(f"preparing bundled corpus {source} ({tokenizer}) -> {target}", file=sys.stderr)
        prepare(
            None,
            target,
            corpus=source,
            tokenizer=tokenizer,
            tokenizer_from=str(tokenizer_from) if tokenizer_from else None,
            overwrite=True,
        )
    return target


def _inject(clean: Path, target: Path, run: PlannedRun, config: SweepConfig) -> None:
    from noisylm.data.injection import inject

    inject(
        clean,
        target,
        kind=run.kind,
        alpha=run.alpha,
        seed=config.noise_seed,
        placement=config.placement,
        overwrite=True,
        **run.params,
    )


# --------------------------------------------------------------------------------------------------
# Launchers: training one run in this process, as a `noisylm train` process, or under torchrun


def train_command(config: SweepConfig, config_path: Path, run_dir: Path) -> str:
    """The shell command that trains (or resumes) one run; what a cluster scheduler launches."""
    return shlex.join(_train_argv(config, config_path, run_dir, head=None))


def _train_argv(config: SweepConfig, config_path: Path, run_dir: Path, head: list[str] | None) -> list[str]:
    args = ["train", str(config_path), "--out", str(run_dir), "--resume"]
    if config.launcher == "torchrun":
        launcher = head or ["torchrun"]
        return [
            *launcher,
            "--standalone",
            f"--nproc_per_node={config.nproc_per_node}",
            "-m",
            "noisylm",
            *args,
        ]
    return [*(head or ["noisylm"]), *args]


def _train_one(
    config: SweepConfig, config_path: Path, run_dir: Path, resume: bool, quiet: bool = False
) -> None:
    if config.launcher == "torchrun":
        # This interpreter's torchrun, whatever is on PATH.
        argv = _train_argv(config, config_path, run_dir, head=[sys.executable, "-m", "torch.distributed.run"])
        result = subprocess.run(argv, check=False)
        if result.returncode != 0:
            raise NoisyLMError(f"torchrun exited with code {result.returncode}; see its output above")
        return
    from noisylm.training import TrainConfig, train

    values = read_json(config_path, "run config")
    if quiet:
        values["progress"] = False  # launch-only: the numbers do not depend on it
    train(TrainConfig.from_dict(values), run_dir, resume=resume, overwrite=not resume)


def _train_in_worker(workers: ProcessPoolExecutor, config_path: Path, run_dir: Path, resume: bool) -> None:
    """One run in a worker process of the sweep (for ``parallel`` > 1), one thread, no progress bar."""
    try:
        with sigint_blocked():  # a worker started here must not take the Ctrl-C meant for the sweep
            future = workers.submit(_worker_train, str(config_path), str(run_dir), resume)
        future.result()  # the trainer's NoisyLMError (it refused or failed) is raised here, as it was
    except (BrokenProcessPool, RuntimeError) as exc:  # a worker died, or the sweep is stopping
        if isinstance(exc, RuntimeError) and "shutdown" not in str(exc):
            raise
        raise _Stopped("stopped (its worker process ended); run the sweep again to resume it") from None


def _worker_train(config_path: str, run_dir: str, resume: bool) -> None:
    from noisylm.training import TrainConfig, train

    values = read_json(Path(config_path), "run config")
    values |= {"threads": 1, "progress": False}  # two runs on two cores; the sweep shows the progress
    train(TrainConfig.from_dict(values), Path(run_dir), resume=resume, overwrite=not resume)


class _Stopped(Exception):
    """A run's process was killed or interrupted (not a failure of the run itself)."""


def _record_failure(run_dir: Path, message: str) -> None:
    """Mark a run as failed unless the trainer already wrote its own failed summary."""
    if run_status(run_dir) != "failed":
        atomic_write_json(run_dir / "summary.json", {"status": "failed", "error": message})
