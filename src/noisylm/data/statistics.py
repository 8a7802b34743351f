"""Token counts and token priors of a shard set (`noisylm stats`), the paper's Fig. 8.

The prior of a token sequence is the share of each id among its tokens. For a noisy set the clean
training prior is counted over train.bin minus the noise spans (train counts − noise.bin counts),
so (a) clean data, (b) noise and (c) validation can be compared as in Fig. 8. Counting streams the
memmaps in chunks (bounded memory).

Writes to ``out`` (default ``DIR/stats``): ``token_priors.png``, ``stats.md`` (a table) and
``stats.json`` (tokens, documents = end-of-text ids, distinct ids, entropy in nats, top ids with their
text, noise record summary). Counting is `ShardSet.token_counts`, the entropy `shards.entropy_nats`.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from noisylm.artifacts import atomic_dir, atomic_write_json, atomic_write_text, provenance
from noisylm.data.shards import ShardSet, entropy_nats
from noisylm.plotting import save_png

TOP_K = 8


def stats(dir: str | os.PathLike, out: str | os.PathLike | None = None) -> dict[str, Any]:
    """Count, tabulate and plot the token priors of the shard set at ``dir``.

    Returns {"splits": {...}, "noise": {...} | None, "table": markdown, "figure": png path, "json": path}.
    """

    shards = ShardSet.open(dir)
    out = Path(out) if out is not None else shards.path / "stats"
    tokenizer = shards.load_tokenizer()

    priors: dict[str, np.ndarray] = {}
    train = shards.token_counts("train")
    if shards.has("noise"):
        priors["noise"] = shards.token_counts("noise")
        priors["train (clean)"] = train - priors["noise"]
    else:
        priors["train"] = train
    priors["val"] = shards.token_counts("val")
    priors = {k: priors[k] for k in ("train", "train (clean)", "noise", "val") if k in priors}

    summary: dict[str, Any] = {}
    for name, counts in priors.items():
        total = int(counts.sum())
        top = np.argsort(-counts, kind="stable")[:TOP_K]
        summary[name] = {
            "tokens": total,
            "distinct_ids": int(np.count_nonzero(counts)),
            "entropy_nats": round(entropy_nats(counts), 4),
            "top": [
                {
                    "id": int(i),
                    "share": round(float(counts[i] / max(total, 1)), 6),
                    "text": tokenizer.decode([i]),
                }
                for i in top
                if counts[i] > 0
            ],
        }
    for name, counts in priors.items():  # documents = end-of-text ids, as in the manifest
        summary[name]["documents"] = int(counts[shards.eot_id])
    noise = shards.noise
    noise_summary = (
        {k: noise[k] for k in ("kind", "placement", "alpha_requested", "alpha_achieved", "seed")}
        | {"spans": len(shards.noise_spans())}
        if noise
        else None
    )
    table = _table(shards, summary, noise_summary)

    with atomic_dir(out, overwrite=True) as tmp:
        _plot(shards, priors, tmp / "token_priors.png")
        atomic_write_text(tmp / "stats.md", table + "\n")
        atomic_write_json(
            tmp / "stats.json",
            {
                "shards": str(shards.path),
                "splits": summary,
                "noise": noise_summary,
                "provenance": provenance(),
            },
        )
    return {
        "splits": summary,
        "noise": noise_summary,
        "table": table,
        "figure": out / "token_priors.png",
        "json": out / "stats.json",
    }


def _table(shards: ShardSet, summary: dict[str, Any], noise: dict[str, Any] | None) -> str:
    lines = [
        f"Shard set `{shards.path}` (tokenizer {shards.tokenizer}, vocab {shards.vocab_size})",
        "",
        "| tokens of | tokens | documents | distinct ids | entropy (nats) | most frequent ids (share) |",
        "|---|---:|---:|---:|---:|---|",
    ]
    for name, s in summary.items():
        top = ", ".join(f"{t['id']} {t['text']!r} ({t['share']:.2%})" for t in s["top"][:4])
        top = top.replace("|", "\\|")
        docs = s["documents"]
        lines.append(
            f"| {name} | {s['tokens']:,} | {docs:,} | {s['distinct_ids']:,} "
            f"| {s['entropy_nats']:.3f} | {top} |"
        )
    if noise:
        lines += [
            "",
            f"Noise: {noise['kind']}, {noise['placement']}, seed {noise['seed']}, α requested "
            f"{noise['alpha_requested']}, achieved {noise['alpha_achieved']:.6f}, {noise['spans']} span(s).",
        ]
    return "\n".join(lines)


def _plot(shards: ShardSet, priors: dict[str, np.ndarray], path: Path) -> None:
    from matplotlib.figure import Figure  # no pyplot: no global backend state

    fig = Figure(figsize=(4.2 * len(priors), 3.2), layout="constrained")
    axes = fig.subplots(1, len(priors), squeeze=False)[0]
    ids = np.arange(shards.vocab_size)
    for letter, ax, (name, counts) in zip("abcd", axes, priors.items(), strict=False):
        total = counts.sum()
        p = counts / total if total else counts.astype(float)
        ax.plot(ids, p, lw=0.6, color="tab:blue")
        ax.set_title(f"({letter}) {name}")
        ax.set_xlabel("token id")
        ax.set_xlim(0, shards.vocab_size)
        ax.set_ylim(bottom=0)
        ax.ticklabel_format(axis="y", style="sci", scilimits=(-2, 2))
    axes[0].set_ylabel("prior probability")
    fig.suptitle(f"Token priors ({shards.tokenizer}, V = {shards.vocab_size})", fontsize=10)
    save_png(fig, path, dpi=120)
