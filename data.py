"""
Data for the three scripts: reading, filtering, sampling, collating. Nothing here
touches a model; everything is seeded and deterministic.

Two kinds of source:

- Parallel sentences (stage 1): rows with columns `english`, `non_english`, from a
  Hugging Face dataset in the `sentence-transformers/parallel-sentences-*` layout
  (`sentence-transformers/parallel-sentences-europarl:en-de`), from a local folder
  in that layout (`DIR:en-de` reads DIR/en-de/train*.parquet), or from local
  `.jsonl`, `.tsv`, `.tsv.gz` or `.parquet` files. A source is tagged with its
  language as `de=path`; without a tag the language is read from an `en-xx` in
  the file or config name.
- Aligned retrieval rows (stage 2, evaluation, and stage 1 too): one row per query,
  columns `id`, `query_<lang>`, `passage_<lang>` for every language it holds; the
  demo data (data/demo/) is in this layout. Given as a parallel source, every
  (English, X) version of every query and passage becomes a parallel pair.

Run `python data.py stats SOURCE...` to see what sources yield after filtering,
de-duplication and caps, per language; `--collections ROOT --languages ...` reads
the stage-1 collections the way `distill.py --preset paper` does.
"""

import fcntl
import gzip
import hashlib
import json
import os
import random
import re
import shutil
import sys
import zlib
from collections import Counter, namedtuple
from pathlib import Path

import numpy as np
import pyarrow as pa  # installed with datasets
import pyarrow.compute as pc

from checkpoint import BadInput, Parser, Range, entry_point, first_line

LOCAL_SUFFIXES = (".jsonl", ".tsv", ".tsv.gz", ".parquet")
PARQUET_BATCH = 65_536  # rows per Arrow batch read from a parquet file or hub dataset, at most
PARQUET_BATCH_BYTES = 64 << 20  # and about this much text, read into Python at once
ROW_COLUMN = re.compile(r"^(query|passage)_([a-z]{2,3}(?:[-_][A-Za-z]+)?)$")

# One parallel example: the student embeds `text` (in `lang`), the teacher `english`.
Pair = namedtuple("Pair", ["lang", "english", "text"])


# ---------------------------------------------------------------------------
# Reading records


class MissingConfig(BadInput):
    """A dataset or collection folder that exists but has no such config (e.g. en-ja in Europarl)."""


def is_local(location):
    return location.endswith(LOCAL_SUFFIXES) or Path(location).exists()


def read_records(location, config=None):
    """Yield (where, record) for each row of a local file, a local collection folder or a hub dataset.

    `where` is "file:line" (or "file row N", "dataset row N") for error messages;
    records are dicts. A folder with a config reads the hub's layout of a
    multi-config dataset, DIR/<config>/train*.parquet (what a snapshot download of
    `sentence-transformers/parallel-sentences-*` holds); a config it lacks raises
    MissingConfig.
    """
    if is_columnar(location):
        for label, first, batch in read_batches(location, config):
            for offset, record in enumerate(batch.to_pylist()):
                yield f"{label} row {first + offset}", record
        return
    path = Path(location)
    if not path.is_file():
        raise BadInput(
            f"data file '{path}' does not exist (expected a .jsonl, .tsv, .tsv.gz or .parquet file or a hub dataset id)"
        )
    opener = gzip.open if path.name.endswith(".gz") else open
    is_tsv = ".tsv" in path.name
    header, number = None, 0
    try:
        with opener(path, "rb") as f:
            # Decode line by line (not the whole stream) so a bad byte names its line.
            for number, raw in enumerate(f, 1):
                where = f"{path}:{number}"
                try:
                    # utf-8-sig on the first line: a byte-order mark (Windows editors write one) is not text
                    line = raw.decode("utf-8-sig" if number == 1 else "utf-8").rstrip("\r\n")
                except UnicodeDecodeError:
                    raise BadInput(f"{where}: not UTF-8 text") from None
                if not line.strip():
                    continue
                if is_tsv:
                    columns = line.split("\t")
                    if number == 1 and columns == ["english", "non_english"]:
                        header = columns
                        continue
                    if len(columns) != 2:
                        raise BadInput(
                            f"{where}: expected 2 tab-separated columns (english, non_english), found {len(columns)}"
                        )
                    yield where, dict(zip(header or ["english", "non_english"], columns))
                    continue
                try:
                    record = json.loads(line)
                except json.JSONDecodeError as error:
                    raise BadInput(f"{where}: not valid JSON ({error.msg}); a truncated file ends like this") from None
                if not isinstance(record, dict):
                    raise BadInput(f"{where}: expected a JSON object, found {type(record).__name__}")
                yield where, record
    except zlib.error as error:  # a damaged deflate stream inside an intact gzip header
        raise BadInput(f"cannot read '{path}': its gzip data is corrupt after line {number} ({error})") from None
    except (OSError, EOFError) as error:  # unreadable, not gzip at all, or a truncated .gz
        raise BadInput(f"cannot read '{path}': {error}") from None


def is_columnar(location):
    """Sources read as Arrow batches: parquet files, folders in the hub's layout, hub datasets."""
    return location.endswith(".parquet") or Path(location).is_dir() or not is_local(location)


def read_batches(location, config=None):
    """Yield (label, first, batch) for a columnar source: Arrow record batches of about
    PARQUET_BATCH_BYTES of text, row `first + i` of `label` being the batch's row i (rows
    are counted from 1 per file, for messages: "file row N")."""
    if not is_local(location):
        if location.startswith((".", "/", "~")) or location.count("/") != 1:  # a path, not a hub id owner/name
            raise BadInput(f"data file or folder '{location}' does not exist")
        yield from read_hub_dataset(location, config)
        return
    path = Path(location)
    if not path.is_dir():
        yield from read_parquet(path)
        return
    if config is None:
        raise BadInput(
            f"data file '{path}' is a directory; expected a .jsonl, .tsv, .tsv.gz or .parquet file, "
            f"or DIR:CONFIG (e.g. {path}:en-de) for a folder in the hub's layout"
        )
    config_folder = path / config
    if not config_folder.is_dir():
        available = sorted(p.name for p in path.iterdir() if p.is_dir() and not p.name.startswith("."))
        raise MissingConfig(f"'{path}' has no config '{config}' (it has {', '.join(available) or 'none'})")
    # train-00000-of-00002.parquet (the uploaded layout) or train/0000.parquet (the converted one)
    files = sorted(
        p for p in config_folder.rglob("*.parquet") if p.relative_to(config_folder).parts[0].startswith("train")
    )
    if not files:
        raise BadInput(f"'{config_folder}' holds no train*.parquet files")
    for file in files:
        yield from read_parquet(file)


def read_parquet(path):
    """Yield (label, first, batch) from a parquet file, a batch at a time (never the whole file)."""
    import pyarrow.parquet as pq  # installed with datasets

    if not path.is_file():
        raise BadInput(f"data file '{path}' does not exist (expected a .jsonl, .tsv, .tsv.gz or .parquet file)")
    first = 1
    try:
        # pre_buffer=False: read page by page, not a whole row group (a file written in one is the whole file)
        parquet = pq.ParquetFile(path, pre_buffer=False)
        metadata = parquet.metadata
        total_bytes = sum(metadata.row_group(i).total_byte_size for i in range(metadata.num_row_groups))
        # about PARQUET_BATCH_BYTES a batch: 65,536 short sentence pairs, fewer long 14-language rows
        batch_size = max(min(PARQUET_BATCH, PARQUET_BATCH_BYTES * metadata.num_rows // max(total_bytes, 1)), 256)
        for batch in parquet.iter_batches(batch_size=batch_size):
            yield str(path), first, batch
            first += batch.num_rows
    except (OSError, ValueError) as error:  # pyarrow's ArrowInvalid and ArrowIOError are among these
        raise BadInput(f"cannot read parquet file '{path}' after row {first - 1}: {error}") from None


def read_hub_dataset(name, config):
    import datasets

    try:
        dataset = datasets.load_dataset(name, config, split="train")
    except Exception as error:  # offline, unknown id, unknown config: all one message
        # The dataset is there (its other configs are listed) but this config is not: online
        # "BuilderConfig 'x' not found. Available: [...]", offline "Available configs in the cache: [...]"
        if config and re.search(r"Available(?: configs in the cache)?: \[.+\]", str(error)):
            raise MissingConfig(f"dataset '{name}' has no config '{config}'") from None
        raise BadInput(
            f"cannot load dataset '{name}'{' config ' + repr(config) if config else ''} "
            f"(not a local file, and the hub needs a network or a cached copy): {first_line(error)}"
        ) from None
    first = 1
    for table in dataset.with_format("arrow").iter(batch_size=PARQUET_BATCH):  # Arrow batches, not row dicts
        for batch in table.to_batches():
            yield name, first, batch
            first += batch.num_rows


def parse_source(spec):
    """'de=path', 'path', 'hub/id:en-de', 'dir:en-de' -> (lang or None, location, config or None)."""
    lang = None
    if "=" in spec.split("/")[0]:
        lang, spec = spec.split("=", 1)
        if not lang.strip():
            raise BadInput(f"'={spec}' names no language before '='; write LANG={spec}, e.g. de={spec}")
    config = None
    if not is_local(spec) and ":" in spec:
        spec, config = spec.rsplit(":", 1)
    if lang is None:
        match = re.search(r"(?:^|[^a-z])en[-_]([a-z]{2,3})(?:[^a-z]|$)", f"{Path(spec).name} {config or ''}")
        lang = match.group(1) if match else None
    return lang, spec, config


def row_languages(record):
    """Languages that have both a query and a passage column in an aligned row."""
    found = Counter(match.group(2) for match in map(ROW_COLUMN.match, record) if match)
    return sorted(lang for lang, count in found.items() if count == 2)


def check_text(where, column, value):
    """An aligned row's text must be a non-empty string: a number or a null is a broken row, never skipped."""
    if not isinstance(value, str) or not value.strip():
        found = "null" if value is None else (repr(value) if isinstance(value, str) else type(value).__name__)
        raise BadInput(f"{where}: {column} must be a non-empty string, found {found}")


def row_id(where, record, seen):
    """The row's id as a string (its position when it has none); an id used twice is refused."""
    value = record.get("id", where)
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        raise BadInput(f"{where}: id must be a string or an integer, found {type(value).__name__}")
    value = str(value)
    if value in seen:
        raise BadInput(f"{where}: id '{value}' is used twice (first at {seen[value]}); row ids must be unique")
    seen[value] = where
    return value


# ---------------------------------------------------------------------------
# Parallel sentences (stage 1)

# sentence-transformers' parallel-sentence collections the MIMO authors read in stage 1,
# as hub datasets `sentence-transformers/parallel-sentences-<corpus>` with configs en-<lang>.
# Not every corpus has every language (Europarl has no Arabic, News-Commentary no Chinese):
# read them with skip_missing=True.
PARALLEL_CORPORA = (
    "europarl",
    "global-voices",
    "jw300",
    "news-commentary",
    "opensubtitles",
    "talks",
    "tatoeba",
    "wikimatrix",
)


def parallel_sentences_sources(languages, root="sentence-transformers", corpora=PARALLEL_CORPORA):
    """Source specs ROOT/parallel-sentences-<corpus>:en-<lang>, corpus by corpus, each corpus's
    languages in the order given. ROOT is the hub owner, or a local folder holding snapshot
    downloads of the collections. The order matters under de-duplication across languages:
    an English sentence goes to the first (corpus, language) that has it."""
    return [f"{root}/parallel-sentences-{corpus}:en-{lang}" for corpus in corpora for lang in languages]


def read_parallel_source(spec):
    """Yield Pair(lang, english, text) from one source spec, unfiltered."""
    lang, location, config = parse_source(spec)
    ids = {}
    if not is_columnar(location):
        for where, record in read_records(location, config):
            yield from record_pairs(where, record, lang, spec, ids)
        return
    for label, first, batch in read_batches(location, config):
        columns = batch.schema.names
        english, text = (batch.column(c) if c in columns else None for c in ("english", "non_english"))
        if lang is not None and all(
            column is not None and is_string_type(column.type) and column.null_count == 0 for column in (english, text)
        ):  # the usual case, column by column: no dict per row
            yield from (Pair(lang, a, b) for a, b in zip(english.to_pylist(), text.to_pylist()))
            continue
        for offset, record in enumerate(batch.to_pylist()):  # anything else, row by row, as from a text file
            yield from record_pairs(f"{label} row {first + offset}", record, lang, spec, ids)


def is_string_type(arrow_type):
    return pa.types.is_string(arrow_type) or pa.types.is_large_string(arrow_type)


def record_pairs(where, record, lang, spec, ids):
    """The pairs of one record: (english, non_english), or every (English, X) of an aligned row."""
    if "english" in record or "non_english" in record:
        for column in ("english", "non_english"):
            if not isinstance(record.get(column), str):
                raise BadInput(f"{where}: expected a string column '{column}'")
        if lang is None:
            raise BadInput(f"cannot tell the language of '{spec}': name it as LANG={spec} (e.g. de={spec})")
        yield Pair(lang, record["english"], record["non_english"])
        return
    langs = row_languages(record)
    if "en" not in langs or len(langs) < 2:
        raise BadInput(
            f"{where}: expected columns 'english' and 'non_english', or aligned columns "
            f"query_<lang>/passage_<lang> including English and another language; found {sorted(record)}"
        )
    row_id(where, record, ids)
    for side in ("query", "passage"):
        for other in langs:
            check_text(where, f"{side}_{other}", record[f"{side}_{other}"])
    for side in ("query", "passage"):
        for other in langs:
            if other != "en":
                yield Pair(other, record[f"{side}_en"], record[f"{side}_{other}"])


def keep_pair(pair, min_chars, max_chars, max_ratio):
    """The paper's filters: each side min..max characters, length ratio at most max_ratio."""
    a, b = len(pair.english), len(pair.text)
    if not (min_chars <= a <= max_chars and min_chars <= b <= max_chars):
        return "length"
    if max(a, b) / max(min(a, b), 1) > max_ratio:
        return "ratio"
    return None


def load_parallel(
    sources,
    min_chars=10,
    max_chars=512,
    max_ratio=3.0,
    max_per_language=None,
    identity_pairs=True,
    seed=0,
    dedupe="language",
    sample="random",
    skip_missing=False,
):
    """Read, filter, de-duplicate and cap parallel sentences from several sources.

    Returns (pairs, stats): pairs is a list of Pair, shuffled with the seed; stats
    counts what each rule dropped, the pairs kept per language (lang_xx) and lists
    the sources skipped for lacking their config (missing_sources).

    Sources are read in the order given, pairs in file order; a pair passing the
    length filters is then
    - dedupe="global": dropped if its English side was already taken by any earlier
      pair, of any source and language (one English sentence serves one language);
      dedupe="language": dropped if already taken within its own language;
    - sample="first": kept while its language holds fewer than max_per_language
      pairs; once every language a source yields is full, the rest of that source
      is not read (so a full language takes no more English sentences);
      sample="random": every pair is kept, then a seeded sample of max_per_language
      per language.
    With identity_pairs, unique English sentences are also paired with themselves
    (lang 'en'), at most max_per_language: under "first" the first ones kept, in
    order, so they cost the teacher nothing extra; under "random" a seeded sample.
    skip_missing: a source whose dataset or folder lacks its config (MissingConfig)
    is skipped and listed instead of being an error.
    """
    if dedupe not in ("global", "language") or sample not in ("first", "random"):
        raise ValueError(
            f"dedupe must be 'global' or 'language' and sample 'first' or 'random', got {dedupe}, {sample}"
        )
    first = sample == "first"
    cap = max_per_language or float("inf")
    rng = random.Random(seed)
    by_lang, taken = {}, set()
    english_order, english_kept = [], set()  # unique English of the kept pairs, in the order first kept
    stats, missing = Counter(), []
    for spec in sources:
        open_languages = set()  # languages this source has yielded that are not full yet
        try:
            for pair in read_parallel_source(spec):
                stats["read"] += 1
                reason = keep_pair(pair, min_chars, max_chars, max_ratio)
                if reason:
                    stats[f"dropped_{reason}"] += 1
                    continue
                kept = by_lang.setdefault(pair.lang, [])
                if first and len(kept) >= cap:
                    stats["dropped_cap"] += 1
                    open_languages.discard(pair.lang)
                    if not open_languages:
                        break  # everything this source yields is full: stop reading it
                    continue
                key = pair.english if dedupe == "global" else (pair.lang, pair.english)
                if key in taken:
                    stats["dropped_duplicate"] += 1
                    continue
                taken.add(key)
                kept.append(pair)
                open_languages.add(pair.lang)
                if first and dedupe == "global":
                    english_order.append(pair.english)  # it was just taken, so it is new
                elif first and pair.english not in english_kept:
                    english_kept.add(pair.english)
                    english_order.append(pair.english)
        except MissingConfig as error:
            if not skip_missing:
                raise BadInput(f"{error}; drop '{spec}' from the sources, or pass --skip-missing-configs") from None
            missing.append(spec)
    if identity_pairs:
        identity = by_lang.setdefault("en", [])
        already = {pair.english for pair in identity}  # English-only sources, if any, come first
        if first:
            room = max(max_per_language - len(identity), 0) if max_per_language else None
            english = [text for text in english_order if text not in already][:room]
        else:
            english = sorted(
                {pair.english for pairs in by_lang.values() for pair in pairs if pair.lang != "en"} - already
            )
        identity.extend(Pair("en", text, text) for text in english)
    out = []
    for lang in sorted(by_lang):
        pairs = by_lang[lang]
        if not first and max_per_language and len(pairs) > max_per_language:
            stats["dropped_cap"] += len(pairs) - max_per_language
            pairs = rng.sample(pairs, max_per_language)
        stats[f"lang_{lang}"] = len(pairs)
        out.extend(pairs)
    if missing:
        stats["missing_sources"] = missing
        by_location = {}
        for spec in missing:
            by_location.setdefault(spec.rsplit(":", 1)[0], []).append(spec.rsplit(":", 1)[-1])
        listed = "; ".join(f"{location}: {' '.join(configs)}" for location, configs in by_location.items())
        print(f"skipped {len(missing)} source(s) that lack their config ({listed})", file=sys.stderr)
    if not out:
        raise BadInput(
            f"no parallel pairs left after filtering {', '.join(sources)} ({dict(stats)}); "
            "check the files and --min-chars/--max-chars/--max-length-ratio"
        )
    rng.shuffle(out)
    return out, stats


def split_dev(pairs, dev_size, seed=0):
    """Hold out the pairs of dev_size English sentences (all their languages) as dev.

    Splitting by English sentence keeps every translation of a dev sentence out of
    training. Returns (train, dev), each in the input order.
    """
    english = sorted({pair.english for pair in pairs})
    if dev_size >= len(english):
        raise BadInput(f"--dev-size {dev_size} leaves no training data: only {len(english)} English sentences remain")
    held_out = set(random.Random(seed + 1).sample(english, dev_size))
    train = [pair for pair in pairs if pair.english not in held_out]
    dev = [pair for pair in pairs if pair.english in held_out]
    return train, dev


def epoch_order(n, seed, epoch):
    """A permutation of range(n), the same for the same (seed, epoch) on every run,
    so a resumed run sees the same batches as an uninterrupted one."""
    order = list(range(n))
    random.Random(seed * 1_000_003 + epoch).shuffle(order)
    return order


def batches(order, batch_size, drop_last=True):
    """Split an epoch's order into lists of indices; a ragged tail is dropped by default
    so every step has the same number of in-batch examples."""
    stop = len(order) - len(order) % batch_size if drop_last else len(order)
    return [order[start : start + batch_size] for start in range(0, stop, batch_size)]


# ---------------------------------------------------------------------------
# Aligned retrieval rows (stage 2 and evaluation)
#
# Rows are held as Arrow string columns, not as Python objects: 532k rows in 14
# languages are about 4 GB of text, which as Python dicts would cost each torchrun
# process more than that again. A large local file is validated and converted once
# into DATA_CACHE_DIR as uncompressed Arrow IPC and memory-mapped: its pages live in
# the kernel's page cache, are read from disk only when touched, and are shared by
# every process that maps them.

DATA_CACHE_DIR = "runs/data_cache"
CACHE_MIN_BYTES = 64 << 20  # smaller files are converted in memory on every load, leaving nothing on disk
ROWS_BATCH = 8192  # rows per Arrow record batch written
ROWS_FORMAT = 1  # part of the cache key: raise it when the converted layout changes


class Rows:
    """Aligned rows: len(rows); rows[i] -> {'id', 'query': {lang: text}, 'passage': {lang: text}}
    with only the languages row i holds, built on access (only its texts become Python
    strings); iteration; subset(indices), a view that shares the columns.

    table: columns id, then query_<lang> and passage_<lang> (strings, null where a
    row lacks the language), as row_batches() writes them.
    """

    def __init__(self, table, name, index=None):
        self.table, self.name, self.index = table, name, index  # index: None (all rows) or int64 (N,)
        names = set(table.column_names)
        self.all_languages = sorted(
            match.group(2)
            for match in map(ROW_COLUMN.match, table.column_names)
            if match and match.group(1) == "query" and f"passage_{match.group(2)}" in names
        )
        self.ids = table.column("id")
        self.texts = [
            (lang, table.column(f"query_{lang}"), table.column(f"passage_{lang}")) for lang in self.all_languages
        ]

    def __len__(self):
        return self.table.num_rows if self.index is None else len(self.index)

    def __getitem__(self, i):
        n, i = len(self), int(i)
        i = i + n if i < 0 else i
        if not 0 <= i < n:
            raise IndexError(f"row {i} of {n}")
        j = i if self.index is None else int(self.index[i])
        query, passage = {}, {}
        for lang, q, p in self.texts:
            text = q[j].as_py()
            if text is not None:
                query[lang], passage[lang] = text, p[j].as_py()
        return {"id": self.ids[j].as_py(), "query": query, "passage": passage}

    def __iter__(self):
        if self.index is not None:
            # subtle: not table.take(), which concatenates every column's chunks first: reading the
            # whole memory-mapped file (and copying a column at a time) to pick a thousand rows
            yield from (self[i] for i in range(len(self)))
            return
        for start in range(0, len(self), ROWS_BATCH):  # zero-copy slices, each made Python at once
            for record in self.table.slice(start, ROWS_BATCH).to_pylist():
                langs = [lang for lang in self.all_languages if record[f"query_{lang}"] is not None]
                yield {
                    "id": record["id"],
                    "query": {lang: record[f"query_{lang}"] for lang in langs},
                    "passage": {lang: record[f"passage_{lang}"] for lang in langs},
                }

    def subset(self, indices):
        """The rows at indices (positions in this view), as a view on the same columns."""
        indices = np.asarray(indices, dtype=np.int64)
        if len(indices) and (indices.min() < 0 or indices.max() >= len(self)):
            raise IndexError(f"subset of {len(self)} rows asks for row {indices.min()} or {indices.max()}")
        return Rows(self.table, self.name, indices if self.index is None else self.index[indices])

    def lacking(self, lang):
        """(N,) bool: the rows of this view that do not hold lang."""
        if lang not in self.all_languages:
            return np.ones(len(self), dtype=bool)
        missing = self.table.column(f"query_{lang}").is_null().to_numpy(zero_copy_only=False)
        return missing if self.index is None else missing[self.index]


def load_rows(spec, min_languages=2, cache_dir=DATA_CACHE_DIR):
    """Aligned rows (a .jsonl or .parquet file, or a hub dataset) -> Rows.

    Only languages with both a query and a passage count. Refused, naming the file
    and line (or row): a row holding fewer than min_languages (it cannot make a
    cross-lingual pair), a text that is not a non-empty string, an id used twice.
    A local file of CACHE_MIN_BYTES or more is converted once into cache_dir (keyed
    by its path, size and modification time) and memory-mapped; processes that
    start together wait for the one converting it (a file lock), then map its
    result. cache_dir=None converts in memory.
    """
    _, location, config = parse_source(spec)
    path = Path(location)
    if cache_dir is not None and is_local(location) and path.is_file() and path.stat().st_size >= CACHE_MIN_BYTES:
        tables = cached_row_tables(path, spec, min_languages, Path(cache_dir))
    else:
        sinks = write_parts(
            source_row_batches(location, config, min_languages, spec), lambda i: pa.BufferOutputStream()
        )
        tables = [pa.ipc.open_file(sink.getvalue()).read_all() for sink in sinks]
    table = tables[0] if len(tables) == 1 else pa.concat_tables(tables, promote_options="default")
    return Rows(table, spec)


def source_row_batches(location, config, min_languages, name):
    """Checked aligned rows of a source -> Arrow record batches in the layout Rows reads:
    column by column for columnar sources, record by record for text files."""
    if is_columnar(location):
        return columnar_row_batches(read_batches(location, config), min_languages, name)
    return row_batches(read_records(location, config), min_languages, name)


def check_record(where, record, min_languages):
    """The languages of an aligned record, after the checks every row must pass."""
    langs = row_languages(record)
    if len(langs) < min_languages:
        raise BadInput(
            f"{where}: expected query_<lang> and passage_<lang> columns for at least {min_languages} languages, "
            f"found {langs or 'none'}"
        )
    for lang in langs:
        check_text(where, f"query_{lang}", record[f"query_{lang}"])
        check_text(where, f"passage_{lang}", record[f"passage_{lang}"])
    return langs


def columnar_row_batches(batches, min_languages, name):
    """Aligned rows that arrive as Arrow batches (parquet, hub) -> record batches with the
    columns id, query_<lang>, passage_<lang>, checked column by column: no Python object
    per text. The first row a column check flags goes through check_record, so its
    message is the one a JSONL file would get; ids go through row_id one by one."""
    seen, langs = {}, None
    for label, first, batch in batches:
        if langs is None:  # a parquet file's columns are fixed: every row holds the same languages
            langs = row_languages(batch.schema.names)
        names = [f"{side}_{lang}" for lang in langs for side in ("query", "passage")]
        bad = np.full(batch.num_rows, len(langs) < min_languages)  # (n,) rows a check flags
        for column in [batch.column(name) for name in names]:
            if not is_string_type(column.type):
                bad[:] = True
                continue
            empty = pc.equal(pc.utf8_length(pc.utf8_trim_whitespace(column)), 0)  # null where the text is null
            bad |= empty.fill_null(True).to_numpy(zero_copy_only=False)
        ids = batch.column("id") if "id" in batch.schema.names else None
        if ids is not None and (pa.types.is_integer(ids.type) or is_string_type(ids.type)):
            bad |= ids.is_null().to_numpy(zero_copy_only=False)
            ids = pc.cast(ids, pa.string()).to_pylist()
        elif ids is not None:
            bad[:] = True
        flagged = set(np.flatnonzero(bad).tolist())
        checked = []
        for offset in range(batch.num_rows):
            where = f"{label} row {first + offset}"
            if offset in flagged:  # raises, unless Python's view of whitespace is Arrow's after all
                check_record(where, batch.slice(offset, 1).to_pylist()[0], min_languages)
                record = {"id": batch.column("id")[offset].as_py()} if ids is not None else {}
            else:
                record = {"id": ids[offset]} if ids is not None else {}
            checked.append(row_id(where, record, seen))
        columns = [pa.array(checked, type=pa.string())] + [batch.column(name).cast(pa.string()) for name in names]
        yield pa.RecordBatch.from_arrays(columns, names=["id"] + names)
    if not seen:
        raise BadInput(f"'{name}' holds no rows")


def row_batches(records, min_languages, name):
    """Checked aligned records -> Arrow record batches of ROWS_BATCH rows, with the
    columns id, query_<lang>, passage_<lang> for every language seen so far (null
    where a row lacks one). Errors name the record's file and line."""
    seen, languages, columns = {}, [], {"id": []}

    def batch():
        names = ["id"] + [f"{side}_{lang}" for lang in languages for side in ("query", "passage")]
        return pa.RecordBatch.from_arrays([pa.array(columns[n], type=pa.string()) for n in names], names=names)

    for where, record in records:
        langs = check_record(where, record, min_languages)
        identifier = row_id(where, record, seen)
        held = set(langs)
        if not held <= set(languages):  # a language first seen here: the batch's earlier rows lack it
            for lang in held - set(languages):
                columns[f"query_{lang}"] = [None] * len(columns["id"])
                columns[f"passage_{lang}"] = [None] * len(columns["id"])
            languages = sorted(held | set(languages))
        columns["id"].append(identifier)
        for lang in languages:
            columns[f"query_{lang}"].append(record[f"query_{lang}"] if lang in held else None)
            columns[f"passage_{lang}"].append(record[f"passage_{lang}"] if lang in held else None)
        if len(columns["id"]) == ROWS_BATCH:
            yield batch()
            columns = {column: [] for column in columns}
    if columns["id"]:
        yield batch()
    if not seen:
        raise BadInput(f"'{name}' holds no rows")


def write_parts(batches, open_sink):
    """Write record batches as Arrow IPC files, a new part whenever the columns change
    (a language first seen mid-file); returns the sinks, each holding one part."""
    writer, schema, sinks = None, None, []
    for batch in batches:
        if batch.schema != schema:
            if writer is not None:
                writer.close()
            sinks.append(open_sink(len(sinks)))
            writer, schema = pa.ipc.new_file(sinks[-1], batch.schema), batch.schema
        writer.write_batch(batch)
    if writer is not None:
        writer.close()
    return sinks


def cached_row_tables(path, name, min_languages, cache_dir):
    """Memory-mapped Arrow tables of a large rows file, converting it on the first call."""
    stat = path.stat()
    identity = [str(path.resolve()), stat.st_size, stat.st_mtime_ns, min_languages, ROWS_FORMAT]
    folder = cache_dir / f"{path.name}-{hashlib.sha1(json.dumps(identity).encode()).hexdigest()[:16]}"
    cache_dir.mkdir(parents=True, exist_ok=True)
    with open(folder.with_name(folder.name + ".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes, also when the process dies
        if folder.is_dir():
            try:
                return [pa.ipc.open_file(pa.memory_map(str(part))).read_all() for part in sorted(folder.iterdir())]
            except (OSError, pa.ArrowInvalid):  # a damaged conversion is redone, never trusted
                shutil.rmtree(folder)
        tmp = folder.with_name(f"{folder.name}.tmp")
        shutil.rmtree(tmp, ignore_errors=True)  # a killed conversion's leftovers (we hold the lock)
        tmp.mkdir()
        print(f"converting {path} to memory-mapped Arrow columns in {folder} (once)", file=sys.stderr)
        try:
            sinks = write_parts(
                source_row_batches(str(path), None, min_languages, name),
                lambda index: pa.OSFile(str(tmp / f"part-{index:04d}.arrow"), "wb"),
            )
            for sink in sinks:
                sink.close()
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        os.replace(tmp, folder)  # all parts appear at once
        return [pa.ipc.open_file(pa.memory_map(str(part))).read_all() for part in sorted(folder.iterdir())]


def subset(rows, indices):
    """rows[i] for i in indices: a view for Rows, a list for a list of row dicts."""
    return rows.subset(indices) if isinstance(rows, Rows) else [rows[i] for i in indices]


def common_languages(rows):
    """The languages every row holds, sorted."""
    if isinstance(rows, Rows):
        return [lang for lang in rows.all_languages if not rows.lacking(lang).any()]
    return sorted(set.intersection(*(set(row["query"]) for row in rows))) if rows else []


def require_languages(rows, languages, spec):
    """Stage 2 draws any language for any row: every row must hold all of them, and
    cross-lingual pairs need at least two."""
    if len(languages) < 2:
        raise BadInput(
            f"'{spec}' holds fewer than two languages common to all rows ({languages}); cross-lingual pairs need two"
        )
    if isinstance(rows, Rows):
        lacking = np.stack([rows.lacking(lang) for lang in languages], axis=1)  # (N, L): row n lacks language l
        bad = np.flatnonzero(lacking.any(1))
        if not len(bad):
            return
        row, lacks = rows[int(bad[0])], lacking[bad[0]]
    else:
        row = next((row for row in rows if not set(languages) <= row["query"].keys()), None)
        if row is None:
            return
        lacks = [lang not in row["query"] for lang in languages]
    missing = ", ".join(lang for lang, lacked in zip(languages, lacks) if lacked)
    raise BadInput(
        f"row '{row['id']}' of '{spec}' lacks {missing}; every row needs all of --languages {' '.join(languages)}"
    )


def language_pairs(n, languages, seed, epoch, same_language=False):
    """The (query language, passage language) of each of an epoch's n examples.

    Cross-lingual (MIMO, XLCO, LaKDA): the P = L(L-1) ordered pairs X != Y are
    shuffled with (seed, epoch) and cycled round-robin, so each pair occurs
    floor(n/P) or ceil(n/P) times. same_language=True (the monolingual InfoNCE
    baseline): X = Y, drawn uniformly.
    """
    rng = random.Random(seed * 1_000_003 + epoch + 7)
    if same_language:
        return [(lang, lang) for lang in (rng.choice(languages) for _ in range(n))]
    ordered = [(x, y) for x in languages for y in languages if x != y]
    rng.shuffle(ordered)
    return [ordered[k % len(ordered)] for k in range(n)]


def passage_languages(n, languages, seed, epoch):
    """The passage language of each of an epoch's n examples for the LaKDA baseline, drawn
    independently of the query pairs: every language floor(n/L) or ceil(n/L) times, in an
    order shuffled with its own stream of (seed, epoch). So LaKDA's KL term compares the
    query's two versions against passages in any language, its own included, as the
    authors' sampler does."""
    rng = random.Random(seed * 1_000_003 + epoch + 11)
    cycle = list(languages)
    rng.shuffle(cycle)
    out = [cycle[k % len(cycle)] for k in range(n)]  # balanced ...
    rng.shuffle(out)  # ... and unrelated to position, hence to the query pairs' cycle
    return out


def prepare_mmarco(triples, queries, collections, out, max_rows=None):
    """Translated MS MARCO (mMARCO) files -> aligned rows (id, query_<lang>, passage_<lang>).

    triples: the tab-separated training triples of ids (qid, positive pid, negative
    pid); the first positive of each query is kept. queries, collections: {lang:
    path} of the `id<TAB>text` files, one per language. Only the passages the rows
    need are kept in memory, one language at a time. Writes .jsonl or .parquet.
    """
    positives = {}
    for _, record in read_tsv_columns(triples, 3):
        positives.setdefault(record[0], record[1])
        if max_rows and len(positives) >= max_rows:
            break
    needed = set(positives.values())
    rows = {qid: {"id": qid} for qid in positives}
    for lang in sorted(queries):
        for _, (qid, text) in read_tsv_columns(queries[lang], 2):
            if qid in rows:
                rows[qid][f"query_{lang}"] = text
        passages = {pid: text for _, (pid, text) in read_tsv_columns(collections[lang], 2) if pid in needed}
        for qid, pid in positives.items():
            if pid in passages:
                rows[qid][f"passage_{lang}"] = passages[pid]
    complete = [row for row in rows.values() if len(row) == 1 + 2 * len(queries)]
    if not complete:
        raise BadInput(f"no query in {triples} has a query and a passage in every language of {sorted(queries)}")
    out = Path(out)
    tmp = out.with_name(out.name + ".tmp")  # written whole, then renamed: never half a file under --out
    if out.suffix == ".parquet":
        import pyarrow as pa
        import pyarrow.parquet as pq

        pq.write_table(pa.Table.from_pylist(complete), tmp)
    else:
        with open(tmp, "w", encoding="utf-8") as f:
            f.writelines(json.dumps(row, ensure_ascii=False) + "\n" for row in complete)
    os.replace(tmp, out)
    return len(complete), len(rows) - len(complete)


def read_tsv_columns(path, columns):
    """Yield (where, list of `columns` fields) from a plain tab-separated file (ids and text)."""
    path = Path(path)
    if not path.is_file():
        raise BadInput(f"file '{path}' does not exist")
    with open(path, "rb") as f:
        for number, raw in enumerate(f, 1):
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError:
                raise BadInput(f"{path}:{number}: not UTF-8 text") from None
            fields = line.rstrip("\r\n").split("\t")
            if len(fields) < columns:
                raise BadInput(f"{path}:{number}: expected {columns} tab-separated columns, found {len(fields)}")
            yield f"{path}:{number}", fields[:columns]


# ---------------------------------------------------------------------------
# Retrieval benchmarks (evaluation)
#
# A benchmark is held in memory as plain dicts:
#   corpus        {doc id: (text, lang or None)}
#   queries       {query id: (text, lang or None)}, only the queries that have judgements
#   qrels         {query id: {doc id: grade}}, integer grades as in the qrels file (> 0 is relevant)
#   query_groups  {key: [query ids]}: parallel versions (translations) of one query
#   doc_groups    {key: [doc ids]}: parallel versions of one document
#   stats         counts of what was skipped or could not be matched
#   layout        how each part was read: file layouts, the qrels file, where the groups come from
# Groups hold at least two members, each in a different language.

Benchmark = namedtuple(
    "Benchmark", ["name", "corpus", "queries", "qrels", "query_groups", "doc_groups", "stats", "layout"]
)

BEIR_CORPUS = ("corpus.jsonl", "corpus.jsonl.gz", "corpus.parquet")
BEIR_QUERIES = ("queries.jsonl", "queries.jsonl.gz", "queries.parquet")
DEFAULT_SPLIT = "test"
LANGUAGE_METRICS_HINT = (
    "the language metrics (own-language share, MRC, PEER, per-language alignment, --monolingual) need it; "
    "add it, or run evaluate.py with --no-language-metrics"
)
# The two record layouts of corpus.jsonl and qrels.jsonl, by the names errors use for them.
LAYOUT_NAMES = {
    "beir": "BEIR",
    "mlir": "MLIR-benchmark ({id: {...}})",
}


def qrels_candidates(split):
    """The files read as the judgements of `split`, in order of preference."""
    if split == DEFAULT_SPLIT:
        # subtle: a folder with one split may name it nowhere; the MLIR benchmarks' qrels.jsonl is one
        return ("qrels/test.tsv", "qrels.tsv", "qrels/test.jsonl", "qrels.jsonl")
    return (f"qrels/{split}.tsv", f"qrels/{split}.jsonl")


def load_benchmark(spec, need_lang=True, split=DEFAULT_SPLIT):
    """A benchmark from a BEIR-style directory, a file of aligned rows, or a hub id -> Benchmark.

    - directory: corpus.jsonl and queries.jsonl, in the BEIR layout or the MLIR
      benchmarks' (yjoonjang/mlir-benchmarks, see read_texts), and the judgements of
      `split`: qrels/<split>.tsv or qrels/<split>.jsonl (for "test" also qrels.tsv,
      qrels.jsonl);
    - .jsonl/.tsv/.parquet file of aligned rows (query_<lang>, passage_<lang>), like
      data/demo/test.jsonl: turned into an MLIR benchmark by rows_to_benchmark();
    - hub dataset id, optionally with a folder: `owner/name/MMLIR/xx`, read from the
      Hugging Face cache (or downloaded when online) and then read as a directory.
    need_lang: every document and query must carry a `lang` (only checked for directories).
    """
    if Path(spec).is_dir():
        return read_beir_dir(Path(spec), spec, need_lang, split)
    if is_local(spec):
        if split != DEFAULT_SPLIT:
            raise BadInput(
                f"--split {split}: '{spec}' is a file of aligned rows, which has no splits; "
                "--split applies to benchmark folders"
            )
        return rows_to_benchmark(load_rows(spec), spec)
    return read_beir_dir(download_benchmark(spec), spec, need_lang, split)


def rows_to_benchmark(rows, name="rows"):
    """Aligned rows -> the MLIR benchmark (the MIMO paper's protocol).

    Every language version of every passage goes into one corpus (doc id
    "<row id>/<lang>"), every language version of every query is a query (query id
    "<row id>/<lang>"), and all versions of a row's passage are relevant (grade 1)
    to all versions of its query: a perfect language-agnostic model ranks the L
    versions of the gold passage first, in any order. The versions of a row's query
    (and of its passage) form one parallel group.
    """
    corpus, queries, qrels, query_groups, doc_groups = {}, {}, {}, {}, {}
    for row in rows:
        doc_ids = [f"{row['id']}/{lang}" for lang in row["passage"]]
        for lang, text in row["passage"].items():
            corpus[f"{row['id']}/{lang}"] = (text, lang)
        for lang, text in row["query"].items():
            queries[f"{row['id']}/{lang}"] = (text, lang)
            qrels[f"{row['id']}/{lang}"] = {doc_id: 1 for doc_id in doc_ids}
        query_groups[row["id"]] = [f"{row['id']}/{lang}" for lang in row["query"]]
        doc_groups[row["id"]] = doc_ids
    if len(corpus) != sum(len(row["passage"]) for row in rows):
        raise BadInput(f"'{name}': row ids are not unique, so documents '<row id>/<lang>' collide")
    layout = {"source": "aligned rows", "query_groups": "rows", "document_groups": "rows"}
    return finish_benchmark(name, corpus, queries, qrels, query_groups, doc_groups, layout)


def download_benchmark(spec):
    """'owner/name[/folder...]' -> local folder of the dataset repo's snapshot.

    Offline (HF_HUB_OFFLINE=1) this reads the Hugging Face cache only, so a
    benchmark fetched once keeps working without a network.
    """
    parts = spec.strip("/").split("/")
    if len(parts) < 2 or not all(parts):
        raise BadInput(
            f"benchmark '{spec}' is not a directory or file here, "
            "nor a hub dataset id (owner/name or owner/name/folder)"
        )
    repo_id, folder = "/".join(parts[:2]), "/".join(parts[2:])
    from huggingface_hub import snapshot_download

    try:
        # fnmatch's '*' also matches '/', so "folder/*" takes the folder's qrels/ too
        root = snapshot_download(repo_id, repo_type="dataset", allow_patterns=[f"{folder}/*"] if folder else None)
    except Exception as error:  # offline and not cached, unknown repo, no access: one message
        raise BadInput(
            f"benchmark '{spec}' is not a directory or file here, and as hub dataset '{repo_id}' it could not be "
            f"loaded (the hub needs a network or a cached copy): {first_line(error)}"
        ) from None
    path = Path(root) / folder
    if not path.is_dir():
        raise BadInput(f"hub dataset '{repo_id}' has no folder '{folder}'")
    return path


def read_beir_dir(folder, name, need_lang=True, split=DEFAULT_SPLIT):
    """A benchmark folder (BEIR or MLIR-benchmark layout) -> Benchmark; see load_benchmark()."""

    def find(candidates, what):
        for candidate in candidates:
            if (folder / candidate).is_file():
                return folder / candidate
        raise BadInput(f"benchmark '{name}' has no {what}: expected {' or '.join(candidates)} in {folder}")

    corpus, doc_keys, corpus_layout = read_texts(find(BEIR_CORPUS, "corpus"), "document", need_lang)
    queries, query_keys, queries_layout = read_texts(find(BEIR_QUERIES, "queries"), "query", need_lang)
    candidates = qrels_candidates(split)
    if split != DEFAULT_SPLIT and not any((folder / candidate).is_file() for candidate in candidates):
        present = sorted(path.stem for path in (folder / "qrels").glob("*") if path.suffix in (".tsv", ".jsonl"))
        raise BadInput(
            f"--split {split}: benchmark '{name}' has no qrels/{split}.tsv or qrels/{split}.jsonl in {folder} "
            f"(splits there: {', '.join(present) or 'none besides the default qrels file'})"
        )
    qrels_path = find(candidates, f"relevance judgements for split '{split}'")
    qrels, qrels_layout = read_qrels(qrels_path)
    layout = {
        "corpus": corpus_layout,
        "queries": queries_layout,
        "qrels": f"{qrels_path.relative_to(folder)} ({qrels_layout})",
        "split": split,
    }
    return finish_benchmark(
        name, corpus, queries, qrels, group_by(query_keys, queries), group_by(doc_keys, corpus), layout
    )


def record_layout(record):
    """'mlir' for {id: {...}, ...} (every value an object), 'beir' for a record with `_id`/`id`, else None."""
    if record and all(isinstance(value, dict) for value in record.values()):
        return "mlir"
    if "_id" in record or "id" in record:
        return "beir"
    return None


def read_texts(path, kind, need_lang):
    """corpus.jsonl / queries.jsonl -> ({id: (text, lang)}, {id: group key}, layout).

    Two layouts, detected from a file's first record; every later line must follow it:
    - BEIR, one record per line: `_id` (or `id`), `text`, optional `title`, `lang`, `group`;
    - the MLIR benchmarks' corpus (yjoonjang/mlir-benchmarks): `{doc id: {"text": ..., "lang": ...}}`,
      one or more ids per line. (Their queries.jsonl is in the BEIR layout.)
    subtle: a title is joined to the text with a space, as BEIR's SentenceBERT
    encoder and MTEB do, so scores stay comparable with published BEIR numbers.
    An id may appear once in the whole file. A query's text may not be empty: no
    model can be judged on it.
    The group key (parallel versions of one text) is `group` when given, else
    language_free_id(): "q17/de" and "q17/fr" are one group, as are the MLIR
    benchmarks' "de_q_005a" and "en_q_005a"; an id naming no language is alone.
    """
    texts, keys, first_line = {}, {}, {}
    layout = None
    for where, record in read_records(str(path)):
        this_layout = record_layout(record)
        if this_layout is None:
            raise BadInput(
                f"{where}: expected a BEIR record with '_id' and 'text', or an MLIR-benchmark record "
                f'{{id: {{"text": ..., "lang": ...}}}}; found the fields {sorted(record)[:6]}'
            )
        layout = layout or this_layout
        if this_layout != layout:
            raise BadInput(
                f"{where}: a {LAYOUT_NAMES[this_layout]} record in a file whose first record is "
                f"{LAYOUT_NAMES[layout]}; a file holds one layout"
            )
        items = [(record.get("_id", record.get("id")), record)] if layout == "beir" else list(record.items())
        for text_id, fields in items:
            if not isinstance(text_id, (str, int)) or isinstance(text_id, bool):
                raise BadInput(f"{where}: expected a string field '_id'")
            text_id = str(text_id)
            text, title, lang = fields.get("text"), fields.get("title"), fields.get("lang")
            if not isinstance(text, str):
                raise BadInput(f"{where}: {kind} '{text_id}' needs a string field 'text'")
            if isinstance(title, str) and title.strip():
                text = f"{title.strip()} {text}".strip()
            if kind == "query" and not text.strip():
                raise BadInput(f"{where}: query '{text_id}' has an empty text; give it one or remove the line")
            if not (isinstance(lang, str) and lang):
                if need_lang:
                    raise BadInput(f"{where}: {kind} '{text_id}' has no 'lang' field; {LANGUAGE_METRICS_HINT}")
                lang = None
            if text_id in texts:
                raise BadInput(f"{where}: {kind} id '{text_id}' appears twice (first at {first_line[text_id]})")
            texts[text_id], first_line[text_id] = (text, lang), where
            group = fields.get("group")
            keys[text_id] = str(group) if group is not None else language_free_id(text_id, lang)
    if not texts:
        raise BadInput(f"{path} holds no {kind} records")
    return texts, keys, LAYOUT_NAMES[layout]


def language_free_id(text_id, lang):
    """The id without the language it names: a "/<lang>", "-<lang>" or "_<lang>" suffix
    ("q17/de" -> "q17"), else a "<lang>_", "<lang>-" or "<lang>/" prefix, as the MLIR
    benchmarks write query ids ("de_q_005a" -> "q_005a"); else the id unchanged."""
    if lang:
        for separator in "/-_":
            if text_id.endswith(separator + lang) and len(text_id) > len(lang) + 1:
                return text_id[: -len(separator + lang)]
        for separator in "_-/":
            if text_id.startswith(lang + separator) and len(text_id) > len(lang) + 1:
                return text_id[len(lang + separator) :]
    return text_id


def json_grade(where, query_id, doc_id, grade):
    """A relevance grade from JSON: an integer (not a bool, not a float, not a string)."""
    if isinstance(grade, bool) or not isinstance(grade, int):
        raise BadInput(
            f"{where}: the relevance grade of document '{doc_id}' for query '{query_id}' must be an integer, "
            f"found {grade!r}"
        )
    return grade


def read_qrels(path):
    """Judgements -> ({query id: {doc id: grade}}, layout); grades are integers.

    .tsv: `query-id  corpus-id  score` (BEIR, header optional), or the 4 columns of
    TREC qrels `query-id  0  corpus-id  score`, separated by tabs or spaces.
    .jsonl, the layout detected from the first record: BEIR records with `query-id`,
    `corpus-id`, `score`, or the MLIR benchmarks' `{query id: {doc id: grade, ...}}`
    (one or more queries per line; a query on several lines gathers them all).
    """
    qrels = {}
    if path.suffix == ".jsonl":
        layout = None
        for where, record in read_records(str(path)):
            this_layout = "mlir" if record and all(isinstance(v, dict) for v in record.values()) else "beir"
            if this_layout == "beir" and not {"query-id", "corpus-id", "score"} <= set(record):
                raise BadInput(
                    f"{where}: expected a BEIR record with 'query-id', 'corpus-id', 'score', or an MLIR-benchmark "
                    f"record {{query id: {{doc id: grade}}}}; found the fields {sorted(record)[:6]}"
                )
            layout = layout or this_layout
            if this_layout != layout:
                raise BadInput(
                    f"{where}: a {LAYOUT_NAMES[this_layout]} record in a file whose first record is "
                    f"{LAYOUT_NAMES[layout]}; a file holds one layout"
                )
            if layout == "beir":
                query_id, doc_id = str(record["query-id"]), str(record["corpus-id"])
                qrels.setdefault(query_id, {})[doc_id] = json_grade(where, query_id, doc_id, record["score"])
                continue
            for query_id, judged in record.items():
                for doc_id, grade in judged.items():
                    qrels.setdefault(query_id, {})[doc_id] = json_grade(where, query_id, doc_id, grade)
        return qrels, LAYOUT_NAMES[layout or "beir"]
    with open(path, encoding="utf-8") as f:
        for number, line in enumerate(f, 1):
            where, fields = f"{path}:{number}", line.split("\t") if "\t" in line else line.split()
            fields = [field.strip() for field in fields]
            if not any(fields):
                continue
            if number == 1 and not fields[-1].lstrip("-").isdigit():
                continue  # the header line, e.g. query-id corpus-id score
            if len(fields) not in (3, 4):
                raise BadInput(
                    f"{where}: expected 3 columns (query-id, corpus-id, score) "
                    f"or 4 (TREC: query-id, 0, corpus-id, score), found {len(fields)}"
                )
            query_id, doc_id, grade = fields[0], fields[-2], fields[-1]
            if not re.fullmatch(r"-?[0-9]+", grade):
                raise BadInput(
                    f"{where}: the relevance grade of document '{doc_id}' for query '{query_id}' must be an integer, "
                    f"found {grade!r}"
                )
            qrels.setdefault(query_id, {})[doc_id] = int(grade)
    return qrels, "TREC/BEIR columns"


def group_by(keys, texts):
    """{id: key} -> {key: [ids]}, keeping groups of at least 2 members in distinct languages."""
    groups = {}
    for text_id, key in keys.items():
        groups.setdefault(key, []).append(text_id)
    out = {}
    for key, ids in groups.items():
        langs = [texts[text_id][1] for text_id in ids]
        if len(ids) >= 2 and None not in langs and len(set(langs)) == len(langs):
            out[key] = ids
    return out


def groups_from_judgements(query_groups, qrels, corpus):
    """Parallel documents for a benchmark whose document ids do not name them.

    Under the MLIR protocol every language version of the gold passage is relevant
    to every version of its query, so the relevant documents of one group of
    parallel queries, when they are one document in each of two or more languages,
    are the versions of one passage (the MLIR benchmarks' `doc_<lang>_<n>` ids do not
    say which). Query groups that share a passage give it once; a document that two
    different such sets claim belongs to neither, since which passage it translates is
    then unclear.
    """
    candidates = {}  # sorted doc ids -> the first query group's key
    for key, ids in query_groups.items():
        relevant = sorted(
            {doc for query_id in ids for doc, grade in qrels[query_id].items() if grade > 0 and doc in corpus}
        )
        langs = [corpus[doc][1] for doc in relevant]
        if len(relevant) >= 2 and None not in langs and len(set(langs)) == len(langs):
            candidates.setdefault(tuple(relevant), key)
    claims = Counter(doc for docs in candidates for doc in docs)
    return {key: list(docs) for docs, key in candidates.items() if all(claims[doc] == 1 for doc in docs)}


def finish_benchmark(name, corpus, queries, qrels, query_groups, doc_groups, layout):
    """Match judgements to queries and documents, count what does not match, and
    derive the parallel documents from the judgements where ids give none.

    As trec_eval does: a query without any judgement is not evaluated (skipped and
    counted); a judgement naming an unknown query is dropped (counted); one naming
    a document that is not in the corpus is kept (counted): it still counts as
    relevant, and no model can retrieve it.
    """
    if not corpus:
        raise BadInput(f"benchmark '{name}' has an empty corpus")
    stats = Counter()
    stats["unknown_query_judgements"] = sum(
        len(judged) for query_id, judged in qrels.items() if query_id not in queries
    )
    stats["unknown_document_judgements"] = sum(
        doc_id not in corpus for query_id, judged in qrels.items() if query_id in queries for doc_id in judged
    )
    qrels = {query_id: judged for query_id, judged in qrels.items() if query_id in queries}
    stats["skipped_queries"] = sum(query_id not in qrels for query_id in queries)
    stats["queries_without_relevant"] = sum(
        not any(grade > 0 for grade in judged.values()) for judged in qrels.values()
    )
    queries = {query_id: value for query_id, value in queries.items() if query_id in qrels}
    if not queries:
        raise BadInput(f"benchmark '{name}': no query has a relevance judgement (do the qrels use the queries' ids?)")
    kept_groups = {}
    for key, ids in query_groups.items():  # a skipped query leaves its group
        kept = [query_id for query_id in ids if query_id in queries]
        if len(kept) >= 2:
            kept_groups[key] = kept
    layout = dict(layout)
    layout.setdefault("query_groups", "ids" if kept_groups else "none")
    if "document_groups" not in layout:
        layout["document_groups"] = "ids" if doc_groups else "none"
        if not doc_groups and kept_groups:
            doc_groups = groups_from_judgements(kept_groups, qrels, corpus)
            layout["document_groups"] = "judgements of parallel queries" if doc_groups else "none"
    return Benchmark(name, corpus, queries, qrels, kept_groups, doc_groups, dict(stats), layout)


def parallel_groups(spec, max_groups=None, seed=0):
    """Parallel texts for alignment/uniformity -> list of {lang: text}, at most max_groups (seeded sample).

    spec: any parallel source distill.py reads (LANG=FILE, hub-id:en-de, aligned
    rows). Each (English, X) pair is one group of two translations.
    """
    groups = [{"en": pair.english, pair.lang: pair.text} for pair in read_parallel_source(spec) if pair.lang != "en"]
    if not groups:
        raise BadInput(f"--parallel '{spec}' holds no (English, other language) pairs")
    if max_groups and len(groups) > max_groups:
        groups = random.Random(seed).sample(groups, max_groups)
    return groups


# ---------------------------------------------------------------------------
# Command line: inspect a source


def build_parser():
    # fmt: off
    parser = Parser(__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    stats = commands.add_parser("stats",
                                help="count the parallel pairs sources yield after the paper's filters, per language")
    stats.add_argument("sources", nargs="*", help="parallel sources, as for distill.py --data")
    stats.add_argument("--collections", default=None,
                       help="ROOT holding sentence-transformers' parallel-sentences-<corpus> collections (a folder of "
                            "snapshot downloads, or the hub owner sentence-transformers): read their en-<lang> configs "
                            "for --languages, corpus by corpus, as distill.py --preset paper does (after any SOURCES; "
                            "configs a collection lacks are skipped)")
    stats.add_argument("--languages", nargs="+", default=[], help="languages for --collections")
    stats.add_argument("--max-per-language", type=Range(int, 1), default=None, help="as distill.py (paper: 500000)")
    stats.add_argument("--dedupe", default="language", choices=["language", "global"], help="as distill.py")
    stats.add_argument("--sample", default="random", choices=["random", "first"], help="as distill.py")
    stats.add_argument("--skip-missing-configs", action="store_true", help="as distill.py")
    stats.add_argument("--no-identity-pairs", action="store_true", help="as distill.py")
    mmarco = commands.add_parser("prepare-mmarco",
                                 help="turn translated MS MARCO (mMARCO) files into aligned rows for joint_train.py")
    mmarco.add_argument("--triples", required=True,
                        help="training triples of ids: qid<TAB>positive pid<TAB>negative pid")
    mmarco.add_argument("--queries", nargs="+", required=True,
                        help="LANG=FILE of qid<TAB>query, one per language (e.g. de=german_queries.train.tsv)")
    mmarco.add_argument("--collection", nargs="+", required=True, help="LANG=FILE of pid<TAB>passage, one per language")
    mmarco.add_argument("--out", required=True, help="output .jsonl or .parquet of aligned rows")
    mmarco.add_argument("--max-rows", type=Range(int, 1), default=None,
                        help="keep at most this many queries (the first in the triples file)")
    # fmt: on
    return parser


def main(argv=None):
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command == "stats":
        sources = list(args.sources)
        if args.collections:
            if not args.languages:
                raise BadInput("--collections needs --languages, e.g. --languages ar de zh")
            sources += parallel_sentences_sources(args.languages, args.collections.rstrip("/"))
        if not sources:
            raise BadInput("give parallel sources, or --collections ROOT --languages ...")
        pairs, stats = load_parallel(
            sources,
            max_per_language=args.max_per_language,
            identity_pairs=not args.no_identity_pairs,
            dedupe=args.dedupe,
            sample=args.sample,
            skip_missing=args.skip_missing_configs or bool(args.collections),
        )
        print(json.dumps(dict(stats), indent=2))
        print(
            f"{len(pairs)} pairs; per language: "
            + ", ".join(f"{k[5:]} {v}" for k, v in stats.items() if k[:5] == "lang_")
        )
    elif args.command == "prepare-mmarco":

        def by_language(specs, flag):
            if not all("=" in spec for spec in specs):
                raise BadInput(f"{flag} takes LANG=FILE items, e.g. {flag} de=german_file.tsv; got {' '.join(specs)}")
            return dict(spec.split("=", 1) for spec in specs)

        queries, collections = by_language(args.queries, "--queries"), by_language(args.collection, "--collection")
        if sorted(queries) != sorted(collections):
            raise BadInput(
                f"--queries has languages {sorted(queries)} but --collection has {sorted(collections)}; "
                "give both for each language"
            )
        if Path(args.out).exists():
            raise BadInput(f"--out '{args.out}' exists; choose another name or remove it")
        kept, incomplete = prepare_mmarco(args.triples, queries, collections, args.out, args.max_rows)
        print(
            f"wrote {kept} rows in {len(queries)} languages to {args.out} "
            f"({incomplete} queries lacked a language and were left out)"
        )


if __name__ == "__main__":
    entry_point(main)
