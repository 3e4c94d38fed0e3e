"""Faults: a non-finite loss, a disk that fills while saving, and malformed input
fed systematically to every loader."""

import json
import shutil
from pathlib import Path

import pytest
import torch
from conftest import write_rows

import checkpoint
import data
import distill
import joint_train
from data import BadInput
from model import Encoder


@pytest.fixture(scope="module")
def rows(tmp_path_factory):
    return write_rows(tmp_path_factory.mktemp("faults") / "rows.jsonl", n=24)


def args_for(tiny_models, rows, tmp_path, *extra):
    return [
        "--teacher",
        tiny_models["teacher"],
        "--student",
        tiny_models["student"],
        "--data",
        rows,
        "--out-dir",
        str(tmp_path / "run"),
        "--cache-dir",
        str(tmp_path / "cache"),
        "--dev-size",
        "4",
        "--batch-size",
        "16",
        "--max-length",
        "32",
        "--max-steps",
        "6",
        "--save-every",
        "2",
        "--log-every",
        "100",
        *extra,
    ]


def test_nonfinite_loss_stops_before_it_is_saved(tiny_models, rows, tmp_path, monkeypatch):
    """From step 3 on the loss is NaN (and so are the weights after the update). The
    run stops at the step-4 save check, naming the step and a resume command with a
    lower learning rate; the step-2 checkpoint stays, with finite weights."""
    real = distill.DISTILL_LOSSES["cosine"]
    calls = {"n": 0}

    def poisoned(student, teacher):
        calls["n"] += 1
        loss = real(student, teacher)
        return loss * float("nan") if calls["n"] >= 3 else loss

    monkeypatch.setitem(distill.DISTILL_LOSSES, "cosine", poisoned)
    with pytest.raises(SystemExit, match=r"the loss is nan at step 4; .* --resume .* --lr 2\.5e-05"):
        distill.main(args_for(tiny_models, rows, tmp_path))
    state = torch.load(tmp_path / "run" / "trainer_state.pt", weights_only=False)
    assert state["step"] == 2
    saved = Encoder(str(tmp_path / "run"))
    assert all(torch.isfinite(p).all() for p in saved.parameters())


def test_full_disk_while_saving_keeps_the_previous_checkpoint(tiny_models, rows, tmp_path, monkeypatch):
    real_save = torch.save
    calls = {"n": 0}

    def failing_save(obj, f, *args, **kwargs):
        if str(f).endswith("trainer_state.pt"):
            calls["n"] += 1
            if calls["n"] == 2:  # the step-4 checkpoint
                raise OSError(28, "No space left on device")
        return real_save(obj, f, *args, **kwargs)

    monkeypatch.setattr(checkpoint.torch, "save", failing_save)
    with pytest.raises(SystemExit, match="could not write a checkpoint .* the previous checkpoint in .* is intact"):
        distill.main(args_for(tiny_models, rows, tmp_path))
    monkeypatch.setattr(checkpoint.torch, "save", real_save)
    assert torch.load(tmp_path / "run" / "trainer_state.pt", weights_only=False)["step"] == 2
    assert not (tmp_path / "run.tmp").exists()
    distill.main(args_for(tiny_models, rows, tmp_path, "--resume"))  # and the run can go on
    assert torch.load(tmp_path / "run" / "trainer_state.pt", weights_only=False)["step"] == 6


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


def test_a_crash_between_the_two_renames_is_recovered_by_resume(tiny_models, rows, tmp_path):
    """save() renames run -> run.old, then run.tmp -> run. Killed in between, only
    run.old and a complete run.tmp exist: --resume finds the run there, finishes the
    swap and goes on. Killed while run.tmp was still being written (no
    trainer_state.pt yet), the previous checkpoint comes back."""
    distill.main(args_for(tiny_models, rows, tmp_path, "--max-steps", "2"))
    run = tmp_path / "run"
    shutil.copytree(run, tmp_path / "run.tmp")
    run.rename(tmp_path / "run.old")
    distill.main(args_for(tiny_models, rows, tmp_path, "--resume"))
    assert torch.load(run / "trainer_state.pt", weights_only=False)["step"] == 6
    assert not (tmp_path / "run.old").exists() and not (tmp_path / "run.tmp").exists()

    run.rename(tmp_path / "run.old")
    (tmp_path / "run.tmp").mkdir()
    (tmp_path / "run.tmp" / "args.json").write_text("{}")  # save() writes args.json first
    checkpoint.recover(run)
    assert torch.load(run / "trainer_state.pt", weights_only=False)["step"] == 6
    assert not (tmp_path / "run.old").exists() and not (tmp_path / "run.tmp").exists()


def test_folders_that_are_not_runs_are_never_deleted(tiny_models, rows, tmp_path):
    """--overwrite replaces a run, never a folder of someone else's files; nor does the
    crash recovery touch a user's own `<out-dir>.old` or `.tmp` folder."""
    mine = tmp_path / "run"
    mine.mkdir()
    (mine / "thesis.tex").write_text("years of work")
    with pytest.raises(BadInput, match="not a run of this repository .* never overwritten"):
        distill.main(args_for(tiny_models, rows, tmp_path, "--overwrite"))
    assert (mine / "thesis.tex").read_text() == "years of work"

    (tmp_path / "other.old").mkdir()
    (tmp_path / "other.old" / "notes.txt").write_text("keep")
    checkpoint.check_out_dir(tmp_path / "other", resume=False, overwrite=False)
    assert (tmp_path / "other.old" / "notes.txt").read_text() == "keep" and not (tmp_path / "other").exists()


def test_resume_with_a_lower_learning_rate_uses_it(tiny_models, rows, tmp_path):
    """The advice after a non-finite loss is `--resume --lr X`: the resumed steps must
    run at X's schedule, not at the saved optimizer's peak."""
    distill.main(
        args_for(
            tiny_models, rows, tmp_path, "--max-steps", "6", "--save-every", "2", "--log-every", "1", "--lr", "1e-3"
        )
    )
    full = {
        r["step"]: r["lr"]
        for r in map(json.loads, (tmp_path / "run" / "log.jsonl").read_text().splitlines())
        if "lr" in r
    }
    shutil.rmtree(tmp_path / "run")
    distill.main(args_for(tiny_models, rows, tmp_path, "--max-steps", "2", "--log-every", "1", "--lr", "1e-3"))
    distill.main(
        args_for(tiny_models, rows, tmp_path, "--resume", "--max-steps", "6", "--log-every", "1", "--lr", "2.5e-4")
    )
    resumed = {
        r["step"]: r["lr"]
        for r in map(json.loads, (tmp_path / "run" / "log.jsonl").read_text().splitlines())
        if "lr" in r
    }
    for step in (3, 4, 5):
        assert resumed[step] == pytest.approx(full[step] / 4)
