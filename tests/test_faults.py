"""Hostile input: malformed files fed loader by loader, every numeric flag outside its
range, folders no run can live in, damaged checkpoints, a full disk, a second writer.
Each gets one sentence naming the file and line or the flag, a non-zero status, and
nothing the user had is changed."""

import argparse
import json
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import ROOT, distill_argv, run_script, script_env, trained_steps, write_rows

import checkpoint
import data
import distill
import evaluate
import joint_train
from checkpoint import Range, load_model
from data import BadInput


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
    encoder = load_model(tiny_models["student"], max_length=32)
    long_text = "ab " * 33_334  # 100,002 characters of many words (one 100k-character word is a single [UNK])
    assert encoder.preprocess([long_text])["input_ids"].shape == (1, 32)
    assert torch.isfinite(encoder.encode([long_text, "a" * 100_000], convert_to_tensor=True)).all()
    pairs, stats = data.load_parallel([f"de={write_long(tmp_path)}"], identity_pairs=False)
    assert stats["dropped_length"] == 1 and len(pairs) == 1  # stage 1's 512-character filter drops it


def write_long(tmp_path):
    path = tmp_path / "long.tsv"
    path.write_text("x" * 100_000 + "\t" + "y" * 100_000 + "\nthe cat sleeps on the mat\tdie Katze schläft\n")
    return path


def test_a_language_the_data_does_not_hold(tiny_models, rows, tmp_path):
    argv = ["--objective", "xlco", "--student", tiny_models["student"], "--data", rows, "--languages", "en", "xx",
            "--out-dir", str(tmp_path / "run"), "--per-device-batch-size", "8", "--mini-batch-size", "4"]  # fmt: skip
    with pytest.raises(BadInput, match=r"lacks xx; every row needs all of --languages en xx"):
        joint_train.main(argv)
    assert not (tmp_path / "run").exists()


def test_a_model_directory_with_missing_files(tiny_models, tmp_path):
    broken = tmp_path / "broken"
    broken.mkdir()
    # a config, but no weights and no tokenizer
    (broken / "config.json").write_text((Path(tiny_models["student"]) / "config.json").read_text())
    with pytest.raises(BadInput, match=r"cannot load model '.*broken' \(local directory\)"):
        load_model(str(broken))


# ---------------------------------------------------------------------------
# Every numeric flag refuses a value outside its range, and nan, before anything is written

SCRIPTS = {"distill.py": distill, "joint_train.py": joint_train, "evaluate.py": evaluate, "data.py": data}


def outside(check):
    """Values just outside a Range (below its low end, above its high end) and nan."""
    values = ["nan"]
    if check.low is not None:
        values.append(f"{check.low if check.open_low else check.low - 1:g}")
    if check.high is not None:
        values.append(f"{check.high if check.open_high else check.high + 1:g}")
    return values


def flags_of(parser, prefix=()):
    """(argv prefix, action) for every option of parser and of its subcommands."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, subparser in action.choices.items():
                yield from flags_of(subparser, (*prefix, name))
        elif action.option_strings:
            yield prefix, action


@pytest.mark.parametrize("script", sorted(SCRIPTS))
def test_every_numeric_flag_is_range_checked(script, tmp_path):
    """Walks the script's parser (and its subcommands'): a numeric flag without a Range
    fails this test, so a new flag cannot forget its range; each Range refuses values
    just outside it and nan in one line naming the flag, the value and the range, and
    no output folder appears."""
    module = SCRIPTS[script]
    flags = list(flags_of(module.build_parser()))
    numeric = [action.option_strings[0] for _, action in flags if action.type in (int, float)]
    assert not numeric, f"numeric flags without a Range: {numeric}"
    checked = [(prefix, action) for prefix, action in flags if isinstance(action.type, Range)]
    assert checked
    out = tmp_path / "run"
    for prefix, action in checked:
        for value in outside(action.type):
            argv = [*prefix, action.option_strings[0], value]
            with pytest.raises(SystemExit) as stop:
                if hasattr(module, "get_args"):
                    module.get_args([*argv, "--out-dir", str(out)])
                else:
                    module.build_parser().parse_args(argv)
            message = str(stop.value.code)
            assert message.startswith(f"error: argument {'/'.join(action.option_strings)}: expected "), message
            assert f"got '{value}'" in message and "\n" not in message
    assert not out.exists()


@pytest.mark.parametrize(
    "flag, value, says", [("--lam", "1.5", "a number in [0, 1]"), ("--lr/--learning-rate", "inf", "a number in (0, 1)")]
)
def test_a_flag_out_of_range_is_status_1_and_one_line(flag, value, says, tmp_path):
    result = run_script("joint_train.py", flag.split("/")[0], value, "--out-dir", str(tmp_path / "run"))
    assert result.returncode == 1
    assert result.stderr.strip() == f"error: argument {flag}: expected {says}, got '{value}'"
    assert not (tmp_path / "run").exists()


# ---------------------------------------------------------------------------
# Where a run goes, and what --resume finds there


@pytest.mark.parametrize("where", ["root", "here", "proc", "below_a_file"])
def test_out_dirs_no_run_can_live_in(where, tiny_models, rows, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "notes.txt").write_text("mine")
    out_dir, says = {
        "root": ("/", "is the root of the file system"),
        "here": (".", "is not a run folder of this repository"),
        "proc": ("/proc/mimo-run", "cannot be written"),
        "below_a_file": (str(tmp_path / "notes.txt" / "run"), "is a file, not a folder"),
    }[where]
    with pytest.raises(BadInput, match=says):
        distill.main(distill_argv(tiny_models, rows, out_dir, tmp_path / "cache"))
    assert sorted(path.name for path in tmp_path.iterdir()) == ["notes.txt"]
    assert (tmp_path / "notes.txt").read_text() == "mine"


@pytest.fixture(scope="module")
def finished_run(tiny_models, rows, tmp_path_factory):
    """A finished 2-step distill.py run, copied by each test that damages it."""
    root = tmp_path_factory.mktemp("finished")
    distill.main(distill_argv(tiny_models, rows, root / "run", root / "cache", "--max-steps", "2"))
    return root


DAMAGE = {  # what is done to the run: (how, what the error says)
    "args_not_json": (lambda run: (run / "args.json").write_text("{not json"), "args.json is not readable JSON"),
    "args_not_an_object": (lambda run: (run / "args.json").write_text("[1, 2]"), "holds list, expected a JSON object"),
    "args_wrong_type": (
        lambda run: (run / "args.json").write_text(
            json.dumps({**json.loads((run / "args.json").read_text()), "warmup": "lots"})
        ),
        "args.json: --warmup: expected a number in [0, 1], got 'lots'",
    ),
    "state_truncated": (
        lambda run: (run / checkpoint.STATE).write_bytes((run / checkpoint.STATE).read_bytes()[:1000]),
        "trainer_state.pt is damaged",
    ),
    "weights_truncated": (
        lambda run: (run / "model.safetensors").write_bytes((run / "model.safetensors").read_bytes()[:1000]),
        "model.safetensors is damaged",
    ),
}


def snapshot(folder):
    """Every file below folder and its bytes."""
    return {path.relative_to(folder): path.read_bytes() for path in folder.rglob("*") if path.is_file()}


@pytest.mark.parametrize("case", sorted(DAMAGE))
def test_resume_from_a_damaged_run_is_one_sentence(case, finished_run, tiny_models, rows, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(finished_run / "run", run)
    damage, says = DAMAGE[case]
    damage(run)
    before = snapshot(run)
    result = run_script("distill.py", *distill_argv(tiny_models, rows, run, finished_run / "cache", "--resume"))
    assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr[-2000:]
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("error: --resume") and says in last, last
    assert snapshot(run) == before  # nothing changed


def test_resume_with_a_flag_that_changes_the_trained_parameters_is_refused(finished_run, tiny_models, rows, tmp_path):
    """--no-projection would train other parameters than the saved optimizer state holds, and another
    --student builds a model the checkpoint does not fit: each is one sentence, and the run stays
    resumable, unchanged."""
    run = tmp_path / "run"
    shutil.copytree(finished_run / "run", run)
    before = snapshot(run)
    for extra, says in (
        (["--no-projection"], "--resume with --no-projection True: the run was trained with False"),
        (["--student", tiny_models["same"]], "does not fit the model these flags build"),
    ):
        with pytest.raises(BadInput, match=says):
            distill.main([*distill_argv(tiny_models, rows, run, finished_run / "cache", "--resume"), *extra])
    assert snapshot(run) == before


def test_numbers_that_can_only_be_a_mistake_name_their_flags(tiny_models, rows, tmp_path):
    """A weight decay whose product with the learning rate reaches 1 (each step multiplies the
    weights by 1 - lr * wd), and a schedule that is all warm-up (lr 0 at its only step): each is
    refused in one sentence naming the flags, before anything is trained."""
    argv = distill_argv(tiny_models, rows, tmp_path / "a", tmp_path / "cache")
    with pytest.raises(BadInput, match=r"--weight-decay 4 with --lr 0.25: their product reaches 1"):
        distill.get_args([*argv, "--lr", "0.25", "--weight-decay", "4"])
    assert distill.get_args([*argv, "--lr", "0.25", "--weight-decay", "3.9"]).weight_decay == 3.9
    with pytest.raises(BadInput, match=r"--warmup 1 over 1 step\(s\) leaves the learning rate 0 at every step"):
        distill.main([*argv, "--max-steps", "1", "--warmup", "1"])
    assert not (tmp_path / "a").exists()


def test_a_dev_metric_that_is_not_finite_stops_the_run_before_it_is_saved(tiny_models, rows, tmp_path, monkeypatch):
    """Finite loss, absurd weights: the dev distance after training comes out NaN. The run stops in one
    sentence naming the metric and the step; the last checkpoint (step 4) stays, and no NaN reaches disk.
    NaN before any training blames the dev set, not the learning rate."""
    real = distill.evaluate_dev
    calls = []

    def nan_after_training(*args):
        calls.append(1)
        return {**real(*args), "distance": float("nan")} if len(calls) > 1 else real(*args)

    monkeypatch.setattr(distill, "evaluate_dev", nan_after_training)
    argv = distill_argv(tiny_models, rows, tmp_path / "run", tmp_path / "cache")
    with pytest.raises(SystemExit, match=r"error: dev_distance is nan at step 6; the checkpoint of step 4 .* intact"):
        distill.main(argv)
    assert torch.load(tmp_path / "run" / checkpoint.STATE, weights_only=False)["step"] == 4
    assert "NaN" not in (tmp_path / "run" / "log.jsonl").read_text()

    calls.clear()
    monkeypatch.setattr(distill, "evaluate_dev", lambda *args: {**real(*args), "accuracy": float("nan")})
    with pytest.raises(SystemExit, match=r"dev_accuracy is nan before any training, so the dev set measures nothing"):
        distill.main([*argv, "--overwrite"])


def test_an_os_error_mid_run_is_one_sentence_naming_the_path(tiny_models, rows, tmp_path, monkeypatch):
    """Permissions changed under a running script (here the teacher cache refuses a write): one
    `error:` line with the path and the reason, exit status 1, no traceback."""
    import teacher

    def refused(self, texts, embeddings):
        raise PermissionError(13, "Permission denied", str(self.emb_file))

    monkeypatch.setattr(teacher.TeacherCache, "add", refused)
    argv = distill_argv(tiny_models, rows, tmp_path / "run", tmp_path / "cache")
    with pytest.raises(SystemExit) as stop:
        checkpoint.entry_point(lambda: distill.main(argv))
    assert re.fullmatch(r"error: .*cache.*emb-.*\.f16: Permission denied", str(stop.value.code))


def test_a_users_copy_of_the_run_beside_it_is_kept(finished_run, tiny_models, rows, tmp_path):
    """`cp -r run run.old` copies the run's marker, but not as a swap sets a folder aside: --resume refuses to
    start (the first checkpoint would need that name), before anything loads, and the copy keeps every byte."""
    run, backup = tmp_path / "run", tmp_path / "run.old"
    shutil.copytree(finished_run / "run", run)
    shutil.copytree(run, backup)
    before = snapshot(backup)
    with pytest.raises(BadInput, match=r"run.old', where this run's checkpoints are swapped, holds files that are not"):
        distill.main(distill_argv(tiny_models, rows, run, finished_run / "cache", "--resume", "--max-steps", "4"))
    assert snapshot(backup) == before


def test_a_run_from_before_runs_were_marked_is_told_how_to_mark_it(finished_run, tiny_models, rows, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(finished_run / "run", run)
    (run / checkpoint.MARKER).unlink()
    argv = distill_argv(tiny_models, rows, run, finished_run / "cache", "--resume", "--max-steps", "4")
    with pytest.raises(BadInput, match=r"from before runs were marked, write .*distill.py.* into .*mimo-run.json"):
        distill.main(argv)
    checkpoint.write_marker(run, "distill.py", "earlier")  # what the sentence says to write
    distill.main(argv)
    assert trained_steps(run)[-1] == 4


def test_joint_train_refuses_to_resume_a_stage_1_run(finished_run, tiny_models, rows, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(finished_run / "run", run)
    with pytest.raises(BadInput, match=r"holds a run written by distill.py; resume it with that script"):
        joint_train.main(["--resume", "--out-dir", str(run)])


# ---------------------------------------------------------------------------
# A full disk, a second writer, Ctrl-C: as real processes

FULL_DISK = """
import errno, sys
import checkpoint
from safetensors import SafetensorError

def full(*args, **kwargs):
    raise {error}

checkpoint.save_model = full  # the first thing a checkpoint writes after args.json
import distill
checkpoint.entry_point(distill.main)
"""


@pytest.mark.parametrize(
    "error", ["OSError(errno.ENOSPC, 'No space left on device')", "SafetensorError('IoError: No space left on device')"]
)
def test_a_full_disk_at_the_first_save(error, tiny_models, rows, tmp_path):
    """The very first checkpoint fails as a full disk fails: one sentence on a line of its
    own (not on the progress bar's), status 1, and no half-written run.tmp left behind."""
    program = FULL_DISK.format(error=error)
    argv = distill_argv(tiny_models, rows, tmp_path / "run", tmp_path / "cache", "--log-every", "1")
    result = run_script("-c", program, *argv)
    assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr[-2000:]
    lines = result.stderr.splitlines()
    errors = [line for line in lines if "error:" in line]
    assert len(errors) == 1 and errors[0].startswith("error: could not write a checkpoint"), errors
    assert "No space left on device" in errors[0] and "no checkpoint was written yet" in errors[0]
    assert not (tmp_path / "run.tmp").exists()


def test_a_second_writer_is_refused_and_a_killed_owner_leaves_no_lock(tiny_models, rows, tmp_path):
    """Run A owns its folder while it lives: B (even with --overwrite) is refused with one
    sentence naming A's process. Killed with kill -9, A's lock goes with it, and C can
    take the folder over."""
    argv = distill_argv(tiny_models, rows, tmp_path / "run", tmp_path / "cache", "--max-steps", "100000",
                        "--save-every", "100000", "--log-every", "1")  # fmt: skip
    a = subprocess.Popen([sys.executable, "distill.py", *argv], cwd=ROOT, env=script_env(),
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    try:
        deadline = time.time() + 300
        while not (tmp_path / "run" / "log.jsonl").exists() and time.time() < deadline and a.poll() is None:
            time.sleep(0.1)
        assert a.poll() is None, "run A ended early"
        b = run_script("distill.py", *argv, "--overwrite")
        assert b.returncode == 1
        assert b.stderr.strip().splitlines()[-1].startswith(f"error: --out-dir '{tmp_path / 'run'}' is in use by "
                                                            f"process {a.pid} on ")  # fmt: skip
        assert a.poll() is None  # B did not disturb A
    finally:
        a.send_signal(signal.SIGKILL)
        a.wait(timeout=60)
    c = run_script("distill.py", *argv[:-6], "--max-steps", "2", "--overwrite")
    assert c.returncode == 0, c.stderr[-2000:]
    assert trained_steps(tmp_path / "run")[-1] == 2


# ---------------------------------------------------------------------------
# Awkward files, through each script that reads them


def awkward_files(tmp_path):
    """Each case's file, a few lines written in tmp_path."""
    import gzip

    row = {"id": "a", "query_en": "what is this thing", "passage_en": "this thing is a stone",
           "query_de": "was ist dieses Ding", "passage_de": "dieses Ding ist ein Stein"}  # fmt: skip
    files = {}
    (tmp_path / "folder.jsonl").mkdir()
    files["directory"] = tmp_path / "folder.jsonl"
    files["corrupt_gzip"] = tmp_path / "en-de.tsv.gz"
    good = gzip.compress(b"the cat sleeps on the mat\tdie Katze schlaeft auf der Matte\n" * 50)
    files["corrupt_gzip"].write_bytes(good[:40] + bytes(60) + good[100:])
    files["null_text"] = tmp_path / "null.jsonl"
    files["null_text"].write_text(json.dumps({**row, "passage_de": None}) + "\n")
    files["shared_id"] = tmp_path / "twice.jsonl"
    files["shared_id"].write_text((json.dumps(row) + "\n") * 2)
    files["bom"] = tmp_path / "bom.jsonl"
    files["bom"].write_text("\ufeff" + json.dumps(row) + "\n", encoding="utf-8")
    files["empty_query"] = tmp_path / "empty.jsonl"
    files["empty_query"].write_text(json.dumps({**row, "query_de": "  "}) + "\n")
    files["empty_file"] = tmp_path / "nothing.jsonl"
    files["empty_file"].write_text("")
    return files


AWKWARD = [  # (script and its arguments with {file}, what the error line says; None: it must work)
    (["distill.py", "--data", "de={file}"], "directory", "is a directory; expected a .jsonl"),
    (["distill.py", "--data", "{file}"], "corrupt_gzip", "en-de.tsv.gz"),
    (["joint_train.py", "--objective", "xlco", "--data", "{file}"], "shared_id", "'a'"),
    (["evaluate.py", "--model", "{model}", "--benchmark", "{file}"], "shared_id", "'a'"),
    (["evaluate.py", "--model", "{model}", "--benchmark", "{file}"], "empty_query", "query_de"),
    (["distill.py", "--data", "de={file}"], "empty_file", "no parallel pairs left"),
    (["joint_train.py", "--objective", "xlco", "--data", "{file}"], "empty_file", "holds no rows"),
    (["evaluate.py", "--model", "{model}", "--benchmark", "{file}"], "empty_file", "holds no rows"),
]


LOADED = [  # (source with {file}, what the error says; None: it must load)
    ("de={file}", "directory", "is a directory; expected a .jsonl"),
    ("{file}", "corrupt_gzip", "en-de.tsv.gz"),
    ("={file}", "null_text", "names no language before '='"),
    ("{file}", "null_text", "passage_de"),
    ("{file}", "bom", None),
]


@pytest.mark.parametrize("source, case, says", LOADED, ids=[f"{s}-{case}" for s, case, _ in LOADED])
def test_awkward_files_through_load_parallel(source, case, says, tmp_path):
    source = source.format(file=awkward_files(tmp_path)[case])
    if says is None:
        assert data.load_parallel([source])[0]
        return
    with pytest.raises(BadInput, match=re.escape(says)):
        data.load_parallel([source])


@pytest.mark.parametrize("command, case, says", AWKWARD, ids=[f"{c[0]}-{case}" for c, case, _ in AWKWARD])
def test_awkward_files_through_the_scripts(command, case, says, tiny_models, tmp_path):
    path = awkward_files(tmp_path)[case]
    argv = [part.format(file=path, model=tiny_models["student"]) for part in command]
    result = run_script(*argv, "--out-dir", str(tmp_path / "out"))
    if says is None:
        assert result.returncode == 0, result.stderr[-2000:]
        return
    assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr[-2000:]
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("error: ") and says in last, last
    assert not (tmp_path / "out").exists()
