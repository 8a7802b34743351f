"""Reading a sweep directory (`noisylm.theory.runs.load_sweep`) on a hand-built one."""

from __future__ import annotations

import json

import pytest

from noisylm.errors import NoisyLMError
from noisylm.theory.runs import load_sweep


def _sweep(root, runs: list[dict], clean_run: str | None = "clean", checkpoints: dict | None = None):
    """sweep.json, a manifest per noisy data folder and empty ckpt-* folders (what load_sweep reads)."""
    root.mkdir(parents=True, exist_ok=True)
    meta = {"format": "noisylm-sweep/1", "name": "t", "config": {}, "runs": runs, "clean_run": clean_run}
    (root / "sweep.json").write_text(json.dumps(meta))
    for entry in runs:
        data = root / entry["data"]
        data.mkdir(parents=True, exist_ok=True)
        if entry["kind"] is not None:
            noise = {"alpha_achieved": entry["alpha"] * 1.01}
            (data / "manifest.json").write_text(json.dumps({"noise": noise}))
        for it in (checkpoints or {}).get(entry["name"], []):
            (root / entry["run_dir"] / "checkpoints" / f"ckpt-{it:07d}").mkdir(parents=True)
    return root


def _entry(name: str, kind: str | None, alpha: float) -> dict:
    return {
        "name": name,
        "kind": kind,
        "alpha": alpha,
        "data": f"data/{name}",
        "run_dir": f"runs/{name}",
        "train_config": f"configs/{name}.json",
    }


def test_load_sweep_reads_runs_alpha_and_checkpoints(tmp_path):
    runs = [
        _entry("clean", None, 0.0),
        _entry("uniform-a0.2", "uniform", 0.2),
        _entry("gauss", "gaussian", 0.05),
    ]
    runs[1]["params"] = {"vocab_range": [0, 256]}
    root = _sweep(tmp_path / "s", runs, checkpoints={"clean": [10, 20], "uniform-a0.2": [20, 10, 30]})
    meta, clean, noisy = load_sweep(root)
    assert meta["clean_run"] == "clean" and clean.name == "clean" and clean.kind is None
    assert sorted(clean.checkpoints) == [10, 20]
    (run,) = noisy  # "gauss" has no checkpoint yet
    assert run.name == "uniform-a0.2" and run.alpha == pytest.approx(0.202)  # the achieved α
    assert run.params == {"vocab_range": [0, 256]} and run.data == root / "data" / "uniform-a0.2"
    assert {it: p.name for it, p in run.checkpoints.items()} == {
        10: "ckpt-0000010",
        20: "ckpt-0000020",
        30: "ckpt-0000030",
    }


def test_load_sweep_errors(tmp_path):
    with pytest.raises(NoisyLMError, match="not a sweep directory"):
        load_sweep(tmp_path)
    runs = [_entry("clean", None, 0.0), _entry("u", "uniform", 0.2)]
    with pytest.raises(NoisyLMError, match="no clean run"):
        load_sweep(_sweep(tmp_path / "a", runs, clean_run=None))
    with pytest.raises(NoisyLMError, match="clean run .* has no checkpoint"):
        load_sweep(_sweep(tmp_path / "b", runs))
    with pytest.raises(NoisyLMError, match="no noisy run .* has a checkpoint"):
        load_sweep(_sweep(tmp_path / "c", runs, checkpoints={"clean": [10]}))


def test_load_sweep_keeps_replicate_0_whose_clean_run_is_h_star(tmp_path):
    """With replicates, Prop. 1's h* (the clean run of seed s) pairs with the noisy runs of seed s:
    theory reads replicate 0, not the other replicates' runs as extra noisy runs."""
    runs = [
        _entry("clean", None, 0.0),
        _entry("u", "uniform", 0.2),
        {**_entry("clean-r1", None, 0.0), "replicate": 1},
        {**_entry("u-r1", "uniform", 0.2), "replicate": 1},
    ]
    ckpts = {name: [10] for name in ("clean", "u", "clean-r1", "u-r1")}
    _, clean, noisy = load_sweep(_sweep(tmp_path / "s", runs, checkpoints=ckpts))
    assert clean.name == "clean" and [r.name for r in noisy] == ["u"]
