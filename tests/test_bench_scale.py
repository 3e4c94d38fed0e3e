"""bench/bench_scale.py, the rehearsal of paper-scale data, at 1/1000 of the paper's sizes."""

import json
import re
import subprocess
import sys

import torch
from conftest import ROOT

import checkpoint
import distill


def test_bench_scale_small_mode(tmp_path):
    """One process: it generates the data, runs distill.py and joint_train.py (converting
    the rows, then mapping the cache) for one step each, and prints a row for every phase.
    The generator leaves every language enough pairs, so stage 1 keeps its cap of 500 in
    each of the 13 languages and 500 identity pairs; the dev set holds 16 English sentences."""
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
        state = torch.load(tmp_path / "runs" / run / checkpoint.STATE, weights_only=False)
        assert state["step"] == 1


def test_bench_scale_deletes_only_in_a_work_folder_it_made(tmp_path):
    """A --work-dir holding files bench_scale.py did not make (here a folder named runs, which it would
    otherwise clear) is refused in one line before anything is generated; every file stays."""
    (tmp_path / "runs").mkdir()
    (tmp_path / "runs" / "notes.txt").write_text("mine")
    command = [sys.executable, "bench/bench_scale.py", "--scale", "0.001", "--work-dir", str(tmp_path)]
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert result.returncode == 1 and result.stderr.strip().endswith("did not make; choose another --work-dir")
    assert [path.name for path in tmp_path.rglob("*")] == ["runs", "notes.txt"]
