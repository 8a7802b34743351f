"""`noisylm sweep` and `noisylm report`: the paper's grid of runs and its figures and tables."""

from __future__ import annotations

import argparse

from noisylm.cli import HelpFormatter


def register(subparsers: argparse._SubParsersAction) -> None:
    sweep = subparsers.add_parser(
        "sweep",
        help="run the paper's noise grid (clean, uniform/boosted at several α, Gaussian) on one corpus",
        description="Run, or resume, a sweep of pre-training runs that differ only in the injected noise:\n"
        "the clean run (α = 0), each noise kind at each α, all with the same model, seed, schedule,\n"
        "initial weights and eval windows, each evaluated on the clean validation split, on its own\n"
        "noise and on extra domains. Finished runs are skipped; interrupted runs resume from their\n"
        "last checkpoint; summary.json / summary.md list every run's status and final numbers.",
        epilog="presets (shipped in noisylm/configs/):\n"
        "  demo        `make demo`: BPE of 2,048 ids trained on the bundled Shakespeare, small GPT,\n"
        "              128 x 64-token batches, 3 paired replicates, Python docs as 2nd domain,\n"
        "              Table 1 downstream stage; 9-14 minutes on a 2-core CPU with AMX\n"
        "  demo-bytes  the byte-level demo: 16 x 128-byte batches, 1 replicate (faster, rougher)\n"
        "  paper-124m  GPT-2 124M as in the paper (gpt2 tokenizer, 1024 context, 16 x 40 batch,\n"
        "              300k iterations, lr 6e-4 -> 6e-5); needs --set data=DIR\n"
        "  paper-774m  the same recipe with GPT-2 774M\n\n"
        "examples:\n"
        "  noisylm sweep demo --out sweeps/demo\n"
        "  noisylm sweep paper-124m --out sweeps/owt --set data=data/owt --set domains.wiki=data/wiki\n"
        "  noisylm sweep paper-124m --out sweeps/owt --set data=data/owt --print-commands > jobs.sh\n"
        "  noisylm sweep paper-124m --out sweeps/owt --set data=data/owt --print-commands --slurm \\\n"
        "      --slurm-partition gpu --slurm-time 3-00:00:00 --out-script owt.sbatch   # sbatch owt.sbatch\n"
        "  noisylm sweep my_sweep.toml --out sweeps/mine --set train.max_iters=2000",
        formatter_class=HelpFormatter,
    )
    sweep.add_argument(
        "config", help="a preset (demo, demo-bytes, paper-124m, paper-774m) or a .toml/.yaml/.json file"
    )
    sweep.add_argument("--out", required=True, help="sweep directory (created, or resumed if it exists)")
    sweep.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a setting, dotted for tables: data=DIR, train.max_iters=100, domains.wiki=DIR "
        "(the keys and values of `noisylm train --key value`)",
    )
    sweep.add_argument(
        "--print-commands",
        action="store_true",
        help="prepare data and per-run configs, print one `noisylm train` (or torchrun) command per "
        "unfinished run for a cluster scheduler, and train nothing",
    )
    slurm = sweep.add_argument_group("SLURM (with --print-commands)")
    slurm.add_argument(
        "--slurm",
        action="store_true",
        help="print an sbatch job-array script instead: one array task per unfinished run, each "
        "`torchrun --standalone --nproc_per_node=$GPUS -m noisylm train ...` on one node",
    )
    slurm.add_argument("--out-script", metavar="FILE", help="write the script to FILE (atomically) instead")
    slurm.add_argument(
        "--slurm-partition", metavar="NAME", help="#SBATCH --partition; None: the cluster's default partition"
    )
    slurm.add_argument("--slurm-time", metavar="TIME", default="24:00:00", help="#SBATCH --time per run")
    slurm.add_argument(
        "--slurm-gpus",
        metavar="N",
        type=int,
        help="#SBATCH --gpus-per-node and torchrun processes per run; None: the sweep's nproc_per_node",
    )
    sweep.add_argument(
        "--only", nargs="+", metavar="RUN", help="train only these runs (e.g. clean uniform-a0.05)"
    )
    sweep.add_argument(
        "--retry-failed", action="store_true", help="train runs whose last attempt failed again"
    )
    sweep.add_argument(
        "--downstream",
        action="store_true",
        help="after training, probe every run's features on a labelled task (Table 1: CE and CE + L_gm, "
        "linear and MLP) into SWEEP/downstream/; the config's [downstream] section, or its defaults",
    )
    sweep.add_argument(
        "--overwrite",
        action="store_true",
        help="replace an output directory that is not this sweep (or holds it with different settings)",
    )
    sweep.set_defaults(handler=_sweep)

    report = subparsers.add_parser(
        "report",
        help="regenerate the paper's Figs. 2, 3, 4, 8 and the per-run table from a sweep directory",
        description="Write SWEEP_DIR/report/: Fig. 2(a-c) clean validation loss, its difference to the\n"
        "clean run at the same iteration and at the same number of clean tokens; Fig. 3(a-c) loss on\n"
        "the injected noise, noise kinds at equal α; Fig. 4 other domains; Fig. 8 token priors; a table\n"
        "per run (final clean loss, absolute/relative increase, relative increase / α, loss on noise)\n"
        "as PNG, Markdown and CSV, and index.html, one self-contained page that reads offline.\n"
        "The same run directories always give the same files.",
        formatter_class=HelpFormatter,
    )
    report.add_argument("sweep_dir", help="a directory written by `noisylm sweep`")
    report.set_defaults(handler=_report)


def _sweep(args: argparse.Namespace) -> int:
    from noisylm.errors import UsageError
    from noisylm.experiments.launch import sweep

    if (args.out_script or args.slurm_partition or args.slurm_gpus) and not args.slurm:
        raise UsageError("--out-script and --slurm-* options go with --slurm; add --print-commands --slurm")
    if args.slurm and not args.print_commands:
        raise UsageError("--slurm writes a script instead of training; add --print-commands")
    if args.slurm:
        from noisylm.experiments.scheduler import check_slurm_options

        check_slurm_options(args.slurm_partition, args.slurm_time, args.slurm_gpus)
    summary = sweep(
        args.config,
        args.out,
        overrides=args.overrides,
        overwrite=args.overwrite,
        print_commands=args.print_commands,
        only=args.only,
        retry_failed=args.retry_failed,
        downstream=args.downstream,
    )
    if args.slurm:
        return _slurm(args, summary["command_runs"])
    if args.print_commands:
        for command in summary["commands"]:
            print(command)
        return 0
    counts = ", ".join(f"{n} {status}" for status, n in summary["counts"].items() if n)
    print(f"sweep {summary['name']}: {counts}; summary in {args.out}/summary.md")
    if "downstream" in summary:
        print(f"downstream probes: {args.out}/downstream/table1.md, {args.out}/downstream/differences.md")
    return 1 if summary["counts"].get("failed") else 0


def _slurm(args: argparse.Namespace, runs: list[str]) -> int:
    import sys

    from noisylm.experiments.scheduler import slurm_script, write_script

    script = slurm_script(
        args.out,
        only=args.only,
        partition=args.slurm_partition,
        time=args.slurm_time,
        gpus=args.slurm_gpus,
    )
    if args.out_script:
        path = write_script(args.out_script, script)
        print(f"wrote {path}: {len(runs)} array task(s) ({', '.join(runs)}); submit it with sbatch {path}")
    else:
        sys.stdout.write(script)
    return 0


def _report(args: argparse.Namespace) -> int:
    from noisylm.experiments.reporting import report

    out = report(args.sweep_dir)
    print(f"report written to {out}; open {out / 'index.html'}")
    return 0
