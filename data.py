"""
Data for the three scripts: reading, filtering, sampling, collating. Nothing here
touches a model; everything is seeded and deterministic.

Two kinds of source:

- Parallel sentences (stage 1): rows with columns `english`, `non_english`, from a
  Hugging Face dataset in the `sentence-transformers/parallel-sentences-*` layout
  (`sentence-transformers/parallel-sentences-opus-100:en-de`), or from local
  `.jsonl`, `.tsv`, `.tsv.gz` or `.parquet` files. A source is tagged with its
  language as `de=path`; without a tag the language is read from an `en-xx` in
  the file or config name.
- Aligned retrieval rows (stage 2, evaluation, and stage 1 too): one row per query,
  columns `id`, `query_<lang>`, `passage_<lang>` for every language it holds; the
  demo data (data/demo/) is in this layout. Given as a parallel source, every
  (English, X) version of every query and passage becomes a parallel pair.

Run `python data.py stats SOURCE...` to see what a source yields after filtering.
"""

import argparse
import gzip
import json
import random
import re
import sys
from collections import Counter, namedtuple
from pathlib import Path

LOCAL_SUFFIXES = (".jsonl", ".tsv", ".tsv.gz", ".parquet")
ROW_COLUMN = re.compile(r"^(query|passage)_([a-z]{2,3}(?:[-_][A-Za-z]+)?)$")

# One parallel example: the student embeds `text` (in `lang`), the teacher `english`.
Pair = namedtuple("Pair", ["lang", "english", "text"])


class BadInput(ValueError):
    """Input the user can fix: the message names the file, line or argument and what was expected."""


# ---------------------------------------------------------------------------
# Reading records


def is_local(location):
    return location.endswith(LOCAL_SUFFIXES) or Path(location).exists()


def read_records(location, config=None):
    """Yield (where, record) for each row of a local file or hub dataset.

    `where` is "file:line" (or "dataset row N") for error messages; records are dicts.
    """
    if not is_local(location):
        yield from read_hub_dataset(location, config)
        return
    path = Path(location)
    if not path.is_file():
        raise BadInput(f"data file '{path}' does not exist (expected a .jsonl, .tsv, .tsv.gz or .parquet file or a hub dataset id)")
    if path.name.endswith(".parquet"):
        yield from read_parquet(path)
        return
    opener = gzip.open if path.name.endswith(".gz") else open
    is_tsv = ".tsv" in path.name
    header = None
    try:
        with opener(path, "rb") as f:
            # Decode line by line (not the whole stream) so a bad byte names its line.
            for number, raw in enumerate(f, 1):
                where = f"{path}:{number}"
                try:
                    line = raw.decode("utf-8").rstrip("\r\n")
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
                        raise BadInput(f"{where}: expected 2 tab-separated columns (english, non_english), found {len(columns)}")
                    yield where, dict(zip(header or ["english", "non_english"], columns))
                    continue
                try:
                    record = json.loads(line)
                except json.JSONDecodeError as error:
                    raise BadInput(f"{where}: not valid JSON ({error.msg}); a truncated file ends like this") from None
                if not isinstance(record, dict):
                    raise BadInput(f"{where}: expected a JSON object, found {type(record).__name__}")
                yield where, record
    except (OSError, EOFError) as error:  # unreadable, or a truncated .gz
        raise BadInput(f"cannot read '{path}': {error}") from None


def read_parquet(path):
    import pyarrow.parquet as pq  # installed with datasets

    try:
        table = pq.read_table(path)
    except Exception as error:  # pyarrow raises several kinds for a bad file
        raise BadInput(f"cannot read parquet file '{path}': {error}") from None
    for number, record in enumerate(table.to_pylist(), 1):
        yield f"{path} row {number}", record


def read_hub_dataset(name, config):
    import datasets

    try:
        dataset = datasets.load_dataset(name, config, split="train")
    except Exception as error:  # offline, unknown id, unknown config: all one message
        first_line = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise BadInput(
            f"cannot load dataset '{name}'{' config ' + repr(config) if config else ''} "
            f"(not a local file, and the hub needs a network or a cached copy): {first_line}"
        ) from None
    for number, record in enumerate(dataset, 1):
        yield f"{name} row {number}", record


def parse_source(spec):
    """'de=path', 'path', 'hub/id:en-de' -> (lang or None, location, config or None)."""
    lang = None
    if "=" in spec.split("/")[0]:
        lang, spec = spec.split("=", 1)
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


# ---------------------------------------------------------------------------
# Parallel sentences (stage 1)


def read_parallel_source(spec):
    """Yield Pair(lang, english, text) from one source spec, unfiltered."""
    lang, location, config = parse_source(spec)
    for where, record in read_records(location, config):
        if "english" in record or "non_english" in record:
            for column in ("english", "non_english"):
                if not isinstance(record.get(column), str):
                    raise BadInput(f"{where}: expected a string column '{column}'")
            if lang is None:
                raise BadInput(f"cannot tell the language of '{spec}': name it as LANG={spec} (e.g. de={spec})")
            yield Pair(lang, record["english"], record["non_english"])
            continue
        langs = row_languages(record)
        if "en" not in langs or len(langs) < 2:
            raise BadInput(
                f"{where}: expected columns 'english' and 'non_english', or aligned columns "
                f"query_<lang>/passage_<lang> including English and another language; found {sorted(record)}"
            )
        for side in ("query", "passage"):
            for other in langs:
                if other != "en" and isinstance(record.get(f"{side}_{other}"), str):
                    yield Pair(other, record[f"{side}_en"], record[f"{side}_{other}"])


def keep_pair(pair, min_chars, max_chars, max_ratio):
    """The paper's filters: each side min..max characters, length ratio at most max_ratio."""
    a, b = len(pair.english), len(pair.text)
    if not (min_chars <= a <= max_chars and min_chars <= b <= max_chars):
        return "length"
    if max(a, b) / max(min(a, b), 1) > max_ratio:
        return "ratio"
    return None


def load_parallel(sources, min_chars=10, max_chars=512, max_ratio=3.0, max_per_language=None, identity_pairs=True, seed=0):
    """Read, filter, de-duplicate and cap parallel sentences from several sources.

    Returns (pairs, stats): pairs is a list of Pair, shuffled with the seed; stats
    counts what each filter dropped. Per language the English side is
    de-duplicated (first occurrence kept) and a seeded sample of at most
    max_per_language pairs is kept. With identity_pairs, each unique English
    sentence is also paired with itself (lang 'en'), capped the same way.
    """
    rng = random.Random(seed)
    by_lang, seen = {}, set()
    stats = Counter()
    for spec in sources:
        for pair in read_parallel_source(spec):
            stats["read"] += 1
            reason = keep_pair(pair, min_chars, max_chars, max_ratio)
            if reason:
                stats[f"dropped_{reason}"] += 1
                continue
            if (pair.lang, pair.english) in seen:
                stats["dropped_duplicate"] += 1
                continue
            seen.add((pair.lang, pair.english))
            by_lang.setdefault(pair.lang, []).append(pair)
    if identity_pairs:
        english = sorted({pair.english for pairs in by_lang.values() for pair in pairs if pair.lang != "en"})
        by_lang.setdefault("en", []).extend(Pair("en", text, text) for text in english if ("en", text) not in seen)
    out = []
    for lang in sorted(by_lang):
        pairs = by_lang[lang]
        if max_per_language and len(pairs) > max_per_language:
            stats["dropped_cap"] += len(pairs) - max_per_language
            pairs = rng.sample(pairs, max_per_language)
        stats[f"lang_{lang}"] = len(pairs)
        out.extend(pairs)
    if not out:
        raise BadInput(f"no parallel pairs left after filtering {', '.join(sources)} ({dict(stats)}); check the files and --min-chars/--max-chars/--max-length-ratio")
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


def load_rows(spec, min_languages=2):
    """Aligned rows -> list of {'id', 'query': {lang: text}, 'passage': {lang: text}}.

    Only languages with both a query and a passage count; a row holding fewer
    than min_languages is an error, since it cannot make a cross-lingual pair.
    """
    _, location, config = parse_source(spec)
    rows = []
    for where, record in read_records(location, config):
        langs = row_languages(record)
        if len(langs) < min_languages:
            raise BadInput(f"{where}: expected query_<lang> and passage_<lang> columns for at least {min_languages} languages, found {langs or 'none'}")
        texts = {side: {lang: record[f"{side}_{lang}"] for lang in langs} for side in ("query", "passage")}
        for side, by_lang in texts.items():
            for lang, text in by_lang.items():
                if not isinstance(text, str) or not text.strip():
                    raise BadInput(f"{where}: {side}_{lang} must be a non-empty string")
        rows.append({"id": str(record.get("id", where)), **texts})
    if not rows:
        raise BadInput(f"'{spec}' holds no rows")
    return rows


# ---------------------------------------------------------------------------
# Command line: inspect a source


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    stats_parser = commands.add_parser("stats", help="count the parallel pairs a source yields after the paper's filters")
    stats_parser.add_argument("sources", nargs="+", help="parallel sources, as for distill.py --data")
    args = parser.parse_args(argv)
    if args.command == "stats":
        pairs, stats = load_parallel(args.sources)
        print(json.dumps(dict(stats), indent=2))
        print(f"{len(pairs)} pairs")


if __name__ == "__main__":
    try:
        main()
    except BadInput as error:
        sys.exit(f"error: {error}")
