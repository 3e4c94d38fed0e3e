"""Generated hostile input (hypothesis): a value for every numeric flag of every script, and the places a
path flag can point to that no output can live in. Each either works or is refused in one sentence naming
its flag, before any model is loaded, and nothing already there changes. With `pytest --slow` each property
tries ten times as many inputs."""

import argparse
import math
import os
import tempfile
from pathlib import Path

import pytest
from conftest import distill_argv, examples
from hypothesis import given
from hypothesis import strategies as st

import checkpoint
import data
import distill
import evaluate
import joint_train
from checkpoint import BadInput, Range

# ---------------------------------------------------------------------------
# Numbers

SCRIPTS = {"distill.py": distill, "joint_train.py": joint_train, "evaluate.py": evaluate, "data.py": data}


def range_flags():
    """(script, flag, Range) of every Range-checked option, subcommands included."""
    found = []
    for script, module in SCRIPTS.items():
        parsers = [module.build_parser()]
        while parsers:
            parser = parsers.pop()
            for action in parser._actions:
                if isinstance(action, argparse._SubParsersAction):
                    parsers.extend(action.choices.values())
                elif isinstance(action.type, Range):
                    found.append((script, action.option_strings[0], action.type))
    return found


NUMBER_TEXTS = st.one_of(
    st.integers(-(10**40), 10**40).map(str),
    st.floats(allow_nan=True, allow_infinity=True).map(repr),
    st.floats(allow_nan=False, allow_infinity=False, width=32).map(lambda x: f"{x:.3e}"),
    st.sampled_from(["1e309", "-0", "0x10", "1_000", " 3 ", "٣", "1e-400", "True", "", "2**40"]),
    st.text(max_size=8),
)


def test_every_value_of_every_numeric_flag_is_in_range_or_one_sentence():
    flags = range_flags()
    assert len(flags) >= 30  # every script's numeric flags, not a few

    @examples(300)
    @given(st.sampled_from(flags), NUMBER_TEXTS)
    def check(flag, text):
        script, name, kind = flag
        try:
            value = kind(text)
        except argparse.ArgumentTypeError as error:
            message = str(error)
            assert message.startswith(f"expected {kind.describe()}, got ") and "\n" not in message, (script, name)
            return
        assert isinstance(value, kind.kind) and math.isfinite(value), (script, name, text, value)
        assert kind.check(value) == value  # inside the stated range

    check()


def test_learning_rate_and_weight_decay_together_train_or_name_both_flags(tmp_path):
    """AdamW multiplies each weight by 1 - lr * weight_decay per step: any pair either parses with a
    product below 1 or is refused naming both flags."""
    models = {"teacher": "t", "student": "s"}

    @examples(60)
    @given(st.floats(1e-12, 0.999), st.floats(0, 1e12))
    def check(lr, weight_decay):
        argv = distill_argv(models, "rows.jsonl", tmp_path / "run", tmp_path / "cache")
        try:
            args = distill.get_args([*argv, "--lr", repr(lr), "--weight-decay", repr(weight_decay)])
        except BadInput as error:
            assert lr * weight_decay >= 1 and "--weight-decay" in str(error) and "--lr" in str(error)
            return
        assert args.lr * args.weight_decay < 1

    check()
    assert not (tmp_path / "run").exists()


# ---------------------------------------------------------------------------
# Paths: each output, cache and run-file flag, in every place no output can live


def file_at(path, then=None):
    """Write a user's file at path; return then (or path)."""
    path.write_text("a user's notes")
    return then or path


def symlink_loop(root, name):
    """root/name and root/name-2, each a link to the other: nothing below either resolves."""
    os.symlink(root / f"{name}-2", root / name)
    os.symlink(root / name, root / f"{name}-2")
    return root / name / "run"


SITUATIONS = {  # name -> (make the place below root, what the refusal says)
    "a file in the way": (lambda root, name: file_at(root / name), "a file"),
    "a file as its parent": (lambda root, name: file_at(root / "notes", root / "notes" / name), "a file"),
    "a symlink loop": (symlink_loop, ""),
    # below a folder nobody may write into, whoever runs the tests (root ignores permissions)
    "a place no one may write": (lambda root, name: Path("/proc/self") / name, "cannot be written"),
}


def make_foreign(root, name):
    """A folder of someone else's files: a training --out-dir must refuse it, keeping every byte."""
    folder = root / name
    folder.mkdir()
    (folder / "thesis.tex").write_text("years of work")
    (folder / "args.json").write_text("{}")
    (folder / "results.json").write_text("{}")
    return folder


def training(module):
    def command(flag, path, root, models):
        paths = {"--out-dir": root / "out", "--cache-dir": root / "cache", flag: path}
        argv = distill_argv(models, "rows.jsonl", paths["--out-dir"], paths["--cache-dir"], "--overwrite")
        if module is joint_train:
            argv = [argument for argument in argv if argument not in ("--teacher", models["teacher"])]
        return lambda: module.main(argv)

    return command


def evaluation(flag, path, root, models):
    paths = {"--out-dir": root / "out", "--cache-dir": root / "cache", "--save-run": root / "runs", flag: path}
    argv = ["--model", models["student"], "--benchmark", "no-such-benchmark.jsonl"]
    return lambda: evaluate.main([*argv, *(item for pair in paths.items() for item in (pair[0], str(pair[1])))])


TARGETS = {  # (script, flag) -> a command with that flag pointing at `path`
    ("distill.py", "--out-dir"): training(distill),
    ("distill.py", "--cache-dir"): training(distill),
    ("joint_train.py", "--out-dir"): training(joint_train),
    ("joint_train.py", "--cache-dir"): training(joint_train),
    ("evaluate.py", "--out-dir"): evaluation,
    ("evaluate.py", "--save-run"): evaluation,
    ("evaluate.py", "--cache-dir"): evaluation,
}

NAMES = st.text(st.characters(exclude_categories=["Cs", "Cc"], exclude_characters="/\\"), min_size=1, max_size=12)


def snapshot(root):
    return {path: path.read_bytes() for path in root.rglob("*") if path.is_file() and not path.is_symlink()}


def test_every_path_flag_is_checked_before_any_model_loads(tmp_path, monkeypatch):
    """A path in the way is one sentence naming its flag; no model was loaded first (loading would
    fail this test), and every file already there keeps its bytes."""

    def loaded(*args, **kwargs):
        raise AssertionError("a model was loaded before the paths were checked")

    monkeypatch.setattr(checkpoint, "load_model", loaded)
    models = {"teacher": str(tmp_path / "teacher"), "student": str(tmp_path / "student")}
    situations = sorted(SITUATIONS) + ["someone else's folder"]

    @examples(40)
    @given(st.sampled_from(sorted(TARGETS)), st.sampled_from(situations), NAMES.filter(lambda n: n not in (".", "..")))
    def check(target, situation, name):
        root = Path(tempfile.mkdtemp(dir=tmp_path))
        if situation == "someone else's folder":
            if target[1] != "--out-dir" or target[0] == "evaluate.py":
                return  # a cache or evaluate.py's own files go beside a user's, never over them
            path, says = make_foreign(root, name), "not a run folder of this repository"
        else:
            make, says = SITUATIONS[situation]
            path = make(root, name)
        before = snapshot(root)
        with pytest.raises(BadInput) as refused:
            TARGETS[target](target[1], path, root, models)()
        message = str(refused.value)
        assert target[1] in message and says in message and "\n" not in message, (target, situation, message)
        after = snapshot(root)
        assert {path: after.get(path) for path in before} == before  # every byte a user had
        assert all(path.name.endswith(".mimo-lock") for path in set(after) - set(before))  # and only locks added

    check()


def test_a_missing_parent_is_made_not_refused(tmp_path):
    assert checkpoint.writable_folder("--out-dir", tmp_path / "a" / "b" / "c") == (tmp_path / "a" / "b" / "c")
    assert not (tmp_path / "a").exists()  # checked, not yet made
