"""data.py: the paper's filters, caps, identity pairs, dev split, determinism and bad input."""

import gzip
import json
import zlib
from pathlib import Path

import pyarrow as pa
import pytest
from conftest import ROWS_LANGUAGES, write_rows

import data
from data import BadInput, Pair


def write_tsv(path, pairs, header=False):
    text = ("english\tnon_english\n" if header else "") + "".join(f"{a}\t{b}\n" for a, b in pairs)
    if str(path).endswith(".gz"):
        with gzip.open(path, "wt", encoding="utf-8") as f:
            f.write(text)
    else:
        path.write_text(text, encoding="utf-8")
    return str(path)


GOOD = [
    ("the cat sleeps on the mat", "die Katze schläft auf der Matte"),
    ("a long walk in the park", "ein langer Spaziergang im Park"),
]


def test_filters_drop_short_long_and_unbalanced_pairs(tmp_path):
    rows = GOOD + [
        ("too short", "zu kurz"),  # 9 and 7 characters: under 10
        ("x" * 513, "y" * 400),  # English side over 512
        ("a sentence of quite a reasonable length, written here", "kurz, aber"),  # 53 / 10 characters: ratio over 3
    ]
    source = write_tsv(tmp_path / "en-de.tsv", rows)
    pairs, stats = data.load_parallel([source], identity_pairs=False)
    assert sorted(pair.english for pair in pairs) == sorted(a for a, _ in GOOD)
    assert stats["dropped_length"] == 2 and stats["dropped_ratio"] == 1
    assert all(pair.lang == "de" for pair in pairs)  # read from the file name en-de


def test_ratio_filter_threshold_is_inclusive_at_three(tmp_path):
    """30 vs 10 characters is a ratio of exactly 3: kept; 31 vs 10 is dropped."""
    keep = Pair("de", "a" * 30, "b" * 10)
    drop = Pair("de", "a" * 31, "b" * 10)
    assert data.keep_pair(keep, 10, 512, 3.0) is None
    assert data.keep_pair(drop, 10, 512, 3.0) == "ratio"


def test_english_side_is_deduplicated_per_language(tmp_path):
    rows = [GOOD[0], (GOOD[0][0], "eine andere Übersetzung hier"), GOOD[1]]
    pairs, stats = data.load_parallel([write_tsv(tmp_path / "en-de.tsv", rows)], identity_pairs=False)
    assert len(pairs) == 2 and stats["dropped_duplicate"] == 1
    assert [p.text for p in pairs if p.english == GOOD[0][0]] == [GOOD[0][1]]  # the first occurrence is kept


def test_identity_pairs_pair_each_english_sentence_with_itself(tmp_path):
    de = write_tsv(tmp_path / "en-de.tsv", GOOD)
    fr = write_tsv(tmp_path / "en-fr.tsv.gz", [(GOOD[0][0], "le chat dort sur le tapis")])
    pairs, stats = data.load_parallel([de, fr])
    identity = [pair for pair in pairs if pair.lang == "en"]
    assert sorted(pair.english for pair in identity) == sorted(a for a, _ in GOOD)  # unique English, once each
    assert all(pair.english == pair.text for pair in identity)
    assert stats["lang_de"] == 2 and stats["lang_fr"] == 1 and stats["lang_en"] == 2


def test_per_language_cap_is_a_seeded_sample(tmp_path):
    rows = [(f"english sentence number {i}", f"deutscher Satz Nummer {i}") for i in range(50)]
    source = write_tsv(tmp_path / "en-de.tsv", rows, header=True)
    a, stats = data.load_parallel([source], max_per_language=10, identity_pairs=False, seed=1)
    b, _ = data.load_parallel([source], max_per_language=10, identity_pairs=False, seed=1)
    c, _ = data.load_parallel([source], max_per_language=10, identity_pairs=False, seed=2)
    assert len(a) == 10 and stats["dropped_cap"] == 40
    assert a == b  # same seed, same sample in the same order
    assert set(a) != set(c)  # another seed samples differently
    assert {p.english for p in a} != {f"english sentence number {i}" for i in range(10)}  # not just the file's head


def test_aligned_rows_expand_into_parallel_pairs(tmp_path):
    source = write_rows(tmp_path / "rows.jsonl", n=6)
    pairs, stats = data.load_parallel([source], identity_pairs=False)
    others = [lang for lang in ROWS_LANGUAGES if lang != "en"]
    assert len(pairs) == 6 * 2 * len(others)  # query and passage, each non-English language
    assert {pair.lang for pair in pairs} == set(others)


def test_jsonl_and_parquet_parallel_sources(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    jsonl = tmp_path / "pairs.jsonl"
    jsonl.write_text("".join(json.dumps({"english": a, "non_english": b}) + "\n" for a, b in GOOD))
    pq.write_table(
        pa.table(
            {
                "english": [a for a, _ in GOOD],
                "non_english": ["le chat dort sur le tapis", "une longue promenade au parc"],
            }
        ),
        tmp_path / "p.parquet",
    )
    pairs, _ = data.load_parallel([f"de={jsonl}", f"fr={tmp_path / 'p.parquet'}"], identity_pairs=False)
    assert sorted({pair.lang for pair in pairs}) == ["de", "fr"] and len(pairs) == 4


def test_dev_split_keeps_translations_of_a_sentence_together(tmp_path):
    pairs, _ = data.load_parallel([write_rows(tmp_path / "rows.jsonl", n=20)])
    train, dev = data.split_dev(pairs, dev_size=5, seed=0)
    assert len(train) + len(dev) == len(pairs)
    assert len({pair.english for pair in dev}) == 5
    assert not {pair.english for pair in dev} & {pair.english for pair in train}
    assert data.split_dev(pairs, 5, seed=0) == (train, dev)


def test_epoch_order_is_a_deterministic_permutation():
    a = data.epoch_order(100, seed=3, epoch=0)
    assert sorted(a) == list(range(100))
    assert a == data.epoch_order(100, seed=3, epoch=0)
    assert a != data.epoch_order(100, seed=3, epoch=1)
    assert [len(batch) for batch in data.batches(a, 32)] == [32, 32, 32]  # ragged tail dropped


def test_load_rows_reads_languages_and_ids(tmp_path):
    rows = data.load_rows(write_rows(tmp_path / "rows.jsonl", n=3))
    assert [row["id"] for row in rows] == ["r0", "r1", "r2"]
    assert sorted(rows[0]["query"]) == sorted(ROWS_LANGUAGES)


# ---------------------------------------------------------------------------
# Bad input: one sentence naming the file and line


def test_missing_file(tmp_path):
    with pytest.raises(BadInput, match="does not exist"):
        data.load_parallel([str(tmp_path / "nope.tsv")])


def test_jsonl_line_that_is_not_json_names_file_and_line(tmp_path):
    path = tmp_path / "en-de.jsonl"
    path.write_text(json.dumps({"english": GOOD[0][0], "non_english": GOOD[0][1]}) + "\n{not json\n")
    with pytest.raises(BadInput, match=r"en-de.jsonl:2: not valid JSON"):
        data.load_parallel([str(path)])


def test_jsonl_line_missing_a_column(tmp_path):
    path = tmp_path / "en-de.jsonl"
    path.write_text(json.dumps({"english": GOOD[0][0]}) + "\n")
    with pytest.raises(BadInput, match=r"en-de.jsonl:1: expected a string column 'non_english'"):
        data.load_parallel([str(path)])


def test_tsv_with_wrong_column_count(tmp_path):
    path = tmp_path / "en-de.tsv"
    path.write_text("one\ttwo\tthree\n")
    with pytest.raises(BadInput, match=r"en-de.tsv:1: expected 2 tab-separated columns"):
        data.load_parallel([str(path)])


def test_tsv_lines_are_read_as_written(tmp_path):
    """Quotes, "NA" and "null" are text, not CSV quoting or missing values; CRLF line ends, blank
    lines and a header line are no pairs; a line with one field (or three) is refused by number."""
    path = tmp_path / "en-de.tsv"
    lines = [
        "english\tnon_english",
        'he said "NA" twice\t"null", sagte er zweimal',
        "",
        "   ",
        GOOD[0][0] + "\t" + GOOD[0][1],
    ]
    path.write_bytes("\r\n".join(lines).encode() + b"\r\n")
    pairs, stats = data.load_parallel([str(path)], identity_pairs=False)
    assert sorted(pairs) == sorted([Pair("de", 'he said "NA" twice', '"null", sagte er zweimal'), Pair("de", *GOOD[0])])
    assert stats["read"] == 2
    path.write_text(f"{GOOD[0][0]}\t{GOOD[0][1]}\n\nonly one field\n")
    with pytest.raises(
        BadInput, match=r"en-de.tsv:3: expected 2 tab-separated columns \(english, non_english\), found 1"
    ):
        data.load_parallel([str(path)])


def test_rows_without_ids_are_named_by_position(tmp_path):
    path = Path(write_rows(tmp_path / "rows.jsonl", n=3))
    path.write_text(
        "".join(
            line.replace('"id": "r' + str(i) + '", ', "") + "\n" for i, line in enumerate(path.read_text().splitlines())
        )
    )
    assert [row["id"] for row in data.load_rows(str(path))] == [f"{path}:{i}" for i in (1, 2, 3)]


def test_empty_after_filtering(tmp_path):
    source = write_tsv(tmp_path / "en-de.tsv", [("short", "kurz")])
    with pytest.raises(BadInput, match="no parallel pairs left after filtering"):
        data.load_parallel([source])


def test_untagged_language(tmp_path):
    source = write_tsv(tmp_path / "pairs.tsv", GOOD)
    with pytest.raises(BadInput, match="cannot tell the language"):
        data.load_parallel([source])


def test_not_utf8(tmp_path):
    path = tmp_path / "en-de.tsv"
    path.write_bytes("the cat sleeps on the mat\tdie Katze\n".encode() + b"\xff\xfe bad\tbytes\n")
    with pytest.raises(BadInput, match=r"en-de.tsv:2: not UTF-8"):
        data.load_parallel([str(path)])
    rows = Path(write_rows(tmp_path / "rows.jsonl", n=3))  # inside a JSON string, which pyarrow lets through
    rows.write_bytes(rows.read_bytes().replace(b"what about", b"what \xff about", 1))
    with pytest.raises(BadInput, match=r"rows.jsonl:1: not UTF-8"):
        data.load_rows(str(rows))


def test_unreachable_hub_dataset_is_one_sentence():
    """HF_DATASETS_OFFLINE=1 (conftest): an id that is not cached cannot load."""
    with pytest.raises(BadInput, match="cannot load dataset 'nobody/no-such-dataset'"):
        data.load_parallel(["nobody/no-such-dataset:en-de"])


def test_rows_with_one_language(tmp_path):
    path = tmp_path / "rows.jsonl"
    path.write_text(json.dumps({"id": "a", "query_en": "what is it", "passage_en": "it is a thing"}) + "\n")
    with pytest.raises(BadInput, match="at least 2 languages"):
        data.load_rows(str(path))


def test_prepare_mmarco_builds_aligned_rows(tmp_path):
    """Triples of ids plus per-language query and passage files -> one row per query
    with its first positive passage in every language; a query missing in one
    language is left out."""
    (tmp_path / "triples.tsv").write_text("q1\tp1\tp9\nq1\tp2\tp9\nq2\tp3\tp9\nq3\tp1\tp9\n")
    for lang, word in (("en", "what"), ("de", "was")):
        queries = f"q1\t{word} one\nq2\t{word} two\n" + ("q3\twhat three\n" if lang == "en" else "")
        (tmp_path / f"q_{lang}.tsv").write_text(queries)
        (tmp_path / f"c_{lang}.tsv").write_text(
            f"p1\t{lang} passage one\np2\t{lang} passage two\np3\t{lang} passage three\n"
        )
    (tmp_path / "rows.jsonl.tmp").write_text("the user's own")  # a name a write-then-rename might have used
    data.main(
        [
            "prepare-mmarco",
            "--triples",
            str(tmp_path / "triples.tsv"),
            "--queries",
            f"en={tmp_path / 'q_en.tsv'}",
            f"de={tmp_path / 'q_de.tsv'}",
            "--collection",
            f"en={tmp_path / 'c_en.tsv'}",
            f"de={tmp_path / 'c_de.tsv'}",
            "--out",
            str(tmp_path / "rows.jsonl"),
        ]
    )
    rows = data.load_rows(str(tmp_path / "rows.jsonl"))
    assert [row["id"] for row in rows] == ["q1", "q2"]  # q3 has no German query
    assert rows[0]["passage"] == {"en": "en passage one", "de": "de passage one"}  # the first positive, p1
    assert rows[1]["query"]["de"] == "was two"
    assert (tmp_path / "rows.jsonl.tmp").read_text() == "the user's own"
    with pytest.raises(BadInput, match="exists"):  # never overwrites
        data.main(
            [
                "prepare-mmarco",
                "--triples",
                str(tmp_path / "triples.tsv"),
                "--queries",
                f"en={tmp_path / 'q_en.tsv'}",
                "--collection",
                f"en={tmp_path / 'c_en.tsv'}",
                "--out",
                str(tmp_path / "rows.jsonl"),
            ]
        )
    # a collection line that is not UTF-8 is named by file and line, and leaves no output behind
    with open(tmp_path / "c_de.tsv", "ab") as f:
        f.write(b"p4\t\xff\xfe broken\n")
    with pytest.raises(BadInput, match=r"c_de.tsv:4: not UTF-8 text"):
        data.main(
            [
                "prepare-mmarco",
                "--triples",
                str(tmp_path / "triples.tsv"),
                "--queries",
                f"en={tmp_path / 'q_en.tsv'}",
                f"de={tmp_path / 'q_de.tsv'}",
                "--collection",
                f"en={tmp_path / 'c_en.tsv'}",
                f"de={tmp_path / 'c_de.tsv'}",
                "--out",
                str(tmp_path / "new.jsonl"),
            ]
        )
    assert not [path.name for path in tmp_path.iterdir() if "new.jsonl" in path.name]


def test_byte_order_mark_at_the_start_of_a_jsonl_file_is_read(tmp_path):
    """Editors on Windows write a BOM (EF BB BF) before the first record; it is not part of the JSON."""
    text = Path(write_rows(tmp_path / "rows.jsonl", n=3)).read_text(encoding="utf-8")
    (tmp_path / "bom.jsonl").write_bytes(b"\xef\xbb\xbf" + text.encode("utf-8"))
    assert [row["id"] for row in data.load_rows(str(tmp_path / "bom.jsonl"))] == ["r0", "r1", "r2"]
    pairs = [json.dumps({"english": a, "non_english": b}) for a, b in GOOD]
    (tmp_path / "en-de.jsonl").write_bytes(b"\xef\xbb\xbf" + "\n".join(pairs).encode("utf-8"))
    loaded, _ = data.load_parallel([str(tmp_path / "en-de.jsonl")], identity_pairs=False)
    assert sorted(pair.english for pair in loaded) == sorted(a for a, _ in GOOD)


def test_directory_given_as_a_data_file_is_called_a_directory(tmp_path):
    with pytest.raises(BadInput, match=rf"'{tmp_path}' is a directory; expected a .jsonl"):
        data.load_parallel([str(tmp_path)])
    with pytest.raises(BadInput, match="is a directory"):
        data.load_rows(str(tmp_path))


def test_corrupt_gzip_data_is_one_sentence(tmp_path):
    """A .tsv.gz whose deflate stream is damaged (zlib.error, not an OSError) names the file."""
    lines = "".join(f"english sentence number {i}\tdeutscher Satz Nummer {i}\n" for i in range(2000)).encode()
    good = gzip.compress(lines)
    for offset in range(100, len(good) - 20, 10):  # find damage that zlib itself reports (most only fail the CRC)
        bad = bytearray(good)
        bad[offset : offset + 8] = b"\xff" * 8
        try:
            gzip.decompress(bytes(bad))
        except zlib.error:
            break
        except Exception:
            continue
    else:
        pytest.skip("no corruption made zlib fail")
    (tmp_path / "en-de.tsv.gz").write_bytes(bytes(bad))
    with pytest.raises(BadInput, match=r"cannot read '.*en-de.tsv.gz': its gzip data is corrupt after line \d+"):
        data.load_parallel([str(tmp_path / "en-de.tsv.gz")])


def test_empty_language_tag_is_refused(tmp_path):
    source = write_tsv(tmp_path / "pairs.tsv", GOOD)
    with pytest.raises(BadInput, match=r"'=.*pairs.tsv' names no language before '='"):
        data.load_parallel([f"={source}"])


@pytest.mark.parametrize("value, found", [(5, "int"), (None, "null"), ("  ", "'  '")])
def test_stage_1_refuses_aligned_rows_whose_texts_are_not_text(tmp_path, value, found):
    """An aligned row with a number or a null where a text belongs is a broken file: refused
    with its line, never dropped quietly (nor crashing later in the length filter)."""
    path = Path(write_rows(tmp_path / "rows.jsonl", n=3))
    lines = path.read_text().splitlines()
    row = json.loads(lines[1])
    row["query_de"] = value
    lines[1] = json.dumps(row)
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(BadInput, match=rf"rows.jsonl:2: query_de must be a non-empty string, found {found}"):
        data.load_parallel([str(path)])
    with pytest.raises(BadInput, match=r"rows.jsonl:2: query_de must be a non-empty string"):
        data.load_rows(str(path))


def test_rows_sharing_an_id_are_refused(tmp_path):
    path = Path(write_rows(tmp_path / "rows.jsonl", n=3))
    lines = path.read_text().splitlines()
    lines[2] = lines[2].replace('"id": "r2"', '"id": "r0"')
    path.write_text("\n".join(lines) + "\n")
    message = r"rows.jsonl:3: id 'r0' is used twice \(first at .*rows.jsonl:1\)"
    with pytest.raises(BadInput, match=message):
        data.load_rows(str(path))
    with pytest.raises(BadInput, match=message):
        data.load_parallel([str(path)])


# ---------------------------------------------------------------------------
# Stage 1 as the authors built it: eight collections, English de-duplicated across
# all of them, the first pairs per language


def english_sentences(prefix, numbers):
    return [(f"{prefix} english sentence number {i}", f"{prefix} translated sentence {i}") for i in numbers]


def test_global_dedupe_gives_each_english_sentence_one_language(tmp_path):
    """de has English sentences 0-5, fr 3-8. Per language both keep all 6; across
    languages (fr read second) fr loses 3, 4 and 5 to de."""
    de = write_tsv(tmp_path / "en-de.tsv", english_sentences("a", range(0, 6)))
    fr = write_tsv(tmp_path / "en-fr.tsv", english_sentences("a", range(3, 9)))
    per_language, stats = data.load_parallel([de, fr], identity_pairs=False)
    assert stats["lang_de"] == 6 and stats["lang_fr"] == 6 and stats["dropped_duplicate"] == 0
    across, stats = data.load_parallel([de, fr], identity_pairs=False, dedupe="global")
    assert stats["lang_de"] == 6 and stats["lang_fr"] == 3 and stats["dropped_duplicate"] == 3
    assert {p.english for p in across if p.lang == "fr"} == {a for a, _ in english_sentences("a", range(6, 9))}
    assert len({p.english for p in across}) == len(across)  # one English sentence, one language


def test_first_pairs_per_language_in_source_order(tmp_path):
    """--sample first with a cap of 4: de takes source 1's four pairs (its fifth is over
    the cap, which ends that source) and none of source 2, which is not read past its
    first pair; the identity pairs are the first 4 English sentences kept, in order."""
    one = write_tsv(tmp_path / "one-en-de.tsv", english_sentences("one", range(6)))
    two = write_tsv(tmp_path / "two-en-de.tsv", english_sentences("two", range(6)))
    fr = write_tsv(tmp_path / "en-fr.tsv", english_sentences("fr", range(2)))
    pairs, stats = data.load_parallel([one, two, fr], max_per_language=4, sample="first", dedupe="global")
    german = [p.english for p in pairs if p.lang == "de"]
    assert sorted(german) == [a for a, _ in english_sentences("one", range(4))]
    assert stats["read"] == 5 + 1 + 2 and stats["dropped_cap"] == 2
    identity = sorted(p.english for p in pairs if p.lang == "en")
    assert identity == sorted(german)  # the first four kept: all German, fr came later
    again, _ = data.load_parallel([one, two, fr], max_per_language=4, sample="first", dedupe="global", seed=5)
    assert sorted(again) == sorted(pairs)  # "first" does not depend on the seed


def write_collection(root, corpus, lang, pairs):
    """One config of a collection in the hub's layout: ROOT/parallel-sentences-<corpus>/en-<lang>/*.parquet."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    folder = root / f"parallel-sentences-{corpus}" / f"en-{lang}"
    folder.mkdir(parents=True, exist_ok=True)
    table = pa.table({"english": [a for a, _ in pairs], "non_english": [b for _, b in pairs]})
    pq.write_table(table, folder / "train-00000-of-00001.parquet")


def test_local_collections_are_read_with_the_authors_rules(tmp_path, capsys):
    """Eight collection folders, three holding data; parallel_sentences_sources and load_parallel
    read en-de, en-zh for each in the preset's corpus order with the authors' rules
    (global de-duplication, first 5 per language), skipping the configs a collection lacks:
      europarl en-de: 0-3 (4 kept)     global-voices en-de: 2-4 (2, 3 taken; 4 kept: de full)
      talks en-zh: 0-2 and 9 (0-2 taken by de; 9 kept) -> de 5, zh 1, en 5 (identity: the first five)."""
    for corpus in data.PARALLEL_CORPORA:
        (tmp_path / f"parallel-sentences-{corpus}").mkdir()
    write_collection(tmp_path, "europarl", "de", english_sentences("s", range(0, 4)))
    write_collection(tmp_path, "global-voices", "de", english_sentences("s", range(2, 5)))
    chinese = "这是一个足够长的中文句子"  # 12 characters: within the length ratio of its English side
    write_collection(tmp_path, "talks", "zh", [(a, chinese) for a, _ in english_sentences("s", [0, 1, 2, 9])])
    sources = data.parallel_sentences_sources(["de", "zh"], str(tmp_path))
    _, stats = data.load_parallel(sources, max_per_language=5, dedupe="global", sample="first", skip_missing=True)
    assert (stats["lang_de"], stats["lang_zh"], stats["lang_en"]) == (5, 1, 5)
    assert stats["dropped_duplicate"] == 2 + 3
    assert len(stats["missing_sources"]) == 8 * 2 - 3 and "skipped 13 source(s)" in capsys.readouterr().err
    with pytest.raises(BadInput, match=r"has no config 'en-zh' \(it has en-de\).*--skip-missing-configs"):
        data.load_parallel([f"{tmp_path}/parallel-sentences-europarl:en-zh"])


def test_a_missing_hub_config_is_told_apart_from_an_unreachable_dataset(tmp_path, monkeypatch):
    """The hub lists a dataset's configs when one is missing: only that is skipped."""
    import datasets

    def missing(name, config=None, split=None, **options):
        if name != "owner/corpus":  # the local file
            return real(name, config, split=split, **options)
        raise ValueError(f"BuilderConfig '{config}' not found. Available: ['en-de', 'en-fr']")

    real = datasets.load_dataset
    monkeypatch.setattr(datasets, "load_dataset", missing)
    _, stats = data.load_parallel(["owner/corpus:en-ja", write_tsv(tmp_path / "en-de.tsv", GOOD)], skip_missing=True)
    assert stats["missing_sources"] == ["owner/corpus:en-ja"]

    def offline(name, config, split):
        raise ConnectionError("Couldn't reach 'owner/corpus' on the Hub (LocalEntryNotFoundError)")

    monkeypatch.setattr(datasets, "load_dataset", offline)
    with pytest.raises(BadInput, match="cannot load dataset 'owner/corpus' config 'en-ja'"):
        data.load_parallel(["owner/corpus:en-ja"], skip_missing=True)


def test_paper_preset_reads_the_eight_collections_with_the_authors_rules():
    import distill

    preset = distill.PRESETS["paper"]
    corpora = {spec.split(":")[0] for spec in preset["data"]}
    assert corpora == {f"sentence-transformers/parallel-sentences-{corpus}" for corpus in data.PARALLEL_CORPORA}
    assert {spec.split(":")[1] for spec in preset["data"]} == {f"en-{lang}" for lang in distill.PAPER_LANGUAGES}
    assert (preset["dedupe"], preset["sample"], preset["skip_missing_configs"]) == ("global", "first", True)


# ---------------------------------------------------------------------------
# Aligned rows as Arrow columns, converted once into datasets' cache and memory-mapped


def test_rows_view_languages_and_ragged_files(tmp_path):
    """A language first seen mid-file (row 9000, past the first Arrow batch) is absent
    from the rows before it; views pick rows by position; common_languages and
    require_languages see the whole view."""
    path = tmp_path / "rows.jsonl"
    with open(path, "w") as f:
        for i in range(9001):
            row = {"id": f"r{i}", "query_en": f"question {i}", "passage_en": f"answer {i}"}
            row.update({"query_de": f"Frage {i}", "passage_de": f"Antwort {i}"})
            if i >= 9000:
                row.update({"query_fr": f"question fr {i}", "passage_fr": f"réponse {i}"})
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
    rows = data.load_rows(str(path))
    assert len(rows) == 9001 and rows[-1]["passage"] == {
        "de": "Antwort 9000",
        "en": "answer 9000",
        "fr": "réponse 9000",
    }
    assert rows[3] == {
        "id": "r3",
        "query": {"de": "Frage 3", "en": "question 3"},
        "passage": {"de": "Antwort 3", "en": "answer 3"},
    }
    assert data.common_languages(rows) == ["de", "en"]
    view = data.subset(rows, [9000, 5, 9000])
    assert [row["id"] for row in view] == ["r9000", "r5", "r9000"] and view[1] == rows[5]
    assert data.common_languages(data.subset(rows, [9000])) == ["de", "en", "fr"]
    data.require_languages(data.subset(rows, [9000]), ["en", "fr"], "rows")
    with pytest.raises(BadInput, match=r"row 'r5' of 'rows' lacks fr; every row needs all of --languages en fr"):
        data.require_languages(view, ["en", "fr"], "rows")
    assert [row["id"] for row in data.subset(view, [2, 0])] == ["r9000", "r9000"]  # a view of a view


def test_rows_are_converted_once_then_memory_mapped(tmp_path, monkeypatch):
    """The first load converts a file into datasets' cache; a second maps that conversion without
    reading the source again, allocating next to nothing from Arrow's memory pool (its text stays
    in the page cache); rewriting the source makes a new conversion."""
    import datasets

    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "cache")
    source = write_rows(tmp_path / "rows.jsonl", n=300)
    first = data.load_rows(source)
    (arrow,) = [Path(f["filename"]) for f in first.cache_files]
    written = arrow.stat().st_mtime_ns
    before = pa.total_allocated_bytes()
    second = data.load_rows(source)
    assert pa.total_allocated_bytes() - before < Path(source).stat().st_size / 10
    assert [Path(f["filename"]) for f in second.cache_files] == [arrow] and arrow.stat().st_mtime_ns == written
    assert list(second) == list(first) and second[299]["id"] == "r299"
    write_rows(tmp_path / "rows.jsonl", n=10, seed=1)  # the file rewritten in place
    assert len(data.load_rows(source)) == 10


def test_a_bad_line_is_named_and_the_mended_file_then_loads(tmp_path):
    """A refused file leaves nothing that a later load would trust."""
    path = Path(write_rows(tmp_path / "rows.jsonl", n=20))
    good = path.read_text()
    path.write_text(good + "{broken\n")
    with pytest.raises(BadInput, match=r"rows.jsonl:21: not valid JSON"):
        data.load_rows(str(path))
    path.write_text(good)
    assert len(data.load_rows(str(path))) == 20


def test_processes_that_start_together_convert_once(tmp_path):
    """Two processes load the same file at once (as torchrun's ranks do): datasets' lock lets one
    convert it while the other waits, then both map the one conversion."""
    import os
    import subprocess
    import sys

    from conftest import ROOT

    source = write_rows(tmp_path / "rows.jsonl", n=2000)
    program = f"import data; rows = data.load_rows({source!r}); print(len(rows), rows[1999]['id'])"
    env = {**os.environ, "HF_DATASETS_CACHE": str(tmp_path / "cache")}
    runs = [
        subprocess.Popen(
            [sys.executable, "-c", program],
            cwd=ROOT,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(2)
    ]
    outputs = [run.communicate(timeout=120) for run in runs]
    assert [out for out, _ in outputs] == ["2000 r1999\n", "2000 r1999\n"], outputs
    assert len(list((tmp_path / "cache").rglob("*.arrow"))) == 1


def rows_parquet(tmp_path, n=6, change=None):
    """write_rows' rows as a parquet file, with change(table) -> table applied."""
    import pyarrow.parquet as pq

    records = [json.loads(line) for line in Path(write_rows(tmp_path / "rows.jsonl", n=n)).read_text().splitlines()]
    table = pa.Table.from_pylist(records)
    pq.write_table(change(table) if change else table, tmp_path / "rows.parquet", row_group_size=4)
    return str(tmp_path / "rows.parquet")


def test_parquet_rows_are_checked_column_by_column_with_the_same_result(tmp_path):
    """Parquet rows go through Arrow's column checks, JSONL rows through Python's: same rows,
    same pairs for stage 1 (row groups of 4, so batches and row numbers span several)."""
    parquet = rows_parquet(tmp_path)
    jsonl = str(tmp_path / "rows.jsonl")
    assert list(data.load_rows(parquet)) == list(data.load_rows(jsonl))
    assert data.load_parallel([parquet])[0] == data.load_parallel([jsonl])[0]


def replace_value(column, row, value):
    """A change for rows_parquet: value at row of column, or in every row when row is None
    (a number column, which a parquet file cannot mix with strings)."""

    def change(table):
        values = [value] * table.num_rows if row is None else table.column(column).to_pylist()
        values[row if row is not None else 0] = value
        index = table.schema.get_field_index(column)
        return table.set_column(index, column, pa.array(values, pa.int64() if isinstance(value, int) else pa.string()))

    return change


@pytest.mark.parametrize(
    "column, row, value, message",
    [
        ("query_de", 4, None, r"rows.parquet row 5: query_de must be a non-empty string, found null"),
        ("passage_ru", 5, " \t", r"rows.parquet row 6: passage_ru must be a non-empty string, found ' \\t'"),
        ("query_zh", None, 7, r"rows.parquet row 1: query_zh must be a non-empty string, found int"),
        ("id", 5, "r1", r"rows.parquet row 6: id 'r1' is used twice \(first at .*rows.parquet row 2\)"),
    ],
)
def test_bad_parquet_rows_are_named_by_row(tmp_path, column, row, value, message):
    path = rows_parquet(tmp_path, change=replace_value(column, row, value))
    with pytest.raises(BadInput, match=message):
        data.load_rows(path)


def test_language_tags_are_written_one_way(tmp_path):
    """Columns query_EN / passage_EN and query_de_DE read as en and de-de; --languages is written the same way;
    another column (query_type) is not a language; two columns of one language are refused."""
    row = {"id": "r", "query_EN": "a question", "passage_EN": "a passage", "query_de_DE": "eine Frage",
           "passage_de_DE": "ein Text", "query_type": "factoid"}  # fmt: skip
    (tmp_path / "rows.jsonl").write_text(json.dumps(row) + "\n")
    rows = data.load_rows(str(tmp_path / "rows.jsonl"))
    assert rows[0]["query"] == {"de-de": "eine Frage", "en": "a question"}
    import joint_train

    args = joint_train.get_args(["--data", str(tmp_path / "rows.jsonl"), "--languages", "EN", "de_DE"])
    assert args.languages == ["en", "de-de"]
    (tmp_path / "twice.jsonl").write_text(json.dumps({**row, "query_en": "x", "passage_en": "y"}) + "\n")
    with pytest.raises(BadInput, match=r"columns 'query_EN' and 'query_en' are one language \(en\)"):
        data.load_rows(str(tmp_path / "twice.jsonl"))
