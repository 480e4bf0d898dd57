"""The functional ops with a fast path, by how each picks it: the one list ``python -m blockzoo.info`` reports."""
from __future__ import annotations

TRITON_OPS = ("softmax", "layer_norm", "rms_norm", "dropout_bias_act", "linear_act", "fused_linear_cross_entropy",
              "masked_attention")  # backend.choose: a Triton kernel or PyTorch
SPARSE_OPS = ("sddmm", "sparse_softmax", "spmm")  # the compiled extension blockzoo._C or PyTorch
FAST_OPS = TRITON_OPS + SPARSE_OPS
