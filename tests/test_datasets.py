"""Labelled datasets: bundled WordNet / digits / Fashion-MNIST, users' files, stratified splits, bad input."""

from __future__ import annotations

import csv
import gzip
import importlib.util
import json
import struct
import subprocess
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from noisylm.errors import NoisyLMError
from noisylm.probing.datasets import (
    FASHION_MNIST_CLASSES,
    Split,
    load_dataset,
    load_wordnet,
    read_idx,
    read_images,
    stratified_split,
)

ROOT = Path(__file__).resolve().parents[1]

# Synsets per lexicographer file in WordNet 3.0 data.noun (counted from the raw file with awk).
WORDNET_COUNTS = {
    "noun.Tops": 51, "noun.act": 6650, "noun.animal": 7509, "noun.artifact": 11587, "noun.attribute": 3039,
    "noun.body": 2016, "noun.cognition": 2964, "noun.communication": 5607, "noun.event": 1074,
    "noun.feeling": 428, "noun.food": 2573, "noun.group": 2624, "noun.location": 3209, "noun.motive": 42,
    "noun.object": 1545, "noun.person": 11087, "noun.phenomenon": 641, "noun.plant": 8030,
    "noun.possession": 1061, "noun.process": 770, "noun.quantity": 1275, "noun.relation": 437,
    "noun.shape": 341, "noun.state": 3544, "noun.substance": 2983, "noun.time": 1028,
}  # fmt: skip


# ----------------------------------------------------------------------------- bundled data


def test_wordnet_bundled_file_has_every_noun_synset_with_its_category():
    data = load_wordnet()
    assert data.class_names == sorted(WORDNET_COUNTS)
    counts = Counter()
    for split in data.splits.values():
        counts.update(data.class_names[i] for i in split.labels)
    assert counts == WORDNET_COUNTS
    assert len(data.splits["test"]) == 16423  # 20% of each category, rounded
    train = {
        r["word"]: data.class_names[y]
        for r, y in zip(data.splits["train"].inputs, data.splits["train"].labels, strict=True)
    }
    test = {
        r["word"]: data.class_names[y]
        for r, y in zip(data.splits["test"].inputs, data.splits["test"].labels, strict=True)
    }
    everything = {**train, **test}
    assert everything["entity"] == "noun.Tops"
    assert everything["dog"] in ("noun.animal", "noun.person")  # 'dog' is both a canine and a chap
    assert everything["oak"] == "noun.plant"
    # Glosses carry the definition only: usage examples (quoted) were stripped.
    glosses = [r["text"] for split in data.splits.values() for r in split.inputs]
    assert not any('; "' in g or ': "' in g for g in glosses)


def test_derive_wordnet_script_parses_data_noun(tmp_path):
    wn = tmp_path / "wn"
    wn.mkdir()
    # Real data.noun lines (licence header lines start with two spaces).
    (wn / "data.noun").write_text(
        "  1 This software and database is being provided to you\n"
        "00001740 03 n 01 entity 0 003 ~ 00001930 n 0000 | that which is perceived or known or inferred to "
        "have its own distinct existence (living or nonliving)  \n"
        "02084071 05 n 02 dog 0 domestic_dog 0 000 | a member of the genus Canis; "
        '"the dog barked all night"  \n'
        "10114209 18 n 02 dog 1 frump 0 000 | a dull unattractive unpleasant girl or woman; "
        '"she got a reputation as a frump"; "she\'s a real dog"  \n',
        encoding="utf-8",
    )
    lexnames = sorted(WORDNET_COUNTS)
    (wn / "lexnames.5WN").write_text(
        "".join(f"{i:02d}\t{name}\t1\n" for i, name in enumerate(lexnames, start=3)), encoding="utf-8"
    )
    out = tmp_path / "out"
    script = ROOT / "scripts" / "derive_wordnet.py"
    subprocess.run([sys.executable, str(script), "--wordnet-dir", str(wn), "--out-dir", str(out)], check=True)
    with gzip.open(out / "wordnet_nouns.tsv.gz", "rt", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh, delimiter="\t"))
    assert [(r["category"], r["lemma"], r["gloss"]) for r in rows] == [
        ("noun.Tops", "entity", "that which is perceived or known or inferred to have its own distinct "
         "existence (living or nonliving)"),
        ("noun.animal", "dog", "a member of the genus Canis"),
        ("noun.person", "dog", "a dull unattractive unpleasant girl or woman"),
    ]  # fmt: skip


def test_wordnet_caps_and_validation_split_are_stratified_and_disjoint():
    data = load_dataset("wordnet", max_train=2000, max_test=500, seed=3)
    sizes = {k: len(v) for k, v in data.splits.items()}
    assert sizes == {"train": 1800, "val": 200, "test": 500}
    glosses = {k: {(r["word"], r["text"]) for r in v.inputs} for k, v in data.splits.items()}
    assert not glosses["train"] & glosses["val"]
    assert not glosses["train"] & glosses["test"]
    assert not glosses["val"] & glosses["test"]
    # The big categories keep their share (noun.artifact is 14.1% of WordNet nouns).
    share = np.mean(data.splits["train"].labels == data.class_names.index("noun.artifact"))
    assert abs(share - 11587 / 82115) < 0.01
    assert data.notes["val"].startswith("10% of train")
    again = load_dataset("wordnet", max_train=2000, max_test=500, seed=3)
    assert again.splits["val"].inputs == data.splits["val"].inputs


def test_digits_match_scikit_learn_and_get_a_test_and_validation_split():
    from sklearn.datasets import load_digits

    reference = load_digits()
    data = load_dataset("digits")
    sizes = {k: len(v) for k, v in data.splits.items()}
    assert sum(sizes.values()) == 1797
    assert sizes["test"] == round(0.2 * 1797)
    assert sizes["val"] == round(0.1 * (1797 - sizes["test"]))
    assert data.pixel_max == 16.0 and data.kind == "image"
    all_images = np.concatenate([s.inputs for s in data.splits.values()]).reshape(1797, -1)
    reference_rows = {row.tobytes() for row in reference.images.astype(np.uint8).reshape(1797, -1)}
    assert {row.tobytes() for row in all_images} == reference_rows


def test_fashion_mnist_subset_is_balanced_idx():
    data = load_dataset("fashion-mnist")
    assert data.class_names == list(FASHION_MNIST_CLASSES)
    assert data.splits["train"].inputs.shape[1:] == (28, 28)
    assert np.bincount(data.splits["test"].labels).tolist() == [50] * 10
    assert (
        np.bincount(np.concatenate([data.splits["train"].labels, data.splits["val"].labels])).tolist()
        == [200] * 10
    )


# ----------------------------------------------------------------------------- splitting


@settings(max_examples=60, deadline=None)
@given(
    counts=st.lists(st.integers(1, 40), min_size=2, max_size=8),
    fraction=st.floats(0.05, 0.6),
    seed=st.integers(0, 10),
)
def test_stratified_split_properties(counts, fraction, seed):
    labels = np.repeat(np.arange(len(counts)), counts)
    np.random.default_rng(seed).shuffle(labels)
    n_held = int(round(fraction * len(labels)))
    kept, held = stratified_split(labels, n_held, seed)
    assert sorted(np.concatenate([kept, held]).tolist()) == list(range(len(labels)))
    held_counts = np.bincount(labels[held], minlength=len(counts))
    kept_counts = np.bincount(labels[kept], minlength=len(counts))
    assert (kept_counts >= 1).all()  # no class loses its last example
    # Every class holds floor or ceil of its proportional share, unless `keep_one` caps a class below its
    # share: then only the capped classes fall short, and the others absorb the difference.
    quota = n_held * np.array(counts) / len(labels)
    capped = np.array(counts) - 1 < np.ceil(quota)
    if not capped.any():
        assert (held_counts >= np.floor(quota)).all()
        assert (held_counts <= np.ceil(quota)).all()
    else:
        assert (held_counts[~capped] >= np.floor(quota[~capped])).all()
        assert (held_counts[capped] <= np.array(counts)[capped] - 1).all()
    assert held.size == min(n_held, len(labels) - len(counts))
    assert np.array_equal(stratified_split(labels, n_held, seed)[1], held)


# ----------------------------------------------------------------------------- users' files


def _write_csv(path: Path, rows: list[dict], delimiter: str = ",") -> Path:
    with open(path, "w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]), delimiter=delimiter)
        writer.writeheader()
        writer.writerows(rows)
    return path


def _sentiment_rows(n: int) -> list[dict]:
    words = ["good", "great", "fine", "bad", "awful", "poor"]
    return [
        {"text": f"a {words[i % 6]} film number {i}", "label": "pos" if i % 6 < 3 else "neg"}
        for i in range(n)
    ]


def test_csv_single_file_gets_test_and_val_splits(tmp_path):
    data = load_dataset(_write_csv(tmp_path / "reviews.csv", _sentiment_rows(100)))
    assert data.name == "reviews" and data.kind == "text" and data.fields == ("text",)
    assert data.class_names == ["neg", "pos"]
    assert {k: len(v) for k, v in data.splits.items()} == {"train": 72, "val": 8, "test": 20}
    record, label = data.splits["train"].inputs[0], data.splits["train"].labels[0]
    assert data.class_names[label] == (
        "pos" if record["text"].split()[1] in ("good", "great", "fine") else "neg"
    )


def test_jsonl_split_folder_with_text_pairs_and_integer_labels(tmp_path):
    folder = tmp_path / "mrpc"
    folder.mkdir()
    for split, n in (("train", 40), ("dev", 10), ("test", 10)):
        with open(folder / f"{split}.jsonl", "w", encoding="utf-8") as fh:
            for i in range(n):
                fh.write(json.dumps({"idx": i, "text1": f"s{i}", "text2": f"t{i}", "label": i % 2}) + "\n")
    data = load_dataset(folder)
    assert data.fields == ("text1", "text2")  # `idx` is not a text field
    assert {k: len(v) for k, v in data.splits.items()} == {"train": 40, "val": 10, "test": 10}
    assert data.class_names == ["0", "1"]
    assert data.splits["val"].inputs[3] == {"text1": "s3", "text2": "t3"}
    assert data.splits["val"].labels[3] == 1


def test_json_float_and_int_labels_are_one_class(tmp_path):
    rows = [{"text": f"t{i}", "label": [0, 1.0, 1, 0.0][i % 4]} for i in range(40)]
    (tmp_path / "mixed.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert load_dataset(tmp_path / "mixed.jsonl").class_names == ["0", "1"]


def test_numeric_labels_sort_numerically(tmp_path):
    rows = [{"text": f"x{i}", "label": str(i % 11)} for i in range(220)]
    data = load_dataset(_write_csv(tmp_path / "eleven.tsv", rows, delimiter="\t"))
    assert data.class_names == [str(i) for i in range(11)]


def test_npz_vectors(tmp_path):
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(60, 5)).astype(np.float32), np.arange(60) % 3
    np.savez(tmp_path / "vectors.npz", features=x, labels=y)
    data = load_dataset(tmp_path / "vectors.npz")
    assert data.kind == "vector"
    rows = np.concatenate([s.inputs for s in data.splits.values()])
    assert sorted(map(bytes, rows)) == sorted(map(bytes, x))


def test_idx_reader_roundtrip_and_corruption(tmp_path):
    images = np.arange(3 * 4 * 5, dtype=np.uint8).reshape(3, 4, 5)
    header = struct.pack(">HBB", 0, 8, 3) + struct.pack(">3I", 3, 4, 5)
    (tmp_path / "a-idx3-ubyte").write_bytes(header + images.tobytes())
    assert np.array_equal(read_idx(tmp_path / "a-idx3-ubyte"), images)
    (tmp_path / "b-idx3-ubyte.gz").write_bytes(gzip.compress(header + images.tobytes()))
    assert np.array_equal(read_idx(tmp_path / "b-idx3-ubyte.gz"), images)
    (tmp_path / "c").write_bytes(header + images.tobytes()[:-1])
    with pytest.raises(NoisyLMError, match="truncated"):
        read_idx(tmp_path / "c")
    (tmp_path / "d").write_bytes(b"PK\x03\x04junk")
    with pytest.raises(NoisyLMError, match="not an IDX file"):
        read_idx(tmp_path / "d")


def test_idx_folder_of_full_style_files(tmp_path):
    rng = np.random.default_rng(0)
    for prefix, n in (("train", 50), ("t10k", 20)):
        images = rng.integers(0, 256, size=(n, 6, 6), dtype=np.uint8)
        labels = (np.arange(n) % 5).astype(np.uint8)
        for kind, array in (("images-idx3", images), ("labels-idx1", labels)):
            header = struct.pack(">HBB", 0, 8, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
            (tmp_path / f"{prefix}-{kind}-ubyte.gz").write_bytes(gzip.compress(header + array.tobytes()))
    data = load_dataset(tmp_path)
    assert {k: len(v) for k, v in data.splits.items()} == {"train": 45, "val": 5, "test": 20}
    assert data.class_names == ["0", "1", "2", "3", "4"]


def test_image_folder(tmp_path):
    from PIL import Image

    rng = np.random.default_rng(0)
    for split, n in (("train", 12), ("test", 4)):
        for name in ("cat", "dog"):
            (tmp_path / split / name).mkdir(parents=True)
            for i in range(n):
                pixels = rng.integers(0, 256, size=(9, 7, 3), dtype=np.uint8)
                Image.fromarray(pixels).save(tmp_path / split / name / f"{i}.png")
    data = load_dataset(tmp_path)
    assert data.class_names == ["cat", "dog"] and data.kind == "image"
    assert {k: len(v) for k, v in data.splits.items()} == {"train": 22, "val": 2, "test": 8}
    split = data.splits["test"]
    images = read_images(split.inputs, [0, 7])
    assert images[0].shape == (9, 7, 3)
    assert np.array_equal(images[1], np.asarray(Image.open(split.inputs[7]).convert("RGB")))


@pytest.mark.skipif(
    importlib.util.find_spec("datasets") is None, reason="needs the optional `datasets` package"
)
def test_hugging_face_dataset_saved_to_disk(tmp_path):
    import datasets

    features = datasets.Features(
        {"sentence": datasets.Value("string"), "label": datasets.ClassLabel(names=["negative", "positive"])}
    )
    rows = _sentiment_rows(60)
    parts = {
        split: datasets.Dataset.from_dict(
            {"sentence": [r["text"] for r in chunk], "label": [int(r["label"] == "pos") for r in chunk]},
            features=features,
        )
        for split, chunk in (("train", rows[:40]), ("validation", rows[40:50]), ("test", rows[50:]))
    }
    datasets.DatasetDict(parts).save_to_disk(str(tmp_path / "sst"))
    data = load_dataset(tmp_path / "sst")
    assert data.class_names == ["negative", "positive"]
    assert data.fields == ("sentence",)
    assert {k: len(v) for k, v in data.splits.items()} == {"train": 40, "val": 10, "test": 10}
    assert data.splits["val"].inputs[0]["sentence"] == rows[40]["text"]
    assert data.class_names[data.splits["val"].labels[0]] == (
        "positive" if rows[40]["label"] == "pos" else "negative"
    )


@pytest.mark.skipif(
    importlib.util.find_spec("datasets") is None, reason="needs the optional `datasets` package"
)
def test_hugging_face_image_dataset_saved_to_disk(tmp_path):
    import datasets
    from PIL import Image

    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, size=(45, 5, 4, 3), dtype=np.uint8)
    features = datasets.Features(
        {"img": datasets.Image(), "label": datasets.ClassLabel(names=["a", "b", "c"])}
    )
    images = [Image.fromarray(p) for p in pixels]
    datasets.Dataset.from_dict(
        {"img": images, "label": [i % 3 for i in range(45)]}, features=features
    ).save_to_disk(str(tmp_path / "imgs"))
    data = load_dataset(tmp_path / "imgs")
    assert data.kind == "image" and data.class_names == ["a", "b", "c"]
    assert {k: len(v) for k, v in data.splits.items()} == {"train": 32, "val": 4, "test": 9}
    rows = {bytes(x) for s in data.splits.values() for x in s.inputs}
    assert rows == {bytes(p) for p in pixels}


# ----------------------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    "rows, match",
    [
        ([{"text": "a", "y": "1"}, {"text": "b", "y": "0"}], "no 'label' field"),
        ([{"id": "1", "label": "1"}, {"id": "2", "label": "0"}], "no text field"),
        ([{"text": f"t{i}", "label": "same"} for i in range(50)], "single class"),
        ([{"text": f"t{i}", "label": str(i % 4)} for i in range(12)], "too small"),
        ([{"text": "a", "label": ""}, {"text": "b", "label": "1"}], "empty label"),
    ],
    ids=["missing-label", "missing-text", "single-class", "too-small", "empty-label"],
)
def test_bad_text_files_fail_with_one_clear_line(tmp_path, rows, match):
    path = _write_csv(tmp_path / "bad.csv", rows)
    with pytest.raises(NoisyLMError, match=match) as info:
        load_dataset(path)
    assert "\n" not in str(info.value)


def test_missing_requested_text_field(tmp_path):
    path = _write_csv(tmp_path / "pairs.csv", [{"s1": "a", "s2": "b", "label": "1"}] * 3)
    with pytest.raises(NoisyLMError, match="no text field 'sentence'"):
        load_dataset(path, text_fields=["sentence"])


def test_too_small_for_validation_split_names_the_fix(tmp_path):
    folder = tmp_path / "tiny"
    folder.mkdir()
    _write_csv(folder / "train.csv", [{"text": f"t{i}", "label": str(i % 3)} for i in range(20)])
    _write_csv(folder / "test.csv", [{"text": f"u{i}", "label": str(i % 3)} for i in range(6)])
    with pytest.raises(
        NoisyLMError,
        match=r"too small for a stratified 10% validation split: 20 training.*at least 30 training examples",
    ):
        load_dataset(folder)
    assert len(load_dataset(folder, val_fraction=0.2).splits["val"]) == 4


def test_nonexistent_path_and_unknown_format(tmp_path):
    with pytest.raises(NoisyLMError, match="not found"):
        load_dataset(tmp_path / "nope.csv")
    (tmp_path / "data.xlsx").write_bytes(b"x")
    with pytest.raises(NoisyLMError, match="use .csv, .tsv, .jsonl or .npz"):
        load_dataset(tmp_path / "data.xlsx")
    (tmp_path / "empty").mkdir()
    with pytest.raises(NoisyLMError, match="no images found"):
        load_dataset(tmp_path / "empty")


def test_caps_keep_rare_classes():
    labels = np.array([0] * 50 + [1] * 49 + [2])
    _, held = stratified_split(labels, 10, seed=0, keep_one=False)
    assert np.bincount(labels[held]).tolist() == [5, 5]  # proportional: class 2 (1%) rounds to 0
    _, held = stratified_split(labels, 99, seed=0, keep_one=False)
    assert np.bincount(labels[held]).tolist() == [49, 49, 1]  # largest remainders: 0.99, 0.51
    _, held = stratified_split(labels, 100, seed=0, keep_one=False)
    assert sorted(held.tolist()) == list(range(100))


def test_split_subset_keeps_pairs_aligned():
    split = Split([{"text": str(i)} for i in range(5)], np.arange(5))
    sub = split.subset(np.array([4, 1]))
    assert [r["text"] for r in sub.inputs] == ["4", "1"] and sub.labels.tolist() == [4, 1]
