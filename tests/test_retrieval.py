"""evaluate.py's retrieval: exact chunked top-k in trec_eval's order, ties included, against a full sort."""

import pytest
import torch

import evaluate


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
    _, index = evaluate.retrieve(torch.ones(1, 1), d, evaluate.id_ranks(ids), 5, query_chunk=1, doc_chunk=2)
    assert [ids[j] for j in index[0].tolist()] == ["a", "c", "b10", "b", "z"]


def test_id_ranks_follow_code_point_order():
    """strcmp on UTF-8 orders as Python orders code points: "Z" < "a" < "ä" < "中"."""
    assert evaluate.id_ranks(["ä", "a", "中", "Z"]).tolist() == [2, 1, 3, 0]


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
    scores, index = evaluate.retrieve(q, d, evaluate.id_ranks(ids), 10, query_chunk, doc_chunk)
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
    scores, index = evaluate.retrieve(q, d, evaluate.id_ranks(ids), 20, query_chunk=10, doc_chunk=60)
    full_scores, full_index = (q @ d.T).topk(20, dim=1)
    assert torch.equal(index, full_index)
    torch.testing.assert_close(scores, full_scores)
    scores, index = evaluate.retrieve(q, d[:30], evaluate.id_ranks(ids[:30]), 100, query_chunk=8, doc_chunk=7)
    assert index.shape == (33, 30) and torch.equal(index.sort(1).values, torch.arange(30).expand(33, 30))
    assert (scores[:, :-1] >= scores[:, 1:]).all()
