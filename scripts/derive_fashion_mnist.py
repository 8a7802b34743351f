"""Derive the bundled Fashion-MNIST subset (standard IDX files, gzip) from the full dataset.

Takes a seeded, class-balanced subset of the official train and test files (default 2,000 train and
500 test images, 28x28 grey, 10 classes) and writes it in the same IDX format to
`src/noisylm/assets/fashion-mnist/`, so the subset is read by the same loader as the full files:

    python scripts/derive_fashion_mnist.py --fashion-mnist-dir /path/to/fashion-mnist

The folder holds `{train,t10k}-{images-idx3,labels-idx1}-ubyte.gz` (Debian `dataset-fashion-mnist`
or https://github.com/zalandoresearch/fashion-mnist).
"""

from __future__ import annotations

import argparse
import gzip
import shutil
import struct
from pathlib import Path

import numpy as np

OUT_DIR = Path(__file__).resolve().parents[1] / "src" / "noisylm" / "assets" / "fashion-mnist"
SEED = 0


def read_idx(path: Path) -> np.ndarray:
    data = gzip.decompress(path.read_bytes())
    zero, dtype_code, ndim = struct.unpack(">HBB", data[:4])
    assert zero == 0 and dtype_code == 0x08, f"{path} is not an unsigned-byte IDX file"
    shape = struct.unpack(f">{ndim}I", data[4 : 4 + 4 * ndim])
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim).reshape(shape)


def write_idx(path: Path, array: np.ndarray) -> None:
    header = struct.pack(">HBB", 0, 0x08, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    with open(path, "wb") as raw, gzip.GzipFile(fileobj=raw, mode="wb", compresslevel=9, mtime=0) as gz:
        gz.write(header + np.ascontiguousarray(array, dtype=np.uint8).tobytes())


def balanced_subset(labels: np.ndarray, per_class: int, rng: np.random.Generator) -> np.ndarray:
    index = [rng.permutation(np.flatnonzero(labels == c))[:per_class] for c in np.unique(labels)]
    return np.sort(np.concatenate(index))


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--fashion-mnist-dir", type=Path, required=True)
    parser.add_argument("--out-dir", type=Path, default=OUT_DIR)
    parser.add_argument("--train-per-class", type=int, default=200)
    parser.add_argument("--test-per-class", type=int, default=50)
    args = parser.parse_args()
    rng = np.random.default_rng(SEED)
    args.out_dir.mkdir(parents=True, exist_ok=True)
    for split, per_class in (("train", args.train_per_class), ("t10k", args.test_per_class)):
        images = read_idx(args.fashion_mnist_dir / f"{split}-images-idx3-ubyte.gz")
        labels = read_idx(args.fashion_mnist_dir / f"{split}-labels-idx1-ubyte.gz")
        keep = balanced_subset(labels, per_class, rng)
        write_idx(args.out_dir / f"{split}-images-idx3-ubyte.gz", images[keep])
        write_idx(args.out_dir / f"{split}-labels-idx1-ubyte.gz", labels[keep])
        print(f"{split}: kept {len(keep)} of {len(labels)} images")
    licence = args.fashion_mnist_dir / "COPYRIGHT.debian"
    if licence.exists():
        shutil.copyfile(licence, args.out_dir / "LICENSE.fashion-mnist")


if __name__ == "__main__":
    main()
