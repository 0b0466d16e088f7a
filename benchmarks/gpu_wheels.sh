#!/usr/bin/env bash
# Download the wheels a GPU machine without a package registry lacks for autotune, so they
# can travel there with the checkout (benchmarks/README.md, "GPU acceptance").
#
#   benchmarks/gpu_wheels.sh [DIR]        # default DIR: benchmarks/wheels (git-ignored)
#
# The lent H200 machine's python3 (3.12) has torch, nvidia-ml-py, scikit-learn, tqdm,
# pyyaml, matplotlib, numpy, packaging, MarkupSafe and typing_extensions, but not optuna
# and the packages optuna needs beyond those, nor pytest (for the GPU-only tests). Each is
# pinned to the version in .venv (the one the tests ran with) where .venv has it, and
# fetched for CPython 3.12 on x86-64 Linux
# whatever this machine is, without its dependencies (they are named here instead).
# EXTRA="MarkupSafe typing_extensions" adds names, for a machine that lacks those too.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
dest=${1:-$here/wheels}
python=$here/../.venv/bin/python
[ -x "$python" ] || python=python3
names=(optuna SQLAlchemy alembic colorlog Mako greenlet pytest pluggy iniconfig Pygments ${EXTRA:-})

specs=()
for name in "${names[@]}"; do
    version=$("$python" -c "import importlib.metadata as m, sys
try: print(m.version(sys.argv[1]))
except m.PackageNotFoundError: pass" "$name")
    specs+=("$name${version:+==$version}")
done

mkdir -p "$dest"
echo "gpu_wheels: ${specs[*]} -> $dest"
"$python" -m pip download --quiet --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
    --platform any -d "$dest" "${specs[@]}"
ls -l "$dest"
du -sh "$dest"
