"""Every reader of a user's file, fuzzed with hypothesis: data.load_rows, data.read_parallel_source and
data.load_parallel (training data), benchmarks.load_benchmark (a rows file, a BEIR or MLIR-benchmark folder).
Whatever the bytes, a reader either returns what the file says or refuses it with one BadInput sentence that names
the file (and the line it blames, which must exist). Never another exception, and never garbage accepted: every text
and id a str that encodes to UTF-8 (no lone surrogate), texts not blank, grades integers a C long holds (pytrec_eval
takes them as one), and no language under two spellings ("en" and "EN", "en-US" and "en_us") nor a column pair of a
language silently dropped. Examples are few (FUZZ) and derandomized, so the file runs in well under a minute."""

import gzip
import json
import re
import tempfile
from pathlib import Path

import datasets
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import examples
from hypothesis import given
from hypothesis import strategies as st

import benchmarks
import data
from checkpoint import BadInput

FUZZ = examples(40)  # tmp_path is shared by a test's examples: each makes a folder of its own (fresh)

# Language tags as people write them: one language under several spellings, with a region or a script, or blank.
TAGS = ["en", "EN", "En", "en ", " en", "en-US", "en_us", "en_US", "de", "DE", "de-DE", "zh", "zh-Hans", "zh_hans", "",
        " "]  # fmt: skip
# JSON that json.loads accepts but no text, id or grade should be: NaN and infinities (1e400 reads as inf), integers
# past a C long or past Python's 4300-digit str->int limit, lone surrogates, NUL, blanks as Python or Arrow sees them,
# nesting deeper than Python's recursion limit, and values of the wrong kind.
ODD_JSON = ["NaN", "Infinity", "-Infinity", "1e400", str(10**30), str(2**63), str(-(2**63) - 1), "DIGITS4400", "1.0",
            "0", "-1", "true", "null", "[]", "{}", '["a"]', '""', '" "', '"\\u0000"', '"\\ud800"', '"\\udc00x"',
            '"a\\ud800b"', '"\\u001c"', '"\\u0085"', '"\\u3000"', '"\\u200b"', '"\\ufeff"', "NESTED1100",
            '{"a": {"b": [1, {"c": NaN}]}}']  # fmt: skip
# Characters of texts: letters, non-ASCII, and what line splitters and whitespace tests disagree on.
ALPHABET = st.sampled_from(list("ab zÄé中") + ["\r", "\x0b", "\x0c", "\x1c", "\x85", "\u2028", "\u3000", "\u200b",
                                               "\ufeff", "\x00", '"', "\\"])  # fmt: skip
TEXT = st.text(ALPHABET, min_size=1, max_size=8)
GRADE_TOKENS = ["0", "1", "2", "-1", "1.0", "+1", "NaN", "１", "²", str(10**30), str(2**63), "DIGITS4400"]
ENCODINGS = ["utf-8", "utf-8-sig", "utf-16", "utf-16-le", "latin-1", "cp1252"]
C_LONG = range(-(2**63), 2**63)


@pytest.fixture(autouse=True, scope="module")
def datasets_cache(tmp_path_factory):
    """datasets converts every file it reads into its cache: keep the hundreds of conversions out of the user's."""
    datasets.disable_progress_bars()  # one bar a file read would bury the failures
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path_factory.mktemp("datasets-cache"))
        yield
    datasets.enable_progress_bars()


def fresh(tmp_path):
    """A new folder for one hypothesis example (tmp_path is shared by all of a test's examples)."""
    return Path(tempfile.mkdtemp(dir=tmp_path))


def write(path, content):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(gzip.compress(content) if path.name.endswith(".gz") else content)
    return path


def json_object(items):
    """[(key, JSON text of the value)] -> one JSON object's text; a key may repeat (json.dumps cannot write that)."""
    return "{" + ", ".join(f"{json.dumps(key)}: {value}" for key, value in items) + "}"


def expand(text):
    """A file's text with the long odd values written out (examples name them, so failures print short)."""
    return text.replace("DIGITS4400", "1" * 4400).replace("NESTED1100", "[" * 1100 + "]" * 1100)


# ---------------------------------------------------------------------------
# The properties


def split_lines(content):
    """Lines as text_lines (and datasets' text loader) number them: at b"\\n", b"\\r\\n" or a lone b"\\r"."""
    return re.split(rb"\r\n|\n|\r", content)


def physical_lines(path):
    """The file's lines as text_lines numbers them, decoded leniently for a check."""
    content = path.read_bytes()
    content = gzip.decompress(content) if path.name.endswith(".gz") else content
    return [raw.decode("utf-8", "replace") for raw in split_lines(content)]


def read_or_refuse(read, *files):
    """read()'s result, or None when it refuses with one BadInput sentence naming one of files (a path, or its name);
    a line it names (FILE:N) must be a line of that file with something on it (a control character a reader may call
    blank or not, so only spaces and tabs count as nothing). Any other exception fails the test."""
    try:
        return read()
    except BadInput as error:
        message = str(error)
        assert "\n" not in message, f"not one sentence: {message!r}"
        assert any(str(f) in message or Path(f).name in message for f in files), f"names no file: {message!r}"
        for name, number in re.findall(r"(\S+?\.\w+(?:\.gz)?):(\d+)\b", message):
            lines = physical_lines(Path(name)) if Path(name).is_file() else None
            if lines is not None:
                assert 1 <= int(number) <= len(lines) and lines[int(number) - 1].strip(" \t"), (
                    f"names line {number}, which is blank or not in the file: {message!r}"
                )
        return None


def utf8(text):
    try:
        text.encode("utf-8")
        return True
    except UnicodeEncodeError:
        return False


def assert_text(text, what, blank_ok=False):
    assert isinstance(text, str), f"{what} is {type(text).__name__}: {text!r}"
    assert utf8(text), f"{what} is not UTF-8 text (a lone surrogate): {text!r}"
    assert blank_ok or text.strip(), f"{what} is blank as Python sees it: {text!r}"


def spelling(tag):
    """A language tag's spelling-free form: 'EN', ' en', 'en_us', 'en-US' -> 'en', 'en', 'en-us', 'en-us'."""
    return tag.strip().lower().replace("_", "-")


def assert_one_spelling_each(tags, where):
    """Languages as a reader returns them: plain tags, and one language never under two spellings. Case, '_' for '-'
    and padding make a spelling; a region or script stays a language of its own ('en' and 'en-us' are two)."""
    tags = {tag for tag in tags if tag is not None}
    for tag in tags:
        assert isinstance(tag, str) and tag.strip() and tag == tag.strip(), f"{where}: language tag {tag!r}"
    spelled = {}
    for tag in sorted(tags):
        spelled.setdefault(spelling(tag), []).append(tag)
    assert all(len(same) == 1 for same in spelled.values()), f"{where}: one language, several spellings: {spelled}"


def assert_sane_rows(rows, min_languages=2):
    """load_rows' result, materialized: {'id', 'query', 'passage'} a row."""
    ids = [row["id"] for row in rows]
    assert len(set(ids)) == len(ids), f"ids used twice: {ids}"
    for row in rows:
        assert_text(row["id"], "an id")
        assert sorted(row["query"]) == sorted(row["passage"]) and len(row["query"]) >= min_languages, row
        for side in ("query", "passage"):
            for lang, text in row[side].items():
                assert_text(text, f"row {row['id']!r} {side}_{lang}")
    assert_one_spelling_each({lang for row in rows for lang in row["query"]}, "rows")


def assert_sane_benchmark(bench):
    for part, name in ((bench.corpus, "document"), (bench.queries, "query")):
        for text_id, (text, lang) in part.items():
            assert_text(text_id, f"a {name} id")
            assert_text(text, f"{name} {text_id!r}", blank_ok=name == "document")  # BEIR corpora hold empty texts
            assert lang is None or isinstance(lang, str), f"{name} {text_id!r} has lang {lang!r}"
    assert_one_spelling_each({lang for _, lang in [*bench.corpus.values(), *bench.queries.values()]}, "benchmark")
    for query_id, judged in bench.qrels.items():
        assert_text(query_id, "a judged query id")
        for doc_id, grade in judged.items():
            assert_text(doc_id, "a judged document id")
            assert type(grade) is int and grade in C_LONG, f"grade of ({query_id!r}, {doc_id!r}) is {grade!r}"
    for groups in (bench.query_groups, bench.doc_groups):
        for ids in groups.values():
            assert len(ids) >= 2 and all(text_id in bench.queries or text_id in bench.corpus for text_id in ids)


def assert_sane_pairs(pairs, where, blank_ok=False):
    """blank_ok: read_parallel_source yields a file's pairs unfiltered; load_parallel drops a blank side."""
    for pair in pairs:
        assert_text(pair.english, f"{where}: an English side", blank_ok)
        assert_text(pair.text, f"{where}: a {pair.lang!r} side", blank_ok)
    assert_one_spelling_each({pair.lang for pair in pairs}, where)


# ---------------------------------------------------------------------------
# Strategies: valid files with a few odd values, keys, lines or bytes mixed in


def json_value():
    """The JSON text of a value: two times in three a TEXT string, else an odd value."""
    return st.one_of(TEXT.map(json.dumps), TEXT.map(json.dumps), st.sampled_from(ODD_JSON))


@st.composite
def aligned_rows(draw):
    """-> (items of each row, JSON-lines text): rows with query_<tag>/passage_<tag> for 2-3 tags, a few odd."""
    tags = draw(st.lists(st.sampled_from(TAGS), min_size=2, max_size=3, unique=True))
    int_ids = draw(st.booleans())
    rows = []
    for i in range(draw(st.integers(1, 3))):
        items = [("id", str(i) if int_ids else json.dumps(f"r{i}"))] if draw(st.booleans()) or i else []
        for tag in tags:
            items += [(f"query_{tag}", json.dumps(draw(TEXT))), (f"passage_{tag}", json.dumps(draw(TEXT)))]
        rows.append(items)
    for _ in range(draw(st.integers(0, 2))):  # odd values, repeated or dropped keys
        items = draw(st.sampled_from(rows))
        k = draw(st.integers(0, len(items) - 1))
        change = draw(st.sampled_from(["value", "repeat", "drop"]))
        if change == "value":
            items[k] = (items[k][0], draw(st.sampled_from(ODD_JSON)))
        elif change == "repeat":
            items.append((items[k][0], draw(json_value())))
        else:
            del items[k]
    lines = [json_object(items) for items in rows]
    if draw(st.booleans()):  # a line that is not an object, or a blank one
        lines.insert(draw(st.integers(0, len(lines))), draw(st.sampled_from(ODD_JSON + ["", "  ", "{"])))
    return rows, "".join(line + "\n" for line in lines)


@st.composite
def mutated(draw, content):
    """content with a few bytes inserted, deleted or replaced at a random place."""
    at = draw(st.integers(0, len(content)))
    cut = draw(st.integers(0, 3))
    return content[:at] + draw(st.binary(max_size=4)) + content[at + cut :]


def good_rows(tags=("en", "de")):
    """Three valid aligned rows with non-ASCII texts, as JSON lines."""
    return "".join(
        json.dumps({"id": f"r{i}", **{f"{side}_{tag}": f"{side} {i} Straße é {tag}" for tag in tags
                                       for side in ("query", "passage")}}, ensure_ascii=False) + "\n"
        for i in range(3)
    )  # fmt: skip


# ---------------------------------------------------------------------------
# Training data: aligned rows (stage 2)


@pytest.mark.parametrize("suffix", [".jsonl", ".json"])
@FUZZ
@given(example=aligned_rows())
def test_aligned_rows_with_odd_json_are_read_or_refused(tmp_path, suffix, example):
    """load_rows and load_benchmark (the rows' MLIR benchmark) on rows with odd values, keys and lines. A tag whose
    query_ and passage_ columns both reach the file must come back as a language (normalised) or be refused."""
    items, text = example
    path = write(fresh(tmp_path) / f"rows{suffix}", expand(text).encode())
    rows = read_or_refuse(lambda: list(data.load_rows(str(path))), path)
    if rows is None:
        return
    assert_sane_rows(rows)
    keys = {key for row in items for key, _ in row}
    read = {spelling(lang) for row in rows for lang in row["query"]}
    for tag in (tag for tag in TAGS if {f"query_{tag}", f"passage_{tag}"} <= keys):
        assert spelling(tag) in read, f"columns query_{tag}/passage_{tag} silently dropped; read {sorted(read)}"
    bench = read_or_refuse(lambda: benchmarks.load_benchmark(str(path)), path)
    if bench is not None:
        assert_sane_benchmark(bench)


@FUZZ
@given(encoding=st.sampled_from(ENCODINGS))
def test_aligned_rows_in_other_encodings_are_read_as_written_or_refused(tmp_path, encoding):
    """Valid rows with non-ASCII texts, in UTF-16 (with or without a byte-order mark), UTF-8 with one, Latin-1 or
    cp1252: read exactly as written (only UTF-8, its BOM allowed) or refused; never mis-decoded text."""
    text = good_rows()
    path = write(fresh(tmp_path) / "rows.jsonl", text.encode(encoding))
    rows = read_or_refuse(lambda: list(data.load_rows(str(path))), path)
    assert rows is not None or encoding not in ("utf-8", "utf-8-sig"), "UTF-8 rows (a BOM allowed) were refused"
    if rows is not None:
        assert_sane_rows(rows)
        written = [json.loads(line) for line in text.splitlines()]
        assert [row["query"]["de"] for row in rows] == [w["query_de"] for w in written], encoding


@pytest.mark.parametrize("suffix", [".jsonl", ".json", ".tsv", ".tsv.gz", ".parquet", ".csv"])
@FUZZ
@given(content=st.one_of(st.binary(max_size=64), mutated(good_rows().encode())))
def test_rows_file_of_random_bytes_is_read_or_refused(tmp_path, suffix, content):
    path = write(fresh(tmp_path) / f"rows{suffix}", content)
    rows = read_or_refuse(lambda: list(data.load_rows(str(path))), path)
    if rows is not None:
        assert_sane_rows(rows)


# Arrow columns of two values each, of the kinds a parquet file of rows may hold by mistake.
PARQUET_COLUMNS = {
    "text": lambda: pa.array(["a b", "Straße"]),
    "blank": lambda: pa.array([" ", "\u3000"]),
    "control": lambda: pa.array(["\x1c", "\x85"]),
    "surrogate bytes": lambda: pa.array([b"\xed\xa0\x80", b"ok"]).view(pa.string()),  # "\ud800" in UTF-8's form
    "not utf-8": lambda: pa.array([b"\xff\xfe", b"ok"]).view(pa.string()),  # a string column with bad bytes
    "null": lambda: pa.array([None, "x"]),
    "int": lambda: pa.array([1, 2]),
    "uint64": lambda: pa.array([2**64 - 1, 0], pa.uint64()),
    "float": lambda: pa.array([float("nan"), float("inf")]),
    "bool": lambda: pa.array([True, False]),
    "binary": lambda: pa.array([b"\xff", b"ok"]),
    "struct": lambda: pa.array([{"a": [1]}, {"a": [2]}]),
    "large": lambda: pa.array(["a", "b"], pa.large_string()),
    "dictionary": lambda: pa.array(["a", "b"]).dictionary_encode(),
}


@st.composite
def parquet_table(draw):
    """A table of two rows: an id column (maybe), query_/passage_ columns for 2-3 tags (maybe repeated), of any kind."""
    kinds = st.sampled_from(sorted(PARQUET_COLUMNS))
    text_kinds = st.one_of(st.just("text"), st.just("text"), kinds)
    names, columns = [], []
    if draw(st.booleans()):  # stage 1's layout: english, non_english
        names = ["english", "non_english"]
        return pa.Table.from_arrays([PARQUET_COLUMNS[draw(text_kinds)]() for _ in names], names=names)
    if draw(st.booleans()):
        names.append("id")
        columns.append(PARQUET_COLUMNS[draw(st.sampled_from(["text", "int", "uint64", "float", "bool", "null"]))]())
    for tag in draw(st.lists(st.sampled_from(["en", "de"] + TAGS), min_size=2, max_size=3)):
        for side in ("query", "passage"):
            names.append(f"{side}_{tag}")
            columns.append(PARQUET_COLUMNS[draw(text_kinds)]())
    return pa.Table.from_arrays(columns, names=names)


@FUZZ
@given(table=parquet_table())
def test_parquet_rows_of_any_column_kind_are_read_or_refused(tmp_path, table):
    """load_rows, and read_parallel_source (aligned rows as stage-1 pairs), on parquet files of any column kinds."""
    path = fresh(tmp_path) / "rows.parquet"
    pq.write_table(table, path)
    rows = read_or_refuse(lambda: list(data.load_rows(str(path))), path)
    if rows is not None:
        assert_sane_rows(rows)
    pairs = read_or_refuse(lambda: list(data.read_parallel_source(f"de={path}")), path)
    if pairs is not None:
        assert_sane_pairs(pairs, "parquet rows as pairs", blank_ok=True)


@FUZZ
@given(kinds=st.tuples(*[st.sampled_from(sorted(PARQUET_COLUMNS))] * 3))
def test_benchmark_corpus_parquet_of_any_column_kind_is_read_or_refused(tmp_path, kinds):
    """A benchmark folder whose corpus.parquet has _id, text and lang columns of any kinds."""
    folder = fresh(tmp_path)
    table = pa.Table.from_arrays([PARQUET_COLUMNS[kind]() for kind in kinds], names=["_id", "text", "lang"])
    pq.write_table(table, folder / "corpus.parquet")
    files = {
        "queries.jsonl": "".join(json.dumps({"_id": f"q{k}", "text": "a query", "lang": "en"}) + "\n" for k in (0, 1)),
        "qrels/test.tsv": "q0\ta b\t1\nq1\tStraße\t1\n",
    }
    for name, text in files.items():
        write(folder / name, text.encode())
    bench = read_or_refuse(lambda: benchmarks.load_benchmark(str(folder)), folder, "corpus.parquet", *files)
    if bench is not None:
        assert_sane_benchmark(bench)


# ---------------------------------------------------------------------------
# Training data: parallel pairs (stage 1)


def tsv_model(path):
    """What a .tsv of pairs holds, read as text_lines reads it (lines split as split_lines, UTF-8, a BOM allowed
    first, blank lines skipped, the first line 'english<TAB>non_english' a header): [(english, text)], or None when
    a line is not two tab-separated fields or the bytes are not UTF-8 (then refusing is the right answer)."""
    content = path.read_bytes()
    content = gzip.decompress(content) if path.name.endswith(".gz") else content
    pairs = []
    for number, raw in enumerate(split_lines(content), 1):
        try:
            line = raw.decode("utf-8-sig" if number == 1 else "utf-8")
        except UnicodeDecodeError:
            return None
        if not line.strip() or (number == 1 and line == "english\tnon_english"):
            continue
        if len(fields := line.split("\t")) != 2:
            return None
        pairs.append(tuple(fields))
    return pairs


@st.composite
def tsv_pairs(draw):
    """-> (spec prefix or file name, bytes): pairs of TEXT (its line breaks and spaces included), maybe a header,
    blank lines, a tab too many or too few, in one of ENCODINGS; tagged LANG=path or named for en-xx."""
    lines = [f"{draw(TEXT)}\t{draw(TEXT)}" for _ in range(draw(st.integers(1, 3)))]
    if draw(st.booleans()):
        lines.insert(draw(st.integers(0, len(lines))), draw(st.sampled_from(["", "  ", "one", "a\tb\tc", "\t"])))
    if draw(st.booleans()):
        lines.insert(0, "english\tnon_english")
    ending = draw(st.sampled_from(["\n", "\r\n"]))
    content = "".join(line + ending for line in lines).encode(draw(st.sampled_from(ENCODINGS)), "replace")
    name = draw(st.sampled_from(["de=", "DE=", "en=", "EN=", "de =", "zh-Hans=", "en-de.tsv", "en-DE.tsv", "en_de.tsv",
                                 "en-zh-Hans.tsv", "pairs.tsv"]))  # fmt: skip
    return name, content


def parallel_spec(folder, name, suffix=".tsv"):
    """('de=', folder) -> ('de=folder/pairs.tsv', path); ('en-de.tsv', folder) -> (path, path)."""
    path = folder / (name if name.endswith(suffix) else "pairs" + suffix)
    return (str(path) if name.endswith(suffix) else name + str(path)), path


@FUZZ
@given(example=tsv_pairs())
def test_tsv_pairs_are_read_line_by_line_or_refused(tmp_path, example):
    """read_parallel_source yields exactly the pairs of the file's lines as text_lines numbers them, or refuses
    (naming a line that breaks the rule); load_parallel then keeps sane texts and one spelling a language."""
    name, content = example
    spec, path = parallel_spec(fresh(tmp_path), name)
    write(path, content)
    pairs = read_or_refuse(lambda: list(data.read_parallel_source(spec)), path)
    if pairs is not None:
        expected = tsv_model(path)
        assert expected is not None, f"accepted a file that text_lines cannot split into pairs: {content!r}"
        assert [(p.english, p.text) for p in pairs] == expected, f"read differently from its lines: {content!r}"
        assert_sane_pairs(pairs, "read_parallel_source", blank_ok=True)
    kept = read_or_refuse(lambda: data.load_parallel([spec], min_chars=1, max_ratio=1e9), path)
    if kept is not None:
        assert_sane_pairs(kept[0], "load_parallel")


@pytest.mark.parametrize("suffix", [".tsv", ".tsv.gz", ".jsonl"])
@FUZZ
@given(content=st.one_of(st.binary(max_size=64), mutated(b"a cat\teine Katze\nthe end\tdas Ende\n")))
def test_parallel_file_of_random_bytes_is_read_or_refused(tmp_path, suffix, content):
    spec, path = parallel_spec(fresh(tmp_path), "de=", suffix)
    write(path, content)
    pairs = read_or_refuse(lambda: list(data.read_parallel_source(spec)), path)
    if pairs is not None:
        assert_sane_pairs(pairs, "read_parallel_source", blank_ok=True)
        if suffix != ".jsonl":
            assert [(p.english, p.text) for p in pairs] == tsv_model(path), f"read differently: {content!r}"


@st.composite
def jsonl_pairs(draw):
    """JSON lines of {"english", "non_english"} records with odd values, repeated keys or non-object lines."""
    lines = []
    for _ in range(draw(st.integers(1, 3))):
        items = [("english", draw(json_value())), ("non_english", draw(json_value()))]
        if draw(st.booleans()):
            items.append((draw(st.sampled_from(["english", "non_english", "x"])), draw(json_value())))
        lines.append(json_object(items))
    if draw(st.booleans()):
        lines.insert(draw(st.integers(0, len(lines))), draw(st.sampled_from(ODD_JSON + [""])))
    return "".join(line + "\n" for line in lines)


@FUZZ
@given(content=jsonl_pairs())
def test_jsonl_pairs_with_odd_json_are_read_or_refused(tmp_path, content):
    spec, path = parallel_spec(fresh(tmp_path), "de=", ".jsonl")
    write(path, expand(content).encode())
    pairs = read_or_refuse(lambda: list(data.read_parallel_source(spec)), path)
    if pairs is not None:
        assert_sane_pairs(pairs, "read_parallel_source", blank_ok=True)


@FUZZ
@given(tags=st.lists(st.sampled_from(TAGS), min_size=1, max_size=3))
def test_parallel_sources_tagged_in_odd_spellings_count_each_language_once(tmp_path, tags):
    """Sources tagged 'de=', 'DE=', 'de =', 'EN=' ... (identity pairs add 'en'): one language is one tag, or refused."""
    folder, specs, paths = fresh(tmp_path), [], []
    for k, tag in enumerate(tags):
        path = write(folder / f"pairs{k}.tsv", f"a cat number {k}\tSatz Nummer {k}\n".encode())
        specs.append(f"{tag}={path}")
        paths.append(path)
    kept = read_or_refuse(lambda: data.load_parallel(specs, min_chars=1), *paths)
    if kept is not None:
        assert_sane_pairs(kept[0], f"load_parallel({specs})")


# ---------------------------------------------------------------------------
# Benchmarks: BEIR and MLIR-benchmark folders


@st.composite
def benchmark_folder(draw):
    """{file name: text} of a folder with two documents and two queries in two languages (tags from TAGS), their
    judgements as qrels/test.tsv (3 or 4 columns) or qrels/test.jsonl (BEIR or MLIR records), a few values odd."""
    langs = draw(st.lists(st.sampled_from(TAGS), min_size=2, max_size=2))
    docs = [[("_id", json.dumps(f"d{k}")), ("text", json.dumps(draw(TEXT))), ("lang", json.dumps(lang))]
            for k, lang in enumerate(langs)]  # fmt: skip
    queries = [[("_id", json.dumps(f"q{k}")), ("text", json.dumps(draw(TEXT))), ("lang", json.dumps(lang))]
               for k, lang in enumerate(langs)]  # fmt: skip
    if draw(st.booleans()):
        docs[0].append(("title", draw(json_value())))
    grades = [draw(st.sampled_from(["1"] * 3 + GRADE_TOKENS)) for _ in langs]
    for _ in range(draw(st.integers(1, 3))):  # an odd id, text or lang, or the key repeated with an odd value
        items = draw(st.sampled_from(docs + queries))
        k = draw(st.integers(0, len(items) - 1))
        if draw(st.booleans()):
            items[k] = (items[k][0], draw(st.sampled_from(ODD_JSON)))
        else:
            items.append((items[k][0], draw(st.sampled_from(ODD_JSON))))
    files = {}
    if draw(st.booleans()):  # MLIR benchmarks' corpus: {doc id: {"text", "lang"}}, the id taken from _id's JSON
        files["corpus.jsonl"] = "".join(f"{{{items[0][1]}: {json_object(items[1:])}}}\n" for items in docs)
    else:
        files["corpus.jsonl"] = "".join(json_object(items) + "\n" for items in docs)
    files["queries.jsonl"] = "".join(json_object(items) + "\n" for items in queries)
    layout = draw(st.sampled_from(["tsv", "trec", "beir", "mlir"]))
    judged = [(f"q{k}", f"d{k}", grade) for k, grade in enumerate(grades)]
    if layout in ("tsv", "trec"):
        header = "query-id\tcorpus-id\tscore\n" if draw(st.booleans()) else ""
        files["qrels/test.tsv"] = header + "".join(
            f"{q}\t{'0' + chr(9) if layout == 'trec' else ''}{d}\t{g}\n" for q, d, g in judged
        )
    elif layout == "beir":
        files["qrels/test.jsonl"] = "".join(
            json_object([("query-id", json.dumps(q)), ("corpus-id", json.dumps(d)), ("score", g)]) + "\n"
            for q, d, g in judged
        )
    else:
        files["qrels/test.jsonl"] = "".join(f"{{{json.dumps(q)}: {{{json.dumps(d)}: {g}}}}}\n" for q, d, g in judged)
    return files


def check_benchmark_folder(tmp_path, files):
    """{name: text or bytes} written to a new folder, then read or refused as a benchmark."""
    folder = fresh(tmp_path)
    for name, content in files.items():
        write(folder / name, content if isinstance(content, bytes) else expand(content).encode())
    bench = read_or_refuse(lambda: benchmarks.load_benchmark(str(folder)), folder, *files)
    if bench is not None:
        assert_sane_benchmark(bench)


@FUZZ
@given(files=benchmark_folder())
def test_benchmark_folder_with_odd_values_is_read_or_refused(tmp_path, files):
    check_benchmark_folder(tmp_path, files)


@FUZZ
@given(files=benchmark_folder(), which=st.integers(0, 2), draw=st.data())
def test_benchmark_folder_with_a_file_of_random_bytes_is_read_or_refused(tmp_path, files, which, draw):
    """One of corpus, queries and qrels replaced by random bytes, or a few bytes of it changed."""
    name = sorted(files)[which]
    files[name] = draw.draw(st.one_of(st.binary(max_size=48), mutated(expand(files[name]).encode())))
    check_benchmark_folder(tmp_path, files)


@st.composite
def qrels_lines(draw):
    """-> [(query id, doc id, grade token)], TSV text: lines of q0/q1, d0/d1/d9, a grade token, by tabs or spaces."""
    line = st.tuples(st.sampled_from(["q0", "q1"]), st.sampled_from(["d0", "d1", "d9"]),
                     st.sampled_from(["0", "1", "2"] + GRADE_TOKENS))  # fmt: skip
    judged = draw(st.lists(line, min_size=2, max_size=4))
    separator = draw(st.sampled_from(["\t", " "]))
    header = "query-id\tcorpus-id\tscore\n" if draw(st.booleans()) else ""
    return judged, header + "".join(separator.join(line) + "\n" for line in judged)


@FUZZ
@given(example=qrels_lines())
def test_qrels_tsv_keeps_every_judgement_or_refuses(tmp_path, example):
    """Each judgement line is kept with its integer grade, or the file is refused: no line dropped unsaid (a first
    line whose grade is not an integer is not a header), no grade of a repeated pair silently replaced."""
    judged, qrels = example
    folder = fresh(tmp_path)
    records = [{"_id": f"{kind}{k}", "text": f"text {k}", "lang": lang}
               for k, lang in enumerate(["en", "de"]) for kind in ("q", "d")]  # fmt: skip
    write(folder / "corpus.jsonl", "".join(json.dumps(r) + "\n" for r in records if r["_id"][0] == "d").encode())
    write(folder / "queries.jsonl", "".join(json.dumps(r) + "\n" for r in records if r["_id"][0] == "q").encode())
    write(folder / "qrels" / "test.tsv", expand(qrels).encode())
    bench = read_or_refuse(lambda: benchmarks.load_benchmark(str(folder)), folder, "test.tsv")
    if bench is None:
        return
    assert_sane_benchmark(bench)
    for query_id, doc_id, token in judged:
        assert doc_id in bench.qrels.get(query_id, {}), f"line {query_id} {doc_id} {token} dropped: {qrels!r}"
        grade = int(token) if re.fullmatch(r"-?[0-9]{1,30}", token) else token  # not an integer: refusing is right
        assert bench.qrels[query_id][doc_id] == grade, f"{query_id} {doc_id} {token} read otherwise: {qrels!r}"
