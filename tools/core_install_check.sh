#!/usr/bin/env bash
# The core install as a user without extras gets it: a fresh venv, `pip install .` (no extras) from a clean clone,
# then tools/core_install_check.py run from outside the repository. Usage: bash tools/core_install_check.sh
set -euo pipefail
repo="$(cd "$(dirname "$0")/.." && pwd)"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
python3 -m venv "$work/venv"
. "$work/venv/bin/activate"
python -m pip install -q --upgrade pip
pip install -q torch==2.13.0   # the CPU build; an unpinned torch pulls a CUDA build
git clone -q "$repo" "$work/src"
pip install -q "$work/src"
pip list 2>/dev/null | grep -iE "^(scikit-learn|matplotlib|mlxtend|mnist1d|tensorboard|triton) " && {
    echo "an extra was installed by the core install" >&2; exit 1; }
cd "$work" && python "$repo/tools/core_install_check.py"
