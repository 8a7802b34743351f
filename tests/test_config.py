"""Config fields that document and check themselves (`noisylm.configs.fields`), on `TrainConfig`,
`SweepConfig`, `DownstreamConfig` and `ProbeConfig`: the README tables and `noisylm train/probe --help`
show the field docs, and bad values give one line naming the field, the value and what is allowed."""

from __future__ import annotations

import dataclasses
import math
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from noisylm.configs import at_least, between, field_table, one_of, setting, update_tables, validate
from noisylm.configs.fields import check_type, doc_of, main
from noisylm.errors import UsageError
from noisylm.experiments.config import DownstreamConfig, SweepConfig
from noisylm.probing.protocol.config import ProbeConfig
from noisylm.training import TrainConfig

README = Path(__file__).resolve().parents[1] / "README.md"
TRAIN_TABLE = "<!-- fields:noisylm.training.TrainConfig -->"


TABLES = (
    TRAIN_TABLE,
    "<!-- fields:noisylm.experiments.config.SweepConfig -->",
    "<!-- fields:noisylm.experiments.config.DownstreamConfig -->",
    "<!-- fields:noisylm.probing.protocol.config.ProbeConfig -->",
)


def test_readme_tables_are_generated_from_the_field_docs():
    text = README.read_text(encoding="utf-8")
    assert all(table in text for table in TABLES)
    assert update_tables(text) == text, (
        "README field table is stale: run `python -m noisylm.configs README.md`"
    )


def test_every_train_field_has_a_one_line_doc():
    from noisylm.model import PRESETS

    for f in dataclasses.fields(TrainConfig):
        assert doc_of(f).strip() and "\n" not in doc_of(f), f.name
    model_doc = doc_of(next(f for f in dataclasses.fields(TrainConfig) if f.name == "model"))
    assert all(name in model_doc for name in PRESETS)  # the doc lists every preset


@pytest.mark.parametrize("cls", [SweepConfig, DownstreamConfig, ProbeConfig])
def test_every_sweep_and_probe_field_has_a_one_line_doc_in_its_readme_table(cls):
    text = README.read_text(encoding="utf-8")
    start = text.index(f"<!-- fields:{cls.__module__}.{cls.__name__} -->")
    table = text[start : text.index("<!-- /fields -->", start)]
    for f in dataclasses.fields(cls):
        assert doc_of(f).strip() and "\n" not in doc_of(f), f.name
        assert f"| `{f.name}` |" in table and doc_of(f) in table, f.name


# The checks the three configs' __post_init__ made by hand, now field checks, with their messages.
@pytest.mark.parametrize(
    "make, message",
    [
        (lambda: ProbeConfig(epochs=0), "epochs must be >= 1, got 0"),
        (lambda: ProbeConfig(seeds=0), "seeds must be >= 1, got 0"),
        (lambda: ProbeConfig(select_seeds=0), "select_seeds must be >= 1 (seeds per grid point), got 0"),
        (lambda: ProbeConfig(threads=0), "threads must be >= 1, got 0"),
        (lambda: ProbeConfig(jobs=0), "jobs must be an integer >= 1 (runs trained at once), got 0"),
        (lambda: ProbeConfig(jobs=True), "jobs must be an integer >= 1 (runs trained at once), got True"),
        (
            lambda: ProbeConfig(preset="huge"),
            "unknown preset 'huge'; choose one of nlu, vision, quick, study",
        ),
        (lambda: ProbeConfig(lrs=(0.1, -1)), "learning rates must be positive numbers, got (0.1, -1.0)"),
        (lambda: ProbeConfig(lrs=()), "learning rates must be positive numbers, got ()"),
        (lambda: ProbeConfig(batch_sizes=[0]), "batch sizes must be >= 1, got (0,)"),
        (lambda: ProbeConfig(gammas=(-0.1,)), "gamma values must be finite numbers >= 0, got (-0.1,)"),
        (lambda: ProbeConfig(lams=(math.inf,)), "lambda values must be finite numbers >= 0, got (inf,)"),
        (lambda: ProbeConfig(device="tpu"), "unknown device 'tpu'; use auto, cpu or cuda[:N]"),
        (lambda: ProbeConfig(lrs=("fast",)), "lrs[0] must be float, got 'fast'"),
        (lambda: DownstreamConfig(seeds=1), "downstream seeds must be >= 2 (mean ± std over them), got 1"),
        (lambda: DownstreamConfig(lr=0.0), "downstream epochs, batch_size and lr must be positive"),
        (lambda: DownstreamConfig(batch_size=0), "downstream epochs, batch_size and lr must be positive"),
        (
            lambda: DownstreamConfig(pooling="max"),
            "downstream pooling 'max' is not valid; use 'mean' or 'last'",
        ),
        (
            lambda: DownstreamConfig(losses=["lgm"]),
            "downstream losses must include 'ce' (Table 1 compares CE with CE + L_gm)",
        ),
        (lambda: SweepConfig(data="x", replicates=0), "replicates must be >= 1, got 0"),
        (lambda: SweepConfig(data="x", parallel=0), "parallel must be >= 1, got 0"),
        (lambda: SweepConfig(data="x", nproc_per_node=0), "nproc_per_node must be >= 1, got 0"),
        (lambda: SweepConfig(data="x", name="a/b"), "sweep name 'a/b' must be a non-empty name without '/'"),
        (
            lambda: SweepConfig(data="x", placement="mix"),
            "placement 'mix' is not valid; use 'append' or 'interleave'",
        ),
        (
            lambda: SweepConfig(data="x", launcher="slurm"),
            "launcher 'slurm' is not valid; use one of: inprocess, torchrun",
        ),
        (lambda: SweepConfig(data="x", seed="1"), "seed must be int, got '1'"),
        (lambda: SweepConfig(data="x", train=[1]), "[train] must be a table of TrainConfig fields"),
    ],
)
def test_sweep_and_probe_checks_keep_their_one_line_messages(make, message):
    with pytest.raises(UsageError) as caught:
        make()
    assert str(caught.value) == message


def test_sweep_and_probe_values_are_normalised_as_before():
    probe = ProbeConfig(heads=["linear"], lrs=[1, 2e-3], batch_sizes=[8.0], gammas=[0], init_head=Path("h"))
    assert probe.heads == ("linear",) and probe.lrs == (1.0, 0.002) and probe.batch_sizes == (8,)
    assert isinstance(probe.batch_sizes[0], int) and probe.gammas == (0.0,) and probe.init_head == "h"
    assert probe.seeds == 5 and ProbeConfig(preset="study").seeds == 8  # None = the preset's
    downstream = DownstreamConfig(heads=("mlp",), runs=("clean",))
    assert downstream.heads == ["mlp"] and downstream.runs == ["clean"]  # lists, as before
    sweep = SweepConfig(data="x", noise=[{"kind": "uniform", "alphas": [0.1]}], downstream={"seeds": 2})
    assert sweep.noise[0].alphas == [0.1] and sweep.downstream.seeds == 2


def test_check_type_on_collections():
    assert check_type("x", [1, 2.0], tuple[float, ...]) == (1.0, 2.0)
    assert check_type("x", (1e3,), list[int]) == [1000]
    assert check_type("x", [[0.1, 2]], tuple[tuple[float, float], ...]) == ((0.1, 2.0),)
    assert check_type("x", {"a": Path("p")}, dict[str, str]) == {"a": "p"}
    assert check_type("x", {"a": [1]}, dict[str, Any]) == {"a": [1]}
    assert check_type("x", None, tuple[int, ...] | None) is None
    for value, annotation, message in [
        ("ab", tuple[str, ...], "x must be a list of str, got 'ab'"),  # not a list of characters
        ([1, "b"], list[int], "x[1] must be int, got 'b'"),
        ([[0.1]], tuple[tuple[float, float], ...], "x[0] must be a list of 2 values, got [0.1]"),
        ({"a": 1}, dict[str, str], "x.a must be str, got 1"),
        ([1], dict[str, Any], "x must be a table, got [1]"),
        ({"kind": "uniform"}, DownstreamConfig, "x must be DownstreamConfig, got {'kind': 'uniform'}"),
    ]:
        with pytest.raises(UsageError, match=f"^{re.escape(message)}$"):
            check_type("x", value, annotation)


def test_probe_help_shows_the_field_docs(monkeypatch, capsys):
    from noisylm.cli import main as cli_main
    from noisylm.cli.probe import FIELD_OPTIONS

    monkeypatch.setenv("COLUMNS", "1000")
    with pytest.raises(SystemExit):
        cli_main(["probe", "--help"])
    lines = capsys.readouterr().out.splitlines()
    docs = {f.name: doc_of(f) for f in dataclasses.fields(ProbeConfig)}
    assert len(FIELD_OPTIONS) >= 19
    for dest, (name, _) in FIELD_OPTIONS.items():
        text = _option_help(lines, f"--{dest.replace('_', '-')}")
        assert docs[name].replace("`", "") in text, dest
    assert _option_help(lines, "--threads").endswith("(0 on the command line) (default: 1)")


# The checks __post_init__ made by hand before the fields carried them, with their messages.
@pytest.mark.parametrize(
    "name, value, message",
    [
        *[
            (name, 0, f"{name} must be >= 1, got 0")
            for name in (
                "batch_size",
                "grad_accum",
                "max_iters",
                "eval_interval",
                "eval_iters",
                "log_interval",
                "keep_checkpoints",
                "ce_chunk_tokens",
                "threads",
                "lr_decay_iters",
            )
        ],
        ("warmup_iters", -1, "warmup_iters must be >= 0, got -1"),
        ("checkpoint_interval", -5, "checkpoint_interval must be >= 0, got -5"),
        ("weight_decay", -0.1, "weight_decay must be >= 0, got -0.1"),
        ("grad_clip", -1.0, "grad_clip must be >= 0, got -1.0"),
        ("min_lr", -1e-5, "min_lr must be >= 0, got -1e-05"),
        ("learning_rate", 0.0, "learning_rate must be > 0, got 0.0"),
        ("learning_rate", math.nan, "learning_rate must be > 0, got nan"),
        ("beta1", 1.0, "beta1 must be in [0, 1), got 1.0"),
        ("beta2", -0.5, "beta2 must be in [0, 1), got -0.5"),
        ("sampler", "random", "sampler must be one of {paired, uniform}, got 'random'"),
        ("dtype", "int8", "dtype must be one of {auto, float32, bfloat16, float16}, got 'int8'"),
        ("batch_size", True, "batch_size must be int, got True"),
        ("model", "huge", "unknown model preset 'huge'; choose one of: gpt2-124m, gpt2-350m, gpt2-774m"),
    ],
)
def test_a_bad_value_is_one_line_naming_field_value_and_what_is_allowed(name, value, message):
    with pytest.raises(UsageError) as caught:
        TrainConfig(data="d", **{name: value})
    assert str(caught.value).startswith(message) and "\n" not in str(caught.value)


def test_values_at_the_edge_of_what_is_allowed_pass():
    edges = dict(warmup_iters=0, checkpoint_interval=0, weight_decay=0, grad_clip=0.0, min_lr=0.0)
    edges |= dict(beta1=0.0, beta2=0.999, threads=1, lr_decay_iters=1, batch_size=1, sampler="uniform")
    config = TrainConfig(data=Path("d"), max_iters=1e4, **edges)
    assert config.max_iters == 10000 and isinstance(config.max_iters, int)  # 1e4 as YAML writes it
    assert config.data == "d" and isinstance(config.weight_decay, float)
    assert TrainConfig(data="d", threads=None, lr_decay_iters=None).threads is None  # None is not checked


def test_help_shows_every_field_doc_and_default(monkeypatch, capsys):
    from noisylm.cli import main as cli_main

    monkeypatch.setenv("COLUMNS", "1000")  # one line per option
    with pytest.raises(SystemExit):
        cli_main(["train", "--help"])
    lines = capsys.readouterr().out.splitlines()
    expected_defaults = {"data": '""', "batch_size": "16", "sampler": "paired", "threads": "none"}
    expected_defaults |= {"learning_rate": "0.0006", "compile": "auto", "progress": "true"}
    for f in dataclasses.fields(TrainConfig):
        if f.name == "eval_sets":  # --eval-set NAME=DIR
            continue
        flag = f"--{f.name.replace('_', '-')}"
        text = _option_help(lines, flag)
        assert doc_of(f).replace("`", "") in text, f.name
        if f.name in expected_defaults:
            assert text.endswith(f"(default: {expected_defaults[f.name]})"), text
    assert any("--sampler {paired,uniform}" in line for line in lines)


def _option_help(lines: list[str], flag: str) -> str:
    """The help of one option: its line and the indented lines under it, whitespace collapsed."""
    (start,) = [i for i, line in enumerate(lines) if line.lstrip().startswith(flag + " ")]
    end = start + 1
    while end < len(lines) and lines[end].startswith("    "):  # argparse indents the help under the flag
        end += 1
    return " ".join(" ".join(lines[start:end]).split())


def test_cli_reports_a_bad_override_in_one_line(tmp_path, capsys):
    from noisylm.cli import main as cli_main

    out = tmp_path / "run"
    code = cli_main(["train", "--data", "d", "--out", str(out), "--beta2", "1", "--max-iters=3"])
    assert code == 2 and not out.exists()
    assert capsys.readouterr().err == "noisylm train: error: beta2 must be in [0, 1), got 1.0\n"


def test_building_the_cli_does_not_import_torch():
    # train's --FIELD options load TrainConfig (and so torch) only when `noisylm train` is parsed
    script = "import sys; from noisylm.cli import build_parser; build_parser(); print('torch' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "False"


def test_regenerating_a_stale_table(tmp_path, capsys):
    readme = tmp_path / "README.md"
    readme.write_text(f"intro\n{TRAIN_TABLE}\n| old | table |\n<!-- /fields -->\nrest\n", encoding="utf-8")
    before = readme.read_text(encoding="utf-8")
    assert main(["--check", str(readme)]) == 1 and readme.read_text(encoding="utf-8") == before
    assert main([str(readme)]) == 0
    lines = readme.read_text(encoding="utf-8").splitlines()
    assert lines[:4] == ["intro", TRAIN_TABLE, "| field | default | meaning |", "|---|---|---|"]
    assert lines[-2:] == ["<!-- /fields -->", "rest"]
    assert len(lines) == 4 + len(dataclasses.fields(TrainConfig)) + 2
    assert "| `batch_size` | `16` | windows per micro-batch (per process) |" in lines
    assert main(["--check", str(readme)]) == 0
    readme.write_text("<!-- fields:noisylm.training.train -->\n<!-- /fields -->\n", encoding="utf-8")
    assert main([str(readme)]) == 2
    assert "not a dataclass" in capsys.readouterr().err


@dataclasses.dataclass(frozen=True)
class _Probe:
    """A config of another stage, as ProbeConfig could declare it."""

    backbone: str = setting(doc="model | to | probe")
    val_fraction: float = setting(0.1, "validation share", between(0, 1, include_low=False))
    heads: str = setting("linear", "head kind", one_of(("linear", "mlp")))
    max_train: int | None = setting(None, "cap on training examples", at_least(2))
    tags: dict[str, str] = setting(doc="free-form labels", default_factory=dict)

    def __post_init__(self) -> None:
        validate(self)


def test_the_mechanism_serves_other_config_dataclasses():
    assert _Probe("gpt2", max_train=1e3).max_train == 1000  # normalised in place, on a frozen dataclass
    assert _Probe("gpt2", max_train=None).max_train is None
    for values, message in [
        ({"val_fraction": 0.0}, "val_fraction must be in (0, 1), got 0.0"),
        ({"val_fraction": 1.5}, "val_fraction must be in (0, 1), got 1.5"),
        ({"heads": "tree"}, "heads must be one of {linear, mlp}, got 'tree'"),
        ({"max_train": 1}, "max_train must be >= 2, got 1"),
    ]:
        with pytest.raises(UsageError, match=f"^{re.escape(message)}$"):
            _Probe("gpt2", **values)
    assert field_table(_Probe) == (
        "| field | default | meaning |\n"
        "|---|---|---|\n"
        "| `backbone` | (required) | model \\| to \\| probe |\n"
        "| `val_fraction` | `0.1` | validation share |\n"
        "| `heads` | `linear` | head kind |\n"
        "| `max_train` | `none` | cap on training examples |\n"
        "| `tags` | `{}` | free-form labels |\n"
    )
    with pytest.raises(TypeError, match="one-line doc"):
        setting(1)
