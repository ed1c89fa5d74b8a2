#!/usr/bin/env bash
# The full-size recipes, run for real on 2 CPU ranks (so that a recipe whose real model cannot build, save, resume
# or export fails here, not on a cluster): configs/pretrain_as2m.yaml as written
# (ViT-L mid fusion, 595.85 M parameters), only the cluster-sized settings changed (batch 1 per rank, ZeRO-3, 2
# steps, checkpoint every step), trains 1 step, stops with a checkpoint, resumes for step 2 and exports the
# consolidated fp32 model; the MBT-L fine-tune recipe (configs/avmae_mbt_vggsound.yaml) takes one step from that
# export; avmae-eval scores the fine-tuned model. Prints a JSON summary (seconds per step, peak resident memory of
# the largest rank per stage) and writes it to $OUT/full_size.json. Needs about 20 GB of free memory and 30 GB of
# disk; about 9 minutes on 2 cores. Slow and memory-hungry, so it is not part of the test suite (docs/performance.md,
# "The full-size recipes, run").
#   OUT=DIR            work folder (default full_size_out; removed first)
#   AVMAE_PYTHON=...   the interpreter (default python3)
set -euo pipefail
cd "$(dirname "$0")/.."
OUT="${OUT:-full_size_out}"
PYTHON="${AVMAE_PYTHON:-python3}"
rm -rf "$OUT"
mkdir -p "$OUT"
say() { printf '\n\033[1m== %s\033[0m\n' "$*" >&2; }

# Peak resident memory of the largest process a stage started (GNU time's %M: the children's ru_maxrss, KiB),
# and its wall seconds, one line per stage in $OUT/stages.txt.
timed() {  # $1 = stage name, rest = command
  local name="$1"; shift
  /usr/bin/time -o "$OUT/time_$name.txt" -f "%M %e" "$@"
  echo "$name $(cat "$OUT/time_$name.txt")" >> "$OUT/stages.txt"
}
# 2 ranks over gloo, one thread each (2 cores); a command, not a function, so that GNU time can run it
export OMP_NUM_THREADS=1
TRAIN=("$PYTHON" -m torch.distributed.run --nproc_per_node=2 --master_port="${AVMAE_PORT:-29547}" -m avmae.cli.train)

say "shards at the recipe's geometry: 16 frames, 256 px short side, 1024 x 128 log-mel (8 clips, 4 classes)"
"$PYTHON" -m avmae.cli.shard synth --out "$OUT/corpus" --num 8 --classes 4 --seconds 10 --size 456x256 --seed 0 --workers 1 >/dev/null
"$PYTHON" -m avmae.cli.shard build --list "$OUT/corpus/corpus.csv" --out "$OUT/shards" --num-frames 16 \
  --short-side 256 --target-frames 1024 --shard-size 4 --val-fraction 0.25 --no-progress --json > "$OUT/build.json"

# What differs from the recipe as written: where the shards are, what a 2-core, 24 GiB machine holds (batch 1 per
# rank, ZeRO-3 so each rank keeps half of the parameters, gradients and Adam moments), and a 2-step schedule.
# bf16 as on the GPUs (precision auto is fp32 on a CPU, where two ranks of ViT-L do not fit in 24 GiB: 12.5 GB each
# in the first step). ZeRO's buckets shrink from 5e8 elements (2 GB each in fp32) to 5e7, and the loader reads in the training process
# (data.workers 0): a DataLoader worker forked after the model exists would make the rank's every later write to its
# parameters and optimizer state copy a page the worker still maps.
SMALL=(--set data.shards="$OUT/shards" --set data.batch_size=1 --set data.workers=0 --set zero_stage=3
       --set zero_bucket_elements=50000000 --set precision=bf16 --set log.every=1)

say "pretrain step 1, then stop with a checkpoint (ViT-L, ZeRO-3, 2 ranks)"
timed pretrain_step1 "${TRAIN[@]}" --config configs/pretrain_as2m.yaml "${SMALL[@]}" --set optim.steps=2 \
  --set optim.warmup_steps=1 --set checkpoint.every=1 --set stop_after=1 --workdir "$OUT/runs/pretrain"
say "resume: step 2 and the consolidated fp32 export"
timed pretrain_resume "${TRAIN[@]}" --config configs/pretrain_as2m.yaml "${SMALL[@]}" --set optim.steps=2 \
  --set optim.warmup_steps=1 --set checkpoint.every=1 --workdir "$OUT/runs/pretrain"

say "fine-tune: the MBT-L recipe, one step from the pretraining export"
timed finetune "${TRAIN[@]}" --config configs/avmae_mbt_vggsound.yaml "${SMALL[@]}" --set data.eval_split=val \
  --set init.path="$OUT/runs/pretrain" --set optim.steps=1 --set optim.warmup_steps=0 \
  --set checkpoint.every=1 --set finetune.eval_every=0 --workdir "$OUT/runs/finetune"

say "evaluate the fine-tuned MBT-L"
timed eval "$PYTHON" -m avmae.cli.eval --ckpt "$OUT/runs/finetune" --data "$OUT/shards" --split val \
  --task vggsound --out "$OUT/eval" --workers 1

"$PYTHON" - "$OUT" <<'PY'
import json, sys
from pathlib import Path
out = Path(sys.argv[1])
def rows(run):
    return [json.loads(line) for line in (out / "runs" / run / "metrics.jsonl").read_text().splitlines() if line.strip()]
stages = {name: {"peak_rss_gb": round(int(kib) / 2**20, 2), "seconds": float(sec)}
          for name, kib, sec in (line.split() for line in (out / "stages.txt").read_text().splitlines())}
pretrain, finetune = rows("pretrain"), rows("finetune")
export = out / "runs" / "pretrain" / "export" / "model.safetensors"
summary = {
    "pretrain": {"steps": [{"step": r["step"], "loss": r["loss"], "seconds_per_step": round(2 / r["samples_per_s"], 1),
                            "host_peak_rss_gb_largest_rank": round(r["host_peak_rss_gb"], 2)}
                           for r in pretrain if "loss" in r],
                 "export": export.name, "export_gb": round(export.stat().st_size / 2**30, 2),
                 "checkpoint_gb": round(sum(f.stat().st_size for f in (out / "runs" / "pretrain" / "checkpoints").rglob("*")
                                            if f.is_file()) / 2**30, 2)},
    "finetune": {"steps": [{"step": r["step"], "loss": r["loss"], "seconds_per_step": round(2 / r["samples_per_s"], 1),
                            "host_peak_rss_gb_largest_rank": round(r["host_peak_rss_gb"], 2)}
                           for r in finetune if "loss" in r]},
    "eval": json.loads((out / "eval" / "report.json").read_text())["metrics"],
    "stages": stages,
}
(out / "full_size.json").write_text(json.dumps(summary, indent=1))
print(json.dumps(summary, indent=1))
PY
