#!/usr/bin/env bash
# VGGSound: shards from vggsound.csv (YTID,start,label,split; train and test rows in one file), fine-tuning of an
# AS-2M pretraining run (pipelines/audioset.sh) on 309 classes, top-1/top-5 on the test split.
#
# 1. List: vggsound.csv from the VGGSound release (Oxford VGG), into $VGGSOUND_ROOT.
# 2. Videos under $VGGSOUND_ROOT/videos/ as YTID.mp4 (whole; avmae cuts 10 s from the row's start) or
#    YTID_000030.mp4 / YTID_30.mp4 (already cut to the 10 s segment).
#
#   VGGSOUND_ROOT=/data/vggsound PRETRAINED=/scratch/avmae/runs/pretrain_as2m bash pipelines/vggsound.sh
# Run settings shared by the recipes (AVMAE_RUN=local|slurm, DRY_RUN=1, AVMAE_SET extra --set overrides for every
# training run, SHARD_ARGS extra shard-build arguments, GPUS): see pipelines/lib.sh. tests/test_pipelines.py runs
# this recipe end to end on a tiny stand-in of the dataset with a tiny model.
cd "$(dirname "$0")/.."
source pipelines/lib.sh
ROOT="${VGGSOUND_ROOT:?set VGGSOUND_ROOT to the folder with vggsound.csv and videos/}"
OUT="${OUT:-$ROOT/avmae}"
PRETRAINED="${PRETRAINED:?set PRETRAINED to an AV-MAE pretraining run folder}"
need "$ROOT/vggsound.csv" "download it from the VGGSound release"

step "shards: train (2% held out as val) and test, from the list's own split column"
shards "$OUT/vggsound" --list "$ROOT/vggsound.csv" --src "$ROOT/videos" --val-fraction 0.02

step "fine-tuning (configs/finetune_vggsound.yaml)"
train slurm/finetune_vggsound.sbatch configs/finetune_vggsound.yaml --set data.shards="$OUT/vggsound" \
  --set data.eval_split=val --set init.path="$PRETRAINED" --set workdir="$OUT/runs/finetune_vggsound"

step "evaluation: top-1 / top-5 on the test split, 4 temporal views"
evaluate --ckpt "$OUT/runs/finetune_vggsound" --weights averaged --data "$OUT/vggsound" --split test \
  --task vggsound --views 4 --out "$OUT/eval/vggsound"
