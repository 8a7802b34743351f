"""`noisylm finetune` (Table 4): tasks and metrics, the protocol on GLUE-format fixtures with the real
MiniLM, resume, bad input, and a fine-tune of MiniLM that beats the frozen-feature linear probe."""

from __future__ import annotations

import csv
import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from noisylm.cli import main
from noisylm.errors import NoisyLMError
from noisylm.probing.finetuning import FinetuneConfig, finetune, load_task, task_metrics
from noisylm.probing.finetuning.protocol import _state, print_notes
from noisylm.probing.finetuning.trainer import RunSettings, tokenize, train_run
from noisylm.probing.protocol import partial_dir

GLUE = Path(__file__).parent / "fixtures" / "glue"

pytestmark = pytest.mark.usefixtures("torch_single_thread_module")


@pytest.fixture(scope="module")
def tiny_bert(tmp_path_factory, minilm_backbone) -> str:
    """A randomly initialised 2-layer BERT of width 32 with MiniLM's tokenizer, saved as a Hugging Face
    folder: the code path of the glue-bert-large preset (``hf:PATH``, first-token pooling) in seconds."""
    from transformers import BertConfig, BertModel

    folder = tmp_path_factory.mktemp("tiny-bert")
    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=minilm_backbone.tokenizer.vocab_size, hidden_size=32, num_hidden_layers=2,
        num_attention_heads=2, intermediate_size=64, max_position_embeddings=64,
    )  # fmt: skip
    BertModel(config, add_pooling_layer=False).save_pretrained(folder)
    minilm_backbone.tokenizer.save_pretrained(folder)
    return f"hf:{folder}"


def read_glue(path: Path, header: bool) -> tuple[list[str], list[list[str]]]:
    """GLUE's TSV, read independently with the csv module (no quoting, as GLUE writes it)."""
    with open(path, encoding="utf-8-sig", newline="") as fh:
        rows = list(csv.reader(fh, delimiter="\t", quoting=csv.QUOTE_NONE))
    return (rows[0], rows[1:]) if header else ([], rows)


# --------------------------------------------------------------------------------------------------
# Tasks and metrics


@pytest.mark.parametrize(
    "folder, kind, fields, metric, text_cols, label_col, header",
    [
        ("RTE", "classification", ("sentence1", "sentence2"), "accuracy", (1, 2), 3, True),
        ("MRPC", "classification", ("sentence1", "sentence2"), "f1", (3, 4), 0, True),
        ("CoLA", "classification", ("sentence",), "mcc", (3,), 1, False),
        ("STS-B", "regression", ("sentence1", "sentence2"), "pearson", (7, 8), 9, True),
    ],
)
def test_glue_layouts_load_by_folder_name(folder, kind, fields, metric, text_cols, label_col, header):
    task = load_task(GLUE / folder)
    assert (task.name, task.kind, task.fields, task.metric) == (folder, kind, fields, metric)
    _, train_rows = read_glue(GLUE / folder / "train.tsv", header)
    _, dev_rows = read_glue(GLUE / folder / "dev.tsv", header)
    # train.tsv = train + selection (10%, carved), dev.tsv = dev; test.tsv (no labels) is not read.
    assert len(task.splits["train"]) + len(task.splits["selection"]) == len(train_rows) == 24
    assert len(task.splits["selection"]) == 2 and "dev" not in task.notes
    texts = {tuple(r[c] for c in text_cols): r[label_col] for r in dev_rows}
    for record, label in zip(task.splits["dev"].records, task.splits["dev"].labels, strict=True):
        raw = texts[tuple(record[f] for f in fields)]
        if kind == "regression":
            assert label == pytest.approx(float(raw))
        else:
            assert task.class_names[label] == raw
    if folder == "MRPC":  # GLUE's bare quotes stay in the text; the BOM before the header is dropped
        assert '" witnesses "' in task.splits["dev"].records[0]["sentence1"]
    if folder == "RTE":
        assert task.class_names == ["entailment", "not_entailment"]


def test_metrics_equal_their_formulas():
    rng = np.random.default_rng(0)
    labels, predictions = rng.integers(0, 2, 200), rng.integers(0, 2, 200)
    tp = np.sum((predictions == 1) & (labels == 1))
    tn = np.sum((predictions == 0) & (labels == 0))
    fp = np.sum((predictions == 1) & (labels == 0))
    fn = np.sum((predictions == 0) & (labels == 1))
    got = task_metrics("classification", predictions, labels)
    assert got["accuracy"] == pytest.approx((tp + tn) / 200)
    assert got["f1"] == pytest.approx(2 * tp / (2 * tp + fp + fn))
    mcc = (tp * tn - fp * fn) / math.sqrt((tp + fp) * (tp + fn) * (tn + fp) * (tn + fn))
    assert got["mcc"] == pytest.approx(mcc)
    scores, truth = rng.normal(size=50), rng.normal(size=50)
    got = task_metrics("regression", scores, truth)
    assert got["pearson"] == pytest.approx(np.corrcoef(scores, truth)[0, 1])
    ranks = lambda x: np.argsort(np.argsort(x))  # noqa: E731 - no ties in continuous draws
    assert got["spearman"] == pytest.approx(np.corrcoef(ranks(scores), ranks(truth))[0, 1])
    assert task_metrics("regression", np.ones(50), truth)["pearson"] == 0.0  # constant: no correlation


def test_a_task_without_dev_gets_one_carved_out_and_says_so(tmp_path, capsys):
    path = tmp_path / "reviews.csv"
    rows = [f"{i % 2},{'good' if i % 2 else 'bad'} film number {i}" for i in range(40)]
    path.write_text("label,text\n" + "\n".join(rows) + "\n")
    task = load_task(path)
    assert len(task.splits["dev"]) == 8 and len(task.splits["train"]) + len(task.splits["selection"]) == 32
    assert "carved 20% of train out as dev" in task.notes["dev"]
    print_notes({"tasks": [task.describe()]})
    assert (
        "note: reviews: dev: the data has no dev split: carved 20% of train out as dev"
        in capsys.readouterr().out
    )
    # A labelled test split (WordNet's) is the evaluation split instead, and that is said too.
    wordnet = load_task("wordnet-pairs", max_train=40, max_dev=20)
    assert (
        wordnet.notes["dev"] == "the data has no dev split; its labelled test split is the evaluation split"
    )


# --------------------------------------------------------------------------------------------------
# Bad input: one line, non-zero, nothing written


def _bad_rte(tmp_path: Path) -> Path:
    folder = tmp_path / "RTE"
    shutil.copytree(GLUE / "RTE", folder)
    lines = (folder / "dev.tsv").read_text().splitlines()
    lines[3] = lines[3].rsplit("\t", 1)[0] + "\tmaybe"
    (folder / "dev.tsv").write_text("\n".join(lines) + "\n")
    return folder


def _bad_stsb(tmp_path: Path) -> Path:
    folder = tmp_path / "STS-B"
    shutil.copytree(GLUE / "STS-B", folder)
    lines = (folder / "train.tsv").read_text().splitlines()
    lines[5] = lines[5].rsplit("\t", 1)[0] + "\t7.5"
    (folder / "train.tsv").write_text("\n".join(lines) + "\n")
    return folder


def _unseen_class(tmp_path: Path) -> Path:
    folder = tmp_path / "mine"
    folder.mkdir()
    (folder / "train.csv").write_text("label,text\n" + "".join(f"{i % 2},text {i}\n" for i in range(20)))
    (folder / "dev.csv").write_text("label,text\n0,a\n1,b\n2,c\n")
    return folder


@pytest.mark.parametrize(
    "make, extra, code, message",
    [
        (
            _bad_rte,
            [],
            1,
            "dev.tsv:4: label 'maybe' is not one of the RTE classes (entailment, not_entailment)",
        ),
        (_bad_stsb, [], 1, "train.tsv:6: score '7.5' is not a number in [0, 5] as STS-B scores are"),
        (_unseen_class, [], 1, "the dev split has label '2', which no training example has"),
        (None, ["--regularisers", "l2-sp", "dropout"], 2, "unknown regulariser 'dropout'; choose from"),
        (None, ["--backbone", "hf:{tmp}/no-such-model"], 1, "no-such-model not found; check the path"),
    ],
    ids=["rte-label", "stsb-score", "unseen-class", "unknown-regulariser", "missing-backbone"],
)
def test_cli_bad_input_one_line_nothing_written(tmp_path, capsys, make, extra, code, message):
    dataset = str(make(tmp_path)) if make else str(GLUE / "CoLA")
    out = tmp_path / "out"
    extra = [e.replace("{tmp}", str(tmp_path)) for e in extra]
    assert main(["finetune", "--dataset", dataset, "--out", str(out), "--no-progress", *extra]) == code
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0], err
    assert not out.exists() and not partial_dir(out).exists()


# --------------------------------------------------------------------------------------------------
# The protocol on GLUE-format fixtures (the glue-bert-large code path with MiniLM and a few steps)


def _records(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]


def test_glue_preset_code_path_selection_seeds_paired_differences(tiny_bert, tmp_path):
    config = FinetuneConfig(
        preset="glue-bert-large", regularisers=("l2-sp",), lrs=(1e-4, 1e-3), batch_sizes=(8,),
        l2sp_alphas=(0.01, 0.1), lgm_lams=(0.05, 0.5), gamma=0.5, seeds=3, epochs=2, max_length=32,
        progress=False,
    )  # fmt: skip
    out = tmp_path / "table4"
    summary = finetune(tiny_bert, [GLUE / "MRPC", GLUE / "STS-B"], out, config)
    assert summary["encoder"]["pooling"] == "cls"  # a plain Hugging Face encoder: BERT's first token
    records = _records(out)
    # Per task: 2 lr × 2 α, then L_gm's 2 λ at the selected setting, then 2 rows × 3 seeds.
    assert [r["phase"] for r in records] == ["select"] * 8 + ["select-lgm"] * 4 + ["final"] * 12
    rows = {(r["task"], r["row"]): r for r in summary["rows"]}
    from scipy import stats

    for task, metric in (("MRPC", "f1"), ("STS-B", "pearson")):
        mine = [r for r in records if r["task"] == task]
        select = [r for r in mine if r["phase"] == "select"]
        # Selection scores settings on the selection split and keeps the best (the first on ties) ...
        assert all(r["split"] == "selection" for r in select)
        best = max(select, key=lambda r: (r["metrics"][metric], -select.index(r)))
        base, plus = rows[task, "L2-SP"], rows[task, "L2-SP + L_gm"]
        assert base["metric"] == plus["metric"] == metric
        assert (base["lr"], base["weight"]) == (plus["lr"], plus["weight"]) == (best["lr"], best["weight"])
        assert base["selection_score"] == pytest.approx(100 * best["metrics"][metric], abs=1e-3)
        lgm_select = [r for r in mine if r["phase"] == "select-lgm"]
        assert {(r["lr"], r["weight"]) for r in lgm_select} == {(best["lr"], best["weight"])}
        best_lam = max(lgm_select, key=lambda r: (r["metrics"][metric], -lgm_select.index(r)))["lgm_lam"]
        assert plus["lgm_lam"] == best_lam and base["lgm_lam"] is None
        # ... and the final runs are scored on dev, seed by seed.
        finals = [r for r in mine if r["phase"] == "final"]
        assert all(r["split"] == "dev" for r in finals) and [r["seed"] for r in finals] == [0, 1, 2] * 2
        base_values = [100 * r["metrics"][metric] for r in finals if not r["lgm"]]
        plus_values = [100 * r["metrics"][metric] for r in finals if r["lgm"]]
        assert base["values"] == pytest.approx(base_values, abs=1e-3)
        assert base["mean"] == pytest.approx(np.mean(base_values), abs=1e-3)
        assert base["std"] == pytest.approx(np.std(base_values, ddof=1), abs=1e-3)
        # The paired difference and its t interval, recomputed with scipy.
        diffs = np.subtract(plus_values, base_values)
        paired = plus["paired_difference"]
        assert paired["mean"] == pytest.approx(diffs.mean(), abs=1e-3)
        if np.std(diffs) > 0:
            low, high = stats.t.interval(0.95, len(diffs) - 1, loc=diffs.mean(), scale=stats.sem(diffs))
            assert (paired["low"], paired["high"]) == pytest.approx((low, high), abs=1e-3)
        # The whole backbone trained, with L2-SP's penalty and (in + L_gm rows) L_gm.
        assert all(r["encoder_distance"] > 0 and r["regulariser_penalty"] > 0 for r in finals)
        assert all((r["lgm_penalty"] > 0) == r["lgm"] == (r["lgm_lam"] is not None) for r in finals)
    table = (out / "table4.md").read_text()
    assert "| MRPC (F1) | STS-B (Pearson) |" in table.splitlines()[2]
    assert table.count("| L2-SP + L_gm |") == 1 and "(Δ " in table and "95% CI" in table
    with open(out / "table4.csv") as fh:
        lines = list(csv.DictReader(fh))
    assert {(r["task"], r["row"]) for r in lines} == set(rows)
    stsb = next(r for r in lines if r["task"] == "STS-B" and r["row"] == "L2-SP")
    assert float(stsb["spearman_mean"]) == pytest.approx(
        rows["STS-B", "L2-SP"]["metrics"]["spearman"]["mean"]
    )
    meta = json.loads((out / "finetune.json").read_text())
    assert meta["config"]["preset"] == "glue-bert-large" and "versions" in meta["provenance"]
    assert [t["name"] for t in meta["tasks"]] == ["MRPC", "STS-B"]


@pytest.mark.parametrize("dataset", ["CoLA", "STS-B"])
def test_every_regulariser_with_and_without_lgm_trains(tiny_bert, tmp_path, dataset):
    config = FinetuneConfig(seeds=2, epochs=2, batch_sizes=(8,), lrs=(1e-3,), max_length=32,
                            smart_epsilon=1e-2, smart_sigma=1e-3, progress=False)  # fmt: skip
    summary = finetune(tiny_bert, GLUE / dataset, tmp_path / "out", config)
    finals = _records(tmp_path / "out")
    assert len(finals) == 4 * 2 * 2 and {r["phase"] for r in finals} == {"final"}
    for r in finals:
        assert math.isfinite(r["train_loss"]) and r["encoder_distance"] > 0
        assert (r["regulariser_penalty"] > 0) == (r["regulariser"] != "none"), r
        assert (r["lgm_penalty"] > 0) == r["lgm"] == (r["lgm_lam"] is not None), r
    # Paired: a row and its + L_gm row start from the same head and see the same batches.
    by_key = {(r["regulariser"], r["lgm_lam"] is not None, r["seed"]): r for r in finals}
    assert by_key["none", False, 0]["steps"] == by_key["none", True, 0]["steps"]
    table = (tmp_path / "out" / "table4.md").read_text()
    for label in ("none", "L2-SP", "SMART", "LNSR"):
        assert f"| {label} |" in table and f"| {label} + L_gm |" in table
    assert summary["rows"][0]["metric"] == ("mcc" if dataset == "CoLA" else "pearson")


def test_interrupted_finetune_resumes_without_retraining(tiny_bert, tmp_path):
    config = FinetuneConfig(regularisers=("none", "lnsr"), seeds=2, epochs=1, batch_sizes=(8,),
                            lgm_lams=(0.1, 1.0), max_length=24, progress=False)  # fmt: skip
    reference = tmp_path / "reference"
    finetune(tiny_bert, GLUE / "CoLA", reference, config)
    done = _records(reference)[:3]

    # What a killed call leaves: its state and its finished runs (and a torn last line).
    from noisylm.probing.finetuning.model import load_encoder
    from noisylm.probing.protocol.resume import claim_partial

    out = tmp_path / "out"
    task = load_task(GLUE / "CoLA", max_train=config.max_train, max_dev=config.max_dev)
    state = _state(config, torch.device("cpu"), load_encoder(tiny_bert, max_length=24), [task])
    claim_partial(partial_dir(out), state, resume=False, overwrite=False)
    with open(partial_dir(out) / "results.jsonl", "a") as fh:
        fh.write("".join(json.dumps(r) + "\n" for r in done) + '{"phase": "final", "ta')

    other = FinetuneConfig(**{**config.__dict__, "seeds": 3})
    with pytest.raises(NoisyLMError, match=r"different settings \(seeds: 2 -> 3\)"):
        finetune(tiny_bert, GLUE / "CoLA", out, other, resume=True)
    with pytest.raises(NoisyLMError, match="holds an interrupted probe; pass --resume"):
        finetune(tiny_bert, GLUE / "CoLA", out, config)
    summary = finetune(tiny_bert, GLUE / "CoLA", out, config, resume=True)
    assert summary["reused_runs"] == 3 and not partial_dir(out).exists()
    records, expected = _records(out), _records(reference)
    assert records[:3] == done

    def without_timing(rs):
        return [{k: v for k, v in r.items() if k != "seconds"} for r in rs]

    assert without_timing(records) == without_timing(expected)  # seeded runs: the same numbers
    assert (out / "table4.md").read_text() == (reference / "table4.md").read_text()


# --------------------------------------------------------------------------------------------------
# Fine-tuning moves the backbone and beats the frozen-feature linear probe


def test_finetuned_minilm_beats_the_frozen_feature_linear_probe(minilm_backbone):
    from sklearn.linear_model import LogisticRegression

    from noisylm.probing.finetuning.model import load_encoder

    task = load_task("wordnet-pairs", max_train=FT_TRAIN, max_dev=FT_DEV)
    encoder = load_encoder(minilm_backbone, max_length=24)
    train, dev = tokenize(encoder, task, task.splits["train"]), tokenize(encoder, task, task.splits["dev"])
    pristine = [p.detach().clone() for p in encoder.model.parameters()]

    # The frozen-feature linear probe: MiniLM's sentence embeddings (as `noisylm extract` makes them)
    # of "lemma: gloss", and a logistic regression fitted to convergence, its C chosen on dev itself
    # (the most favourable choice for the probe).
    def embed(split):
        texts = [f"{r['word']}: {r['text']}" for r in split.records]
        with torch.inference_mode():
            return torch.cat(
                [minilm_backbone.encode(texts[i : i + 64]) for i in range(0, len(texts), 64)]
            ).numpy()

    x_train, x_dev = embed(task.splits["train"]), embed(task.splits["dev"])
    probe = max(
        LogisticRegression(C=c, max_iter=5000).fit(x_train, train.labels).score(x_dev, dev.labels)
        for c in (0.1, 1, 10, 100)
    )
    settings = RunSettings(regulariser="none", weight=None, lr=FT_LR, batch_size=16, epochs=FT_EPOCHS, seed=0,
                           head_lr=2e-3)  # fmt: skip
    record = train_run(encoder, task, train, dev, settings, torch.device("cpu"))
    assert record["encoder_distance"] > 0.1  # the backbone's weights moved ...
    for before, after in zip(pristine, encoder.model.parameters(), strict=True):
        assert torch.equal(before, after)  # ... in a copy: the pristine encoder is untouched
    assert record["metrics"]["accuracy"] > probe + 0.05, (record["metrics"], probe)


FT_TRAIN, FT_DEV, FT_LR, FT_EPOCHS = 200, 200, 2e-4, 3
