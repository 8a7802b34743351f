"""`noisylm theory`: Proposition 1 and Lemma 1 of the paper against a sweep's runs."""

from __future__ import annotations

import argparse

from noisylm.cli import HelpFormatter


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "theory",
        help="confront Proposition 1 / Lemma 1 with a sweep: k over training, predicted vs measured",
        description="Write SWEEP_DIR/report/theory/ and add it to the report's index.html:\n"
        "  Fig. 7(a)  k over training, from the clean run (h*) and each noisy run (h) evaluated on the\n"
        "             same windows at every iteration where both kept a checkpoint (Eqs. 11-13)\n"
        "  Fig. 7(b)  L(P^m,h) against epsilon at each run's alpha, p_c, p_n and k\n"
        "  Fig. 9     the multilingual reading (alpha=0.55, k=1, L(P^c,h*)=2.9, L(P^n,h*)=2.8)\n"
        "  table      predicted (Prop. 1, k from an early checkpoint or --k) vs measured clean-loss\n"
        "             increase per run, and whether the measurement is inside the bound\n"
        "  Lemma 1    loss on windows of the real mixed shards vs alpha*L(P^n,h) + (1-alpha)*L(P^c,h),\n"
        "             for append and interleave placements, with the gap split by boundary-crossing\n"
        "             contexts.\n"
        "Every number is also in theory.json. Fig. 7(a) has one point per checkpoint both runs kept:\n"
        "sweep with e.g. --set train.keep_checkpoints=20 --set train.checkpoint_interval=50 for a curve.",
        epilog="examples:\n"
        "  noisylm theory sweeps/demo\n"
        "  noisylm theory sweeps/owt --k 1000 --device cuda\n"
        "  noisylm theory sweeps/owt --k-iter 10000 --eval-windows 256",
        formatter_class=HelpFormatter,
    )
    parser.add_argument("sweep_dir", help="a directory written by `noisylm sweep` (with a clean run)")
    parser.add_argument(
        "--k", type=float, default=None, help="use this k for every run instead of estimating it"
    )
    parser.add_argument(
        "--k-iter",
        type=int,
        default=None,
        help="estimate k at this iteration (default: earliest where defined)",
    )
    parser.add_argument("--eval-windows", type=int, default=64, help="windows per eval set and checkpoint")
    parser.add_argument(
        "--lemma1-windows", type=int, default=64, help="windows of the mixed shards for Lemma 1"
    )
    parser.add_argument(
        "--lemma1-max-tokens",
        type=int,
        default=50_000_000,
        help="re-inject the other placement for Lemma 1 only for clean corpora up to this many tokens",
    )
    parser.add_argument("--batch-size", type=int, default=16, help="windows per forward pass")
    parser.add_argument("--device", default="cpu", help="torch device: cpu, cuda, cuda:N, mps")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: PyTorch's)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the window choice")
    parser.set_defaults(handler=_theory)


def _theory(args: argparse.Namespace) -> int:
    from noisylm.artifacts import read_json
    from noisylm.theory import TheoryConfig, theory

    config = TheoryConfig(
        k=args.k,
        k_iter=args.k_iter,
        eval_windows=args.eval_windows,
        lemma1_windows=args.lemma1_windows,
        lemma1_max_tokens=args.lemma1_max_tokens,
        batch_size=args.batch_size,
        device=args.device,
        threads=args.threads,
        seed=args.seed,
    )
    folder = theory(args.sweep_dir, config)
    result = read_json(folder / "theory.json", "theory results")
    for row in result["predicted_vs_measured"]:
        if "statement" in row:
            inside = "inside" if row["inside_bound"] else "OUTSIDE"
            print(
                f"{row['run']}: k={row['k']:.3g} statement ({row['statement']}), predicted increase <= "
                f"{row['predicted_increase_bound']:.4g}, measured {row['measured_increase']:+.4g} ({inside})"
            )
        else:
            print(f"{row['run']}: {row.get('note', 'no prediction')}")
    for row in result["lemma1"]:
        print(
            f"Lemma 1 {row['run']} ({row['placement']}): measured {row['measured_mixed_loss']:.4f}, "
            f"predicted {row['lemma1_prediction']:.4f}, gap {row['gap']:+.4f}"
        )
    print(f"wrote {folder} and {folder.parent / 'index.html'}")
    return 0
