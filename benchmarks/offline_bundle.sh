#!/usr/bin/env bash
# A bundle of HUSAI's dependencies for an offline machine that already has Python 3.12 and
# torch (a GPU box without a package index, say), so that benchmarks/gpu_check.sh can run there.
# Every package installed in this environment that the target lacks is downloaded here as a
# cp312 manylinux x86-64 wheel (at the version installed here), unpacked into one folder,
# trimmed (what HUSAI never runs: Ray's Java jars, RLlib, its LLM library and dashboard build,
# wandb's service binaries, the MLflow UI's JavaScript; debug symbols of shared libraries) and
# packed as one tar.xz.
#
#   bash benchmarks/offline_bundle.sh HAVE_FILE [OUT.tar.xz]     # from the repository root
#     HAVE_FILE: the target's package names, one per line (first column of `pip list` there)
#     OUT:       default .gpu/site.tar.xz (keep it out of git: `echo /.gpu/ >> .git/info/exclude`)
#   on the target, from the repository root:
#     mkdir -p /tmp/site && tar xJf .gpu/site.tar.xz -C /tmp/site
#     PYTHONPATH=/tmp/site:$PWD HF_HUB_OFFLINE=1 RAY_USAGE_STATS_ENABLED=0 bash benchmarks/gpu_check.sh
#
# The target's own versions of what it has are used (numpy, transformers, ...). Development
# tools (ruff, mypy, py-spy) are left out. A package with no such wheel is built here from its
# source release if it is pure Python. Prints what it could not bundle.
set -euo pipefail
HAVE=${1:?usage: offline_bundle.sh HAVE_FILE [OUT.tar.xz]}
OUT=${2:-.gpu/site.tar.xz}
PY=${PYTHON:-.venv/bin/python}
SKIP="husai torch triton ruff mypy librt ast-serialize py-spy"
WORK=$(mktemp -d -t husai-bundle-XXXX)
trap 'rm -rf "$WORK"' EXIT
# Package names compared as pip does: lower case, runs of "-", "_" and "." as one "-".
norm() { awk -F'==' '{n = tolower($1); gsub(/[-_.]+/, "-", n); print n ($2 ? "==" $2 : "")}'; }

awk '{print $1}' "$HAVE" | norm | sort -u >"$WORK/have"
"$PY" -m pip list --format=freeze --exclude-editable 2>/dev/null | norm \
    | awk -F'==' 'NR == FNR {have[$1] = 1; next} !($1 in have)' "$WORK/have" - >"$WORK/want"
missing=()
while IFS= read -r spec; do
    name=${spec%%==*}
    [[ " $SKIP " == *" $name "* || "$name" == nvidia-* ]] && continue
    "$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 \
        --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 \
        --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
        --platform manylinux1_x86_64 -d "$WORK/wheels" "$spec" >/dev/null 2>&1 \
        || "$PY" -m pip wheel -q --no-deps -w "$WORK/built" "$spec" >/dev/null 2>&1 \
        || missing+=("$spec")
done <"$WORK/want"
# Built here from a source release: only a pure-Python wheel runs on another machine.
for whl in "$WORK"/built/*.whl; do
    [ -e "$whl" ] || continue
    case "$whl" in
        *-none-any.whl) mv "$whl" "$WORK/wheels/" ;;
        *) missing+=("$(basename "$whl") (not pure Python)") ;;
    esac
done

mkdir -p "$WORK/site"
for whl in "$WORK"/wheels/*.whl; do
    unzip -q -o "$whl" -d "$WORK/site"
done
rm -rf "$WORK"/site/ray/{jars,rllib,llm} "$WORK"/site/ray/dashboard/client/build \
    "$WORK"/site/wandb/bin "$WORK"/site/mlflow/server/js
find "$WORK/site" -name '*.so*' -type f -exec strip --strip-unneeded {} + 2>/dev/null || true
find "$WORK/site" -name '__pycache__' -type d -prune -exec rm -rf {} +
mkdir -p "$(dirname "$OUT")"
tar -C "$WORK/site" -cf - . | xz -T0 -6 >"$OUT"
echo "$(ls "$WORK"/wheels/*.whl | wc -l) wheels -> $OUT ($(du -h "$OUT" | cut -f1))"
if ((${#missing[@]})); then
    echo "no cp312 manylinux wheel for: ${missing[*]}"
fi
