"""`make demo` end to end on the real bundled corpora, with the demo preset shrunk to a few iterations."""

from __future__ import annotations

import json

from noisylm.demo import main

QUICK = [
    "parallel=1",  # in-process runs (test_sweep covers parallel ones): no interpreter start-up per run
    "train.model=tiny",
    "train.max_iters=4",
    "train.batch_size=2",
    "train.eval_interval=2",
    "train.eval_iters=1",
    "train.checkpoint_interval=2",
    "train.progress=false",
    "train.tensorboard=false",
    "train.threads=1",
]


def test_demo_runs_the_paper_grid_on_the_bundled_corpora(tmp_path, capsys):
    out = tmp_path / "demo"
    args = ["--out", str(out), "--no-extras"] + [f"--set={item}" for item in QUICK]
    assert main(args) == 0
    summary = json.loads((out / "sweep" / "summary.json").read_text())
    assert [r["name"] for r in summary["runs"]] == [
        "clean",
        "uniform-a0.01",
        "uniform-a0.05",
        "uniform-a0.2",
        "gaussian-a0.05",
    ]
    assert summary["counts"]["finished"] == 5
    assert all(set(r["eval"]) >= {"val", "python-docs"} for r in summary["runs"])
    manifest = json.loads((out / "sweep" / "data" / "clean" / "manifest.json").read_text())
    assert manifest["tokenizer"] == "bytes" and manifest["splits"]["train"]["tokens"] > 4_000_000
    assert (out / "sweep" / "report" / "index.html").is_file()
    printed = capsys.readouterr().out
    assert f"The report: {out / 'sweep' / 'report' / 'index.html'}" in printed
    assert "uniform noise at alpha = 0.2: clean loss" in printed  # the headline per noisy run
    # Running it again resumes: nothing is retrained.
    metrics = (out / "sweep" / "runs" / "clean" / "metrics.jsonl").read_bytes()
    assert main(args) == 0
    assert (out / "sweep" / "runs" / "clean" / "metrics.jsonl").read_bytes() == metrics
