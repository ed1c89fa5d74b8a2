#!/usr/bin/env bash
# The demo on a fresh machine: installs what is missing, makes a synthetic labelled corpus with ffmpeg, builds
# WebDataset shards from it, pretrains a tiny AV-MAE with DeepSpeed ZeRO-2 on 2 CPU processes, fine-tunes it on the
# corpus's classes, fine-tunes the same model from scratch for comparison, and prints the held-out accuracies.
# Everything lands in demo_out/ (configs/demo_*.yaml read it from there). Re-running resumes or skips finished steps.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT="${AVMAE_DEMO_OUT:-demo_out}"
CLIPS="${AVMAE_DEMO_CLIPS:-200}"
CLASSES="${AVMAE_DEMO_CLASSES:-8}"
step() { printf '\n\033[1m== %s\033[0m\n' "$*"; }

step "1/6 install what is missing"
bash pipelines/setup.sh
# The chosen interpreter's scripts (avmae-shard, ...) come first on PATH, also for the jobs sbatch starts.
PATH="$("${AVMAE_PYTHON:-python3}" -c 'import os, sys; print(os.path.dirname(sys.executable))'):$PATH"
export PATH

step "2/6 synthetic corpus: $CLIPS clips, $CLASSES classes (each class its own picture and sound)"
if [ ! -f "$OUT/corpus/corpus.csv" ]; then
  avmae-shard synth --out "$OUT/corpus" --num "$CLIPS" --classes "$CLASSES"
fi

step "3/6 shards (re-running resumes; 20% of the videos held out as 'val')"
avmae-shard build --list "$OUT/corpus/corpus.csv" --out "$OUT/shards" --segment-seconds 4 \
  --num-frames 16 --short-side 128 --target-frames 400 --shard-size 25 --val-fraction 0.2
avmae-shard verify "$OUT/shards"

avmae-shard inspect "$OUT/shards" --sample 0 --png-dir "$OUT/inspect"

train() {  # 2 processes over gloo, as torchrun starts them on a GPU node
  OMP_NUM_THREADS=1 torchrun --nproc_per_node=2 --master_port="${AVMAE_DEMO_PORT:-29531}" -m avmae.cli.train "$@"
}

step "4/6 pretrain a tiny AV-MAE (DeepSpeed ZeRO-2, 2 processes, gloo)"
train --config configs/demo_pretrain.yaml

step "5/6 fine-tune the pretrained encoder on the 8 classes"
train --config configs/demo_finetune.yaml

step "6/6 the same fine-tuning from scratch, for comparison"
train --config configs/demo_finetune.yaml --set finetune.init= --workdir "$OUT/runs/scratch"

python3 - "$OUT" <<'PY'
import json, sys
from pathlib import Path
out = Path(sys.argv[1])
rows = []
for name in ("finetune", "scratch"):
    evals = [json.loads(l) for l in (out / "runs" / name / "metrics.jsonl").read_text().splitlines() if "eval/top1" in l]
    rows.append((name, evals[-1]["eval/top1"], evals[-1]["eval/samples"]))
report = {"held_out_top1": {name: top1 for name, top1, _ in rows}, "held_out_samples": rows[0][2], "chance": 1 / 8}
(out / "report.json").write_text(json.dumps(report, indent=1))
print(f"\nheld-out top-1 over {rows[0][2]} clips (chance {1/8:.3f}):")
for name, top1, _ in rows:
    print(f"  {'pretrained + fine-tuned' if name == 'finetune' else 'from scratch':24s} {top1:.3f}")
PY

echo
echo "corpus:   $OUT/corpus (corpus.csv lists clip,label)"
echo "shards:   $OUT/shards (manifest.json, failures.jsonl, *.tar + *.idx); pictures in $OUT/inspect"
echo "runs:     $OUT/runs/{pretrain,finetune,scratch} (metrics.jsonl, tensorboard/, checkpoints/, export/)"
echo "report:   $OUT/report.json"
