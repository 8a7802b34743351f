"""`noisylm probe`: train linear/MLP heads on cached features, CE vs CE + LGM, paper-style tables."""

from __future__ import annotations

import argparse
import sys

from noisylm.cli import HelpFormatter

EPILOG = """\
presets (App. E; --epochs/--lr/--batch-size override them):
  nlu      Adam, 10 epochs, lr in {3e-4, 6e-4}, batch in {8, 12, 16, 32}, chosen on validation
  vision   AdamW, 30 epochs, cosine schedule; linear lr 0.1 no weight decay, MLP lr 1e-3 wd 1e-4, batch 128
  quick    Adam, 8 epochs, lr in {1e-3, 3e-3}, batch 32 (demos)
  study    nlu's recipe with 8 seeds (the others default to 5): enough for the paired sign-flip test

losses: ce (plain cross-entropy), lgm (CE + lambda * L_gm, Eq. 6), and the ablations norm (||grad||),
  cosine (1 - cos of the two gradients), l2-output (||g(t) - g(t_hat)||, the conventional regulariser).

writes OUT/: probe.json, results.jsonl (one line per training run), summary.json, table_main.md/.csv
  (Tables 1-3 layout, with a logistic-regression reference row), table_paired.md/.csv (each penalised
  loss minus CE, paired by seed), table_ablation.md/.csv (Table 5, with ablation losses),
  table_sensitivity.md/.csv (Table 6, with --sensitivity), table_feature_noise.md/.csv and
  feature_noise.png (with several --feature-noise values), figure6.png (Figure 6).

paired comparison: seed s of every loss starts from the same head weights and sees the training
  examples in the same order. Each penalised loss is also trained at CE's selected lr and batch size
  (phase "paired"; its gamma scale, gamma and lambda chosen on validation there), so that it differs
  from CE only by the penalty. The per-seed difference to CE is reported as mean [95% t-interval],
  "(within noise)" when the interval contains 0, and an exact sign-flip p-value from 6 seeds on.

gamma scale: --gamma-scale absolute reads gamma as in Eq. 3 (t_hat = t + gamma * delta);
  feature-std scales delta per dimension by the training split's std, so that one gamma is the same
  relative perturbation on features of any scale. Several values are searched on validation with gamma.

feature noise: --feature-noise 0,0.5,1 runs the whole probe at each sigma on the features plus Gaussian
  noise of std sigma x the training split's per-dimension std, drawn once per example of every split
  (--feature-noise-seed), the same for every loss and seed: a simulated noisier backbone.

progress and resume: while it runs, the probe works in OUT.partial/; its results.jsonl gains one line
  per finished run (`tail -f` it). OUT appears only when everything is done, and OUT.partial/ is then
  removed. After a crash or Ctrl-C, run the same command with --resume: finished runs are reused, not
  retrained, and the numbers equal those of an uninterrupted probe. A different config or cache is
  refused; --overwrite without --resume discards OUT.partial/ and starts again. --jobs may differ
  between a probe and its --resume.

parallel runs: --jobs N trains up to N runs of each phase at once (all selection runs, then all final
  runs, then all Table 6 runs; Figure 6 last, in the main process), each in its own worker process
  with --threads threads that loads every cache once. The numbers, tables and results.jsonl equal
  those of --jobs 1 (but for the seconds fields).

Head anchoring (L2-SP on the head only; Table 4 proper is `noisylm finetune`): --anchor-weight A
  adds (A/2)||theta - theta_0||^2 to every loss (ce included),
  theta_0 = the head's initial weights: its seeded random init, or --init-head FILE.safetensors (a
  state_dict saved with safetensors.torch.save_file; keys weight, bias for linear heads and
  fc1.weight, fc1.bias, fc2.weight, fc2.bias for mlp heads; one head kind per file).

examples:
  noisylm probe feats/wn-minilm --out probes/wn
  noisylm probe feats/a feats/b --heads linear --losses ce lgm norm cosine --seeds 5 --out probes/ablation
  noisylm probe feats/dtd-effnet --preset vision --sensitivity paper --out probes/t6
  noisylm probe feats/wn-minilm --heads linear --init-head h0.safetensors --anchor-weight 0.01 --out l2sp
  noisylm probe feats/wn-minilm --select-seeds 3 --out probes/wn --resume     # after a crash
  noisylm probe feats/wn-minilm --jobs 4 --threads 1 --out probes/wn          # 4 runs at once on 4 cores
  noisylm probe feats/wn-minilm --preset study --gamma-scale absolute feature-std --out probes/study
  noisylm probe feats/wn-minilm --losses ce l2-output lgm --feature-noise 0,0.5,1,2 --out probes/noise
"""


def _pair(text: str) -> tuple[float, float] | None:
    if text == "paper":
        return None  # Table 6's pairs, filled in by run_probe
    try:
        gamma, lam = text.split(":")
        return float(gamma), float(lam)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected GAMMA:LAMBDA such as 0.05:0.05, got {text!r}") from None


def _sigmas(text: str) -> tuple[str, ...]:
    # Checked by ProbeConfig, which names a bad value in one line.
    return tuple(x.strip() for x in text.split(",") if x.strip())


# Options that set a ProbeConfig field (dest -> field): their help is the field's doc, read when help is
# shown (ProbeConfig's module loads torch, which building the `noisylm` parser must not), plus what
# the command line writes differently.
FIELD_OPTIONS = {
    "heads": ("heads", ""),
    "losses": ("losses", ""),
    "preset": ("preset", ""),
    "epochs": ("epochs", ""),
    "lr": ("lrs", ""),
    "batch_size": ("batch_sizes", ""),
    "gamma": ("gammas", ""),
    "lam": ("lams", ""),
    "gamma_scale": ("gamma_scales", ""),
    "seeds": ("seeds", ""),
    "select_seeds": ("select_seeds", ""),
    "anchor_weight": ("anchor_weight", ""),
    "init_head": ("init_head", ""),
    "sensitivity": ("sensitivity", "; G:L pairs, or `paper` for its three"),
    "feature_noise": ("feature_noise", "; comma-separated, e.g. 0,0.5,1"),
    "feature_noise_seed": ("feature_noise_seed", ""),
    "device": ("device", ""),
    "threads": ("threads", " (0 on the command line)"),
    "jobs": ("jobs", ""),
}


class _ProbeParser(argparse.ArgumentParser):
    """`noisylm probe`'s parser: the help of each --FIELD option is ProbeConfig's doc of that field."""

    def format_help(self) -> str:
        import dataclasses

        from noisylm.configs.fields import doc_of
        from noisylm.probing.protocol.config import ProbeConfig

        docs = {f.name: doc_of(f) for f in dataclasses.fields(ProbeConfig)}
        for action in self._actions:
            if action.dest in FIELD_OPTIONS:
                name, extra = FIELD_OPTIONS[action.dest]
                action.help = (docs[name] + extra).replace("`", "").replace("%", "%%")
        return super().format_help()


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "probe",
        help="train heads on cached features: CE vs CE + LGM, grid search, seeds, tables, Figure 6",
        description="Probe frozen features with linear/MLP heads (Sec. 4.3, App. E): grid search on the\n"
        "validation split, then N seeds at the selected setting; test accuracy as mean ± std.",
        epilog=EPILOG,
        formatter_class=HelpFormatter,
    )
    parser.__class__ = _ProbeParser  # add_parser cannot take a parser class per subcommand
    parser.add_argument("caches", nargs="+", help="feature cache folders made by `noisylm extract`")
    parser.add_argument("--out", required=True, help="output folder")
    parser.add_argument("--heads", nargs="+", default=["linear", "mlp"], help="linear and/or mlp")
    parser.add_argument("--losses", nargs="+", default=["ce", "lgm"], help="ce, lgm, norm, cosine, l2-output")
    parser.add_argument("--preset", default="nlu", help="nlu, vision, quick or study")
    parser.add_argument("--epochs", type=int, default=None, help="override the preset's epochs")
    parser.add_argument("--lr", type=float, nargs="+", default=None, help="learning-rate grid")
    parser.add_argument("--batch-size", type=int, nargs="+", default=None, help="batch-size grid")
    parser.add_argument("--gamma", type=float, nargs="+", default=[0.01], help="gamma grid (Eq. 3)")
    parser.add_argument("--lam", type=float, nargs="+", default=[0.15], help="lambda grid (Eq. 6)")
    parser.add_argument(
        "--gamma-scale",
        nargs="+",
        default=["absolute"],
        metavar="SCALE",
        help="absolute (Eq. 3) and/or feature-std (delta scaled per dimension by the training split's "
        "std); several are searched on validation with gamma",
    )
    parser.add_argument(
        "--seeds",
        type=int,
        default=None,
        help="seeds per selected setting; None = the preset's (8 for study, else 5)",
    )
    parser.add_argument(
        "--select-seeds",
        type=int,
        default=1,
        metavar="N",
        help="seeds per grid point during selection; a point scores its mean validation accuracy. "
        "1 = the paper's protocol; N trains N times the selection runs for a steadier choice on a "
        "small validation split",
    )
    parser.add_argument(
        "--anchor-weight",
        type=float,
        default=0.0,
        metavar="A",
        help="α of the L2-SP term (α/2)‖θ − θ₀‖², θ₀ = the head's initial weights; 0 = off. "
        "Added to every loss, ce included",
    )
    parser.add_argument(
        "--init-head",
        default=None,
        metavar="FILE.safetensors",
        help="start every head from these weights (its state_dict, saved with safetensors) instead of "
        "a seeded random init; needs a single --heads kind; θ₀ of --anchor-weight",
    )
    parser.add_argument(
        "--sensitivity",
        type=_pair,
        nargs="+",
        default=[],
        metavar="G:L",
        help="(gamma, lambda) pairs for Table 6, or `paper` for its three pairs",
    )
    parser.add_argument(
        "--feature-noise",
        type=_sigmas,
        default=(0.0,),
        metavar="S[,S2,...]",
        help="probe on features plus Gaussian noise of std S x the training split's per-dimension std "
        "(drawn once per example, the same for every loss); several values: a probe at each and "
        "feature_noise.png. 0 = the features as they are",
    )
    parser.add_argument(
        "--feature-noise-seed", type=int, default=0, metavar="N", help="seed of the --feature-noise draw"
    )
    parser.add_argument("--no-logreg", action="store_true", help="skip the logistic-regression reference row")
    parser.add_argument("--no-figure6", action="store_true", help="skip Figure 6")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N")
    parser.add_argument(
        "--threads", type=int, default=1, help="CPU threads while training heads (0 = torch's default)"
    )
    parser.add_argument(
        "--jobs",
        type=int,
        default=1,
        metavar="N",
        help="train up to N runs at once in separate processes, each with --threads threads; results "
        "are identical to --jobs 1. On a machine with N cores, --jobs N --threads 1 is the fast setting",
    )
    parser.add_argument(
        "--overwrite",
        action="store_true",
        help="replace an existing --out (and, without --resume, discard an interrupted OUT.partial/)",
    )
    parser.add_argument(
        "--resume",
        action="store_true",
        help="continue the probe interrupted in OUT.partial/: its finished runs are reused, the rest "
        "trained; the settings and caches must be the same",
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.set_defaults(handler=run_probe)


def run_probe(args: argparse.Namespace) -> int:
    from noisylm.probing.protocol import PAPER_SENSITIVITY, ProbeConfig, partial_dir, probe, summary_lines

    pairs = [p for p in args.sensitivity if p is not None]
    if None in args.sensitivity:
        pairs += [p for p in PAPER_SENSITIVITY if p not in pairs]

    config = ProbeConfig(
        heads=tuple(args.heads),
        losses=tuple(args.losses),
        preset=args.preset,
        epochs=args.epochs,
        lrs=tuple(args.lr) if args.lr else None,
        batch_sizes=tuple(args.batch_size) if args.batch_size else None,
        gammas=tuple(args.gamma),
        lams=tuple(args.lam),
        gamma_scales=tuple(args.gamma_scale),
        anchor_weight=args.anchor_weight,
        init_head=args.init_head,
        seeds=args.seeds,
        select_seeds=args.select_seeds,
        sensitivity=tuple(pairs),
        figure6=not args.no_figure6,
        feature_noise=args.feature_noise,
        feature_noise_seed=args.feature_noise_seed,
        logreg=not args.no_logreg,
        device=args.device,
        threads=args.threads or None,
        jobs=args.jobs,
        progress=not args.no_progress,
    )
    try:
        summary = probe(args.caches, args.out, config, overwrite=args.overwrite, resume=args.resume)
    except KeyboardInterrupt:
        partial = partial_dir(args.out)
        if not partial.is_dir():
            raise
        print(
            f"noisylm probe: interrupted; the finished runs are kept in {partial}/, "
            "run the same command with --resume to continue",
            file=sys.stderr,
        )
        return 130
    if summary["reused_runs"]:
        print(f"reused {summary['reused_runs']} finished runs from {partial_dir(args.out)}/")
    for line in summary_lines(summary):
        print(line)
    tables = (
        "table_main.md, table_paired.md" if any(r["paired"] for r in summary["rows"]) else "table_main.md"
    )
    if summary["feature_noise"]:
        tables += ", feature_noise.png"
    print(f"wrote {args.out}/ ({tables}, results.jsonl, summary.json) in {summary['seconds']:.0f} s")
    return 0
