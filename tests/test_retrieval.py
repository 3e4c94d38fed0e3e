"""retrieval.py: exact chunked top-k in trec_eval's order, ties included, against a full sort;
the teacher check's nDCG@10 by hand and its two verdicts."""

import math

import pytest
import torch

import retrieval


def brute_force(q, d, ids, k):
    """Every score, then Python's sort on (score, id) descending: trec_eval's order by definition."""
    scores = q @ d.T  # (Q, N)
    out = []
    for row in scores.tolist():
        order = sorted(range(len(ids)), key=lambda j: (row[j], ids[j]), reverse=True)[:k]
        out.append(order)
    return torch.tensor(out)


def test_ties_are_broken_by_document_id_descending():
    """trec_eval sorts by score descending, then by document id descending (strcmp):
    among the three documents scoring 0.5, "c" > "b10" > "b" ("b10" > "b": longer with
    the same prefix). One-dimensional embeddings make the scores exactly these numbers."""
    ids = ["a", "b", "c", "b10", "z"]
    d = torch.tensor([[0.9], [0.5], [0.5], [0.5], [0.1]])
    _, index = retrieval.retrieve(torch.ones(1, 1), d, retrieval.id_ranks(ids), 5, query_chunk=1, doc_chunk=2)
    assert [ids[j] for j in index[0].tolist()] == ["a", "c", "b10", "b", "z"]


def test_id_ranks_follow_code_point_order():
    """strcmp on UTF-8 orders as Python orders code points: "Z" < "a" < "ä" < "中"."""
    assert retrieval.id_ranks(["ä", "a", "中", "Z"]).tolist() == [2, 1, 3, 0]


@pytest.mark.parametrize("query_chunk,doc_chunk", [(4, 7), (5, 50), (17, 103), (1, 1)])
def test_chunked_retrieval_equals_the_full_matrix_with_ties(query_chunk, doc_chunk):
    """Vectors of -1/0/1 in 5 dims give exact integer scores and very many ties (only
    11 possible values for 103 documents), the hardest case for chunked top-k: each
    block must pick, among equal scores at its boundary, the largest ids. Chunk sizes
    do not divide Q = 17 or N = 103; ids are shuffled so that id order != index order."""
    generator = torch.Generator().manual_seed(0)
    q = torch.randint(-1, 2, (17, 5), generator=generator).float()
    d = torch.randint(-1, 2, (103, 5), generator=generator).float()
    ids = [f"doc{j}" for j in torch.randperm(103, generator=generator).tolist()]
    scores, index = retrieval.retrieve(q, d, retrieval.id_ranks(ids), 10, query_chunk, doc_chunk)
    expected = brute_force(q, d, ids, 10)
    assert torch.equal(index, expected)
    assert torch.equal(scores, (q @ d.T).gather(1, expected))


def test_chunked_retrieval_on_random_embeddings_and_k_beyond_n():
    """Random normalised embeddings (no ties): the same top 20 as torch.topk on the
    full (Q, N) matrix. Asking for more than N documents returns all N, sorted."""
    generator = torch.Generator().manual_seed(1)
    q = torch.nn.functional.normalize(torch.randn(33, 24, generator=generator), dim=-1)
    d = torch.nn.functional.normalize(torch.randn(257, 24, generator=generator), dim=-1)
    ids = [f"{j:04d}" for j in range(257)]
    scores, index = retrieval.retrieve(q, d, retrieval.id_ranks(ids), 20, query_chunk=10, doc_chunk=60)
    full_scores, full_index = (q @ d.T).topk(20, dim=1)
    assert torch.equal(index, full_index)
    torch.testing.assert_close(scores, full_scores)
    scores, index = retrieval.retrieve(q, d[:30], retrieval.id_ranks(ids[:30]), 100, query_chunk=8, doc_chunk=7)
    assert index.shape == (33, 30) and torch.equal(index.sort(1).values, torch.arange(30).expand(33, 30))
    assert (scores[:, :-1] >= scores[:, 1:]).all()


# ---------------------------------------------------------------------------
# The teacher check


def test_gold_ndcg_by_hand():
    """Query i's gold passage is passage i. Query 0 ranks it first: 1. Query 1 ranks it second
    (passage 0 scores higher): 1 / log2(3). Query 2 ties it with passage 0: the tie goes against
    the gold, rank 2, 1 / log2(3). With k = 1 only query 0 keeps its gain."""
    p = torch.eye(3)
    q = torch.nn.functional.normalize(torch.tensor([[1.0, 0.0, 0.0], [2.0, 1.0, 0.0], [1.0, 0.0, 1.0]]), dim=-1)
    expected = [1.0, 1 / math.log2(3), 1 / math.log2(3)]
    assert retrieval.gold_ndcg_at_k(q, p).tolist() == pytest.approx(expected)
    assert retrieval.gold_ndcg_at_k(q, p, k=1).tolist() == [1.0, 0.0, 0.0]


def test_one_vector_for_every_text_scores_its_worst():
    """An embedder that maps every text to one vector ties all N = 12 passages: each gold is
    ranked last, past k = 10, so nDCG@10 = 0."""
    q = torch.nn.functional.normalize(torch.ones(12, 8), dim=-1)
    assert retrieval.gold_ndcg_at_k(q, q.clone()).tolist() == [0.0] * 12


def test_teacher_check_verdicts():
    """Perfect retrieval (query = its passage, the rest far) against one vector for every
    text (every gold last of N = 12: 0): the student is clearly better only when it is the
    perfect one. The per-query difference is 1 everywhere, so its standard error is 0 and
    the margin is the floor, 0.02. Equal models: difference 0, never better."""
    perfect = torch.eye(12, 16)
    collapsed = torch.nn.functional.normalize(torch.ones(12, 16), dim=-1)
    check = retrieval.teacher_check(collapsed, collapsed, perfect, perfect)
    assert check["teacher_ndcg_at_10"] == 0.0 and check["student_ndcg_at_10"] == 1.0
    assert check["margin"] == retrieval.CHECK_MIN_MARGIN and check["student_better"] and check["queries"] == 12
    check = retrieval.teacher_check(perfect, perfect, collapsed, collapsed)
    assert check["difference"] == -1.0 and not check["student_better"]
    assert not retrieval.teacher_check(perfect, perfect, perfect, perfect)["student_better"]


def test_teacher_check_margin_grows_with_the_noise():
    """Of 4 queries the teacher ranks 2 perfectly and ties the other 2 with each other's
    passage (each gold second: 1 / log2(3)); the student ranks all 4 perfectly. Differences
    0, 0, c, c with c = 1 - 1 / log2(3): mean c / 2, sample std c / sqrt(3), SE = std / 2, so
    the margin 2 SE = c / sqrt(3) exceeds the mean: not clearly better on 4 noisy queries.
    One query has no standard error: the margin is infinite."""
    perfect = torch.eye(4, 8)
    half = perfect.clone()
    half[2:] = torch.nn.functional.normalize(torch.ones(2, 8), dim=-1)  # queries and passages 2, 3: one vector
    check = retrieval.teacher_check(half, half, perfect, perfect)
    c = 1 - 1 / math.log2(3)
    assert check["teacher_ndcg_at_10"] == pytest.approx((2 + 2 / math.log2(3)) / 4)
    assert check["difference"] == pytest.approx(c / 2) and check["margin"] == pytest.approx(c / math.sqrt(3))
    assert not check["student_better"]
    assert retrieval.teacher_check(perfect[:1], perfect[:1], perfect[:1], perfect[:1])["margin"] == math.inf
