"""Fused InfoNCE: losses.info_nce in Triton kernels, without the (B, N) score matrix. With u_i = q_i / ||q_i||,
v_j = p_j / ||p_j||, S_ij = scale u_i . v_j, P_ij = exp(S_ij - lse_i) and C_ij = exp(S_ij - clse_j):

    L_q->p = mean_i [ lse_i - S_ii ],        lse_i  = log sum_{j<N} exp(S_ij)
    L_p->q = mean_j<B [ clse_j - S_jj ],     clse_j = log sum_{i<B} exp(S_ij)
    L      = L_q->p, or (L_q->p + L_p->q) / 2 when symmetric
    B dL/dS_ij = P_ij - delta_ij (one-way),  (P_ij + [j < B] C_ij) / 2 - delta_ij (symmetric)
    dL/du_i = scale sum_j dL/dS_ij v_j,      dL/dv_j = scale sum_i dL/dS_ij u_i,   dL/dx = (dL/du - u (u.dL/du)) / ||x||

So the forward keeps only lse (B floats, plus clse when symmetric) and the backward rebuilds each score tile from q and
p, as FlashAttention does. Design, against Inf-CL (Wang et al. 2024, "Breaking the Memory Barrier"), whose kernels
compute in TF32 and recompute the scores in two backward kernels per direction, one per input: bf16/fp16 operands on
tensor cores, fp32 accumulation and statistics; one backward recompute per (query, passage) tile for both gradients;
when symmetric, the column statistics from a second forward pass over the B positives (B/N of a matmul), and one
backward pass for both directions. B x N x D matmuls per step: 4 here (5 if symmetric with N = B), Inf-CL's 5 (10 if
symmetric), info_nce's 3 (which store the scores). The L2 normalisation is fused: the kernels scale each raw dot
product by 1/||q_i|| and 1/||p_j|| (computed once in PyTorch, O(B + N)), so no normalised copy is written and bf16
inputs enter the tensor cores unrounded: the scores equal info_nce's fp32 scores up to summation order.
"""

import os
import re
from dataclasses import dataclass

import torch
import triton
import triton.language as tl

LOG2E, LN2 = 1.4426950408889634, 0.6931471805599453  # the kernels use exp2 / log2
# Whether @triton.jit interprets the kernels (triton.knobs in recent Triton; the environment variable in older ones).
_knobs = getattr(triton, "knobs", None)
INTERPRETED = bool(_knobs.runtime.interpret) if _knobs else os.environ.get("TRITON_INTERPRET") == "1"


# The two normalisation helpers of losses.py, copied so that this file imports nothing of ours (losses.py imports it).
def inverse_norms(x):
    """1 / max(||x_i||, 1e-12) in fp32, F.normalize's divisor, without an fp32 copy of x: (R, D) -> (R,)."""
    return torch.linalg.vector_norm(x, dim=-1, dtype=torch.float32).clamp_min(1e-12).reciprocal()


def normalize_backward(grad_unit, x, inv_norm):
    """Chain rule through u = x / ||x||: dL/dx = (dL/du - u (u . dL/du)) / ||x||; (R, D) fp32."""
    unit = x.float() * inv_norm[:, None]  # (R, D)
    return (grad_unit - unit * (unit * grad_unit).sum(-1, keepdim=True)) * inv_norm[:, None]


@dataclass(frozen=True)
class Tiles:
    """One kernel's launch: BLOCK_M x BLOCK_N score tiles, D in BLOCK_D slices, warps per program, pipeline stages.
    Any valid choice gives the same results up to summation order; only speed and shared memory (must fit) vary."""

    block_m: int
    block_n: int
    block_d: int
    warps: int
    stages: int

    def __post_init__(self):
        for name in ("block_m", "block_n", "block_d"):
            size = getattr(self, name)
            if size < 16 or size & (size - 1):  # tl.arange needs powers of two, tl.dot operands >= 16 wide
                raise ValueError(f"{name} must be a power of two of at least 16, got {size}")
        if self.warps not in (1, 2, 4, 8, 16) or self.stages < 1:
            got = f"got {self.warps} and {self.stages}"
            raise ValueError(f"warps must be 1, 2, 4, 8 or 16 and stages at least 1, {got}")

    def __str__(self):
        return f"{self.block_m}x{self.block_n}x{self.block_d}/w{self.warps}/s{self.stages}"

    @classmethod
    def parse(cls, text):
        """Tiles from the form str() writes: '128x64x64/w8/s3' is Tiles(128, 64, 64, warps=8, stages=3)."""
        match = re.fullmatch(r"(\d+)x(\d+)x(\d+)/w(\d+)/s(\d+)", text.strip())
        if match is None:
            form = "BLOCK_MxBLOCK_NxBLOCK_D/wWARPS/sSTAGES, like 128x64x64/w8/s3"
            raise ValueError(f"tiles are written {form}; got {text!r}")
        return cls(*(int(group) for group in match.groups()))


# Read at every launch. Not yet measured on a GPU: 128 x 64 score tiles and 64-wide slices of D are the Triton
# fused-attention tutorial's Hopper setting; bench/gpu_check.sh sweeps candidates on the target GPU and prints the best.
FORWARD = Tiles(128, 64, 64, warps=8, stages=3)  # row_lse_kernel: the forward, both passes when symmetric
BACKWARD = Tiles(128, 64, 64, warps=8, stages=2)  # info_nce_bwd_kernel
INTERPRETER_SMS = 132  # the interpreter's grid is an H100 SXM's, so CPU tests walk a GPU's multi-split path


def configure(forward=None, backward=None):
    """Make later launches use these Tiles (None keeps the current ones); returns the previous (forward, backward)."""
    global FORWARD, BACKWARD
    previous = FORWARD, BACKWARD
    FORWARD, BACKWARD = forward or FORWARD, backward or BACKWARD
    return previous


# --- Kernels ---------------------------------------------------------------


@triton.jit
def load_slice(ptr, idx, dims, R, D, stride):  # ptr: (R, D) raw embeddings, row stride `stride`, unit stride along D
    """ptr[idx, dims], (BLOCK,) rows by (BLOCK_D,) dims, 0 outside the matrix so masked entries add 0 to dots."""
    mask = (idx[:, None] < R) & (dims[None, :] < D)
    return tl.load(ptr + idx[:, None] * stride + dims[None, :], mask=mask, other=0.0)


@triton.jit
def cosine_tile(
    x_ptr, y_ptr,  # (M, D) raw row and (N, D) raw column embeddings, unit stride along D
    inv_x, inv_y,  # (BLOCK_M,), (BLOCK_N,) fp32 1 / ||x_i||, 1 / ||y_j|| of these rows and columns (0 where masked)
    rows, cols, M, N, D, stride_x, stride_y,  # (BLOCK_M,) row and (BLOCK_N,) column indices
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr, UPCAST: tl.constexpr,
    DOT_PRECISION: tl.constexpr,
):  # fmt: skip
    """cos(x_i, y_j) for one BLOCK_M x BLOCK_N tile, fp32: dot products over D in BLOCK_D slices on tensor cores."""
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for start_d in range(0, D, BLOCK_D):
        dims = start_d + tl.arange(0, BLOCK_D)
        x = load_slice(x_ptr, rows, dims, M, D, stride_x)  # (BLOCK_M, BLOCK_D)
        y = load_slice(y_ptr, cols, dims, N, D, stride_y)  # (BLOCK_N, BLOCK_D)
        if UPCAST:
            # subtle: Triton's interpreter multiplies bf16 operands' bit patterns in tl.dot (triton-lang/triton#11584),
            # so under TRITON_INTERPRET=1 they go up to fp32 first: exact, as bf16 products are exact in fp32.
            x, y = x.to(tl.float32), y.to(tl.float32)
        acc = tl.dot(x, tl.trans(y), acc, input_precision=DOT_PRECISION)
    return acc * inv_x[:, None] * inv_y[None, :]


@triton.jit
def row_lse_kernel(
    x_ptr, y_ptr,  # (M, D) raw row embeddings (queries; passages for the column pass), (N, D) raw column embeddings
    inv_x_ptr, inv_y_ptr,  # (M,), (N,) fp32 1 / ||x_i||, 1 / ||y_j||
    lse_ptr,  # (SPLITS, M) fp32 out: base-2 log-sum-exp of each row over one split's columns
    M, N, D, stride_x, stride_y, scale_log2, blocks_per_split,  # scale * log2(e), for exp2; column blocks per program
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr, UPCAST: tl.constexpr,
    DOT_PRECISION: tl.constexpr,
):  # fmt: skip
    """Row log-sum-exp of S = scale * cos(x, y) without storing S. Program (r, s) streams columns [s * blocks_per_split
    * BLOCK_N, ...) of row block r, keeping the running max m_i and l_i = sum_j 2^(S_ij log2 e - m_i) (online softmax,
    Milakov and Gimelshein 2018), and writes m_i + log2 l_i; the launcher merges the splits with one logsumexp."""
    row_block, split = tl.program_id(0), tl.program_id(1)
    rows = row_block * BLOCK_M + tl.arange(0, BLOCK_M)
    inv_x = tl.load(inv_x_ptr + rows, mask=rows < M, other=0.0)  # (BLOCK_M,)
    m = tl.full((BLOCK_M,), float("-inf"), dtype=tl.float32)  # running max, base 2
    total = tl.zeros((BLOCK_M,), dtype=tl.float32)  # l_i, the running sum of 2^(s - m)
    first = split * blocks_per_split * BLOCK_N
    for start_n in range(first, tl.minimum(first + blocks_per_split * BLOCK_N, N), BLOCK_N):
        cols = start_n + tl.arange(0, BLOCK_N)
        inv_y = tl.load(inv_y_ptr + cols, mask=cols < N, other=0.0)  # (BLOCK_N,)
        cos = cosine_tile(x_ptr, y_ptr, inv_x, inv_y, rows, cols, M, N, D, stride_x, stride_y,
                          BLOCK_M, BLOCK_N, BLOCK_D, UPCAST, DOT_PRECISION)  # fmt: skip
        s = tl.where(cols[None, :] < N, scale_log2 * cos, float("-inf"))  # (BLOCK_M, BLOCK_N)
        m_new = tl.maximum(m, tl.max(s, axis=1))  # finite: every split owns at least one real column
        total = total * tl.exp2(m - m_new) + tl.sum(tl.exp2(s - m_new[:, None]), axis=1)
        m = m_new
    tl.store(lse_ptr + split * M + rows, m + tl.log2(total), mask=rows < M)


@triton.jit
def info_nce_bwd_kernel(
    q_ptr, p_ptr,  # (B, D) raw queries, (N, D) raw passages, unit stride along D
    inv_q_ptr, inv_p_ptr,  # (B,), (N,) fp32 1 / ||q_i||, 1 / ||p_j||
    row_lse_ptr,  # (B,) fp32 base-2 lse of row i over all N passages
    col_lse_ptr,  # (B,) fp32 base-2 lse of column j over the B queries; read if SYMMETRIC
    grad_q_ptr, grad_p_ptr,  # (B, D), (N, D) fp32, zeroed, atomically accumulated: sum_j T_ij p_j, sum_i T_ij q_i
    B, N, D, stride_q, stride_p, scale_log2, blocks_per_split,  # scale * log2(e); passage blocks per program
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
    SYMMETRIC: tl.constexpr, UPCAST: tl.constexpr, DOT_PRECISION: tl.constexpr,
):  # fmt: skip
    """Both input gradients from one recompute of each score tile: T_ij = B dL/dS_ij / (||q_i|| ||p_j||), rounded to
    the input dtype, feeds two tensor-core dots added to grad_q (T p) and grad_p (T^T q), so grad_q_i = (B / scale)
    ||q_i||^-1 dL/du_i; the launcher applies the rest. subtle: D (384..1024) is too wide for a BLOCK_M x D register
    accumulator, so every program touching a row or column atomically adds partial sums to global memory per BLOCK_D
    slice (Inf-CL's kernels read and write dq and dk per tile too, but recompute it for each)."""
    row_block, split = tl.program_id(0), tl.program_id(1)
    rows = row_block * BLOCK_M + tl.arange(0, BLOCK_M)
    row_ok = rows < B
    inv_q = tl.load(inv_q_ptr + rows, mask=row_ok, other=0.0)  # (BLOCK_M,)
    row_lse = tl.load(row_lse_ptr + rows, mask=row_ok, other=0.0)  # (BLOCK_M,)
    first = split * blocks_per_split * BLOCK_N
    for start_n in range(first, tl.minimum(first + blocks_per_split * BLOCK_N, N), BLOCK_N):
        cols = start_n + tl.arange(0, BLOCK_N)
        col_ok = cols < N
        inv_p = tl.load(inv_p_ptr + cols, mask=col_ok, other=0.0)  # (BLOCK_N,)
        cos = cosine_tile(q_ptr, p_ptr, inv_q, inv_p, rows, cols, B, N, D, stride_q, stride_p,
                          BLOCK_M, BLOCK_N, BLOCK_D, UPCAST, DOT_PRECISION)  # fmt: skip
        tile_ok = row_ok[:, None] & col_ok[None, :]
        s = tl.where(tile_ok, scale_log2 * cos, float("-inf"))  # (BLOCK_M, BLOCK_N) base 2; -inf: padding exps are 0
        positive = (rows[:, None] == cols[None, :]).to(tl.float32)  # its -1 weighs 1/2 + 1/2 if symmetric: 1 either way
        if SYMMETRIC:
            # Columns >= B are extra negatives with no column term: lse = +inf gives C = 0.
            col_lse = tl.load(col_lse_ptr + cols, mask=cols < B, other=float("inf"))
            d_s = 0.5 * (tl.exp2(s - row_lse[:, None]) + tl.exp2(s - col_lse[None, :])) - positive
        else:
            d_s = tl.exp2(s - row_lse[:, None]) - positive
        d_s = tl.where(tile_ok, d_s, 0.0)  # padding row i may still have a "positive" column i
        # T in the input dtype: the tensor cores' operand, in [-1, 1] / (||q_i|| ||p_j||).
        t = (d_s * inv_q[:, None] * inv_p[None, :]).to(q_ptr.dtype.element_ty)
        if UPCAST:
            t = t.to(tl.float32)  # after the rounding, so the interpreter sees what a GPU sees
        for start_d in range(0, D, BLOCK_D):
            dims = start_d + tl.arange(0, BLOCK_D)
            dim_ok = dims[None, :] < D
            q = load_slice(q_ptr, rows, dims, B, D, stride_q)  # (BLOCK_M, BLOCK_D), an L2 hit: cosine_tile just read it
            p = load_slice(p_ptr, cols, dims, N, D, stride_p)  # (BLOCK_N, BLOCK_D)
            if UPCAST:
                q, p = q.to(tl.float32), p.to(tl.float32)
            dq = tl.dot(t, p, input_precision=DOT_PRECISION)  # (BLOCK_M, BLOCK_D); relaxed atomics: plain sums
            dp = tl.dot(tl.trans(t), q, input_precision=DOT_PRECISION)  # (BLOCK_N, BLOCK_D)
            tl.atomic_add(grad_q_ptr + rows[:, None] * D + dims[None, :], dq, row_ok[:, None] & dim_ok, sem="relaxed")
            tl.atomic_add(grad_p_ptr + cols[:, None] * D + dims[None, :], dp, col_ok[:, None] & dim_ok, sem="relaxed")


# --- Launchers -------------------------------------------------------------


def dot_precision(x):
    """tl.dot's input_precision: full fp32 ("ieee") for fp32 inputs, since TF32 (Triton's default,
    10-bit mantissa) would not equal info_nce; bf16/fp16 keep the default, which only concerns fp32."""
    return "ieee" if x.dtype == torch.float32 else "tf32"


def launch_grid(rows, cols, device, tiles):
    """(row blocks, column splits, column blocks per split) for rows x cols scores. One program per BLOCK_M rows fills
    only B / 128 SMs (32 of 132 at B = 4096), so columns are split to about two waves, each >= 1 block. Unmeasured."""
    row_blocks, col_blocks = triton.cdiv(rows, tiles.block_m), triton.cdiv(cols, tiles.block_n)
    sms = torch.cuda.get_device_properties(device).multi_processor_count if device.type == "cuda" else INTERPRETER_SMS
    splits = max(1, min(col_blocks, triton.cdiv(2 * sms, row_blocks)))
    blocks_per_split = triton.cdiv(col_blocks, splits)
    return row_blocks, triton.cdiv(col_blocks, blocks_per_split), blocks_per_split


def row_lse(x, y, inv_x, inv_y, scale, tiles=None):
    """logsumexp_j scale * cos(x_i, y_j), natural log: x (M, D), y (N, D) -> (M,) fp32; tiles None: FORWARD."""
    tiles = tiles or FORWARD
    M, N, D = x.shape[0], y.shape[0], x.shape[1]
    row_blocks, splits, blocks_per_split = launch_grid(M, N, x.device, tiles)
    partial = torch.empty((splits, M), device=x.device, dtype=torch.float32)  # (SPLITS, M) base 2
    row_lse_kernel[(row_blocks, splits)](
        x, y, inv_x, inv_y, partial, M, N, D, x.stride(0), y.stride(0), scale * LOG2E, blocks_per_split,
        BLOCK_M=tiles.block_m, BLOCK_N=tiles.block_n, BLOCK_D=tiles.block_d, UPCAST=INTERPRETED,
        DOT_PRECISION=dot_precision(x), num_warps=tiles.warps, num_stages=tiles.stages,
    )  # fmt: skip
    return torch.logsumexp(partial * LN2, dim=0)


def info_nce_bwd(q, p, inv_q, inv_p, lse, col_lse, scale, symmetric, tiles=None):
    """(B/scale) dL/du_i / ||q_i|| and (B/scale) dL/dv_j / ||p_j||: fp32 (B, D), (N, D); tiles None: BACKWARD."""
    tiles = tiles or BACKWARD
    B, N, D = q.shape[0], p.shape[0], q.shape[1]
    grad_q, grad_p = q.new_zeros((B, D), dtype=torch.float32), q.new_zeros((N, D), dtype=torch.float32)
    row_blocks, splits, blocks_per_split = launch_grid(B, N, q.device, tiles)
    info_nce_bwd_kernel[(row_blocks, splits)](
        q, p, inv_q, inv_p, lse * LOG2E, col_lse * LOG2E, grad_q, grad_p,
        B, N, D, q.stride(0), p.stride(0), scale * LOG2E, blocks_per_split,
        SYMMETRIC=symmetric, BLOCK_M=tiles.block_m, BLOCK_N=tiles.block_n, BLOCK_D=tiles.block_d,
        UPCAST=INTERPRETED, DOT_PRECISION=dot_precision(q), num_warps=tiles.warps, num_stages=tiles.stages,
    )  # fmt: skip
    return grad_q, grad_p


# --- Autograd --------------------------------------------------------------


class FusedInfoNCE(torch.autograd.Function):  # called by losses.info_nce_triton
    @staticmethod
    def forward(ctx, q, p, scale, symmetric):
        B = q.shape[0]
        q, p = q.contiguous(), p.contiguous()  # the kernels assume unit stride along D
        inv_q, inv_p = inverse_norms(q), inverse_norms(p)  # (B,), (N,)
        lse = row_lse(q, p, inv_q, inv_p, scale)  # (B,)
        # S_ii in fp32, O(B D): cheaper here than picking the diagonal out of tiles.
        positive = scale * inv_q * inv_p[:B] * (q.float() * p[:B].float()).sum(-1)  # (B,)
        loss = (lse - positive).mean()
        col_lse = lse  # a placeholder the one-way kernel never reads
        if symmetric:
            # Column statistics = the transposed problem's row statistics over the B positives: a second pass, B/N of
            # the first. No atomic op merges log-sum-exps, shifting exp by the bound scale underflows fp32 for scale
            # > ~44, and per-row-block partials would cost O(B^2 / BLOCK_M) memory.
            col_lse = row_lse(p[:B], q, inv_p[:B], inv_q, scale)  # (B,)
            loss = (loss + (col_lse - positive).mean()) / 2
        ctx.save_for_backward(q, p, inv_q, inv_p, lse, col_lse)
        ctx.scale, ctx.symmetric = scale, symmetric
        return loss

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad):
        q, p, inv_q, inv_p, lse, col_lse = ctx.saved_tensors
        grad_q, grad_p = info_nce_bwd(q, p, inv_q, inv_p, lse, col_lse, ctx.scale, ctx.symmetric)
        coef = grad * (ctx.scale / q.shape[0])  # a tensor: no .item(), no GPU sync; dL/du_i = coef ||q_i|| grad_q_i
        dq = normalize_backward(grad_q * (coef / inv_q)[:, None], q, inv_q)
        dp = normalize_backward(grad_p * (coef / inv_p)[:, None], p, inv_p)
        return dq.to(q.dtype), dp.to(p.dtype), None, None
