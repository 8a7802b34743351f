"""The probing protocol on real data: scikit-learn digits pixels as features (a real feature cache made
by `noisylm extract --backbone pixels`), CE vs CE + LGM, tables, Figure 6, and every bad input."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import random
import signal
import statistics
import subprocess
import sys
import time

import pytest
import torch
from safetensors.torch import load_file, save_file

from noisylm.cli import main
from noisylm.errors import NoisyLMError, UsageError
from noisylm.probing.protocol import (
    LOGREG_CS,
    LOSSES,
    PRESET_SEEDS,
    ProbeConfig,
    ProbeData,
    RunSpec,
    accuracy,
    check_probe_data,
    initial_head,
    load_init_head,
    load_probe_data,
    partial_dir,
    probe,
    train_head,
    with_feature_noise,
)
from noisylm.probing.protocol.resume import claim_partial, probe_state

TINY = dict(preset="quick", epochs=3, lrs=(0.01,), batch_sizes=(64,), seeds=2, device="cpu", progress=False)


# Heads this small train fastest single-threaded (as `probe` does by default).
pytestmark = pytest.mark.usefixtures("torch_single_thread_module")


@pytest.fixture(scope="module")
def digits_cache(tmp_path_factory):
    from noisylm.probing.features import extract

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
    logreg = [r for r in records if r["phase"].startswith("logreg")]
    records = [r for r in records if not r["phase"].startswith("logreg")]  # the heads' runs
    select = [r for r in records if r["phase"] == "select"]
    # Grid: ce 1 point per head; lgm and norm 1 lr x 1 batch x 1 gamma x 2 lambdas.
    assert len(select) == 2 * (1 + 2 + 2)
    assert all("test_acc" not in r for r in select)  # test never seen during selection
    assert len([r for r in records if r["phase"] == "final"]) == 2 * 3 * config.seeds
    assert len([r for r in records if r["phase"] == "sensitivity"]) == 2 * config.seeds
    # A single lr and batch size: every loss's own setting is CE's, so its final runs are its paired runs.
    assert not [r for r in records if r["phase"] == "paired"]
    assert [r["phase"] for r in logreg] == ["logreg-select"] * len(LOGREG_CS) + ["logreg"]
    assert all("test_acc" not in r for r in logreg[:-1]) and "test_acc" in logreg[-1]
    assert len(summary["rows"]) == 6
    assert summary["reused_runs"] == 0 and not partial_dir(out).exists()  # the progress folder is gone
    assert all(r["anchor_weight"] == 0.0 and r["init_head"] is None for r in records)
    assert all(r["gamma_scale"] == "absolute" and r["feature_noise"] == 0.0 for r in records)
    assert all(r["distance_to_init"] > 0 for r in records if r["phase"] != "figure6")
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
    assert rows == ["pixels", "pixels + L_gm", "pixels: logistic regression (C on val)"]
    assert main_md[6].split("|")[3].strip() == "/"  # the logistic regression is a linear head only
    ce_linear = next(r for r in summary["rows"] if (r["head"], r["loss"]) == ("linear", "ce"))
    assert f"{ce_linear['mean']:.2f} ± {ce_linear['std']:.2f}" in main_md[4]
    csv = (out / "table_main.csv").read_text().splitlines()
    assert csv[0].startswith("method,digits linear mean,digits linear std")
    assert len((out / "table_ablation.md").read_text().splitlines()) == 2 + 2 + 3
    assert "γ=0.05 λ=0.05" in (out / "table_sensitivity.md").read_text()


def test_parallel_jobs_give_the_results_of_one_job(digits_probe, digits_cache, tmp_path):
    reference, expected, config = digits_probe  # trained with jobs=1, one run after another
    out = tmp_path / "jobs2"
    summary = probe([digits_cache], out, dataclasses.replace(config, jobs=2))
    for key in ("rows", "sensitivity", "figure6"):
        assert summary[key] == expected[key], key
    assert summary["reused_runs"] == 0 and not partial_dir(out).exists()

    def without_timing(records):
        return [{k: v for k, v in r.items() if k != "seconds"} for r in records]

    # Run for run, in the same (protocol) order, whatever order the workers finished them in.
    assert without_timing(_records(out)) == without_timing(_records(reference))
    assert all(r["seconds"] > 0 for r in _records(out) if r["phase"] != "figure6")
    tables = sorted(p.name for p in reference.glob("table_*"))
    assert len(tables) == 8  # main, paired, ablation, sensitivity
    for name in tables:
        assert (out / name).read_text() == (reference / name).read_text(), name
    assert json.loads((out / "probe.json").read_text())["config"]["jobs"] == 2


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
    assert not out.exists() and not partial_dir(out).exists()
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
    with pytest.raises(UsageError, match="select_seeds must be >= 1"):
        ProbeConfig(select_seeds=0)
    for bad in (-0.5, float("inf"), float("nan")):
        with pytest.raises(UsageError, match="anchor_weight .* must be a finite number >= 0"):
            ProbeConfig(anchor_weight=bad)
    with pytest.raises(UsageError, match="anchor_weight must be a number"):
        ProbeConfig(anchor_weight="lots")
    with pytest.raises(UsageError, match="probe a single head kind"):
        ProbeConfig(heads=("linear", "mlp"), init_head="h0.safetensors")


def _quick_cli_args(cache, out, seeds: int) -> list[str]:
    """`noisylm probe` on one cache: linear head, 2 epochs at one lr and batch size, no figure."""
    return ["probe", str(cache), "--out", str(out), "--heads", "linear", "--preset", "quick",
            "--epochs", "2", "--lr", "0.01", "--batch-size", "64", "--seeds", str(seeds),
            "--no-figure6", "--no-progress"]  # fmt: skip


def test_cli_probe(digits_cache, tmp_path, capsys):
    out = tmp_path / "cli"
    args = _quick_cli_args(digits_cache, out, seeds=2)
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
    reference = "logistic regression (C on val)"
    assert names == [
        "minilm",
        "minilm + L_gm",
        f"minilm: {reference}",
        "pixels",
        "pixels + L_gm",
        f"pixels: {reference}",
    ]
    assert table[4].split("|")[3].strip() == "/"  # minilm was not run on digits


# --------------------------------------------------------------------------------------------------
# L2-SP anchoring and initial head weights (Table 4's setting).


def _records(out):
    return [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]


def _least_squares_head(data, path):
    """An independent linear classifier: least squares on one-hot targets (numpy), saved as a head."""
    import numpy as np

    x, y = (t.numpy() for t in data.splits["train"])
    design = np.hstack([x, np.ones((len(x), 1))]).astype(np.float64)
    solution = np.linalg.lstsq(design, np.eye(data.num_classes)[y], rcond=None)[0]  # [d + 1, C]
    weight = torch.from_numpy(solution[:-1].T.copy()).float()
    bias = torch.from_numpy(solution[-1].copy()).float()
    save_file({"weight": weight, "bias": bias}, str(path))
    return weight, bias


def test_l2sp_anchor_keeps_the_head_near_its_initial_weights(digits_cache, tmp_path):
    data = load_probe_data(digits_cache)
    recipe = ProbeConfig(**TINY).recipe("linear")
    generator = torch.Generator().manual_seed(123)
    theta0 = {"weight": 0.1 * torch.randn(10, 64, generator=generator), "bias": torch.zeros(10)}
    save_file(theta0, str(tmp_path / "h0.safetensors"))
    state, sha = load_init_head(tmp_path / "h0.safetensors", "linear", [data])
    assert sha == hashlib.sha256((tmp_path / "h0.safetensors").read_bytes()).hexdigest()
    for loss, gamma, lam in (("ce", 0.0, 0.0), ("lgm", 0.05, 0.5)):  # ce anchors too
        distance = {}
        for alpha in (0.0, 10.0):
            spec = RunSpec("linear", loss, 0.01, 64, gamma, lam, 0, anchor_weight=alpha)
            head, _ = train_head(data, spec, recipe, torch.device("cpu"), init_state=state)
            with torch.no_grad():
                shift = torch.cat([(head.weight - theta0["weight"]).flatten(), head.bias - theta0["bias"]])
            distance[alpha] = float(shift.norm())
        assert distance[0.0] > 1  # the unanchored head moves far from θ₀ ...
        assert distance[10.0] < 0.1 * distance[0.0]  # ... the anchored one stays close


def test_init_head_is_loaded_and_recorded(digits_cache, tmp_path):
    data = load_probe_data(digits_cache)
    path = tmp_path / "lstsq.safetensors"
    weight, bias = _least_squares_head(data, path)

    def reference_accuracy(split):
        x, y = data.splits[split]
        return float(((x @ weight.T + bias).argmax(1) == y).double().mean())

    assert reference_accuracy("val") > 0.8  # far from what a random init scores (~0.1)
    # lr 1e-12: training cannot move the head, so every run predicts exactly as the file's weights do.
    config = ProbeConfig(
        heads=("linear",), losses=("ce", "lgm"), preset="quick", epochs=1, lrs=(1e-12,), batch_sizes=(256,),
        seeds=2, figure6=False, device="cpu", progress=False, init_head=str(path), logreg=False,
    )  # fmt: skip
    summary = probe([digits_cache], tmp_path / "out", config)
    records = _records(tmp_path / "out")
    assert len(records) == 2 * (1 + 2)
    for record in records:
        assert record["val_acc"] == pytest.approx(reference_accuracy("val"), abs=1e-12)
        assert record["init_head"] == str(path) and record["distance_to_init"] < 1e-6
        if record["phase"] == "final":
            assert record["test_acc"] == pytest.approx(reference_accuracy("test"), abs=1e-12)
    assert all(row["init_head"] == str(path) for row in summary["rows"])
    meta = json.loads((tmp_path / "out" / "probe.json").read_text())
    assert meta["config"]["init_head"] == str(path)
    assert meta["init_head_sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
    assert "Heads start from lstsq.safetensors." in (tmp_path / "out" / "table_main.md").read_text()


def test_cli_anchor_weight_and_init_head(digits_cache, tmp_path, capsys):
    out = tmp_path / "out"
    base = ["probe", str(digits_cache), "--heads", "linear", "--losses", "ce", "--preset", "quick"]
    base += ["--epochs", "2", "--lr", "0.01", "--batch-size", "64", "--seeds", "1", "--no-figure6"]
    base += ["--no-progress", "--no-logreg"]
    good = tmp_path / "h0.safetensors"
    _least_squares_head(load_probe_data(digits_cache), good)
    wrong_keys = tmp_path / "mlp.safetensors"
    save_file({"fc1.weight": torch.zeros(64, 64), "fc1.bias": torch.zeros(64)}, str(wrong_keys))
    wrong_shape = tmp_path / "narrow.safetensors"
    save_file({"weight": torch.zeros(10, 32), "bias": torch.zeros(10)}, str(wrong_shape))
    garbage = tmp_path / "garbage.safetensors"
    garbage.write_bytes(b"not a safetensors file")
    cases = [
        (["--anchor-weight", "-1"], 2, "anchor_weight (α of the L2-SP term) must be a finite number >= 0"),
        (["--anchor-weight", "nan"], 2, "must be a finite number >= 0, got nan"),
        (["--init-head", str(tmp_path / "none.safetensors")], 1, "none.safetensors not found"),
        (["--init-head", str(garbage)], 1, "cannot read init head"),
        (["--init-head", str(wrong_keys)], 1, "missing keys ['bias', 'weight'], unexpected keys ['fc1.bias'"),
        (["--init-head", str(wrong_shape)], 1, "weight has shape (10, 32) but the linear head for"),
        (["--init-head", str(good), "--heads", "linear", "mlp"], 2, "probe a single head kind"),
        (["--select-seeds", "0"], 2, "select_seeds must be >= 1"),
        (["--jobs", "0"], 2, "jobs must be an integer >= 1 (runs trained at once), got 0"),
    ]
    for extra, code, message in cases:
        assert main([*base, "--out", str(out), *extra]) == code, extra
        err = capsys.readouterr().err
        assert message in err and len(err.strip().splitlines()) == 1, err
        assert not out.exists() and not partial_dir(out).exists()  # nothing left behind
    # The same head from the same file, free and anchored: α pulls the trained head back to θ₀.
    distance = {}
    for alpha in ("0", "10"):
        run_out = tmp_path / f"alpha{alpha}"
        assert main([*base, "--out", str(run_out), "--init-head", str(good), "--anchor-weight", alpha]) == 0
        records = _records(run_out)
        assert {r["anchor_weight"] for r in records} == {float(alpha)}
        assert json.loads((run_out / "probe.json").read_text())["config"]["anchor_weight"] == float(alpha)
        distance[alpha] = next(r["distance_to_init"] for r in records if r["phase"] == "final")
    capsys.readouterr()
    assert distance["10"] < 0.1 * distance["0"]


# --------------------------------------------------------------------------------------------------
# Selection over several seeds.


def test_select_seeds_scores_each_grid_point_by_its_mean_validation_accuracy(digits_cache, tmp_path):
    base = dict(
        heads=("linear",), losses=("ce", "lgm"), preset="quick", epochs=2, lrs=(0.03, 0.001),
        batch_sizes=(64,), gammas=(0.05,), lams=(0.15, 1.0), seeds=1, figure6=False, device="cpu",
        progress=False,
    )  # fmt: skip
    probe([digits_cache], tmp_path / "one", ProbeConfig(**base))
    # resume=True with nothing to resume simply runs the probe.
    two = probe([digits_cache], tmp_path / "two", ProbeConfig(**base, select_seeds=2), resume=True)
    select_one = [r for r in _records(tmp_path / "one") if r["phase"] == "select"]
    select_two = [r for r in _records(tmp_path / "two") if r["phase"] == "select"]
    assert len(select_one) == 2 + 2 * 2  # ce: 2 lrs; lgm: 2 lrs x 2 lambdas
    assert len(select_two) == 2 * len(select_one)

    def point(r):
        return r["loss"], r["lr"], r["batch_size"], r["gamma"], r["lam"]

    # Seed 0's selection runs are the very runs of the one-seed probe; seed 1 adds a second run per point.
    assert [(point(r), r["val_acc"]) for r in select_one] == [
        (point(r), r["val_acc"]) for r in select_two if r["seed"] == 0
    ]
    for row in two["rows"]:
        runs: dict[tuple, list[float]] = {}
        for r in select_two:
            if r["loss"] == row["loss"]:
                runs.setdefault(point(r), []).append(r["val_acc"])
        assert all(len(accs) == 2 for accs in runs.values())
        means = {p: statistics.fmean(accs) for p, accs in runs.items()}
        best = max(means.values())
        chosen = next(p for p, mean in means.items() if mean == best)  # ties keep the first point
        assert row["selection_val_acc"] == best and row["select_seeds"] == 2
        assert (row["loss"], row["lr"], row["batch_size"], row["gamma"] or 0.0, row["lam"] or 0.0) == chosen
    assert "(mean of 2 seeds per grid point)" in (tmp_path / "two" / "table_main.md").read_text()


# --------------------------------------------------------------------------------------------------
# Incremental results and resume after a crash.


def _start_probe(args, out, lines=1):
    """`noisylm probe ... --out out` in its own process, returned once `lines` runs are recorded."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "noisylm", "probe", *args, "--out", str(out)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        # A shell without job control starts background jobs with SIGINT ignored, and the child would
        # inherit that (Python then installs no KeyboardInterrupt handler): give it the default back.
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    progress = partial_dir(out) / "results.jsonl"
    deadline = time.monotonic() + 300
    while not (progress.is_file() and progress.read_bytes().count(b"\n") >= lines):
        assert proc.poll() is None, f"the probe ended too early: {proc.stderr.read()}"
        assert time.monotonic() < deadline, "no run finished within the deadline"
        time.sleep(0.01)
    return proc


def test_killed_probe_resumes_without_retraining(digits_cache, tmp_path, capsys):
    args = [str(digits_cache), "--heads", "linear", "--preset", "quick", "--epochs", "8"]
    args += ["--batch-size", "64", "--lam", "0.15", "0.5", "--seeds", "3", "--sensitivity", "0.05:0.05"]
    args += ["--no-progress"]
    grid = ["--lr", "0.01", "0.003"]
    reference = tmp_path / "reference"
    assert main(["probe", *args, *grid, "--out", str(reference)]) == 0
    # select ce, select lgm, the C grid, finals, paired runs (if lgm's lr is not ce's), logreg, Table 6
    paired = sum(r["phase"] == "paired" for r in _records(reference))
    total = 2 + 4 + len(LOGREG_CS) + 2 * 3 + paired + 1 + 3
    assert len(_records(reference)) == total + 3  # + 3 Figure 6 runs

    out = tmp_path / "out"
    progress = partial_dir(out) / "results.jsonl"
    proc = _start_probe([*args, *grid], out, lines=2)
    proc.kill()  # SIGKILL: no cleanup code runs
    proc.communicate()
    assert proc.returncode == -9 and not out.exists()
    done = [json.loads(line) for line in progress.read_text().split("\n")[:-1]]
    assert 2 <= len(done) < total, len(done)
    with progress.open("ab") as fh:  # what a kill in the middle of a write would leave
        fh.write(b'{"phase": "select", "backbone": "pix')
    kept = progress.read_bytes()

    # Other settings are refused, and the interrupted state is left as it was.
    assert main(["probe", *args, "--lr", "0.01", "--out", str(out), "--resume"]) == 1
    err = capsys.readouterr().err
    assert "holds a probe started with different settings (lrs: [0.01, 0.003] -> [0.01])" in err
    assert len(err.strip().splitlines()) == 1
    assert main(["probe", *args, *grid, "--out", str(out)]) == 1
    assert "holds an interrupted probe; pass --resume" in capsys.readouterr().err
    assert progress.read_bytes() == kept

    assert main(["probe", *args, *grid, "--out", str(out), "--resume"]) == 0
    assert f"reused {len(done)} finished runs" in capsys.readouterr().out
    assert not partial_dir(out).exists()
    records, expected = _records(out), _records(reference)
    # The finished runs were reused as recorded (timings included), not trained again ...
    assert records[: len(done)] == done
    summary = json.loads((out / "summary.json").read_text())
    assert summary["reused_runs"] == len(done)
    # ... and the resumed probe gives the numbers of the uninterrupted one, run for run.
    assert len(records) == total + 3

    def without_timing(rs):
        return [{k: v for k, v in r.items() if k != "seconds"} for r in rs]

    assert without_timing(records) == without_timing(expected)
    uninterrupted = json.loads((reference / "summary.json").read_text())
    for key in ("rows", "sensitivity", "figure6"):
        assert summary[key] == uninterrupted[key]
    assert (out / "table_main.md").read_text() == (reference / "table_main.md").read_text()


def _children(pid):
    """The pids of a process's children (Linux), or None where /proc does not say."""
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as fh:
            return [int(child) for child in fh.read().split()]
    except OSError:
        return None


def test_ctrl_c_keeps_the_finished_runs_and_says_how_to_resume(digits_cache, tmp_path, capsys):
    out = tmp_path / "out"
    args = [str(digits_cache), "--heads", "linear", "--losses", "ce", "--preset", "quick", "--epochs", "8"]
    args += [
        "--lr",
        "0.01",
        "0.003",
        "0.001",
        "--batch-size",
        "64",
        "--seeds",
        "5",
        "--no-figure6",
        "--no-logreg",
    ]
    # Two runs at once in worker processes; Ctrl-C goes to the main process, which stops them.
    proc = _start_probe([*args, "--no-progress", "--jobs", "2"], out)
    workers = _children(proc.pid)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert err.strip().splitlines() == [
        f"noisylm probe: interrupted; the finished runs are kept in {partial_dir(out)}/, "
        "run the same command with --resume to continue"
    ]  # one line: no traceback from the workers
    deadline = time.monotonic() + 30
    while workers and any(os.path.exists(f"/proc/{pid}") for pid in workers):
        assert time.monotonic() < deadline, "worker processes outlived the interrupted probe"
        time.sleep(0.05)
    finished = (partial_dir(out) / "results.jsonl").read_text().count("\n")
    assert not out.exists() and finished >= 1
    # The resume may use another --jobs (here 1): the finished runs are reused.
    assert main(["probe", *args, "--no-progress", "--out", str(out), "--resume"]) == 0
    assert f"reused {finished} finished runs" in capsys.readouterr().out
    assert len(_records(out)) == 3 + 5
    # A finished output with nothing to resume: one line that says so.
    assert main(["probe", *args, "--no-progress", "--out", str(out), "--resume"]) == 1
    assert "holds no interrupted probe" in capsys.readouterr().err


# --------------------------------------------------------------------------------------------------
# Paired comparisons: what the losses share seed for seed, the paired runs and their statistics.


def test_losses_share_initial_weights_and_batch_order_seed_for_seed(digits_cache):
    data = load_probe_data(digits_cache)
    device = torch.device("cpu")
    for kind in ("linear", "mlp"):
        recipe = ProbeConfig(**TINY).recipe(kind)
        starts = [
            initial_head(data, RunSpec(kind, loss, 0.01, 64, 0.05, 0.5, seed=4), device) for loss in LOSSES
        ]
        for head in starts[1:]:
            for a, b in zip(head.parameters(), starts[0].parameters(), strict=True):
                assert torch.equal(a, b)
        other_seed = initial_head(data, RunSpec(kind, "ce", 0.01, 64, 0.0, 0.0, seed=5), device)
        assert not torch.equal(next(other_seed.parameters()), next(starts[0].parameters()))
        # With λ = 0 a penalised loss is CE, so its head can only end where CE's does if both saw the
        # same batches in the same order (and δ, drawn from a generator of its own, moved nothing else).
        ce, _ = train_head(data, RunSpec(kind, "ce", 0.01, 64, 0.0, 0.0, seed=4), recipe, device)
        ce_other, _ = train_head(data, RunSpec(kind, "ce", 0.01, 64, 0.0, 0.0, seed=5), recipe, device)
        for loss in LOSSES[1:]:
            head, _ = train_head(data, RunSpec(kind, loss, 0.01, 64, 0.05, 0.0, seed=4), recipe, device)
            for a, b in zip(head.parameters(), ce.parameters(), strict=True):
                torch.testing.assert_close(a, b, rtol=0, atol=1e-4, msg=f"{kind} {loss}")
        assert (
            max((a - b).abs().max() for a, b in zip(ce.parameters(), ce_other.parameters(), strict=True))
            > 0.05
        )


def test_absolute_gamma_reproduces_the_numbers_before_gamma_scales(digits_cache):
    # Recorded with the code before --gamma-scale (seed 3, 3 epochs, lr 0.01, batch 64, γ 0.05, λ 0.5).
    before = {
        ("linear", "lgm"): (0.7345488134086409, 0.9305555555555556, 0.883008356545961),
        ("linear", "l2-output"): (0.8940162717651179, 0.9305555555555556, 0.8913649025069638),
        ("mlp", "lgm"): (0.24019793786073948, 0.9305555555555556, 0.9192200557103064),
        ("mlp", "cosine"): (0.20265499627940253, 0.9305555555555556, 0.9192200557103064),
    }
    data = load_probe_data(digits_cache)
    for (kind, loss), (train_loss, val, test) in before.items():
        spec = RunSpec(kind, loss, 0.01, 64, 0.05, 0.5, seed=3, gamma_scale="absolute")
        head, got_loss = train_head(data, spec, ProbeConfig(**TINY).recipe(kind), torch.device("cpu"))
        assert accuracy(head, *data.splits["val"]) == val and accuracy(head, *data.splits["test"]) == test
        assert got_loss == pytest.approx(train_loss, rel=1e-6, abs=0)


def test_paired_rows_are_the_per_seed_differences_of_the_runs(digits_probe):
    out, summary, config = digits_probe
    records = _records(out)
    rows = {(r["head"], r["loss"]): r for r in summary["rows"]}
    for (head, loss), row in rows.items():
        if loss == "ce":
            assert row["paired"] is None and row["vs_ce"] is None
            continue
        ce = rows[head, "ce"]
        paired = row["paired"]
        assert (paired["lr"], paired["batch_size"]) == (ce["lr"], ce["batch_size"])
        assert paired["same_as_selected"]  # one lr and batch size in this grid
        runs = {
            (r["loss"], r["seed"]): 100 * r["test_acc"]
            for r in records
            if r["phase"] == "final" and r["head"] == head and r["loss"] in (loss, "ce")
        }
        differences = [runs[loss, seed] - runs["ce", seed] for seed in range(config.seeds)]
        assert paired["vs_ce"]["differences"] == pytest.approx(differences, abs=1e-4)
        assert paired["vs_ce"]["mean"] == pytest.approx(statistics.fmean(differences), abs=1e-4)
        assert row["vs_ce"] == paired["vs_ce"]  # the selected runs are the paired ones here
        assert paired["vs_ce"]["p_sign_flip"] is None  # 2 seeds
        low, high = paired["vs_ce"]["ci95"]
        assert low <= paired["vs_ce"]["mean"] <= high
        assert paired["vs_ce"]["within_noise"] == (low <= 0 <= high)
    table = (out / "table_paired.md").read_text()
    assert "| pixels + L_gm − CE |" in table and "| pixels + ‖∇θ ℓ‖₂ − CE |" in table
    assert rows["mlp", "lgm"]["paired"]["vs_ce"]["text"] in table
    csv = (out / "table_paired.csv").read_text().splitlines()
    assert csv[0].startswith("method,digits linear mean,digits linear se,digits linear ci_low")


def _lstsq_paired_config(path, **overrides):
    """A probe in which CE and the penalised losses select different learning rates: every head starts
    from a least-squares head (val ≈ 0.90); at lr 0.03 CE improves on it (0.93) while a heavy penalty
    (γ 0.5, λ 5) degrades it (l2-output 0.70, lgm 0.82), and at lr 1e-12 nothing moves."""
    settings = dict(
        heads=("linear",), losses=("ce", "l2-output", "lgm"), preset="quick", epochs=3, lrs=(0.03, 1e-12),
        batch_sizes=(64,), gammas=(0.5,), lams=(5.0,), seeds=3, figure6=False, device="cpu", progress=False,
        init_head=str(path),
    )  # fmt: skip
    return ProbeConfig(**{**settings, **overrides})


def test_paired_phase_trains_penalised_losses_at_ce_setting_and_resumes(digits_cache, tmp_path):
    data = load_probe_data(digits_cache)
    path = tmp_path / "lstsq.safetensors"
    _least_squares_head(data, path)
    config = _lstsq_paired_config(path)
    reference = tmp_path / "reference"
    summary = probe([digits_cache], reference, config)
    records = _records(reference)
    rows = {r["loss"]: r for r in summary["rows"]}
    assert rows["ce"]["lr"] == 0.03
    for loss in ("l2-output", "lgm"):
        row = rows[loss]
        assert row["lr"] == 1e-12 and row["paired"]["lr"] == 0.03 and not row["paired"]["same_as_selected"]
        paired = [r for r in records if r["phase"] == "paired" and r["loss"] == loss]
        assert [(r["seed"], r["lr"], r["gamma"], r["lam"]) for r in paired] == [
            (s, 0.03, 0.5, 5.0) for s in range(3)
        ]
        ce = [r for r in records if r["phase"] == "final" and r["loss"] == "ce"]
        differences = [100 * (p["test_acc"] - c["test_acc"]) for p, c in zip(paired, ce, strict=True)]
        assert row["paired"]["vs_ce"]["differences"] == pytest.approx(differences, abs=1e-4)
        assert row["paired"]["values"] == pytest.approx([100 * p["test_acc"] for p in paired], abs=1e-4)
        # Where nothing moves (its own lr) the penalty looks harmless; at CE's lr it costs accuracy.
        assert row["paired"]["vs_ce"]["mean"] < -5 < row["vs_ce"]["mean"]

    # An interrupted probe: its progress file holds, in the order its workers finished them, the
    # selection runs, some final runs, two paired runs and the logistic regression's C grid.
    out = tmp_path / "out"
    state = probe_state(config, torch.device("cpu"), [data], hashlib.sha256(path.read_bytes()).hexdigest())
    claim_partial(partial_dir(out), state, resume=False, overwrite=False)
    done = [r for r in records if r["phase"] in ("select", "logreg-select")]
    done += [r for r in records if r["phase"] == "final"][:4] + [
        r for r in records if r["phase"] == "paired"
    ][1:3]
    random.Random(0).shuffle(done)
    (partial_dir(out) / "results.jsonl").write_text("".join(json.dumps(r) + "\n" for r in done))
    resumed = probe([digits_cache], out, config, resume=True)
    assert resumed["reused_runs"] == len(done) and not partial_dir(out).exists()

    def without_timing(rs):
        return [{k: v for k, v in r.items() if k != "seconds"} for r in rs]

    assert without_timing(_records(out)) == without_timing(records)
    for key in ("rows", "logreg"):
        assert resumed[key] == summary[key]
    assert (out / "table_paired.md").read_text() == (reference / "table_paired.md").read_text()


def test_logistic_regression_reference_matches_a_direct_sklearn_fit(digits_probe, digits_cache):
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    out, summary, _ = digits_probe
    split = {
        s: (t["features"].double().numpy(), t["labels"].numpy()) for s, t in _splits(digits_cache).items()
    }
    val = {}
    for C in LOGREG_CS:
        model = make_pipeline(StandardScaler(), LogisticRegression(C=C, max_iter=1000))
        model.fit(*split["train"])
        val[C] = model.score(*split["val"])
    best = max(LOGREG_CS, key=lambda C: (val[C], -C))  # ties: the smaller C
    model = make_pipeline(StandardScaler(), LogisticRegression(C=best, max_iter=1000)).fit(*split["train"])
    (row,) = summary["logreg"]
    assert row["C"] == best and row["selection_val_acc"] == val[best]
    assert row["mean"] == pytest.approx(100 * model.score(*split["test"]), abs=1e-4)
    assert row["mean"] > 93  # a strong reference on digits pixels
    main_md = (out / "table_main.md").read_text()
    assert (
        f"| pixels: logistic regression (C on val) | {row['mean']:.2f} | / | {row['mean']:.2f} | / |"
        in main_md
    )
    csv = (out / "table_main.csv").read_text()
    assert f"pixels: logistic regression (C on val),{row['mean']},,,," in csv


def test_study_preset_has_eight_seeds_and_nlu_recipe():
    study = ProbeConfig(preset="study")
    assert study.seeds == 8 and PRESET_SEEDS["study"] == 8
    assert study.recipe("linear") == ProbeConfig(preset="nlu").recipe("linear")
    assert [ProbeConfig(preset=p).seeds for p in ("nlu", "vision", "quick")] == [5, 5, 5]
    assert ProbeConfig(preset="study", seeds=3).seeds == 3


# --------------------------------------------------------------------------------------------------
# γ relative to the features' scale, and noise added to the features.


def test_gamma_scales_are_searched_and_recorded_per_run(digits_cache, tmp_path):
    config = ProbeConfig(
        heads=("linear",), losses=("ce", "lgm"), gamma_scales=("absolute", "feature-std"), gammas=(0.05, 0.5),
        logreg=False, figure6=False, **TINY,
    )  # fmt: skip
    summary = probe([digits_cache], tmp_path / "out", config)
    select = [r for r in _records(tmp_path / "out") if r["phase"] == "select"]
    assert [(r["loss"], r["gamma_scale"], r["gamma"]) for r in select] == [("ce", "absolute", 0.0)] + [
        ("lgm", scale, gamma) for scale in ("absolute", "feature-std") for gamma in (0.05, 0.5)
    ]
    by_scale = {(r["gamma_scale"], r["gamma"]): r["train_loss"] for r in select if r["loss"] == "lgm"}
    assert by_scale["absolute", 0.5] != by_scale["feature-std", 0.5]  # pixel stds are far from 1
    lgm = next(r for r in summary["rows"] if r["loss"] == "lgm")
    assert lgm["gamma_scale"] in ("absolute", "feature-std")
    assert json.loads((tmp_path / "out" / "probe.json").read_text())["config"]["gamma_scales"] == [
        "absolute",
        "feature-std",
    ]


def test_feature_noise_is_seeded_per_example_and_scaled_by_the_feature_std(digits_cache):
    data = load_probe_data(digits_cache)
    assert with_feature_noise(data, 0.0, seed=0) is data  # σ = 0: the features exactly as they are
    one, again = with_feature_noise(data, 1.0, seed=0), with_feature_noise(data, 1.0, seed=0)
    two, other_seed = with_feature_noise(data, 2.0, seed=0), with_feature_noise(data, 1.0, seed=1)
    std = torch.from_numpy(data.splits["train"][0].double().numpy().std(0, ddof=1))
    for split in ("train", "val", "test"):
        clean, labels = data.splits[split]
        noise = one.splits[split][0] - clean
        assert torch.equal(one.splits[split][0], again.splits[split][0])  # reproducible
        assert torch.equal(one.splits[split][1], labels)
        assert not torch.equal(one.splits[split][0], other_seed.splits[split][0])
        torch.testing.assert_close(
            two.splits[split][0] - clean, 2 * noise, rtol=1e-5, atol=1e-4
        )  # one draw z
        assert torch.all(noise[:, std == 0] == 0)  # constant pixels stay constant
    # Per dimension, the noise of the 1437 training rows has std ≈ 1 × the training split's std.
    noise = (one.splits["train"][0] - data.splits["train"][0]).double()
    ratio = noise[:, std > 0].std(0) / std[std > 0]
    assert abs(float(ratio.mean()) - 1) < 0.01 and float((ratio - 1).abs().max()) < 0.12


def test_feature_noise_probe_at_zero_equals_the_clean_probe_and_plots_accuracy_against_sigma(
    digits_probe, digits_cache, tmp_path
):
    reference, expected, config = digits_probe
    # Linear heads only (the MLP's are the same code path); σ = 0 and 1; runs in worker processes.
    noisy_config = dataclasses.replace(
        config, heads=("linear",), feature_noise=(0.0, 1.0), sensitivity=(), figure6=False, jobs=2
    )
    out = tmp_path / "noise"
    summary = probe([digits_cache], out, noisy_config)
    records = _records(out)

    def clean_runs(rs):
        return [
            {k: v for k, v in r.items() if k != "seconds"}
            for r in rs
            if r["feature_noise"] == 0.0
            and r["head"] == "linear"
            and r["phase"] not in ("sensitivity", "figure6")
        ]

    # σ = 0 is exactly the probe without noise, run for run (trained in worker processes here).
    assert clean_runs(records) == clean_runs(_records(reference))
    linear_rows = [r for r in expected["rows"] if r["head"] == "linear"]
    assert [r for r in summary["rows"] if r["feature_noise"] == 0.0] == linear_rows
    # σ = 1: every loss's runs saw the noise the main process draws (`with_feature_noise`, seed 0),
    # though the workers drew it themselves.
    noisy = with_feature_noise(load_probe_data(digits_cache), 1.0, seed=0)
    for loss in ("ce", "lgm"):
        run = next(
            r for r in records if r["phase"] == "final" and r["feature_noise"] == 1.0 and r["loss"] == loss
        )
        spec = RunSpec(run["head"], loss, run["lr"], run["batch_size"], run["gamma"], run["lam"], run["seed"])
        head, _ = train_head(noisy, spec, config.recipe(run["head"]), torch.device("cpu"))
        got = (accuracy(head, *noisy.splits["val"]), accuracy(head, *noisy.splits["test"]))
        assert got == (run["val_acc"], run["test_acc"]), loss
    clean_ce = next(
        r for r in summary["rows"] if (r["head"], r["loss"], r["feature_noise"]) == ("linear", "ce", 0.0)
    )
    noisy_ce = next(
        r for r in summary["rows"] if (r["head"], r["loss"], r["feature_noise"]) == ("linear", "ce", 1.0)
    )
    assert noisy_ce["mean"] < clean_ce["mean"] - 3  # noise of one feature std costs accuracy
    curves = {(c["head"], c["loss"]): c for c in summary["feature_noise"]}
    assert set(curves) == {("linear", loss) for loss in ("ce", "lgm", "norm", "logreg")}
    curve = curves["linear", "ce"]
    assert curve["sigma"] == [0.0, 1.0] and curve["mean"] == [clean_ce["mean"], noisy_ce["mean"]]
    assert curve["ci95"][1] == noisy_ce["ci95"]
    assert (out / "feature_noise.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    table = (out / "table_feature_noise.md").read_text()
    assert "| backbone | dataset | head | loss | σ=0 | σ=1 |" in table
    assert f"| pixels | digits | Linear | ce | {clean_ce['mean']:.2f} [" in table
    assert "pixels,digits,linear,ce,1.0," in (out / "table_feature_noise.csv").read_text()
    main_md = (out / "table_main.md").read_text()
    assert "| pixels σ=0 |" in main_md and "| pixels σ=1 + L_gm |" in main_md


def test_cli_gamma_scale_feature_noise_and_paired_lines(digits_cache, tmp_path, capsys):
    out = tmp_path / "cli"
    args = _quick_cli_args(digits_cache, out, seeds=6)
    good = [*args, "--gamma-scale", "feature-std", "--feature-noise", "0,0.5"]
    assert main(good) == 0
    printed = capsys.readouterr().out
    assert "pixels / digits / σ=0.5 / linear / lgm: test accuracy" in printed
    assert "    paired − ce at ce's lr 0.01, batch 64 (γ=0.01 feature-std, λ=0.15): " in printed
    assert ", p = " in printed  # 6 seeds: the sign-flip p-value is reported
    assert "pixels / digits / σ=0 / linear / logistic regression (C on val), C=" in printed
    assert "feature_noise.png" in printed and (out / "feature_noise.png").exists()
    records = _records(out)
    assert {r["gamma_scale"] for r in records if r["loss"] == "lgm"} == {"feature-std"}
    assert {r["feature_noise"] for r in records} == {0.0, 0.5}
    cases = [
        (["--feature-noise", "0,abc"], 2, "σ values must be numbers such as 0,0.5,1, got 0,abc"),
        (["--feature-noise", "-1"], 2, "feature noise σ values must be finite numbers >= 0"),
        (["--feature-noise", "0.5,0.5"], 2, "feature noise σ values repeated"),
        (
            ["--gamma-scale", "relative"],
            2,
            "unknown gamma scale 'relative'; choose from absolute, feature-std",
        ),
    ]
    for extra, code, message in cases:
        assert main([*args, "--overwrite", *extra]) == code, extra
        err = capsys.readouterr().err
        assert message in err and len(err.strip().splitlines()) == 1, err
