#!/usr/bin/env bash
# AudioSet: AV-MAE pretraining on AS-2M, fine-tuning on AS-20K, evaluation on the eval set (mAP, retrieval).
#
# 1. Lists (Google's AudioSet download page, "Dataset downloads"): balanced_train_segments.csv,
#    unbalanced_train_segments.csv, eval_segments.csv and class_labels_indices.csv, into $AUDIOSET_ROOT.
# 2. Videos: download them yourself (e.g. yt-dlp); any of these names under $AUDIOSET_ROOT/videos/ matches a row:
#    YTID.mp4 (whole video; the segment is cut by avmae), YTID_30000_40000.mp4 or YTID_30.000_40.000.mkv (cut by
#    the usual downloaders). About a tenth of AudioSet is gone from YouTube: missing rows are recorded in
#    failures.jsonl, and the build summary lists the classes that lost most.
# 3. Everything else below: shards (SLURM array), pretraining, fine-tuning, evaluation.
# 4. Optional, AV-MAE's fine-tuning as Google ran it (configs/avmae_mbt_audioset.yaml): with AS500K_LIST (MBT's
#    AS-500K list, arXiv 2107.00135, in AudioSet's CSV columns; not published with AudioSet) and SCENIC_AS_PRETRAIN
#    (Google's released AV-MAE AudioSet pretraining checkpoint, Scenic's file), its shards are built with Scenic's
#    log-mel front end, the checkpoint is converted, and MBT is fine-tuned on AS-500K and scored as Scenic tests.
#
#   AUDIOSET_ROOT=/data/audioset OUT=/scratch/avmae bash pipelines/audioset.sh      (DRY_RUN=1 to print the steps)
# Run settings shared by the recipes (AVMAE_RUN=local|slurm, DRY_RUN=1, AVMAE_SET extra --set overrides for every
# training run, SHARD_ARGS extra shard-build arguments, GPUS): see pipelines/lib.sh. tests/test_pipelines.py runs
# this recipe end to end on a tiny stand-in of the dataset with a tiny model.
cd "$(dirname "$0")/.."
source pipelines/lib.sh
ROOT="${AUDIOSET_ROOT:?set AUDIOSET_ROOT to the folder with the AudioSet CSVs and videos/}"
OUT="${OUT:-$ROOT/avmae}"
LABELS="$ROOT/class_labels_indices.csv"
for list in balanced_train_segments unbalanced_train_segments eval_segments class_labels_indices; do
  need "$ROOT/$list.csv" "download it from the AudioSet website"
done

step "shards: AS-2M (unbalanced + balanced train, 1% held out as val), AS-20K (balanced, 5% held out), eval set"
run mkdir -p "$OUT"
if [ "${DRY_RUN:-0}" != "1" ]; then  # AS-2M = both train lists in one (header comments of the second dropped)
  { cat "$ROOT/unbalanced_train_segments.csv"; grep -v '^#' "$ROOT/balanced_train_segments.csv"; } > "$OUT/as2m_segments.csv"
fi
shards "$OUT/as2m" --list "$OUT/as2m_segments.csv" --class-labels "$LABELS" --src "$ROOT/videos" --val-fraction 0.01
shards "$OUT/as20k" --list "$ROOT/balanced_train_segments.csv" --class-labels "$LABELS" --src "$ROOT/videos" \
  --val-fraction 0.05
shards "$OUT/as_eval" --list "$ROOT/eval_segments.csv" --class-labels "$LABELS" --src "$ROOT/videos" --split test

step "pretraining: ViT-L AV-MAE, 8 nodes x 8 GPUs (configs/pretrain_as2m.yaml)"
train slurm/pretrain_as2m.sbatch configs/pretrain_as2m.yaml --set data.shards="$OUT/as2m" \
  --set workdir="$OUT/runs/pretrain_as2m"

step "fine-tuning on AS-20K (configs/finetune_as20k.yaml)"
# Checkpoints are chosen on AS-20K's own held-out 5%; the AudioSet eval set is only scored at the end (below).
train slurm/finetune_as20k.sbatch configs/finetune_as20k.yaml --set data.shards="$OUT/as20k" \
  --set data.eval_split=val --set init.path="$OUT/runs/pretrain_as2m" --set workdir="$OUT/runs/finetune_as20k"

step "evaluation: mAP with 4 temporal views on the eval set, and retrieval with the pretrained model"
evaluate --ckpt "$OUT/runs/finetune_as20k" --weights averaged --data "$OUT/as_eval" --split test --task audioset \
  --views 4 --out "$OUT/eval/as20k_audioset"
evaluate --ckpt "$OUT/runs/pretrain_as2m" --data "$OUT/as_eval" --split test --task retrieval \
  --out "$OUT/eval/retrieval"

if [ -n "${AS500K_LIST:-}" ]; then
  step "AV-MAE's fine-tuning as Google ran it: MBT on AS-500K from the released pretraining (configs/avmae_mbt_audioset.yaml)"
  need "$AS500K_LIST" "MBT's AS-500K list (AudioSet's CSV columns)"
  : "${SCENIC_AS_PRETRAIN:?set SCENIC_AS_PRETRAIN to the released AV-MAE AudioSet pretraining checkpoint of Google}"
  need "$SCENIC_AS_PRETRAIN" "Google's released AV-MAE AudioSet pretraining checkpoint (Scenic's file)"
  run avmae-convert scenic "$SCENIC_AS_PRETRAIN" --out "$OUT/runs/scenic_as_pretrain"
  # the released weights' input (docs/scenic.md), and the clip at 12.5 fps for Scenic's 32-frame windows
  scenic_input=(--audio-frontend scenic --target-frames 1000 --num-frames 125)
  shards "$OUT/as500k" --list "$AS500K_LIST" --class-labels "$LABELS" --src "$ROOT/videos" --val-fraction 0.01 \
    "${scenic_input[@]}"
  shards "$OUT/as_eval_scenic" --list "$ROOT/eval_segments.csv" --class-labels "$LABELS" --src "$ROOT/videos" \
    --split test "${scenic_input[@]}"
  train slurm/avmae_mbt_audioset.sbatch configs/avmae_mbt_audioset.yaml --set data.shards="$OUT/as500k" \
    --set data.eval_split=val --set init.path="$OUT/runs/scenic_as_pretrain" --set workdir="$OUT/runs/avmae_mbt_audioset"
  evaluate --ckpt "$OUT/runs/avmae_mbt_audioset" --data "$OUT/as_eval_scenic" --split test --task audioset \
    --views 4 --view-average logits --out "$OUT/eval/avmae_mbt_audioset"
fi
