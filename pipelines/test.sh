#!/usr/bin/env bash
# The test suite on a fresh machine: installs what is missing (pipelines/setup.sh), starts a two-node SLURM cluster
# on this machine when run as root (so the sbatch tests run for real; AVMAE_TEST_SLURM=0 skips them), runs pytest.
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
    # two nodes in network namespaces (tests/test_two_nodes.py; the one-node tests run on either node), one node
    # on localhost where namespaces cannot be made
    cluster=tests/slurm/localhost_cluster.sh
    if unshare --net --uts true 2>/dev/null; then cluster=tests/slurm/two_node_cluster.sh; fi
    bash "$cluster" start
    trap 'bash "$cluster" stop' EXIT
  fi
fi

"$PYTHON" -m pytest -q "$@"
