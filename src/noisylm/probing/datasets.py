"""Labelled datasets for probing: bundled real data and loaders for users' files.

Every loader returns a `LabelledDataset`: named splits (`train`, `val`, `test`) of inputs and integer
labels ``0..C-1`` with their class names. Inputs are text records (dicts of named text fields, filled
into a prompt template by `noisylm.probing.features`), images (uint8 arrays, or file paths for image folders)
or plain feature vectors.

Bundled (offline, real):
  ``wordnet``        WordNet 3.0 noun glosses -> their 26 lexicographer categories (82,115 synsets,
                     fixed 80/20 train/test split; see `scripts/derive_wordnet.py`)
  ``digits``         scikit-learn's 8x8 handwritten digits (1,797 images, 10 classes)
  ``fashion-mnist``  a class-balanced 2,000/500 subset of Fashion-MNIST (IDX files,
                     `scripts/derive_fashion_mnist.py`); pass the folder of the full IDX files to use all
  ``shakespeare-plays``  which of the 42 bundled Shakespeare texts a 300-character passage comes from
                     (labels from the file names; 40 passages per text, fewer for the three short
                     poems; the downstream stage of `noisylm sweep`). The passages come from the texts
                     the sweep's models train on: it measures what a representation keeps, not
                     generalisation to unseen text.

Users' data (a path):
  file.csv / .tsv / .jsonl        columns `label` + `text` (or several text fields, e.g. text1,text2)
  folder with train.csv|tsv|jsonl|npz (+ val/validation/dev, test)
  file.npz                        raw feature vectors: arrays `features` and `labels` (or X, y)
  folder of IDX files             train-images-idx3-ubyte(.gz) + train-labels-idx1-ubyte(.gz), t10k-*/test-*
  Hugging Face dataset            a folder from `DatasetDict.save_to_disk` (needs `pip install datasets`)
  image folder                    root/<split>/<class>/*.png|jpg or root/<class>/*.png|jpg

Splits that are missing are made here, stratified and seeded: `test` (20% of all data) when the data
has no test split, then `val` (10% of train) when it has no validation split. Selection (the probe's
grid search) only ever sees `val`; `test` is for the final numbers.
"""

from __future__ import annotations

import contextlib
import csv
import functools
import gzip
import importlib.resources
import json
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

from noisylm.errors import NoisyLMError

BUILTIN_DATASETS = ("wordnet", "digits", "fashion-mnist", "shakespeare-plays")
PASSAGE_CHARS = 300  # shakespeare-plays: characters per passage
PASSAGES_PER_TEXT = 40  # shakespeare-plays: passages drawn from each text (all it has when fewer)
SPLIT_ALIASES = {
    "train": "train",
    "val": "val",
    "validation": "val",
    "dev": "val",
    "valid": "val",
    "test": "test",
}
TEXT_SUFFIXES = (".csv", ".tsv", ".jsonl", ".json")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff")
IGNORED_COLUMNS = ("idx", "id", "index", "guid")
FASHION_MNIST_CLASSES = (
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
)  # fmt: skip
TEST_FRACTION = 0.2

Kind = Literal["text", "image", "vector"]


@dataclass
class Split:
    """One split. `inputs`: list of text records (dict field -> str), a uint8 image array [N, H, W(, C)],
    a list of image file paths, or a float feature array [N, d]. `labels`: int64 [N] in 0..C-1."""

    inputs: Any
    labels: np.ndarray

    def __len__(self) -> int:
        return len(self.labels)

    def subset(self, index: np.ndarray) -> Split:
        if isinstance(self.inputs, list):
            return Split([self.inputs[i] for i in index], self.labels[index])
        return Split(self.inputs[index], self.labels[index])


@dataclass
class LabelledDataset:
    """A classification dataset with named splits.

    name: short name recorded in caches (`wordnet`, or the file/folder name for users' data).
    kind: "text" (records of text fields), "image" or "vector" (raw features).
    splits: "train", "val", "test" (all three present after `load_dataset`).
    class_names: names of labels 0..C-1.
    fields: the text fields of each record (templates refer to them as {field}); () unless kind == "text".
    source: where it came from ("bundled:wordnet" or a path).
    pixel_max: the largest possible pixel value of images (255, or 16 for digits); 1.0 for vectors.
    notes: how splits were made, e.g. {"val": "10% of train, stratified, seed 0"}.
    """

    name: str
    kind: Kind
    splits: dict[str, Split]
    class_names: list[str]
    fields: tuple[str, ...] = ()
    source: str = ""
    pixel_max: float = 255.0
    notes: dict[str, str] = field(default_factory=dict)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)


# ----------------------------------------------------------------------------- splitting


def stratified_split(
    labels: np.ndarray, n_held: int, seed: int, keep_one: bool = True
) -> tuple[np.ndarray, np.ndarray]:
    """Split indices into (kept, held) with ``n_held`` held out, class proportions preserved.

    Each class c gets floor(n_held * n_c / N) held examples, the rest go to the classes with the largest
    remainders; with `keep_one` a class never gives up its last example (so it stays in the kept part).
    Seeded, so the same call gives the same split.
    """
    labels = np.asarray(labels)
    n = len(labels)
    classes, counts = np.unique(labels, return_counts=True)
    quota = n_held * counts / max(n, 1)
    most = counts - 1 if keep_one else counts
    take = np.minimum(np.floor(quota).astype(int), most)
    order = np.argsort(-(quota - take), kind="stable")
    short = n_held - int(take.sum())
    while short > 0:
        progressed = False
        for i in order:
            if short == 0:
                break
            if take[i] < most[i]:
                take[i] += 1
                short -= 1
                progressed = True
        if not progressed:
            break
    rng = np.random.default_rng(seed)
    held = [rng.permutation(np.flatnonzero(labels == c))[:k] for c, k in zip(classes, take, strict=True)]
    held_index = np.sort(np.concatenate(held)) if held else np.zeros(0, dtype=np.int64)
    kept_mask = np.ones(n, dtype=bool)
    kept_mask[held_index] = False
    return np.flatnonzero(kept_mask), held_index


def _hold_out(split: Split, fraction: float, seed: int, what: str, name: str) -> tuple[Split, Split]:
    n = len(split)
    n_classes = len(np.unique(split.labels))
    n_held = int(round(fraction * n))
    source = "training" if what == "validation" else "labelled"
    if n_held < n_classes or n - n_held < n_classes:
        raise NoisyLMError(
            f"dataset {name} is too small for a stratified {fraction:.0%} {what} split: "
            f"{n} {source} examples give {n_held} {what} examples for {n_classes} classes; "
            f"provide a {what} split or at least {int(np.ceil(n_classes / fraction))} {source} examples"
        )
    kept, held = stratified_split(split.labels, n_held, seed)
    return split.subset(kept), split.subset(held)


def _cap(split: Split, limit: int | None, seed: int) -> Split:
    if limit is None or len(split) <= limit:
        return split
    _, keep = stratified_split(split.labels, limit, seed, keep_one=False)
    return split.subset(keep)


def finalize_splits(
    dataset: LabelledDataset,
    *,
    val_fraction: float = 0.1,
    seed: int = 0,
    max_train: int | None = None,
    max_test: int | None = None,
) -> LabelledDataset:
    """Check the labels, then make the missing test/val splits and apply the size caps (all stratified).

    `max_train` caps train *before* the validation split is taken from it; `max_test` caps test and a
    validation split that came with the data.
    """
    if not 0.0 < val_fraction < 1.0:
        raise NoisyLMError(f"val_fraction must be in (0, 1), got {val_fraction}")
    splits = dict(dataset.splits)
    notes = dict(dataset.notes)
    if "train" not in splits or len(splits["train"]) == 0:
        raise NoisyLMError(f"dataset {dataset.name} has no training examples; check {dataset.source}")
    present = np.unique(np.concatenate([s.labels for s in splits.values()]))
    if len(present) < 2:
        only = dataset.class_names[int(present[0])] if len(present) else "none"
        raise NoisyLMError(
            f"dataset {dataset.name} has a single class ({only!r}); a classifier needs at least 2 classes"
        )
    if "test" not in splits:
        splits["train"], splits["test"] = _hold_out(
            splits["train"], TEST_FRACTION, seed, "test", dataset.name
        )
        notes["test"] = f"{TEST_FRACTION:.0%} of the data, stratified, seed {seed}"
    splits["train"] = _cap(splits["train"], max_train, seed)
    if len(np.unique(splits["train"].labels)) < 2:
        raise NoisyLMError(
            f"the training split of {dataset.name} has a single class; a classifier needs at least 2 classes"
        )
    if "val" not in splits:
        splits["train"], splits["val"] = _hold_out(
            splits["train"], val_fraction, seed + 1, "validation", dataset.name
        )
        notes["val"] = f"{val_fraction:.0%} of train, stratified, seed {seed + 1}"
    else:
        splits["val"] = _cap(splits["val"], max_test, seed)
    splits["test"] = _cap(splits["test"], max_test, seed)
    if max_train is not None:
        notes["max_train"] = str(max_train)
    if max_test is not None:
        notes["max_test"] = str(max_test)
    return LabelledDataset(
        name=dataset.name,
        kind=dataset.kind,
        splits={k: splits[k] for k in ("train", "val", "test")},
        class_names=dataset.class_names,
        fields=dataset.fields,
        source=dataset.source,
        pixel_max=dataset.pixel_max,
        notes=notes,
    )


# ----------------------------------------------------------------------------- entry point


def load_dataset(
    spec: str | Path,
    *,
    val_fraction: float = 0.1,
    seed: int = 0,
    max_train: int | None = None,
    max_test: int | None = None,
    label_field: str = "label",
    text_fields: list[str] | tuple[str, ...] | None = None,
) -> LabelledDataset:
    """Load a bundled dataset by name or a user's dataset from a path; see the module docstring."""
    name = str(spec)
    if name in BUILTIN_DATASETS:
        raw = {
            "wordnet": load_wordnet,
            "digits": load_digits,
            "fashion-mnist": load_fashion_mnist_bundled,
            "shakespeare-plays": load_shakespeare_plays,
        }[name]()
    else:
        raw = _load_path(Path(spec), label_field=label_field, text_fields=text_fields)
    return finalize_splits(raw, val_fraction=val_fraction, seed=seed, max_train=max_train, max_test=max_test)


def _load_path(path: Path, *, label_field: str, text_fields) -> LabelledDataset:
    if not path.exists():
        raise NoisyLMError(
            f"dataset {path} not found: not a bundled dataset ({', '.join(BUILTIN_DATASETS)}) "
            "and no such file or folder; check the path"
        )
    if path.is_file():
        suffix = path.suffix.lower()
        if suffix == ".npz":
            return load_npz({"train": path}, name=path.stem)
        if suffix in TEXT_SUFFIXES:
            return load_text_files(
                {"train": path}, name=path.stem, label_field=label_field, text_fields=text_fields
            )
        raise NoisyLMError(
            f"cannot read dataset file {path}: use .csv, .tsv, .jsonl or .npz (or a folder); "
            "see `noisylm extract --help`"
        )
    if (path / "dataset_dict.json").exists() or (path / "dataset_info.json").exists():
        return load_hf_dataset(path, label_field=label_field, text_fields=text_fields)
    split_files = _split_files(path)
    if split_files:
        suffixes = {p.suffix.lower() for p in split_files.values()}
        if suffixes == {".npz"}:
            return load_npz(split_files, name=path.name)
        return load_text_files(split_files, name=path.name, label_field=label_field, text_fields=text_fields)
    if any("idx3-ubyte" in p.name for p in path.iterdir()):
        return load_idx_folder(path)
    return load_image_folder(path)


def _split_files(folder: Path) -> dict[str, Path]:
    found: dict[str, Path] = {}
    for p in sorted(folder.iterdir()):
        split = SPLIT_ALIASES.get(p.stem.lower())
        if split and p.is_file() and p.suffix.lower() in (*TEXT_SUFFIXES, ".npz"):
            if split in found:
                raise NoisyLMError(
                    f"{folder} has two files for split {split!r} ({found[split].name}, {p.name}); keep one"
                )
            found[split] = p
    if found and "train" not in found:
        raise NoisyLMError(
            f"{folder} has {', '.join(found)} files but no train file; add train.csv/.jsonl/.npz"
        )
    return found


# ----------------------------------------------------------------------------- labels


def _encode_labels(values_by_split: dict[str, list], class_names: list[str] | None, where: str):
    """Map raw label values to 0..C-1. Integer-like labels sort numerically, others as strings."""
    if class_names is not None:
        return {s: np.asarray(v, dtype=np.int64) for s, v in values_by_split.items()}, class_names

    def as_str(x: Any) -> str:  # JSON 1.0 and 1 are the same class
        return str(int(x)) if isinstance(x, float) and x.is_integer() else str(x).strip()

    as_text = {s: [as_str(x) for x in v] for s, v in values_by_split.items()}
    for split, values in as_text.items():
        if any(x == "" or x.lower() in ("nan", "none", "null") for x in values):
            raise NoisyLMError(
                f"{where}: split {split!r} has examples with an empty label; fill or drop them"
            )
    unique = sorted({x for v in as_text.values() for x in v})
    with contextlib.suppress(ValueError):
        unique = sorted(unique, key=lambda x: float(x))
    index = {name: i for i, name in enumerate(unique)}
    return {s: np.asarray([index[x] for x in v], dtype=np.int64) for s, v in as_text.items()}, unique


# ----------------------------------------------------------------------------- bundled data


def _asset(*parts: str) -> Path:
    return Path(str(importlib.resources.files("noisylm").joinpath("assets", *parts)))


@functools.cache
def _read_wordnet() -> tuple[dict[str, tuple[tuple[str, str], ...]], dict[str, np.ndarray], tuple[str, ...]]:
    """Parse the bundled file once per process: (gloss, lemma) pairs, labels and class names per split."""
    path = _asset("wordnet", "wordnet_nouns.tsv.gz")
    rows: dict[str, list[tuple[str, str]]] = {"train": [], "test": []}
    labels: dict[str, list[str]] = {"train": [], "test": []}
    with gzip.open(path, "rt", encoding="utf-8") as fh:
        for row in csv.DictReader(fh, delimiter="\t", quoting=csv.QUOTE_NONE):
            rows[row["split"]].append((row["gloss"], row["lemma"]))
            labels[row["split"]].append(row["category"])
    encoded, class_names = _encode_labels(labels, None, str(path))
    for array in encoded.values():
        array.flags.writeable = False  # shared between calls
    return {s: tuple(r) for s, r in rows.items()}, encoded, tuple(class_names)


def load_wordnet() -> LabelledDataset:
    """WordNet 3.0 noun glosses labelled with their lexicographer category (26 classes).

    Records have fields `text` (the gloss) and `word` (the synset's first lemma)."""
    rows, labels, class_names = _read_wordnet()
    splits = {
        s: Split([{"text": gloss, "word": lemma} for gloss, lemma in rows[s]], labels[s])
        for s in ("train", "test")
    }
    return LabelledDataset("wordnet", "text", splits, list(class_names), ("text", "word"), "bundled:wordnet")


def load_shakespeare_plays(
    passages_per_text: int = PASSAGES_PER_TEXT, chars: int = PASSAGE_CHARS, seed: int = 0
) -> LabelledDataset:
    """Which bundled Shakespeare text a passage comes from: one class per file of
    ``assets/corpora/shakespeare/texts`` (its name without ``_gut.txt.gz``).

    Each text is cut into consecutive non-overlapping ``chars``-character passages (the first one, the
    title and cast list, is dropped: it names the play); ``passages_per_text`` of them are drawn at
    random (seeded), or all of them for a text that has fewer. One record field, `text`. No predefined
    splits: `load_dataset` makes stratified test and validation splits.
    """
    folder = _asset("corpora", "shakespeare", "texts")
    files = sorted(folder.glob("*.txt.gz"))
    if not files:
        raise NoisyLMError(f"no bundled Shakespeare texts in {folder}; reinstall noisylm")
    rng = np.random.default_rng(seed)
    records: list[dict[str, str]] = []
    labels: list[int] = []
    names: list[str] = []
    for label, path in enumerate(files):
        names.append(path.name.removesuffix(".txt.gz").removesuffix("_gut"))
        with gzip.open(path, "rt", encoding="utf-8") as fh:
            text = fh.read()
        chunks = [text[i : i + chars] for i in range(chars, len(text) - chars + 1, chars)]
        chunks = [c for c in chunks if c.strip()]
        chosen = np.sort(rng.permutation(len(chunks))[:passages_per_text])
        records += [{"text": chunks[i].strip()} for i in chosen]
        labels += [label] * len(chosen)
    split = Split(records, np.asarray(labels, dtype=np.int64))
    return LabelledDataset(
        "shakespeare-plays",
        "text",
        {"train": split},
        names,
        ("text",),
        "bundled:shakespeare-plays",
        notes={"passages": f"{chars} characters, up to {passages_per_text} per text, seed {seed}"},
    )


def load_digits() -> LabelledDataset:
    """scikit-learn's 8x8 digits: pixel values 0..16, no predefined test split."""
    from sklearn.datasets import load_digits as sk_load_digits

    digits = sk_load_digits()
    images = digits.images.astype(np.uint8)
    split = Split(images, digits.target.astype(np.int64))
    names = [str(i) for i in range(10)]
    return LabelledDataset("digits", "image", {"train": split}, names, (), "bundled:digits", pixel_max=16.0)


def load_fashion_mnist_bundled() -> LabelledDataset:
    dataset = load_idx_folder(_asset("fashion-mnist"))
    dataset.name, dataset.source = "fashion-mnist", "bundled:fashion-mnist (2,000/500 subset)"
    return dataset


# ----------------------------------------------------------------------------- IDX


def read_idx(path: str | Path) -> np.ndarray:
    """Read an IDX file (as used by MNIST / Fashion-MNIST), gzipped or not."""
    path = Path(path)
    try:
        data = path.read_bytes()
        if data[:2] == b"\x1f\x8b":
            data = gzip.decompress(data)
    except OSError as exc:
        raise NoisyLMError(f"cannot read IDX file {path}: {exc.strerror or exc}") from None
    dtypes = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}
    if len(data) < 4 or data[:2] != b"\x00\x00" or data[2] not in dtypes:
        raise NoisyLMError(f"{path} is not an IDX file (bad magic number); check the file")
    ndim = data[3]
    shape = struct.unpack(f">{ndim}I", data[4 : 4 + 4 * ndim])
    dtype = np.dtype(dtypes[data[2]])
    expected = int(np.prod(shape)) * dtype.itemsize
    if len(data) - 4 - 4 * ndim != expected:
        raise NoisyLMError(f"IDX file {path} is truncated or corrupt (shape {shape}); re-download it")
    return (
        np.frombuffer(data, dtype=dtype, offset=4 + 4 * ndim).reshape(shape).astype(dtype.newbyteorder("="))
    )


def load_idx_folder(folder: str | Path, class_names: list[str] | None = None) -> LabelledDataset:
    """A folder of IDX files: `{train,t10k|test}-{images-idx3,labels-idx1}-ubyte[.gz]`."""
    folder = Path(folder)

    def find(prefixes: tuple[str, ...], kind: str) -> Path | None:
        for prefix in prefixes:
            for suffix in ("", ".gz"):
                path = folder / f"{prefix}-{kind}-ubyte{suffix}"
                if path.exists():
                    return path
        return None

    splits = {}
    for split, prefixes in (("train", ("train",)), ("test", ("t10k", "test"))):
        images, labels = find(prefixes, "images-idx3"), find(prefixes, "labels-idx1")
        if images is None and labels is None:
            continue
        if images is None or labels is None:
            raise NoisyLMError(
                f"{folder}: {split} needs both an images-idx3 and a labels-idx1 file; one is missing"
            )
        x, y = read_idx(images), read_idx(labels).astype(np.int64)
        if len(x) != len(y):
            raise NoisyLMError(
                f"{folder}: {images.name} has {len(x)} images but {labels.name} {len(y)} labels"
            )
        splits[split] = Split(x.astype(np.uint8), y)
    if "train" not in splits:
        raise NoisyLMError(
            f"{folder} has no train-images-idx3-ubyte(.gz) / train-labels-idx1-ubyte(.gz) files"
        )
    n_classes = int(max(s.labels.max() for s in splits.values())) + 1
    if class_names is None:
        is_fashion = n_classes == 10 and "fashion" in str(folder).lower()
        class_names = list(FASHION_MNIST_CLASSES) if is_fashion else [str(i) for i in range(n_classes)]
    return LabelledDataset(folder.name, "image", splits, class_names, (), str(folder))


# ----------------------------------------------------------------------------- text files


def _read_rows(path: Path) -> list[dict[str, Any]]:
    suffix = path.suffix.lower()
    try:
        if suffix in (".csv", ".tsv"):
            with open(path, encoding="utf-8", newline="") as fh:
                return list(csv.DictReader(fh, delimiter="\t" if suffix == ".tsv" else ","))
        rows = []
        with open(path, encoding="utf-8") as fh:
            for number, line in enumerate(fh, 1):
                if line.strip():
                    row = json.loads(line)
                    if not isinstance(row, dict):
                        raise NoisyLMError(f"{path}:{number}: each line must be a JSON object")
                    rows.append(row)
        return rows
    except json.JSONDecodeError as exc:
        raise NoisyLMError(f"{path} is not valid JSON Lines ({exc}); one JSON object per line") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise NoisyLMError(f"cannot read {path}: {exc}; check the file (UTF-8 text expected)") from None


def _records_from_rows(
    rows: list[dict[str, Any]], where: str, label_field: str, text_fields
) -> tuple[list[dict[str, str]], list[Any], tuple[str, ...]]:
    if not rows:
        raise NoisyLMError(f"{where} has no rows; check the file")
    columns = list(rows[0].keys())
    if label_field not in columns:
        raise NoisyLMError(
            f"{where} has no {label_field!r} field (fields: {', '.join(columns)}); "
            "add it or pass --label-field NAME"
        )
    if text_fields:
        fields = tuple(text_fields)
        missing = [f for f in fields if f not in columns]
        if missing:
            raise NoisyLMError(
                f"{where} has no text field {missing[0]!r} (fields: {', '.join(columns)}); fix --text-field"
            )
    elif "text" in columns:
        fields = ("text",)
    else:
        fields = tuple(c for c in columns if c != label_field and c.lower() not in IGNORED_COLUMNS)
        if not fields:
            raise NoisyLMError(
                f"{where} has no text field (fields: {', '.join(columns)}); add a 'text' column "
                "or pass --text-field NAME"
            )
    records, labels = [], []
    for number, row in enumerate(rows, 1):
        record = {}
        for f in fields:
            value = row.get(f)
            if value is None:
                raise NoisyLMError(f"{where}: row {number} has no {f!r} value; fill or drop it")
            record[f] = str(value)
        records.append(record)
        labels.append(row.get(label_field))
        if labels[-1] is None:
            raise NoisyLMError(f"{where}: row {number} has no {label_field!r} value; fill or drop it")
    return records, labels, fields


def load_text_files(
    files: dict[str, Path], *, name: str, label_field: str = "label", text_fields=None
) -> LabelledDataset:
    """CSV / TSV / JSONL files, one per split: a label field plus one or more text fields."""
    records, labels, fields = {}, {}, None
    for split, path in files.items():
        records[split], labels[split], split_fields = _records_from_rows(
            _read_rows(path), str(path), label_field, text_fields
        )
        if fields is not None and split_fields != fields:
            raise NoisyLMError(
                f"{path} has text fields {split_fields}, but train has {fields}; use the same columns"
            )
        fields = split_fields
    encoded, class_names = _encode_labels(labels, None, name)
    splits = {s: Split(records[s], encoded[s]) for s in records}
    source = str(next(iter(files.values())).parent if len(files) > 1 else files["train"])
    return LabelledDataset(name, "text", splits, class_names, fields, source)


# ----------------------------------------------------------------------------- raw features


def load_npz(files: dict[str, Path], *, name: str) -> LabelledDataset:
    """Raw feature vectors: each .npz holds `features` [N, d] and `labels` [N] (or `X` and `y`)."""
    splits, raw_labels = {}, {}
    for split, path in files.items():
        try:
            with np.load(path, allow_pickle=False) as data:
                keys = set(data.files)
                x_key = "features" if "features" in keys else "X" if "X" in keys else None
                y_key = "labels" if "labels" in keys else "y" if "y" in keys else None
                if x_key is None or y_key is None:
                    raise NoisyLMError(
                        f"{path} needs arrays 'features' and 'labels' (or 'X' and 'y'); "
                        f"it has {', '.join(sorted(keys))}"
                    )
                x, y = np.asarray(data[x_key], dtype=np.float32), np.asarray(data[y_key])
        except (OSError, ValueError) as exc:
            raise NoisyLMError(f"cannot read {path} as .npz: {exc}") from None
        if x.ndim != 2 or len(x) != len(y):
            raise NoisyLMError(f"{path}: features must be [N, d] and labels [N]; got {x.shape} and {y.shape}")
        splits[split], raw_labels[split] = x, y.tolist()
    encoded, class_names = _encode_labels(raw_labels, None, name)
    parts = {s: Split(splits[s], encoded[s]) for s in splits}
    return LabelledDataset(name, "vector", parts, class_names, (), str(files["train"]), pixel_max=1.0)


# ----------------------------------------------------------------------------- Hugging Face datasets


def load_hf_dataset(folder: Path, *, label_field: str = "label", text_fields=None) -> LabelledDataset:
    """A `datasets.DatasetDict` (or `Dataset`) saved with `save_to_disk`."""
    try:
        import datasets as hf_datasets
    except ImportError:
        raise NoisyLMError(
            f"{folder} is a Hugging Face dataset; reading it needs the optional package: pip install datasets"
        ) from None
    loaded = hf_datasets.load_from_disk(str(folder))
    parts = dict(loaded) if isinstance(loaded, hf_datasets.DatasetDict) else {"train": loaded}
    parts = {SPLIT_ALIASES.get(k.lower(), k): v for k, v in parts.items()}
    parts = {k: v for k, v in parts.items() if k in ("train", "val", "test")}
    if "train" not in parts:
        raise NoisyLMError(f"{folder} has no 'train' split; save a DatasetDict with a train split")
    train = parts["train"]
    if label_field not in train.column_names:
        raise NoisyLMError(
            f"{folder} has no {label_field!r} column (columns: {', '.join(train.column_names)}); "
            "pass --label-field"
        )
    label_feature = train.features[label_field]
    class_names = list(label_feature.names) if hasattr(label_feature, "names") else None
    image_columns = [c for c, f in train.features.items() if type(f).__name__ == "Image"]
    if image_columns:
        column = image_columns[0]
        splits = {}
        for split, part in parts.items():
            images = np.stack([np.asarray(img.convert("RGB")) for img in part[column]])
            splits[split] = Split(images, np.asarray(part[label_field], dtype=np.int64))
        labels_by_split = {s: sp.labels.tolist() for s, sp in splits.items()}
        encoded, names = _encode_labels(labels_by_split, class_names, str(folder))
        for s in splits:
            splits[s].labels = encoded[s]
        return LabelledDataset(folder.name, "image", splits, names, (), str(folder))
    records, labels, fields = {}, {}, None
    for split, part in parts.items():
        records[split], labels[split], fields = _records_from_rows(
            part.to_list(), f"{folder} ({split})", label_field, text_fields
        )
    encoded, names = _encode_labels(labels, class_names, str(folder))
    splits = {s: Split(records[s], encoded[s]) for s in records}
    return LabelledDataset(folder.name, "text", splits, names, fields or (), str(folder))


# ----------------------------------------------------------------------------- image folders


def load_image_folder(root: str | Path) -> LabelledDataset:
    """`root/<split>/<class>/*.png|jpg` or `root/<class>/*.png|jpg`; images are read lazily."""
    root = Path(root)
    subdirs = sorted(p for p in root.iterdir() if p.is_dir())
    split_dirs = {SPLIT_ALIASES[p.name.lower()]: p for p in subdirs if p.name.lower() in SPLIT_ALIASES}
    if not split_dirs:
        split_dirs = {"train": root}
    elif "train" not in split_dirs:
        raise NoisyLMError(f"{root} has {', '.join(split_dirs)} folders but no train/ folder; add one")
    paths, labels = {}, {}
    for split, folder in split_dirs.items():
        paths[split], labels[split] = [], []
        for class_dir in sorted(p for p in folder.iterdir() if p.is_dir()):
            for image in sorted(class_dir.iterdir()):
                if image.suffix.lower() in IMAGE_SUFFIXES:
                    paths[split].append(str(image))
                    labels[split].append(class_dir.name)
        if not paths[split]:
            raise NoisyLMError(
                f"no images found under {folder}; expected {folder}/<class>/*.png|jpg "
                "(or a .csv/.jsonl/.npz file, IDX files or a Hugging Face dataset folder)"
            )
    encoded, names = _encode_labels(labels, None, str(root))
    splits = {s: Split(paths[s], encoded[s]) for s in paths}
    return LabelledDataset(root.name, "image", splits, names, (), str(root))


def read_images(inputs: Any, index: np.ndarray | list[int]) -> list[np.ndarray]:
    """The images at `index` as uint8 arrays [H, W] or [H, W, C] (opens files for image folders)."""
    if isinstance(inputs, np.ndarray):
        return [inputs[i] for i in index]
    from PIL import Image

    out = []
    for i in index:
        try:
            with Image.open(inputs[i]) as image:
                out.append(np.asarray(image.convert("RGB")))
        except OSError as exc:
            raise NoisyLMError(f"cannot read image {inputs[i]}: {exc}; remove or replace the file") from None
    return out
