"""
Exact top-k retrieval by inner product, in trec_eval's order, without the whole
query-by-corpus score matrix: what evaluate.py ranks with, and what
bench/bench_retrieval.py times. Also the teacher check joint_train.py runs before
training: does the frozen teacher retrieve English better than the student it anchors?

trec_eval orders a query's documents by score descending, then by document id
descending (strcmp). Here a document's id enters as its rank among all ids sorted
ascending (id_ranks), so every tie is settled exactly as trec_eval settles it.
"""

import math

import torch

# The student counts as clearly better than the teacher when its mean nDCG@10 exceeds the
# teacher's by more than max(CHECK_MIN_MARGIN, 2 standard errors of the per-query difference).
CHECK_MIN_MARGIN = 0.02


def trec_order(scores, rank):
    """Column order of each row by score descending, then document id descending.

    scores, rank: (Q, C); rank is each document's position among all ids sorted
    ascending, so a larger rank is a larger id. Returns (Q, C) column indices.
    """
    by_id = rank.argsort(dim=1, descending=True)
    # stable: keeps the id order among equal scores
    by_score = scores.gather(1, by_id).argsort(dim=1, descending=True, stable=True)
    return by_id.gather(1, by_score)


def top_k(scores, rank, k):
    """The first k columns of each row in trec_eval's order.

    scores: (Q, C), rank: (C,) -> scores (Q, k), columns (Q, k), k <= C.
    subtle: torch.topk returns the k largest scores, but among scores equal to the
    k-th it keeps an arbitrary subset. Where more columns tie with the k-th score
    than fit, the id order must pick them, so those rows (rare: exact float ties)
    are redone with a full two-key sort; the rest need only their k sorted. A row
    is crowded exactly when its (k+1)-th largest score equals its k-th, so taking
    k + 1 finds them without another pass over the block (that pass, a (Q, C)
    comparison, cost 40% of the matmul in bench/bench_retrieval.py on CPU).
    """
    values, columns = scores.topk(min(k + 1, scores.shape[1]), dim=1)
    crowded = torch.empty(0, dtype=torch.long, device=scores.device)
    if values.shape[1] > k:
        crowded = (values[:, k] == values[:, k - 1]).nonzero().squeeze(1)
        values, columns = values[:, :k].contiguous(), columns[:, :k].contiguous()
    if len(crowded):
        full = trec_order(scores[crowded], rank.expand(len(crowded), -1))[:, :k]
        columns[crowded] = full
        values[crowded] = scores[crowded].gather(1, full)
    order = trec_order(values, rank[columns])
    return values.gather(1, order), columns.gather(1, order)


@torch.no_grad()
def retrieve(q, d, doc_rank, k, query_chunk=1024, doc_chunk=65536):
    """Exact top-k documents by inner product, without the whole (Q, N) score matrix.

    q: (Q, D), d: (N, D), doc_rank: (N,) int64, all on one device (see trec_order).
    Each (query_chunk, doc_chunk) block keeps its own top k, which is merged into
    the running top k of its queries: the true top k of a query is the top k of
    the union of the blocks' top k, so the result is exact, ties included.
    Returns scores (Q, k') and document indices (Q, k') on CPU, k' = min(k, N).
    """
    k = min(k, d.shape[0])
    # One score block, reused: on CPU, 8% faster than a fresh 256 MB block per chunk
    # (1024 x 65536 scores, bench/bench_retrieval.py at N = 10^6).
    buffer = torch.empty(min(query_chunk, q.shape[0]) * min(doc_chunk, d.shape[0]), device=q.device)
    out_scores, out_index = [], []
    for start in range(0, q.shape[0], query_chunk):
        block_q = q[start : start + query_chunk]  # (q, D)
        best_scores = torch.empty(len(block_q), 0, device=q.device)  # (q, <=k) running top k
        best_index = torch.empty(len(block_q), 0, dtype=torch.long, device=q.device)
        for doc_start in range(0, d.shape[0], doc_chunk):
            block_d = d[doc_start : doc_start + doc_chunk]  # (c, D)
            block = buffer[: len(block_q) * len(block_d)].view(len(block_q), len(block_d))
            scores = torch.mm(block_q, block_d.T, out=block)  # (q, c)
            scores, columns = top_k(scores, doc_rank[doc_start : doc_start + doc_chunk], min(k, scores.shape[1]))
            candidates = torch.cat([best_scores, scores], 1)  # (q, <=2k)
            candidate_index = torch.cat([best_index, columns + doc_start], 1)
            order = trec_order(candidates, doc_rank[candidate_index])[:, :k]
            best_scores, best_index = candidates.gather(1, order), candidate_index.gather(1, order)
        out_scores.append(best_scores.cpu())
        out_index.append(best_index.cpu())
    return torch.cat(out_scores), torch.cat(out_index)


def id_ranks(ids):
    """(N,) int64: each id's position in ascending string order, the tie-break key.

    trec_eval compares ids with strcmp, which orders UTF-8 bytes as Python orders code points.
    """
    rank = torch.empty(len(ids), dtype=torch.long)
    rank[torch.tensor(sorted(range(len(ids)), key=ids.__getitem__), dtype=torch.long)] = torch.arange(len(ids))
    return rank


# ---------------------------------------------------------------------------
# The teacher check


def gold_ndcg_at_k(q, p, k=10):
    """Per-query nDCG@k when query i has one relevant passage, passage i, among all rows of p.

    q: (N, D), p: (N, D), unit rows -> (N,) float64. With a single relevant passage at
    rank r the ideal DCG is 1, so nDCG@k = 1 / log2(r + 1) for r <= k, else 0. r counts
    the passages scoring at least as high as the gold one (itself included): a tie goes
    against the gold, so an embedder that gives every text one vector scores its worst.
    """
    scores = q @ p.T  # (N, N)
    rank = (scores >= scores.diagonal()[:, None]).sum(1).double()  # (N,), 1 = the gold passage is first
    return torch.where(rank <= k, 1 / torch.log2(rank + 1), torch.zeros_like(rank))


def teacher_check(teacher_q, teacher_p, student_q, student_p, k=10):
    """Teacher against student on English query -> English passage retrieval over the same rows.

    teacher_q, teacher_p: (N, Dt), student_q, student_p: (N, Ds), unit rows; query i's
    relevant passage is passage i, the other N - 1 are its candidates too. MIMO's
    distillation term pulls the student towards the teacher's space, which helps only
    while that space is the better one. Returns the mean nDCG@k of each, the mean of
    the per-query difference d_i = student_i - teacher_i, the margin
    max(CHECK_MIN_MARGIN, 2 SE(d)) with SE(d) = std(d) / sqrt(N), and student_better:
    whether the mean difference exceeds the margin (never with a single query).
    """
    teacher = gold_ndcg_at_k(teacher_q.float(), teacher_p.float(), k)  # (N,)
    student = gold_ndcg_at_k(student_q.float(), student_p.float(), k)  # (N,)
    difference = student - teacher  # (N,)
    n, mean_difference = len(difference), difference.mean().item()
    standard_error = difference.std().item() / math.sqrt(n) if n > 1 else math.inf
    margin = max(CHECK_MIN_MARGIN, 2 * standard_error)
    return {
        "queries": n,
        f"teacher_ndcg_at_{k}": teacher.mean().item(),
        f"student_ndcg_at_{k}": student.mean().item(),
        "difference": mean_difference,
        "margin": margin,
        "student_better": mean_difference > margin,
    }
