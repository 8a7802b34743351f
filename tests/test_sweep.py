"""Sweeps: config and presets, bad input, the grid on disk, resume after a kill, cluster commands."""

from __future__ import annotations

import json
import shlex
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from noisylm.cli import main as cli_main
from noisylm.errors import NoisyLMError, UsageError
from noisylm.experiments import (
    SWEEP_PRESETS,
    SweepConfig,
    load_sweep_config,
    run_name,
    run_status,
    sweep,
)
from noisylm.experiments.config import sweep_fields
from noisylm.training.config import parse_overrides

pytest_plugins = ["sweep_fixtures"]  # the `finished_sweep` and `tiny_config` fixtures
RUNS = ["clean", "uniform-a0.05", "uniform-a0.2", "gaussian-a0.2"]  # the grid of `tiny_config`

# --------------------------------------------------------------------------------------------------
# Config


def test_presets_load_with_the_papers_grid():
    for name in SWEEP_PRESETS:
        config = load_sweep_config(name)
        gaussian = "gaussian-a0.2" if name == "demo" else "gaussian-a0.05"  # the demo's: README
        points = ["clean", "uniform-a0.01", "uniform-a0.05", "uniform-a0.2", gaussian]
        replicas = [""] + [f"-r{r}" for r in range(1, config.replicates)]
        assert [r.name for r in config.grid()] == [p + suffix for suffix in replicas for p in points]
        assert config.grid()[0].kind is None and config.grid()[0].alpha == 0.0
    demo = load_sweep_config("demo")  # the measured paper regime at demo scale: 3 paired replicates
    assert (demo.tokenizer, demo.replicates, demo.train["batch_size"]) == ("bpe:2048", 3, 128)
    assert demo.data == "shakespeare" and "python-docs" in demo.domains and demo.downstream is not None
    assert demo.train["dtype"] == "bfloat16"  # pinned, not "auto": the dtype does not depend on the CPU
    assert load_sweep_config("demo-bytes").tokenizer == "bytes"
    paper = load_sweep_config("paper-124m")
    # App. D.2: 16 x 40 x 1024 tokens per iteration, 300k iterations, lr 6e-4 -> 6e-5.
    t = paper.train
    assert (t["batch_size"], t["grad_accum"], t["block_size"], t["max_iters"]) == (16, 40, 1024, 300_000)
    assert (t["learning_rate"], t["min_lr"], paper.tokenizer) == (6e-4, 6e-5, "gpt2")
    assert load_sweep_config("paper-774m").train["model"] == "gpt2-774m"
    from noisylm.training import TrainConfig

    for name in SWEEP_PRESETS:  # every preset's [train] table is a valid TrainConfig
        TrainConfig.from_dict({**load_sweep_config(name).train, "data": "x"})


def test_overrides_parse_toml_values_and_dotted_keys(tmp_path):
    config = load_sweep_config(
        "demo-bytes", ["train.max_iters=7", "data=/some/shards", "domains.wiki=/w", "clean=false", "seed=3"]
    )
    assert config.train["max_iters"] == 7 and config.data == "/some/shards" and config.seed == 3
    assert config.domains["wiki"] == "/w" and config.clean is False
    assert [r.name for r in config.grid()][0] == "uniform-a0.01"
    path = tmp_path / "s.toml"
    path.write_text('name = "mine"\ndata = "x"\n[[noise]]\nkind = "boosted"\nalphas = 0.1\n')
    assert [r.name for r in load_sweep_config(path).grid()] == ["clean", "boosted-a0.1"]
    assert run_name("uniform", 0.05) == "uniform-a0.05"


@pytest.mark.parametrize(
    "overrides, message",
    [
        (["bogus=1"], "unknown sweep config key"),
        (["placement=sideways"], "placement"),
        (["launcher=slurm"], "launcher"),
        (["clean=false", "noise=[]"], "no runs"),
        (["domains.noise=x"], "reserved"),
        (["domains.clean=x"], "clash"),
        (["nproc_per_node=0"], "nproc_per_node"),
        (["train.max_iters"], "key=value"),
    ],
)
def test_bad_config_values_are_usage_errors(overrides, message):
    with pytest.raises(UsageError, match=message):
        load_sweep_config("demo", overrides)


@pytest.mark.parametrize(
    "noise, message",
    [
        ({"kind": "pink", "alphas": [0.1]}, "unknown noise kind"),
        ({"kind": "uniform", "alphas": [1.0]}, "outside"),
        ({"kind": "uniform", "alphas": [0.0]}, "outside"),
        ({"kind": "uniform", "alphas": []}, "no alphas"),
        ({"kind": "uniform", "alphas": [0.1, 0.1]}, "twice"),
        ({"kind": "uniform", "alpha": [0.1]}, "unknown noise key"),
    ],
)
def test_bad_noise_specs_are_usage_errors(noise, message):
    with pytest.raises(UsageError, match=message):
        SweepConfig(data="x", noise=[noise])


def test_missing_or_broken_config_files(tmp_path):
    with pytest.raises(UsageError, match="not found"):
        load_sweep_config(tmp_path / "nope.toml")
    bad = tmp_path / "bad.toml"
    bad.write_text("name = \n")
    with pytest.raises(UsageError, match="cannot parse config file"):
        load_sweep_config(bad)
    other = tmp_path / "x.ini"
    other.write_text("a=1")
    with pytest.raises(UsageError, match="must end in"):
        load_sweep_config(other)


@pytest.mark.parametrize("command", ["sweep", "train"])
@pytest.mark.parametrize(
    "name, text, where",
    [
        ("bad.yaml", "name: x\ntrain:\n  max_iters: [1,\n", "line 4, column 1"),
        ("bad.yml", "name: x\n data: y\n", "line 2, column 6: mapping values are not allowed here"),
        ("bad.toml", 'name = "x"\ndata = \n', "line 2, column 8: Invalid value"),
        ("bad.json", '{"name": "x",\n}', "line 2, column 1"),
    ],
)
def test_config_syntax_errors_are_one_line_naming_file_and_line(tmp_path, capsys, command, name, text, where):
    """`noisylm sweep bad.yaml` / `noisylm train bad.toml`: one line (file, line, fix), no traceback."""
    path = tmp_path / name
    path.write_text(text)
    out = tmp_path / "out"
    assert cli_main([command, str(path), "--out", str(out)]) == 2
    captured = capsys.readouterr()
    err = captured.err.strip().splitlines()
    assert len(err) == 1, err
    assert err[0].startswith(f"noisylm {command}: error: cannot parse config file {path}: {where}")
    assert err[0].endswith("syntax there") and captured.out == ""
    assert not out.exists() and sorted(p.name for p in tmp_path.iterdir()) == [name]


def test_one_override_parser_for_both_spellings():
    fields = sweep_fields()
    dashed = ["--train.max-iters", "100", "--domains.python-docs=/w", "--clean", "no", "--seed=3"]
    dotted = ["train.max_iters=100", "domains.python-docs=/w", "clean=false", "seed=3"]
    expected = {"train": {"max_iters": 100}, "domains": {"python-docs": "/w"}, "clean": False, "seed": 3}
    assert parse_overrides(dashed, fields, "sweep") == parse_overrides(dotted, fields, "sweep") == expected
    # Values take their field's type: strings stay as written, table keys keep their dashes.
    assert parse_overrides(["--wandb-run-name", "2024", "eval_sets.python-docs=d", "max_iters=1e3"]) == {
        "wandb_run_name": "2024",
        "eval_sets": {"python-docs": "d"},
        "max_iters": 1000,
    }
    # A bare --flag is true; the next item is its value only when it is one (a boolean, or none).
    assert parse_overrides(["--compile", "eval_sets.docs=d", "--bias", "none", "--progress", "off"]) == {
        "compile": True,
        "eval_sets": {"docs": "d"},
        "bias": None,
        "progress": False,
    }
    with pytest.raises(UsageError, match="--max-iters needs a value"):
        parse_overrides(["--max-iters"])
    assert load_sweep_config("demo", ["--train.max-iters", "7"]).train["max_iters"] == 7
    with pytest.raises(UsageError, match="unknown sweep config key 'train.max_iter'.*max_iters"):
        load_sweep_config("demo", ["train.max_iter=7"])  # caught here, not when every run fails
    with pytest.raises(UsageError, match="seed must be int, got 'x'"):
        load_sweep_config("demo", ["seed=x"])


def test_paper_preset_without_data_names_the_fix(tmp_path):
    with pytest.raises(UsageError, match="--set data="):
        sweep("paper-124m", tmp_path / "s")


def test_unknown_corpus_and_foreign_output_dir(tmp_path):
    with pytest.raises(UsageError, match="neither a shard set"):
        sweep("demo", tmp_path / "s", overrides=["data=/no/such/corpus"])
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "precious.txt").write_text("keep me")
    with pytest.raises(NoisyLMError, match="not a sweep directory"):
        sweep("demo", foreign)
    assert (foreign / "precious.txt").read_text() == "keep me"


def test_cli_reports_bad_input_in_one_line(tmp_path, capsys):
    assert (
        cli_main(["sweep", "demo", "--out", str(tmp_path / "s"), "--set", "noise=[{kind='x',alphas=[0.1]}]"])
        == 2
    )
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("noisylm sweep: error: unknown noise kind")
    assert cli_main(["report", str(tmp_path)]) == 1
    assert "not a sweep directory" in capsys.readouterr().err


# --------------------------------------------------------------------------------------------------
# A reduced real sweep


def _eval_lines(run_dir: Path) -> list[dict]:
    return [m for m in map(json.loads, (run_dir / "metrics.jsonl").read_text().splitlines()) if "eval" in m]


def test_reduced_sweep_writes_the_grid(finished_sweep):
    meta = json.loads((finished_sweep / "sweep.json").read_text())
    assert [r["name"] for r in meta["runs"]] == RUNS and meta["clean_run"] == "clean"
    summary = json.loads((finished_sweep / "summary.json").read_text())
    by_name = {r["name"]: r for r in summary["runs"]}
    clean_val = _eval_lines(finished_sweep / "runs" / "clean")[-1]["eval"]["val"]
    for name in RUNS:
        run_dir = finished_sweep / "runs" / name
        assert run_status(run_dir) == "finished"
        evals = _eval_lines(run_dir)
        assert [m["iter"] for m in evals] == [0, 4, 8, 12]
        expected_sets = {"val", "docs"} | ({"noise"} if name != "clean" else set())
        assert set(evals[-1]["eval"]) == expected_sets
        # The summary's numbers are the run's last eval line; increases are relative to the clean run.
        row = by_name[name]
        assert row["status"] == "finished" and row["eval"] == evals[-1]["eval"] and row["iter"] == 12
        assert row["val_increase"] == pytest.approx(evals[-1]["eval"]["val"] - clean_val, abs=1e-12)
        if name != "clean":
            assert row["val_increase_rel_per_alpha"] == pytest.approx(
                row["val_increase"] / clean_val / row["alpha"], rel=1e-9
            )
            noise = json.loads((finished_sweep / "data" / name / "manifest.json").read_text())["noise"]
            assert abs(noise["alpha_achieved"] - row["alpha"]) < 1e-3 and noise["kind"] == row["kind"]
            assert row["alpha_achieved"] == noise["alpha_achieved"]
    # Paired runs: same initial weights and eval windows, so the losses before training are identical,
    # and the run configs differ only in the training data.
    first = {name: _eval_lines(finished_sweep / "runs" / name)[0]["eval"] for name in RUNS}
    assert len({(e["val"], e["docs"]) for e in first.values()}) == 1
    configs = {n: json.loads((finished_sweep / "configs" / f"{n}.json").read_text()) for n in RUNS}
    for name in RUNS:
        assert {k: v for k, v in configs[name].items() if k != "data"} == {
            k: v for k, v in configs["clean"].items() if k != "data"
        }
    md = (finished_sweep / "summary.md").read_text()
    assert all(f"| {name} |" in md for name in RUNS)


def test_rerun_skips_finished_runs(finished_sweep, tmp_path, tiny_config, capsys):
    out = tmp_path / "copy"
    shutil.copytree(finished_sweep, out)
    before = {n: (out / "runs" / n / "metrics.jsonl").read_bytes() for n in RUNS}
    summary = sweep(tiny_config(), out)
    assert summary["counts"]["finished"] == len(RUNS)
    assert {n: (out / "runs" / n / "metrics.jsonl").read_bytes() for n in RUNS} == before
    assert capsys.readouterr().err.count("finished, skipped") == len(RUNS)
    relaunched = tiny_config()  # launch and logging settings do not change the numbers: accepted
    relaunched.train.update(progress=True, threads=2)
    relaunched.launcher = "torchrun"
    assert sweep(relaunched, out)["counts"]["finished"] == len(RUNS)
    changed = tiny_config()
    changed.train["max_iters"] = 13
    with pytest.raises(NoisyLMError, match="different settings .*train"):
        sweep(changed, out)


KILLER = """
import os, signal, sys
from pathlib import Path
from noisylm.training import metrics

original = metrics.MetricsLogger.log

def log(self, record):  # fault injection: SIGKILL the sweep mid-run, between two checkpoints
    original(self, record)
    if self.path.parent.name == sys.argv[3] and record["iter"] == int(sys.argv[4]) and "train_loss" in record:
        os.kill(os.getpid(), signal.SIGKILL)

metrics.MetricsLogger.log = log
from noisylm.experiments import sweep
sweep(sys.argv[1], sys.argv[2])
"""


def test_interrupted_sweep_resumes_to_the_same_numbers(finished_sweep, tmp_path, tiny_config):
    config = tiny_config()
    config_path = tmp_path / "sweep.json"
    config_path.write_text(json.dumps(config.to_dict()))
    out = tmp_path / "sweep"
    # Killed at iteration 10 of the third run: its last checkpoint is from iteration 8.
    result = subprocess.run(
        [sys.executable, "-c", KILLER, str(config_path), str(out), "uniform-a0.2", "10"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == -signal.SIGKILL, result.stderr[-2000:]
    statuses = [run_status(out / "runs" / n) for n in RUNS]
    assert statuses == ["finished", "finished", "interrupted", "pending"]
    assert max(m["iter"] for m in _metrics(out / "runs" / "uniform-a0.2")) == 10

    summary = sweep(config, out)
    assert summary["counts"]["finished"] == len(RUNS)
    reference = json.loads((finished_sweep / "summary.json").read_text())
    assert [r["eval"] for r in summary["runs"]] == [r["eval"] for r in reference["runs"]]
    for name in RUNS:  # every logged loss, train and eval, equals the uninterrupted sweep's
        strip = [
            {k: v for k, v in m.items() if k not in ("tokens_per_s", "mfu")}
            for m in _metrics(out / "runs" / name)
        ]
        want = [
            {k: v for k, v in m.items() if k not in ("tokens_per_s", "mfu")}
            for m in _metrics(finished_sweep / "runs" / name)
        ]
        assert strip == want, name


def _metrics(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def test_print_commands_prepare_runnable_jobs(
    tmp_path, tiny_config, shakespeare_bytes, python_docs_bytes, capsys
):
    config = tiny_config()
    out = tmp_path / "sweep"
    summary = sweep(config, out, print_commands=True)
    commands = summary["commands"]
    assert len(commands) == len(RUNS) and summary["counts"]["pending"] == len(RUNS)
    assert not (out / "runs").exists()  # nothing trained
    assert (out / "commands.sh").read_text().splitlines()[2:] == commands
    for name, command in zip(RUNS, commands, strict=True):
        argv = shlex.split(command)
        assert argv[:2] == ["noisylm", "train"] and argv[3:] == [
            "--out",
            str(out / "runs" / name),
            "--resume",
        ]
        from noisylm.training import load_config

        train_config = load_config(argv[2])
        expected_data = shakespeare_bytes if name == "clean" else out / "data" / name
        assert Path(train_config.data) == expected_data.resolve()
        assert train_config.eval_sets == {"docs": str(python_docs_bytes.resolve())}
    # A scheduler runs one of them; the sweep then counts it as finished and prints the rest.
    assert cli_main(shlex.split(commands[0])[1:]) == 0
    again = sweep(config, out, print_commands=True)
    assert again["commands"] == commands[1:] and again["counts"]["finished"] == 1
    config.launcher, config.nproc_per_node = "torchrun", 2
    torchrun = sweep(config, out, print_commands=True)["commands"]
    assert shlex.split(torchrun[0])[:5] == ["torchrun", "--standalone", "--nproc_per_node=2", "-m", "noisylm"]
    assert len(sweep(config, out, print_commands=True, only=["gaussian-a0.2"])["commands"]) == 1
    with pytest.raises(UsageError, match="unknown run"):
        sweep(config, out, only=["uniform-a0.5"])
    # The CLI prints one command per line, for `| xargs` or a job array.
    config_file = tmp_path / "sweep.json"
    config_file.write_text(json.dumps(tiny_config().to_dict()))
    capsys.readouterr()
    assert cli_main(["sweep", str(config_file), "--out", str(out), "--print-commands"]) == 0
    assert capsys.readouterr().out.splitlines() == commands[1:]


@pytest.mark.parametrize("parallel", [1, 2])  # 2: the trainer's error comes back from a worker process
def test_failed_runs_are_recorded_and_skipped(tmp_path, tiny_config, capsys, parallel):
    config = tiny_config()
    config.noise = config.noise[:1]
    config.parallel = parallel
    config.train["vocab_size"] = 1000  # does not match the byte-level shards: every run fails
    out = tmp_path / "sweep"
    summary = sweep(config, out)
    assert summary["counts"]["failed"] == 3
    assert all("vocab" in r["error"] for r in summary["runs"])
    assert "Failed runs" in (out / "summary.md").read_text()
    sweep(config, out)
    assert capsys.readouterr().err.count("failed, skipped") == 3


def test_bundled_domain_is_tokenized_like_the_clean_shards(tmp_path, shakespeare_bytes):
    config = SweepConfig(
        data=str(shakespeare_bytes), domains={"docs": "python-docs"}, train={"model": "tiny"}
    )
    assert config.tokenizer == "gpt2"  # the default, used only when `data` is a bundled corpus
    sweep(config, tmp_path / "s", print_commands=True)
    manifest = json.loads((tmp_path / "s" / "data" / "docs" / "manifest.json").read_text())
    assert manifest["tokenizer"] == "bytes" and manifest["splits"]["val"]["tokens"] > 0
    meta = json.loads((tmp_path / "s" / "sweep.json").read_text())
    assert meta["domains"] == {"docs": "data/docs"} and [r["name"] for r in meta["runs"]] == ["clean"]


def test_parallel_runs_give_the_same_numbers(finished_sweep, tmp_path, tiny_config):
    config = tiny_config()
    config.parallel = 2  # two worker processes, one run each at a time, one thread each (as the fixture)
    summary = sweep(config, tmp_path / "sweep")
    assert summary["counts"]["finished"] == len(RUNS)
    reference = json.loads((finished_sweep / "summary.json").read_text())
    assert [r["eval"] for r in summary["runs"]] == [r["eval"] for r in reference["runs"]]
    with pytest.raises(UsageError, match="parallel"):
        SweepConfig(data="x", parallel=2, launcher="torchrun")
