"""benchmarks.py: BEIR folders, the MLIR benchmarks' layout, aligned rows and hub ids read into
benchmarks with their parallel groups; trec_eval's matching of judgements; bad files named by line."""

import os
import subprocess
import sys

import datasets
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


# ---------------------------------------------------------------------------
# benchmarks.load_neuclir: NeuCLIR'22 pooled as true MLIR from local copies of mteb's hard-negative dataset and
# neuclir/bench, written here in their hub layouts (README.md configs and data files) so datasets reads them like the
# hub. The tiny track:
#   mteb rus: docs r1, r2, r3; queries 1-5, judged 1-4 (5 has no mteb qrels, so it is not a track query)
#   mteb zho: docs z1 and an r1 of its own; queries 1, 6, both judged
#   mteb fas: a doc, and query 9 judged there only (Persian is never read)
#   English topics for 1, 2, 3, 5, 6, 9 (not 4); TREC judgements below, relevance 0 on some rows.

MTEB = "mteb/NeuCLIR2022RetrievalHardNegatives"
BENCH = "neuclir/bench"

MTEB_TABLES = {
    "rus-corpus": [
        {"_id": "r1", "title": "Заголовок", "text": "текст один"},
        {"_id": "r2", "title": "  ", "text": " текст два "},
        {"_id": "r3", "title": "", "text": "три"},
    ],
    "rus-queries": [{"_id": str(number), "text": f"вопрос {number}"} for number in range(1, 6)],
    "rus-qrels": [{"query-id": query_id, "corpus-id": "r1", "score": 1} for query_id in "1234"],
    "zho-corpus": [{"_id": "z1", "title": "标题", "text": "正文"}, {"_id": "r1", "title": "", "text": "中文"}],
    "zho-queries": [{"_id": "1", "text": "问题一"}, {"_id": "6", "text": "问题六"}],
    "zho-qrels": [{"query-id": query_id, "corpus-id": "z1", "score": 1} for query_id in "16"],
    "fas-corpus": [{"_id": "f1", "title": "", "text": "متن"}],
    "fas-queries": [{"_id": "9", "text": "پرسش"}],
    "fas-qrels": [{"query-id": "9", "corpus-id": "f1", "score": 1}],
}
TOPICS = {
    "eng": {number: f"english topic {number}" for number in (1, 2, 3, 5, 6, 9)},
    "fas": {9: "پرسش"},
    "rus": {1: "вопрос 1"},
    "zho": {1: "问题一"},
}
JUDGEMENTS = {  # (query id, doc id, relevance) as in TREC's qrels files
    "rus": [(1, "r1", 3), (1, "r2", 0), (2, "r2", 1), (2, "gone", 3), (3, "r3", 0), (4, "r1", 1), (5, "r1", 3)]
    + [(9, "r1", 1)],
    "zho": [(1, "z1", 1), (2, "z1", 0), (6, "r1", 2)],
    "fas": [(1, "f1", 3), (9, "f1", 3)],
    "mlir": [(1, "r1", 3)],
}

BENCH_CARD = """---
configs:
  - config_name: queries
    default: true
    data_files:
{query_files}
    format: csv
    sep: "\\t"
    header: null
    names:
      - id
      - query
    dataset_info:
      features:
        - name: id
          dtype: string
        - name: query
          dtype: string
  - config_name: qrels
    default: false
    data_files:
{qrels_files}
    format: csv
    sep: ' '
    header: null
    names:
      - id
      - ignore
      - docid
      - relevance
    dataset_info:
      features:
        - name: id
          dtype: string
        - name: ignore
          dtype: string
        - name: docid
          dtype: string
        - name: relevance
          dtype: int
---
"""


def write_mteb(folder, tables):
    """{config: rows} -> mteb's retrieval layout: README.md declares each config's test split, whose rows are in
    <config>/test-00000-of-00001.parquet."""
    folder.mkdir(parents=True)
    card = ["---", "configs:"]
    for config, rows in tables.items():
        card += [f"- config_name: {config}", "  data_files:", "  - split: test", f"    path: {config}/test-*"]
        (folder / config).mkdir()
        datasets.Dataset.from_list(rows).to_parquet(str(folder / config / "test-00000-of-00001.parquet"))
    (folder / "README.md").write_text("\n".join(card + ["---", ""]), encoding="utf-8")


def write_bench(folder, topics, judgements):
    """neuclir/bench's layout: headerless topic TSVs data/news.<split>.tsv (id, query) and space-separated TREC qrels
    data/qrels.<split>.gains.txt (id, language, docid, relevance), declared as csv configs in README.md."""
    (folder / "data").mkdir(parents=True)
    for split, texts in topics.items():
        lines = "".join(f"{query_id}\t{text}\n" for query_id, text in texts.items())
        (folder / "data" / f"news.{split}.tsv").write_text(lines, encoding="utf-8")
    for split, rows in judgements.items():
        lines = "".join(f"{query_id} {split} {doc_id} {grade}\n" for query_id, doc_id, grade in rows)
        (folder / "data" / f"qrels.{split}.gains.txt").write_text(lines, encoding="utf-8")

    def files(pattern, splits):
        return "\n".join(f"      - split: {split}\n        path: data/{pattern.format(split)}" for split in splits)

    card = BENCH_CARD.format(
        query_files=files("news.{}.tsv", topics), qrels_files=files("qrels.{}.gains.txt", judgements)
    )
    (folder / "README.md").write_text(card, encoding="utf-8")


@pytest.fixture
def neuclir_root(tmp_path):
    write_mteb(tmp_path / MTEB, MTEB_TABLES)
    write_bench(tmp_path / BENCH, TOPICS, JUDGEMENTS)
    return tmp_path


def test_corpus_pools_russian_and_chinese_with_prefixed_ids(neuclir_root):
    """Both corpora in one, ids prefixed (each language has an r1); a title joins the text with a newline, a blank
    title leaves the stripped text; Persian is present on disk but never read."""
    bench = benchmarks.load_neuclir("neuclir22", root=neuclir_root)
    assert bench.corpus == {
        "rus::r1": ("Заголовок\nтекст один", "ru"),
        "rus::r2": ("текст два", "ru"),
        "rus::r3": ("три", "ru"),
        "zho::z1": ("标题\n正文", "zh"),
        "zho::r1": ("中文", "zh"),
    }
    assert bench.name == "neuclir22"


def test_queries_and_judgements_follow_the_authors_protocol(neuclir_root):
    """Track queries: judged by mteb in rus or zho, so 1, 2, 3, 4, 6 (5 is in rus-queries but unjudged; 9 only in
    fas). 4 has no English topic; 3 has only relevance-0 judgements: both dropped. Query 1's relevant documents come
    from both the rus and zho qrels; zero grades and the fas qrels are left out; grades become 1."""
    bench = benchmarks.load_neuclir("neuclir22", root=neuclir_root)
    assert bench.queries == {query_id: (f"english topic {query_id}", "en") for query_id in ("1", "2", "6")}
    assert bench.qrels == {
        "1": {"rus::r1": 1, "zho::z1": 1},
        "2": {"rus::r2": 1},
        "6": {"zho::r1": 1},
    }
    assert bench.query_groups == {} and bench.doc_groups == {}


def test_stats_count_each_drop(neuclir_root):
    """Judgements of queries outside the track (rus: 4, 5, 9): 3; relevance 0: rus (1, r2), (3, r3), zho (2, z1): 3;
    relevant but not in the pooled corpus: rus (2, gone): 1."""
    stats = benchmarks.load_neuclir("neuclir22", root=neuclir_root).stats
    assert stats == {
        "track_queries": 5,
        "dropped_queries_without_english": 1,
        "dropped_queries_without_relevant": 1,
        "judgements_of_other_queries": 3,
        "judgements_not_relevant": 3,
        "relevant_outside_corpus": 1,
        "unknown_query_judgements": 0,
        "unknown_document_judgements": 0,
        "skipped_queries": 0,
        "queries_without_relevant": 0,
    }


def test_layout_names_where_each_part_came_from(neuclir_root):
    layout = benchmarks.load_neuclir("neuclir22", root=neuclir_root).layout
    assert str(neuclir_root / MTEB) in layout["corpus"] and "rus, zho" in layout["corpus"]
    assert str(neuclir_root / BENCH) in layout["queries"] and str(neuclir_root / MTEB) in layout["queries"]
    assert str(neuclir_root / BENCH) in layout["qrels"] and "splits rus, zho" in layout["qrels"]
    assert layout["query_groups"] == "none" and layout["document_groups"] == "none"


def test_missing_dataset_is_one_sentence_naming_it(tmp_path):
    """Only neuclir/bench under root: the error names mteb's dataset and config, and asks for a copy under root."""
    write_bench(tmp_path / BENCH, TOPICS, JUDGEMENTS)
    with pytest.raises(BadInput) as raised:
        benchmarks.load_neuclir("neuclir22", root=tmp_path)
    message = str(raised.value)
    assert "\n" not in message and f"'{MTEB}'" in message and "'rus-corpus'" in message
    assert f"under root ({tmp_path / MTEB})" in message


def test_missing_config_and_offline_hub_are_refused(tmp_path):
    """A copy without zho-qrels names that config; with no root the hub is tried, which offline (as every test runs)
    fails with a message asking for a network or a local copy."""
    write_mteb(tmp_path / MTEB, {name: rows for name, rows in MTEB_TABLES.items() if name != "zho-qrels"})
    write_bench(tmp_path / BENCH, TOPICS, JUDGEMENTS)
    with pytest.raises(BadInput, match="config 'zho-qrels' split 'test'"):
        benchmarks.load_neuclir("neuclir22", root=tmp_path)
    with pytest.raises(BadInput, match="NeuCLIR2023RetrievalHardNegatives.*needs a network or a local copy"):
        benchmarks.load_neuclir("neuclir23")
    with pytest.raises(BadInput, match="expected one of neuclir22, neuclir23"):
        benchmarks.load_neuclir("neuclir24", root=tmp_path)


def test_evaluate_reads_a_track_by_its_name(neuclir_root):
    """--benchmark neuclir22=DIR is the same benchmark as load_neuclir's, which a folder of that name would shadow."""
    assert benchmarks.load_benchmark(f"neuclir22={neuclir_root}") == benchmarks.load_neuclir(
        "neuclir22", root=neuclir_root
    )
