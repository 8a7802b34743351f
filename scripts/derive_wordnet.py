"""Derive the bundled WordNet task: noun gloss -> one of the 26 noun lexicographer categories.

Reads WordNet 3.0 `data.noun` (+ `lexnames.5WN` for the category names) and writes
`src/noisylm/assets/wordnet/wordnet_nouns.tsv.gz`, one synset per line:

    split <TAB> category <TAB> lemma <TAB> gloss

`gloss` is the definition without the quoted usage examples (they often contain the lemma itself).
`split` is a fixed, seeded, stratified 80/20 train/test split, so every user gets the same test set.
Run from the repository root:

    python scripts/derive_wordnet.py --wordnet-dir /path/to/wordnet   # folder with data.noun, lexnames.5WN

The folder is the Debian `wordnet-base` package's dict folder (or the WordNet 3.0 tarball's `dict/`).
"""

from __future__ import annotations

import argparse
import gzip
import re
import shutil
from pathlib import Path

import numpy as np

OUT_DIR = Path(__file__).resolve().parents[1] / "src" / "noisylm" / "assets" / "wordnet"
TEST_FRACTION = 0.2
SEED = 0


def read_lexnames(path: Path) -> dict[int, str]:
    """File number -> name for the noun lexicographer files (`03 noun.Tops 1` lines)."""
    names = {}
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        match = re.match(r"^(\d\d)\t(noun\.\S+)\s*\t", line)
        if match:
            names[int(match.group(1))] = match.group(2)
    if len(names) != 26:
        raise SystemExit(f"expected 26 noun categories in {path}, found {len(names)}")
    return names


def parse_data_noun(path: Path, lexnames: dict[int, str]) -> list[tuple[str, str, str]]:
    """(category, first lemma, definition) for every synset line of data.noun."""
    rows = []
    with open(path, encoding="utf-8", errors="replace") as fh:
        for line in fh:
            if line.startswith("  "):  # the licence header
                continue
            fields, _, gloss = line.partition(" | ")
            parts = fields.split()
            category = lexnames[int(parts[1])]
            lemma = parts[4].replace("_", " ")
            # The gloss is `definition; "example"; "example"` (sometimes `definition: "example"`).
            definition = re.split(r'[;:]\s*"', gloss.strip(), maxsplit=1)[0].strip().rstrip(";").strip()
            definition = " ".join(definition.split())
            if definition:
                rows.append((category, lemma, definition))
    return rows


def stratified_test_mask(categories: list[str], fraction: float, seed: int) -> np.ndarray:
    """Per category, a seeded random `fraction` of the synsets (rounded) goes to test."""
    rng = np.random.default_rng(seed)
    labels = np.array(categories)
    mask = np.zeros(len(labels), dtype=bool)
    for category in sorted(set(categories)):
        index = np.flatnonzero(labels == category)
        n_test = int(round(fraction * len(index)))
        mask[rng.permutation(index)[:n_test]] = True
    return mask


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--wordnet-dir", type=Path, required=True, help="folder with data.noun, lexnames.5WN")
    parser.add_argument("--out-dir", type=Path, default=OUT_DIR)
    args = parser.parse_args()

    lexnames = read_lexnames(args.wordnet_dir / "lexnames.5WN")
    rows = parse_data_noun(args.wordnet_dir / "data.noun", lexnames)
    test = stratified_test_mask([r[0] for r in rows], TEST_FRACTION, SEED)
    args.out_dir.mkdir(parents=True, exist_ok=True)
    out = args.out_dir / "wordnet_nouns.tsv.gz"
    # mtime=0: the same input gives a byte-identical file.
    with open(out, "wb") as raw, gzip.GzipFile(fileobj=raw, mode="wb", compresslevel=9, mtime=0) as gz:
        gz.write(b"split\tcategory\tlemma\tgloss\n")
        for (category, lemma, definition), is_test in zip(rows, test, strict=True):
            split = "test" if is_test else "train"
            gz.write(f"{split}\t{category}\t{lemma}\t{definition}\n".encode())
    licence = args.wordnet_dir / "COPYRIGHT.debian"
    if licence.exists():
        shutil.copyfile(licence, args.out_dir / "LICENSE.wordnet")
    print(f"wrote {out}: {len(rows)} synsets ({int(test.sum())} test), {out.stat().st_size / 1e6:.2f} MB")


if __name__ == "__main__":
    main()
