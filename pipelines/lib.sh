# Shared by the dataset recipes (audioset.sh, vggsound.sh, epic_kitchens.sh): run a step on SLURM or locally,
# or print it (DRY_RUN=1) to read the recipe before spending a cluster on it.
#   AVMAE_RUN=slurm (default when sbatch exists) | local
#   DRY_RUN=1   print the commands instead of running them
#   AVMAE_SET="a.b=c x.y=z"   extra --set overrides appended to every training run (space-separated, no spaces
#                             inside a value), e.g. a tiny model and a few steps to try a recipe on a stand-in
#   SHARD_ARGS="--workers 2"  extra avmae-shard build arguments for every shard build (also the SLURM array's)
#   GPUS=N      processes per node for AVMAE_RUN=local (default 1)
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
  local out="$1" extra
  shift
  read -r -a extra <<< "${SHARD_ARGS:-}"  # split on spaces, no globbing
  set -- "$@" "${extra[@]}"
  if [ "$AVMAE_RUN" = "slurm" ]; then
    run sbatch --wait --array="0-$((${SHARD_TASKS:-32} - 1))" slurm/shard_build.sbatch --out "$out" "$@"
    run avmae-shard finalize "$out"
  else
    run avmae-shard build --out "$out" "$@"
  fi
  run avmae-shard verify "$out" --quick
}
train() {  # train SBATCH CONFIG ARGS...: a training job on SLURM (waits for it) or torchrun on this machine
  local script="$1" config="$2" overrides override
  shift 2
  read -r -a overrides <<< "${AVMAE_SET:-}"  # split on spaces, no globbing ([0.5,1.0] stays as it is)
  for override in "${overrides[@]}"; do  # after the recipe's own, so they win
    set -- "$@" --set "$override"
  done
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
