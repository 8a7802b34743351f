"""The LGM study (`noisylm lgm-study`) end to end on real data, at tiny sizes: scikit-learn's digits as
raw pixels (the cell that needs no optional package) and a demo cell whose run is missing.

The findings are checked against the per-seed accuracies in the probes' results.jsonl, with the paired
difference and its t-interval recomputed by hand (a t table, not scipy), and the searched (γ, λ)
against a brute-force argmax over the selection runs."""

from __future__ import annotations

import csv
import io
import json
import math
import shutil

import pytest
import torch

from noisylm.cli import main
from noisylm.errors import NoisyLMError, UsageError
from noisylm.probing import STUDY_CELLS, StudyConfig, lgm_study
from noisylm.probing.protocol import load_probe_data, partial_dir
from noisylm.probing.protocol.resume import claim_partial, probe_state

pytestmark = pytest.mark.usefixtures("torch_single_thread_module")

# t_{0.975, df}, from a printed t table.
T_975 = {1: 12.7062, 2: 4.3027, 3: 3.1824, 4: 2.7764, 5: 2.5706, 6: 2.4469, 7: 2.3646}

TINY = dict(
    cells=("pixels-digits", "demo-plays"),
    max_train=300,
    max_test=150,
    seeds=3,
    epochs=2,
    lrs=(0.01,),
    batch_sizes=(64,),
    gammas=(0.01, 1.0),
    lams=(0.1, 1.0),
    noise_cell="pixels-digits",
    noise_sigmas=(0.0, 1.0),
    noise_heads=("linear",),
    device="cpu",
    progress=False,
)


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    out = tmp_path_factory.mktemp("study") / "out"
    config = StudyConfig(**TINY, demo_run=str(out.parent / "no-demo" / "runs" / "clean"))
    return out, lgm_study(out, config, log=False), config


def _records(path):
    return [json.loads(line) for line in (path / "results.jsonl").read_text().splitlines()]


def _brute_interval(differences):
    n = len(differences)
    mean = sum(differences) / n
    sd = math.sqrt(sum((d - mean) ** 2 for d in differences) / (n - 1))
    half = T_975[n - 1] * sd / math.sqrt(n)
    return mean, (mean - half, mean + half)


def test_findings_rows_are_the_probes_per_seed_numbers(study):
    out, result, config = study
    assert [(r["cell"], r["head"]) for r in result["rows"]] == [
        ("pixels-digits", "linear"),
        ("pixels-digits", "mlp"),
    ]
    for row in result["rows"]:
        head = row["head"]
        paper = _records(out / "probes" / "pixels-digits" / "paper")
        searched = _records(out / "probes" / "pixels-digits" / "searched")
        ce = sorted((r for r in paper if r["phase"] == "final" and r["head"] == head and r["loss"] == "ce"),
                    key=lambda r: r["seed"])  # fmt: skip
        ce_acc = [100 * r["test_acc"] for r in ce]
        assert len(ce_acc) == config.seeds
        assert row["ce_mean"] == pytest.approx(sum(ce_acc) / len(ce_acc), abs=1e-3)
        ce_mean, ce_ci = _brute_interval(ce_acc)
        assert (row["ce_ci_low"], row["ce_ci_high"]) == pytest.approx(ce_ci, abs=2e-3)
        sd = math.sqrt(sum((a - ce_mean) ** 2 for a in ce_acc) / (len(ce_acc) - 1))
        assert row["ce_std"] == pytest.approx(sd, abs=1e-3)
        # CE trained again in the searched probe with the same seeds: the same numbers.
        ce_again = [100 * r["test_acc"] for r in sorted(
            (r for r in searched if r["phase"] == "final" and r["head"] == head and r["loss"] == "ce"),
            key=lambda r: r["seed"])]  # fmt: skip
        assert ce_again == ce_acc and row["ce_identical"] is True

        for name, records in (("paper", paper), ("searched", searched)):
            # L_gm at CE's lr and batch size: the "paired" runs, or its final runs when those are there.
            lgm = [r for r in records if r["head"] == head and r["loss"] == "lgm"]
            at_ce = [r for r in lgm if r["phase"] == "paired"] or [r for r in lgm if r["phase"] == "final"]
            assert {(r["lr"], r["batch_size"]) for r in at_ce} == {(ce[0]["lr"], ce[0]["batch_size"])}
            at_ce.sort(key=lambda r: r["seed"])
            assert [r["seed"] for r in at_ce] == [r["seed"] for r in ce]
            differences = [100 * (a["test_acc"] - c["test_acc"]) for a, c in zip(at_ce, ce, strict=True)]
            mean, (low, high) = _brute_interval(differences)
            assert row[f"{name}_diff_mean"] == pytest.approx(mean, abs=1e-3)
            assert (row[f"{name}_diff_ci_low"], row[f"{name}_diff_ci_high"]) == pytest.approx(
                (low, high), abs=2e-3
            )
            assert row[f"{name}_mean"] == pytest.approx(
                sum(100 * r["test_acc"] for r in at_ce) / len(at_ce), abs=1e-3
            )
            assert row[f"{name}_within_noise"] == (low <= 0 <= high)
            expected = (
                "no change" if all(d == 0 for d in differences)
                else "helps beyond" if low > 0 else "hurts beyond" if high < 0 else "within seed noise"
            )  # fmt: skip
            assert row[f"{name}_verdict"].startswith(expected)
            assert (row[f"{name}_gamma"], row[f"{name}_lam"]) == (at_ce[0]["gamma"], at_ce[0]["lam"])
        assert (row["paper_gamma"], row["paper_lam"], row["paper_gamma_scale"]) == (0.01, 0.15, "absolute")
        # The searched (γ, λ): the best validation accuracy among the selection runs at CE's lr and
        # batch size (ties: the earlier grid point, γ before λ, both ascending).
        select = [r for r in searched if r["phase"] == "select" and r["head"] == head and r["loss"] == "lgm"]
        assert len(select) == len(config.gammas) * len(config.lams)
        best = max(
            select,
            key=lambda r: (r["val_acc"], -config.gammas.index(r["gamma"]) * 10 - config.lams.index(r["lam"])),
        )
        assert (row["searched_gamma"], row["searched_lam"], row["searched_gamma_scale"]) == (
            best["gamma"], best["lam"], "feature-std")  # fmt: skip
        # The logistic regression: the paper probe's single deterministic fit, on linear rows only.
        logreg = [r for r in paper if r["phase"] == "logreg"]
        assert row["logreg_mean"] == (
            pytest.approx(100 * logreg[0]["test_acc"], abs=1e-3) if head == "linear" else None
        )
        assert not [r for r in searched if r["phase"].startswith("logreg")]  # not refitted


def test_findings_files(study):
    out, result, _ = study
    table = list(csv.DictReader(io.StringIO((out / "findings.csv").read_text())))
    assert len(table) == len(result["rows"])
    for line, row in zip(table, result["rows"], strict=True):
        assert float(line["searched_diff_mean"]) == row["searched_diff_mean"]
        assert line["verdict"] == row["verdict"]
    markdown = (out / "findings.md").read_text()
    for row in result["rows"]:
        assert row["paper_diff_text"] in markdown and row["verdict"] in markdown
    assert json.loads((out / "study.json").read_text()) == json.loads(json.dumps(result))
    assert result["provenance"]["config"]["seeds"] == 3
    assert {s["stage"] for s in result["stages"]} == {
        "extract",
        "probe paper",
        "probe searched",
        "probe feature-noise",
    }
    # The feature-noise curve: copied from its probe, with the paired differences at each σ.
    noise_probe = out / "probes" / "feature-noise"
    assert (out / "feature_noise.png").read_bytes() == (noise_probe / "feature_noise.png").read_bytes()
    assert (out / "feature_noise.csv").read_text() == (noise_probe / "table_feature_noise.csv").read_text()
    summary = json.loads((noise_probe / "summary.json").read_text())
    assert summary["feature_noise"] == result["feature_noise"]["curves"]
    losses = {c["loss"] for c in summary["feature_noise"]}
    assert losses == {"ce", "l2-output", "lgm", "logreg"}
    assert {(p["sigma"], p["loss"]) for p in result["feature_noise"]["paired"]} == {
        (s, loss) for s in (0.0, 1.0) for loss in ("l2-output", "lgm")
    }
    assert "| 1 | linear | CE + L_gm |" in (out / "feature_noise.md").read_text()


def test_missing_demo_run_is_skipped_with_its_reason(study):
    out, result, _ = study
    [skipped] = result["skipped"]
    assert skipped["cell"] == "demo-plays"
    assert (
        "not found" in skipped["reason"]
        and "make demo" in skipped["reason"]
        and "--demo-run" in skipped["reason"]
    )
    assert not (out / "features" / "demo-plays").exists()
    assert f"Skipped demo-plays: {skipped['reason']}" in (out / "findings.md").read_text()


def test_skipped_cell_is_printed(tmp_path, capsys):
    # Only skipped cells: one line per cell on stderr, then one error line; nothing written.
    out = tmp_path / "out"
    with pytest.raises(NoisyLMError, match="every cell of the study was skipped"):
        lgm_study(out, cells=("demo-plays",), demo_run=str(tmp_path / "none"), noise_cell="none")
    assert "[lgm-study] skipping demo-plays: demo run" in capsys.readouterr().err
    assert not out.exists()


def test_run_again_reuses_refuses_other_settings_and_resumes(study, tmp_path):
    out, result, config = study
    stamp = (out / "study.json").stat().st_mtime_ns
    again = lgm_study(out, config, log=False)
    assert all(stage["reused"] for stage in again["stages"]) and again["rows"] == result["rows"]

    # Other settings: refused before anything is written, naming what differs and the fix.
    stamp = (out / "study.json").stat().st_mtime_ns
    with pytest.raises(NoisyLMError, match=r"seeds: 3 -> 4.*pass --overwrite"):
        lgm_study(out, StudyConfig(**{**TINY, "seeds": 4}, demo_run=config.demo_run), log=False)
    with pytest.raises(
        NoisyLMError, match=r"features/pixels-digits was made with other settings \(max_train"
    ):
        lgm_study(out, StudyConfig(**{**TINY, "max_train": 200}, demo_run=config.demo_run), log=False)
    assert (out / "study.json").stat().st_mtime_ns == stamp

    # An interrupted searched probe (some runs finished) resumes: those runs are reused, not retrained.
    searched = out / "probes" / "pixels-digits" / "searched"
    records = _records(searched)
    shutil.rmtree(searched)
    data = load_probe_data(out / "features" / "pixels-digits")
    probe_config = config.probe_configs()["searched"]
    claim_partial(partial_dir(searched), probe_state(probe_config, torch.device("cpu"), [data], None),
                  resume=False, overwrite=False)  # fmt: skip
    done = [r for r in records if r["phase"] == "select"][:3]
    (partial_dir(searched) / "results.jsonl").write_text("".join(json.dumps(r) + "\n" for r in done))
    resumed = lgm_study(out, config, log=False)
    stages = {s["stage"]: s for s in resumed["stages"]}
    assert not stages["probe searched"]["reused"] and stages["probe paper"]["reused"]
    assert json.loads((searched / "summary.json").read_text())["reused_runs"] == 3
    assert resumed["rows"] == result["rows"] and not partial_dir(searched).exists()


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"cells": ("pixels-digits", "imagenet")}, "unknown cell 'imagenet'; choose from minilm-wordnet"),
        ({"cells": ()}, "no cells given"),
        ({"gammas": ()}, "the searched γ grid is empty; give at least one value"),
        ({"lams": (0.1, -1.0)}, "the searched λ grid must be finite numbers >= 0"),
        ({"noise_sigmas": (0.0,)}, "the feature-noise curve needs at least two σ values"),
        ({"noise_cell": "wordnet"}, "unknown feature-noise cell 'wordnet'; choose from minilm-wordnet"),
        ({"seeds": 1}, "seeds must be >= 2"),
        ({"heads": ("conv",)}, "unknown head 'conv'"),
        ({"gamma_scales": ("relative",)}, "unknown gamma scale 'relative'"),
    ],
)
def test_bad_input_is_one_error_and_nothing_is_written(tmp_path, change, message):
    out = tmp_path / "out"
    with pytest.raises(UsageError, match=message):
        lgm_study(out, **{**TINY, **change})
    assert not out.exists()


def test_cli_bad_input_and_help(tmp_path, capsys):
    out = tmp_path / "out"
    assert main(["lgm-study", "--out", str(out), "--cells", "pixels", "--no-progress"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"noisylm lgm-study: error: unknown cell 'pixels'; choose from {', '.join(STUDY_CELLS)}"]
    assert not out.exists()
    with pytest.raises(SystemExit) as exit_info:
        main(["lgm-study", "--help"])
    assert exit_info.value.code == 0
    text = capsys.readouterr().out
    assert "findings.md" in text and "--demo-run" in text and "searched on validation" in text
