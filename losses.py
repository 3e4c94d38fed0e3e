"""
The MIMO objectives as pure functions: tensors and scalar hyperparameters in, a
scalar tensor out. No state, no logging, no device moves. Numerically sensitive
parts (norms, exp, logsumexp) run in fp32 whatever the input dtype.

Notation follows the paper: s(x) student embedding, t(x) teacher embedding, W the
trainable student->teacher projection, q / p query and passage embeddings, tau the
temperature and scale = 1 / tau.
"""

import torch
import torch.nn.functional as F


def fp32(x):
    """Upcast bf16/fp16 to fp32 for the sensitive arithmetic; fp32 and fp64 stay as they are."""
    return x.to(torch.promote_types(x.dtype, torch.float32))


# ---------------------------------------------------------------------------
# Distillation (MIMO stage 1, and the L_Distill term of stage 2)


def cosine_distill_loss(student, teacher):
    """Cosine distance to the teacher, the MIMO distillation loss:

        L = mean_i (1 - cos(W s(x_i), t(en_i)))

    student: (B, D) already projected by W; teacher: (B, D). 0 when every pair
    points the same way, 1 when orthogonal, 2 when opposite. Scale-free, so the
    student is asked only to match directions, which is all cosine retrieval uses.
    """
    student, teacher = fp32(student), fp32(teacher)
    cos = F.cosine_similarity(student, teacher, dim=-1, eps=1e-8)  # (B,)
    return (1.0 - cos).mean()


def mse_distill_loss(student, teacher):
    """Mean squared error to the teacher (Reimers and Gurevych 2020, "Making
    Monolingual Sentence Embeddings Multilingual using Knowledge Distillation"):

        L = mean_{i,d} (W s(x_i) - t(en_i))_d^2

    student: (B, D) already projected by W; teacher: (B, D). Unlike the cosine
    distance it also asks the student to match the teacher's norms (unit norms
    here, since the cached teacher embeddings are normalised).
    """
    return F.mse_loss(fp32(student), fp32(teacher))


DISTILL_LOSSES = {"cosine": cosine_distill_loss, "mse": mse_distill_loss}


# ---------------------------------------------------------------------------
# Contrastive terms (stage 2 and its baselines)


def similarity(q, p):
    """Cosine similarity matrix in (at least) fp32: q (B, D), p (N, D) -> (B, N)."""
    return F.normalize(fp32(q), dim=-1) @ F.normalize(fp32(p), dim=-1).T


def info_nce(q, p, scale=20.0, symmetric=False):
    """InfoNCE with in-batch negatives (van den Oord et al. 2018; MIMO's L_XLCO
    when q and p are in different languages):

        S = scale * cos(q, p)                                     # (B, N)
        L_q->p = mean_i [ logsumexp_j S_ij - S_ii ]
        L = L_q->p, or (L_q->p + L_p->q) / 2 with symmetric=True,
        where L_p->q = mean_j<B [ logsumexp_i<B S_ij - S_jj ].

    q: (B, D) queries; p: (N, D) passages with N >= B, p[i] the positive of q[i]
    and rows B.. extra negatives (hard negatives, or more passages than queries).
    The passage-to-query direction runs over the B positives only, since the
    extra passages have no query of their own. scale = 1 / tau; 20 is tau 0.05.
    """
    B = q.shape[0]
    scores = scale * similarity(q, p)  # (B, N)
    target = torch.arange(B, device=q.device)
    loss = F.cross_entropy(scores, target)
    if symmetric:
        loss = (loss + F.cross_entropy(scores[:, :B].T, target)) / 2
    return loss


def lakda_loss(q_a, q_b, p, scale=20.0, alpha=0.5):
    """LaKDA (Yang et al., MRL 2024): InfoNCE plus a KL term that asks two
    language versions of the same query to rank the batch's passages alike:

        L = (1 - alpha) * InfoNCE(q_a, p) + alpha * mean_i KL(p_b,i || p_a,i)
        p_a,i = softmax_j cos(q_a,i, p_j),  p_b,i = softmax_j cos(q_b,i, p_j)

    q_a, q_b: (B, D) the query in languages a and b; p: (N, D) passages, p[i]
    the positive of query i. The KL uses the unscaled cosines, as in the paper;
    gradients flow into both query versions (neither side is detached).
    """
    log_p_a = torch.log_softmax(similarity(q_a, p), dim=-1)  # (B, N)
    log_p_b = torch.log_softmax(similarity(q_b, p), dim=-1)  # (B, N)
    kl = F.kl_div(log_p_a, log_p_b, log_target=True, reduction="batchmean")
    return (1 - alpha) * info_nce(q_a, p, scale) + alpha * kl


# ---------------------------------------------------------------------------
# Memory-bounded InfoNCE (issue 6): the value and gradients of info_nce without
# the (B, N) score matrix. Like FlashAttention, both versions keep only the
# inputs and O(B + N) log-sum-exp statistics, and recompute scores in backward.


def _inverse_norms(x):
    """1 / max(||x_i||, 1e-12) in fp32, the divisor F.normalize uses: x (R, D) -> (R,)."""
    norms = torch.linalg.vector_norm(x, dim=-1, dtype=torch.float32)  # (R,), no fp32 copy of x
    return norms.clamp_min(1e-12).reciprocal()


def _normalize_backward(grad_unit, x, inv_norm):
    """Chain rule through u = x / ||x||: dL/dx = (dL/du - u (u . dL/du)) / ||x||.

    grad_unit: (R, D) fp32 dL/du; x: (R, D) the raw input; inv_norm: (R,) -> (R, D) fp32.
    """
    unit = x.float() * inv_norm[:, None]  # (R, D)
    radial = (unit * grad_unit).sum(-1, keepdim=True)  # (R, 1) the part along u, which the norm removes
    return (grad_unit - unit * radial) * inv_norm[:, None]


class _ChunkedInfoNCE(torch.autograd.Function):
    """info_nce streamed over passage chunks; see info_nce_chunked."""

    @staticmethod
    def forward(ctx, q, p, scale, symmetric, chunk_size):
        B, N = q.shape[0], p.shape[0]
        inv_q, inv_p = _inverse_norms(q), _inverse_norms(p)  # (B,), (N,)
        q_unit, p_unit = q.float() * inv_q[:, None], p.float() * inv_p[:, None]  # (B, D), (N, D)
        row_lse = q_unit.new_full((B,), float("-inf"))  # logsumexp_j S_ij, merged chunk by chunk
        col_lse = q_unit.new_empty(B if symmetric else 0)  # logsumexp_{i<B} S_ij for j < B
        for start in range(0, N, chunk_size):
            scores = scale * q_unit @ p_unit[start : start + chunk_size].T  # (B, c)
            row_lse = torch.logaddexp(row_lse, torch.logsumexp(scores, dim=1))
            if symmetric and start < B:
                # A chunk holds every query, so its columns' statistics are already final.
                col_lse[start : start + chunk_size] = torch.logsumexp(scores[:, : B - start], dim=0)
        positive = scale * (q_unit * p_unit[:B]).sum(-1)  # (B,) S_ii
        loss = (row_lse - positive).mean()
        if symmetric:
            loss = (loss + (col_lse - positive).mean()) / 2
        # Raw inputs and norms rather than fp32 unit vectors: half the memory for bf16.
        ctx.save_for_backward(q, p, inv_q, inv_p, row_lse, col_lse)
        ctx.scale, ctx.symmetric, ctx.chunk_size = scale, symmetric, chunk_size
        return loss

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad):
        q, p, inv_q, inv_p, row_lse, col_lse = ctx.saved_tensors
        B, N, scale = q.shape[0], p.shape[0], ctx.scale
        q_unit, p_unit = q.float() * inv_q[:, None], p.float() * inv_p[:, None]  # (B, D), (N, D)
        # B dL/dS_ij = w_row (softmax_j S_i - delta_ij) + w_col [j < B] (softmax_{i<B} S_j - delta_ij)
        w_row, w_col = (0.5, 0.5) if ctx.symmetric else (1.0, 0.0)
        grad_q_unit = torch.zeros_like(q_unit)  # (B, D) sum_j dS_ij v_j
        grad_p_unit = torch.empty_like(p_unit)  # (N, D) sum_i dS_ij u_i, one chunk at a time
        for start in range(0, N, ctx.chunk_size):
            end = min(start + ctx.chunk_size, N)
            scores = scale * q_unit @ p_unit[start:end].T  # (B, c), recomputed
            d_scores = w_row * torch.exp(scores - row_lse[:, None])  # (B, c)
            positives = torch.arange(start, max(start, min(end, B)), device=q.device)  # chunk's diagonal
            if ctx.symmetric and start < B:
                cols = positives - start
                d_scores[:, cols] += w_col * torch.exp(scores[:, cols] - col_lse[positives])
            d_scores[positives, positives - start] -= w_row + w_col
            grad_q_unit += d_scores @ p_unit[start:end]
            grad_p_unit[start:end] = d_scores.T @ q_unit
        coef = grad * (scale / B)  # a tensor: no .item(), no GPU sync
        dq = _normalize_backward(grad_q_unit * coef, q, inv_q)
        dp = _normalize_backward(grad_p_unit * coef, p, inv_p)
        return dq.to(q.dtype), dp.to(p.dtype), None, None, None


def info_nce_chunked(q, p, scale=20.0, symmetric=False, chunk_size=1024):
    """info_nce with memory O(B * chunk_size) instead of O(B * N), pure PyTorch.

    Same formula, shapes and result as info_nce (q: (B, D), p: (N, D), N >= B),
    computed in fp32 whatever the input dtype. The forward streams chunk_size
    passages at a time, merging each query's log-sum-exp across chunks; the
    column log-sum-exp of the symmetric term needs no merging, since every chunk
    holds all B queries. Saved for the backward: the inputs, their inverse norms
    and the (B,) statistics; the backward recomputes each (B, chunk) score block
    once and turns it into both gradients, so it costs one matmul more than
    info_nce (4 instead of 3). The CPU and no-Triton path of --loss-impl.
    """
    return _ChunkedInfoNCE.apply(q, p, scale, symmetric, chunk_size)


# ---------------------------------------------------------------------------
# Fused Triton kernels for info_nce (issue 6), for CUDA GPUs (written for Hopper).
#
# Design, against Inf-CL (Wang et al. 2024, "Breaking the Memory Barrier"), whose
# kernels compute in TF32 and recompute the scores in two backward kernels per
# direction, one for each input's gradient:
# - bf16/fp16 operands on tensor cores, fp32 accumulation and statistics;
# - one backward recompute per (query, passage) tile, turned into both gradients;
# - symmetric: the column statistics come from a second forward pass over the B
#   positives (B/N of a matmul), and one backward pass serves both directions.
# Matmuls of B x N x D per training step: 4 here (5 if symmetric with N = B)
# against Inf-CL's 5 (10 if symmetric), and info_nce's 3 (which store the scores).
#
# The L2 normalisation is fused: the kernels read the raw embeddings and scale
# each dot product by 1/||q_i|| and 1/||p_j||, computed once in PyTorch (O(B + N)).
# So no normalised copy is ever written, and bf16 inputs enter the tensor cores
# unrounded: the scores equal info_nce's fp32 scores up to summation order. The
# gradient of the norm is applied in PyTorch afterwards (_normalize_backward).

import os  # noqa: E402

try:
    import triton  # noqa: E402
    import triton.language as tl  # noqa: E402
except ImportError:  # losses.py imports, and info_nce_chunked runs, without Triton
    triton = None

_LOG2E, _LN2 = 1.4426950408889634, 0.6931471805599453  # the kernels use exp2 / log2

if triton is not None:
    # Triton decides at @triton.jit time whether kernels are compiled or interpreted
    # (triton.knobs in recent Triton; the environment variable itself in older ones).
    _knobs = getattr(triton, "knobs", None)
    _INTERPRETED = bool(_knobs.runtime.interpret) if _knobs else os.environ.get("TRITON_INTERPRET") == "1"

    # Unmeasured starting points for H100/H200 (no GPU was available when they were
    # chosen): 128 x 64 score tiles, one of the Triton fused-attention tutorial's, 64-wide
    # slices of D. Tune them with `python bench/bench_losses.py` on the target GPU.
    BLOCK_M, BLOCK_N, BLOCK_D = 128, 64, 64
    FWD_WARPS, FWD_STAGES = 8, 3
    BWD_WARPS, BWD_STAGES = 8, 2
    # SM count used for the grid under the interpreter (an H100 SXM's), so that CPU
    # tests walk the same multi-split path as a GPU.
    INTERPRETER_SMS = 132

    @triton.jit
    def _cosine_tile(
        x_ptr,  # (M, D) raw row embeddings, unit stride along D
        y_ptr,  # (N, D) raw column embeddings, unit stride along D
        inv_x,  # (BLOCK_M,) fp32 1 / ||x_i|| for these rows (0 where masked)
        inv_y,  # (BLOCK_N,) fp32 1 / ||y_j|| for these columns (0 where masked)
        rows,  # (BLOCK_M,) row indices
        cols,  # (BLOCK_N,) column indices
        M,
        N,
        D,
        stride_x,
        stride_y,
        BLOCK_M: tl.constexpr,
        BLOCK_N: tl.constexpr,
        BLOCK_D: tl.constexpr,
        UPCAST: tl.constexpr,
        DOT_PRECISION: tl.constexpr,
    ):
        """cos(x_i, y_j) for one BLOCK_M x BLOCK_N tile, fp32:

            cos_ij = <x_i, y_j> / (||x_i|| ||y_j||)

        The dot products run over D in BLOCK_D slices on tensor cores; masked rows,
        columns and dimensions load as 0, so they contribute 0.
        """
        acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
        for start_d in range(0, D, BLOCK_D):
            dims = start_d + tl.arange(0, BLOCK_D)
            x = tl.load(
                x_ptr + rows[:, None] * stride_x + dims[None, :],
                mask=(rows[:, None] < M) & (dims[None, :] < D),
                other=0.0,
            )  # (BLOCK_M, BLOCK_D)
            y = tl.load(
                y_ptr + cols[:, None] * stride_y + dims[None, :],
                mask=(cols[:, None] < N) & (dims[None, :] < D),
                other=0.0,
            )  # (BLOCK_N, BLOCK_D)
            if UPCAST:
                # subtle: Triton's interpreter multiplies the bit patterns of bf16
                # operands in tl.dot (triton-lang/triton#11584; its docs: no bf16
                # arithmetic), so under TRITON_INTERPRET=1 the operands go up to
                # fp32 first. Exact: bf16 products are exact in fp32, as on a GPU.
                x, y = x.to(tl.float32), y.to(tl.float32)
            acc = tl.dot(x, tl.trans(y), acc, input_precision=DOT_PRECISION)
        return acc * inv_x[:, None] * inv_y[None, :]

    @triton.jit
    def _row_lse_kernel(
        x_ptr,  # (M, D) raw row embeddings (queries; passages for the column pass)
        y_ptr,  # (N, D) raw column embeddings
        inv_x_ptr,  # (M,) fp32 1 / ||x_i||
        inv_y_ptr,  # (N,) fp32 1 / ||y_j||
        lse_ptr,  # (SPLITS, M) fp32 out: base-2 log-sum-exp of each row over one split's columns
        M,
        N,
        D,
        stride_x,
        stride_y,
        scale_log2,  # scale * log2(e): scores in base 2, for exp2
        blocks_per_split,  # column blocks each program streams
        BLOCK_M: tl.constexpr,
        BLOCK_N: tl.constexpr,
        BLOCK_D: tl.constexpr,
        UPCAST: tl.constexpr,
        DOT_PRECISION: tl.constexpr,
    ):
        """Row log-sum-exp of S = scale * cos(x, y) without storing S:

            lse_i = log sum_{j<N} exp(S_ij),     d lse_i / d S_ij = exp(S_ij - lse_i),

        so the backward needs only lse (M floats) to rebuild the softmax. Program
        (r, s) streams columns [s * blocks_per_split * BLOCK_N, ...) of row block
        r, keeping the running max m_i and l_i = sum_j 2^(S_ij log2 e - m_i)
        (online softmax, Milakov and Gimelshein 2018), and writes m_i + log2 l_i;
        the launcher merges the splits with one logsumexp over SPLITS values.
        """
        row_block, split = tl.program_id(0), tl.program_id(1)
        rows = row_block * BLOCK_M + tl.arange(0, BLOCK_M)
        inv_x = tl.load(inv_x_ptr + rows, mask=rows < M, other=0.0)  # (BLOCK_M,)
        m = tl.full((BLOCK_M,), float("-inf"), dtype=tl.float32)  # running max, base 2
        total = tl.zeros((BLOCK_M,), dtype=tl.float32)  # l_i, the running sum of 2^(s - m)
        first = split * blocks_per_split * BLOCK_N
        last = tl.minimum(first + blocks_per_split * BLOCK_N, N)
        for start_n in range(first, last, BLOCK_N):
            cols = start_n + tl.arange(0, BLOCK_N)
            inv_y = tl.load(inv_y_ptr + cols, mask=cols < N, other=0.0)  # (BLOCK_N,)
            cos = _cosine_tile(
                x_ptr, y_ptr, inv_x, inv_y, rows, cols, M, N, D, stride_x, stride_y,
                BLOCK_M, BLOCK_N, BLOCK_D, UPCAST, DOT_PRECISION,
            )
            s = tl.where(cols[None, :] < N, scale_log2 * cos, float("-inf"))  # (BLOCK_M, BLOCK_N)
            # Every split owns at least one real column, so m_new is finite here.
            m_new = tl.maximum(m, tl.max(s, axis=1))
            total = total * tl.exp2(m - m_new) + tl.sum(tl.exp2(s - m_new[:, None]), axis=1)
            m = m_new
        tl.store(lse_ptr + split * M + rows, m + tl.log2(total), mask=rows < M)

    @triton.jit
    def _info_nce_bwd_kernel(
        q_ptr,  # (B, D) raw queries, unit stride along D
        p_ptr,  # (N, D) raw passages, unit stride along D
        inv_q_ptr,  # (B,) fp32 1 / ||q_i||
        inv_p_ptr,  # (N,) fp32 1 / ||p_j||
        row_lse_ptr,  # (B,) fp32 base-2 lse of row i over all N passages
        col_lse_ptr,  # (B,) fp32 base-2 lse of column j over the B queries; read if SYMMETRIC
        grad_q_ptr,  # (B, D) fp32, zeroed, atomically accumulated: sum_j T_ij p_j
        grad_p_ptr,  # (N, D) fp32, zeroed, atomically accumulated: sum_i T_ij q_i
        B,
        N,
        D,
        stride_q,
        stride_p,
        scale_log2,  # scale * log2(e)
        blocks_per_split,  # passage blocks each program streams
        SYMMETRIC: tl.constexpr,
        BLOCK_M: tl.constexpr,
        BLOCK_N: tl.constexpr,
        BLOCK_D: tl.constexpr,
        UPCAST: tl.constexpr,
        DOT_PRECISION: tl.constexpr,
    ):
        """Both input gradients of info_nce from one recompute of each score tile.

        With P_ij = exp(S_ij - lse_i) and, if symmetric, C_ij = exp(S_ij - clse_j):

            B dL/dS_ij = P_ij - delta_ij                                  (one-way)
            B dL/dS_ij = (P_ij + [j < B] C_ij) / 2 - delta_ij             (symmetric)

        and with u_i = q_i / ||q_i||, v_j = p_j / ||p_j||, S_ij = scale u_i . v_j:

            dL/du_i = scale sum_j dL/dS_ij v_j,   dL/dv_j = scale sum_i dL/dS_ij u_i.

        Each tile forms T_ij = B dL/dS_ij / (||q_i|| ||p_j||) once, rounds it to the
        input dtype, and feeds it to two tensor-core dots whose results are added
        to grad_q (T p, for the tile's queries) and grad_p (T^T q, for its
        passages). So grad_q_i = (B / scale) ||q_i||^-1 dL/du_i, and the launcher
        applies the remaining factors and the normalisation's chain rule.

        subtle: D is too wide (384..1024) to keep a BLOCK_M x D accumulator in
        registers, so partial sums go to global memory with atomic adds, one
        BLOCK_D slice at a time, from every program that touches a row or column.
        Inf-CL's kernels read and write dq and dk per tile too, but recompute the
        tile for each.
        """
        row_block, split = tl.program_id(0), tl.program_id(1)
        rows = row_block * BLOCK_M + tl.arange(0, BLOCK_M)
        row_ok = rows < B
        inv_q = tl.load(inv_q_ptr + rows, mask=row_ok, other=0.0)  # (BLOCK_M,)
        row_lse = tl.load(row_lse_ptr + rows, mask=row_ok, other=0.0)  # (BLOCK_M,)
        first = split * blocks_per_split * BLOCK_N
        last = tl.minimum(first + blocks_per_split * BLOCK_N, N)
        for start_n in range(first, last, BLOCK_N):
            cols = start_n + tl.arange(0, BLOCK_N)
            col_ok = cols < N
            inv_p = tl.load(inv_p_ptr + cols, mask=col_ok, other=0.0)  # (BLOCK_N,)
            cos = _cosine_tile(
                q_ptr, p_ptr, inv_q, inv_p, rows, cols, B, N, D, stride_q, stride_p,
                BLOCK_M, BLOCK_N, BLOCK_D, UPCAST, DOT_PRECISION,
            )
            tile_ok = row_ok[:, None] & col_ok[None, :]
            # Padding scores are -inf, so every exp below is 0 there and none overflows.
            s = tl.where(tile_ok, scale_log2 * cos, float("-inf"))  # (BLOCK_M, BLOCK_N) base 2
            # The positive's -1 carries weight 1/2 + 1/2 when symmetric, so 1 in both cases.
            positive = (rows[:, None] == cols[None, :]).to(tl.float32)
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
                dim_ok = dims < D
                q = tl.load(
                    q_ptr + rows[:, None] * stride_q + dims[None, :],
                    mask=row_ok[:, None] & dim_ok[None, :],
                    other=0.0,
                )  # (BLOCK_M, BLOCK_D), an L2 hit: the recompute just read it
                p = tl.load(
                    p_ptr + cols[:, None] * stride_p + dims[None, :],
                    mask=col_ok[:, None] & dim_ok[None, :],
                    other=0.0,
                )  # (BLOCK_N, BLOCK_D)
                if UPCAST:
                    q, p = q.to(tl.float32), p.to(tl.float32)
                tl.atomic_add(
                    grad_q_ptr + rows[:, None] * D + dims[None, :],
                    tl.dot(t, p, input_precision=DOT_PRECISION),
                    mask=row_ok[:, None] & dim_ok[None, :],
                    sem="relaxed",  # plain sums: no ordering needed
                )
                tl.atomic_add(
                    grad_p_ptr + cols[:, None] * D + dims[None, :],
                    tl.dot(tl.trans(t), q, input_precision=DOT_PRECISION),
                    mask=col_ok[:, None] & dim_ok[None, :],
                    sem="relaxed",
                )

    def _dot_precision(x):
        """tl.dot's input_precision: full fp32 ("ieee") for fp32 inputs, since TF32 (Triton's
        default, 10-bit mantissa) would not equal info_nce; bf16/fp16 keep the default,
        which only concerns fp32 operands."""
        return "ieee" if x.dtype == torch.float32 else "tf32"

    def _launch_grid(rows, cols, device):
        """(row blocks, column splits, column blocks per split) for a rows x cols score matrix.

        One program per BLOCK_M rows fills only B / 128 SMs (32 of 132 at B = 4096),
        so the column loop is split until the grid is about two waves; every split
        gets at least one column block. Unmeasured, like the block sizes.
        """
        row_blocks, col_blocks = triton.cdiv(rows, BLOCK_M), triton.cdiv(cols, BLOCK_N)
        if device.type == "cuda":
            sms = torch.cuda.get_device_properties(device).multi_processor_count
        else:
            sms = INTERPRETER_SMS
        splits = max(1, min(col_blocks, triton.cdiv(2 * sms, row_blocks)))
        blocks_per_split = triton.cdiv(col_blocks, splits)
        return row_blocks, triton.cdiv(col_blocks, blocks_per_split), blocks_per_split

    def _row_lse(x, y, inv_x, inv_y, scale):
        """Launcher: logsumexp_j scale * cos(x_i, y_j), natural log; x (M, D), y (N, D) -> (M,) fp32."""
        M, N, D = x.shape[0], y.shape[0], x.shape[1]
        row_blocks, splits, blocks_per_split = _launch_grid(M, N, x.device)
        partial = torch.empty((splits, M), device=x.device, dtype=torch.float32)  # base 2
        _row_lse_kernel[(row_blocks, splits)](
            x, y, inv_x, inv_y, partial, M, N, D, x.stride(0), y.stride(0),
            scale * _LOG2E, blocks_per_split,
            BLOCK_M=BLOCK_M, BLOCK_N=BLOCK_N, BLOCK_D=BLOCK_D, UPCAST=_INTERPRETED,
            DOT_PRECISION=_dot_precision(x), num_warps=FWD_WARPS, num_stages=FWD_STAGES,
        )
        return torch.logsumexp(partial * _LN2, dim=0)

    def _info_nce_bwd(q, p, inv_q, inv_p, row_lse, col_lse, scale, symmetric):
        """Launcher: (B/scale) dL/du_i / ||q_i|| and (B/scale) dL/dv_j / ||p_j||, fp32 (B, D) and (N, D)."""
        B, N, D = q.shape[0], p.shape[0], q.shape[1]
        grad_q = torch.zeros((B, D), device=q.device, dtype=torch.float32)
        grad_p = torch.zeros((N, D), device=q.device, dtype=torch.float32)
        row_blocks, splits, blocks_per_split = _launch_grid(B, N, q.device)
        _info_nce_bwd_kernel[(row_blocks, splits)](
            q, p, inv_q, inv_p, row_lse * _LOG2E, col_lse * _LOG2E, grad_q, grad_p,
            B, N, D, q.stride(0), p.stride(0), scale * _LOG2E, blocks_per_split,
            SYMMETRIC=symmetric, BLOCK_M=BLOCK_M, BLOCK_N=BLOCK_N, BLOCK_D=BLOCK_D,
            UPCAST=_INTERPRETED, DOT_PRECISION=_dot_precision(q), num_warps=BWD_WARPS, num_stages=BWD_STAGES,
        )
        return grad_q, grad_p

    class _TritonInfoNCE(torch.autograd.Function):
        """info_nce through the kernels above; see info_nce_triton."""

        @staticmethod
        def forward(ctx, q, p, scale, symmetric):
            B = q.shape[0]
            q, p = q.contiguous(), p.contiguous()  # the kernels assume unit stride along D
            inv_q, inv_p = _inverse_norms(q), _inverse_norms(p)  # (B,), (N,)
            row_lse = _row_lse(q, p, inv_q, inv_p, scale)  # (B,)
            # S_ii in fp32, O(B D): cheaper here than picking the diagonal out of tiles.
            positive = scale * inv_q * inv_p[:B] * (q.float() * p[:B].float()).sum(-1)  # (B,)
            loss = (row_lse - positive).mean()
            col_lse = row_lse  # a placeholder the one-way kernel never reads
            if symmetric:
                # Column statistics = row statistics of the transposed problem over
                # the B positives: a second pass of B x B x D, B/N of the first.
                # One pass with atomics cannot merge log-sum-exps (no atomic op does),
                # a fixed shift of exp by the bound scale underflows fp32 for scale
                # > ~44, and per-row-block partials would cost O(B^2 / BLOCK_M) memory.
                col_lse = _row_lse(p[:B], q, inv_p[:B], inv_q, scale)  # (B,)
                loss = (loss + (col_lse - positive).mean()) / 2
            ctx.save_for_backward(q, p, inv_q, inv_p, row_lse, col_lse)
            ctx.scale, ctx.symmetric = scale, symmetric
            return loss

        @staticmethod
        @torch.autograd.function.once_differentiable
        def backward(ctx, grad):
            q, p, inv_q, inv_p, row_lse, col_lse = ctx.saved_tensors
            grad_q, grad_p = _info_nce_bwd(q, p, inv_q, inv_p, row_lse, col_lse, ctx.scale, ctx.symmetric)
            coef = grad * (ctx.scale / q.shape[0])  # a tensor: no .item(), no GPU sync
            # dL/du_i = coef ||q_i|| grad_q_i, then the chain rule through u = q / ||q||.
            dq = _normalize_backward(grad_q * (coef / inv_q)[:, None], q, inv_q)
            dp = _normalize_backward(grad_p * (coef / inv_p)[:, None], p, inv_p)
            return dq.to(q.dtype), dp.to(p.dtype), None, None


def _triton_unavailable(device):
    """None if the Triton kernels can run on `device`, else why not, to end a sentence."""
    if triton is None:
        return "Triton is not installed (pip install triton)"
    if torch.device(device).type != "cuda" and not _INTERPRETED:
        return "its kernels need a CUDA device, or Triton's CPU interpreter (TRITON_INTERPRET=1 before Python starts)"
    return None


def info_nce_triton(q, p, scale=20.0, symmetric=False):
    """info_nce through fused Triton kernels: same formula, shapes and gradients,
    memory O((B + N) D) (the inputs, their norms and O(B) statistics) instead of
    the O(B N) score matrix, and no normalised copies of q and p.

    q: (B, D), p: (N, D), N >= B, both bf16, fp16 or fp32 and of one dtype. Dot
    products run on tensor cores in the input dtype (bf16/fp16; full fp32 for
    fp32) with fp32 accumulation, and every exp, log and statistic is fp32; the
    backward rounds the score gradient to the input dtype for its two dots. See
    the design note above the kernels.

    The gradients are accumulated with fp32 atomic adds, so on a GPU they can
    differ from run to run in the last bits.

    subtle: with fp16 inputs the backward's operand dL/dS_ij / (||q_i|| ||p_j||)
    overflows fp16 if ||q_i|| ||p_j|| < ~2e-5; bf16 has fp32's range.
    """
    reason = _triton_unavailable(q.device)
    if reason is not None:
        raise ValueError(f"info_nce_triton cannot run on {q.device}: {reason}")
    supported = (torch.bfloat16, torch.float16, torch.float32)
    if q.dtype != p.dtype or q.dtype not in supported or q.shape[1] != p.shape[1] or p.shape[0] < q.shape[0]:
        raise ValueError(
            f"info_nce_triton needs q (B, D) and p (N, D) of one dtype (bf16, fp16 or fp32) with N >= B, "
            f"got q {tuple(q.shape)} {q.dtype} and p {tuple(p.shape)} {p.dtype}"
        )
    return _TritonInfoNCE.apply(q, p, scale, symmetric)


INFO_NCE_IMPLS = {"torch": info_nce, "chunked": info_nce_chunked, "triton": info_nce_triton}


def pick_info_nce(impl, device):
    """The InfoNCE function for --loss-impl: one of INFO_NCE_IMPLS, or "auto" for
    Triton on a CUDA device when Triton is installed and info_nce_chunked otherwise.
    Asking for "triton" where it cannot run raises ValueError, at start-up rather
    than at the first step.
    """
    if impl == "auto":
        usable = torch.device(device).type == "cuda" and _triton_unavailable(device) is None
        return info_nce_triton if usable else info_nce_chunked
    if impl not in INFO_NCE_IMPLS:
        raise ValueError(f"unknown InfoNCE implementation {impl!r}; choose auto or one of {sorted(INFO_NCE_IMPLS)}")
    if impl == "triton" and _triton_unavailable(device) is not None:
        raise ValueError(f"--loss-impl triton cannot run on {device}: {_triton_unavailable(device)}")
    return INFO_NCE_IMPLS[impl]
