#!/bin/sh
# Copies the man1 pages of a fixed set of Debian/Ubuntu packages into DIR: the corpus that the
# retrieval development set (goldens/rag/man-devset.jsonl) and the README's figures use.
#   sh scripts/rag_mancorpus.sh runs/mancorpus
set -e
dir=${1:?usage: rag_mancorpus.sh DIR}
mkdir -p "$dir"
for pkg in coreutils util-linux findutils grep tar gzip sed diffutils procps; do
  dpkg -L "$pkg" | grep '/man/man1/.*\.gz$' | while read -r f; do cp "$f" "$dir/"; done
done
ls "$dir" | wc -l
