"""SweepDir / SweepRun: the one reader of a sweep directory, checked file by file against a reduced real
sweep, and the one definition of a run's achieved α (None when unknown, 0 only for the clean run)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from noisylm.errors import NoisyLMError, UsageError
from noisylm.experiments import SweepDir, read_run_metrics, write_summary

pytest_plugins = ["sweep_fixtures"]  # the `finished_sweep` fixture
RUNS = ["clean", "uniform-a0.05", "uniform-a0.2", "gaussian-a0.2"]  # in the order of the sweep's config


def _json_lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.fixture
def sweep_copy(finished_sweep, tmp_path) -> Path:
    out = tmp_path / "sweep"
    shutil.copytree(finished_sweep, out)
    return out


def test_runs_in_plan_order_with_their_files(finished_sweep, shakespeare_bytes, python_docs_bytes):
    sweep = SweepDir.open(finished_sweep)
    assert sweep.names == RUNS and [r.name for r in sweep] == RUNS and len(sweep) == 4
    assert sweep.name == "tiny" and sweep.clean is sweep.runs[0] and sweep.clean.kind is None
    # Prepared shard sets given to the sweep stay where they are; the noisy ones are under data/.
    assert sweep.domains == {"docs": python_docs_bytes.resolve()}
    assert sweep.clean.data_dir == shakespeare_bytes.resolve()
    assert sweep.run("gaussian-a0.2").data_dir == finished_sweep / "data" / "gaussian-a0.2"
    for run in sweep:
        assert run.run_dir == finished_sweep / "runs" / run.name
        assert run.status == "finished" and run.error is None
        # Its config: the file the sweep wrote, training on its own shard set.
        config = json.loads((finished_sweep / "configs" / f"{run.name}.json").read_text())
        assert run.train_config() == config and Path(config["data"]) == run.data_dir.resolve()
        manifest = json.loads((run.data_dir / "manifest.json").read_text())
        assert run.manifest == manifest and run.noise == manifest["noise"]
        # Metrics: every line of metrics.jsonl; evals one per iteration; the final eval is the last.
        lines = _json_lines(run.run_dir / "metrics.jsonl")
        assert run.metrics() == lines == read_run_metrics(run.run_dir)
        evals = [m for m in lines if "eval" in m]
        assert [m["iter"] for m in run.evals()] == [0, 4, 8, 12] and run.evals() == evals
        assert run.final_eval() == evals[-1]
    assert sweep.run("uniform-a0.2").kind == "uniform" and sweep.run("uniform-a0.2").alpha == 0.2
    with pytest.raises(UsageError, match="no run 'uniform-a0.5'.*clean, uniform-a0.05"):
        sweep.run("uniform-a0.5")


def test_alpha_achieved_is_the_share_of_noise_tokens(finished_sweep):
    for run in SweepDir.open(finished_sweep):
        if run.kind is None:
            assert run.alpha_achieved == 0.0  # the clean run on clean data
            continue
        # Reference: the sizes of the files (same dtype), not the manifest's own numbers.
        noise_bytes = (run.data_dir / "noise.bin").stat().st_size
        train_bytes = (run.data_dir / "train.bin").stat().st_size
        assert run.alpha_achieved == pytest.approx(noise_bytes / train_bytes, rel=1e-12)
        assert abs(run.alpha_achieved - run.alpha) < 1e-3


def test_alpha_achieved_is_none_when_unknown(sweep_copy):
    # A noisy shard set whose noise record lacks the number (an older manifest), one whose manifest
    # records no noise, and one that is gone: unknown, not 0 (0 would read as "no noise").
    lacking = sweep_copy / "data" / "uniform-a0.05" / "manifest.json"
    manifest = json.loads(lacking.read_text())
    del manifest["noise"]["alpha_achieved"]
    lacking.write_text(json.dumps(manifest))
    unrecorded = sweep_copy / "data" / "uniform-a0.2" / "manifest.json"
    unrecorded.write_text(json.dumps({**json.loads(unrecorded.read_text()), "noise": None}))
    shutil.rmtree(sweep_copy / "data" / "gaussian-a0.2")

    sweep = SweepDir.open(sweep_copy)
    assert [r.alpha_achieved for r in sweep] == [0.0, None, None, None]
    assert sweep.run("gaussian-a0.2").manifest is None and sweep.run("gaussian-a0.2").shards() is None
    summary = write_summary(sweep_copy)  # the summary uses the same definition
    assert [r["alpha_achieved"] for r in summary["runs"]] == [0.0, None, None, None]
    assert json.loads((sweep_copy / "summary.json").read_text())["runs"][1]["alpha_achieved"] is None


def test_a_view_follows_the_run_directories(sweep_copy):
    sweep = SweepDir.open(sweep_copy)
    run = sweep.run("uniform-a0.2")
    final = run.final_eval()
    metrics = run.run_dir / "metrics.jsonl"
    # A torn last line from a killed writer is dropped.
    complete = len(metrics.read_text().splitlines())
    metrics.write_text(metrics.read_text() + '{"iter": 13, "tok')
    assert run.final_eval() == final and len(run.metrics()) == complete
    # A resumed run that logged iteration 12 again: its last line counts, once.
    again = {**final, "eval": {k: v + 1.0 for k, v in final["eval"].items()}}
    metrics.write_text("\n".join(metrics.read_text().splitlines()[:-1] + [json.dumps(again)]) + "\n")
    assert [m["iter"] for m in run.evals()] == [0, 4, 8, 12] and run.final_eval() == again
    # Status is read at each call: a run directory removed is pending again.
    shutil.rmtree(run.run_dir)
    assert run.status == "pending" and run.metrics() == [] and run.final_eval() is None


def test_failed_run_reports_its_error(sweep_copy):
    summary = sweep_copy / "runs" / "uniform-a0.05" / "summary.json"
    summary.write_text(json.dumps({"status": "failed", "error": "out of memory; lower batch_size"}))
    run = SweepDir.open(sweep_copy).run("uniform-a0.05")
    assert run.status == "failed" and run.error == "out of memory; lower batch_size"


def test_not_a_sweep_directory(tmp_path, finished_sweep):
    with pytest.raises(NoisyLMError, match="not a sweep directory .*run `noisylm sweep` first"):
        SweepDir.open(tmp_path)
    other = tmp_path / "other"
    other.mkdir()
    meta = json.loads((finished_sweep / "sweep.json").read_text())
    (other / "sweep.json").write_text(json.dumps({**meta, "format": "noisylm-sweep/0"}))
    with pytest.raises(NoisyLMError, match="format 'noisylm-sweep/0'.*regenerate"):
        SweepDir.open(other)
    del meta["runs"][1]["run_dir"]
    (other / "sweep.json").write_text(json.dumps(meta))
    with pytest.raises(NoisyLMError, match="run entry without run_dir"):
        SweepDir.open(other)


def test_sweeps_written_before_replicates_read_as_replicate_0(sweep_copy):
    meta = json.loads((sweep_copy / "sweep.json").read_text())
    for entry in meta["runs"]:
        entry.pop("replicate", None)
    (sweep_copy / "sweep.json").write_text(json.dumps(meta))
    view = SweepDir.open(sweep_copy)
    assert [r.replicate for r in view.runs] == [0] * len(view.runs) and view.replicates == 1
    assert view.clean_of(view.run("uniform-a0.2")).name == "clean"
    assert view.points == view.names
