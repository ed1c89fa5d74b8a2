#!/usr/bin/env bash
# Installs what avmae needs, skipping what is already there:
#   - ffmpeg (+ ffprobe) from apt;
#   - torch / torchvision / torchaudio, unless the installed ones are in pyproject.toml's ranges: a cluster's own
#     build (an NGC container's, a site build, 2.11+cu130 on Python 3.12, ...) is kept as it is, never replaced;
#   - avmae and its dependencies at the versions CI tests (pip install -c constraints/ci.txt), with DALI built for
#     the installed torch's CUDA major: avmae[cuda12] or avmae[cuda13] where a GPU is visible, avmae[cpu] (DALI's
#     CUDA 12 build, whose CPU operators need no GPU) where none is.
# From a checkout it installs avmae editable with its tests (pip install -e .[test,<dali>]); with AVMAE_WHEELHOUSE it
# installs the wheel from that wheelhouse (pipelines/wheelhouse.sh), with no network at all.
#   AVMAE_PYTHON=python3     the interpreter (run it inside a venv to keep things separate)
#   AVMAE_WHEELHOUSE=DIR     pip install --no-index --find-links DIR, with DIR/constraints.txt
#   AVMAE_DALI=auto          auto | cuda12 | cuda13 | cpu | none: the DALI extra
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${AVMAE_PYTHON:-python3}"
WHEELHOUSE="${AVMAE_WHEELHOUSE:-}"
say() { echo "[setup] $*" >&2; }

if ! command -v ffmpeg >/dev/null || ! command -v ffprobe >/dev/null; then
  if [ -n "$WHEELHOUSE" ]; then
    say "ffmpeg and ffprobe are missing and AVMAE_WHEELHOUSE means no network: install them from the site's packages"
    exit 1
  fi
  say "installing ffmpeg (apt-get)"
  if [ "$(id -u)" -ne 0 ]; then SUDO=sudo; else SUDO=; fi
  export DEBIAN_FRONTEND=noninteractive
  $SUDO apt-get update -q >/dev/null
  $SUDO apt-get install -y -q --no-install-recommends ffmpeg >/dev/null
fi

pip_flags=(-q)
constraints=constraints/ci.txt
if [ -n "$WHEELHOUSE" ]; then
  [ -d "$WHEELHOUSE" ] || { say "AVMAE_WHEELHOUSE=$WHEELHOUSE: no such folder"; exit 1; }
  pip_flags+=(--no-index --find-links "$WHEELHOUSE")
  constraints="$WHEELHOUSE/constraints.txt"
fi
[ -f "$constraints" ] || { say "$constraints: no such file"; exit 1; }
scratch=$(mktemp -d)
trap 'rm -rf "$scratch"' EXIT

# torch: kept when the installed torch, torchvision and torchaudio are in pyproject.toml's ranges. Then the
# constraints pin them to what is installed (so that no other package's requirement can pull in another torch).
torch_pins=$("$PYTHON" - <<'PY'
import importlib.metadata as metadata
import tomllib

try:
    from packaging.requirements import Requirement
except ImportError:  # a fresh interpreter: pip's own copy
    from pip._vendor.packaging.requirements import Requirement

wanted = {r.name: r for r in map(Requirement, tomllib.load(open("pyproject.toml", "rb"))["project"]["dependencies"])}
pins = []
for name in ("torch", "torchvision", "torchaudio"):
    try:
        version = metadata.version(name)
    except metadata.PackageNotFoundError:
        continue
    # prereleases=True: NGC containers' torch is a prerelease (2.6.0a0+ecf3bae40a)
    if not wanted[name].specifier.contains(version, prereleases=True):
        break
    # the public version: pip's resolver refuses a local one (+cu130) in a constraint beside another specifier
    # (a site-wide pip constraint such as torch<=2.14), and ==2.11.0 matches the installed 2.11.0+cu130 all the same
    pins.append(f"{name}=={version.split('+')[0]}")
else:
    if pins and pins[0].startswith("torch=="):
        print("\n".join(pins))
PY
)
if [ -n "$torch_pins" ]; then
  grep -vE '^(torch|torchvision|torchaudio)==' "$constraints" > "$scratch/constraints.txt"
  echo "$torch_pins" >> "$scratch/constraints.txt"
else
  cp "$constraints" "$scratch/constraints.txt"
  say "installing torch, torchvision, torchaudio at the versions of $constraints (about a minute)"
  "$PYTHON" -m pip install "${pip_flags[@]}" -c "$scratch/constraints.txt" torch torchvision torchaudio
fi

# DALI for the CUDA major of this torch where a GPU is visible; its CUDA 12 build (CPU operators) where none is.
dali="${AVMAE_DALI:-auto}"
if [ "$dali" = "auto" ]; then
  gpus=$("$PYTHON" -c 'from avmae.distributed import gpus_of_machine; print(gpus_of_machine().count)')
  cuda=$("$PYTHON" -c 'import torch; print((torch.version.cuda or "").split(".")[0])')
  dali=cpu
  if [ "$gpus" -gt 0 ] && [ -n "$cuda" ]; then
    dali="cuda$cuda"
  elif [ "$gpus" -gt 0 ]; then
    say "warning: $gpus GPU(s) visible but torch $("$PYTHON" -c 'import torch; print(torch.__version__)') is a CPU build"
  fi
fi
case "$dali" in
  cuda12 | cpu) dali_package=nvidia-dali-cuda120 ;;
  cuda13) dali_package=nvidia-dali-cuda130 ;;
  none) dali_package= ;;
  *) say "AVMAE_DALI=$dali: DALI is built for CUDA 12 and 13 only (cuda12, cuda13, cpu or none)"; exit 1 ;;
esac
# Each DALI build installs the same nvidia/dali package folder: another build must leave before this one comes.
for other in nvidia-dali-cuda120 nvidia-dali-cuda130; do
  if [ "$other" != "$dali_package" ] && [ -n "$dali_package" ] \
     && "$PYTHON" -m pip show -q "$other" >/dev/null 2>&1; then
    say "removing $other: this torch needs $dali_package"
    "$PYTHON" -m pip uninstall -q -y "$other"
  fi
done
extras="${dali/none/}"

if [ -n "$WHEELHOUSE" ]; then
  say "installing avmae${extras:+[$extras]} from $WHEELHOUSE (no network)"
  "$PYTHON" -m pip install "${pip_flags[@]}" -c "$scratch/constraints.txt" "avmae${extras:+[$extras]}"
# -P: not the current folder (the checkout) on sys.path, so that these see what is installed
elif ! "$PYTHON" -P -c "import avmae, deepspeed, webdataset, msgpack, isal, pytest, xdist, sklearn, scipy, tensorboard, s3fs, gcsfs, moto.server, gcp_storage_emulator, mkdocs" 2>/dev/null \
   || { [ -n "$dali_package" ] && ! "$PYTHON" -m pip show -q "$dali_package" >/dev/null 2>&1; } \
   || [ "$("$PYTHON" -P -c 'import avmae, os; print(os.path.dirname(os.path.dirname(avmae.__file__)))' 2>/dev/null)" != "$PWD" ]; then
  say "installing avmae and its dependencies (pip install -e .[test${extras:+,$extras}] -c $constraints)"
  "$PYTHON" -m pip install "${pip_flags[@]}" -c "$scratch/constraints.txt" -e ".[test${extras:+,$extras}]"
fi
say "ready: $("$PYTHON" -c 'import torch, avmae; print("avmae", avmae.__version__, "torch", torch.__version__, "CUDA", torch.version.cuda)'), DALI ${dali_package:-none}, $(ffmpeg -hide_banner -version | head -n1 | cut -d' ' -f1-3)"
