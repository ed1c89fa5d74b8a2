#!/usr/bin/env bash
# The demo on a fresh machine: installs what is missing, makes a synthetic labelled corpus with ffmpeg, builds
# WebDataset shards from it, verifies them and renders one sample. Everything lands in $AVMAE_DEMO_OUT (demo_out/).
# (Pretraining, fine-tuning and evaluation join this script as those stages land: issues 3-7.)
set -euo pipefail
cd "$(dirname "$0")/.."
OUT="${AVMAE_DEMO_OUT:-demo_out}"
CLIPS="${AVMAE_DEMO_CLIPS:-200}"
CLASSES="${AVMAE_DEMO_CLASSES:-8}"
step() { printf '\n\033[1m== %s\033[0m\n' "$*"; }

step "1/4 install what is missing"
bash pipelines/setup.sh
# The chosen interpreter's scripts (avmae-shard, ...) come first on PATH, also for the jobs sbatch starts.
PATH="$("${AVMAE_PYTHON:-python3}" -c 'import os, sys; print(os.path.dirname(sys.executable))'):$PATH"
export PATH

step "2/4 synthetic corpus: $CLIPS clips, $CLASSES classes (each class its own picture and sound)"
if [ ! -f "$OUT/corpus/corpus.csv" ]; then
  avmae-shard synth --out "$OUT/corpus" --num "$CLIPS" --classes "$CLASSES"
fi

step "3/4 shards (re-running resumes; 20% of the videos held out as 'val')"
avmae-shard build --list "$OUT/corpus/corpus.csv" --out "$OUT/shards" --segment-seconds 4 \
  --num-frames 16 --short-side 128 --target-frames 400 --shard-size 25 --val-fraction 0.2
avmae-shard verify "$OUT/shards"

step "4/4 look at the data"
avmae-shard inspect "$OUT/shards" --sample 0 --png-dir "$OUT/inspect"

echo
echo "corpus:   $OUT/corpus (corpus.csv lists clip,label)"
echo "shards:   $OUT/shards (manifest.json, failures.jsonl, *.tar + *.idx)"
echo "pictures: $OUT/inspect (frames contact sheet and spectrogram of one sample)"
