#!/usr/bin/env bash
# An air-gapped install, made on a machine with network: a folder of wheels (a "wheelhouse") holding avmae's own
# wheel, every dependency for the target Python / platform, and the constraints CI tests. On the air-gapped node:
#   pip install --no-index --find-links WHEELHOUSE -c WHEELHOUSE/constraints.txt "avmae[cuda13]"
# (or AVMAE_WHEELHOUSE=WHEELHOUSE bash pipelines/setup.sh, which picks the DALI extra itself).
#
#   bash pipelines/wheelhouse.sh OUT [--python 3.12] [--platform manylinux_2_28_x86_64] [--dali cuda13]
#                                    [--without-torch] [--extras test]
#   --python          the node's Python, major.minor (default: this interpreter's)
#   --platform        the node's newest manylinux tag, manylinux_2_<glibc minor>_<arch> (default: this machine's);
#                     every older manylinux tag is accepted too (pip takes --platform tags literally)
#   --dali            cuda12 | cuda13 | cpu | none: the DALI build, by the node's CUDA major (default cuda13)
#   --without-torch   leave out torch, torchvision, torchaudio and what only they need (NVIDIA's CUDA wheels,
#                     triton, sympy...): for a node with PyTorch installed (an NGC container); constraints.txt then
#                     holds no torch line, so the node's torch is kept
#   --extras LIST     more of avmae's extras, comma-separated (test: the test suite's packages)
# Only wheels: pip downloads each for the target with --only-binary :all:. The few dependencies published as source
# only (deepspeed: pure Python, its CUDA ops are compiled on first use) are built into wheels here first.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${AVMAE_PYTHON:-python3}"
say() { echo "[wheelhouse] $*" >&2; }
usage() { sed -n '8,14p' "$0" >&2; exit 2; }

[ $# -ge 1 ] && [ "${1#-}" = "$1" ] || usage
out=$(mkdir -p "$1" && cd "$1" && pwd)
shift
python_version=$("$PYTHON" -c 'import sys; print(f"{sys.version_info[0]}.{sys.version_info[1]}")')
platform=$("$PYTHON" -c 'import platform; v = platform.libc_ver()[1].split("."); print(f"manylinux_{v[0]}_{v[1]}_{platform.machine()}")')
dali=cuda13
with_torch=1
extras=
while [ $# -gt 0 ]; do
  case "$1" in
    --python) python_version="$2"; shift 2 ;;
    --platform) platform="$2"; shift 2 ;;
    --dali) dali="$2"; shift 2 ;;
    --without-torch) with_torch=0; shift ;;
    --extras) extras="$2"; shift 2 ;;
    *) say "unknown option $1"; usage ;;
  esac
done
case "$dali" in cuda12 | cuda13 | cpu) extras="$dali${extras:+,$extras}" ;; none) ;; *) say "--dali $dali: cuda12, cuda13, cpu or none"; exit 2 ;; esac
[[ "$platform" =~ ^manylinux_2_([0-9]+)_(.+)$ ]] || { say "--platform $platform: expected manylinux_2_<minor>_<arch>"; exit 2; }
glibc_minor="${BASH_REMATCH[1]}"
arch="${BASH_REMATCH[2]}"
platforms=()
for minor in $(seq "$glibc_minor" -1 5); do platforms+=(--platform "manylinux_2_${minor}_${arch}"); done
# the older names of manylinux_2_17, _2_12 and _2_5 (PEP 600)
[ "$glibc_minor" -ge 17 ] && platforms+=(--platform "manylinux2014_${arch}")
[ "$glibc_minor" -ge 12 ] && platforms+=(--platform "manylinux2010_${arch}")
platforms+=(--platform "manylinux1_${arch}")
target=(--python-version "$python_version" "${platforms[@]}" --only-binary :all:)

scratch=$(mktemp -d)
trap 'rm -rf "$scratch"' EXIT
if [ "$with_torch" = 1 ]; then
  cp constraints/ci.txt "$out/constraints.txt"
else
  grep -vE '^(torch|torchvision|torchaudio)==' constraints/ci.txt > "$out/constraints.txt"
fi

# avmae's wheel, built from a copy of its sources (setuptools reuses build/ in the source folder, and would pack
# files left there by an earlier build)
say "building avmae's wheel"
mkdir "$scratch/src"
cp -r avmae pyproject.toml README.md "$scratch/src/"
find "$scratch/src" -name __pycache__ -prune -exec rm -rf {} +
"$PYTHON" -m pip wheel -q --no-deps -w "$out" "$scratch/src"
wheel=$(ls "$out"/avmae-*.whl)

# the source-only dependencies, as pure-Python wheels
for name in deepspeed; do
  say "building a wheel of $name (published as source only)"
  "$PYTHON" -m pip wheel -q --no-deps -c constraints/ci.txt -w "$out" "$name"
done

# Resolve everything for the target without installing (pip's installation report), at the constraints' versions;
# the wheels built above are found in $out.
say "resolving avmae${extras:+[$extras]} for Python $python_version on $platform"
"$PYTHON" -m pip install -q --dry-run --ignore-installed --target "$scratch/target" --report "$scratch/report.json" \
  "${target[@]}" --find-links "$out" -c constraints/ci.txt "$wheel${extras:+[$extras]}"

# The packages to download: all of them, or without torch, those that something other than torch, torchvision and
# torchaudio needs (walked from avmae through each package's requirements, with markers read for the target).
"$PYTHON" - "$scratch/report.json" "$python_version" "$with_torch" > "$scratch/wanted.txt" <<'PY'
import json
import sys

try:
    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name
except ImportError:  # a fresh interpreter: pip's own copy
    from pip._vendor.packaging.requirements import Requirement
    from pip._vendor.packaging.utils import canonicalize_name

report, python_version, with_torch = json.load(open(sys.argv[1])), sys.argv[2], sys.argv[3] == "1"
environment = {**report["environment"], "python_version": python_version, "python_full_version": f"{python_version}.0"}
items = {canonicalize_name(i["metadata"]["name"]): i for i in report["install"]}
skipped = set() if with_torch else {"torch", "torchvision", "torchaudio"}


def needs(name: str, extra: str) -> list[tuple[str, str]]:
    """(package, extra) pairs that ``name`` (with ``extra``; "" for none) requires on the target."""
    found = []
    for text in items[name]["metadata"].get("requires_dist", []):
        requirement = Requirement(text)
        if requirement.marker is None or requirement.marker.evaluate({**environment, "extra": extra}):
            dep = canonicalize_name(requirement.name)
            found += [(dep, "")] + [(dep, e) for e in requirement.extras]
    return found


root = canonicalize_name("avmae")
wanted, seen = set(), set()
todo = [(root, "")] + [(root, e) for e in items[root].get("requested_extras") or []]
while todo:
    name, extra = todo.pop()
    if (name, extra) in seen or name in skipped or name not in items:
        continue
    seen.add((name, extra))
    wanted.add(name)
    todo += needs(name, extra)
for name in sorted(wanted - {root}):
    print(f"{items[name]['metadata']['name']}=={items[name]['metadata']['version']}")
PY
say "downloading $(wc -l < "$scratch/wanted.txt") packages"
grep -v '^deepspeed==' "$scratch/wanted.txt" > "$scratch/download.txt" || true
"$PYTHON" -m pip download -q --no-deps "${target[@]}" -d "$out" -r "$scratch/download.txt"
cp "$scratch/wanted.txt" "$out/wheelhouse.txt"
say "done: $out ($(ls "$out"/*.whl | wc -l) wheels, $(du -sh "$out" | cut -f1)); on the node:"
say "  pip install --no-index --find-links $out -c $out/constraints.txt \"avmae${extras:+[$extras]}\""
