"""Malformed input, fed loader by loader: one sentence naming the file and line, and
nothing written."""

import json
from pathlib import Path

import pytest
import torch
from conftest import write_rows

import data
import joint_train
from data import BadInput
from model import Encoder


@pytest.fixture(scope="module")
def rows(tmp_path_factory):
    return write_rows(tmp_path_factory.mktemp("faults") / "rows.jsonl", n=24)


# ---------------------------------------------------------------------------
# Malformed input, loader by loader


def test_truncated_jsonl_names_the_last_line(tmp_path):
    text = Path(write_rows(tmp_path / "rows.jsonl", n=3)).read_text()
    (tmp_path / "cut.jsonl").write_text(text[: len(text) - 40])
    with pytest.raises(BadInput, match=r"cut.jsonl:3: not valid JSON"):
        data.load_rows(str(tmp_path / "cut.jsonl"))


def test_empty_strings_in_rows(tmp_path):
    row = {"id": "a", "query_en": "", "passage_en": "a passage", "query_de": "eine Frage", "passage_de": "ein Text"}
    (tmp_path / "rows.jsonl").write_text(json.dumps(row) + "\n")
    with pytest.raises(BadInput, match=r"rows.jsonl:1: query_en must be a non-empty string"):
        data.load_rows(str(tmp_path / "rows.jsonl"))


def test_a_100000_character_text_is_truncated_not_a_crash(tiny_models, tmp_path):
    encoder = Encoder(tiny_models["student"], max_length=32)
    long_text = "ab " * 33_334  # 100,002 characters of many words (one 100k-character word is a single [UNK])
    assert encoder.tokenize([long_text])["input_ids"].shape == (1, 32)
    assert torch.isfinite(encoder.encode([long_text, "a" * 100_000])).all()
    pairs, stats = data.load_parallel([f"de={write_long(tmp_path)}"], identity_pairs=False)
    assert stats["dropped_length"] == 1 and len(pairs) == 1  # stage 1's 512-character filter drops it


def write_long(tmp_path):
    path = tmp_path / "long.tsv"
    path.write_text("x" * 100_000 + "\t" + "y" * 100_000 + "\nthe cat sleeps on the mat\tdie Katze schläft\n")
    return path


def test_a_language_the_data_does_not_hold(tiny_models, rows, tmp_path):
    with pytest.raises(BadInput, match=r"lacks xx; every row needs all of --languages en xx"):
        joint_train.main(
            [
                "--objective",
                "xlco",
                "--student",
                tiny_models["student"],
                "--data",
                rows,
                "--languages",
                "en",
                "xx",
                "--out-dir",
                str(tmp_path / "run"),
                "--batch-size",
                "8",
                "--mini-batch-size",
                "4",
            ]
        )
    assert not (tmp_path / "run").exists()


def test_a_model_directory_with_missing_files(tiny_models, tmp_path):
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "config.json").write_text(
        (Path(tiny_models["student"]) / "config.json").read_text()
    )  # no weights, no tokenizer
    with pytest.raises(BadInput, match=r"cannot load model '.*broken' \(local directory\)"):
        Encoder(str(broken))
