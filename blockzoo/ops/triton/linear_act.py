"""Triton ``activation(x @ weight.T + bias)``: a persistent GEMM with bias and activation in its epilogue.

Forward: one persistent kernel (tiles in grouped order for L2 reuse, fp32 accumulation, ``tl.dot``);
when a gradient is needed it also stores the pre-activation z (in x's dtype) for backward.
fp32 inputs use full-precision dots (``input_precision="ieee"``) unless
``torch.backends.cuda.matmul.allow_tf32`` is set, as torch's own matmul does.
Backward: dz = dy * act'(z) by the elementwise kernel of ``dropout_bias_act`` (which also gives
db = float32 column sums of dz as stored, two-stage), then dx = dz @ W and dW = dzᵀ @ x with torch (cuBLAS);
dW comes out of the GEMM in float32 and is rounded to the weight's dtype once, as db is: PyTorch's
gradients under autocast, not split-K partial sums rounded in half precision.
Under autocast (the op's entry casts x, W, b as ``F.linear`` does) an activation whose PyTorch form
returns float32 there (``autocast.FP32_ACTIVATIONS``) stores a float32 result.
Registered through ``registration.fast_op``: the ``blockzoo::linear_act`` custom op (no backward op: the
gradient is composed of the ops above) and an eager fast path.

Epilogues (``set_epilogue``): ``"triton"`` (the kernel above); ``"cublaslt"``: relu and gelu_tanh with a
bias on CUDA run ``torch._addmm_activation`` (cuBLASLt's fused epilogue; its GELU is the tanh
approximation), z is then not stored and backward recomputes it; ``"cublas"``: cuBLAS addmm then the
activation (what eager does). ``"auto"`` (default): on CUDA, cuBLASLt where it has the activation, else
cuBLAS — on the H200 both beat the Triton GEMM (benchmarks/results, triton-fused); off CUDA (the
interpreter), the Triton kernel. Benchmarks use the switch to compare the epilogues with the GEMM alone.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from blockzoo.ops import autocast, torch_ref
from blockzoo.ops.triton import launch
from blockzoo.ops.triton.activations import act_fwd
from blockzoo.ops.triton.dropout_bias_act import bias_act_backward
from blockzoo.ops.triton.grads import mm_fp32
from blockzoo.ops.triton.registration import fast_op

EPILOGUES = ("auto", "triton", "cublaslt", "cublas")
_epilogue = ["auto"]


def set_epilogue(name: str) -> str:
    """Choose the forward epilogue (one of ``EPILOGUES``); returns the previous choice."""
    if name not in EPILOGUES:
        raise ValueError(f"unknown epilogue {name!r}; expected one of {', '.join(EPILOGUES)}")
    previous, _epilogue[0] = _epilogue[0], name
    return previous


def _configs() -> list[triton.Config]:
    if launch.interpreting():
        return [triton.Config({"BLOCK_M": 32, "BLOCK_N": 32, "BLOCK_K": 16, "GROUP_M": 4}, num_warps=4)]
    shapes = ((128, 256, 64, 3, 8), (256, 128, 64, 3, 8), (128, 128, 64, 4, 8), (128, 128, 64, 4, 4),
              (128, 64, 64, 4, 4), (64, 128, 64, 4, 4), (64, 64, 64, 4, 4))  # (BM, BN, BK, stages, warps)
    return [triton.Config({"BLOCK_M": bm, "BLOCK_N": bn, "BLOCK_K": bk, "GROUP_M": 8}, num_stages=s, num_warps=w)
            for bm, bn, bk, s, w in shapes]


@triton.autotune(configs=_configs(), key=["M", "N", "K", "ACT", "STORE_Z"])
@triton.heuristics({"EVEN_K": lambda args: args["K"] % args["BLOCK_K"] == 0})
@triton.jit
def _linear_act_kernel(X, W, B, Y, Z, M, N, K, stride_xm, stride_xk, stride_wn, stride_wk,
                       ACT: tl.constexpr, HAS_BIAS: tl.constexpr, STORE_Z: tl.constexpr, IEEE: tl.constexpr,
                       BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
                       GROUP_M: tl.constexpr, EVEN_K: tl.constexpr):
    tiles_m = tl.cdiv(M, BLOCK_M)
    tiles_n = tl.cdiv(N, BLOCK_N)
    per_group = GROUP_M * tiles_n
    k_steps = tl.cdiv(K, BLOCK_K)
    rk = tl.arange(0, BLOCK_K)
    for tile in range(tl.program_id(0), tiles_m * tiles_n, tl.num_programs(0)):
        first_m = (tile // per_group) * GROUP_M
        group_rows = tl.minimum(tiles_m - first_m, GROUP_M)
        pid_m = first_m + (tile % per_group) % group_rows
        pid_n = (tile % per_group) // group_rows
        rm = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
        rn = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
        # rows/cols past the edge read valid memory (wrapped); their results are never stored
        a_ptrs = X + (rm % M).to(tl.int64)[:, None] * stride_xm + rk[None, :] * stride_xk
        b_ptrs = W + (rn % N).to(tl.int64)[None, :] * stride_wn + rk[:, None] * stride_wk
        acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
        for k in range(0, k_steps):
            if EVEN_K:
                a = tl.load(a_ptrs)
                b = tl.load(b_ptrs)
            else:
                k_ok = rk < K - k * BLOCK_K
                a = tl.load(a_ptrs, mask=k_ok[None, :], other=0.0)
                b = tl.load(b_ptrs, mask=k_ok[:, None], other=0.0)
            if IEEE:
                acc = tl.dot(a, b, acc, input_precision="ieee")
            else:
                acc = tl.dot(a, b, acc)
            a_ptrs += BLOCK_K * stride_xk
            b_ptrs += BLOCK_K * stride_wk
        if HAS_BIAS:
            acc += tl.load(B + rn, mask=rn < N, other=0.0).to(tl.float32)[None, :]
        mask = (rm < M)[:, None] & (rn < N)[None, :]
        offs = rm.to(tl.int64)[:, None] * N + rn[None, :]
        tl.store(Y + offs, act_fwd(acc, ACT).to(Y.dtype.element_ty), mask=mask)
        if STORE_Z:
            tl.store(Z + offs, acc.to(Z.dtype.element_ty), mask=mask)


def _rows(x: torch.Tensor) -> torch.Tensor:
    """x as an (M, K) matrix (a view when possible)."""
    return x.reshape(x.shape[:-1].numel(), x.shape[-1])


def _resolve(x: torch.Tensor, bias: torch.Tensor | None, activation: str, epilogue: str) -> str:
    """The epilogue that runs: 'triton', 'cublaslt' or 'cublas'."""
    lt_ok = bias is not None and bias.dtype == x.dtype and (
        activation == "relu" or (activation == "gelu_tanh" and x.is_cuda))  # CPU's GELU is erf
    if epilogue == "auto":
        return ("cublaslt" if lt_ok else "cublas") if x.is_cuda else "triton"
    if epilogue == "cublaslt" and not lt_ok:
        return "triton"
    return epilogue


def _triton_forward(x2: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, activation: str,
                    store_z: bool, out_dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    (m, k), n = x2.shape, weight.shape[0]
    bias = bias.contiguous() if bias is not None else None
    y = torch.empty((m, n), dtype=out_dtype, device=x2.device)
    z = torch.empty((m, n) if store_z else (0,), dtype=x2.dtype, device=x2.device)
    if y.numel() == 0:
        return y, z
    ieee = x2.dtype == torch.float32 and not torch.backends.cuda.matmul.allow_tf32
    sms = launch.num_sms(x2.device)

    def grid(meta):
        return min(sms, triton.cdiv(m, meta["BLOCK_M"]) * triton.cdiv(n, meta["BLOCK_N"])),

    launch.launch(_linear_act_kernel, grid, x2, weight, bias if bias is not None else y, y, z if store_z else y,
                  m, n, k, x2.stride(0), x2.stride(1), weight.stride(0), weight.stride(1),
                  ACT=activation, HAS_BIAS=bias is not None, STORE_Z=store_z, IEEE=ieee)
    return y, z


def _forward(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, activation: str,
             store_z: bool, epilogue: str, out_dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """(y, z): y = act(x Wᵀ + b) in ``out_dtype`` shaped (*x.shape[:-1], N); z the pre-activation (M, N), or empty."""
    n = weight.shape[0]
    x2 = _rows(x)
    path = _resolve(x, bias, activation, epilogue)
    if path == "cublaslt":
        y = torch._addmm_activation(bias, x2, weight.t(), use_gelu=activation == "gelu_tanh")
        z = x2.new_empty(0)
    elif path == "cublas":
        pre = torch.addmm(bias, x2, weight.t()) if bias is not None else x2 @ weight.t()
        y = torch_ref.activation(pre, activation).to(out_dtype)
        z = pre if store_z else x2.new_empty(0)
    else:
        y, z = _triton_forward(x2, weight, bias, activation, store_z, out_dtype)
    return y.view(*x.shape[:-1], n), z


def _forward_fake(x, weight, bias, activation, store_z, epilogue, out_dtype):
    n, m = weight.shape[0], x.shape[:-1].numel()
    y = x.new_empty((*x.shape[:-1], n), dtype=out_dtype)
    stored = store_z and _resolve(x, bias, activation, epilogue) != "cublaslt"
    return y, x.new_empty((m, n) if stored else (0,))


def _save(ctx, inputs: tuple, output: tuple) -> None:
    x, weight, bias, activation, _, _, _ = inputs
    _, z = output
    ctx.mark_non_differentiable(z)
    ctx.save_for_backward(x, weight, bias, z)
    ctx.activation = activation


def _grads(ctx, dy: torch.Tensor, _backward) -> tuple:
    """dz = dy * act'(z) (and db) by ``bias_act_backward``, then dx and dW by torch GEMMs (no backward op)."""
    x, weight, bias, z = ctx.saved_tensors
    need_dx, need_dw, need_db = ctx.needs_input_grad[:3]
    n = weight.shape[0]
    x2 = _rows(x)
    dy2 = dy.reshape(x2.shape[0], n)
    if ctx.activation == "none":
        dz, colsum = dy2, (dy2.sum(0, dtype=torch.float32) if need_db else None)
    else:
        if z.dim() != 2:  # not stored: recompute the pre-activation
            z = torch.addmm(bias.to(x2.dtype), x2, weight.t()) if bias is not None else x2 @ weight.t()
        dz, colsum = bias_act_backward(dy2, z, ctx.activation, need_db)
    dx = (dz @ weight).view(x.shape) if need_dx else None
    dw = mm_fp32(dz.t(), x2).to(weight.dtype) if need_dw else None
    db = colsum.to(bias.dtype) if need_db else None
    return dx, dw, db, None, None, None, None


_linear_act = fast_op("linear_act", _forward, None, save=_save, grads=_grads, differentiable=(0, 1, 2),
                      fake=_forward_fake)


def linear_act(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, activation: str) -> torch.Tensor:
    """activation(x @ weight.T + bias) in x's dtype (float32 where PyTorch's activation returns it under
    autocast); ``weight`` must share x's dtype."""
    if weight.dtype != x.dtype:
        raise TypeError(f"weight has dtype {weight.dtype}; expected x's dtype {x.dtype}")
    store_z = activation != "none" and launch.needs_grad(x, weight, bias)
    return _linear_act(x, weight, bias, activation, store_z, _epilogue[0], autocast.activation_dtype(x, activation))
