"""LGM benchmarks, each against plain cross-entropy measured in the same run on the same data.

(a) Training-step time with CE + λ·L_gm over the plain CE step, same batch, same head, same optimiser
    (the probe's: Adam, fused where torch has it), one step = zero_grad + loss + backward +
    optimizer.step on a batch sliced from a feature matrix (as in `noisylm probe`). Targets: linear
    heads (B=32, d=768, C=20) and (B=32, d=4096, C=2) <= 1.5x; MLP head (B=32, d=768, C=20) <= 2.5x.
    Reported per LGM method: the default (the fused hand-derived paths of linear and MLP heads) and
    plain double backward (`method="autograd"`, the generic path) for reference, plus the cost of
    drawing δ alone. Rounds interleave all methods; the ratio is the median over rounds of
    (method / CE) of that round, robust to load drift.
(b) Wall time of a full `noisylm probe` grid (preset nlu: 10 epochs, lr {3e-4, 6e-4} x batch
    {8, 12, 16, 32}, then 5 seeds; linear and MLP heads) with losses=ce vs losses=lgm on real MiniLM
    features of the WordNet task (extracted once into a temporary folder, or --cache DIR); with
    --jobs N also the lgm grid trained N runs at a time (`probe --jobs N`), against --jobs 1.

usage: python benchmarks/bench_lgm.py [--only a,b] [--threads 1] [--rounds 30] [--max-train 1000]
       [--cache DIR] [--jobs N]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from noisylm.probing.heads import make_head
from noisylm.probing.lgm import LGMLoss
from noisylm.probing.protocol import ProbeConfig, make_optimizer

STEP_CASES = [("linear", 32, 768, 20), ("linear", 32, 4096, 2), ("mlp", 32, 768, 20)]
TARGETS = {"linear": 1.5, "mlp": 2.5}


def step_ratios(rounds: int, steps_per_round: int) -> list[dict]:
    rows = []
    for kind, batch, dim, classes in STEP_CASES:
        times = _time_case(kind, batch, dim, classes, rounds, steps_per_round)
        for name, values in times.items():
            ratios = [v / c for v, c in zip(values, times["ce"], strict=True)]
            rows.append(
                {
                    "head": kind,
                    "shape": f"B={batch} d={dim} C={classes}",
                    "method": name,
                    "us_per_step": statistics.median(values) * 1e6,
                    "ratio": statistics.median(ratios),
                    "target": TARGETS[kind] if name == "lgm (default)" else None,
                }
            )
    return rows


def _time_case(kind: str, batch: int, dim: int, classes: int, rounds: int, steps: int) -> dict[str, list]:
    torch.manual_seed(0)
    # As in `noisylm probe`: an epoch's shuffled copy of the features, batches are slices of it, and
    # the probe's optimiser (Adam, fused where torch has it).
    features = torch.randn(4096, dim)
    labels = torch.randint(0, classes, (4096,))
    head = make_head(kind, dim, classes)
    optimizer = make_optimizer(ProbeConfig(preset="nlu").recipe(kind), list(head.parameters()), 1e-3)
    noise = torch.empty(batch, dim)

    def ce_step():
        x, y = features[:batch], labels[:batch]
        optimizer.zero_grad(set_to_none=True)
        F.cross_entropy(head(x), y).backward()
        optimizer.step()

    def make_lgm_step(criterion):
        def step():
            x, y = features[:batch], labels[:batch]
            optimizer.zero_grad(set_to_none=True)
            criterion(x, y).backward()
            optimizer.step()

        return step

    methods = {
        "ce": ce_step,
        "draw δ only": noise.normal_,
        "lgm (default)": make_lgm_step(LGMLoss(head)),
        "lgm double backward": make_lgm_step(LGMLoss(head, method="autograd")),
    }
    times: dict[str, list] = {name: [] for name in methods}
    for _ in range(rounds):
        for name, fn in methods.items():
            for _ in range(3):  # warm
                fn()
            start = time.perf_counter()
            for _ in range(steps):
                fn()
            times[name].append((time.perf_counter() - start) / steps)
    return times


def probe_wall_time(max_train: int, cache: Path | None, jobs: int) -> list[dict]:
    from noisylm.probing.features import extract
    from noisylm.probing.protocol import ProbeConfig, probe

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        if cache is None:
            cache = Path(tmp) / "wordnet-minilm"
            start = time.perf_counter()
            extract(
                "minilm", "wordnet", cache, max_train=max_train, max_test=500, progress=False, device="cpu"
            )
            took = time.perf_counter() - start
            print(f"extracted MiniLM features of {max_train} WordNet glosses in {took:.0f} s")
        settings = [("ce", 1), ("lgm", 1)] + ([("lgm", jobs)] if jobs > 1 else [])
        for loss, n_jobs in settings:
            config = ProbeConfig(
                losses=(loss,),
                preset="nlu",
                seeds=5,
                figure6=False,
                device="cpu",
                progress=False,
                jobs=n_jobs,
            )
            start = time.perf_counter()
            summary = probe([cache], Path(tmp) / f"probe-{loss}-{n_jobs}", config)
            wall = time.perf_counter() - start
            accs = {r["head"]: f"{r['mean']:.2f} ± {r['std']:.2f}" for r in summary["rows"]}
            rows.append({"losses": loss, "jobs": n_jobs, "seconds": wall, "test_acc": accs})
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--only", default="a,b")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (probe's default is 1)")
    parser.add_argument("--rounds", type=int, default=30)
    parser.add_argument("--steps", type=int, default=20, help="steps per method per round")
    parser.add_argument("--max-train", type=int, default=1000, help="WordNet training examples for (b)")
    parser.add_argument("--cache", type=Path, default=None, help="an existing MiniLM WordNet cache for (b)")
    parser.add_argument("--jobs", type=int, default=1, help="(b): also the lgm grid with `probe --jobs N`")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    parts = set(args.only.split(","))
    print(f"torch {torch.__version__}, {torch.get_num_threads()} thread(s)")
    if "a" in parts:
        print("\n(a) training-step time, LGM over plain CE (same batch, same run)")
        print("| head | shape | method | µs/step | ratio to CE | target |\n|---|---|---|---|---|---|")
        for r in step_ratios(args.rounds, args.steps):
            target = f"<= {r['target']}x" if r["target"] else ""
            print(
                f"| {r['head']} | {r['shape']} | {r['method']} | {r['us_per_step']:.0f} | "
                f"{r['ratio']:.2f}x | {target} |"
            )
    if "b" in parts:
        print("\n(b) full probe grid (nlu preset, 8 grid points + 5 seeds, linear + MLP), MiniLM WordNet")
        rows = probe_wall_time(args.max_train, args.cache, args.jobs)
        print("| losses | --jobs | wall time (s) | test accuracy (linear / mlp) |\n|---|---|---|---|")
        for r in rows:
            accs = r["test_acc"]
            print(
                f"| {r['losses']} | {r['jobs']} | {r['seconds']:.1f} | "
                f"{accs.get('linear')} / {accs.get('mlp')} |"
            )
        print(f"ratio lgm / ce: {rows[1]['seconds'] / rows[0]['seconds']:.2f}x")
        if len(rows) > 2:
            print(
                f"lgm with --jobs {args.jobs}: "
                f"{rows[1]['seconds'] / rows[2]['seconds']:.2f}x faster than --jobs 1"
            )


if __name__ == "__main__":
    main()
