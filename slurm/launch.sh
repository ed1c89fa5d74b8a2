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
srun --kill-on-bad-exit=1 --cpu-bind=none python3 -u -m "$module" "$@" &
srun_pid=$!

# srun waits for an exit report from every task. When a node's step daemon dies with its tasks (a node lost, the
# OOM killer), that report never comes: --kill-on-bad-exit ends the other ranks and srun then waits for ever (seen
# on the two-node test cluster, tests/test_two_nodes.py). So once this node's own tasks of the step have left, the
# other nodes get AVMAE_STEP_GRACE_S seconds to report, then srun is aborted the way srun documents (two SIGINTs
# within a second), which waits at most KillWait more. The job then fails and can be requeued or resubmitted.
local_tasks() { scontrol listpids "$SLURM_JOB_ID" 2>/dev/null | awk '$3 ~ /^[0-9]+$/' | wc -l; }
grace="${AVMAE_STEP_GRACE_S:-60}"
seen=0 idle=0
while kill -0 "$srun_pid" 2>/dev/null; do
  sleep 1
  if [ "$(local_tasks)" -gt 0 ]; then seen=1 idle=0; elif [ "$seen" = 1 ]; then idle=$((idle + 1)); fi
  if [ "$idle" -ge "$grace" ]; then
    echo "avmae: this node's tasks left ${grace} s ago and srun still waits for another node: aborting the step" >&2
    kill -INT "$srun_pid" 2>/dev/null || true
    sleep 0.2
    kill -INT "$srun_pid" 2>/dev/null || true
    break
  fi
done
wait "$srun_pid"
