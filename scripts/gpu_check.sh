#!/usr/bin/env bash
# The GPU path, checked (docs/gpu.md): the engine's parity tests on CUDA in fp32 and fp16, SD 1.5-size timings of
# the project's loop against stock diffusers (fp16, SDPA; torch.compile and CUDA graphs where time allows), and a
# real worker end to end on CUDA with the built-in model. Figures go to $OUT/gpu_check.json, the log beside it.
#
#   scripts/gpu_check.sh --prepare                  # here, with PyPI: what the GPU machine lacks, in var/gpu-check/
#   OUT=out/gpu-check scripts/gpu_check.sh          # on the GPU machine, from the repository root: < 8 minutes
#   GPU_CHECK_DEVICE=cpu OUT=/tmp/c scripts/gpu_check.sh   # the same steps on a CPU, tiny (tests/benchmarks)
#
# The GPU machine has Python 3.12 with its own torch, transformers, accelerate, safetensors, numpy, pillow … and no
# package registry. --prepare downloads the rest (diffusers and the service's packages, at this .venv's versions)
# as wheels for CPython 3.12 on x86-64 Linux, installs them into a folder, and packs that as
# var/gpu-check/site.tar.xz; name `var/gpu-check` in the device tool's `carry`. The run unpacks it onto PYTHONPATH
# only where those packages are not importable already, so it never replaces the machine's torch.
#
# Environment: OUT (default out/gpu-check); GPU_CHECK_DEVICE (cuda, or cpu for the dry run); GPU_CHECK_BUDGET
# (seconds for all steps, default 440 on cuda); GPU_CHECK_PYTHON (default .venv/bin/python where it exists, else
# python3); GPU_CHECK_PYTHON_VERSION (--prepare's target, default 3.12).
set -uo pipefail
cd "$(dirname "$0")/.."

CARRY_DIR=var/gpu-check
SITE_ARCHIVE=$CARRY_DIR/site.tar.xz

# What the GPU machine's image lacks (docs/gpu.md; /opt/torch/.venv there has torch, transformers, huggingface_hub,
# accelerate, safetensors, numpy, pillow, requests, pyyaml, click, python-dateutil, pytest …): the engine's
# diffusers, and what the API and the worker import on embedded defaults (SQLite, the file broker, files on disk).
# botocore, boto3 and psycopg are imported at module level by the service even when S3 and PostgreSQL are unused.
CARRIED=(
    diffusers importlib_metadata lazy-importer
    Django asgiref sqlparse tzdata djangorestframework dj-database-url adrf async-property django-axes
    drf-spectacular drf-spectacular-sidecar uritemplate inflection jsonschema jsonschema-specifications referencing
    rpds-py whitenoise django-storages boto3 botocore s3transfer jmespath psycopg psycopg-binary redis
    celery kombu amqp vine billiard click-didyoumean click-repl click-plugins prompt_toolkit wcwidth tzlocal
)

prepare() {
    local python=.venv/bin/python version=${GPU_CHECK_PYTHON_VERSION:-3.12}
    [ -x "$python" ] || { echo "--prepare reads the versions from .venv: run 'make install' first" >&2; return 1; }
    local freeze pins=() name line
    freeze=$("$python" -m pip freeze --all 2>/dev/null)
    for name in "${CARRIED[@]}"; do
        # pip freeze spells names as their distributions do; compare them normalised (PEP 503).
        line=$(awk -F'==' -v want="$name" '
            function norm(s) { s = tolower(s); gsub(/[-_.]+/, "-", s); return s }
            NF == 2 && norm($1) == norm(want) { print; exit }' <<<"$freeze")
        if [ -z "$line" ]; then
            # tzdata is not installed here (Linux reads the system's zone files); pin the registry's newest.
            [ "$name" = tzdata ] && { pins+=(tzdata); continue; }
            echo "$name is not installed in .venv" >&2
            return 1
        fi
        pins+=("$line")
    done
    local platforms=(--platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64)
    local target=(--only-binary=:all: --python-version "$version" --implementation cp "${platforms[@]}")
    local work
    work=$(mktemp -d)
    trap 'rm -rf "$work"' RETURN
    "$python" -m pip download --quiet --no-deps "${target[@]}" -d "$work/wheels" "${pins[@]}" || return 1
    "$python" -m pip install --quiet --no-deps --no-compile --no-index "${target[@]}" \
        --target "$work/site" "$work"/wheels/*.whl || return 1
    # botocore's service models are 16 MB of the 22: keep S3's and STS's and the shared files, enough for the S3
    # store; this run uses the file system and only imports botocore.
    find "$work/site/botocore/data" -mindepth 1 -maxdepth 1 -type d ! -name s3 ! -name sts -exec rm -r {} +
    mkdir -p "$CARRY_DIR"
    rm -f "$CARRY_DIR"/*
    tar -C "$work/site" -cJf "$SITE_ARCHIVE" .
    { echo "python $version"; printf '%s\n' "${pins[@]}"; } >"$CARRY_DIR/packages.txt"
    echo "wrote $SITE_ARCHIVE ($(du -h "$SITE_ARCHIVE" | cut -f1), ${#pins[@]} packages for CPython $version; list in $CARRY_DIR/packages.txt)"
    echo "carry: [\"$CARRY_DIR\"]; the working tree that travels: $(tree_megabytes) MB of 64 MiB"
}

tree_megabytes() {
    { git ls-files -z; git ls-files -z --others --exclude-standard; } | xargs -0 du -cb 2>/dev/null \
        | awk -v extra="$(du -sb "$CARRY_DIR" | cut -f1)" '$2 == "total" { sum += $1 } END { printf "%.1f", (sum + extra) / 1e6 }'
}

if [ "${1:-}" = --prepare ]; then
    prepare
    exit $?
fi
[ $# -eq 0 ] || { echo "usage: $0 [--prepare]" >&2; exit 2; }

OUT=${OUT:-out/gpu-check}
mkdir -p "$OUT"
PYTHON=${GPU_CHECK_PYTHON:-}
if [ -z "$PYTHON" ]; then
    if [ -x .venv/bin/python ]; then PYTHON=.venv/bin/python; else PYTHON=python3; fi
fi
if ! "$PYTHON" -c 'import diffusers, django, celery, rest_framework' 2>/dev/null; then
    [ -f "$SITE_ARCHIVE" ] || { echo "diffusers or the service's packages are missing and $SITE_ARCHIVE is not here: run '$0 --prepare' where PyPI answers, and carry $CARRY_DIR" | tee -a "$OUT/gpu_check.log" >&2; exit 1; }
    SITE=$(mktemp -d "${TMPDIR:-/tmp}/gpu-check-site.XXXXXX") || exit 1
    tar -C "$SITE" -xJf "$SITE_ARCHIVE" || exit 1
    export PYTHONPATH="$SITE${PYTHONPATH:+:$PYTHONPATH}"
    echo "packages from $SITE_ARCHIVE ($(head -1 "$CARRY_DIR/packages.txt")) on PYTHONPATH" | tee -a "$OUT/gpu_check.log"
fi
# The repository's packages without an editable install (the GPU machine has none).
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 PYTHONUNBUFFERED=1
exec "$PYTHON" scripts/gpu_check.py --out "$OUT" --device "${GPU_CHECK_DEVICE:-cuda}" ${GPU_CHECK_BUDGET:+--budget "$GPU_CHECK_BUDGET"}
