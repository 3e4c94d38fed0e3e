"""benchmarks.load_neuclir: NeuCLIR'22 pooled as true MLIR from local copies of mteb's hard-negative dataset and
neuclir/bench, written here in their hub layouts (README.md configs and data files) so datasets reads them like the
hub. The tiny track:
  mteb rus: docs r1, r2, r3; queries 1-5, judged 1-4 (5 has no mteb qrels, so it is not a track query)
  mteb zho: docs z1 and an r1 of its own; queries 1, 6, both judged
  mteb fas: a doc, and query 9 judged there only (Persian is never read)
  English topics for 1, 2, 3, 5, 6, 9 (not 4); TREC judgements below, relevance 0 on some rows."""

import datasets
import pytest

import benchmarks
from checkpoint import BadInput

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
def root(tmp_path):
    write_mteb(tmp_path / MTEB, MTEB_TABLES)
    write_bench(tmp_path / BENCH, TOPICS, JUDGEMENTS)
    return tmp_path


def test_corpus_pools_russian_and_chinese_with_prefixed_ids(root):
    """Both corpora in one, ids prefixed (each language has an r1); a title joins the text with a newline, a blank
    title leaves the stripped text; Persian is present on disk but never read."""
    bench = benchmarks.load_neuclir("neuclir22", root=root)
    assert bench.corpus == {
        "rus::r1": ("Заголовок\nтекст один", "ru"),
        "rus::r2": ("текст два", "ru"),
        "rus::r3": ("три", "ru"),
        "zho::z1": ("标题\n正文", "zh"),
        "zho::r1": ("中文", "zh"),
    }
    assert bench.name == "neuclir22"


def test_queries_and_judgements_follow_the_authors_protocol(root):
    """Track queries: judged by mteb in rus or zho, so 1, 2, 3, 4, 6 (5 is in rus-queries but unjudged; 9 only in
    fas). 4 has no English topic; 3 has only relevance-0 judgements: both dropped. Query 1's relevant documents come
    from both the rus and zho qrels; zero grades and the fas qrels are left out; grades become 1."""
    bench = benchmarks.load_neuclir("neuclir22", root=root)
    assert bench.queries == {query_id: (f"english topic {query_id}", "en") for query_id in ("1", "2", "6")}
    assert bench.qrels == {
        "1": {"rus::r1": 1, "zho::z1": 1},
        "2": {"rus::r2": 1},
        "6": {"zho::r1": 1},
    }
    assert bench.query_groups == {} and bench.doc_groups == {}


def test_stats_count_each_drop(root):
    """Judgements of queries outside the track (rus: 4, 5, 9): 3; relevance 0: rus (1, r2), (3, r3), zho (2, z1): 3;
    relevant but not in the pooled corpus: rus (2, gone): 1."""
    stats = benchmarks.load_neuclir("neuclir22", root=root).stats
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


def test_layout_names_where_each_part_came_from(root):
    layout = benchmarks.load_neuclir("neuclir22", root=root).layout
    assert str(root / MTEB) in layout["corpus"] and "rus, zho" in layout["corpus"]
    assert str(root / BENCH) in layout["queries"] and str(root / MTEB) in layout["queries"]
    assert str(root / BENCH) in layout["qrels"] and "splits rus, zho" in layout["qrels"]
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


def test_evaluate_reads_a_track_by_its_name(root):
    """--benchmark neuclir22=DIR is the same benchmark as load_neuclir's, which a folder of that name would shadow."""
    assert benchmarks.load_benchmark(f"neuclir22={root}") == benchmarks.load_neuclir("neuclir22", root=root)
