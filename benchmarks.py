"""
Retrieval benchmarks for evaluate.py: a BEIR-style or MLIR-benchmarks (yjoonjang/mlir-benchmarks) folder, a file of
aligned rows or a hub dataset id, with their parallel groups; NeuCLIR'22/'23 as true MLIR; MIRACL via mteb; the parallel
texts of --parallel. A bad file is refused with its file and line and what was expected. A Benchmark holds plain dicts:
corpus and queries {id: (text, lang or None)} (judged queries only), qrels {query id: {doc id: integer grade}} (> 0
relevant), query_groups and doc_groups {key: [ids]} (translations of one text, two or more, each in a language of its
own), stats (what was skipped or unmatched), layout (how each part was read), mteb_task (the mteb task scoring it).
"""

import random
import re
import reprlib
from collections import Counter, namedtuple
from pathlib import Path

import datasets
from huggingface_hub import snapshot_download

import data
from checkpoint import BadInput, first_line

Benchmark = namedtuple(
    "Benchmark", "name corpus queries qrels query_groups doc_groups stats layout mteb_task", defaults=[None]
)

BEIR_CORPUS = ("corpus.jsonl", "corpus.jsonl.gz", "corpus.parquet")
BEIR_QUERIES = ("queries.jsonl", "queries.jsonl.gz", "queries.parquet")
DEFAULT_SPLIT = "test"
QRELS_HEADERS = ("score", "relevance", "rel", "grade", "label", "judgement", "judgment")  # a qrels.tsv header's last
LAYOUT_NAMES = {"beir": "BEIR", "mlir": "MLIR-benchmark ({id: {...}})"}  # corpus/qrels.jsonl layouts, as errors say


def load_benchmark(spec, need_lang=True, split=DEFAULT_SPLIT):
    """A folder, a file of aligned rows like data/demo/test.jsonl, owner/name[/folder] on the hub, neuclir22/23[=DIR]
    or miracl -> Benchmark. need_lang: every document and query must carry a `lang` (checked for folders only)."""
    if Path(spec).is_dir():
        return read_beir_dir(Path(spec), spec, need_lang, split)
    if spec == "miracl":
        return load_mteb_task(spec)
    track, _, root = spec.partition("=")  # neuclir22, or neuclir22=DIR for local copies in the hub layout
    if track in NEUCLIR_TRACKS:
        return load_neuclir(track, root or None)
    if data.is_local(spec):
        if split != DEFAULT_SPLIT:
            raise BadInput(f"--split {split}: '{spec}' is a file of aligned rows, which has no splits; "
                           "--split applies to benchmark folders")  # fmt: skip
        return rows_to_benchmark(data.load_rows(spec), spec)
    return read_beir_dir(download_benchmark(spec), spec, need_lang, split)


def rows_to_benchmark(rows, name="rows"):
    """Aligned rows -> the MIMO paper's MLIR benchmark: every language version of every passage and query (ids
    "<row id>/<lang>", a parallel group per row), all versions of a row's passage relevant (grade 1) to all versions of
    its query, so a perfect language-agnostic model ranks the L gold versions first, in any order."""
    corpus, queries, qrels, query_groups, doc_groups = {}, {}, {}, {}, {}
    for row in rows:
        key = row["id"]
        doc_groups[key] = [f"{key}/{lang}" for lang in row["passage"]]
        query_groups[key] = [f"{key}/{lang}" for lang in row["query"]]
        corpus.update({f"{key}/{lang}": (text, lang) for lang, text in row["passage"].items()})
        queries.update({f"{key}/{lang}": (text, lang) for lang, text in row["query"].items()})
        qrels.update({query_id: dict.fromkeys(doc_groups[key], 1) for query_id in query_groups[key]})
    layout = {"source": "aligned rows", "query_groups": "rows", "document_groups": "rows"}
    return finish_benchmark(name, corpus, queries, qrels, query_groups, doc_groups, layout)


def download_benchmark(spec):
    """'owner/name[/folder...]' -> local folder of the dataset's snapshot; offline (HF_HUB_OFFLINE=1), from the cache,
    so a benchmark fetched once keeps working without a network."""
    parts = spec.strip("/").split("/")
    if len(parts) < 2 or not all(parts):
        raise BadInput(f"benchmark '{spec}' is not a directory or file here, nor a hub dataset id "
                       "(owner/name[/folder])")  # fmt: skip
    repo_id, folder = "/".join(parts[:2]), "/".join(parts[2:])
    try:
        # fnmatch's '*' also matches '/', so "folder/*" takes the folder's qrels/ too
        root = snapshot_download(repo_id, repo_type="dataset", allow_patterns=[f"{folder}/*"] if folder else None)
    except Exception as error:  # offline and not cached, unknown repo, no access: one message
        raise BadInput(f"benchmark '{spec}' is not a directory or file here, and as hub dataset '{repo_id}' it could "
                       "not be loaded (the hub needs a network or a cached copy): "
                       f"{first_line(error)}") from None  # fmt: skip
    if not (Path(root) / folder).is_dir():
        raise BadInput(f"hub dataset '{repo_id}' has no folder '{folder}'")
    return Path(root) / folder


def read_beir_dir(folder, name, need_lang=True, split=DEFAULT_SPLIT):
    def find(candidates, what):
        for candidate in candidates:
            if (folder / candidate).is_file():
                return folder / candidate
        raise BadInput(f"benchmark '{name}' has no {what}: expected {' or '.join(candidates)} in {folder}")

    corpus, doc_keys, corpus_layout = read_texts(find(BEIR_CORPUS, "corpus"), "document", need_lang)
    queries, query_keys, queries_layout = read_texts(find(BEIR_QUERIES, "queries"), "query", need_lang)
    candidates = (f"qrels/{split}.tsv", f"qrels/{split}.jsonl")
    if split == DEFAULT_SPLIT:  # subtle: a folder with one split may name it nowhere, as the MLIR benchmarks' do
        candidates = ("qrels/test.tsv", "qrels.tsv", "qrels/test.jsonl", "qrels.jsonl")
    elif not any((folder / candidate).is_file() for candidate in candidates):
        present = sorted(path.stem for path in (folder / "qrels").glob("*") if path.suffix in (".tsv", ".jsonl"))
        raise BadInput(
            f"--split {split}: benchmark '{name}' has no qrels/{split}.tsv or qrels/{split}.jsonl in {folder} "
            f"(splits there: {', '.join(present) or 'none besides the default qrels file'})"
        )
    qrels_path = find(candidates, f"relevance judgements for split '{split}'")
    qrels, qrels_layout = read_qrels(qrels_path)
    qrels_layout = f"{qrels_path.relative_to(folder)} ({qrels_layout})"
    layout = {"corpus": corpus_layout, "queries": queries_layout, "qrels": qrels_layout, "split": split}
    query_groups, doc_groups = group_by(query_keys, queries), group_by(doc_keys, corpus)
    return finish_benchmark(name, corpus, queries, qrels, query_groups, doc_groups, layout)


def read_records(path, is_beir, expected):
    """(where, layout, record) per line of a .jsonl(.gz) or row of a .parquet: 'mlir' for {id: {...}} (all values
    objects), else 'beir' if is_beir(record), else refused as not `expected`. A file keeps its first record's layout."""
    if path.suffix == ".parquet":
        dataset, label = data.load_source(str(path))
        records = ((f"{label} row {number}", record) for number, record in enumerate(dataset or [], 1))
    else:
        records = data.json_records(path)
    layout = None
    for where, record in records:
        this_layout = "mlir" if record and all(isinstance(value, dict) for value in record.values()) else "beir"
        if this_layout == "beir" and not is_beir(record):
            raise BadInput(f"{where}: expected {expected}; found the fields {sorted(record)[:6]}")
        if layout not in (None, this_layout):
            raise BadInput(f"{where}: a {LAYOUT_NAMES[this_layout]} record in a file whose first record is "
                           f"{LAYOUT_NAMES[layout]}; a file holds one layout")  # fmt: skip
        layout = this_layout
        yield where, layout, record


def read_texts(path, kind, need_lang):
    """corpus/queries.jsonl -> ({id: (text, lang)}, {id: group key}, layout). BEIR: a record a line with `_id` (or
    `id`), `text`, optional `title`, `lang`, `group` (else the key is language_free_id()); MLIR: {id: {"text", "lang"}}.
    subtle: a title joins the text with a space, as BEIR and MTEB do, so scores compare with published BEIR numbers."""
    texts, keys, seen_at = {}, {}, {}
    expected = """a BEIR record with '_id' and 'text', or an MLIR-benchmark record {id: {"text": ..., "lang": ...}}"""
    for where, layout, record in read_records(path, lambda record: "_id" in record or "id" in record, expected):
        items = [(record.get("_id", record.get("id")), record)] if layout == "beir" else record.items()
        for text_id, fields in items:
            if not isinstance(text_id, (str, int)) or isinstance(text_id, bool) or text_id == "":
                raise BadInput(f"{where}: expected a non-empty string field '_id'")
            text_id = str(text_id)
            text, title, lang = fields.get("text"), fields.get("title"), fields.get("lang")
            if not isinstance(text, str):
                raise BadInput(f"{where}: {kind} '{text_id}' needs a string field 'text'")
            if isinstance(title, str) and title.strip():
                text = f"{title.strip()} {text}".strip()
            if kind == "query" and not text.strip():
                raise BadInput(f"{where}: query '{text_id}' has an empty text; give it one or remove the line")
            if isinstance(lang, str) and lang and data.language_tag(lang) is None:
                raise BadInput(f"{where}: {kind} '{text_id}' has lang {lang!r}, which is not a language tag ('de', "
                               "'pt-br')")  # fmt: skip
            if (lang := data.language_tag(lang)) is None and need_lang:
                raise BadInput(f"{where}: {kind} '{text_id}' has no 'lang' field; the language metrics (own-language "
                               "share, MRC, PEER, per-language alignment, --monolingual) need it; add it, or run "
                               "evaluate.py with --no-language-metrics")  # fmt: skip
            if text_id in texts:
                raise BadInput(f"{where}: {kind} id '{text_id}' appears twice (first at {seen_at[text_id]})")
            texts[text_id], seen_at[text_id] = (text, lang), where
            group = fields.get("group")
            keys[text_id] = str(group) if group is not None else language_free_id(text_id, lang)
    if not texts:
        raise BadInput(f"{path} holds no {kind} records")
    return texts, keys, LAYOUT_NAMES[layout]


def language_free_id(text_id, lang):
    """The id without the language it names, so parallel versions share it: a "/<lang>", "-<lang>" or "_<lang>" suffix
    ("q17/de" -> "q17"), else a "<lang>_", "<lang>-" or "<lang>/" prefix, as the MLIR benchmarks' ("de_q_005a")."""
    if lang and len(text_id) > len(lang) + 1:
        if text_id.endswith(lang) and text_id[-len(lang) - 1] in "/-_":
            return text_id[: -len(lang) - 1]
        if text_id.startswith(lang) and text_id[len(lang)] in "_-/":
            return text_id[len(lang) + 1 :]
    return text_id


def read_qrels(path):
    """Judgements -> ({query id: {doc id: integer grade}}, layout): a .tsv of BEIR's `query-id corpus-id score` (header
    optional) or TREC's `query-id 0 corpus-id score`, or a .jsonl of BEIR records or {query id: {doc id: grade}}."""
    qrels = {}

    def add(where, query_id, doc_id, grade):
        if isinstance(grade, bool) or not isinstance(grade, int) or not -(2**31) <= grade < 2**31:
            raise BadInput(
                f"{where}: the relevance grade of document '{doc_id}' for query '{query_id}' must be an integer, "
                f"found {reprlib.repr(grade)} (and below 2^31 in size, as trec_eval holds it)"
            )
        judged = qrels.setdefault(str(query_id), {})
        if judged.setdefault(str(doc_id), grade) != grade:
            raise BadInput(f"{where}: document '{doc_id}' is judged again for query '{query_id}', {grade} after "
                           f"{judged[str(doc_id)]}; give one grade")  # fmt: skip

    if path.suffix != ".jsonl":
        for number, (where, line) in enumerate(data.text_lines(path)):
            fields = [field.strip() for field in (line.split("\t") if "\t" in line else line.split())]
            if number == 0 and fields[-1].lower() in QRELS_HEADERS:
                continue  # the header line, e.g. query-id corpus-id score; any other first line is a judgement
            if len(fields) not in (3, 4):
                raise BadInput(f"{where}: expected 3 columns (query-id, corpus-id, score) "
                               f"or 4 (TREC: query-id, 0, corpus-id, score), found {len(fields)}")  # fmt: skip
            grade = int(fields[-1]) if re.fullmatch(r"-?[0-9]{1,30}", fields[-1]) else fields[-1]  # "1.0" stays text
            if number == 0 and isinstance(grade, str) and re.fullmatch(r"[A-Za-z_-]+", grade):
                raise BadInput(f"{where}: a first line whose last column is '{grade}': a header's last column is one "
                               f"of {', '.join(QRELS_HEADERS)}, a judgement's an integer grade")  # fmt: skip
            add(where, fields[0], fields[-2], grade)
        return qrels, "TREC/BEIR columns"
    layout, is_beir = "beir", lambda record: {"query-id", "corpus-id", "score"} <= set(record)
    expected = ("a BEIR record with 'query-id', 'corpus-id', 'score', or an MLIR-benchmark record "
                "{query id: {doc id: grade}}")  # fmt: skip
    for where, layout, record in read_records(path, is_beir, expected):
        if layout == "beir":
            add(where, record["query-id"], record["corpus-id"], record["score"])
        for query_id, judged in record.items() if layout == "mlir" else []:
            for doc_id, grade in judged.items():
                add(where, query_id, doc_id, grade)
    return qrels, LAYOUT_NAMES[layout]


def parallel(langs):
    """Whether texts in these languages form a parallel group: two or more, each in a language of its own."""
    return len(langs) >= 2 and None not in langs and len(set(langs)) == len(langs)


def group_by(keys, texts):
    """{id: key} -> {key: [ids]}, keeping the parallel groups."""
    groups = {}
    for text_id, key in keys.items():
        groups.setdefault(key, []).append(text_id)
    return {key: ids for key, ids in groups.items() if parallel([texts[text_id][1] for text_id in ids])}


def groups_from_judgements(query_groups, qrels, corpus):
    """Parallel documents where ids do not name them (the MLIR benchmarks' doc_<lang>_<n>): under the MLIR protocol a
    parallel query group's relevant documents, one in each of two or more languages, are one passage's versions (given
    once if groups share it); a document two such sets claim is in neither: which passage it translates is unclear."""
    candidates = {}  # sorted doc ids -> the first query group's key
    for key, ids in query_groups.items():
        relevant = sorted({doc for q in ids for doc, grade in qrels[q].items() if grade > 0 and doc in corpus})
        if parallel([corpus[doc][1] for doc in relevant]):
            candidates.setdefault(tuple(relevant), key)
    claims = Counter(doc for docs in candidates for doc in docs)
    return {key: list(docs) for docs, key in candidates.items() if all(claims[doc] == 1 for doc in docs)}


def finish_benchmark(name, corpus, queries, qrels, query_groups, doc_groups, layout):
    """Match judgements to queries and documents, counting misses as trec_eval does: a query without judgements is
    skipped, a judgement of an unknown query dropped, one of a document not in the corpus kept (relevant, and no model
    can retrieve it); then derive parallel documents from the judgements where ids give none."""
    if not corpus:
        raise BadInput(f"benchmark '{name}' has an empty corpus")
    stats = {"unknown_query_judgements": sum(len(judged) for q, judged in qrels.items() if q not in queries)}
    qrels = {query_id: judged for query_id, judged in qrels.items() if query_id in queries}
    stats["unknown_document_judgements"] = sum(doc not in corpus for judged in qrels.values() for doc in judged)
    stats["skipped_queries"] = sum(query_id not in qrels for query_id in queries)
    stats["queries_without_relevant"] = sum(not any(g > 0 for g in judged.values()) for judged in qrels.values())
    queries = {query_id: value for query_id, value in queries.items() if query_id in qrels}
    if not queries:
        raise BadInput(f"benchmark '{name}': no query has a relevance judgement (do the qrels use the queries' ids?)")
    kept_groups = {key: [q for q in ids if q in queries] for key, ids in query_groups.items()}
    kept_groups = {key: ids for key, ids in kept_groups.items() if len(ids) >= 2}  # a skipped query leaves its group
    layout = dict(layout)
    layout.setdefault("query_groups", "ids" if kept_groups else "none")
    if "document_groups" not in layout:
        layout["document_groups"] = "ids" if doc_groups else "none"
        if not doc_groups and kept_groups:
            doc_groups = groups_from_judgements(kept_groups, qrels, corpus)
            if doc_groups:
                layout["document_groups"] = "judgements of parallel queries"
    return Benchmark(name, corpus, queries, qrels, kept_groups, doc_groups, stats, layout)


def parallel_groups(spec, max_groups=None, seed=0):
    """--parallel (any source distill.py reads) -> [{"en": text, lang: text}], at most max_groups (seeded sample)."""
    groups = [{"en": p.english, p.lang: p.text} for p in data.read_parallel_source(spec) if p.lang != "en"]
    if not groups:
        raise BadInput(f"--parallel '{spec}' holds no (English, other language) pairs")
    return random.Random(seed).sample(groups, max_groups) if max_groups and len(groups) > max_groups else groups


# ---------------------------------------------------------------------------
# NeuCLIR'22/'23 as the MIMO paper's authors evaluate them ("true MLIR"): English topics against one corpus of Russian
# and Chinese news. The tracks' Persian is left out: it is not a training language.

# track -> mteb's hard-negative version of it (corpora, native-language queries, qrels), at the revision mteb 2.26 pins
NEUCLIR_TRACKS = {
    "neuclir22": ("mteb/NeuCLIR2022RetrievalHardNegatives", "cc5a0360c8bdf1e4afa19d2ea8ec111c0ca96335"),
    "neuclir23": ("mteb/NeuCLIR2023RetrievalHardNegatives", "efb44bb789b9f82223aa819e18dba3748fd09e33"),
}
NEUCLIR_TOPICS = "neuclir/bench"  # English topics and TREC's judgements; the authors name no revision of it
NEUCLIR_LANGS = {"rus": "ru", "zho": "zh"}  # mteb's config prefix and neuclir/bench's split -> the corpus's lang


def load_neuclir_part(dataset_id, revision, root, config, split, columns):
    """One split of one config, from the hub at `revision` or from root/<dataset_id>, both by datasets.load_dataset so
    they read alike -> (Dataset, where it came from)."""
    location = str(Path(root) / dataset_id) if root else dataset_id
    where = location if root else f"{dataset_id}@{revision or 'main'}"
    try:
        part = datasets.load_dataset(location, config, split=split, **({} if root else {"revision": revision}))
    except Exception as error:  # offline, not in the cache, no such folder or config: one message
        needed = (f"a copy of '{dataset_id}' in its hub layout under root ({location})" if root
                  else f"a network or a local copy of it passed as root (root/{dataset_id})")  # fmt: skip
        raise BadInput(f"NeuCLIR: dataset '{dataset_id}' config '{config}' split '{split}' could not be loaded, "
                       f"which needs {needed}: {first_line(error)}") from None  # fmt: skip
    if missing := [column for column in columns if column not in part.column_names]:
        raise BadInput(f"NeuCLIR: {where} config '{config}' split '{split}' has no column {', '.join(missing)}; "
                       f"expected {', '.join(columns)}")  # fmt: skip
    return part, where


def load_neuclir(track, root=None):
    """A track -> Benchmark, pooled as the authors' evaluate_neuclir.py: one corpus of mteb's Russian and Chinese
    hard-negative corpora; the English topics of the ids mteb judges in either language; TREC's judgements of pooled
    documents (neuclir/bench), relevance > 0 as grade 1 (their evaluator is binary). root: a local copy, for the hub."""
    if track not in NEUCLIR_TRACKS:
        raise BadInput(f"NeuCLIR track '{track}' is unknown; expected one of {', '.join(NEUCLIR_TRACKS)}")
    mteb_id, revision = NEUCLIR_TRACKS[track]
    corpus, track_ids = {}, set()
    for iso, lang in NEUCLIR_LANGS.items():
        docs, mteb_where = load_neuclir_part(mteb_id, revision, root, f"{iso}-corpus", "test", ["_id", "title", "text"])
        for doc_id, title, text in zip(docs["_id"], docs["title"], docs["text"]):
            # subtle: a newline, not BEIR's space, joins the title, as the authors' evaluator does; "<iso>::" as the
            # two languages' ids are numbered apart, so they could collide
            title, text = (title or "").strip(), (text or "").strip()
            corpus[f"{iso}::{doc_id}"] = (f"{title}\n{text}".strip() if title else text, lang)
        native, _ = load_neuclir_part(mteb_id, revision, root, f"{iso}-queries", "test", ["_id", "text"])
        judged, _ = load_neuclir_part(mteb_id, revision, root, f"{iso}-qrels", "test", ["query-id", "corpus-id"])
        # mteb drops a query without judgements when loading; the authors take the track's ids after that
        judged_ids = {str(query_id) for query_id in judged["query-id"]}
        track_ids.update(str(query_id) for query_id in native["_id"] if str(query_id) in judged_ids)

    topics, topics_where = load_neuclir_part(NEUCLIR_TOPICS, None, root, "queries", "eng", ["id", "query"])
    # subtle: the topics are a headerless TSV, so datasets reads numeric ids as integers
    english = {str(query_id): text for query_id, text in zip(topics["id"], topics["query"])}
    queries = {query_id: (english[query_id], "en") for query_id in sorted(track_ids)
               if isinstance(english.get(query_id), str) and english[query_id].strip()}  # fmt: skip
    stats = {"track_queries": len(track_ids), "dropped_queries_without_english": len(track_ids) - len(queries)}

    qrels, skipped = {}, {"judgements_of_other_queries": 0, "judgements_not_relevant": 0, "relevant_outside_corpus": 0}
    for iso in NEUCLIR_LANGS:
        rows, _ = load_neuclir_part(NEUCLIR_TOPICS, None, root, "qrels", iso, ["id", "docid", "relevance"])
        for query_id, doc_id, relevance in zip(rows["id"], rows["docid"], rows["relevance"]):
            query_id, doc_id = str(query_id), f"{iso}::{doc_id}"
            if query_id not in queries:
                skipped["judgements_of_other_queries"] += 1
            elif int(relevance) <= 0:
                skipped["judgements_not_relevant"] += 1
            elif doc_id not in corpus:  # relevant, but not among the hard negatives mteb kept
                skipped["relevant_outside_corpus"] += 1
            else:
                qrels.setdefault(query_id, {})[doc_id] = 1
    stats.update(dropped_queries_without_relevant=sum(query_id not in qrels for query_id in queries), **skipped)
    queries = {query_id: value for query_id, value in queries.items() if query_id in qrels}

    configs = ", ".join(NEUCLIR_LANGS)
    layout = {
        "source": f"NeuCLIR {track} as true MLIR: English queries, one corpus of {configs} (fas left out)",
        "corpus": f"{mteb_where} configs {{{configs}}}-corpus split test; ids '<iso>::<_id>', title + newline + text",
        "queries": f"{topics_where} config queries split eng, for the ids of {mteb_where} {{{configs}}}-queries "
        f"judged in {{{configs}}}-qrels",
        "qrels": f"{topics_where} config qrels splits {configs}, of pooled documents; relevance > 0 as grade 1",
    }
    bench = finish_benchmark(track, corpus, queries, qrels, {}, {}, layout)
    return bench._replace(stats={**stats, **bench.stats})


# MIRACL as the paper scores it: mteb's hard-negative task, on the training languages it has, each language alone
MIRACL_TASK = "MIRACLRetrievalHardNegatives.v2"
MIRACL_LANGUAGES = ("ar", "de", "en", "es", "fr", "hi", "id", "ja", "ru", "zh")


def load_mteb_task(task):
    """An mteb retrieval task object, or "miracl" -> Benchmark of its data as mteb loads it (ids "<subset>::<id>", a
    title joined by a space); evaluate.py scores it through mteb, each subset alone, as mteb's leaderboard does."""
    try:
        import mteb
    except ImportError:
        raise BadInput("--benchmark miracl is scored by mteb, which is not installed here: pip install mteb") from None
    if task == "miracl":
        task = mteb.get_task(MIRACL_TASK, hf_subsets=list(MIRACL_LANGUAGES))
    meta = task.metadata
    try:
        task.load_data()
    except Exception as error:  # offline and not cached, no access: one message
        raise BadInput(f"mteb task {meta.name} (dataset {meta.dataset['path']}) could not be loaded, which needs a "
                       f"network or a copy in the Hugging Face cache: {first_line(error)}") from None  # fmt: skip
    split, corpus, queries, qrels = meta.eval_splits[0], {}, {}, {}
    for subset in task.hf_subsets:
        part, lang = task.dataset[subset][split], data.language_tag(subset)
        for row in part["corpus"]:
            corpus[f"{subset}::{row['id']}"] = (f"{row.get('title') or ''} {row['text']}".strip(), lang)
        queries.update({f"{subset}::{row['id']}": (row["text"], lang) for row in part["queries"]})
        for query_id, judged in part["relevant_docs"].items():
            qrels[f"{subset}::{query_id}"] = {f"{subset}::{doc}": int(grade) for doc, grade in judged.items()}
    layout = {"source": f"mteb task {meta.name}, scored by mteb {mteb.__version__}, each language alone",
              "dataset": f"{meta.dataset['path']}@{meta.dataset['revision']}", "split": split,
              "subsets": list(task.hf_subsets), "mode": "monolingual"}  # fmt: skip
    return finish_benchmark(meta.name, corpus, queries, qrels, {}, {}, layout)._replace(mteb_task=task)
