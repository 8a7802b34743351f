"""Tasks for fine-tuning: text (or text pairs) with class labels or scores, and their metrics.

A `FinetuneTask` has three splits: ``train`` (what the runs train on), ``selection`` (carved from the
training data, stratified and seeded: the hyper-parameter search scores settings on it) and ``dev``
(the labelled evaluation split the tables report, as GLUE's dev split in the paper's Table 4: GLUE's
test labels are not public).

Sources (`load_task`):
  GLUE folders, recognised by their name (``--dataset path/to/MRPC``) and read in GLUE's own TSV
  layouts (train.tsv, dev.tsv; test.tsv, unlabelled, is ignored):
    RTE    index, sentence1, sentence2, label (entailment | not_entailment)        metric: accuracy
    MRPC   Quality (0 | 1), #1 ID, #2 ID, #1 String, #2 String                     metric: F1 of class 1
    CoLA   no header: source, label (0 | 1), original judgement, sentence           metric: Matthews corr.
    STS-B  index, genre, filename, year, old_index, source1, source2, sentence1,
           sentence2, score (0..5; regression)                                      metric: Pearson
  every format `noisylm extract` reads (`noisylm.probing.datasets`): CSV / TSV / JSONL files or folders
    with train/dev/test files, `save_to_disk` folders; one text field or a pair (``text_fields``);
    classification (accuracy), or regression on numeric labels with ``task_type="regression"`` (Pearson);
  bundled: ``wordnet`` (noun glosses -> 26 lexicographer categories, the input is the pair
    (lemma, gloss)) and ``wordnet-pairs`` (does this gloss define this lemma? yes | no, built from the
    WordNet glosses: every lemma once with its own gloss and once with the gloss of another noun of
    the same lexicographer category).

The evaluation split is the data's dev/validation split; without one, its labelled test split; without
either, 20% of train is carved out as dev (stratified, seeded) and `notes["dev"]` says so.

Metrics come from scikit-learn and scipy: accuracy, F1 (binary: of class 1; else macro), Matthews
correlation for classification; Pearson and Spearman correlation for regression. Constant predictions
have no correlation defined; they count as 0 (no linear association), as scikit-learn does for MCC.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

from noisylm.errors import NoisyLMError, UsageError
from noisylm.probing.datasets import BUILTIN_DATASETS, LabelledDataset, load_wordnet, stratified_split

TaskKind = Literal["classification", "regression"]
BUNDLED_TASKS = ("wordnet", "wordnet-pairs")
TASK_TYPES = ("auto", "classification", "regression")
DEV_FRACTION = 0.2
METRIC_LABELS = {"accuracy": "acc", "f1": "F1", "mcc": "MCC", "pearson": "Pearson", "spearman": "Spearman"}


@dataclass(frozen=True)
class GlueLayout:
    """Where the fields of one GLUE task sit in its train.tsv / dev.tsv."""

    name: str
    header: bool
    text_columns: tuple[str | int, ...]  # header names, or positions when there is no header
    label_column: str | int
    classes: tuple[str, ...]  # () for regression
    metric: str
    score_range: tuple[float, float] | None = None


GLUE_TASKS = {
    "rte": GlueLayout(
        "RTE", True, ("sentence1", "sentence2"), "label", ("entailment", "not_entailment"), "accuracy"
    ),
    "mrpc": GlueLayout("MRPC", True, ("#1 String", "#2 String"), "Quality", ("0", "1"), "f1"),
    "cola": GlueLayout("CoLA", False, (3,), 1, ("0", "1"), "mcc"),
    "stsb": GlueLayout("STS-B", True, ("sentence1", "sentence2"), "score", (), "pearson", (0.0, 5.0)),
}


@dataclass
class TextSplit:
    """Records (dicts of text fields) and labels: int64 class ids, or float32 scores for regression."""

    records: list[dict[str, str]]
    labels: np.ndarray

    def __len__(self) -> int:
        return len(self.labels)

    def subset(self, index: np.ndarray) -> TextSplit:
        return TextSplit([self.records[i] for i in index], self.labels[index])


@dataclass
class FinetuneTask:
    """A fine-tuning task: splits ``train``, ``selection``, ``dev`` (see the module docstring).

    fields: the one or two text fields of each record (a pair goes to the tokenizer as text, text_pair).
    class_names: the classes, label i = class_names[i] ([] for regression).
    metric: the task's headline metric (Table 4: accuracy, f1, mcc or pearson); all are in the CSV.
    notes: how the splits were made (e.g. ``notes["dev"]`` when dev was carved out of train).
    """

    name: str
    kind: TaskKind
    fields: tuple[str, ...]
    splits: dict[str, TextSplit]
    class_names: list[str]
    metric: str
    source: str
    notes: dict[str, str] = field(default_factory=dict)

    @property
    def num_outputs(self) -> int:
        """Outputs of the head: one logit per class, or one score."""
        return len(self.class_names) if self.kind == "classification" else 1

    @property
    def label(self) -> str:
        """The column title of the task in Table 4, e.g. ``MRPC (F1)``."""
        return f"{self.name} ({METRIC_LABELS[self.metric]})"

    def fingerprint(self) -> str:
        """sha256 of everything a run sees: kind, classes, fields and every split's records and labels."""
        digest = hashlib.sha256(json.dumps([self.kind, self.class_names, list(self.fields)]).encode())
        for name in ("train", "selection", "dev"):
            split = self.splits[name]
            digest.update(f"{name}:{len(split)}".encode())
            digest.update(json.dumps(split.records, sort_keys=True).encode())
            digest.update(np.ascontiguousarray(split.labels).tobytes())
        return digest.hexdigest()

    def describe(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "kind": self.kind,
            "metric": self.metric,
            "fields": list(self.fields),
            "class_names": self.class_names,
            "splits": {s: len(self.splits[s]) for s in ("train", "selection", "dev")},
            "notes": self.notes,
            "source": self.source,
            "sha256": self.fingerprint(),
        }


# ----------------------------------------------------------------------------- metrics


def task_metrics(kind: TaskKind, predictions: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    """All metrics of a task's kind, as fractions (accuracy 0.75, not 75)."""
    predictions, labels = np.asarray(predictions), np.asarray(labels)
    if kind == "classification":
        from sklearn.metrics import accuracy_score, f1_score, matthews_corrcoef

        binary = len(np.unique(labels)) <= 2 and int(max(labels.max(), predictions.max())) <= 1
        f1 = (
            f1_score(labels, predictions, pos_label=1, average="binary", zero_division=0)
            if binary
            else f1_score(labels, predictions, average="macro", zero_division=0)
        )
        return {
            "accuracy": float(accuracy_score(labels, predictions)),
            "f1": float(f1),
            "mcc": float(matthews_corrcoef(labels, predictions)),
        }
    from scipy.stats import pearsonr, spearmanr

    def correlation(fn) -> float:
        if np.ptp(predictions) == 0 or np.ptp(labels) == 0:
            return 0.0  # undefined for a constant: no linear association
        value = float(fn(predictions, labels)[0])
        return value if math.isfinite(value) else 0.0

    return {
        "pearson": correlation(pearsonr),
        "spearman": correlation(spearmanr),
        "mse": float(np.mean((predictions - labels) ** 2)),
    }


# ----------------------------------------------------------------------------- loading


def load_task(
    spec: str | Path,
    *,
    seed: int = 0,
    max_train: int | None = None,
    max_dev: int | None = None,
    selection_fraction: float = 0.1,
    task_type: str = "auto",
    label_field: str = "label",
    text_fields: tuple[str, ...] | list[str] | None = None,
) -> FinetuneTask:
    """Load a task by bundled name, GLUE folder or any path `noisylm extract` reads; see the module doc.

    ``max_train`` caps train (stratified) before the selection split is carved from it; ``max_dev``
    caps dev. ``seed`` seeds every split made here (not the runs).
    """
    if task_type not in TASK_TYPES:
        raise UsageError(f"unknown task type {task_type!r}; use one of {', '.join(TASK_TYPES)}")
    if not 0.0 < selection_fraction < 1.0:
        raise UsageError(f"selection_fraction must be in (0, 1), got {selection_fraction}")
    for name, value in (("max_train", max_train), ("max_dev", max_dev)):
        if value is not None and value < 2:
            raise UsageError(f"{name} must be >= 2, got {value}")
    name = str(spec)
    path = Path(spec)
    glue = GLUE_TASKS.get(_glue_key(path.name)) if path.is_dir() and (path / "train.tsv").is_file() else None
    if glue is not None:
        if task_type not in ("auto", "regression" if not glue.classes else "classification"):
            raise UsageError(
                f"{glue.name} is a {'regression' if not glue.classes else 'classification'} "
                f"task; drop --task-type {task_type}"
            )
        splits, kind, classes, fields, metric, notes = _load_glue(path, glue)
        task_name, source = glue.name, str(path)
    else:
        splits, kind, classes, fields, metric, notes = _load_generic(
            name, task_type, label_field, text_fields
        )
        task_name = name if name in BUNDLED_TASKS else path.stem if path.is_file() else path.name
        source = f"bundled:{name}" if name in BUNDLED_TASKS else str(path)
    return _finish(
        task_name,
        kind,
        fields,
        splits,
        classes,
        metric,
        source,
        notes,
        seed=seed,
        max_train=max_train,
        max_dev=max_dev,
        selection_fraction=selection_fraction,
    )


def _glue_key(folder_name: str) -> str:
    return "".join(c for c in folder_name.lower() if c.isalnum())


def _read_tsv(path: Path) -> list[list[str]]:
    """GLUE's TSV: tab-separated, no quoting (MRPC and CoLA hold bare quotes), one example a line."""
    try:
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as exc:
        raise NoisyLMError(f"cannot read {path}: {exc}; check the file (UTF-8 text expected)") from None
    # Split on "\n" only: str.splitlines would also split inside sentences at \x0b, \x1c or \u2028.
    return [line.rstrip("\r").split("\t") for line in text.split("\n") if line.strip()]


def _load_glue(folder: Path, layout: GlueLayout):
    kind: TaskKind = "classification" if layout.classes else "regression"
    fields = (
        ("sentence1", "sentence2")[: len(layout.text_columns)]
        if len(layout.text_columns) > 1
        else ("sentence",)
    )
    splits: dict[str, TextSplit] = {}
    notes: dict[str, str] = {}
    for split, file_name in (("train", "train.tsv"), ("dev", "dev.tsv")):
        path = folder / file_name
        if not path.is_file():
            continue
        rows = _read_tsv(path)
        if layout.header:
            if not rows:
                raise NoisyLMError(f"{path} is empty; it needs the {layout.name} header and examples")
            header, rows = rows[0], rows[1:]
            wanted = [*layout.text_columns, layout.label_column]
            missing = [c for c in wanted if c not in header]
            if missing:
                raise NoisyLMError(
                    f"{path} has no {missing[0]!r} column (columns: {', '.join(header)}); "
                    f"is it GLUE's {layout.name} {file_name}?"
                )
            positions = [header.index(c) for c in wanted]
            first_line = 2
        else:
            positions = [*layout.text_columns, layout.label_column]
            first_line = 1
        records, labels = [], []
        for number, row in enumerate(rows, first_line):
            if len(row) <= max(positions):
                raise NoisyLMError(
                    f"{path}:{number} has {len(row)} tab-separated columns, {layout.name} needs "
                    f"{max(positions) + 1}; fix the line (GLUE's TSV has no quoting)"
                )
            *texts, label = (row[p] for p in positions)
            records.append(dict(zip(fields, texts, strict=True)))
            labels.append(_glue_label(label.strip(), layout, path, number))
        if not records:
            raise NoisyLMError(f"{path} has no examples; check the file")
        dtype = np.int64 if kind == "classification" else np.float32
        splits[split] = TextSplit(records, np.asarray(labels, dtype=dtype))
    if "train" not in splits:
        raise NoisyLMError(f"{folder} has no train.tsv; it needs GLUE's {layout.name} train.tsv and dev.tsv")
    if "dev" not in splits:
        notes["dev"] = "no dev.tsv"
    return splits, kind, list(layout.classes), fields, layout.metric, notes


def _glue_label(value: str, layout: GlueLayout, path: Path, line: int) -> int | float:
    if layout.classes:
        if value not in layout.classes:
            raise NoisyLMError(
                f"{path}:{line}: label {value!r} is not one of the {layout.name} classes "
                f"({', '.join(layout.classes)}); fix or drop the line"
            )
        return layout.classes.index(value)
    try:
        score = float(value)
    except ValueError:
        score = float("nan")
    low, high = layout.score_range or (-math.inf, math.inf)
    if not (low <= score <= high):
        raise NoisyLMError(
            f"{path}:{line}: score {value!r} is not a number in [{low:g}, {high:g}] as {layout.name} "
            "scores are; fix or drop the line"
        )
    return score


def _load_generic(name: str, task_type: str, label_field: str, text_fields):
    from noisylm.probing import datasets as probing_datasets

    notes: dict[str, str] = {}
    if name == "wordnet":
        raw = load_wordnet()
        order: tuple[str, ...] = ("word", "text")  # the pair (lemma, gloss)
    elif name == "wordnet-pairs":
        raw = _wordnet_pairs()
        order = ("word", "text")
    elif name in BUILTIN_DATASETS:
        raise UsageError(
            f"dataset {name} holds images; fine-tuning takes text: use {', '.join(BUNDLED_TASKS)}, a GLUE "
            "folder or a CSV/TSV/JSONL file"
        )
    else:
        # The loaders of `noisylm extract`, before it makes the splits a probe needs.
        raw = probing_datasets._load_path(Path(name), label_field=label_field, text_fields=text_fields)
        order = tuple(raw.fields)
    if raw.kind != "text":
        raise UsageError(
            f"dataset {raw.name} holds {raw.kind}s; fine-tuning a text encoder takes text "
            "(one field or a pair)"
        )
    if text_fields:
        order = tuple(text_fields)
    if not 1 <= len(order) <= 2:
        raise UsageError(
            f"dataset {raw.name} has {len(order)} text fields ({', '.join(order)}); fine-tuning takes one "
            "text or a pair: pass --text-field A [B]"
        )
    splits = {
        split: TextSplit([{f: r[f] for f in order} for r in part.inputs], part.labels)
        for split, part in raw.splits.items()
    }
    if "val" in splits:
        splits["dev"] = splits.pop("val")
        if "test" in splits:
            notes["test"] = "not used: the evaluation split is dev, as in Table 4"
            splits.pop("test")
    elif "test" in splits:
        splits["dev"] = splits.pop("test")
        notes["dev"] = "the data has no dev split; its labelled test split is the evaluation split"
    kind: TaskKind = "regression" if task_type == "regression" else "classification"
    class_names = list(raw.class_names)
    if kind == "regression":
        scores = []
        for value in class_names:
            try:
                scores.append(float(value))
            except ValueError:
                raise NoisyLMError(
                    f"{raw.source}: label {value!r} is not a number; a regression task needs numeric labels"
                ) from None
        for split in splits.values():
            split.labels = np.asarray(scores, dtype=np.float32)[split.labels]
        class_names = []
    else:
        _check_classes(raw, splits)
    metric = "accuracy" if kind == "classification" else "pearson"
    return splits, kind, class_names, order, metric, notes


def _check_classes(raw: LabelledDataset, splits: dict[str, TextSplit]) -> None:
    """Classes are those of the training data: a label elsewhere that train never has is refused."""
    seen = set(np.unique(splits["train"].labels).tolist())
    for split_name, split in splits.items():
        unknown = sorted(set(np.unique(split.labels).tolist()) - seen)
        if unknown:
            known = ", ".join(raw.class_names[i] for i in sorted(seen))
            raise NoisyLMError(
                f"{raw.source}: the {split_name} split has label {raw.class_names[unknown[0]]!r}, which no "
                f"training example has (training classes: {known}); fix the labels or add training "
                "examples of that class"
            )


def _wordnet_pairs() -> LabelledDataset:
    """(lemma, gloss) pairs from the bundled WordNet glosses: each lemma once with its own gloss (yes)
    and once with the gloss of another noun of the same lexicographer category (no), so that the
    category alone does not give the answer. Seeded; the train/test split is WordNet's own."""
    from noisylm.probing.datasets import Split

    wordnet = load_wordnet()
    rng = np.random.default_rng(0)
    splits = {}
    for split_name, split in wordnet.splits.items():
        labels = np.asarray(split.labels)
        partner = np.empty(len(labels), dtype=np.int64)
        for category in np.unique(labels):
            members = np.flatnonzero(labels == category)
            # A derangement within the category: a cyclic shift of a random order.
            shuffled = rng.permutation(members)
            partner[shuffled] = np.roll(shuffled, 1) if len(members) > 1 else shuffled
        records, pair_labels = [], []
        for i, record in enumerate(split.inputs):
            j = int(partner[i])
            records.append({"word": record["word"], "text": record["text"]})
            pair_labels.append(1)
            if j != i:
                records.append({"word": record["word"], "text": split.inputs[j]["text"]})
                pair_labels.append(0)
        splits[split_name] = Split(records, np.asarray(pair_labels, dtype=np.int64))
    return LabelledDataset(
        "wordnet-pairs", "text", splits, ["no", "yes"], ("word", "text"), "bundled:wordnet-pairs"
    )


def _finish(
    name: str,
    kind: TaskKind,
    fields: tuple[str, ...],
    splits: dict[str, TextSplit],
    class_names: list[str],
    metric: str,
    source: str,
    notes: dict[str, str],
    *,
    seed: int,
    max_train: int | None,
    max_dev: int | None,
    selection_fraction: float,
) -> FinetuneTask:
    """Carve dev (when missing) and the selection split out of train, and apply the caps."""
    train = splits["train"]
    if kind == "classification" and len(np.unique(train.labels)) < 2:
        raise NoisyLMError(f"{source}: the training data has a single class; a classifier needs >= 2 classes")
    if "dev" not in splits:
        train, splits["dev"] = _carve(train, DEV_FRACTION, seed, kind, name, "dev")
        why = notes.get("dev", "the data has no dev split")
        notes["dev"] = f"{why}: carved {DEV_FRACTION:.0%} of train out as dev (stratified, seed {seed})"
    if max_train is not None and len(train) > max_train:
        train = train.subset(_sample(train.labels, max_train, seed, kind))
        notes["max_train"] = str(max_train)
    dev = splits["dev"]
    if max_dev is not None and len(dev) > max_dev:
        dev = dev.subset(_sample(dev.labels, max_dev, seed, kind))
        notes["max_dev"] = str(max_dev)
    train, selection = _carve(train, selection_fraction, seed + 1, kind, name, "selection")
    notes["selection"] = f"{selection_fraction:.0%} of train (stratified, seed {seed + 1})"
    return FinetuneTask(
        name,
        kind,
        fields,
        {"train": train, "selection": selection, "dev": dev},
        class_names,
        metric,
        source,
        notes,
    )


def _sample(labels: np.ndarray, count: int, seed: int, kind: TaskKind) -> np.ndarray:
    if kind == "classification":
        return stratified_split(labels, count, seed, keep_one=False)[1]
    return np.sort(np.random.default_rng(seed).permutation(len(labels))[:count])


def _carve(
    split: TextSplit, fraction: float, seed: int, kind: TaskKind, name: str, what: str
) -> tuple[TextSplit, TextSplit]:
    n = len(split)
    n_held = int(round(fraction * n))
    n_classes = len(np.unique(split.labels)) if kind == "classification" else 1
    if n_held < n_classes or n - n_held < max(n_classes, 2):
        raise NoisyLMError(
            f"task {name} is too small to carve a {fraction:.0%} {what} split out of its {n} training "
            f"examples ({n_classes} classes); use more training data"
            + (" or give a dev split" if what == "dev" else "")
        )
    if kind == "classification":
        kept, held = stratified_split(split.labels, n_held, seed)
    else:
        order = np.random.default_rng(seed).permutation(n)
        held, kept = np.sort(order[:n_held]), np.sort(order[n_held:])
    return split.subset(kept), split.subset(held)
