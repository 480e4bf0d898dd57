#!/usr/bin/env bash
# Installs what blockzoo needs on a fresh machine, reusing a torch that is already installed.
#   bash scripts/setup.sh          runtime dependencies (matplotlib for blockzoo.compare's plot) + the package
#   bash scripts/setup.sh --test   the same plus the test dependencies (pytest, pytest-xdist, hypothesis, triton)
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-python3}"
pip_install() { "$PY" -m pip install -q --disable-pip-version-check "$@"; }
step() { echo "setup: $*"; }

# torch: keep an installed one (e.g. a CUDA build); else the CPU wheel.
if "$PY" -c "import torch" 2>/dev/null; then
  step "torch $("$PY" -c 'import torch; print(torch.__version__)') is installed: keeping it"
else
  step "installing torch 2.13.0 (CPU wheel)"
  pip_install "torch==2.13.0"
fi
step "installing the runtime dependencies (hydra-core, omegaconf, safetensors, tqdm, matplotlib, ...)"
pip_install "hydra-core>=1.3,<1.4" "omegaconf>=2.3,<2.4" "safetensors>=0.4" "tqdm>=4.60" numpy pyyaml matplotlib \
  "setuptools>=64" wheel ninja
if [ "${1:-}" = "--test" ]; then
  step "installing the test dependencies (pytest, pytest-xdist, hypothesis, expecttest, triton, xformers 0.0.20)"
  pip_install "pytest>=7" "hypothesis>=6" pytest-xdist expecttest  # expecttest: torch.testing._internal (OpInfo)
  "$PY" -c "import triton" 2>/dev/null || pip_install "triton>=3.0"
  # xFormers 0.0.20 for the parity test of blockzoo.from_xformers (tests/xformers, marker 'xformers');
  # no wheel for this Python: skipped quietly (the test then skips with its reason)
  "$PY" -c "import xformers" 2>/dev/null || "$PY" -m pip install --quiet --no-deps "xformers==0.0.20" >/dev/null 2>&1 \
    || step "no xformers 0.0.20 wheel for this Python: tests/xformers/test_parity.py will skip"
fi
# The package itself, editable, compiling csrc/ against the installed torch (no isolated build env).
if [ "${BLOCKZOO_NO_EXT:-0}" = "1" ]; then
  step "installing blockzoo (editable; BLOCKZOO_NO_EXT is set: no compiled extension)"
else
  step "installing blockzoo (editable) and compiling its C++ extension from csrc/ (a minute or two)"
fi
pip_install --no-build-isolation --no-deps -e .
"$PY" -c "import blockzoo; print('setup: blockzoo', blockzoo.__version__, 'ready')"
