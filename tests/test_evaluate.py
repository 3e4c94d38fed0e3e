"""evaluate.py: trec_eval's metrics by hand and against pytrec_eval (ties included), PEER, MRC
and its aggregation, alignment/uniformity, both benchmark layouts and their parallel groups,
models encoded exactly as sentence-transformers encodes them, the output files and who may
replace them, and bad input."""

import json
import math
import os
import subprocess
import sys

import pytest
import torch
from conftest import CHARACTERS, ROOT, build_tiny_model, write_rows
from datasets import Dataset
from mteb.abstasks.retrieval import AbsTaskRetrieval
from mteb.abstasks.task_metadata import TaskMetadata

import benchmarks
import evaluate
from data import BadInput

# ---------------------------------------------------------------------------
# Ranking metrics, by hand

# A ranking of 25 documents: d1 (judged non-relevant, grade 0) at rank 1, d2 (grade 2) at 2, d3
# (grade 1) at 3, d22 (grade 1) at 22, unjudged documents elsewhere; d99 (grade 1) is never
# retrieved. Relevant (grade >= 1): d2, d3, d22, d99, so 4 in all.
RANKING = ["d1", "d2", "d3"] + [f"x{r}" for r in range(4, 22)] + ["d22"] + [f"x{r}" for r in range(23, 26)]
JUDGED = {"d1": 0, "d2": 2, "d3": 1, "d22": 1, "d99": 1}


def trec_rank(scores):
    """{doc id: score} -> ids in trec_eval's order: score descending, then id descending."""
    return sorted(scores, key=lambda doc: (scores[doc], doc), reverse=True)


def metrics_of(ranking, judged):
    return evaluate.ranking_metrics({"q": ranking}, {"q": judged})["q"]


def test_ndcg_by_hand():
    """DCG@10 = 0/log2(2) + 2/log2(3) + 1/log2(4); the ideal order of all judged grades is
    2, 1, 1, 1, so IDCG@10 = 2/log2(2) + 1/log2(3) + 1/log2(4) + 1/log2(5). Ranks 11-20 hold
    nothing relevant, so nDCG@20 is the same; d22 adds 1/log2(23) by k = 100. Nothing relevant
    at all: 0."""
    dcg, ideal = 2 / math.log2(3) + 1 / 2, 2 + 1 / math.log2(3) + 1 / 2 + 1 / math.log2(5)
    values = metrics_of(RANKING, JUDGED)
    assert values["ndcg_at_10"] == pytest.approx(dcg / ideal)
    assert values["ndcg_at_20"] == pytest.approx(dcg / ideal)
    assert values["ndcg_at_100"] == pytest.approx((dcg + 1 / math.log2(23)) / ideal)
    assert metrics_of(RANKING, {"d1": 0})["ndcg_at_10"] == 0.0


def test_recall_mrr_and_map_by_hand():
    """Recall@20 = |{d2, d3}| / 4, Recall@100 = 3 / 4 (d22 at rank 22). MRR@10 = 1/2 (d2 at rank 2).
    MAP@100 = (P@2 + P@3 + P@22) / 4 = (1/2 + 2/3 + 3/22) / 4: the never-retrieved d99 still
    counts in the denominator. A first relevant document at rank 10 gives MRR@10 = 1/10; at rank
    11 it is past the cut: 0 (trec_eval's recip_rank alone would give 1/11). Nothing retrieved
    (a --monolingual query whose language has no document): every metric 0."""
    values = metrics_of(RANKING, JUDGED)
    assert values["recall_at_20"] == pytest.approx(2 / 4) and values["recall_at_100"] == pytest.approx(3 / 4)
    assert values["mrr_at_10"] == 0.5
    assert values["map_at_100"] == pytest.approx((1 / 2 + 2 / 3 + 3 / 22) / 4)
    assert metrics_of(RANKING, {RANKING[9]: 1})["mrr_at_10"] == pytest.approx(0.1)
    assert metrics_of(RANKING, {RANKING[10]: 1})["mrr_at_10"] == 0.0
    assert set(metrics_of([], JUDGED).values()) == {0.0}


def test_ties_change_the_metrics_as_in_trec_eval():
    """Two docs tie at the top score. If the relevant one has the smaller id it comes
    second: MRR@10 = 1/2 and nDCG@10 = 1/log2(3); with the larger id, first: 1 and 1.
    The metrics keep the order they are given, ties settled by id."""
    judged = {"doc-a": 1}
    ranking = trec_rank({"doc-a": 0.7, "doc-b": 0.7, "doc-c": 0.2})
    assert ranking == ["doc-b", "doc-a", "doc-c"]
    values = metrics_of(ranking, judged)
    assert values["mrr_at_10"] == 0.5 and values["ndcg_at_10"] == pytest.approx(1 / math.log2(3))
    values = metrics_of(trec_rank({"doc-z": 0.7, "doc-b": 0.7}), {"doc-z": 1})
    assert values["mrr_at_10"] == 1.0 and values["ndcg_at_10"] == 1.0


def test_own_language_share():
    """Top 4 langs en en de fr for an English query: 2/4 at k=4, 1 at k=2; fewer retrieved than k: share of those."""
    langs = ["en", "en", "de", "fr"]
    assert evaluate.own_language_share(langs, "en", 4) == 0.5
    assert evaluate.own_language_share(langs, "en", 2) == 1.0
    assert evaluate.own_language_share(langs, "de", 10) == 0.25


def test_metrics_equal_pytrec_eval_on_a_benchmark_with_ties():
    """40 queries, 150 documents, embeddings of -1/0/1 in 4 dims: scores are exact small
    integers, so nearly every rank is a tie that only the document id settles. Graded
    judgements (0, 1, 2) and relevant documents that are never retrieved. pytrec_eval
    (trec_eval itself) gets every score and sorts on its own; evaluate.py retrieves the
    top 100 and scores it. Every metric agrees per query. (pytrec_eval's recip_rank looks
    at the whole ranking: RR@10 is it where it is >= 1/10, else 0.)"""
    import pytrec_eval

    generator = torch.Generator().manual_seed(7)
    q = torch.randint(-1, 2, (40, 4), generator=generator).float()
    d = torch.randint(-1, 2, (150, 4), generator=generator).float()
    doc_ids = [f"d{j}" for j in torch.randperm(150, generator=generator).tolist()]
    qrels = {}
    for i in range(40):
        picks = torch.randperm(150, generator=generator)[:6].tolist()
        grades = torch.randint(0, 3, (6,), generator=generator).tolist()
        qrels[f"q{i}"] = {doc_ids[j]: grade for j, grade in zip(picks, grades)}
        qrels[f"q{i}"][doc_ids[picks[0]]] = 2  # at least one relevant document
    scores = q @ d.T  # (40, 150)
    run = {f"q{i}": {doc_ids[j]: float(scores[i, j]) for j in range(150)} for i in range(40)}
    measures = {"ndcg_cut.10,20,100", "recall.20,100", "map_cut.100", "recip_rank"}
    expected = pytrec_eval.RelevanceEvaluator(qrels, measures).evaluate(run)
    _, index = evaluate.retrieve(q, d, evaluate.id_ranks(doc_ids), 100, query_chunk=7, doc_chunk=33)
    rankings = {f"q{i}": [doc_ids[j] for j in index[i].tolist()] for i in range(40)}
    found = evaluate.ranking_metrics(rankings, qrels)
    for query_id, want in expected.items():
        got = found[query_id]
        for key in ("ndcg_at_10", "ndcg_at_20", "ndcg_at_100", "recall_at_20", "recall_at_100", "map_at_100"):
            assert got[key] == pytest.approx(want[evaluate.TREC_MEASURES[key]], abs=1e-9), key
        rr_at_10 = want["recip_rank"] if want["recip_rank"] >= 0.1 - 1e-12 else 0.0
        assert got["mrr_at_10"] == pytest.approx(rr_at_10, abs=1e-9)


# ---------------------------------------------------------------------------
# PEER, MRC, alignment, uniformity


def textbook_kruskal_wallis(groups):
    """H with the tie correction and its chi-square tail, written out independently of scipy."""
    values = torch.tensor([v for g in groups for v in g], dtype=torch.float64)
    _, inverse, counts = torch.unique(values, return_inverse=True, return_counts=True)
    ranks = (counts.cumsum(0).double() - (counts - 1) / 2)[inverse]  # mid-ranks
    n, start, h = float(len(values)), 0, 0.0
    for g in groups:
        h += ranks[start : start + len(g)].sum().item() ** 2 / len(g)
        start += len(g)
    h = (12 / (n * (n + 1)) * h - 3 * (n + 1)) / (1 - (counts.double() ** 3 - counts).sum().item() / (n**3 - n))
    dof = torch.tensor((len(groups) - 1) / 2, dtype=torch.float64)
    return h, torch.special.gammaincc(dof, torch.tensor(max(h, 0.0) / 2, dtype=torch.float64)).item()


def test_kruskal_wallis_without_ties():
    """Three groups of one value, 1, 2, 3: N = 3, rank sums 1, 2, 3, so
    H = 12 / (3 * 4) * (1 + 4 + 9) - 3 * 4 = 2. With g - 1 = 2 degrees of freedom the
    chi-square tail is exp(-H / 2), so p = exp(-1)."""
    h, p = evaluate.kruskal_wallis([[1], [2], [3]])
    assert h == pytest.approx(2.0)
    assert p == pytest.approx(math.exp(-1))


def test_kruskal_wallis_with_ties_at_k_plus_one():
    """PEER's case: k = 3, ranks past k count as 4. Groups A = [1, 4], B = [2, 4].
    Pooled 1, 2, 4, 4 get mid-ranks 1, 2, 3.5, 3.5; R_A = 4.5, R_B = 5.5, N = 4:
    H = 12 / 20 * (4.5^2 / 2 + 5.5^2 / 2) - 15 = 0.15, tie correction
    C = 1 - (2^3 - 2) / (4^3 - 4) = 0.9, H = 0.15 / 0.9 = 1/6. One degree of freedom:
    P(chi^2_1 > H) = erfc(sqrt(H / 2)). All values equal (where scipy raises): p = 1."""
    h, p = evaluate.kruskal_wallis([[1, 4], [2, 4]])
    assert h == pytest.approx(1 / 6)
    assert p == pytest.approx(math.erfc(math.sqrt(1 / 12)))
    assert evaluate.kruskal_wallis([[4, 4], [4]]) == (0.0, 1.0)


def test_kruskal_wallis_matches_the_textbook_formula():
    """20 random draws of 4 groups of 1-5 ranks in 1..11 (many ties): H and p as written out above."""
    generator = torch.Generator().manual_seed(3)
    for _ in range(20):
        groups = [
            torch.randint(1, 12, (int(n),), generator=generator).tolist()
            for n in torch.randint(1, 6, (4,), generator=generator)
        ]
        if len({v for g in groups for v in g}) < 2:
            continue
        h, p = evaluate.kruskal_wallis(groups)
        expected_h, expected_p = textbook_kruskal_wallis(groups)
        assert h == pytest.approx(expected_h) and p == pytest.approx(expected_p)


def test_peer_groups_set_ranks_past_k_to_k_plus_one():
    """Relevant d2 (de) at rank 2, d3 (fr) at 3, d5 (de) not retrieved -> k + 1 = 4 with k = 3;
    d1 is judged non-relevant, d9 is not in the corpus (no language): both left out."""
    doc_lang = {"d1": "en", "d2": "de", "d3": "fr", "d4": "en", "d5": "de"}
    judged = {"d1": 0, "d2": 2, "d3": 1, "d5": 1, "d9": 1}
    groups = evaluate.peer_groups(["d1", "d2", "d3", "d4"], judged, doc_lang, 3)
    assert groups == {"de": [2, 4], "fr": [3]}


def test_spearman():
    """Monotone: 1; reversed: -1; ranks (3, 2, 1) against (1, 3, 2): centred (1, 0, -1), (-1, 1, 0),
    so rho = -1 / sqrt(2 * 2) = -0.5. Ties take mid-ranks: (1, 1, 2) ranks (1.5, 1.5, 3) against
    (1, 2, 3): rho = 0.866 = sqrt(3) / 2. A constant vector has no rank correlation: nan."""
    x = torch.tensor([0.9, 0.8, 0.1])
    assert evaluate.spearman(x, x * 2) == pytest.approx(1.0)
    assert evaluate.spearman(x, -x) == pytest.approx(-1.0)
    assert evaluate.spearman(x, torch.tensor([0.1, 0.9, 0.8])) == pytest.approx(-0.5)
    assert evaluate.spearman([1, 1, 2], [1, 2, 3]) == pytest.approx(math.sqrt(3) / 2)
    assert math.isnan(evaluate.spearman(x, torch.ones(3)))


def test_mrc_by_hand():
    """Documents are the 4 unit vectors, so a query's score for document j is its j-th
    coordinate. k = 2. Tops: en {0, 1}, de {1, 2}, fr {0, 1}.
    en-de: U = {0, 1, 2}, scores (.9, .8, .1) vs (.1, .9, .8): rho = -0.5 (test_spearman).
    en-fr: U = {0, 1}, (.9, .8) vs (.9, .8): rho = 1.
    de-fr: U = {0, 1, 2}, (.1, .9, .8) vs (.9, .8, 0): ranks (1, 3, 2) vs (3, 2, 1): rho = -0.5.
    Per query over its partners: en (-0.5 + 1) / 2 = 0.25, de -0.5, fr 0.25; one query per
    language, so these are the languages' values; MRC = 100 * mean(0.25, -0.5, 0.25) = 0."""
    doc_emb = torch.eye(4)
    query_emb = torch.tensor([[0.9, 0.8, 0.1, 0.0], [0.1, 0.9, 0.8, 0.0], [0.9, 0.8, 0.0, 0.1]])
    top = (query_emb @ doc_emb.T).topk(2, dim=1).indices
    value, per_lang, queries, pairs = evaluate.mrc(query_emb, doc_emb, top, [[0, 1, 2]], ["en", "de", "fr"])
    assert pairs == 3 and queries == 3
    assert per_lang == pytest.approx({"de": -50.0, "en": 25.0, "fr": 25.0})
    assert value == pytest.approx(0.0, abs=1e-9)


def test_mrc_averages_each_query_over_its_partners_first():
    """A partially parallel benchmark: group 1 = (en0, de0, fr0), group 2 = (en1, de1).
    Documents are the 4 unit vectors and every query's top k is all 4, so rho is the
    Spearman correlation of the query vectors. en0 = de0 = en1 = (.1, .2, .3, .4),
    fr0 reversed, de1 = (.1, .2, .4, .3): rho(en0, de0) = 1, rho(en0, fr0) = rho(de0, fr0)
    = -1, rho(en1, de1) = 1 - 6 * 2 / (4 * 15) = 0.8.
    Per query, then per language, then over languages (the reference aggregation):
      RC: en0 0, de0 0, fr0 -1, en1 0.8, de1 0.8; en (0 + 0.8) / 2 = 0.4, de 0.4, fr -1;
      MRC = 100 * (0.4 + 0.4 - 1) / 3 = -6.67.
    The mean over all pairs that involve a language would give en (1 - 1 + 0.8) / 3 = 0.267,
    de 0.267, fr -1 and MRC = -15.56: the two differ once groups differ in size."""
    doc_emb = torch.eye(4)
    up, down, swapped = [0.1, 0.2, 0.3, 0.4], [0.4, 0.3, 0.2, 0.1], [0.1, 0.2, 0.4, 0.3]
    query_emb = torch.tensor([up, up, down, up, swapped])
    top = torch.arange(4).expand(5, 4)
    groups, langs = [[0, 1, 2], [3, 4]], ["en", "de", "fr", "en", "de"]
    value, per_lang, queries, pairs = evaluate.mrc(query_emb, doc_emb, top, groups, langs)
    assert pairs == 4 and queries == 5
    assert per_lang == pytest.approx({"de": 40.0, "en": 40.0, "fr": -100.0})
    assert value == pytest.approx(-20 / 3)
    pairwise = {"en": (1 - 1 + 0.8) / 3, "de": (1 - 1 + 0.8) / 3, "fr": -1.0}
    assert value != pytest.approx(100 * sum(pairwise.values()) / 3, abs=1.0)


def test_alignment_and_uniformity_known_answers():
    """Identical translations: alignment 0. Two antipodal unit vectors: one pair at
    squared distance 4, uniformity = log exp(-2 * 4) = -8. Three unit vectors 120 degrees
    apart: every squared distance is 2 - 2 cos 120 = 3, uniformity = -6. One point
    repeated: distance 0, uniformity = log 1 = 0."""
    x = torch.nn.functional.normalize(torch.randn(5, 7), dim=-1)
    same = torch.arange(5)
    assert evaluate.alignment(x, same, same) == 0.0
    assert evaluate.alignment(
        torch.tensor([[1.0, 0.0], [0.0, 1.0]]), torch.tensor([0]), torch.tensor([1])
    ) == pytest.approx(2.0)
    # chunked sums equal the one-shot mean, whatever the chunk size
    left, right = torch.tensor([0, 1, 2, 3, 4, 0, 2]), torch.tensor([1, 2, 3, 4, 0, 3, 4])
    expected = (x[left] - x[right]).pow(2).sum(1).mean().item()
    for chunk in (1, 3, 7, 100):
        assert evaluate.alignment(x, left, right, chunk=chunk) == pytest.approx(expected, rel=1e-6)
    assert evaluate.uniformity(torch.tensor([[1.0, 0.0], [-1.0, 0.0]])) == pytest.approx(-8.0)
    angles = torch.tensor([0.0, 2 * math.pi / 3, 4 * math.pi / 3])
    assert evaluate.uniformity(torch.stack([angles.cos(), angles.sin()], 1)) == pytest.approx(-6.0)
    assert evaluate.uniformity(torch.ones(3, 4) / 2) == pytest.approx(0.0)


def test_alignment_uniformity_per_language():
    """Groups {0 en, 1 de} and {2 en, 3 fr}: pairs (0, 1) at squared distance 2 (orthogonal)
    and (2, 3) at 0 (identical). Overall 1; en (both pairs) 1; de 2; fr 0."""
    emb = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.6, 0.8], [0.6, 0.8]])
    out = evaluate.alignment_uniformity(emb, ["en", "de", "en", "fr"], [[0, 1], [2, 3]], seed=0)
    assert out["alignment"] == pytest.approx(1.0)
    assert out["alignment_per_language"] == pytest.approx({"de": 2.0, "en": 1.0, "fr": 0.0})
    assert out["uniformity_per_language"]["de"] is None  # one text: no pair
    assert out["alignment_pairs"] == 2


# ---------------------------------------------------------------------------
# Benchmarks: BEIR folders, the MLIR benchmarks' layout, aligned rows


def write_jsonl(path, records):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(record, ensure_ascii=False) + "\n" for record in records), encoding="utf-8")


def make_beir_dir(root, qrels="tsv", lang=True):
    """6 documents (3 topics in en and de), 4 queries (q1 and q2 in en and de) and a
    query q9 without judgements; qrels add one judgement for an unknown query and one for an
    unknown document."""
    topics = {"t1": "river water flows", "t2": "bread from the oven", "t3": "glass and light"}
    corpus = [
        {"_id": f"{t}/{lg}", "title": f"{t} title", "text": f"{text} {lg}", **({"lang": lg} if lang else {})}
        for t, text in topics.items()
        for lg in ("en", "de")
    ]
    queries = [
        {"_id": f"q{i}-{lg}", "text": f"about {topics[f't{i}']} {lg}", **({"lang": lg} if lang else {})}
        for i in (1, 2)
        for lg in ("en", "de")
    ]
    queries.append({"_id": "q9", "text": "unjudged", "lang": "en"})
    write_jsonl(root / "corpus.jsonl", corpus)
    write_jsonl(root / "queries.jsonl", queries)
    judgements = [(f"q{i}-{lg}", f"t{i}/{m}", 1) for i in (1, 2) for lg in ("en", "de") for m in ("en", "de")]
    judgements += [("q7-en", "t1/en", 1), ("q1-en", "t8/en", 2)]
    if qrels == "tsv":
        (root / "qrels").mkdir(parents=True, exist_ok=True)
        (root / "qrels" / "test.tsv").write_text(
            "query-id\tcorpus-id\tscore\n" + "".join(f"{q}\t{d}\t{g}\n" for q, d, g in judgements)
        )
    else:
        write_jsonl(root / "qrels.jsonl", [{"query-id": q, "corpus-id": d, "score": g} for q, d, g in judgements])
    return root


MLIR_LANGS = ("en", "de", "fr")
MLIR_TOPICS = ["river water flows to the sea", "bread from the hot oven", "glass and light in the window"]


def make_mlir_dir(root, query_ids="belebele"):
    """A fully parallel benchmark in the layout of yjoonjang/mlir-benchmarks/MMLIR/*: 3 passages
    in en, de, fr. corpus.jsonl lines {doc_<lang>_<n>: {"text", "lang"}}, with numbers that do
    not match across languages (so only the judgements tell the versions of a passage apart);
    one line holds two documents. queries.jsonl: {"_id", "text", "lang"} with the language as
    prefix, "<lang>_q_<k>" as Belebele writes them or "<lang>_<k>" as XQuAD does. qrels.jsonl:
    one {query id: {doc id: 1, ...}} line per query, every version of the gold passage relevant.
    Returns (root, {topic: {lang: doc id}})."""
    numbers = {"en": [4, 9, 2], "de": [7, 1, 5], "fr": [3, 8, 6]}
    docs = {t: {lg: f"doc_{lg}_{numbers[lg][t]}" for lg in MLIR_LANGS} for t in range(3)}
    lines = [{docs[t][lg]: {"text": f"{MLIR_TOPICS[t]} ({lg})", "lang": lg}} for t in range(3) for lg in MLIR_LANGS]
    lines[0].update(lines.pop(1))  # two documents on the first line
    write_jsonl(root / "corpus.jsonl", lines)
    qid = (lambda lg, t: f"{lg}_q_{t:03d}a") if query_ids == "belebele" else (lambda lg, t: f"{lg}_{t:03d}")
    write_jsonl(
        root / "queries.jsonl",
        [
            {"_id": qid(lg, t), "text": f"what about {MLIR_TOPICS[t]}? {lg}", "lang": lg}
            for t in range(3)
            for lg in MLIR_LANGS
        ],
    )
    write_jsonl(
        root / "qrels.jsonl",
        [{qid(lg, t): {docs[t][m]: 1 for m in MLIR_LANGS}} for t in range(3) for lg in MLIR_LANGS],
    )
    return root, docs


def append_line(path, record):
    with open(path, "a", encoding="utf-8") as f:
        f.write((record if isinstance(record, str) else json.dumps(record)) + "\n")


# ---------------------------------------------------------------------------
# Models: encoded exactly as sentence-transformers encodes them


def build_model(path, hidden, seed):
    """conftest's tiny BERT, with a tokenizer that knows its characters.

    subtle: built with BertTokenizer(vocab_file=...), an argument transformers 5 no longer
    reads (it takes `vocab`), the tokenizer knows only the 5 special tokens: every word
    becomes [UNK], and any two texts of one length get one vector. Where conftest's tokenizer
    turns a word into [UNK], it is written again from the same vocabulary, so the scores
    these tests compare depend on the words."""
    from transformers import AutoTokenizer, BertTokenizer

    build_tiny_model(path, hidden=hidden, seed=seed)
    if AutoTokenizer.from_pretrained(path).tokenize("water") == ["[UNK]"]:
        vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + CHARACTERS + ["##" + c for c in CHARACTERS]
        tokenizer = BertTokenizer(vocab={token: index for index, token in enumerate(vocab)}, model_max_length=128)
        tokenizer.save_pretrained(path)
    return str(path)


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """Two tiny BERT encoders of different widths (32 and 24) whose tokenizers know the characters."""
    root = tmp_path_factory.mktemp("models")
    return {"teacher": build_model(root / "teacher", 32, seed=1), "student": build_model(root / "student", 24, seed=2)}


def test_the_tiny_tokenizer_knows_words(models):
    """Two texts of one length but different words must not share a vector."""
    emb, _ = evaluate.embed(
        evaluate.LazyModel(models["teacher"], evaluate.get_args(["--no-cache"]), torch.device("cpu")),
        ["water", "stone"],
        "document",
        "two words",
        evaluate.get_args(["--no-cache"]),
    )
    assert not torch.allclose(emb[0], emb[1], atol=1e-3)


def build_st_model(path, backbone, dense=True, prompts=None, seed=5):
    """A sentence-transformers folder: Transformer (the tiny BERT backbone) + mean Pooling
    (+ Dense 32 -> 16 with tanh) + Normalize, with the given prompts."""
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.base.modules import Dense, Normalize, Transformer
    from sentence_transformers.sentence_transformer.modules import Pooling

    torch.manual_seed(seed)
    modules = [Transformer(backbone), Pooling(32, "mean")] + ([Dense(32, 16)] if dense else []) + [Normalize()]
    SentenceTransformer(modules=modules, prompts=prompts).save(str(path))
    return str(path)


@pytest.fixture(scope="module")
def st_models(models, tmp_path_factory):
    """The same backbone with and without a Dense layer, both with query/document prompts."""
    root = tmp_path_factory.mktemp("st")
    prompts = {"query": "query: ", "document": "passage: "}
    return {
        "dense": build_st_model(root / "dense", models["teacher"], dense=True, prompts=prompts),
        "no_dense": build_st_model(root / "no_dense", models["teacher"], dense=False, prompts=prompts),
    }


TEXTS = [
    "what is the river",
    "bread from the oven is warm",
    "стекло и свет",
    "水是什么",
    "the long river " * 60,  # 180 words, far past 8 tokens
]


def embed_as_evaluate_does(name, task, argv=()):
    args = evaluate.get_args(["--no-cache", *argv])
    lazy = evaluate.LazyModel(name, args, torch.device("cpu"))
    return evaluate.embed(lazy, TEXTS, task, "test texts", args)


def test_vectors_are_those_of_sentence_transformers(st_models):
    """Transformer + Pooling + Dense + Normalize with prompts: evaluate.py's query and document
    vectors equal SentenceTransformer(path).encode_query / encode_document's (16-d, the Dense
    output), and the prompts they used are recorded; --no-prompts equals encode with no prompt."""
    from sentence_transformers import SentenceTransformer

    reference = SentenceTransformer(st_models["dense"], device="cpu")
    emb, settings = embed_as_evaluate_does(st_models["dense"], "query")
    torch.testing.assert_close(emb, reference.encode_query(TEXTS, convert_to_tensor=True), atol=1e-6, rtol=0)
    assert emb.shape == (5, 16) and settings["prompt"] == "query: " and settings["max_length"] == 128
    emb, settings = embed_as_evaluate_does(st_models["dense"], "document")
    torch.testing.assert_close(emb, reference.encode_document(TEXTS, convert_to_tensor=True), atol=1e-6, rtol=0)
    assert settings["prompt"] == "passage: " and settings["similarity"] == "cosine"
    emb, settings = embed_as_evaluate_does(st_models["dense"], "query", ["--no-prompts"])
    torch.testing.assert_close(emb, reference.encode(TEXTS, convert_to_tensor=True), atol=1e-6, rtol=0)
    assert settings["prompt"] == ""
    assert not torch.allclose(emb, reference.encode_query(TEXTS, convert_to_tensor=True), atol=1e-4)


def test_max_length_is_applied(st_models):
    """--max-length 8 truncates the 180-word text (and only texts that long change);
    the vectors equal sentence-transformers' with max_seq_length = 8. More than the
    tokenizer's 128 is refused."""
    from sentence_transformers import SentenceTransformer

    reference = SentenceTransformer(st_models["dense"], device="cpu")
    reference.max_seq_length = 8
    emb, settings = embed_as_evaluate_does(st_models["dense"], "document", ["--max-length", "8"])
    torch.testing.assert_close(emb, reference.encode_document(TEXTS, convert_to_tensor=True), atol=1e-6, rtol=0)
    assert settings["max_length"] == 8
    full, _ = embed_as_evaluate_does(st_models["dense"], "document")
    assert not torch.allclose(emb[4], full[4], atol=1e-4)
    with pytest.raises(BadInput, match="--max-length 500 is more than model .* takes \\(128 tokens\\)"):
        embed_as_evaluate_does(st_models["dense"], "document", ["--max-length", "500"])


def test_precision_loads_the_weights_in_that_dtype(st_models):
    """By default the checkpoint's own dtype (float32 here), as SentenceTransformer(path) loads it;
    --precision bf16 loads bfloat16 weights: the vectors move by about bf16's resolution, no more."""
    emb, settings = embed_as_evaluate_does(st_models["dense"], "query")
    assert settings["dtype"] == "float32"
    low, settings = embed_as_evaluate_does(st_models["dense"], "query", ["--precision", "bf16"])
    assert settings["dtype"] == "bfloat16" and low.dtype == torch.float32
    assert 0 < (low - emb).abs().max() < 0.05


def test_our_run_folders_load_as_our_training_code_embeds(models, tmp_path):
    """A run folder written by checkpoint.save_model (what distill.py and joint_train.py leave):
    evaluate.py's vectors equal the normalised training forward (joint_train.embed), which
    pools the model's own output without sentence-transformers' encode()."""
    import checkpoint
    import joint_train

    student = checkpoint.load_model(models["student"]).eval()
    checkpoint.save_model(student, tmp_path / "run")
    emb, settings = embed_as_evaluate_does(str(tmp_path / "run"), "query")
    with torch.no_grad():
        training = torch.nn.functional.normalize(joint_train.embed(student, TEXTS), dim=-1)
    torch.testing.assert_close(emb, training, atol=1e-5, rtol=0)
    assert settings["prompt"] == "" and settings["dimension"] == 24


def test_unreproducible_modules_are_refused(st_models, tmp_path):
    """A module type nobody can import, custom code without --trust-remote-code, and a sparse
    (SPLADE) module: each is one sentence naming the module, before anything is loaded."""
    import shutil

    for kind, expected in [
        ("sentence_transformers.models.NoSuchModule", r"module 3 .* 'sentence_transformers.models.NoSuchModule'"),
        ("custom_module.Custom", r"'custom_module.Custom', cannot be loaded .*; pass --trust-remote-code"),
        ("sentence_transformers.sparse_encoder.models.SpladePooling", r"is a sparse \(SPLADE-style\) module"),
    ]:
        path = tmp_path / kind
        shutil.copytree(st_models["dense"], path)
        modules = json.loads((path / "modules.json").read_text())
        modules[2]["type"] = kind
        (path / "modules.json").write_text(json.dumps(modules))
        with pytest.raises(BadInput, match=expected):
            evaluate.check_model(str(path), trust_remote_code=False)
    evaluate.check_model(st_models["dense"], trust_remote_code=False)  # the unaltered model passes


# ---------------------------------------------------------------------------
# The script end to end, on tiny models


@pytest.fixture(scope="module")
def rows(tmp_path_factory):
    return write_rows(tmp_path_factory.mktemp("eval") / "rows.jsonl", n=8)


def run_lines(path):
    """A TREC run file -> {query id: [(doc id, rank, score)]}, checking its six columns."""
    out = {}
    for line in path.read_text().splitlines():
        query_id, q0, doc_id, rank, score, tag = line.split()
        assert q0 == "Q0" and tag
        out.setdefault(query_id, []).append((doc_id, int(rank), float(score)))
    return out


def test_dense_layer_changes_the_scores_and_the_run_files_say_so(st_models, tmp_path):
    """Both models on a fully parallel MLIR-layout benchmark with --save-run: the run files
    hold 9 documents for each of 9 queries, ranks 1..9, scores descending; the Dense model's
    scores are not the Dense-less model's. The result files record each model's prompts and
    max length."""
    root, _ = make_mlir_dir(tmp_path / "Belebele_test")
    out = tmp_path / "out"
    common = ["--benchmark", str(root), "--no-cache", "--out-dir", str(out), "--save-run"]
    evaluate.main(["--model", st_models["dense"], "--model", st_models["no_dense"], *common])
    folder = out / evaluate.slug(str(root))
    runs = {name: run_lines(folder / f"{evaluate.slug(st_models[name])}.trec") for name in st_models}
    for run in runs.values():
        assert len(run) == 9 and all([rank for _, rank, _ in ranked] == list(range(1, 10)) for ranked in run.values())
        assert all(ranked[i][2] >= ranked[i + 1][2] for ranked in run.values() for i in range(8))
    dense_scores = sorted(score for ranked in runs["dense"].values() for _, _, score in ranked)
    plain_scores = sorted(score for ranked in runs["no_dense"].values() for _, _, score in ranked)
    assert max(abs(a - b) for a, b in zip(dense_scores, plain_scores)) > 1e-3
    result = json.loads((folder / f"{evaluate.slug(st_models['dense'])}.json").read_text())
    assert result["encoding"]["query_prompt"] == "query: " and result["encoding"]["document_prompt"] == "passage: "
    assert result["encoding"]["max_length"] == 128 and result["encoding"]["dimension"] == 16


def test_mlir_layout_end_to_end_with_pytrec_eval_on_the_run_file(st_models, tmp_path, capsys):
    """The MLIR benchmarks' layout, fully parallel: the printed table has numbers for MRC,
    align and unif (not n/a), and the result file is MTEB-shaped. pytrec_eval, reading the
    TREC run file and the judgements, gives each query the nDCG@10, R@20, RR@10 (recip_rank on
    a top 10) and AP@100 that the result file's per_query holds."""
    import pytrec_eval

    root, _ = make_mlir_dir(tmp_path / "Belebele_test")
    out = tmp_path / "out"
    name = st_models["dense"]
    report = evaluate.main(
        ["--model", name, "--benchmark", str(root), "--no-cache", "--out-dir", str(out), "--save-run"]
    )
    summary = report[str(root)]["models"][name]
    assert -100 <= summary["mrc_at_10"] <= 100 and summary["mrc_queries"] == 9 and summary["mrc_pairs"] == 9
    assert 0 <= summary["alignment"] <= 4 and summary["uniformity"] <= 0 and summary["alignment_pairs"] == 9
    assert summary["alignment_source"] == "judgements of parallel queries"
    row = [line for line in capsys.readouterr().out.splitlines() if line.startswith(name)][-1].split()  # the table's
    assert "n/a" not in row and float(row[7]) == pytest.approx(summary["mrc_at_10"], abs=0.01)  # MRC@10 column
    folder = out / evaluate.slug(str(root))
    result = json.loads((folder / f"{evaluate.slug(name)}.json").read_text())
    default = result["scores"]["test"][0]
    assert default["hf_subset"] == "default" and default["main_score"] == default["ndcg_at_10"]
    assert default["languages"] == ["de", "en", "fr"] and len(result["scores"]["test"]) == 4
    for key in ("ndcg_at_10", "ndcg_at_100", "recall_at_20", "recall_at_100", "mrr_at_10", "map_at_100"):
        assert 0 <= default[key] <= 1, key
    qrels = {}
    for line in (root / "qrels.jsonl").read_text().splitlines():
        qrels.update(json.loads(line))
    run = {
        q: {d: score for d, _, score in ranked}
        for q, ranked in run_lines(folder / f"{evaluate.slug(name)}.trec").items()
    }
    top10 = {
        q: {d: score for d, rank, score in ranked if rank <= 10}
        for q, ranked in run_lines(folder / f"{evaluate.slug(name)}.trec").items()
    }
    full = pytrec_eval.RelevanceEvaluator(qrels, {"ndcg_cut.10", "recall.20", "map_cut.100"}).evaluate(run)
    rr = pytrec_eval.RelevanceEvaluator(qrels, {"recip_rank"}).evaluate(top10)
    assert sorted(result["per_query"]) == sorted(full)
    for query_id, values in result["per_query"].items():
        assert values["ndcg_at_10"] == pytest.approx(full[query_id]["ndcg_cut_10"], abs=1e-9)
        assert values["recall_at_20"] == pytest.approx(full[query_id]["recall_20"], abs=1e-9)
        assert values["map_at_100"] == pytest.approx(full[query_id]["map_cut_100"], abs=1e-9)
        assert values["mrr_at_10"] == pytest.approx(rr[query_id]["recip_rank"], abs=1e-9)
        assert 0 <= values["own_at_10"] <= 1 and values["lang"] == query_id[:2]
    assert (out / "au.png").stat().st_size > 1000


def rows_as_mlir_dir(rows_path, root):
    """The aligned rows written again in the MLIR benchmarks' layout: doc_<lang>_<n> with numbers
    drawn per language, <lang>_q_<row> queries, and every version of a row's passage relevant to
    every version of its query, as the authors build their benchmarks."""
    import random

    rows = [json.loads(line) for line in open(rows_path, encoding="utf-8")]
    langs = sorted(key[len("passage_") :] for key in rows[0] if key.startswith("passage_"))
    numbers = {lang: random.Random(lang).sample(range(100, 999), len(rows)) for lang in langs}
    corpus, queries, qrels = [], [], []
    for i, row in enumerate(rows):
        docs = {lang: f"doc_{lang}_{numbers[lang][i]}" for lang in langs}
        for lang in langs:
            corpus.append({docs[lang]: {"text": row[f"passage_{lang}"], "lang": lang}})
            queries.append({"_id": f"{lang}_q_{i:03d}", "text": row[f"query_{lang}"], "lang": lang})
            qrels.append({f"{lang}_q_{i:03d}": {docs[other]: 1 for other in langs}})
    for name, records in (("corpus", corpus), ("queries", queries), ("qrels", qrels)):
        write_jsonl(root / f"{name}.jsonl", records)
    return root


def test_the_mlir_layout_scores_as_the_same_rows_do(models, rows, tmp_path):
    """One benchmark two ways: 8 aligned rows, and the same texts and judgements in the MLIR
    benchmarks' layout, where the parallel queries come from id prefixes and the parallel
    documents from the judgements. Every number agrees, MRC and alignment included."""
    common = ["--model", models["teacher"], "--no-cache", "--out-dir", str(tmp_path / "out")]
    from_rows = evaluate.main([*common, "--benchmark", rows])[rows]["models"][models["teacher"]]
    root = str(rows_as_mlir_dir(rows, tmp_path / "Rows_test"))
    from_mlir = evaluate.main([*common, "--benchmark", root])[root]["models"][models["teacher"]]
    for key in ("ndcg_at_10", "recall_at_100", "map_at_100", "own_at_10", "peer_at_100", "mrc_at_10"):
        assert from_mlir[key] == pytest.approx(from_rows[key], rel=1e-6), key
    for key in ("alignment", "uniformity", "alignment_pairs", "mrc_pairs"):
        assert from_mlir[key] == pytest.approx(from_rows[key], rel=1e-5), key


def test_script_end_to_end_and_the_cache(models, rows, tmp_path, capsys):
    """Two tiny models on 8 rows x 4 languages (32 queries, 32 documents): every column
    in range, the table printed, results.json written; a second run embeds nothing
    (cache hits) and reproduces the numbers exactly, replacing the files it wrote."""
    args = [
        "--model",
        models["teacher"],
        "--model",
        models["student"],
        "--benchmark",
        rows,
        "--cache-dir",
        str(tmp_path / "cache"),
        "--out-dir",
        str(tmp_path / "out"),
        "--doc-chunk",
        "7",
        "--query-chunk",
        "5",
    ]
    evaluate.main(args)
    printed = capsys.readouterr().out
    assert "nDCG@10" in printed and "PEER@100" in printed and models["student"] in printed
    results = json.loads((tmp_path / "out" / "results.json").read_text())
    bench = results["benchmarks"][evaluate.slug(rows)]
    assert bench["queries"] == 32 and bench["documents"] == 32 and bench["languages"] == ["de", "en", "ru", "zh"]
    for name in (models["teacher"], models["student"]):
        result = bench["models"][name]
        for key in ("ndcg_at_10", "ndcg_at_20", "recall_at_20", "mrr_at_10", "map_at_100", "own_at_10", "peer_at_100"):
            assert 0.0 <= result[key] <= 1.0, key
        assert -100 <= result["mrc_at_10"] <= 100 and result["mrc_pairs"] == 8 * 6 and result["mrc_queries"] == 32
        assert 0.0 <= result["alignment"] <= 4.0 and -8.0 <= result["uniformity"] <= 0.0
        assert sorted(result["per_language"]) == ["de", "en", "ru", "zh"]
        assert result["peer_queries"] == 32 and result["encoding"]["max_length"] == 128
    evaluate.main(args)
    printed = capsys.readouterr().out
    assert printed.count("cache hit") == 4  # 2 models x (documents, queries)
    again = json.loads((tmp_path / "out" / "results.json").read_text())["benchmarks"][evaluate.slug(rows)]["models"]
    for name, result in again.items():
        for key, value in result.items():
            if key not in ("seconds", "written_at"):
                assert value == bench["models"][name][key], key


def test_a_second_run_adds_its_row(models, st_models, tmp_path, capsys):
    """Model A, then model B in a second run into the same --out-dir: both result files are
    there, and the second run's printed table and results.json hold both rows."""
    root, _ = make_mlir_dir(tmp_path / "Belebele_test")
    common = ["--benchmark", str(root), "--no-cache", "--out-dir", str(tmp_path / "out")]
    evaluate.main(["--model", st_models["dense"], *common])
    capsys.readouterr()
    report = evaluate.main(["--model", models["teacher"], *common])
    printed = capsys.readouterr().out
    assert sorted(report[str(root)]["models"]) == sorted([st_models["dense"], models["teacher"]])
    table = printed[printed.index("model  ") :]
    assert st_models["dense"] in table and models["teacher"] in table
    results = json.loads((tmp_path / "out" / "results.json").read_text())
    assert len(results["benchmarks"][evaluate.slug(str(root))]["models"]) == 2
    assert len(list((tmp_path / "out" / evaluate.slug(str(root))).glob("*.json"))) == 2


def test_script_on_a_beir_dir_monolingual(models, tmp_path, capsys):
    """--monolingual: each language's queries search its 3 documents; the row metrics
    are the mean of the per-language values, and the language-bias columns are n/a."""
    root = make_beir_dir(tmp_path / "b")
    report = evaluate.main(
        [
            "--model",
            models["teacher"],
            "--benchmark",
            str(root),
            "--monolingual",
            "--no-cache",
            "--out-dir",
            str(tmp_path / "out"),
        ]
    )
    result = report[str(root)]["models"][models["teacher"]]
    per_language = result["per_language"]
    assert sorted(per_language) == ["de", "en"]
    assert result["ndcg_at_10"] == pytest.approx(
        (per_language["de"]["ndcg_at_10"] + per_language["en"]["ndcg_at_10"]) / 2
    )
    assert result.get("own_at_10") is None and result.get("mrc_at_10") is None and result.get("peer_at_100") is None
    assert "1 queries without judgements skipped" in capsys.readouterr().out
    assert not (tmp_path / "cache").exists()
    assert (tmp_path / "out" / f"{evaluate.slug(str(root))}.monolingual").is_dir()


def test_parallel_data_and_no_language_metrics(models, rows, tmp_path, capsys):
    """--parallel rows: 8 rows x 3 non-English languages x (query, passage) = 48 (English, X)
    pairs for alignment. --no-language-metrics on a corpus without `lang`: the ranking
    columns are filled, the language columns print n/a."""
    common = ["--model", models["teacher"], "--no-cache", "--out-dir", str(tmp_path / "out")]
    report = evaluate.main(common + ["--benchmark", rows, "--parallel", rows])
    result = report[rows]["models"][models["teacher"]]
    assert result["alignment_source"] == "--parallel" and result["alignment_pairs"] == 48
    assert sorted(result["alignment_per_language"]) == ["de", "en", "ru", "zh"]
    root = make_beir_dir(tmp_path / "b", lang=False)
    capsys.readouterr()
    report = evaluate.main(common + ["--benchmark", str(root), "--no-language-metrics"])
    result = report[str(root)]["models"][models["teacher"]]
    assert 0 <= result["ndcg_at_10"] <= 1 and result.get("own_at_10") is None and result.get("alignment") is None
    row = [line for line in capsys.readouterr().out.splitlines() if line.startswith(models["teacher"])][-1]
    assert row.split()[-6:-1] == ["n/a"] * 5  # own@10 MRC@10 PEER@100 align unif, then the max length


def test_default_models_are_the_trained_stages_and_the_teacher(tmp_path, monkeypatch, capsys):
    """runs/stage1 with a checkpoint is evaluated; runs/stage2 with only args.json (training
    has not saved yet) is not, with a note; the teacher is always the last row."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "runs" / "stage1").mkdir(parents=True)
    (tmp_path / "runs" / "stage1" / "config.json").write_text("{}")
    (tmp_path / "runs" / "stage2").mkdir()
    (tmp_path / "runs" / "stage2" / "args.json").write_text("{}")
    assert evaluate.default_models() == ["runs/stage1", evaluate.TEACHER]
    assert "runs/stage2 holds no model yet" in capsys.readouterr().out


def test_default_models_put_a_lambda_sweep_in_lambda_order(tmp_path, monkeypatch, capsys):
    """Every joint_train.py run in runs/stage2-* with a model: the sweep's by lambda (0 before 0.5,
    not by name), then the baselines; a checkpoint being swapped in (.tmp) and a folder that is
    not a joint_train.py run are left out. Several models follow one --model flag."""
    monkeypatch.chdir(tmp_path)
    runs = {"stage2-lam0.5": ("mimo", 0.5), "stage2-lam0": ("mimo", 0.0), "stage2-xlco": ("xlco", 0.2),
            "stage2-lam1.tmp": ("mimo", 1.0), "stage2-other": (None, None), "stage1": (None, None)}  # fmt: skip
    for name, (objective, lam) in runs.items():
        (tmp_path / "runs" / name).mkdir(parents=True)
        (tmp_path / "runs" / name / "config.json").write_text("{}")
        script = "joint_train.py" if objective else "distill.py" if name == "stage1" else "other.py"
        (tmp_path / "runs" / name / "args.json").write_text(json.dumps({"script": script, "objective": objective,
                                                                         "lam": lam}))  # fmt: skip
    expected = ["runs/stage2-lam0", "runs/stage2-lam0.5", "runs/stage2-xlco", "runs/stage1", evaluate.TEACHER]
    assert evaluate.default_models() == expected
    assert evaluate.get_args(["--model", "a", "b", "--model", "c"]).model == ["a", "b", "c"]


def test_au_points_label_each_kind_of_run(tmp_path):
    """A MIMO run by its lambda, stage 1, the XLCO baseline by where it started, any other model by
    its name, each with its nDCG@10; the MIMO runs ordered by lambda; a model without alignment is
    not a point."""
    folders = {"b": {"script": "joint_train.py", "objective": "mimo", "lam": 0.8},
               "a": {"script": "joint_train.py", "objective": "mimo", "lam": 0.2},
               "s1": {"script": "distill.py"},
               "x": {"script": "joint_train.py", "objective": "xlco", "lam": 0.2, "init": "backbone"}}  # fmt: skip
    for name, arguments in folders.items():
        (tmp_path / name).mkdir()
        (tmp_path / name / "args.json").write_text(json.dumps(arguments))
    models = {str(tmp_path / name): {"alignment": 1.0, "uniformity": -2.0, "ndcg_at_10": 0.5} for name in folders}
    models["hub/model"] = {"alignment": 1.0, "uniformity": -2.0, "ndcg_at_10": 0.25}
    models["no-au"] = {"alignment": None, "uniformity": None, "ndcg_at_10": 0.25}
    points, trajectory = evaluate.au_points(models)
    assert trajectory == [str(tmp_path / "a"), str(tmp_path / "b")]
    labels = {name: label for name, label, _, _ in points}
    assert labels == {
        str(tmp_path / "a"): "λ = 0.2, nDCG@10 0.500",
        str(tmp_path / "b"): "λ = 0.8, nDCG@10 0.500",
        str(tmp_path / "s1"): "stage 1, nDCG@10 0.500",
        str(tmp_path / "x"): "XLCO from backbone, nDCG@10 0.500",  # the label of losses.OBJECTIVES
        "hub/model": "hub/model, nDCG@10 0.250",
    }


def test_plot_is_skipped_with_a_note_without_matplotlib(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib now raises ImportError
    report = {"b": {"models": {"m": {"alignment": 1.0, "uniformity": -2.0}}}}
    assert evaluate.plot_alignment_uniformity(report, evaluate.OwnedFolder(tmp_path, "--out-dir")) is False
    assert "matplotlib is not installed" in capsys.readouterr().out
    assert not (tmp_path / "au.png").exists()


def test_plot_is_written_with_matplotlib(tmp_path):
    """matplotlib is in requirements.txt, so this runs wherever the README's set-up ran."""
    report = {
        "b": {"models": {"m1": {"alignment": 1.0, "uniformity": -2.0}, "m2": {"alignment": 0.5, "uniformity": -3.0}}}
    }
    out = evaluate.OwnedFolder(tmp_path, "--out-dir")
    assert evaluate.plot_alignment_uniformity(report, out) is True
    assert (tmp_path / "au.png").stat().st_size > 1000 and out.ours("au.png")  # listed as evaluate.py's own


# ---------------------------------------------------------------------------
# Files evaluate.py may replace, and bad input


def test_only_files_evaluate_wrote_are_replaced(models, rows, tmp_path):
    """A user's own results.json or au.png in --out-dir, a result file of ours edited since,
    a user's file where --save-run would write: each stops the run before any work, with the
    file untouched and nothing new written. The unaltered folder is written again."""
    out = tmp_path / "out"
    common = ["--model", models["teacher"], "--benchmark", rows, "--no-cache", "--out-dir", str(out)]
    result = out / evaluate.slug(rows) / f"{evaluate.slug(models['teacher'])}.json"
    for mine in ("results.json", "au.png"):
        (out / mine).parent.mkdir(parents=True, exist_ok=True)
        (out / mine).write_text("the user's own")
        with pytest.raises(BadInput, match=f"holds {mine}, which evaluate.py did not write"):
            evaluate.main(common)
        assert (out / mine).read_text() == "the user's own" and not result.exists()
        (out / mine).unlink()
    evaluate.main(common)
    result.write_text(result.read_text().replace("ndcg", "NDCG"))  # edited by hand since
    edited = result.read_text()
    with pytest.raises(BadInput, match="which evaluate.py did not write \\(or which changed since\\)"):
        evaluate.main(common)
    assert result.read_text() == edited
    runs = tmp_path / "runs"
    trec = runs / evaluate.slug(rows) / f"{evaluate.slug(models['teacher'])}.trec"
    trec.parent.mkdir(parents=True)
    trec.write_text("mine\n")
    with pytest.raises(BadInput, match="--save-run .* holds .*\\.trec, which evaluate.py did not write"):
        evaluate.main(common[:-2] + ["--out-dir", str(tmp_path / "out2"), "--save-run", str(runs)])
    assert trec.read_text() == "mine\n" and not (tmp_path / "out2").exists()


def test_two_models_never_share_a_result_file(models, rows, tmp_path):
    """Models at x/m and x__m would both be written as ...x__m.json: the second is refused, in
    one run or in a later one, and the first's file stays as it was. A --cache-dir that is a
    file is refused too."""
    import shutil

    first, second = tmp_path / "x" / "m", tmp_path / "x__m"
    shutil.copytree(models["teacher"], first)
    shutil.copytree(models["teacher"], second)
    common = ["--benchmark", rows, "--no-cache", "--out-dir", str(tmp_path / "out")]
    with pytest.raises(BadInput, match="would share the result file name"):
        evaluate.main(["--model", str(first), "--model", str(second), *common])
    evaluate.main(["--model", str(first), *common])
    (written,) = (tmp_path / "out" / evaluate.slug(rows)).glob("*.json")
    before = written.read_text()
    with pytest.raises(BadInput, match=f"with the results of model '{first}', and model '{second}' would need"):
        evaluate.main(["--model", str(second), *common])
    assert written.read_text() == before
    (tmp_path / "cache").write_text("not a folder")
    with pytest.raises(BadInput, match="--cache-dir .* is a file, not a folder"):
        evaluate.main(
            [
                "--model",
                str(first),
                *common[:-3],
                "--out-dir",
                str(tmp_path / "out"),
                "--cache-dir",
                str(tmp_path / "cache"),
            ]
        )


def run_script(*args):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    return subprocess.run(
        [sys.executable, "evaluate.py", *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300
    )


@pytest.mark.parametrize(
    "case", ["unloadable_model", "no_queries", "no_lang", "unknown_module", "out_dir_is_a_file", "corpus_line"]
)
def test_bad_input_is_one_sentence_and_a_nonzero_exit(case, models, tmp_path):
    root = make_beir_dir(tmp_path / "b", lang=case != "no_lang")
    model = "nobody/no-such-model" if case == "unloadable_model" else models["teacher"]
    out = tmp_path / "out"
    if case == "no_queries":
        (root / "queries.jsonl").unlink()
    elif case == "unknown_module":
        model = str(tmp_path / "m")
        build_tiny_model(model)
        modules = [{"idx": 0, "name": "0", "path": "", "type": "somewhere.UnknownModule"}]
        (tmp_path / "m" / "modules.json").write_text(json.dumps(modules))
    elif case == "out_dir_is_a_file":
        out.write_text("a file of the user's")
    elif case == "corpus_line":
        append_line(root / "corpus.jsonl", '{"text": "no id"}')
    result = run_script("--model", model, "--benchmark", str(root), "--out-dir", str(out), "--no-cache")
    expected = {
        "unloadable_model": "cannot load model 'nobody/no-such-model'",
        "no_queries": "has no queries: expected queries.jsonl",
        "no_lang": "has no 'lang' field",
        "unknown_module": "module 1 of its modules.json, type 'somewhere.UnknownModule', cannot be loaded",
        "out_dir_is_a_file": "is a file, not a folder",
        "corpus_line": "corpus.jsonl:7: expected a BEIR record",
    }[case]
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    lines = [line for line in result.stderr.strip().splitlines() if line.startswith("error: ")]
    assert len(lines) == 1 and expected in lines[0], result.stderr
    if case == "out_dir_is_a_file":
        assert out.read_text() == "a file of the user's"
    else:
        assert not out.exists()  # nothing written before the input is known good


@pytest.mark.parametrize(
    "flags,expected",
    [
        (["--batch-size", "0"], "argument --batch-size: expected an integer >= 1, got '0'"),
        (["--query-chunk", "-3"], "argument --query-chunk: expected an integer >= 1, got '-3'"),
        (["--doc-chunk", "0"], "argument --doc-chunk: expected an integer >= 1, got '0'"),
        (["--max-parallel", "0"], "argument --max-parallel: expected an integer >= 1, got '0'"),
        (["--max-length", "0"], "argument --max-length: expected an integer >= 1, got '0'"),
        (["--seed", "-1"], "argument --seed: expected an integer in [0, 4294967295], got '-1'"),
    ],
)
def test_flags_out_of_range_are_refused(flags, expected):
    with pytest.raises(SystemExit) as stop:
        evaluate.get_args(flags)
    assert stop.value.code == f"error: {expected}"


@pytest.mark.parametrize(
    "flags,expected",
    [
        (["--split", "../test"], "--split must be a plain name"),
        (["--no-prompts", "--query-prompt", "q: "], "--no-prompts and --query-prompt/--document-prompt contradict"),
    ],
)
def test_contradicting_flags_are_refused(flags, expected):
    with pytest.raises(BadInput, match=expected):
        evaluate.get_args(flags)


# ---------------------------------------------------------------------------
# The paper's table: MIRACL through mteb itself (a tiny local mteb task stands in for the hub's), scored as mteb
# scores it and checked against evaluate.py's own metrics and retrieval on the same data.

RUSSIAN_DOCUMENTS = ["вода река", "хлеб свет", "стекло металл"]
RUSSIAN_DOCUMENTS += ["облако вода", "камень свет", "зеленый"]
MTEB_TEXTS = {  # subset -> (documents, queries, judgements)
    "en": (
        ["water river stone", "bread paper light", "glass metal green", "cloud water bread", "stone light", "green"],
        ["water stone", "paper light", "metal glass green"],
        {0: {0: 1, 3: 0}, 1: {1: 2, 4: 1}, 2: {2: 1}},
    ),
    "ru": (
        RUSSIAN_DOCUMENTS,
        ["вода камень", "бумага свет", "металл стекло"],
        {0: {0: 1}, 1: {1: 1, 4: 2}, 2: {2: 1, 5: 0}},
    ),
}


class TinyRetrieval(AbsTaskRetrieval):
    """Two languages, six documents and three queries each, graded judgements; loaded from memory."""

    metadata = TaskMetadata(
        name="TinyRetrieval",
        description="a tiny two-language retrieval task",
        dataset={"path": "local/tiny-retrieval", "revision": "v0"},
        type="Retrieval",
        category="t2t",
        eval_splits=["dev"],
        eval_langs={"en": ["eng-Latn"], "ru": ["rus-Cyrl"]},
        main_score="ndcg_at_10",
    )

    def load_data(self, num_proc=None, **kwargs):
        if self.data_loaded:
            return
        self.dataset = {}
        for subset, (docs, queries, judged) in MTEB_TEXTS.items():
            corpus = Dataset.from_list([{"id": f"d{i}", "title": "", "text": text} for i, text in enumerate(docs)])
            asked = Dataset.from_list([{"id": f"q{i}", "text": text} for i, text in enumerate(queries)])
            qrels = {f"q{q}": {f"d{d}": grade for d, grade in row.items()} for q, row in judged.items()}
            self.dataset[subset] = {"dev": {"corpus": corpus, "queries": asked, "relevant_docs": qrels,
                                            "top_ranked": None}}  # fmt: skip
        self.data_loaded = True


@pytest.fixture
def scored(tiny_models, tmp_path):
    """(benchmark, args, mteb's result, per-query metrics) of the tiny student on the tiny task."""
    bench = benchmarks.load_mteb_task(TinyRetrieval())
    args = evaluate.get_args(["--model", tiny_models["student"], "--cache-dir", str(tmp_path / "cache")])
    lazy = evaluate.LazyModel(tiny_models["student"], args, torch.device("cpu"))
    result, per_query, encoding, run = evaluate.evaluate_model_on(bench, lazy, None, args, torch.device("cpu"), False)
    return bench, args, lazy, result, per_query, encoding, run


def test_the_mteb_path_reads_the_task_as_mteb_loads_it(scored):
    bench = scored[0]
    assert len(bench.corpus) == 12 and len(bench.queries) == 6 and bench.layout["mode"] == "monolingual"
    assert bench.corpus["ru::d3"] == ("облако вода", "ru")
    assert bench.qrels["en::q1"] == {"en::d1": 2, "en::d4": 1}


def test_mteb_scores_equal_evaluate_pys_metrics_on_the_same_rankings(scored):
    """Each language's nDCG, recall and MAP from mteb are the means of trec_eval's per-query values
    (ranking_metrics) on the rankings mteb made, to the 5 decimals mteb keeps; the overall value is the mean over
    languages."""
    _, _, _, result, per_query, _, _ = scored
    assert sorted(result["per_language"]) == ["en", "ru"]
    for lang, values in result["per_language"].items():
        mine = [metrics for metrics in per_query.values() if metrics["lang"] == lang]
        assert len(mine) == 3
        for key in ("ndcg_at_10", "ndcg_at_20", "recall_at_10", "map_at_100"):
            assert values[key] == pytest.approx(sum(m[key] for m in mine) / 3, abs=5e-6), (lang, key)
    mean = sum(values["ndcg_at_10"] for values in result["per_language"].values()) / 2
    assert result["ndcg_at_10"] == pytest.approx(mean) and 0 < mean <= 1


def test_mteb_ranks_as_evaluate_py_ranks_each_language_alone(scored):
    """The same embeddings retrieved by evaluate.py itself, each query among its own language's documents
    (--monolingual), give every language the nDCG@10 and nDCG@20 mteb gives: one protocol, two implementations."""
    bench, args, lazy, result, _, encoding, run = scored
    args.monolingual = True
    own, _, _, _ = evaluate.evaluate_model_on(bench._replace(mteb_task=None), lazy, None, args,
                                              torch.device("cpu"), False)  # fmt: skip
    for lang in ("en", "ru"):
        for key in ("ndcg_at_10", "ndcg_at_20"):
            assert own["per_language"][lang][key] == pytest.approx(result["per_language"][lang][key], abs=5e-6)
    assert result["mteb"]["dataset_revision"] == "v0" and result["mteb"]["task"] == "TinyRetrieval"
    assert encoding["similarity"] == "cosine" and encoding["dimension"] == 24
    assert len(run) == 36 and all(line.split()[1] == "Q0" for line in run)  # every query's 6 documents
    assert all(math.isfinite(float(line.split()[4])) for line in run)


def test_miracl_offline_is_one_sentence():
    with pytest.raises(BadInput, match=r"mteb task MIRACLRetrievalHardNegatives.v2 .* could not be loaded"):
        benchmarks.load_benchmark("miracl")


def test_the_suite_is_the_papers_table(tiny_models, tmp_path, capsys):
    """--suite paper adds the paper's seven benchmarks (offline, the first needs the hub: one sentence, nothing
    written); the table has a row per model and the headline metric of each benchmark, n/a where not scored."""
    assert [spec for _, spec, _ in evaluate.PAPER_SUITE][-3:] == ["neuclir22", "neuclir23", "miracl"]
    argv = ["--suite", "paper", "--model", tiny_models["student"], "--out-dir", str(tmp_path / "eval")]
    with pytest.raises(BadInput, match=r"yjoonjang/mlir-benchmarks.* could not be loaded"):
        evaluate.main([*argv, "--cache-dir", str(tmp_path / "cache")])
    assert not (tmp_path / "eval").exists()
    entry = {"models": {"m": {"ndcg_at_20": 0.5, "ndcg_at_10": 0.25}}}
    evaluate.print_paper_table({"MLQA": (entry, "ndcg_at_20"), "MIRACL": (entry, "ndcg_at_10")}, ["m", "other"])
    lines = capsys.readouterr().out.splitlines()[-3:]
    assert lines[0].split() == ["model", "MLQA", "nDCG@20", "MIRACL", "nDCG@10"]
    assert lines[1].split() == ["m", "0.5000", "0.2500"] and lines[2].split() == ["other", "n/a", "n/a"]


def test_the_papers_cutoffs():
    """MRR@k counts a first relevant document at rank k and not past it (trec_eval's recip_rank counts any rank);
    PEER@k ranks a relevant document past k as k + 1, so its groups differ at 20 and 100."""
    ranking = [f"d{i}" for i in range(1, 101)]
    found = evaluate.ranking_metrics({"q": ranking}, {"q": {"d15": 1, "d40": 1}})["q"]
    assert (found["mrr_at_10"], found["mrr_at_20"], found["mrr_at_100"]) == (0.0, 1 / 15, 1 / 15)
    assert found["recall_at_10"] == 0.0 and found["recall_at_20"] == 0.5 and found["recall_at_100"] == 1.0
    languages = {"d15": "en", "d40": "de"}
    assert evaluate.peer_groups(ranking, {"d15": 1, "d40": 1}, languages, 20) == {"en": [15], "de": [21]}
    assert evaluate.peer_groups(ranking, {"d15": 1, "d40": 1}, languages, 100) == {"en": [15], "de": [40]}
