"""`noisylm train | eval | sample | export`: pre-train a GPT, measure, generate, hand it to Hugging Face."""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import typing

from noisylm.cli import HelpFormatter

TRAIN_EPILOG = """\
examples:
  noisylm train --data data/shakespeare --model small --max-iters 2000 --out runs/clean
  noisylm train configs/run.toml --out runs/noisy --learning-rate 3e-3 --eval-set docs=data/python-docs
  noisylm train configs/run.toml --out runs/noisy --resume        # continue after a crash / kill
  torchrun --standalone --nproc_per_node=8 -m noisylm train configs/run.toml --out runs/owt   # DDP

The config file (TOML, YAML or JSON; a [train] table is used when present) holds TrainConfig fields;
every field can be overridden with --field value (dashes or underscores). Writes OUT/config.json,
metrics.jsonl, checkpoints/, tb/ and, last, summary.json.
"""


class _TrainParser(argparse.ArgumentParser):
    """`noisylm train`'s parser. Its --FIELD options come from `TrainConfig` and are added on first use:
    importing `noisylm.training` loads torch, which every other `noisylm` command should not wait for.
    An unknown --key is an error that lists the valid TrainConfig keys."""

    def parse_known_args(self, args=None, namespace=None):
        self._add_config_fields()
        namespace, extras = super().parse_known_args(args, namespace)
        if extras:
            from noisylm.training.config import TrainConfig

            valid = ", ".join(f.name for f in dataclasses.fields(TrainConfig))
            self.error(f"unknown config key or argument {' '.join(extras)}; valid keys: {valid}")
        return namespace, extras

    def format_usage(self) -> str:
        self._add_config_fields()
        return super().format_usage()

    def format_help(self) -> str:
        self._add_config_fields()
        return super().format_help()

    def _add_config_fields(self) -> None:
        if getattr(self, "_config_fields_added", False):
            return
        self._config_fields_added = True
        from noisylm.configs.fields import check_of, help_text
        from noisylm.training.config import TrainConfig

        group = self.add_argument_group("TrainConfig fields (override the config file)")
        hints = typing.get_type_hints(TrainConfig)
        for f in dataclasses.fields(TrainConfig):
            if f.name == "eval_sets":
                continue  # --eval-set NAME=DIR
            choices = getattr(check_of(f), "choices", None)
            flag = bool in (hints[f.name], *typing.get_args(hints[f.name]))  # --compile alone means true
            group.add_argument(
                f"--{f.name.replace('_', '-')}",
                *([f"--{f.name}"] if "_" in f.name else []),
                dest=f"cfg_{f.name}",
                metavar="{" + ",".join(map(str, choices)) + "}" if choices else _metavar(hints[f.name]),
                nargs="?" if flag else None,
                const="true" if flag else None,
                default=argparse.SUPPRESS,
                help=help_text(f),
            )


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "train",
        help="pre-train a GPT on a shard set (one process, or DDP under torchrun)",
        description="Pre-train a GPT-2-style model on a shard set, with evaluation on named sets, "
        "atomic checkpoints and exact --resume.",
        epilog=TRAIN_EPILOG,
        formatter_class=HelpFormatter,
    )
    p.__class__ = _TrainParser  # add_parser cannot take a parser class per subcommand; adds --FIELD options
    p.add_argument("config", nargs="?", help="TOML/YAML/JSON file of TrainConfig fields")
    p.add_argument("--out", required=True, help="run directory to write")
    p.add_argument("--resume", action="store_true", help="continue from the newest checkpoint in --out")
    p.add_argument("--overwrite", action="store_true", help="replace an existing run directory")
    p.add_argument(
        "--eval-set",
        action="append",
        default=[],
        metavar="NAME=DIR",
        help="extra eval set (a shard set's val split); repeatable",
    )
    p.set_defaults(handler=_train)

    e = subparsers.add_parser(
        "eval",
        help="loss of a checkpoint on named token sets",
        description="Next-token loss of a checkpoint on the split of each named shard set; every token "
        "after the first is predicted once, in consecutive windows of the model's block size.",
        epilog="example:\n  noisylm eval runs/clean --on val=data/shakespeare --on docs=data/python-docs "
        "--per-token losses.npz",
        formatter_class=HelpFormatter,
    )
    e.add_argument("checkpoint", help="run directory (its newest checkpoint) or a checkpoints/ckpt-* folder")
    e.add_argument("--on", action="append", default=[], metavar="NAME=DIR", help="shard set to evaluate")
    e.add_argument("--split", default="val", help="split of each shard set (train, val, noise)")
    e.add_argument("--max-tokens", type=int, default=None, help="evaluate only the first N tokens of each")
    e.add_argument("--batch-size", type=int, default=8, help="windows per forward pass")
    e.add_argument("--per-token", default=None, metavar="OUT.npz", help="also save per-token losses")
    e.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N")
    e.add_argument("--dtype", default="float32", help="float32, bfloat16 (autocast) or float16 (GPU)")
    e.add_argument("--overwrite", action="store_true", help="replace an existing --per-token file")
    e.add_argument("--json", action="store_true", help="print the result as JSON")
    e.set_defaults(handler=_eval)

    s = subparsers.add_parser(
        "sample",
        help="generate text from a checkpoint",
        description="Sample continuations of a prompt with temperature and top-k.",
        epilog='example:\n  noisylm sample runs/clean --prompt "ROMEO:" --num-samples 3 --temperature 0.8',
        formatter_class=HelpFormatter,
    )
    s.add_argument("checkpoint", help="run directory (its newest checkpoint) or a checkpoints/ckpt-* folder")
    s.add_argument("--prompt", default="", help="text to continue (empty: start of a document)")
    s.add_argument("--num-samples", type=int, default=1)
    s.add_argument("--max-new-tokens", type=int, default=200)
    s.add_argument("--temperature", type=float, default=0.8, help="0 = greedy")
    s.add_argument("--top-k", type=int, default=200, help="sample from the k most likely tokens; 0 = all")
    s.add_argument("--seed", type=int, default=1337)
    s.add_argument("--device", default="auto")
    s.set_defaults(handler=_sample)

    x = subparsers.add_parser(
        "export",
        help="export a checkpoint as a Hugging Face GPT2LMHeadModel folder",
        description="Write a Hugging Face GPT2LMHeadModel folder (config.json + model.safetensors, and the "
        "GPT-2 tokenizer files for gpt2-vocabulary models). Needs `pip install noisylm[hf]`.",
        epilog="example:\n  noisylm export runs/owt --hf hf/owt-124m\n"
        "  python -c \"import transformers as t; t.GPT2LMHeadModel.from_pretrained('hf/owt-124m')\"",
        formatter_class=HelpFormatter,
    )
    x.add_argument("checkpoint", help="run directory (its newest checkpoint) or a checkpoints/ckpt-* folder")
    x.add_argument("--hf", required=True, metavar="OUT", help="folder to write")
    x.add_argument("--overwrite", action="store_true", help="replace an existing OUT")
    x.set_defaults(handler=_export)


def _metavar(annotation) -> str:
    args = [a for a in typing.get_args(annotation) if a is not type(None)]
    kind = args[0] if args else annotation
    return getattr(kind, "__name__", "VALUE").upper()


def _train(args: argparse.Namespace) -> int:
    from noisylm.training.config import load_config, merge_overrides, parse_overrides
    from noisylm.training.evaluate import parse_eval_sets
    from noisylm.training.trainer import train

    # argparse checked the option names (and lists them in --help); the values are typed by the one
    # override parser, the same as `noisylm sweep --set train.KEY=VALUE`.
    overrides = parse_overrides(
        [f"--{key[4:]}={value}" for key, value in vars(args).items() if key.startswith("cfg_")]
    )
    if args.eval_set:
        overrides = merge_overrides(overrides, {"eval_sets": parse_eval_sets(args.eval_set)})
    config = load_config(args.config, overrides)
    summary = train(config, args.out, resume=args.resume, overwrite=args.overwrite)
    if os.environ.get("RANK", "0") == "0":
        losses = ", ".join(f"{k} {v:.4f}" for k, v in summary["eval"].items())
        print(
            f"trained {summary['iterations']} iterations ({summary['tokens']:,} tokens, "
            f"{summary['clean_tokens']:,} clean); eval loss: {losses}; run directory: {args.out}"
        )
    return 0


def _eval(args: argparse.Namespace) -> int:
    from noisylm.training.evaluate import evaluate_checkpoint, parse_eval_sets

    result = evaluate_checkpoint(
        args.checkpoint,
        parse_eval_sets(args.on),
        split=args.split,
        max_tokens=args.max_tokens,
        batch_size=args.batch_size,
        per_token_path=args.per_token,
        device=args.device,
        dtype=args.dtype,
        overwrite=args.overwrite,
    )
    if args.json:
        print(json.dumps({k: v for k, v in result.items() if k != "provenance"}, indent=2))
        return 0
    print(f"checkpoint {result['checkpoint']} (iteration {result['iter']}), split {result['split']}:")
    for name, r in result["eval"].items():
        print(f"  {name}: loss {r['loss']:.4f} over {r['tokens']:,} tokens")
    if result["per_token"]:
        print(f"per-token losses: {result['per_token']}")
    return 0


def _sample(args: argparse.Namespace) -> int:
    from noisylm.training.sampling import sample

    texts = sample(
        args.checkpoint,
        prompt=args.prompt,
        num_samples=args.num_samples,
        max_new_tokens=args.max_new_tokens,
        temperature=args.temperature,
        top_k=args.top_k or None,
        seed=args.seed,
        device=args.device,
    )
    for i, text in enumerate(texts):
        if len(texts) > 1:
            print(f"--- sample {i + 1} ---")
        print(text)
    return 0


def _export(args: argparse.Namespace) -> int:
    from noisylm.training.export import export_hf

    out = export_hf(args.checkpoint, args.hf, overwrite=args.overwrite)
    print(f"wrote Hugging Face GPT2LMHeadModel folder {out}")
    return 0
