"""`noisylm lgm-study`: the LGM study in one command: four backbone × dataset cells, CE vs CE + L_gm at
the paper's setting and with (γ, λ) searched on validation, paired by seed, and the feature-noise curve."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from noisylm.cli import HelpFormatter

DESCRIPTION = """\
The LGM study (issue #12 §4) in one command, from bundled data. For each cell (a frozen backbone on a
bundled dataset):

  minilm-wordnet        MiniLM on WordNet glosses (26 classes)
  effnet-fashion-mnist  EfficientNet-lite0 on the bundled Fashion-MNIST subset (10 classes)
  pixels-digits         raw pixels of scikit-learn's digits (10 classes)
  demo-plays            the demo's own pre-trained model (--demo-run, default make demo's clean run) on
                        shakespeare-plays: which of the 42 Shakespeare texts a passage comes from

it extracts the features (OUT/features/CELL/, reused when they match), then runs `noisylm probe` twice
with linear and MLP heads, CE and CE + L_gm, --seeds seeds, lr and batch size chosen on validation:
at the paper's setting (gamma 0.01, lambda 0.15, gamma absolute; OUT/probes/CELL/paper/) and with
gamma x lambda searched on validation (--gammas x --lams, gamma relative to each feature's std;
OUT/probes/CELL/searched/). Then the feature-noise curve on --noise-cell: CE, CE + L2 (l2-output) and
CE + L_gm at the paper's setting, at each --noise-sigmas (OUT/probes/feature-noise/).

A cell whose backbone is not available (a missing optional package, no demo run) is skipped with one
line saying why and how to enable it, and recorded as skipped."""

EPILOG = """\
writes OUT/:
  findings.md, findings.csv   one row per cell x head: CE test accuracy mean [95% interval] and seed std,
                              the logistic-regression reference (linear rows), L_gm at the paper's and at
                              the searched setting (with the selected gamma, lambda), each with its paired
                              difference to CE [95% t-interval] and a plain verdict ("helps beyond seed
                              noise", "within seed noise", "hurts beyond seed noise")
  feature_noise.md/.csv/.png  test accuracy against sigma for CE, CE + L2, CE + L_gm (mean, 95% interval
                              over seeds), with each penalty's paired difference to CE at each sigma
  study.json                  config, cells (skipped ones with the reason), rows, wall time per stage,
                              provenance
  features/, probes/          the caches and the full probe outputs (results.jsonl has every run)

differences: L_gm - CE seed by seed at CE's selected lr and batch size (the probe's paired runs), so that
  only the penalty differs; the intervals cover seed noise (head init, batch order), not the data split.

cost (defaults: caps 3000/1000, preset quick, 8 seeds, 4 x 4 grid; --jobs 2): STUDY_COST

again and resume: running it again with the same --out continues: finished caches and probes are reused,
  an interrupted probe resumes from OUT/probes/.../NAME.partial/. Caches or probes made with other
  settings are refused (nothing is written) unless --overwrite, which replaces them.

examples:
  noisylm lgm-study --out lgm_study --jobs 2                  # the study (make demo first for demo-plays)
  noisylm lgm-study --out lgm_study --jobs 2 --demo-run runs/clean
  noisylm lgm-study --out quick --cells pixels-digits --seeds 3 --noise-cell pixels-digits
"""
STUDY_COST = (
    "about 25 CPU-minutes,\n"
    "  so ~15 min on 2 idle cores (an estimate: the whole study was not timed). Measured per cell on a\n"
    "  shared 2-core machine (2-3x slower than idle): MiniLM/WordNet 13 min (features 1.6, paper probe\n"
    "  1.9, searched 2.6, feature-noise curve 7.3), EfficientNet-lite0/Fashion-MNIST 20 min (features\n"
    "  8.7, paper 3.1, searched 8.3); the other two cells are smaller. OUT/study.json records the wall\n"
    "  time of every stage"
)

# Options that set a StudyConfig field (dest -> field): their help is the field's doc, read when help
# is shown (the study's module loads torch, which building the `noisylm` parser must not).
FIELD_OPTIONS = {
    "cells": ("cells", "; default: all four"),
    "demo_run": ("demo_run", ""),
    "max_train": ("max_train", ""),
    "max_test": ("max_test", ""),
    "heads": ("heads", ""),
    "preset": ("preset", ""),
    "epochs": ("epochs", ""),
    "lr": ("lrs", ""),
    "batch_size": ("batch_sizes", ""),
    "seeds": ("seeds", ""),
    "select_seeds": ("select_seeds", ""),
    "gammas": ("gammas", ""),
    "lams": ("lams", ""),
    "gamma_scales": ("gamma_scales", ""),
    "noise_cell": ("noise_cell", ""),
    "noise_sigmas": ("noise_sigmas", ""),
    "noise_heads": ("noise_heads", ""),
    "device": ("device", ""),
    "threads": ("threads", " (0 on the command line)"),
    "jobs": ("jobs", ""),
}


class _StudyParser(argparse.ArgumentParser):
    """`noisylm lgm-study`'s parser: the help of each option is StudyConfig's doc of its field."""

    def format_help(self) -> str:
        import dataclasses

        from noisylm.configs.fields import doc_of
        from noisylm.probing.study import StudyConfig

        docs = {f.name: doc_of(f) for f in dataclasses.fields(StudyConfig)}
        for action in self._actions:
            if action.dest in FIELD_OPTIONS:
                name, extra = FIELD_OPTIONS[action.dest]
                action.help = (docs[name] + extra).replace("`", "").replace("%", "%%")
        return super().format_help()


def _sigmas(text: str) -> tuple[str, ...]:
    # Checked by StudyConfig, which names a bad value in one line.
    return tuple(x.strip() for x in text.split(",") if x.strip())


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "lgm-study",
        help="the LGM study: 4 backbone x dataset cells, CE vs L_gm (paper and searched), feature noise",
        description=DESCRIPTION,
        epilog=EPILOG.replace("STUDY_COST", STUDY_COST),
        formatter_class=HelpFormatter,
    )
    parser.__class__ = _StudyParser  # add_parser cannot take a parser class per subcommand
    parser.add_argument("--out", required=True, help="the study's folder (created; reused when run again)")
    parser.add_argument("--cells", nargs="+", default=None, metavar="CELL", help="(all four)")
    parser.add_argument("--demo-run", default="demo_out/sweep/runs/clean", metavar="RUN_DIR")
    parser.add_argument("--max-train", type=int, default=3000)
    parser.add_argument("--max-test", type=int, default=1000)
    parser.add_argument("--heads", nargs="+", default=["linear", "mlp"])
    parser.add_argument("--preset", default="quick")
    parser.add_argument("--epochs", type=int, default=None)
    parser.add_argument("--lr", type=float, nargs="+", default=None)
    parser.add_argument("--batch-size", type=int, nargs="+", default=None)
    parser.add_argument("--seeds", type=int, default=8)
    parser.add_argument("--select-seeds", type=int, default=1, metavar="N")
    parser.add_argument("--gammas", type=float, nargs="+", default=[0.001, 0.01, 0.1, 1.0], metavar="G")
    parser.add_argument("--lams", type=float, nargs="+", default=[0.001, 0.01, 0.1, 1.0], metavar="L")
    parser.add_argument("--gamma-scales", nargs="+", default=["feature-std"], metavar="SCALE")
    parser.add_argument("--noise-cell", default="minilm-wordnet", metavar="CELL|none")
    parser.add_argument("--noise-sigmas", type=_sigmas, default=(0.0, 0.5, 1.0, 2.0), metavar="S[,S2,...]")
    parser.add_argument("--noise-heads", nargs="+", default=None)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--jobs", type=int, default=1, metavar="N")
    parser.add_argument(
        "--overwrite", action="store_true", help="replace caches and probes in OUT made with other settings"
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    parser.set_defaults(handler=run_lgm_study)


def run_lgm_study(args: argparse.Namespace) -> int:
    from noisylm.probing.study import STUDY_CELLS, StudyConfig, lgm_study

    config = StudyConfig(
        cells=tuple(args.cells) if args.cells else tuple(STUDY_CELLS),
        demo_run=args.demo_run,
        max_train=args.max_train,
        max_test=args.max_test,
        heads=tuple(args.heads),
        preset=args.preset,
        epochs=args.epochs,
        lrs=tuple(args.lr) if args.lr else None,
        batch_sizes=tuple(args.batch_size) if args.batch_size else None,
        seeds=args.seeds,
        select_seeds=args.select_seeds,
        gammas=tuple(args.gammas),
        lams=tuple(args.lams),
        gamma_scales=tuple(args.gamma_scales),
        noise_cell=args.noise_cell,
        noise_sigmas=args.noise_sigmas,
        noise_heads=tuple(args.noise_heads) if args.noise_heads else None,
        device=args.device,
        threads=args.threads or None,
        jobs=args.jobs,
        progress=not args.no_progress,
    )
    try:
        result = lgm_study(args.out, config, overwrite=args.overwrite)
    except KeyboardInterrupt:
        if not Path(args.out).is_dir():
            raise
        print(
            f"noisylm lgm-study: interrupted; finished caches and probes are kept in {args.out}/ (an "
            "interrupted probe in its .partial/ folder): run the same command again to continue",
            file=sys.stderr,
        )
        return 130
    print((Path(args.out) / "findings.md").read_text("utf-8"), end="")
    reused = sum(1 for s in result["stages"] if s["reused"])
    note = f" ({reused} of {len(result['stages'])} stages reused)" if reused else ""
    minutes = result["wall_seconds"] / 60
    print(f"wrote {args.out}/ (findings.md, findings.csv, study.json) in {minutes:.1f} min{note}")
    return 0
