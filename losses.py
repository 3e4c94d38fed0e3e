"""The MIMO objectives (Multilingual Information Retrieval via Monolingual Objectives, EMNLP 2026) as pure functions:
tensors and scalar hyperparameters in, a scalar tensor out, the sensitive parts (norms, exp, logsumexp) in fp32. In the
paper's notation (s, t student and teacher embeddings, W the trainable student -> teacher projection, q / p query and
passage embeddings, scale = 1 / tau the inverse temperature) and order:

    stage 1     L_Distill = mean_i d(W s(x_X,i), t(x_en,i)),  d = 1 - cos  (or MSE)
    stage 2     L_Distill = (d(W s(q_X), t(q_en)) + d(W s(p_Y), t(p_en))) / 2
                L_XLCO    = InfoNCE(s(q_X), s(p_Y)), X != Y, in-batch negatives
                L         = lam * L_XLCO + (1 - lam) * L_Distill       (in joint_train.py)
    baseline    LaKDA     = (1 - a) InfoNCE(q_a, p) + a KL(p_b || p_a)

Then joint_train.py's objectives in OBJECTIVES (distances in DISTILL_LOSSES), which flags, logs, cards and labels read:
a new one is a function plus an entry. Last, InfoNCE in bounded memory: chunked here, Triton in fused.py (when used).
"""

import importlib.util
from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F

TRITON_INSTALLED = importlib.util.find_spec("triton") is not None  # whether fused.py (it imports Triton) can import


def fp32(x):
    """Upcast bf16/fp16 to fp32 for the sensitive arithmetic; fp32 and fp64 stay as they are."""
    return x.to(torch.promote_types(x.dtype, torch.float32))


# --- Distillation (MIMO stage 1, and the L_Distill term of stage 2) --------


def cosine_distill_loss(student, teacher):
    """MIMO's L = mean_i (1 - cos(W s(x_i), t(en_i))): student (B, D) already projected by W, teacher (B, D). 0 when
    aligned, 1 orthogonal, 2 opposite. Scale-free: the student need only match directions, all cosine retrieval uses."""
    cos = F.cosine_similarity(fp32(student), fp32(teacher), dim=-1, eps=1e-8)  # (B,)
    return (1.0 - cos).mean()


def mse_distill_loss(student, teacher):
    """L = mean_{i,d} (W s(x_i) - t(en_i))_d^2 (Reimers and Gurevych, EMNLP 2020): student (B, D) projected by W,
    teacher (B, D). Unlike 1 - cos it also matches the teacher's norms (unit: the cache is normalised)."""
    return F.mse_loss(fp32(student), fp32(teacher))


@dataclass(frozen=True)
class Distance:
    """A distillation distance d: its function (student (B, D), teacher (B, D)) -> scalar, and its model-card name."""

    loss: Callable
    label: str


DISTILL_LOSSES = {"cosine": Distance(cosine_distill_loss, "1 - cos"), "mse": Distance(mse_distill_loss, "MSE")}


def query_passage_distill(Wq, t_q, Wp, t_p, distance=cosine_distill_loss):
    """Stage 2's L_Distill = (d(W s(q_X), t(q_en)) + d(W s(p_Y), t(p_en))) / 2: both pulled onto the English anchor, X
    and Y meet. Wq, Wp: (B, Dt) student embeddings projected by W; t_q, t_p: (B, Dt) the teacher's of their English."""
    return (distance(Wq, t_q) + distance(Wp, t_p)) / 2


# --- Contrastive terms (stage 2 and its baselines) -------------------------


def similarity(q, p):
    """Cosine similarity matrix in (at least) fp32: q (B, D), p (N, D) -> (B, N)."""
    return F.normalize(fp32(q), dim=-1) @ F.normalize(fp32(p), dim=-1).T


def info_nce(q, p, scale=20.0, symmetric=False):
    """InfoNCE with in-batch negatives (van den Oord et al. 2018; MIMO's L_XLCO when q, p differ in language):

        S = scale * cos(q, p)                                     # (B, N)
        L_q->p = mean_i [ logsumexp_j S_ij - S_ii ],  L_p->q = mean_j<B [ logsumexp_i<B S_ij - S_jj ]
        L = L_q->p, or (L_q->p + L_p->q) / 2 with symmetric=True.

    q: (B, D) queries; p: (N, D) passages with N >= B, p[i] the positive of q[i] and rows B.. extra negatives,
    which have no query of their own, so L_p->q runs over the B positives only. scale = 1 / tau; 20 is tau 0.05.
    """
    B = q.shape[0]
    scores = scale * similarity(q, p)  # (B, N)
    target = torch.arange(B, device=q.device)
    loss = F.cross_entropy(scores, target)
    if symmetric:
        loss = (loss + F.cross_entropy(scores[:, :B].T, target)) / 2
    return loss


def lakda_loss(q_a, q_b, p, scale=20.0, alpha=0.5):
    """LaKDA (Yang et al., MRL 2024): L = (1 - alpha) InfoNCE(q_a, p) + alpha mean_i KL(p_b,i || p_a,i), p_a,i =
    softmax_j cos(q_a,i, p_j) unscaled as in the paper, p_b,i likewise: two language versions of a query rank the
    passages alike. q_a, q_b: (B, D) in languages a, b; p: (N, D), p[i] query i's positive; both get gradients."""
    log_p_a, log_p_b = (torch.log_softmax(similarity(x, p), dim=-1) for x in (q_a, q_b))  # (B, N) each
    kl = F.kl_div(log_p_a, log_p_b, log_target=True, reduction="batchmean")
    return (1 - alpha) * info_nce(q_a, p, scale) + alpha * kl


# --- The objectives of joint_train.py --------------------------------------
# Each maps a step's embeddings to (loss, terms: its named parts, as logged): e the student's, (B, Ds) by
# view ("q" queries in X, "p" passages in Y, ...); t the teacher's, (B, Dt) ("q_en", "p_en"); W the projection to the
# teacher's space (None without one); h joint_train.py's arguments (lam, scale, ...) with h.distance, h.info_nce(q, p)
# the run's InfoNCE (--loss-impl, --symmetric, --gather-negatives) and h.gather(p) all ranks' rows (this rank's first).


def mimo_objective(e, t, W, h):
    """MIMO stage 2: L = lam * L_XLCO + (1 - lam) * L_Distill."""
    xlco = h.info_nce(e["q"], e["p"])  # X != Y: the cross-lingual pull
    distill = query_passage_distill(W(e["q"]), t["q_en"], W(e["p"]), t["p_en"], h.distance)  # the English anchor
    return h.lam * xlco + (1 - h.lam) * distill, {"xlco": xlco, "distill": distill}


def xlco_objective(e, t, W, h):
    """The XLCO baseline: cross-lingual InfoNCE alone, L = L_XLCO."""
    loss = h.info_nce(e["q"], e["p"])
    return loss, {"xlco": loss}


def infonce_objective(e, t, W, h):
    """The monolingual baseline: InfoNCE with query and passage in one language."""
    loss = h.info_nce(e["q"], e["p"])
    return loss, {"infonce": loss}


def lakda_objective(e, t, W, h):
    """The LaKDA baseline: the query in X learns to rank the batch's passages as its version in Y does."""
    loss = lakda_loss(e["q"], e["q_b"], h.gather(e["p"]), h.scale, h.lakda_alpha)
    return loss, {"lakda": loss}


@dataclass(frozen=True)
class Objective:
    """One --objective of joint_train.py."""

    loss: Callable  # its function (above)
    views: dict  # view -> (field, language) the student embeds, in order; "x" query's, "y" passage's, "z" a third draw
    teacher: bool  # whether it needs stage 1's teacher and W (then t holds "q_en" and "p_en")
    same_language: bool  # X = Y for every pair
    label: str  # its short name in tables and plots
    card: Callable  # arguments -> model card line


def nce(a):
    """The InfoNCE settings in an objective's card line."""
    return f"InfoNCE scale {a['scale']:g}" + (", symmetric" if a.get("symmetric") else "")


QP = {"q": ("query", "x"), "p": ("passage", "y")}
OBJECTIVES = {  # --objective: Objective(loss, views, teacher, same_language, label, card)
    "mimo": Objective(mimo_objective, QP, True, False, "MIMO", lambda a: (
        f"L = {a['lam']:g} L_XLCO + {1 - a['lam']:g} L_Distill (lambda = {a['lam']:g}); {nce(a)}; "
        f"d = {DISTILL_LOSSES[a['distill_loss']].label}")),
    "xlco": Objective(xlco_objective, QP, False, False, "XLCO", lambda a: f"cross-lingual InfoNCE; {nce(a)}"),
    "infonce": Objective(infonce_objective, QP, False, True, "InfoNCE", lambda a: f"same-language InfoNCE; {nce(a)}"),
    "lakda": Objective(lakda_objective, {"q": ("query", "x"), "p": ("passage", "z"), "q_b": ("query", "y")}, False,
                       False, "LaKDA", lambda a: f"LaKDA, a = {a['lakda_alpha']:g}; {nce(a)}"),
}  # fmt: skip


# --- Memory-bounded InfoNCE ------------------------------------------------
# info_nce's value and gradients without the (B, N) scores: like FlashAttention, keep only the inputs and O(B + N)
# log-sum-exp statistics, and recompute scores.


def inverse_norms(x):
    """1 / max(||x_i||, 1e-12) in fp32, F.normalize's divisor, without an fp32 copy of x: (R, D) -> (R,)."""
    return torch.linalg.vector_norm(x, dim=-1, dtype=torch.float32).clamp_min(1e-12).reciprocal()


def normalize_backward(grad_unit, x, inv_norm):
    """Chain rule through u = x / ||x||: dL/dx = (dL/du - u (u . dL/du)) / ||x||; (R, D) fp32."""
    unit = x.float() * inv_norm[:, None]  # (R, D)
    radial = (unit * grad_unit).sum(-1, keepdim=True)  # (R, 1) the part along u, which the norm removes
    return (grad_unit - unit * radial) * inv_norm[:, None]


class _ChunkedInfoNCE(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, p, scale, symmetric, chunk_size):
        B, N = q.shape[0], p.shape[0]
        inv_q, inv_p = inverse_norms(q), inverse_norms(p)  # (B,), (N,)
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
        dq = normalize_backward(grad_q_unit * coef, q, inv_q)
        dp = normalize_backward(grad_p_unit * coef, p, inv_p)
        return dq.to(q.dtype), dp.to(p.dtype), None, None, None


def info_nce_chunked(q, p, scale=20.0, symmetric=False, chunk_size=1024):
    """info_nce (same formula, shapes q (B, D), p (N, D), N >= B, and result, in fp32) with memory O(B * chunk_size)
    instead of O(B * N), in PyTorch: the CPU and no-Triton path of --loss-impl. The forward streams chunk_size
    passages at a time, merging each query's log-sum-exp across chunks; the backward recomputes each (B, chunk)
    score block once for both gradients: 4 matmuls to info_nce's 3."""
    return _ChunkedInfoNCE.apply(q, p, scale, symmetric, chunk_size)


# --- The fused kernels (fused.py), and choosing an implementation ----------


def triton_unavailable(device):
    """None if the fused kernels can run on `device`, else why not, to end a sentence."""
    if not TRITON_INSTALLED:
        return "Triton is not installed (pip install triton; it ships Linux wheels only)"
    if torch.device(device).type == "cuda":
        return None
    import fused  # imports Triton: only here, once a non-CUDA device asks for the kernels

    if not fused.INTERPRETED:
        return "its kernels need a CUDA device, or Triton's CPU interpreter (TRITON_INTERPRET=1 before Python starts)"
    return None


def info_nce_triton(q, p, scale=20.0, symmetric=False):
    """info_nce (q (B, D), p (N, D), N >= B, one of bf16, fp16, fp32) in fused.py's kernels: memory O((B + N) D), and
    fp32 atomic adds make GPU gradients vary between runs in the last bits. subtle: with fp16 the backward's operand
    dL/dS_ij / (||q_i|| ||p_j||) overflows if ||q_i|| ||p_j|| < ~2e-5; bf16 has fp32's range."""
    if (reason := triton_unavailable(q.device)) is not None:
        raise ValueError(f"info_nce_triton cannot run on {q.device}: {reason}")
    supported = (torch.bfloat16, torch.float16, torch.float32)
    if q.dtype != p.dtype or q.dtype not in supported or q.shape[1] != p.shape[1] or p.shape[0] < q.shape[0]:
        raise ValueError(
            f"info_nce_triton needs q (B, D) and p (N, D) of one dtype (bf16, fp16 or fp32) with N >= B, "
            f"got q {tuple(q.shape)} {q.dtype} and p {tuple(p.shape)} {p.dtype}"
        )
    import fused

    return fused.FusedInfoNCE.apply(q, p, scale, symmetric)


INFO_NCE_IMPLS = {"torch": info_nce, "chunked": info_nce_chunked, "triton": info_nce_triton}
# --loss-impl auto's fastest of INFO_NCE_IMPLS per (GPU name, B, D), one-way, forward + backward, bf16, N = B, as
# bench/gpu_check.sh prints: ("NVIDIA H200", 16384, 1024): "triton". None measured yet: auto follows SMALL_SCORES.
MEASURED_FASTEST = {}
# Up to 2^26 scores (B = N = 8192; the paper's 2048 per device is 2^22) auto takes plain info_nce, the exact reference,
# as its (B, N) fp32 matrices (~12 bytes a score) stay under 1 GiB; beyond, info_nce_chunked, memory O(B x 1024).
SMALL_SCORES = 2**26


def auto_info_nce(gpu, batch_size, passages, dim):
    """The INFO_NCE_IMPLS name --loss-impl auto takes for B = batch_size queries against N = passages passages
    of width D = dim (None if not known yet), on the GPU named `gpu` (None where the fused kernels cannot run):
    1. MEASURED_FASTEST's entry for this GPU at the largest measured B <= batch_size and the measured D nearest
       dim (dim None: only if all measured D there agree), if triton or chunked (memory linear in B), torch only
       up to the largest measured B x B scores: the kernel, whose edge grows with B, only where measured;
    2. otherwise plain info_nce up to SMALL_SCORES scores, info_nce_chunked beyond."""
    measured = {(B, D): name for (on, B, D), name in MEASURED_FASTEST.items() if gpu is not None and on == gpu}
    below = [B for B, _ in measured if B <= batch_size]
    if below:
        B = max(below)
        dims = sorted(D for b, D in measured if b == B)
        if dim is not None:
            dims = [min(dims, key=lambda D: abs(D - dim))]
        choices = {measured[B, D] for D in dims}
        largest = max(b for b, _ in measured)
        if len(choices) == 1 and (choices != {"torch"} or batch_size * passages <= largest * largest):
            return choices.pop()
    return "torch" if batch_size * passages <= SMALL_SCORES else "chunked"


def pick_info_nce(impl, device, batch_size, dim=None, passages=None):
    """The InfoNCE function for --loss-impl (INFO_NCE_IMPLS, or "auto": auto_info_nce's choice, passages default B).
    Asking for "triton" where it cannot run raises ValueError at start-up rather than at the first step."""
    if impl == "auto":
        device = torch.device(device)
        kernels = device.type == "cuda" and triton_unavailable(device) is None
        gpu = torch.cuda.get_device_name(device) if kernels else None
        return INFO_NCE_IMPLS[auto_info_nce(gpu, batch_size, passages or batch_size, dim)]
    if impl not in INFO_NCE_IMPLS:
        raise ValueError(f"unknown InfoNCE implementation {impl!r}; choose auto or one of {sorted(INFO_NCE_IMPLS)}")
    if impl == "triton" and triton_unavailable(device) is not None:
        raise ValueError(f"--loss-impl triton cannot run on {device}: {triton_unavailable(device)}")
    return INFO_NCE_IMPLS[impl]
