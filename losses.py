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

# ---------------------------------------------------------------------------
# Distillation (MIMO stage 1, and the L_Distill term of stage 2)


def cosine_distill_loss(student, teacher):
    """Cosine distance to the teacher, the MIMO distillation loss:

        L = mean_i (1 - cos(W s(x_i), t(en_i)))

    student: (B, D) already projected by W; teacher: (B, D). 0 when every pair
    points the same way, 1 when orthogonal, 2 when opposite. Scale-free, so the
    student is asked only to match directions, which is all cosine retrieval uses.
    """
    student, teacher = student.float(), teacher.float()
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
    return F.mse_loss(student.float(), teacher.float())


DISTILL_LOSSES = {"cosine": cosine_distill_loss, "mse": mse_distill_loss}


# ---------------------------------------------------------------------------
# Contrastive terms (stage 2 and its baselines)


def similarity(q, p):
    """Cosine similarity matrix in fp32: q (B, D), p (N, D) -> (B, N)."""
    return F.normalize(q.float(), dim=-1) @ F.normalize(p.float(), dim=-1).T


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
