"""Cost model constants of ``masked_attention``'s paths, per device kind (read by ``attention_plan``).

Times are in ms for a whole call. Per-tile and per-pair costs are machine-wide throughputs
(total time / count) at head dim 64, scaled linearly with D / 64; ``fwd_bwd`` multiplies a
forward estimate when gradients are needed (a block-sparse tile's own ``fwd_bwd``, when present,
replaces the path's); ``floor_ms`` (optional) is a path's time for a tiny call,
the least any call costs (host time per call: it decides short sequences); ``empty_rows_ms``
(optional) is what dense adds for a mask with fully masked rows; ``dtype_factor`` multiplies every
estimate;
``margin``: a sparse path is picked only when dense is estimated at least this many times slower.

``python benchmarks/bench_attention.py`` prints (and saves) a refit of the "cuda" table from its
measurements; paste it here, or point ``BLOCKZOO_ATTENTION_COSTS`` at the saved JSON file.
"""
from __future__ import annotations

COSTS: dict = {
    "cuda": {'source': 'refit by bench_attention.py on NVIDIA H200 2026-11-30 (run 10, after the dense-word bitmask '
                       'decode and band masks); floor_ms of flash measured in run 13 (a B=H=1, L=128 call); '
                       'dense: overhead and rate fitted (relative error) to the SDPA-with-bool-'
                       'mask times of run 13 (B*H = 16, L = 1k-32k, and B*H = 64, L = 4096), what the dense path '
                       'runs when the mask has no empty row; runs 16-17 (after the host-time cuts): floor_ms of '
                       'block_sparse / csr = their forced times at L = 1024, B*H = 16 (128-block 3% mask: 0.036-'
                       '0.039 ms; random 1%: 0.044-0.045 ms, rounded down), empty_rows_ms = forced dense minus SDPA '
                       'alone on a mask with empty rows (0.011-0.019 ms at L = 1-2k: one masked_fill); run 19 '
                       '(dense reuses a static mask in SDPA-ready form): dense overhead_ms refitted at the same rate '
                       'to its forced times at L = 1024 / 2048, B*H = 16 (0.0265 / 0.0747 ms against 0.036 / 0.092 '
                       'for SDPA with the bool mask), empty_rows_ms = 0.008-0.013 ms measured, margin 1.05 (the '
                       'dense model now describes our own dense path)',
             'margin': 1.05,
             'dtype_factor': {'float16': 1.0, 'bfloat16': 1.0, 'float32': 8.0},
             'flash': {'tflops': 471.9, 'causal_tflops': 410.3, 'overhead_ms': 0.01, 'fwd_bwd': 3.704,
                       'floor_ms': 0.01949},
             'dense': {'tflops': 243.4, 'mask_ns_per_elem': 0.0006, 'overhead_ms': 0.007, 'fwd_bwd': 3.344,
                       'empty_rows_ms': 0.01},
             'block_sparse': {'tiles': {'128x64': {'full_ns': 6.14, 'partial_ns': 7.828},
                                        '64x64': {'full_ns': 2.591, 'partial_ns': 3.503},
                                        '64x32': {'full_ns': 1.642, 'partial_ns': 1.912}},
                              'row_block_ns': 6.328,
                              'overhead_ms': 0.01968,
                              'fwd_bwd': 3.586,
                              'floor_ms': 0.037},
             'csr': {'pair_ns': 0.0296, 'row_ns': 0.9109, 'overhead_ms': 0.02088, 'fwd_bwd': 3.259,
                     'floor_ms': 0.043}},
    "cpu": {
        "source": "fit to a 2-core x86 CPU (torch 2.13, one thread, B*H=4, D=64 fp32, L=1024/4096, density "
                  "0.5-30%): dense ~0.03 TFLOP/s; the compiled sparse ops ~60 ns per kept pair",
        "margin": 1.1,
        "dtype_factor": {"float16": 4.0, "bfloat16": 4.0, "float32": 1.0, "float64": 2.0},
        "flash": {"tflops": 0.03, "causal_tflops": 0.03, "overhead_ms": 0.05, "fwd_bwd": 2.8},
        "dense": {"tflops": 0.03, "mask_ns_per_elem": 0.5, "overhead_ms": 0.05, "fwd_bwd": 2.8},
        "csr": {"pair_ns": 60.0, "row_ns": 300.0, "overhead_ms": 0.1, "fwd_bwd": 3.6},
    },
}

INTERPRETER_TILE = (32, 32)  # block-sparse tile when the Triton interpreter runs the kernels (tests)
