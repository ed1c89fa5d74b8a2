#!/usr/bin/env bash
# The test suite on a fresh machine: installs what is missing (pipelines/setup.sh), starts a two-node SLURM cluster
# on this machine when run as root (so the sbatch tests run for real; AVMAE_TEST_SLURM=0 skips them), runs pytest.
# Extra arguments go to pytest, in one plain run, e.g.  bash pipelines/test.sh -k shard -x
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${AVMAE_PYTHON:-python3}"
bash pipelines/setup.sh
# The chosen interpreter's scripts (avmae-shard, ...) come first on PATH, also for the jobs sbatch starts.
PATH="$("${AVMAE_PYTHON:-python3}" -c 'import os, sys; print(os.path.dirname(sys.executable))'):$PATH"
export PATH

# The suite runs inside the two-node cluster's controller namespace (its own loopback; the only place sbatch reaches
# slurmctld), or on the host beside a one-node localhost cluster where namespaces cannot be made.
inside=()
if [ "${AVMAE_TEST_SLURM:-1}" = "1" ] && [ "$(id -u)" -eq 0 ] && command -v apt-get >/dev/null; then
  if unshare --net --uts true 2>/dev/null; then
    cluster=tests/slurm/two_node_cluster.sh
    inside=(bash "$cluster" run)
  else
    cluster=tests/slurm/localhost_cluster.sh
  fi
  if ! "${inside[@]}" sinfo -h -o %T 2>/dev/null | grep -qE 'idle|mix|alloc'; then  # else: already up, left up
    bash "$cluster" start
    trap 'bash "$cluster" stop' EXIT
  fi
fi

pytest=("${inside[@]}" "$PYTHON" -m pytest -q)
if [ $# -gt 0 ]; then  # a chosen part of the suite: one plain run
  "${pytest[@]}" "$@"
  exit 0
fi
# The whole suite in two parts. Most tests spend much of their time waiting on subprocesses, imports, ffmpeg and
# servers, so they run on 2 workers (a file's tests stay on one worker: its shards are built once). The tests that
# assert how soon something happens (marked serial) or that share the SLURM cluster then run alone.
# The tests that download from the package registries (marked network) run last, on the host: the cluster's
# namespace has no route out.
status=0
"${pytest[@]}" -n "${AVMAE_TEST_WORKERS:-2}" --dist loadfile -m "not serial and not slurm and not network" || status=$?
"${pytest[@]}" -m "(serial or slurm) and not network" || status=$?
"$PYTHON" -m pytest -q -m network || status=$?
exit "$status"
