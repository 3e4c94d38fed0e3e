"""Training data for distill.py and joint_train.py: reading and checking sources, filtering, sampling, ordering; no
model, everything seeded and deterministic. `datasets` reads each source into memory-mapped Arrow in its cache
(HF_DATASETS_CACHE); one validator refuses a bad row, naming the file, the line (or row) and what was expected.
- Parallel sentences (stage 1), columns `english`, `non_english`: `.jsonl`, `.tsv` (`.tsv.gz`) or `.parquet` files,
  a hub dataset `owner/name:en-de` or a folder `DIR:en-de` (DIR/en-de/train*.parquet) laid out as sentence-transformers'
  `parallel-sentences-*`. `de=path` tags a source's language, else it is read from `en-xx` in its file or config name.
- Aligned retrieval rows (stage 2, evaluation): one row per query, columns `id`, `query_<lang>`, `passage_<lang>` for
  each language it holds (as data/demo/). Read by stage 1, every (English, X) version of every query and passage of a
  row is a parallel pair.
`python data.py prepare-mmarco` builds aligned rows from mMARCO files."""

import functools
import gzip
import json
import logging
import mmap
import os
import random
import re
import sys
import uuid
import zlib
from collections import Counter, namedtuple
from pathlib import Path

import datasets
import numpy as np
import pyarrow as pa  # installed with datasets
import pyarrow.compute as pc
import pyarrow.parquet as pq

from checkpoint import BadInput, Parser, Range, entry_point, first_line

BATCH = 65_536  # rows of a memory-mapped table made Python objects at once
LANGUAGE_TAG = re.compile(r"[a-z]{2,3}(?:-[a-z0-9]{2,8})*")  # an ISO 639 code and subtags, one way: de, pt-br, zh-hans
ROW_COLUMN = re.compile(rf"^(query|passage)_({LANGUAGE_TAG.pattern})$")
logging.getLogger("datasets.packaged_modules").setLevel(logging.CRITICAL)  # our error names the file and line instead
Pair = namedtuple("Pair", ["lang", "english", "text"])  # the student embeds `text` (in `lang`), the teacher `english`


# ---------------------------------------------------------------------------
# Reading a source with datasets, and the one validator


class MissingConfig(BadInput):
    """A dataset or collection folder that exists but has no such config (e.g. en-ja in Europarl)."""


def is_local(location):
    return location.endswith((".jsonl", ".tsv", ".tsv.gz", ".parquet")) or Path(location).exists()


def parse_source(spec):
    """'de=path', 'path', 'hub/id:en-de', 'dir:en-de' -> (lang or None, location, config or None)."""
    lang = config = None
    if "=" in spec.split("/")[0]:
        tag, spec = spec.split("=", 1)
        if (lang := language_tag(tag)) is None:
            named = "names no language before '='" if not tag.strip() else f"'{tag}' is not a language tag"
            raise BadInput(f"'{tag}={spec}' {named}; write LANG={spec}, e.g. de={spec}")
    if not is_local(spec) and ":" in spec:
        spec, config = spec.rsplit(":", 1)
    if lang is None:  # untagged: an en-xx in the file or config name
        match = re.search(r"(?:^|[^a-z])en[-_]([a-z]{2,3})(?:[^a-z]|$)", f"{Path(spec).name} {config or ''}")
        lang = match.group(1) if match else None
    return lang, spec, config


def load_source(location, config=None, check=None):
    """-> (datasets.Dataset, or None for a file without records; label for messages). A .tsv is one `text` row per
    line (datasets' csv loader takes quotes for CSV quoting and silently pads or drops fields). A file datasets cannot
    read is read again line by line (JSON records through check(where, record, seen)), for an error naming the line."""
    path = Path(location)
    if not is_local(location):
        if location.startswith((".", "/", "~")) or location.count("/") != 1:  # a path, not a hub id owner/name
            raise BadInput(f"data file or folder '{location}' does not exist")
        try:
            return datasets.load_dataset(location, config, split="train"), location
        except Exception as error:  # offline, unknown id, unknown config: all one message
            # other configs listed, this one missing: "Available: [...]" online, "... in the cache: [...]" offline
            if config and re.search(r"Available(?: configs in the cache)?: \[.+\]", str(error)):
                raise MissingConfig(f"dataset '{location}' has no config '{config}'") from None
            named = f"dataset '{location}'{' config ' + repr(config) if config else ''}"
            raise BadInput(f"cannot load {named} (not a local file, and the hub needs a network or a cached copy): "
                           f"{first_line(error)}") from None  # fmt: skip
    kind = "parquet" if path.suffix == ".parquet" or path.is_dir() else "text" if ".tsv" in path.name else "json"
    files = [str(path)]
    if path.is_dir():
        if config is None:
            raise BadInput(f"data file '{path}' is a directory; expected a .jsonl, .tsv, .tsv.gz or .parquet file, "
                           f"or DIR:CONFIG (e.g. {path}:en-de) for a folder in the hub's layout")  # fmt: skip
        if not (path / config).is_dir():
            available = sorted(p.name for p in path.iterdir() if p.is_dir() and not p.name.startswith("."))
            raise MissingConfig(f"'{path}' has no config '{config}' (it has {', '.join(available) or 'none'})")
        path = path / config
        # train-00000-of-00002.parquet (the uploaded layout) or train/0000.parquet (the converted one)
        files = sorted(str(p) for p in path.rglob("*.parquet") if p.relative_to(path).parts[0].startswith("train"))
        if not files:
            raise BadInput(f"'{path}' holds no train*.parquet files")
    elif not path.is_file():
        raise BadInput(f"data file '{path}' does not exist (expected a .jsonl, .tsv, .tsv.gz or .parquet file or a hub "
                       "dataset id)")  # fmt: skip
    elif path.stat().st_size == 0:
        return None, str(path)
    # json: a column of mixed types is an error, never quietly re-encoded as JSON text
    options = {"json": {"on_mixed_types": None}, "text": {"encoding": "utf-8-sig"}}.get(kind, {})
    try:
        # subtle: a bare null line that starts a file crashes pyarrow's JSON reader (26): read null lines line by line
        if kind == "json" and not path.name.endswith(".gz"):
            with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as mapped:
                if re.search(rb"(?:\A|\n)[ \t\r]*null[ \t\r]*(?:\n|\Z)", mapped):
                    raise ValueError("a line that is null, not a JSON object")
        dataset = datasets.load_dataset(kind, data_files=files, split="train", **options)
        if kind != "text":  # subtle: pyarrow lets bytes that are not UTF-8 into JSON's and parquet's strings
            dataset.data.table.validate(full=True)
        return dataset, str(path)
    except Exception as error:  # pyarrow's, zlib's, UnicodeDecodeError, ...: read again for the line
        lines, seen = 0, {}
        for where, record in json_records(path) if kind == "json" else text_lines(path) if kind == "text" else []:
            lines += 1
            if check and kind == "json":
                check(where, record, seen)
        if kind != "parquet" and not lines:
            return None, str(path)  # blank lines only
        raise BadInput(f"cannot read '{path}': {first_line(error.__cause__ or error)}") from None


def text_lines(path):
    """Yield (where, line) for each non-blank line of a UTF-8 text file (gzip if .gz); bad bytes name their line."""
    path, number = Path(path), 0
    if not path.is_file():
        raise BadInput(f"file '{path}' does not exist")
    try:
        with (gzip.open if path.name.endswith(".gz") else open)(path, "rb") as f:
            # numbered as datasets' text loader splits them (universal newlines: a lone \r ends a line too)
            for number, raw in enumerate((part for chunk in f for part in re.split(rb"\r(?!\n)", chunk)), 1):
                try:  # utf-8-sig on the first line: a byte-order mark (Windows editors write one) is not text
                    line = raw.decode("utf-8-sig" if number == 1 else "utf-8").rstrip("\r\n")
                except UnicodeDecodeError:
                    raise BadInput(f"{path}:{number}: not UTF-8 text") from None
                if line.strip():
                    yield f"{path}:{number}", line
    except zlib.error as error:  # a damaged deflate stream inside an intact gzip header
        raise BadInput(f"cannot read '{path}': its gzip data is corrupt after line {number} ({error})") from None
    except (OSError, EOFError) as error:  # unreadable, not gzip at all, or a truncated .gz
        raise BadInput(f"cannot read '{path}': {error}") from None


def unique_keys(where, pairs):
    """json's object hook: a key given twice would keep only its last value; refused instead."""
    record = dict(pairs)
    if len(record) < len(pairs):
        twice = next(key for i, (key, _) in enumerate(pairs) if key in dict(pairs[:i]))
        raise BadInput(f"{where}: the key '{twice}' appears twice in one object")
    return record


def json_records(path):
    """Yield (where, record) for each line of a JSON-lines file (gzip if .gz): one JSON object a line."""
    for where, line in text_lines(path):
        try:
            record = json.loads(line, object_pairs_hook=functools.partial(unique_keys, where))
        except json.JSONDecodeError as error:
            raise BadInput(f"{where}: not valid JSON ({error.msg}); a truncated file ends like this") from None
        except BadInput:
            raise
        except (ValueError, RecursionError) as error:  # a number past 4,300 digits, nesting past Python's limit
            raise BadInput(f"{where}: JSON that Python cannot hold ({first_line(error)})") from None
        if not isinstance(record, dict):
            raise BadInput(f"{where}: expected a JSON object, found {type(record).__name__}")
        if "\\u" in line and re.search(r"\\u[dD][89a-fA-F]", line):  # a \uD8xx escape: half of a character?
            try:
                json.dumps(record, ensure_ascii=False).encode("utf-8")
            except UnicodeEncodeError:
                raise BadInput(f"{where}: a \\u escape that is half a character (a lone surrogate)") from None
        yield where, record


def language_tag(tag):
    """A language tag written one way, lower case with '-' ('EN' -> 'en', 'pt_BR' -> 'pt-br'), so that one language is
    never counted as two; None for what is no tag. A region stays apart: 'en-us' is not 'en'."""
    tag = tag.strip().lower().replace("_", "-") if isinstance(tag, str) else ""
    return tag if LANGUAGE_TAG.fullmatch(tag) else None


def canonical_columns(names, where):
    """{column: its name with the language written one way} for each query_<lang> / passage_<lang> column; two
    columns that name one language, or a column query_ / passage_ that names none, are refused."""
    renamed, first = {}, {}
    for name in names:
        side, _, tag = name.partition("_")
        if side in ("query", "passage") and not tag.strip():  # other columns (query_type) are not languages
            raise BadInput(f"{where}: column '{name}' names no language; expected {side}_<lang>, e.g. {side}_de")
        if side in ("query", "passage") and (lang := language_tag(tag)):
            new = f"{side}_{lang}"
            if new in first:
                raise BadInput(f"{where}: columns '{first[new]}' and '{name}' are one language ({lang}); keep one")
            first[new], renamed[name] = name, new
    return renamed


def row_languages(names):
    """Languages that have both a query and a passage column, among column names."""
    found = Counter(match.group(2) for match in map(ROW_COLUMN.match, names) if match)
    return sorted(lang for lang, count in found.items() if count == 2)


def check_row(where, record, seen, min_languages=2, english=False):
    """An aligned row holds at least min_languages languages (2 make a cross-lingual pair; English among them if
    english), each a non-empty query and passage string, and a str or int id (default: its position) used once.
    With english (stage 1), a record with `english` or `non_english` is a parallel pair instead: two strings."""
    if english and ("english" in record or "non_english" in record):
        if wrong := [column for column in ("english", "non_english") if not isinstance(record.get(column), str)]:
            raise BadInput(f"{where}: expected a string column '{wrong[0]}'")
        return
    renamed = canonical_columns(record, where)
    record = {renamed.get(name, name): value for name, value in record.items()}
    held = lambda lang: (record[f"query_{lang}"], record[f"passage_{lang}"]) != (None, None)  # both null: lacks it
    langs = [lang for lang in row_languages(record) if held(lang)]
    if english and ("en" not in langs or len(langs) < 2):
        raise BadInput(f"{where}: expected columns 'english' and 'non_english', or aligned columns query_<lang>/"
                       f"passage_<lang> including English and another language; found {sorted(record)}")  # fmt: skip
    if len(langs) < min_languages:
        raise BadInput(f"{where}: expected query_<lang> and passage_<lang> columns for at least {min_languages} "
                       f"languages, found {langs or 'none'}")  # fmt: skip
    for column in (f"{side}_{lang}" for lang in langs for side in ("query", "passage")):
        value = record[column]
        if not isinstance(value, str) or not value.strip():  # a number or a null is a broken row, never skipped
            found = "null" if value is None else (repr(value) if isinstance(value, str) else type(value).__name__)
            raise BadInput(f"{where}: {column} must be a non-empty string, found {found}")
    value = record.get("id", where)
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        raise BadInput(f"{where}: id must be a string or an integer, found {type(value).__name__}")
    if str(value) in seen:
        raise BadInput(f"{where}: id '{value}' is used twice (first at {seen[str(value)]}); row ids must be unique")
    seen[str(value)] = where


def check_table(dataset, label, min_languages=2, english=False):
    """check_row's rules, checked on Arrow columns (no Python object per text), and check_row on a flagged row for its
    message, which names its line in a JSON-lines file -> the dataset, plus an id column of row positions if none."""
    renamed = {old: new for old, new in canonical_columns(dataset.column_names, f"'{label}'").items() if old != new}
    dataset = dataset.rename_columns(renamed) if renamed else dataset
    table, names, n = dataset.data.table, dataset.column_names, len(dataset)
    where = (lambda i: f"{label}:{i + 1}") if label.endswith(".jsonl") else (lambda i: f"{label} row {i + 1}")

    def flag(column, test):  # (N,) bool: rows whose value in column fails test; every row if it is not text
        strings = pa.types.is_string(column.type) or pa.types.is_large_string(column.type)
        return test(column).fill_null(True).to_numpy() if strings else np.ones(n, dtype=bool)

    bad = np.zeros(n, dtype=bool)  # (N,) rows a column check flags
    pairs = english and ("english" in names or "non_english" in names)
    if pairs:
        for name in ("english", "non_english"):
            bad |= flag(table.column(name), pc.is_null) if name in names else True
    else:
        langs, held = row_languages(names), np.zeros(n, dtype=int)  # (N,) languages each row holds
        if len(langs) < min_languages or (english and "en" not in langs):  # no row can pass: say it for the file
            check_row(f"'{label}'", dict.fromkeys(names, ""), {}, min_languages, english)
        for lang in langs:
            query, passage = table.column(f"query_{lang}"), table.column(f"passage_{lang}")
            null = query.is_null().to_numpy()  # (N,)
            held += ~null
            bad |= (null != passage.is_null().to_numpy()) | (null & english & (lang == "en"))
            for column in (query, passage):  # empty, or only whitespace (subtle: as Arrow sees it)
                bad |= flag(column, lambda c: pc.or_(pc.equal(pc.binary_length(c), 0), pc.utf8_is_space(c))) & ~null
        bad |= held < min_languages
    ids = table.column("id").to_pylist() if "id" in names and not pairs else []
    first, seen = {}, {}  # id -> its first row: in the table, and in a JSON-lines file read again below
    for i, value in enumerate(ids):
        bad[i] |= value is None or isinstance(value, bool) or not isinstance(value, (str, int)) or str(value) in first
        first.setdefault(str(value), i)
    flagged = np.flatnonzero(bad).tolist()
    if flagged and label.endswith(".jsonl"):  # read again, to name the line
        for line, record in json_records(label):
            check_row(line, record, seen, min_languages, english)
    for i in flagged:  # raises at the first row Python finds bad too
        if ids and first[str(ids[i])] != i:
            twice = f"id '{ids[i]}' is used twice (first at {where(first[str(ids[i])])}); row ids must be unique"
            raise BadInput(f"{where(i)}: {twice}")
        check_row(where(i), table.slice(i, 1).to_pylist()[0], {}, min_languages, english)
    return dataset if pairs or "id" in names else dataset.add_column("id", [where(i) for i in range(n)])


# ---------------------------------------------------------------------------
# Parallel sentences (stage 1)

# The collections the MIMO authors read in stage 1, configs en-<lang>. Not every corpus has every language
# (Europarl has no Arabic, News-Commentary no Chinese): read them with skip_missing=True.
PARALLEL_CORPORA = tuple("europarl global-voices jw300 news-commentary opensubtitles talks tatoeba wikimatrix".split())


def parallel_sentences_sources(languages, root="sentence-transformers", corpora=PARALLEL_CORPORA):
    """Specs ROOT/parallel-sentences-<corpus>:en-<lang>, corpus by corpus (ROOT: the hub owner or a folder of
    snapshot downloads). Under global de-duplication an English sentence goes to the first (corpus, language)."""
    return [f"{root}/parallel-sentences-{corpus}:en-{lang}" for corpus in corpora for lang in languages]


def read_parallel_source(spec):
    """Yield Pair(lang, english, text) from one source spec, unfiltered, in file order."""
    lang, location, config = parse_source(spec)
    dataset, label = load_source(location, config, lambda where, record, seen: check_row(where, record, seen, 2, True))
    if dataset is None:
        return
    names, first = dataset.column_names, 0
    untagged = BadInput(f"cannot tell the language of '{spec}': name it as LANG={spec} (e.g. de={spec})")
    if names == ["text"] and ".tsv" in label:  # english<TAB>non_english lines, a header line of those names allowed
        for batch in dataset.with_format("arrow").iter(BATCH):
            lines = batch.column("text")
            fields = pc.split_pattern(lines, "\t")
            count = pc.list_value_length(fields).to_numpy()  # (n,) fields each line holds
            keep = ~pc.or_(pc.equal(pc.binary_length(lines), 0), pc.utf8_is_space(lines)).to_numpy()  # not blank
            if first == 0 and lines[0].as_py() == "english\tnon_english":  # a header line is no pair
                keep[0] = False
            if wrong := np.flatnonzero(keep & (count != 2)).tolist():
                raise BadInput(f"{label}:{first + wrong[0] + 1}: expected 2 tab-separated columns (english, "
                               f"non_english), found {count[wrong[0]]}")  # fmt: skip
            if lang is None and keep.any():
                raise untagged
            fields, first = fields.filter(pa.array(keep)), first + len(lines)
            yield from (Pair(lang, a, b) for a, b in zip(*(pc.list_element(fields, k).to_pylist() for k in (0, 1))))
        return
    dataset = check_table(dataset, label, english=True)  # renames aligned columns, or adds an id: english stays
    if "english" in names:
        if lang is None:
            raise untagged
        for batch in dataset.with_format("arrow").iter(BATCH):  # column by column: no dict per row
            english, text = batch.column("english").to_pylist(), batch.column("non_english").to_pylist()
            yield from (Pair(lang, a, b) for a, b in zip(english, text))
        return
    langs = row_languages(dataset.column_names)
    for batch in dataset.with_format("arrow").iter(BATCH):  # every (English, X) of every query and passage
        columns = {name: batch.column(name).to_pylist() for name in batch.column_names if ROW_COLUMN.match(name)}
        for i in range(len(batch)):
            held = [lang for lang in langs if lang != "en" and columns[f"query_{lang}"][i] is not None]
            for side in ("query", "passage"):
                yield from (Pair(other, columns[f"{side}_en"][i], columns[f"{side}_{other}"][i]) for other in held)


def keep_pair(pair, min_chars, max_chars, max_ratio):
    """The paper's filters: each side min..max characters, length ratio at most max_ratio."""
    a, b = len(pair.english.strip()), len(pair.text.strip())  # a side of white space only is no sentence
    if not (a and b and min_chars <= a <= max_chars and min_chars <= b <= max_chars):
        return "length"
    return "ratio" if max(a, b) / max(min(a, b), 1) > max_ratio else None


def load_parallel(sources, min_chars=10, max_chars=512, max_ratio=3.0, max_per_language=None, identity_pairs=True,
                  seed=0, dedupe="language", sample="random", skip_missing=False):  # fmt: skip
    """Read, filter, de-duplicate, cap -> (pairs, stats): Pairs shuffled with the seed; what each rule dropped, pairs
    kept per language (lang_xx), sources skipped for lacking their config (missing_sources, skip_missing). Sources are
    read in order, pairs in file order; a pair that passes the length filters is then
    - dedupe="global": dropped if any earlier pair (any source, any language) took its English side, so one English
      sentence serves one language; "language": dropped if taken within its own language;
    - sample="first": kept while its language holds under max_per_language pairs, and a source stops being read once
      every language it yields is full; "random": all kept, then a seeded sample of max_per_language each.
    identity_pairs adds unique English sentences paired with themselves (lang 'en'), at most max_per_language: under
    "first" the first kept (no extra teacher cost), under "random" a seeded sample."""
    if dedupe not in ("global", "language") or sample not in ("first", "random"):
        raise ValueError(f"dedupe must be 'global' or 'language' and sample 'first' or 'random', "
                         f"got {dedupe}, {sample}")  # fmt: skip
    first, cap, rng = sample == "first", max_per_language or float("inf"), random.Random(seed)
    by_lang, taken, stats, missing, english_order = {}, set(), Counter(), [], {}
    for spec in sources:
        open_languages = set()  # languages this source has yielded that are not full yet
        try:
            for pair in read_parallel_source(spec):
                stats["read"] += 1
                if reason := keep_pair(pair, min_chars, max_chars, max_ratio):
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
                if first:  # the unique English kept, in the order first kept (a dict as an ordered set)
                    english_order.setdefault(pair.english)
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
            english = sorted({p.english for pairs in by_lang.values() for p in pairs if p.lang != "en"} - already)
        identity.extend(Pair("en", text, text) for text in english)
    out = []
    for lang, pairs in sorted(by_lang.items()):
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
        raise BadInput(f"no parallel pairs left after filtering {', '.join(sources)} ({dict(stats)}); check the "
                       "files and --min-chars/--max-chars/--max-length-ratio")  # fmt: skip
    rng.shuffle(out)
    return out, stats


def split_dev(pairs, dev_size, seed=0):
    """Hold out dev_size English sentences with all their pairs (none of theirs trains) -> (train, dev), in order."""
    english = sorted({pair.english for pair in pairs})
    if dev_size >= len(english):
        raise BadInput(f"--dev-size {dev_size} leaves no training data: only {len(english)} English sentences remain")
    held_out = set(random.Random(seed + 1).sample(english, dev_size))
    return [p for p in pairs if p.english not in held_out], [p for p in pairs if p.english in held_out]


def epoch_order(n, seed, epoch):
    """A permutation of range(n) fixed by (seed, epoch), so a resumed run sees an uninterrupted run's batches."""
    order = list(range(n))
    random.Random(seed * 1_000_003 + epoch).shuffle(order)
    return order


def batches(order, batch_size, drop_last=True):
    """An epoch's order in lists of batch_size indices; by default a ragged tail is dropped, so all steps are equal."""
    stop = len(order) - len(order) % batch_size if drop_last else len(order)
    return [order[start : start + batch_size] for start in range(0, stop, batch_size)]


# ---------------------------------------------------------------------------
# Aligned retrieval rows (stage 2 and evaluation)
# Rows stay Arrow columns in datasets' memory-mapped cache: 532k rows in 14 languages are about 4 GB of text, which
# as Python dicts would cost each torchrun process more than that again; mapped, pages are read when touched and shared.


def load_rows(spec, min_languages=2):
    """Aligned rows (.jsonl, .parquet or hub dataset) -> datasets.Dataset; rows[i] is {'id', 'query': {lang: text},
    'passage': {lang: text}} for the languages row i holds (a format transform: only rows read become Python)."""
    _, location, config = parse_source(spec)
    dataset, label = load_source(location, config, lambda where, row, seen: check_row(where, row, seen, min_languages))
    if dataset is None or not len(dataset):
        raise BadInput(f"'{spec}' holds no rows")
    return check_table(dataset, label, min_languages).with_transform(nested_rows)


def nested_rows(batch):
    """load_rows' format transform: flat columns -> one {'id', 'query', 'passage'} per row."""
    langs = row_languages(batch)
    held = [[lang for lang in langs if batch[f"query_{lang}"][i] is not None] for i in range(len(batch["id"]))]
    nest = lambda side: [{lang: batch[f"{side}_{lang}"][i] for lang in row} for i, row in enumerate(held)]
    return {"id": [str(value) for value in batch["id"]], "query": nest("query"), "passage": nest("passage")}


def subset(rows, indices):
    """rows[i] for i in indices (positions in rows, which may be a view itself), as a view on the same table."""
    return rows.select(indices, keep_in_memory=True)  # in memory: an index, not a file in the cache per view


def held_languages(rows):
    """{lang: (N,) bool}: whether each row holds the language (its query is not null). Cheap on load_rows'
    result (a null mask); on a view, datasets copies the query columns first."""
    table = rows.with_format("arrow")
    return {lang: table[f"query_{lang}"].is_valid().to_numpy() for lang in row_languages(rows.column_names)}


def common_languages(rows):
    return [lang for lang, held in held_languages(rows).items() if held.all()]


def require_languages(rows, languages, spec):
    """Stage 2 draws any language for any row: every row must hold all of them, and cross-lingual pairs need two."""
    if len(languages) < 2:
        raise BadInput(f"'{spec}' holds fewer than two languages common to all rows ({languages}); cross-lingual "
                       "pairs need two")  # fmt: skip
    held = held_languages(rows)
    lacking = np.stack([~held.get(lang, np.zeros(len(rows), dtype=bool)) for lang in languages], axis=1)  # (N, L)
    if len(bad := np.flatnonzero(lacking.any(1))):
        missing = ", ".join(lang for lang, lacked in zip(languages, lacking[bad[0]]) if lacked)
        raise BadInput(f"row '{rows[int(bad[0])]['id']}' of '{spec}' lacks {missing}; every row needs all of "
                       f"--languages {' '.join(languages)}")  # fmt: skip


def language_pairs(n, languages, seed, epoch, same_language=False):
    """(X, Y) of each of an epoch's n examples: the P = L(L-1) ordered pairs X != Y, shuffled by (seed, epoch) and
    cycled, each floor(n/P) or ceil(n/P) times; same_language (the monolingual baseline): X = Y, drawn uniformly."""
    rng = random.Random(seed * 1_000_003 + epoch + 7)
    if same_language:
        return [(lang, lang) for lang in (rng.choice(languages) for _ in range(n))]
    ordered = [(x, y) for x in languages for y in languages if x != y]
    rng.shuffle(ordered)
    return [ordered[k % len(ordered)] for k in range(n)]


def passage_languages(n, languages, seed, epoch):
    """LaKDA's passage language Z of an epoch's n examples, each language floor(n/L) or ceil(n/L) times, shuffled by its
    own (seed, epoch) stream apart from the query pairs: any language, the query's own included, as the authors' do."""
    rng = random.Random(seed * 1_000_003 + epoch + 11)
    cycle = list(languages)
    rng.shuffle(cycle)
    out = [cycle[k % len(cycle)] for k in range(n)]  # balanced ...
    rng.shuffle(out)  # ... and unrelated to position, hence to the query pairs' cycle
    return out


# ---------------------------------------------------------------------------
# Command line


def build_parser():
    # fmt: off
    parser = Parser(__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
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
    """prepare-mmarco: each query of the id triples (qid, positive pid, negative pid), its first positive passage."""
    args = build_parser().parse_args(argv)

    def read_tsv_columns(path, columns):  # (where, the first `columns` fields) of each line of ids and text
        for where, line in text_lines(path):
            if len(fields := line.split("\t")) < columns:
                raise BadInput(f"{where}: expected {columns} tab-separated columns, found {len(fields)}")
            yield where, fields[:columns]

    for flag, specs in (("--queries", args.queries), ("--collection", args.collection)):
        if not all("=" in spec for spec in specs):
            raise BadInput(f"{flag} takes LANG=FILE items, e.g. {flag} de=german_file.tsv; got {' '.join(specs)}")
    queries, collections = (dict(spec.split("=", 1) for spec in specs) for specs in (args.queries, args.collection))
    if sorted(queries) != sorted(collections):
        raise BadInput(f"--queries has languages {sorted(queries)} but --collection has {sorted(collections)}; "
                       "give both for each language")  # fmt: skip
    if (out := Path(args.out)).exists():
        raise BadInput(f"--out '{args.out}' exists; choose another name or remove it")
    positives = {}
    for _, (qid, pid, _) in read_tsv_columns(args.triples, 3):
        positives.setdefault(qid, pid)
        if args.max_rows and len(positives) >= args.max_rows:
            break
    needed = set(positives.values())  # only these passages are held, one language at a time
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
        raise BadInput(f"no query in {args.triples} has a query and a passage in every language of {sorted(queries)}")
    # written whole under a fresh name, then renamed: never half a file under --out, nor a user's file overwritten
    tmp = out.with_name(f".{out.name}.{uuid.uuid4().hex[:12]}.tmp")
    if out.suffix == ".parquet":
        pq.write_table(pa.Table.from_pylist(complete), tmp)
    else:
        with open(tmp, "w", encoding="utf-8") as f:
            f.writelines(json.dumps(row, ensure_ascii=False) + "\n" for row in complete)
    os.replace(tmp, out)
    print(f"wrote {len(complete)} rows in {len(queries)} languages to {args.out} "
          f"({len(rows) - len(complete)} queries lacked a language and were left out)")  # fmt: skip


if __name__ == "__main__":
    entry_point(main)
