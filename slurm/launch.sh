#!/bin/bash
# The launcher every avmae sbatch script ends in: one srun task per GPU (or per CPU slot without GPUs), with the
# rendezvous derived from the job itself (avmae.distributed maps SLURM_PROCID/NTASKS/LOCALID to ranks).
#   usage (inside an sbatch script):  exec bash "$AVMAE_HOME/slurm/launch.sh" <python module> [args...]
set -euo pipefail
module="$1"
shift
MASTER_ADDR="$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)"
MASTER_PORT="$((20000 + SLURM_JOB_ID % 10000))"  # the same for every task of the job, distinct across jobs
export MASTER_ADDR MASTER_PORT
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-${SLURM_CPUS_PER_TASK:-1}}"
echo "avmae: $SLURM_NTASKS tasks on $SLURM_JOB_NUM_NODES node(s), rendezvous $MASTER_ADDR:$MASTER_PORT," \
     "restart $((${SLURM_RESTART_COUNT:-0}))"
# --kill-on-bad-exit: one failed rank ends the step instead of leaving the others blocked in a collective.
exec srun --kill-on-bad-exit=1 --cpu-bind=none python3 -u -m "$module" "$@"
