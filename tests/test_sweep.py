"""Sweeps: config and presets, bad input, the grid on disk, resume after a kill, cluster commands."""

from __future__ import annotations

import pytest

from noisylm.cli import main as cli_main
from noisylm.errors import NoisyLMError, UsageError
from noisylm.sweep import PRESETS, SweepConfig, load_sweep_config, run_name, sweep

# --------------------------------------------------------------------------------------------------
# Config


def test_presets_load_with_the_papers_grid():
    for name in PRESETS:
        config = load_sweep_config(name)
        assert [r.name for r in config.grid()] == [
            "clean",
            "uniform-a0.01",
            "uniform-a0.05",
            "uniform-a0.2",
            "gaussian-a0.05",
        ]
        assert config.grid()[0].kind is None and config.grid()[0].alpha == 0.0
    demo = load_sweep_config("demo")
    assert demo.tokenizer == "bytes" and demo.data == "shakespeare" and "python-docs" in demo.domains
    paper = load_sweep_config("paper-124m")
    # App. D.2: 16 x 40 x 1024 tokens per iteration, 300k iterations, lr 6e-4 -> 6e-5.
    t = paper.train
    assert (t["batch_size"], t["grad_accum"], t["block_size"], t["max_iters"]) == (16, 40, 1024, 300_000)
    assert (t["learning_rate"], t["min_lr"], paper.tokenizer) == (6e-4, 6e-5, "gpt2")
    assert load_sweep_config("paper-774m").train["model"] == "gpt2-774m"


def test_overrides_parse_toml_values_and_dotted_keys(tmp_path):
    config = load_sweep_config(
        "demo", ["train.max_iters=7", "data=/some/shards", "domains.wiki=/w", "clean=false", "seed=3"]
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
    with pytest.raises(UsageError, match="does not parse"):
        load_sweep_config(bad)
    other = tmp_path / "x.ini"
    other.write_text("a=1")
    with pytest.raises(UsageError, match="must end in"):
        load_sweep_config(other)


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
