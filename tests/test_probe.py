"""The probing protocol on real data: scikit-learn digits pixels as features (a real feature cache made
by `noisylm extract --backbone pixels`), CE vs CE + LGM, tables, Figure 6, and every bad input."""

from __future__ import annotations

import json
import statistics

import pytest
import torch
from safetensors.torch import load_file, save_file

from noisylm.cli import main
from noisylm.errors import NoisyLMError, UsageError
from noisylm.probe import (
    ProbeConfig,
    ProbeData,
    RunSpec,
    check_probe_data,
    load_probe_data,
    probe,
    train_head,
)

TINY = dict(preset="quick", epochs=3, lrs=(0.01,), batch_sizes=(64,), seeds=2, device="cpu", progress=False)


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    # Heads this small train fastest single-threaded (as `probe` does by default).
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="module")
def digits_cache(tmp_path_factory):
    from noisylm.features import extract

    return extract(
        "pixels", "digits", tmp_path_factory.mktemp("probe") / "digits", progress=False, device="cpu"
    )


@pytest.fixture(scope="module")
def digits_probe(digits_cache, tmp_path_factory):
    out = tmp_path_factory.mktemp("probe-out") / "run"
    config = ProbeConfig(
        heads=("linear", "mlp"),
        losses=("ce", "lgm", "norm"),
        lams=(0.15, 0.5),
        sensitivity=((0.05, 0.05),),
        **TINY,
    )
    return out, probe([digits_cache], out, config), config


def test_probe_outputs_and_protocol(digits_probe):
    out, summary, config = digits_probe
    names = {p.name for p in out.iterdir()}
    assert {"probe.json", "results.jsonl", "summary.json", "figure6.png"} <= names
    assert {"table_main.md", "table_main.csv", "table_ablation.md", "table_sensitivity.md"} <= names
    records = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    select = [r for r in records if r["phase"] == "select"]
    # Grid: ce 1 point per head; lgm and norm 1 lr x 1 batch x 1 gamma x 2 lambdas.
    assert len(select) == 2 * (1 + 2 + 2)
    assert all("test_acc" not in r for r in select)  # test never seen during selection
    assert len([r for r in records if r["phase"] == "final"]) == 2 * 3 * config.seeds
    assert len([r for r in records if r["phase"] == "sensitivity"]) == 2 * config.seeds
    assert len(summary["rows"]) == 6
    for row in summary["rows"]:
        finals = [
            100 * r["test_acc"]
            for r in records
            if r["phase"] == "final" and (r["head"], r["loss"]) == (row["head"], row["loss"])
        ]
        assert row["mean"] == pytest.approx(statistics.fmean(finals), abs=1e-3)
        assert row["std"] == pytest.approx(statistics.stdev(finals), abs=1e-3)
        assert {r["seed"] for r in records if r["phase"] == "final" and r["loss"] == row["loss"]} == {0, 1}
        # The chosen setting is the best on validation among the grid points.
        grid = [r for r in select if (r["head"], r["loss"]) == (row["head"], row["loss"])]
        assert row["selection_val_acc"] == max(r["val_acc"] for r in grid)
        assert row["mean"] > 85  # digits pixels are linearly separable enough
    assert (out / "figure6.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    fractions = summary["figure6"]["correct_fraction"]
    assert len(fractions) == 3 and all(0 <= f <= 1 for f in fractions.values())
    # The plane is widened until the CE head labels at most half of it correctly (decision boundaries show).
    assert fractions["(a) CE, no regulariser"] <= 0.5 and summary["figure6"]["head"] == "mlp"


def test_tables_have_the_paper_layout(digits_probe):
    out, summary, _ = digits_probe
    main_md = (out / "table_main.md").read_text().splitlines()
    header = main_md[2]
    assert "digits Linear" in header and "digits MLP" in header and "Avg Linear" in header
    rows = [line.split("|")[1].strip() for line in main_md[4:]]
    assert rows == ["pixels", "pixels + L_gm"]
    ce_linear = next(r for r in summary["rows"] if (r["head"], r["loss"]) == ("linear", "ce"))
    assert f"{ce_linear['mean']:.2f} ± {ce_linear['std']:.2f}" in main_md[4]
    csv = (out / "table_main.csv").read_text().splitlines()
    assert csv[0].startswith("method,digits linear mean,digits linear std")
    assert len((out / "table_ablation.md").read_text().splitlines()) == 2 + 2 + 3
    assert "γ=0.05 λ=0.05" in (out / "table_sensitivity.md").read_text()


def test_training_is_reproducible_and_lgm_changes_the_head(digits_cache):
    data = load_probe_data(digits_cache)
    recipe = ProbeConfig(**TINY).recipe("linear")
    a, _ = train_head(
        data, RunSpec("linear", "lgm", 0.01, 64, 0.05, 0.5, seed=3), recipe, torch.device("cpu")
    )
    b, _ = train_head(
        data, RunSpec("linear", "lgm", 0.01, 64, 0.05, 0.5, seed=3), recipe, torch.device("cpu")
    )
    c, _ = train_head(data, RunSpec("linear", "ce", 0.01, 64, 0.0, 0.0, seed=3), recipe, torch.device("cpu"))
    torch.testing.assert_close(a.weight, b.weight, rtol=0, atol=0)
    assert not torch.allclose(a.weight, c.weight)


def _write_cache(path, splits: dict[str, tuple[torch.Tensor, torch.Tensor]], num_classes: int):
    """A feature cache in the contract format of docs/contracts.md."""
    path.mkdir(parents=True)
    for split, (x, y) in splits.items():
        save_file({"features": x.contiguous(), "labels": y.contiguous()}, str(path / f"{split}.safetensors"))
    meta = {
        "format": "noisylm-features/1",
        "backbone": "handmade",
        "dataset": "toy",
        "feature_dim": next(iter(splits.values()))[0].shape[1],
        "num_classes": num_classes,
        "class_names": [str(i) for i in range(num_classes)],
        "splits": {s: len(y) for s, (_, y) in splits.items()},
    }
    (path / "meta.json").write_text(json.dumps(meta))
    return path


def _splits(digits_cache):
    return {s: (load_file(str(digits_cache / f"{s}.safetensors"))) for s in ("train", "val", "test")}


def test_bad_caches_fail_before_training_and_write_nothing(digits_cache, tmp_path):
    tensors = {s: (t["features"], t["labels"]) for s, t in _splits(digits_cache).items()}
    train_x, train_y = tensors["train"]
    single = _write_cache(tmp_path / "single", {**tensors, "train": (train_x, torch.zeros_like(train_y))}, 10)
    nan_x = train_x.clone()
    nan_x[5, 3] = float("nan")
    nan = _write_cache(tmp_path / "nan", {**tensors, "train": (nan_x, train_y)}, 10)
    out = tmp_path / "out"
    config = ProbeConfig(**TINY)
    with pytest.raises(NoisyLMError, match="single class"):
        probe([single], out, config)
    with pytest.raises(NoisyLMError, match="NaN/inf"):
        probe([nan], out, config)
    with pytest.raises(NoisyLMError, match="not found"):
        probe([tmp_path / "missing"], out, config)
    assert not out.exists()
    # An existing output is kept unless --overwrite.
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    with pytest.raises(NoisyLMError, match="--overwrite"):
        probe([digits_cache], out, config)
    assert (out / "keep.txt").read_text() == "mine"


def test_check_probe_data_names_each_problem():
    x, y = torch.randn(20, 4), torch.arange(20) % 3

    def data(**splits):
        base = {"train": (x, y), "val": (x[:5], y[:5]), "test": (x[:5], y[:5])}
        return ProbeData("b", "d", 3, ["a", "b", "c"], {**base, **splits}, source="cache")

    check_probe_data(data())
    with pytest.raises(NoisyLMError, match="dimensions differ"):
        check_probe_data(data(test=(torch.randn(5, 6), y[:5])))
    with pytest.raises(NoisyLMError, match="val split is empty; use more data"):
        check_probe_data(data(val=(x[:0], y[:0])))
    with pytest.raises(NoisyLMError, match="labels outside 0..2"):
        check_probe_data(data(test=(x[:5], y[:5] + 5)))
    inf_x = x.clone()
    inf_x[2] = float("inf")
    with pytest.raises(NoisyLMError, match="1 train feature rows hold NaN/inf"):
        check_probe_data(data(train=(inf_x, y)))


def test_bad_config_values():
    with pytest.raises(UsageError, match="unknown head"):
        ProbeConfig(heads=("svm",))
    with pytest.raises(UsageError, match="unknown loss"):
        ProbeConfig(losses=("ce", "sam"))
    with pytest.raises(UsageError, match="unknown preset"):
        ProbeConfig(preset="huge")
    with pytest.raises(UsageError, match="seeds"):
        ProbeConfig(seeds=0)
    with pytest.raises(UsageError, match="gamma"):
        ProbeConfig(gammas=(-0.1,))
    with pytest.raises(UsageError, match="add `lgm` to the losses"):
        ProbeConfig(losses=("ce",), sensitivity=((0.1, 0.1),))


def test_cli_probe(digits_cache, tmp_path, capsys):
    out = tmp_path / "cli"
    args = ["probe", str(digits_cache), "--out", str(out), "--heads", "linear", "--preset", "quick"]
    args += [
        "--epochs",
        "2",
        "--lr",
        "0.01",
        "--batch-size",
        "64",
        "--seeds",
        "2",
        "--no-figure6",
        "--no-progress",
    ]
    assert main([*args, "--sensitivity", "paper"]) == 0
    assert "pixels / digits / linear / lgm: test accuracy" in capsys.readouterr().out
    assert "γ=0.001 λ=0.001" in (out / "table_sensitivity.md").read_text()
    assert main(args) == 1  # exists, no --overwrite
    assert "already exists; pass --overwrite" in capsys.readouterr().err
    assert main(["probe", str(tmp_path / "nope"), "--out", str(tmp_path / "o2"), "--no-progress"]) == 1
    assert "feature cache" in capsys.readouterr().err
    assert main([*args[:-2], "--losses", "ce", "sam", "--overwrite"]) == 2
    assert "unknown loss 'sam'" in capsys.readouterr().err


def test_probe_on_real_minilm_wordnet_features(wordnet_minilm_cache, digits_cache, tmp_path):
    """The demo's path on a small real cache (MiniLM features of WordNet glosses, 26 classes), probed
    together with the digits cache: one table, a row pair per backbone, a column per dataset."""
    config = ProbeConfig(
        heads=("linear",), losses=("ce", "lgm"), preset="quick", epochs=6, lrs=(3e-3,), batch_sizes=(32,),
        seeds=2, figure6=False, device="cpu", progress=False,
    )  # fmt: skip
    summary = probe([wordnet_minilm_cache, digits_cache], tmp_path / "wn", config)
    majority = 100 * torch.bincount(load_probe_data(wordnet_minilm_cache).splits["test"][1]).max().item() / 78
    wordnet_rows = [r for r in summary["rows"] if r["dataset"] == "wordnet"]
    assert [(r["backbone"], r["loss"]) for r in wordnet_rows] == [("minilm", "ce"), ("minilm", "lgm")]
    for row in wordnet_rows:
        assert row["mean"] > majority + 15  # well above the majority class
    table = (tmp_path / "wn" / "table_main.md").read_text().splitlines()
    assert "| wordnet Linear | digits Linear | Avg Linear |" in table[2]
    names = [line.split("|")[1].strip() for line in table[4:]]
    assert names == ["minilm", "minilm + L_gm", "pixels", "pixels + L_gm"]
    assert table[4].split("|")[3].strip() == "/"  # minilm was not run on digits
