#!/usr/bin/env bash
# Installs what blockzoo needs on a fresh machine, reusing a torch that is already installed.
#   bash scripts/setup.sh          runtime dependencies + the package (builds the blockzoo._C extension)
#   bash scripts/setup.sh --test   the same plus the test dependencies (pytest, hypothesis, triton)
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-python3}"
pip_install() { "$PY" -m pip install -q --disable-pip-version-check "$@"; }

# torch: keep an installed one (e.g. a CUDA build); else the CPU wheel this machine keeps on disk.
"$PY" -c "import torch" 2>/dev/null || pip_install "torch==2.13.0"
pip_install "hydra-core>=1.3,<1.4" "omegaconf>=2.3,<2.4" "safetensors>=0.4" "tqdm>=4.60" numpy pyyaml \
  "setuptools>=64" wheel ninja
if [ "${1:-}" = "--test" ]; then
  pip_install "pytest>=7" "hypothesis>=6" pytest-xdist expecttest  # expecttest: torch.testing._internal (OpInfo)
  "$PY" -c "import triton" 2>/dev/null || pip_install "triton>=3.0"
fi
# The package itself, editable, compiling csrc/ against the installed torch (no isolated build env).
pip_install --no-build-isolation --no-deps -e .
"$PY" -c "import blockzoo; print('blockzoo', blockzoo.__version__, 'ready')"
