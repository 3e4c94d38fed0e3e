"""The scripts end to end, for a few steps on CPU, on tiny models built by the tests."""

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import ROOT, write_rows
from safetensors.torch import load_file

import checkpoint
import distill
from data import BadInput


@pytest.fixture(scope="module")
def rows(tmp_path_factory):
    return write_rows(tmp_path_factory.mktemp("data") / "rows.jsonl", n=24)


def distill_args(tiny_models, rows, out_dir, cache_dir, *extra):
    return [
        "--teacher",
        tiny_models["teacher"],
        "--student",
        tiny_models["student"],
        "--data",
        rows,
        "--out-dir",
        str(out_dir),
        "--cache-dir",
        str(cache_dir),
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
        "2",
        *extra,
    ]


def weights(out_dir):
    state = load_file(Path(out_dir) / "model.safetensors")
    state["W"] = torch.load(Path(out_dir) / "projection.pt")["weight"]
    return state


def test_distill_writes_a_loadable_run(tiny_models, rows, tmp_path):
    from sentence_transformers import SentenceTransformer
    from transformers import AutoModel

    history = distill.main(distill_args(tiny_models, rows, tmp_path / "run", tmp_path / "cache", "--eval-every", "3"))
    out = tmp_path / "run"
    assert {"model.safetensors", "modules.json", "projection.pt", "args.json", "log.jsonl", "trainer_state.pt"} <= {
        p.name for p in out.iterdir()
    }
    projection = torch.load(out / "projection.pt")
    assert projection["weight"].shape == (32, 24)  # (teacher dim, student dim)
    assert json.loads((out / "args.json").read_text())["max_steps"] == 6
    log = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log if "loss" in r] == [2, 4, 6]
    assert [r["step"] for r in log if "dev_distance" in r] == [0, 3, 6]
    assert history["after"]["distance"] < history["before"]["distance"]  # it learned something
    assert SentenceTransformer(str(out), device="cpu").encode(["hello there"]).shape == (1, 24)
    assert AutoModel.from_pretrained(out).config.hidden_size == 24
    assert not (tmp_path / "run.tmp").exists() and not (tmp_path / "run.old").exists()


def test_mse_loss_and_no_projection(tiny_models, rows, tmp_path):
    args = distill_args(
        tiny_models,
        rows,
        tmp_path / "run",
        tmp_path / "cache",
        "--distill-loss",
        "mse",
        "--no-projection",
        "--max-steps",
        "2",
    )
    args[args.index("--student") + 1] = tiny_models["same"]  # same width as the teacher
    distill.main(args)
    projection = torch.load(tmp_path / "run" / "projection.pt")
    torch.testing.assert_close(projection["weight"], torch.eye(32))  # fixed identity, untouched


def test_resume_after_interruption_matches_an_uninterrupted_run(tiny_models, rows, tmp_path, monkeypatch):
    """Run A goes straight through 6 steps. Run B is interrupted during step 5 (after
    its step-4 checkpoint), resumed, and must end with exactly A's weights."""
    distill.main(distill_args(tiny_models, rows, tmp_path / "a", tmp_path / "cache"))

    calls = {"n": 0}
    real_teacher_embed = distill.teacher_embed

    def interrupting(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 6:  # call 1 embeds the dev set, call k+1 is step k: this is step 5
            raise KeyboardInterrupt
        return real_teacher_embed(*args, **kwargs)

    monkeypatch.setattr(distill, "teacher_embed", interrupting)
    with pytest.raises(KeyboardInterrupt):
        distill.main(distill_args(tiny_models, rows, tmp_path / "b", tmp_path / "cache"))
    assert torch.load(tmp_path / "b" / "trainer_state.pt", weights_only=False)["step"] == 4
    monkeypatch.setattr(distill, "teacher_embed", real_teacher_embed)

    distill.main(distill_args(tiny_models, rows, tmp_path / "b", tmp_path / "cache", "--resume"))
    a, b = weights(tmp_path / "a"), weights(tmp_path / "b")
    assert a.keys() == b.keys()
    for name in a:
        torch.testing.assert_close(a[name], b[name], rtol=0, atol=1e-6, msg=name)
    steps = [
        json.loads(line)["step"] for line in (tmp_path / "b" / "log.jsonl").read_text().splitlines() if "loss" in line
    ]
    assert steps == [2, 4, 6]  # no step logged twice


def test_refuses_to_touch_an_existing_run(tiny_models, rows, tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    (out / "args.json").write_text("{}")  # a run of ours
    (out / "precious.txt").write_text("mine")
    with pytest.raises(BadInput, match="already holds a run; pass --resume"):
        distill.main(distill_args(tiny_models, rows, out, tmp_path / "cache"))
    assert sorted(p.name for p in out.iterdir()) == ["args.json", "precious.txt"]
    assert (out / "args.json").read_text() == "{}"


def test_dimension_mismatch_without_projection(tiny_models, rows, tmp_path):
    with pytest.raises(BadInput, match="--no-projection needs equal dimensions"):
        distill.main(distill_args(tiny_models, rows, tmp_path / "run", tmp_path / "cache", "--no-projection"))
    assert not (tmp_path / "run").exists()


def run_script(*args, cwd=ROOT):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    return subprocess.run([sys.executable, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=300)


@pytest.mark.parametrize("case", ["missing_file", "bad_json", "unreachable_model", "resume_nothing"])
def test_bad_input_is_one_sentence_and_a_nonzero_exit(case, tiny_models, rows, tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"english": "fine line here", "non_english": "feine Zeile hier"}\n{"english": oops\n')
    args = {
        "missing_file": ["--data", str(tmp_path / "missing.tsv")],
        "bad_json": ["--data", f"de={bad}"],
        "unreachable_model": ["--data", rows, "--student", "nobody/no-such-model"],
        "resume_nothing": ["--data", rows, "--resume"],
    }[case]
    base = distill_args(tiny_models, rows, tmp_path / "run", tmp_path / "cache")
    result = run_script("distill.py", *base, *args)
    expected = {
        "missing_file": "missing.tsv' does not exist",
        "bad_json": "bad.jsonl:2: not valid JSON",
        "unreachable_model": "cannot load model 'nobody/no-such-model'",
        "resume_nothing": "holds no run to resume",
    }[case]
    assert result.returncode != 0
    assert "Traceback" not in result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("error: ") and expected in last, result.stderr
    assert not (tmp_path / "run").exists()


def test_kill_9_between_checkpoints_then_resume_matches_an_uninterrupted_run(tiny_models, rows, tmp_path):
    """A real `kill -9` of a running distill.py, its own cache and all, once it has
    logged step 7 (after the step-5 checkpoint): --resume goes on from step 5, logs
    every step once, and ends with the weights of an uninterrupted run."""

    def command(out_dir, *extra):
        args = distill_args(
            tiny_models,
            rows,
            out_dir,
            tmp_path / f"cache-{out_dir.name}",
            "--max-steps",
            "30",
            "--save-every",
            "5",
            "--log-every",
            "1",
            *extra,
        )
        return [sys.executable, "distill.py", *args]

    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    subprocess.run(command(tmp_path / "a"), cwd=ROOT, env=env, check=True, capture_output=True, timeout=300)

    log = tmp_path / "b" / "log.jsonl"
    process = subprocess.Popen(
        command(tmp_path / "b"), cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    deadline = time.time() + 300
    while time.time() < deadline and process.poll() is None:
        logged = (
            [json.loads(line)["step"] for line in log.read_text().splitlines() if '"loss"' in line]
            if log.exists()
            else []
        )
        if logged and logged[-1] >= 7:
            process.send_signal(signal.SIGKILL)
            break
        time.sleep(0.01)
    assert process.wait(timeout=60) == -signal.SIGKILL, "the run ended before it could be killed"
    state = torch.load(checkpoint.after_recovery(tmp_path / "b") / "trainer_state.pt", weights_only=False)
    assert 5 <= state["step"] < 30

    subprocess.run(command(tmp_path / "b", "--resume"), cwd=ROOT, env=env, check=True, capture_output=True, timeout=300)
    a, b = weights(tmp_path / "a"), weights(tmp_path / "b")
    for name in a:
        torch.testing.assert_close(a[name], b[name], rtol=0, atol=1e-6, msg=name)
    steps = [json.loads(line)["step"] for line in log.read_text().splitlines() if '"loss"' in line]
    assert steps == list(range(1, 31))  # none trained twice, none skipped


def test_bench_scale_small_mode(tmp_path):
    """bench/bench_scale.py at 1/1000 of the paper's sizes with one process: it generates
    the data, runs distill.py and joint_train.py (converting the rows, then mapping the
    cache) for one step each, and prints a row for every phase. The generator leaves
    every language enough pairs, so stage 1 keeps its cap of 500 in each of the 13
    languages and 500 identity pairs; the dev set holds 16 English sentences."""
    command = [sys.executable, "bench/bench_scale.py", "--scale", "0.001", "--one-process", "--dev-size", "16"]
    command += ["--steps", "1", "--work-dir", str(tmp_path)]
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    out = result.stdout
    for phase in (
        "read sources, filter, de-duplicate, cap",
        "dev split",
        "teacher cache: key, fill for the dev sample",
    ):
        assert phase in out
    for phase in ("first step", "read, validate, convert rows", "map cached rows", "language checks"):
        assert phase in out
    counts = json.loads(out.split("per language ")[1].split(";")[0].replace("'", '"'))
    assert sorted(counts) == sorted(["en", *distill.PAPER_LANGUAGES]) and set(counts.values()) == {500}
    rows = int(re.search(r"stage 2 ([\d,]+) rows", out).group(1).replace(",", ""))
    trained = re.findall(r"data: (\d+) training and 16 dev rows in 14 languages", out)
    assert trained and all(int(n) + 16 == rows for n in trained)  # both stage-2 runs, cold and warm
    for run in ("stage1-1", "stage2-cold-1", "stage2-warm-1"):
        state = torch.load(tmp_path / "runs" / run / "trainer_state.pt", weights_only=False)
        assert state["step"] == 1
