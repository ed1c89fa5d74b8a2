# Shared by the dataset recipes (audioset.sh, vggsound.sh, epic_kitchens.sh): run a step on SLURM or locally,
# or print it (DRY_RUN=1) to read the recipe before spending a cluster on it.
#   AVMAE_RUN=slurm (default when sbatch exists) | local
#   DRY_RUN=1   print the commands instead of running them
set -euo pipefail
AVMAE_RUN="${AVMAE_RUN:-$(command -v sbatch >/dev/null && echo slurm || echo local)}"
step() { printf '\n== %s\n' "$*" >&2; }
run() {
  if [ "${DRY_RUN:-0}" = "1" ]; then
    printf '%q ' "$@"
    printf '\n'
  else
    "$@"
  fi
}
need() {  # need FILE DESCRIPTION: stop with a clear message when an input is missing
  if [ "${DRY_RUN:-0}" != "1" ] && [ ! -e "$1" ]; then
    echo "missing $1: $2" >&2
    exit 2
  fi
}
shards() {  # shards OUT ARGS...: avmae-shard build as a SLURM array (waits for it) or locally
  local out="$1"
  shift
  if [ "$AVMAE_RUN" = "slurm" ]; then
    run sbatch --wait --array="0-$((${SHARD_TASKS:-32} - 1))" slurm/shard_build.sbatch --out "$out" "$@"
    run avmae-shard finalize "$out"
  else
    run avmae-shard build --out "$out" "$@"
  fi
  run avmae-shard verify "$out" --quick
}
train() {  # train SBATCH CONFIG ARGS...: a training job on SLURM (waits for it) or torchrun on this machine
  local script="$1" config="$2"
  shift 2
  if [ "$AVMAE_RUN" = "slurm" ]; then
    run env AVMAE_CONFIG="$config" sbatch --wait "$script" "$@"
  else
    run torchrun --nproc_per_node="${GPUS:-1}" -m avmae.cli.train --config "$config" "$@"
  fi
}
evaluate() {  # evaluate ARGS...: avmae-eval on SLURM or locally
  if [ "$AVMAE_RUN" = "slurm" ]; then
    run sbatch --wait slurm/eval.sbatch "$@"
  else
    run torchrun --nproc_per_node="${GPUS:-1}" -m avmae.cli.eval "$@"
  fi
}
