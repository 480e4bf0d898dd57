"""Every row of TARGETS.md's "Triton parts" table in one run: the softmax / norm suite (with the
width sweep and its plot, ``bench_triton_norm_softmax.py``) and the fused-op suite (dropout + bias +
activation, linear + activation, fused linear cross-entropy, ``bench_triton_fused.py``) in one
process, against one copy ceiling measured once. Each suite writes its own results file.
Usage on a GPU: ``python benchmarks/bench_triton_parts.py``.
"""
from __future__ import annotations

import argparse
import sys

import bench_triton_fused
import bench_triton_norm_softmax
import torch


def main() -> int:
    argparse.ArgumentParser(
        description="The softmax / norm suite (bench_triton_norm_softmax.py, with its width sweep and plot) and "
                    "the fused-op suite (bench_triton_fused.py) in one process on a CUDA GPU, against one copy "
                    "ceiling; each suite writes its own results file.").parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("bench_triton_parts.py needs a CUDA GPU (torch.cuda.is_available() is False)")
    failed = 0
    for suite in (bench_triton_norm_softmax, bench_triton_fused):
        sys.argv = [suite.__file__]  # each suite's own defaults
        failed |= suite.main()
    return failed


if __name__ == "__main__":
    sys.exit(main())
