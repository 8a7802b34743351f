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
    "replicates=2",  # the paired interval needs >= 2; the preset has 3
    "downstream.seeds=2",
    "downstream.epochs=1",
    "downstream.max_train=420",
    "downstream.max_test=84",
    "downstream.max_length=32",
]


def test_demo_runs_the_paper_grid_on_the_bundled_corpora(tmp_path, capsys):
    out = tmp_path / "demo"
    args = ["--out", str(out), "--no-extras"] + [f"--set={item}" for item in QUICK]
    assert main(args) == 0
    summary = json.loads((out / "sweep" / "summary.json").read_text())
    points = ["clean", "uniform-a0.01", "uniform-a0.05", "uniform-a0.2", "gaussian-a0.2"]
    assert [r["name"] for r in summary["runs"]] == points + [p + "-r1" for p in points]
    assert summary["counts"]["finished"] == 10
    assert all(set(r["eval"]) >= {"val", "python-docs"} for r in summary["runs"])
    manifest = json.loads((out / "sweep" / "data" / "clean" / "manifest.json").read_text())
    assert manifest["tokenizer"] == "bpe:2048" and manifest["splits"]["train"]["tokens"] > 1_000_000
    # The second domain is encoded with the Shakespeare's own BPE, so the ids mean the same.
    docs = json.loads((out / "sweep" / "data" / "python-docs" / "manifest.json").read_text())
    assert docs["tokenizer_sha256"] == manifest["tokenizer_sha256"]
    assert (out / "sweep" / "report" / "index.html").is_file()
    printed = capsys.readouterr().out
    assert f"The report: {out / 'sweep' / 'report' / 'index.html'}" in printed
    assert "uniform noise at alpha = 0.2: clean loss" in printed  # the headline per noisy run
    # Section 2's paired differences over replicates and section 3's Table 1 (clean, 20%, Gaussian).
    assert "Paired differences over replicates (2 replicates)" in printed
    assert "| uniform-a0.2 vs clean | clean val loss, relative increase (same iteration) | 2 |" in printed
    table1 = (out / "sweep" / "downstream" / "table1.md").read_text()
    assert table1 in printed
    assert [line.split("|")[1].strip() for line in table1.splitlines() if line.startswith("| ")][1:] == [
        "clean (α = 0)",
        "clean (α = 0) + lgm",
        "uniform α = 0.2",
        "uniform α = 0.2 + lgm",
        "gaussian α = 0.2",
        "gaussian α = 0.2 + lgm",
    ]
    # Running it again resumes: nothing is retrained.
    metrics = (out / "sweep" / "runs" / "clean" / "metrics.jsonl").read_bytes()
    assert main(args) == 0
    assert (out / "sweep" / "runs" / "clean" / "metrics.jsonl").read_bytes() == metrics


def test_dtype_note_warns_only_where_the_pinned_bf16_is_the_slow_choice():
    from noisylm.demo import dtype_note
    from noisylm.experiments.config import load_sweep_config
    from noisylm.runtime import AMX_BF16_FLAGS, auto_cpu_dtype

    assert load_sweep_config("demo").train["dtype"] == "bfloat16"  # pinned: the README's numbers
    no_amx = frozenset({"avx512f", "avx512_bf16"})  # Cooper Lake, Zen 4: bf16 slower than fp32 there
    assert auto_cpu_dtype(no_amx)[1].startswith("auto: float32")
    assert "train.dtype=float32" in dtype_note("bfloat16", no_amx)
    assert dtype_note("bfloat16", AMX_BF16_FLAGS | no_amx) is None
    assert dtype_note("float32", no_amx) is None
