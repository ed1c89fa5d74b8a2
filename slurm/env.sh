# Sourced by every avmae sbatch script: find the checkout, activate its Python, print what the job is.
#
# SLURM runs a copy of the batch script from its spool folder, so the checkout is found from AVMAE_HOME or the
# folder the job was submitted from. AVMAE_VENV (a virtual environment) is activated when set; otherwise the
# submitting shell's PATH, which SLURM passes to the job, decides which avmae runs.
AVMAE_HOME="${AVMAE_HOME:-${SLURM_SUBMIT_DIR:-$PWD}}"
if [ ! -f "$AVMAE_HOME/slurm/env.sh" ]; then
  echo "avmae: cannot find the checkout: submit from it or set AVMAE_HOME (got '$AVMAE_HOME')" >&2
  exit 2
fi
if [ -n "${AVMAE_VENV:-}" ]; then
  # shellcheck disable=SC1091
  source "$AVMAE_VENV/bin/activate"
fi
cd "$AVMAE_HOME"
echo "avmae job ${SLURM_JOB_ID:-?}${SLURM_ARRAY_TASK_ID:+ task $SLURM_ARRAY_TASK_ID/$SLURM_ARRAY_TASK_COUNT}" \
     "on $(hostname -s) at $(date -u +%FT%TZ); python: $(command -v python3)"
