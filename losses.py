"""
The MIMO objectives (Multilingual Information Retrieval via Monolingual Objectives, EMNLP 2026) as pure
functions: tensors and scalar hyperparameters in, a scalar tensor out. No state, no logging, no device moves.
Numerically sensitive parts (norms, exp, logsumexp) run in fp32 whatever the input dtype.

Notation follows the paper: s(x) student embedding, t(x) teacher embedding, W the trainable student -> teacher
projection, q / p query and passage embeddings, tau the temperature and scale = 1 / tau. In the paper's order:

    stage 1     L_Distill = mean_i d(W s(x_X,i), t(x_en,i)),  d = 1 - cos  (or MSE)
    stage 2     L_Distill = (d(W s(q_X), t(q_en)) + d(W s(p_Y), t(p_en))) / 2
                L_XLCO    = InfoNCE(s(q_X), s(p_Y)), X != Y, in-batch negatives
                L         = lam * L_XLCO + (1 - lam) * L_Distill       (in joint_train.py)
    baseline    LaKDA     = (1 - a) InfoNCE(q_a, p) + a KL(p_b || p_a)

Then the objectives joint_train.py trains, and their table: a new objective is one function of the batch's
embeddings plus one OBJECTIVES entry, a new distance one function plus one DISTILL_LOSSES entry; the scripts'
flags, logs, model cards and evaluate.py's labels all read these tables. Last, InfoNCE with the same value and
gradients in bounded memory: chunked PyTorch here, fused Triton kernels in fused.py (imported only when used).
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


# ---------------------------------------------------------------------------
# Distillation (MIMO stage 1, and the L_Distill term of stage 2)


def cosine_distill_loss(student, teacher):
    """The MIMO distillation loss, L = mean_i (1 - cos(W s(x_i), t(en_i))): student (B, D) already projected by
    W, teacher (B, D). 0 when every pair points the same way, 1 when orthogonal, 2 when opposite. Scale-free:
    the student need only match directions, all that cosine retrieval uses."""
    student, teacher = fp32(student), fp32(teacher)
    cos = F.cosine_similarity(student, teacher, dim=-1, eps=1e-8)  # (B,)
    return (1.0 - cos).mean()


def mse_distill_loss(student, teacher):
    """L = mean_{i,d} (W s(x_i) - t(en_i))_d^2 (Reimers and Gurevych 2020, "Making Monolingual Sentence
    Embeddings Multilingual using Knowledge Distillation"): student (B, D) already projected by W, teacher
    (B, D). Unlike 1 - cos it also asks the student to match the teacher's norms (unit: the cache is normalised)."""
    return F.mse_loss(fp32(student), fp32(teacher))


@dataclass(frozen=True)
class Distance:
    """A distillation distance d: its function (student (B, D), teacher (B, D)) -> scalar, and its model-card name."""

    loss: Callable
    label: str


DISTILL_LOSSES = {"cosine": Distance(cosine_distill_loss, "1 - cos"), "mse": Distance(mse_distill_loss, "MSE")}


def query_passage_distill(Wq, t_q, Wp, t_p, distance=cosine_distill_loss):
    """Stage 2's L_Distill = (d(W s(q_X), t(q_en)) + d(W s(p_Y), t(p_en))) / 2. Wq, Wp: (B, Dt) the student's
    query and passage embeddings projected by W; t_q, t_p: (B, Dt) the teacher's of their English versions (the
    query's maybe under its query prompt). Each side is pulled onto the English anchor, so X and Y meet."""
    return (distance(Wq, t_q) + distance(Wp, t_p)) / 2


# ---------------------------------------------------------------------------
# Contrastive terms (stage 2 and its baselines)


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
    """LaKDA (Yang et al., MRL 2024): InfoNCE plus a KL term asking two language versions of a query to rank
    the batch's passages alike, L = (1 - alpha) * InfoNCE(q_a, p) + alpha * mean_i KL(p_b,i || p_a,i) with
    p_a,i = softmax_j cos(q_a,i, p_j), p_b,i likewise. q_a, q_b: (B, D) the query in languages a and b; p: (N, D)
    passages, p[i] query i's positive. The KL uses unscaled cosines, as in the paper; both versions get gradients."""
    log_p_a = torch.log_softmax(similarity(q_a, p), dim=-1)  # (B, N)
    log_p_b = torch.log_softmax(similarity(q_b, p), dim=-1)  # (B, N)
    kl = F.kl_div(log_p_a, log_p_b, log_target=True, reduction="batchmean")
    return (1 - alpha) * info_nce(q_a, p, scale) + alpha * kl


# ---------------------------------------------------------------------------
# The objectives of joint_train.py. Each maps one step's embeddings to (loss, terms): e the student's by
# view, (B, Ds) each ("q" queries in X, "p" passages in Y, ...); t the teacher's, (B, Dt) each ("q_en", "p_en");
# W the projection into the teacher's space (None without a teacher); h the hyperparameters (joint_train.py's
# arguments: lam, scale, lakda_alpha, ...), h.info_nce(q, p) the run's InfoNCE term (its implementation,
# --symmetric, --gather-negatives), h.gather(p) every rank's rows (this rank's first) and h.distance.
# terms: the named parts of the loss, which the log, the progress bar and curves.png show.


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
    """One --objective of joint_train.py. loss: its function (above); views: what the student embeds, in this
    order, view -> (field, language), language "x" (the example's query language), "y" (its passage's) or "z" (a
    third draw, LaKDA's); teacher: whether it needs stage 1's teacher and W (then t holds "q_en" and "p_en");
    same_language: X = Y for every pair; label: its short name in tables and plots; card: arguments -> card line."""

    loss: Callable
    views: dict
    teacher: bool
    same_language: bool
    label: str
    card: Callable


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


# ---------------------------------------------------------------------------
# Memory-bounded InfoNCE: info_nce's value and gradients without the (B, N) score matrix. Like FlashAttention,
# this and the fused kernels keep only the inputs and O(B + N) log-sum-exp statistics, recomputing scores.


def inverse_norms(x):
    """1 / max(||x_i||, 1e-12) in fp32, F.normalize's divisor, without an fp32 copy of x: (R, D) -> (R,)."""
    return torch.linalg.vector_norm(x, dim=-1, dtype=torch.float32).clamp_min(1e-12).reciprocal()


def normalize_backward(grad_unit, x, inv_norm):
    """Chain rule through u = x / ||x||: dL/dx = (dL/du - u (u . dL/du)) / ||x||; (R, D) fp32."""
    unit = x.float() * inv_norm[:, None]  # (R, D)
    radial = (unit * grad_unit).sum(-1, keepdim=True)  # (R, 1) the part along u, which the norm removes
    return (grad_unit - unit * radial) * inv_norm[:, None]


class _ChunkedInfoNCE(torch.autograd.Function):
    """info_nce streamed over passage chunks; see info_nce_chunked."""

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


# ---------------------------------------------------------------------------
# The fused kernels (fused.py), and choosing an implementation


def triton_unavailable(device):
    """None if the fused kernels can run on `device`, else why not, to end a sentence."""
    if not TRITON_INSTALLED:
        return "Triton is not installed (pip install triton; it ships Linux wheels only)"
    if torch.device(device).type != "cuda":
        import fused  # imports Triton: only here, once a non-CUDA device asks for the kernels

        if not fused.INTERPRETED:
            return (
                "its kernels need a CUDA device, or Triton's CPU interpreter (TRITON_INTERPRET=1 before Python starts)"
            )
    return None


def info_nce_triton(q, p, scale=20.0, symmetric=False):
    """info_nce through fused Triton kernels (fused.py gives the math and design): same formula, shapes and
    gradients, memory O((B + N) D) instead of O(B N). q: (B, D), p: (N, D), N >= B, one dtype of bf16, fp16, fp32.
    Gradients are summed with fp32 atomic adds, so on a GPU they can differ from run to run in the last bits.
    subtle: with fp16 inputs the backward's operand dL/dS_ij / (||q_i|| ||p_j||) overflows fp16 if
    ||q_i|| ||p_j|| < ~2e-5; bf16 has fp32's range."""
    reason = triton_unavailable(q.device)
    if reason is not None:
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

# What --loss-impl auto follows: per GPU (torch.cuda.get_device_name), the fastest of INFO_NCE_IMPLS at each
# measured (B, D), one-way loss, forward plus backward, bf16, N = B. bench/gpu_check.sh prints these entries,
# like ("NVIDIA H200", 16384, 1024): "triton". No GPU has run it yet, so auto follows SMALL_SCORES alone.
MEASURED_FASTEST = {}
# Up to this many scores (B x N) auto takes plain info_nce, the exact reference: its (B, N) fp32 matrices
# (scores, log-softmax, their gradient: about 12 bytes a score) then stay under 1 GiB. 2^26 is
# B = N = 8192; the paper's 2048 per device is 2^22. Beyond it, info_nce_chunked, memory O(B x 1024).
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
    """The InfoNCE function for --loss-impl: one of INFO_NCE_IMPLS, or "auto", which takes auto_info_nce's
    choice for batch_size queries against `passages` passages (default: as many) of width dim. Asking for
    "triton" where it cannot run raises ValueError, at start-up rather than at the first step."""
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
