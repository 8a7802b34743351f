"""Resume state: the ``<out_dir>.partial/`` folder a probe works in, and the finished runs it holds.

While it runs, the probe works in ``<out_dir>.partial/`` (a sibling folder with a fixed name, so it
survives a crash): ``probe.json`` (the settings and a fingerprint of every cache) and ``results.jsonl``,
which grows by one complete, flushed line per finished run. ``out_dir`` appears only at the end, built
atomically; ``<out_dir>.partial/`` is then removed. After a crash or Ctrl-C, ``resume=True`` with the
same settings and caches reuses the finished runs (matched by their full spec) and trains the rest;
training is seeded, so the numbers equal those of an uninterrupted probe.
"""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch

from noisylm.artifacts import (
    atomic_dir,
    atomic_write_json,
    atomic_write_text,
    first_difference,
    provenance,
    read_json,
    read_jsonl,
)
from noisylm.errors import NoisyLMError
from noisylm.probing.protocol.config import ProbeConfig
from noisylm.probing.protocol.data import ProbeData, cache_fingerprint

PARTIAL_FORMAT = "noisylm-probe-partial/2"  # /2: runs also keyed by gamma_scale, feature_noise, C
# What identifies a finished run in the progress file; resume reuses a run only on an exact match.
# Phases: select, final, paired, sensitivity (heads), logreg-select, logreg (the logistic regression).
SPEC_FIELDS = (
    "phase", "backbone", "dataset", "head", "loss", "lr", "batch_size", "gamma", "lam", "seed", "epochs",
    "anchor_weight", "init_head", "gamma_scale", "feature_noise", "C",
)  # fmt: skip


def partial_dir(out_dir: str | Path) -> Path:
    """Where a probe into ``out_dir`` keeps its state while it runs: the sibling ``<out_dir>.partial/``.

    Its name is fixed (unlike `atomic_dir`'s random temporary name), so a crashed probe's finished runs
    can be found again by ``probe(..., resume=True)``."""
    out = Path(out_dir)
    if not out.name:  # "." or "dir/": name the folder after the real directory
        out = out.resolve()
    return out.with_name(out.name + ".partial")


def probe_state(
    config: ProbeConfig, device: torch.device, datasets: list[ProbeData], init_sha256: str | None
) -> dict[str, Any]:
    """What must not change between a probe and its resumption: settings, device, cache contents."""
    # The bar and the number of worker processes change no number: a probe may resume with other ones.
    settings = {k: v for k, v in asdict(config).items() if k not in ("progress", "jobs")}
    return {
        "format": PARTIAL_FORMAT,
        "config": json.loads(json.dumps(settings)),  # tuples as lists, as read back from probe.json
        "device": str(device),
        "init_head_sha256": init_sha256,
        "caches": [
            {"source": d.source, "backbone": d.backbone, "dataset": d.dataset, "sha256": cache_fingerprint(d)}
            for d in datasets
        ],
    }


def check_resumable(out_dir: str | Path, partial: Path, *, resume: bool, overwrite: bool, what: str) -> None:
    """Refuse ``--resume`` when ``out_dir`` is a finished result (no ``partial`` beside it): there is
    nothing to resume. ``what`` names the job in the message ("probe", "fine-tuning")."""
    if resume and not overwrite and Path(out_dir).exists() and not partial.exists():
        raise NoisyLMError(
            f"output {out_dir} already exists and holds no interrupted {what} ({partial} is absent), so "
            "there is nothing to resume; pass --overwrite to run it again"
        )


def claim_partial(partial: Path, state: dict[str, Any], *, resume: bool, overwrite: bool) -> list[dict]:
    """Start ``partial`` afresh, or (``resume``) check it against ``state`` and return its finished runs."""
    if partial.exists() and not partial.is_dir():
        raise NoisyLMError(f"{partial} is a file, not a probe in progress; move it away")
    if partial.exists() and resume:
        previous = read_json(partial / "probe.json", "state of the interrupted probe")
        differs = _state_difference(previous, state)
        if differs:
            raise NoisyLMError(
                f"{partial} holds a probe started with different settings ({differs}); resume it with the "
                "same settings and caches, or drop --resume and pass --overwrite to start again"
            )
        finished = [r for r in read_jsonl(partial / "results.jsonl") if r.get("phase") != "figure6"]
        # Rewritten without a torn last line (a kill mid-write), so that appended lines stay whole.
        atomic_write_text(partial / "results.jsonl", "".join(json.dumps(r) + "\n" for r in finished))
        return finished
    if partial.exists() and not overwrite:
        raise NoisyLMError(
            f"{partial} holds an interrupted probe; pass --resume to continue it (same settings), "
            "or --overwrite to discard it and start again"
        )
    with atomic_dir(partial, overwrite=True) as tmp:
        atomic_write_json(tmp / "probe.json", {**state, "provenance": provenance(state["config"])})
        atomic_write_text(tmp / "results.jsonl", "")
    return []


def _state_difference(old: dict[str, Any], new: dict[str, Any]) -> str:
    """The first difference that changes results between two probe states ('' when none)."""
    if old.get("format") != new["format"]:
        return f"format {old.get('format')!r}, expected {new['format']!r}"
    differs = first_difference(old.get("config") or {}, new["config"])
    if differs:
        return differs
    for key in ("device", "init_head_sha256"):
        if old.get(key) != new[key]:
            return f"{key}: {old.get(key)!r} -> {new[key]!r}"
    old_caches, new_caches = old.get("caches") or [], new["caches"]
    if len(old_caches) != len(new_caches):
        return f"{len(old_caches)} caches -> {len(new_caches)}"
    for i, (a, b) in enumerate(zip(old_caches, new_caches, strict=True), 1):
        if a.get("sha256") != b["sha256"]:
            return f"cache {i} ({b['source']}) holds other features than {a.get('source')} did"
    return ""


def spec_key(record: dict[str, Any]) -> tuple:
    return tuple(record.get(name) for name in SPEC_FIELDS)
