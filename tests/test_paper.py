"""The paper's table: MIRACL through mteb itself (a tiny local mteb task stands in for the hub's), scored as mteb
scores it and checked against evaluate.py's own metrics and retrieval on the same data."""

import math

import pytest
import torch
from datasets import Dataset
from mteb.abstasks.retrieval import AbsTaskRetrieval
from mteb.abstasks.task_metadata import TaskMetadata

import benchmarks
import evaluate
from checkpoint import BadInput

RUSSIAN_DOCUMENTS = ["вода река", "хлеб свет", "стекло металл"]
RUSSIAN_DOCUMENTS += ["облако вода", "камень свет", "зеленый"]
TEXTS = {  # subset -> (documents, queries, judgements)
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
        for subset, (docs, queries, judged) in TEXTS.items():
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
