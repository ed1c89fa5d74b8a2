#!/usr/bin/env bash
# Epic-Kitchens-100 actions: shards of the narrated segments, fine-tuning with verb and noun heads, verb / noun /
# action accuracy on the validation set.
#
# 1. Annotations: EPIC_100_train.csv and EPIC_100_validation.csv (epic-kitchens-100-annotations), into $EPIC_ROOT.
# 2. Videos: the released P01/videos/P01_01.MP4 ... tree under $EPIC_ROOT/videos/ (found by video_id anywhere).
#
#   EPIC_ROOT=/data/epic PRETRAINED=/scratch/avmae/runs/pretrain_as2m bash pipelines/epic_kitchens.sh
# Run settings shared by the recipes (AVMAE_RUN=local|slurm, DRY_RUN=1, AVMAE_SET extra --set overrides for every
# training run, SHARD_ARGS extra shard-build arguments, GPUS): see pipelines/lib.sh. tests/test_pipelines.py runs
# this recipe end to end on a tiny stand-in of the dataset with a tiny model.
cd "$(dirname "$0")/.."
source pipelines/lib.sh
ROOT="${EPIC_ROOT:?set EPIC_ROOT to the folder with the EPIC_100 annotation CSVs and videos/}"
OUT="${OUT:-$ROOT/avmae}"
PRETRAINED="${PRETRAINED:?set PRETRAINED to an AV-MAE pretraining run folder}"
need "$ROOT/EPIC_100_train.csv" "from the epic-kitchens-100-annotations repository"
need "$ROOT/EPIC_100_validation.csv" "from the epic-kitchens-100-annotations repository"

step "shards: training segments (1% of videos held out for model selection) and the validation set"
shards "$OUT/epic_train" --list "$ROOT/EPIC_100_train.csv" --src "$ROOT/videos" --val-fraction 0.01
shards "$OUT/epic_val" --list "$ROOT/EPIC_100_validation.csv" --src "$ROOT/videos" --split test

step "fine-tuning with verb (97) and noun (300) heads (configs/finetune_epic.yaml)"
train slurm/finetune_epic.sbatch configs/finetune_epic.yaml --set data.shards="$OUT/epic_train" \
  --set data.eval_split=val --set init.path="$PRETRAINED" --set workdir="$OUT/runs/finetune_epic"

step "evaluation: verb, noun and action top-1 / top-5 on the validation set"
evaluate --ckpt "$OUT/runs/finetune_epic" --data "$OUT/epic_val" --split test --task epic --out "$OUT/eval/epic"
