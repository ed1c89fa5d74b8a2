#!/usr/bin/env bash
# The test suite on a fresh machine: installs what is missing (pipelines/setup.sh), starts a one-node SLURM cluster
# on localhost when run as root (so the sbatch tests run for real; AVMAE_TEST_SLURM=0 skips them), runs pytest.
# Extra arguments go to pytest, e.g.  bash pipelines/test.sh -k shard -x
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${AVMAE_PYTHON:-python3}"
bash pipelines/setup.sh
# The chosen interpreter's scripts (avmae-shard, ...) come first on PATH, also for the jobs sbatch starts.
PATH="$("${AVMAE_PYTHON:-python3}" -c 'import os, sys; print(os.path.dirname(sys.executable))'):$PATH"
export PATH

if [ "${AVMAE_TEST_SLURM:-1}" = "1" ] && [ "$(id -u)" -eq 0 ] && command -v apt-get >/dev/null; then
  if ! command -v sinfo >/dev/null || ! sinfo -h -o %T 2>/dev/null | grep -qE 'idle|mix|alloc'; then
    bash tests/slurm/localhost_cluster.sh start
    trap 'bash tests/slurm/localhost_cluster.sh stop' EXIT
  fi
fi

"$PYTHON" -m pytest -q "$@"
