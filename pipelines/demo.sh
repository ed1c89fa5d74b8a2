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

step "1/7 install what is missing"
bash pipelines/setup.sh
# The chosen interpreter's scripts (avmae-shard, ...) come first on PATH, also for the jobs sbatch starts.
PATH="$("${AVMAE_PYTHON:-python3}" -c 'import os, sys; print(os.path.dirname(sys.executable))'):$PATH"
export PATH

step "2/7 synthetic corpus: $CLIPS clips, $CLASSES classes (each class its own picture and sound)"
if [ ! -f "$OUT/corpus/corpus.csv" ]; then
  avmae-shard synth --out "$OUT/corpus" --num "$CLIPS" --classes "$CLASSES"
fi

step "3/7 shards (re-running resumes; 20% of the videos held out as 'val')"
avmae-shard build --list "$OUT/corpus/corpus.csv" --out "$OUT/shards" --segment-seconds 4 \
  --num-frames 16 --short-side 128 --target-frames 400 --shard-size 25 --val-fraction 0.2
avmae-shard verify "$OUT/shards"

avmae-shard inspect "$OUT/shards" --sample 0 --png-dir "$OUT/inspect"

train() {  # 2 processes over gloo, as torchrun starts them on a GPU node
  OMP_NUM_THREADS=1 torchrun --nproc_per_node=2 --master_port="${AVMAE_DEMO_PORT:-29531}" -m avmae.cli.train "$@"
}

step "4/7 pretrain a tiny AV-MAE (DeepSpeed ZeRO-2, 2 processes, gloo)"
train --config configs/demo_pretrain.yaml --set data.shards="$OUT/shards" --workdir "$OUT/runs/pretrain"

step "5/7 fine-tune the pretrained encoder on the 8 classes"
train --config configs/demo_finetune.yaml --set data.shards="$OUT/shards" --set finetune.init="$OUT/runs/pretrain" \
  --workdir "$OUT/runs/finetune"

step "6/7 the same fine-tuning from scratch, for comparison"
train --config configs/demo_finetune.yaml --set data.shards="$OUT/shards" --set finetune.init= \
  --workdir "$OUT/runs/scratch"

step "7/7 evaluate: held-out accuracy (2 views), retrieval vs chance, reconstructions"
avmae-eval --ckpt "$OUT/runs/finetune" --data "$OUT/shards" --split val --task vggsound --views 2 \
  --out "$OUT/eval/finetune" --workers 1
avmae-eval --ckpt "$OUT/runs/scratch" --data "$OUT/shards" --split val --task vggsound --views 2 \
  --out "$OUT/eval/scratch" --workers 1
avmae-eval --ckpt "$OUT/runs/pretrain" --data "$OUT/shards" --split val --task retrieval \
  --out "$OUT/eval/retrieval" --workers 1
avmae-eval reconstruct --ckpt "$OUT/runs/pretrain" --data "$OUT/shards" --split val --num 3 \
  --out "$OUT/eval/reconstructions"

python3 - "$OUT" <<'PY'
import json, sys
from pathlib import Path
out = Path(sys.argv[1])
read = lambda name: json.loads((out / "eval" / name / "report.json").read_text())["metrics"]
finetune, scratch, retrieval = read("finetune"), read("scratch"), read("retrieval")
report = {"held_out_top1": {"pretrained_then_finetuned": finetune["top1"], "from_scratch": scratch["top1"],
                            "chance": 1 / finetune["classes"]},
          "held_out_samples": finetune["samples"],
          "retrieval_audio_to_video": retrieval["audio_to_video"], "retrieval_chance": retrieval["chance"]}
(out / "report.json").write_text(json.dumps(report, indent=1))
print(f"\nheld-out clips: {finetune['samples']}   (chance top-1 {1 / finetune['classes']:.3f})")
print(f"  top-1, pretrained + fine-tuned  {finetune['top1']:.3f}")
print(f"  top-1, fine-tuned from scratch  {scratch['top1']:.3f}")
a2v, chance = retrieval["audio_to_video"], retrieval["chance"]
print(f"  audio->video R@1 / R@5 of the pretrained model {a2v['R@1']:.3f} / {a2v['R@5']:.3f}"
      f"   (chance {chance['R@1']:.3f} / {chance['R@5']:.3f})")
PY

echo
echo "corpus:   $OUT/corpus (corpus.csv lists clip,label)"
echo "shards:   $OUT/shards (manifest.json, failures.jsonl, *.tar + *.idx); pictures in $OUT/inspect"
echo "runs:     $OUT/runs/{pretrain,finetune,scratch} (metrics.jsonl, tensorboard/, checkpoints/, export/)"
echo "eval:     $OUT/eval (report.json, predictions.npz, confusions.png per model; reconstructions/*.png)"
echo "report:   $OUT/report.json"
