"""Stage 1, text to token shards: where every token comes from.

`corpora` (bundled texts, input files) → `tokenizers` (GPT-2 BPE, bytes) → `preparation`
(`prepare`: streaming, multiprocess tokenization into shards) → `shards` (`ShardSet`: the manifest,
reading, verification) → `noise` (the samplers: uniform, boosted, gaussian, histogram, mojibake, corpus)
→ `injection` (`inject`: noise into a shard set at proportion α) and `statistics` (`stats`: token
priors, Fig. 8; the counts are `ShardSet.token_counts`, the entropy `entropy_nats`).
"""

# Eager on purpose: with a lazy __getattr__, importing a submodule would set the package attribute of
# that name first. Modules are also named unlike the functions they export (`preparation` -> `prepare`).

from noisylm.data.corpora import BUNDLED, bundled_corpora, bundled_corpus, iter_documents
from noisylm.data.injection import InjectConfig, inject
from noisylm.data.noise import NOISE_KINDS, generate_noise, make_sampler
from noisylm.data.preparation import PrepareConfig, merge, prepare
from noisylm.data.shards import MANIFEST, ShardSet, entropy_nats, verify
from noisylm.data.statistics import stats
from noisylm.data.tokenizers import TOKENIZERS, get_tokenizer

__all__ = [
    "bundled_corpus",
    "bundled_corpora",
    "iter_documents",
    "BUNDLED",
    "get_tokenizer",
    "TOKENIZERS",
    "PrepareConfig",
    "prepare",
    "merge",
    "ShardSet",
    "verify",
    "MANIFEST",
    "generate_noise",
    "make_sampler",
    "NOISE_KINDS",
    "InjectConfig",
    "inject",
    "stats",
    "entropy_nats",
]
