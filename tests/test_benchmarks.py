"""benchmarks.py: BEIR folders, the MLIR benchmarks' layout, aligned rows and hub ids read into
benchmarks with their parallel groups; trec_eval's matching of judgements; bad files named by line."""

import os
import subprocess
import sys

import pytest
from conftest import ROOT, write_rows
from test_evaluate import MLIR_LANGS, MLIR_TOPICS, append_line, make_beir_dir, make_mlir_dir

import benchmarks
from checkpoint import BadInput


@pytest.mark.parametrize("qrels", ["tsv", "jsonl"])
def test_beir_dir_is_read_with_both_qrels_layouts(tmp_path, qrels):
    """q9 has no judgement: skipped and counted; q7-en is unknown: its 1 judgement is
    dropped and counted; t8/en is not in the corpus: kept (trec_eval counts it as
    relevant) and counted. Titles are joined to the text with a space. Ids "q1-en",
    "q1-de" form the parallel group "q1"; "t1/en", "t1/de" the document group "t1"."""
    bench = benchmarks.load_benchmark(str(make_beir_dir(tmp_path / "b", qrels)))
    assert len(bench.corpus) == 6 and sorted(bench.queries) == ["q1-de", "q1-en", "q2-de", "q2-en"]
    assert bench.corpus["t2/de"] == ("t2 title bread from the oven de", "de")
    assert bench.stats == {
        "unknown_query_judgements": 1,
        "unknown_document_judgements": 1,
        "skipped_queries": 1,
        "queries_without_relevant": 0,
    }
    assert bench.qrels["q1-en"] == {"t1/en": 1, "t1/de": 1, "t8/en": 2}
    assert bench.query_groups == {"q1": ["q1-en", "q1-de"], "q2": ["q2-en", "q2-de"]}
    assert bench.doc_groups == {t: [f"{t}/en", f"{t}/de"] for t in ("t1", "t2", "t3")}
    assert bench.layout["document_groups"] == "ids" and bench.layout["corpus"] == "BEIR"


@pytest.mark.parametrize("query_ids", ["belebele", "xquad"])
def test_the_mlir_benchmarks_layout_and_its_parallel_groups(tmp_path, query_ids):
    """The layout of yjoonjang/mlir-benchmarks: 9 documents, 9 queries. Query groups come from
    the language prefix ("de_q_001a" -> "q_001a", "de_001" -> "001"); document groups, which
    the doc_<lang>_<n> ids do not give, from the judgements: the three versions of each passage."""
    root, docs = make_mlir_dir(tmp_path / "Belebele_test", query_ids)
    bench = benchmarks.load_benchmark(str(root))
    assert len(bench.corpus) == 9 and len(bench.queries) == 9
    assert bench.corpus["doc_de_1"] == (f"{MLIR_TOPICS[1]} (de)", "de")
    key = "q_001a" if query_ids == "belebele" else "001"
    prefix = "q_001a" if query_ids == "belebele" else "001"
    assert bench.query_groups[key] == [f"{lg}_{prefix}" for lg in MLIR_LANGS]
    assert len(bench.query_groups) == 3
    assert sorted(sorted(group) for group in bench.doc_groups.values()) == sorted(
        sorted(docs[t].values()) for t in range(3)
    )
    assert bench.qrels[f"fr_{prefix}"] == {docs[1][lg]: 1 for lg in MLIR_LANGS}
    assert bench.layout["corpus"].startswith("MLIR-benchmark") and bench.layout["queries"] == "BEIR"
    assert bench.layout["document_groups"] == "judgements of parallel queries"


def test_ids_name_their_language_as_suffix_or_prefix():
    """A suffix is taken before a prefix; an id that only equals the language, or names
    it in the middle (the MLIR benchmarks' document ids), keeps its whole id."""
    assert benchmarks.language_free_id("q17/de", "de") == "q17"
    assert benchmarks.language_free_id("q17_de", "de") == "q17"
    assert benchmarks.language_free_id("de_q_005a", "de") == "q_005a"
    assert benchmarks.language_free_id("zh-Hans_12", "zh-Hans") == "12"
    assert benchmarks.language_free_id("doc_de_1466", "de") == "doc_de_1466"
    assert benchmarks.language_free_id("de", "de") == "de"
    assert benchmarks.language_free_id("de_q_005a", None) == "de_q_005a"


def test_document_groups_from_judgements_skip_unclear_passages():
    """Query groups A and B share one passage (d1 en, d1 de): it is one group, given once.
    C's relevant documents are two in English: not one passage. D and E claim d5 with
    different partners: which passage it translates is unclear, so neither is kept."""
    corpus = {
        "d1e": ("", "en"),
        "d1d": ("", "de"),
        "d2e": ("", "en"),
        "d3e": ("", "en"),
        "d5e": ("", "en"),
        "d6d": ("", "de"),
        "d7f": ("", "fr"),
    }
    query_groups = {"A": ["a1", "a2"], "B": ["b1", "b2"], "C": ["c1", "c2"], "D": ["e1", "e2"], "E": ["f1", "f2"]}
    qrels = {
        "a1": {"d1e": 1},
        "a2": {"d1d": 1, "d2e": 0},
        "b1": {"d1e": 1, "d1d": 1},
        "b2": {"d1d": 2},
        "c1": {"d2e": 1},
        "c2": {"d3e": 1},
        "e1": {"d5e": 1, "d6d": 1},
        "e2": {"d5e": 1},
        "f1": {"d5e": 1, "d7f": 1},
        "f2": {},
    }
    assert benchmarks.groups_from_judgements(query_groups, qrels, corpus) == {"A": ["d1d", "d1e"]}


def test_rows_become_the_mlir_benchmark(tmp_path):
    """3 rows x 4 languages: 12 documents and 12 queries; each query's relevant set is the 4
    versions of its row's passage; one query group and one document group per row."""
    bench = benchmarks.load_benchmark(write_rows(tmp_path / "rows.jsonl", n=3))
    assert len(bench.corpus) == 12 and len(bench.queries) == 12
    assert bench.qrels["r1/de"] == {"r1/en": 1, "r1/de": 1, "r1/ru": 1, "r1/zh": 1}
    assert bench.corpus["r2/zh"][1] == "zh" and bench.queries["r0/ru"][1] == "ru"
    assert bench.query_groups["r0"] == ["r0/de", "r0/en", "r0/ru", "r0/zh"]  # languages in sorted order
    assert bench.stats["skipped_queries"] == 0


def test_hub_benchmark_is_read_from_the_hugging_face_cache(tmp_path):
    """The dataset repo yjoonjang/mlir-benchmarks with MMLIR/Belebele_test in its own layout,
    laid out as huggingface_hub caches it (refs/main names the snapshot), read offline. Runs in
    a child process: huggingface_hub reads HF_HUB_CACHE when it is imported."""
    repo = tmp_path / "hub" / "datasets--yjoonjang--mlir-benchmarks"
    make_mlir_dir(repo / "snapshots" / "abc123" / "MMLIR" / "Belebele_test")
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("abc123")
    code = (
        "import benchmarks; b = benchmarks.load_benchmark('yjoonjang/mlir-benchmarks/MMLIR/Belebele_test'); "
        "print(len(b.corpus), len(b.queries), len(b.query_groups), len(b.doc_groups))"
    )
    env = {**os.environ, "HF_HUB_CACHE": str(tmp_path / "hub"), "HF_HUB_OFFLINE": "1"}
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120
    )
    assert result.stdout.split() == ["9", "9", "3", "3"], result.stderr


def test_split_reads_qrels_of_that_name(tmp_path):
    """qrels/dev.tsv judges only q2-en: --split dev reads it; the default split still reads
    qrels/test.tsv; a split the folder lacks, or a split for a file of rows, is refused."""
    root = make_beir_dir(tmp_path / "b")
    (root / "qrels" / "dev.tsv").write_text("q2-en\tt2/en\t1\n")
    assert sorted(benchmarks.load_benchmark(str(root), split="dev").queries) == ["q2-en"]
    assert len(benchmarks.load_benchmark(str(root)).queries) == 4
    with pytest.raises(BadInput, match=r"--split train: .* no qrels/train.tsv .*\(splits there: dev, test\)"):
        benchmarks.load_benchmark(str(root), split="train")
    with pytest.raises(BadInput, match="file of aligned rows, which has no splits"):
        benchmarks.load_benchmark(write_rows(tmp_path / "rows.jsonl", n=2), split="dev")


def test_bad_benchmarks_are_one_clear_sentence(tmp_path):
    root = make_beir_dir(tmp_path / "b")
    (root / "corpus.jsonl").unlink()
    with pytest.raises(BadInput, match="has no corpus: expected corpus.jsonl"):
        benchmarks.load_benchmark(str(root))
    root = make_beir_dir(tmp_path / "c", lang=False)
    with pytest.raises(BadInput, match=r"corpus.jsonl:1: document 't1/en' has no 'lang' field"):
        benchmarks.load_benchmark(str(root))
    bench = benchmarks.load_benchmark(str(root), need_lang=False)  # fine when no language metric is asked for
    assert bench.corpus["t1/en"][1] is None and bench.query_groups == {}
    with pytest.raises(BadInput, match="not a directory or file here"):
        benchmarks.load_benchmark("nobody/no-such-benchmark")


@pytest.mark.parametrize(
    "case,expected",
    [
        ("neither_layout", r"corpus.jsonl:9: expected a BEIR record with '_id' and 'text', or an MLIR-benchmark"),
        ("mixed_layouts", r"corpus.jsonl:9: a BEIR record in a file whose first record is MLIR-benchmark"),
        ("duplicate_document", r"corpus.jsonl:9: document id 'doc_de_1' appears twice \(first at .*corpus.jsonl:4\)"),
        ("float_grade", r"qrels.jsonl:10: the relevance grade of document 'doc_en_4' for query 'en_q_000a' must be"),
        ("string_grade", r"qrels.jsonl:10: .* must be an integer, found '1'"),
        ("bool_grade", r"qrels.jsonl:10: .* must be an integer, found True"),
        ("tsv_grade", r"test.tsv:2: the relevance grade of document 'doc_en_4' .* found '1.0'"),
        ("empty_query", r"queries.jsonl:10: query 'en_q_009a' has an empty text"),
    ],
)
def test_bad_benchmark_files_name_the_file_and_line(tmp_path, case, expected):
    """Each defect appended to a good benchmark in the MLIR benchmarks' layout (8 corpus
    lines, 9 queries, 9 judgement lines) is refused with its file and line."""
    root, _ = make_mlir_dir(tmp_path / "m")
    if case == "neither_layout":
        append_line(root / "corpus.jsonl", {"text": "no id", "lang": "en"})
    elif case == "mixed_layouts":
        append_line(root / "corpus.jsonl", {"_id": "d9", "text": "beir", "lang": "en"})
    elif case == "duplicate_document":
        append_line(root / "corpus.jsonl", {"doc_de_1": {"text": "again", "lang": "de"}})
    elif case in ("float_grade", "string_grade", "bool_grade"):
        grade = {"float_grade": 1.5, "string_grade": "1", "bool_grade": True}[case]
        append_line(root / "qrels.jsonl", {"en_q_000a": {"doc_en_4": grade}})
    elif case == "tsv_grade":
        (root / "qrels.jsonl").unlink()
        (root / "qrels").mkdir()
        (root / "qrels" / "test.tsv").write_text("query-id\tcorpus-id\tscore\nen_q_000a\tdoc_en_4\t1.0\n")
    elif case == "empty_query":
        append_line(root / "queries.jsonl", {"_id": "en_q_009a", "text": "  ", "lang": "en"})
    with pytest.raises(BadInput, match=expected):
        benchmarks.load_benchmark(str(root))


def test_a_first_qrels_line_is_a_header_only_by_its_last_column(tmp_path):
    """'score' (and the like) ends a header; any other word there is named, with the words that are accepted."""
    (tmp_path / "qrels.tsv").write_text("qid\tdocid\trelevance_score\nq1\td1\t1\n")
    with pytest.raises(BadInput, match=r"qrels.tsv:1: .*'relevance_score': a header's last column is one of score"):
        benchmarks.read_qrels(tmp_path / "qrels.tsv")
    (tmp_path / "qrels.tsv").write_text("qid\tdocid\tscore\nq1\td1\t1\n")
    assert benchmarks.read_qrels(tmp_path / "qrels.tsv")[0] == {"q1": {"d1": 1}}
