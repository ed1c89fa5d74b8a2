#!/usr/bin/env bash
# Installs what avmae needs on a fresh Debian/Ubuntu machine, skipping what is already there:
# ffmpeg (+ ffprobe) from apt, torch/torchvision/torchaudio at the pinned versions, and avmae itself (editable)
# with its dependencies. Uses $AVMAE_PYTHON (default: python3); run it inside a venv to keep things separate.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${AVMAE_PYTHON:-python3}"
say() { echo "[setup] $*" >&2; }

if ! command -v ffmpeg >/dev/null || ! command -v ffprobe >/dev/null; then
  say "installing ffmpeg (apt-get)"
  if [ "$(id -u)" -ne 0 ]; then SUDO=sudo; else SUDO=; fi
  export DEBIAN_FRONTEND=noninteractive
  $SUDO apt-get update -q >/dev/null
  $SUDO apt-get install -y -q --no-install-recommends ffmpeg >/dev/null
fi

# torch first, from the pins in pyproject.toml: the same versions as the GPU machines' image.
want_torch=$(grep -oE '"torch==[0-9.]+"' pyproject.toml | tr -d '"')
want_vision=$(grep -oE '"torchvision==[0-9.]+"' pyproject.toml | tr -d '"')
want_audio=$(grep -oE '"torchaudio==[0-9.]+"' pyproject.toml | tr -d '"')
have=$("$PYTHON" - <<'PY' 2>/dev/null || true
import importlib.metadata as m
print(" ".join(f"{p}=={m.version(p)}" for p in ("torch", "torchvision", "torchaudio")))
PY
)
if [ "$have" != "$want_torch $want_vision $want_audio" ]; then
  say "installing $want_torch $want_vision $want_audio (about a minute)"
  "$PYTHON" -m pip install -q "$want_torch" "$want_vision" "$want_audio"
fi

if ! "$PYTHON" -c "import avmae, deepspeed, webdataset, nvidia.dali, isal, pytest, xdist, sklearn, scipy, tensorboard, s3fs, gcsfs, moto.server, gcp_storage_emulator" 2>/dev/null \
   || [ "$("$PYTHON" -c 'import avmae, os; print(os.path.dirname(os.path.dirname(avmae.__file__)))' 2>/dev/null)" != "$PWD" ]; then
  say "installing avmae and its dependencies (pip install -e .[test])"
  "$PYTHON" -m pip install -q -e ".[test]"
fi
say "ready: $("$PYTHON" -c 'import torch, avmae; print("avmae", avmae.__version__, "torch", torch.__version__)'), $(ffmpeg -hide_banner -version | head -n1 | cut -d' ' -f1-3)"
