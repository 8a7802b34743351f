"""`noisylm finetune`: full fine-tuning with L2-SP, SMART, LNSR (and none), each ± L_gm: Table 4."""

from __future__ import annotations

import argparse
import sys

from noisylm.cli import HelpFormatter

EPILOG = """\
presets (every value can be overridden by the options below):
  cpu              MiniLM-sized, minutes on 2 CPU cores: 3 epochs, lr 2e-4 (head 2e-3), batch 16,
                   max length 24, 200 training examples (180 train + 20 selection), 200 dev, 3 seeds;
                   one fixed setting per row (alpha 0.01, lambda_s 1, LNSR lambda 1, L_gm lambda 0.15,
                   gamma 0.01): no search
  glue-bert-large  the paper's setting for a GPU (BERT-Large on GLUE's RTE, MRPC, CoLA, STS-B): 3 epochs,
                   lr in {1e-5, 2e-5, 3e-5} x batch in {16, 32} x the regulariser's weight (alpha in
                   {0.001, 0.01, 0.1}, lambda_s in {1, 3, 5}, LNSR lambda in {0.1, 1}), then L_gm's lambda
                   in {0.05, 0.15, 0.5}, chosen on a selection split carved from train; 5 seeds on dev

regularisers: none; l2-sp (alpha/2 ||w - w0||^2 on the encoder's pre-trained weights + beta/2 ||head||^2);
  smart (adversarial smoothness on the input embeddings + Bregman proximal point with a momentum
  teacher); lnsr (Gaussian noise into the input of an encoder layer, penalty on the change of every
  later layer's output). Each also runs + lambda * L_gm (L_gm on the head, its input features perturbed
  as in Eq. 3, its gradient flowing through the features into the encoder); --no-lgm skips those rows.

datasets: wordnet (26 categories from (lemma, gloss)), wordnet-pairs (does the gloss define the lemma?),
  GLUE folders by name (RTE, MRPC, CoLA, STS-B: train.tsv + dev.tsv in GLUE's layout), or a CSV/TSV/JSONL
  file or folder as for `noisylm extract` (--task-type regression for numeric labels). Without a dev
  split, 20% of train is carved out as dev, and a note says so.

writes OUT/: table4.md/.csv (rows regulariser and + L_gm, columns tasks; + L_gm rows with the paired
  difference to their regulariser and its 95% interval over seeds), summary.json, results.jsonl (one
  line per run), finetune.json. While it runs: OUT.partial/ (results.jsonl grows one line per run);
  after a crash or Ctrl-C, run the same command with --resume.

examples:
  noisylm finetune --out ft/wordnet-pairs      # the CPU default: MiniLM on wordnet-pairs
  noisylm finetune --backbone hf:models/bert-large-uncased --preset glue-bert-large \\
      --dataset glue/RTE glue/MRPC glue/CoLA glue/STS-B --device cuda --out ft/table4
  noisylm finetune --dataset my.csv --regularisers none smart --seeds 5 --out ft/mine
"""


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "finetune",
        help="full fine-tuning with L2-SP, SMART, LNSR, each with and without L_gm (Table 4)",
        description="Fine-tune a Hugging Face encoder and its head with each regulariser alone and with\n"
        "L_gm (Sec. 4.3, Table 4): selection on a split carved from train, N seeds, dev metric,\n"
        "paired differences.",
        epilog=EPILOG,
        formatter_class=HelpFormatter,
    )
    parser.add_argument(
        "--dataset", nargs="+", default=["wordnet-pairs"], help="tasks (the columns of Table 4)"
    )
    parser.add_argument("--out", required=True, help="output folder")
    parser.add_argument("--backbone", default="minilm", help="minilm, sentence:PATH, hf:PATH or a folder")
    parser.add_argument("--preset", default="cpu", help="cpu or glue-bert-large")
    parser.add_argument(
        "--regularisers", nargs="+", default=["none", "l2-sp", "smart", "lnsr"], help="the rows"
    )
    parser.add_argument("--no-lgm", action="store_true", help="skip the + L_gm rows")
    parser.add_argument("--seeds", type=int, default=None, help="seeds per row (preset's)")
    parser.add_argument("--select-seeds", type=int, default=1, help="seeds per grid point in selection")
    parser.add_argument("--epochs", type=int, default=None)
    parser.add_argument("--lr", type=float, nargs="+", default=None, help="encoder learning-rate grid")
    parser.add_argument("--head-lr", type=float, default=None, help="the head's learning rate")
    parser.add_argument("--batch-size", type=int, nargs="+", default=None, help="batch-size grid")
    parser.add_argument("--alpha", type=float, nargs="+", default=None, help="L2-SP alpha grid")
    parser.add_argument("--beta", type=float, default=0.01, help="L2-SP beta (the head's decay)")
    parser.add_argument("--smart-lambda", type=float, nargs="+", default=None, help="SMART lambda_s grid")
    parser.add_argument("--smart-epsilon", type=float, default=1e-5, help="SMART's l-inf radius")
    parser.add_argument("--smart-step", type=float, default=1e-3, help="SMART's ascent step eta")
    parser.add_argument("--smart-sigma", type=float, default=1e-5, help="SMART's random start std")
    parser.add_argument("--smart-mu", type=float, default=1.0, help="weight of SMART's Bregman term")
    parser.add_argument("--lnsr-lambda", type=float, nargs="+", default=None, help="LNSR lambda grid")
    parser.add_argument("--lnsr-sigma", type=float, default=0.01, help="LNSR noise std")
    parser.add_argument("--lnsr-layer", type=int, default=0, help="encoder layer whose input gets noise")
    parser.add_argument("--lam", type=float, nargs="+", default=None, help="lambda grid of L_gm (Eq. 6)")
    parser.add_argument("--gamma", type=float, default=0.01, help="std of the feature noise (Eq. 3)")
    parser.add_argument("--weight-decay", type=float, default=None, help="AdamW weight decay")
    parser.add_argument("--warmup", type=float, default=0.1, help="share of updates with lr warm-up")
    parser.add_argument("--max-length", type=int, default=None, help="tokens per example")
    parser.add_argument("--max-train", type=int, default=None, help="cap on training examples")
    parser.add_argument("--max-dev", type=int, default=None, help="cap on dev examples")
    parser.add_argument("--pooling", default=None, help="cls, mean, max, mean_sqrt_len (default: model's)")
    parser.add_argument("--task-type", default="auto", help="auto, classification or regression")
    parser.add_argument("--label-field", default="label", help="label column of users' files")
    parser.add_argument("--text-field", nargs="+", default=None, help="one text column or a pair")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N")
    parser.add_argument("--threads", type=int, default=None, help="CPU threads (default: torch's)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing --out")
    parser.add_argument("--resume", action="store_true", help="continue the call interrupted in OUT.partial/")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.set_defaults(handler=run_finetune)


def run_finetune(args: argparse.Namespace) -> int:
    from noisylm.probing.finetuning.protocol import FinetuneConfig, finetune, print_notes
    from noisylm.probing.protocol import partial_dir

    config = FinetuneConfig(
        preset=args.preset,
        regularisers=tuple(args.regularisers),
        lgm=not args.no_lgm,
        seeds=args.seeds,
        select_seeds=args.select_seeds,
        epochs=args.epochs,
        lrs=tuple(args.lr) if args.lr else None,
        batch_sizes=tuple(args.batch_size) if args.batch_size else None,
        head_lr=args.head_lr,
        l2sp_alphas=tuple(args.alpha) if args.alpha else None,
        smart_lambdas=tuple(args.smart_lambda) if args.smart_lambda else None,
        lnsr_lambdas=tuple(args.lnsr_lambda) if args.lnsr_lambda else None,
        lgm_lams=tuple(args.lam) if args.lam else None,
        gamma=args.gamma,
        l2sp_beta=args.beta,
        smart_epsilon=args.smart_epsilon,
        smart_step_size=args.smart_step,
        smart_sigma=args.smart_sigma,
        smart_mu=args.smart_mu,
        lnsr_sigma=args.lnsr_sigma,
        lnsr_layer=args.lnsr_layer,
        warmup=args.warmup,
        weight_decay=args.weight_decay,
        max_length=args.max_length,
        max_train=args.max_train,
        max_dev=args.max_dev,
        pooling=args.pooling,
        task_type=args.task_type,
        label_field=args.label_field,
        text_fields=tuple(args.text_field) if args.text_field else None,
        device=args.device,
        threads=args.threads,
        progress=not args.no_progress,
    )
    try:
        summary = finetune(
            args.backbone, args.dataset, args.out, config, overwrite=args.overwrite, resume=args.resume
        )
    except KeyboardInterrupt:
        partial = partial_dir(args.out)
        if not partial.is_dir():
            raise
        print(
            f"noisylm finetune: interrupted; the finished runs are kept in {partial}/, "
            "run the same command with --resume to continue",
            file=sys.stderr,
        )
        return 130
    print_notes(summary)
    if summary["reused_runs"]:
        print(f"reused {summary['reused_runs']} finished runs from {partial_dir(args.out)}/")
    for row in summary["rows"]:
        diff = row.get("paired_difference")
        extra = ""
        if diff is not None:
            interval = "" if diff["low"] is None else f", 95% CI [{diff['low']:+.2f}, {diff['high']:+.2f}]"
            extra = f"; vs alone {diff['mean']:+.2f}{interval}"
        score = f"{row['metric']} {row['mean']:.2f} ± {row['std']:.2f} (n={row['n']})"
        print(f"{row['task']} / {row['row']}: {score}{extra}")
    files = "table4.md, table4.csv, summary.json, results.jsonl"
    print(f"wrote {args.out}/ ({files}) in {summary['seconds']:.0f} s")
    return 0
