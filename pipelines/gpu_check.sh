#!/usr/bin/env bash
# One command for a GPU machine: is avmae right and fast there? Prints one table, writes
# $OUT/gpu_check.json, exits 1 when a check fails. Within 10 minutes on one GPU node:
#   - shards built here from ffmpeg-made clips (avmae-shard build, the recipe's 16 frames / 256 px / 1024 log-mel);
#   - DALI `mixed` (nvJPEG) decode rate on them, with the recipe's loader settings;
#   - configs/pretrain_as2m.yaml as written (ViT-L, bf16) at 8 (the recipe's), 32 and 64 samples per GPU: step time,
#     MFU, peak GPU memory; the sweep stops at the first out-of-memory, and recommends the fastest batch that leaves
#     10 % of the GPU's memory free;
#   - NCCL all-reduce / all-gather bandwidth over every local GPU (torchrun; with one GPU the table says so);
#   - a 50-step run through DALI `mixed` and the trainer, and the same run stopped after 25 and resumed, with torch's
#     deterministic algorithms and CUBLAS_WORKSPACE_CONFIG=:4096:8: same losses;
#   - a short fine-tune of it scored by avmae-eval through DALI `mixed` and through torch: same samples, scores
#     within 2e-2, top-1 / top-5 within the close calls that score gap allows.
# Without CUDA the same steps run at tiny size (DALI on the CPU, gloo between 2 processes, 16 steps stopped after 8);
# tests/test_gpu_check.py runs that mode, so the script is known to work before a GPU sees it.
# On the CPU the resumed losses must equal the uninterrupted run's bit for bit. Only a GPU confirms: nvJPEG's rate and
# rounding (evaluation scores within 2e-2 of libjpeg-turbo's), bf16 step time, MFU and memory at each batch, NCCL
# bandwidth, and that bf16 losses after the resume stay within 1e-2 (the fused attention backward adds with atomics
# and is not bit-reproducible; the table shows the gap before and after the resume apart, and the JSON names the
# kernels torch warned about). Steps, sizes and tolerances: avmae/bench/gpu_check_mode.py.
#   OUT=DIR                work folder (default gpu_check_out; removed first, the check starts clean)
#   AVMAE_CHECK_MODE=auto  auto | cuda | cpu. auto is cuda whenever the NVIDIA driver shows a GPU (also one that
#                          this torch cannot use: then the check fails and says why). cpu on such a machine is a
#                          rehearsal of the scripts: it never prints PASSED and exits 1.
#   AVMAE_SETUP=1          run pipelines/setup.sh first (installs what is missing; a torch already installed in
#                          pyproject.toml's range is kept); 0 to skip
#   AVMAE_WHEELHOUSE=DIR   setup installs from this wheelhouse (pipelines/wheelhouse.sh), with no network
#   AVMAE_PYTHON=python3   the interpreter (a venv's)
set -euo pipefail
cd "$(dirname "$0")/.."
OUT="${OUT:-gpu_check_out}"
PYTHON="${AVMAE_PYTHON:-python3}"
if [ "${AVMAE_SETUP:-1}" = "1" ]; then
  bash pipelines/setup.sh
fi
if command -v nvidia-smi >/dev/null; then
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
fi
mode="${AVMAE_CHECK_MODE:-auto}"
gpus=$("$PYTHON" -c 'from avmae.distributed import gpus_of_machine; print(gpus_of_machine().count)')
if [ "$gpus" -gt 0 ] && [ "$mode" = "auto" ]; then
  mode=cuda
elif [ "$gpus" -gt 0 ] && [ "$mode" = "cpu" ]; then
  echo "[gpu_check] $gpus GPU(s) visible: AVMAE_CHECK_MODE=cpu rehearses the scripts only and will not pass" >&2
fi
rm -rf "$OUT"
# 10 minutes is the promise; a step that hangs is killed by the check itself (gpu_check.CHILD_TIMEOUT_S), this is
# the backstop for the whole.
exec timeout --signal=TERM 660 "$PYTHON" -m avmae.cli.bench gpu-check --out "$OUT" --mode "$mode"
